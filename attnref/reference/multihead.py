"""Multi-head attention (global, local, chunked), the reference definition.

This module is the whole definition of the three transformer-style ops; they
differ only in their pattern (:class:`~attnref.patterns.Pattern`). For batch
``b``, query head ``h`` (which reads kv head ``h // (Hq // Hkv)``), query row
``i`` and key ``j``, with ``Lq_b``/``Lk_b`` the per-batch lengths (``q_lengths``
and ``kv_lengths``, else ``Lq`` and ``Lk``)::

    1. s_ij   = scale * (q_i . k_j)                      scale = 1 / sqrt(D) by default
    2. s_ij   = softcap * tanh(s_ij / softcap)           if softcap
    3. s_ij   = s_ij + bias_ij                           if bias
    4. A_i    = {j : mask_ij, j < Lk_b, i < Lq_b, the pattern allows j at p = i + offset_b}
                offset_b = Lk_b - Lq_b ("bottom_right") or 0 ("top_left")
    5. lse_i  = log(exp(sinks_h) + sum_{j in A_i} exp(s_ij))   (no sinks: the first term is absent)
       P_ij   = exp(s_ij - lse_i) for j in A_i, else 0
       out_i  = sum_{j in A_i} P_ij v_j
    6. A_i empty: out_i = 0, lse_i = sinks_h (-inf without sinks); never NaN.
       A padding row (i >= Lq_b) is outside its sequence: out_i = 0, lse_i = -inf, sinks or not.
    7. Packed sequences (cu_seqlens_q, cu_seqlens_k): sequence b is q rows
       cu_seqlens_q[b]:cu_seqlens_q[b+1] and k, v rows cu_seqlens_k[b]:cu_seqlens_k[b+1];
       its result is steps 1 to 6 on that sequence alone (its own lengths, alignment and sinks).

The sink is a virtual key with no value: it is not scaled, softcapped, biased,
masked or windowed, and it takes probability ``exp(sinks_h - lse_i)`` away
from the keys (a row's weights sum to ``1 - exp(sinks_h - lse_i)``).

Masking selects, it never multiplies: a key outside ``A_i`` contributes
nothing, even if its score or value is NaN or infinite. NaN anywhere else
reaches exactly the outputs whose formula uses it (a NaN sink: its head's lse
and every output with an allowed key; the output of a row with no allowed key
is the empty sum, 0).

How it is computed (the definition does not depend on it): each sequence's
query rows are cut into blocks (:meth:`~attnref.patterns.Pattern.plan_blocks`), and each block
scores only the keys its pattern can allow. Keys outside that range are
outside ``A_i`` for every row of the block, so leaving them out changes
nothing, and the work is ``O(L x window)`` for a window or a chunk. Each
block's score array holds at most :data:`SCORE_BLOCK_ELEMENTS` elements (one row
at least), which bounds the memory whatever the sequence length.
``return_weights`` alone is dense, ``(B, Hq, Lq, Lk)``.

``precision=`` runs the same steps with every intermediate rounded to that
dtype (16-bit products accumulated in float32 and rounded once): the naive same-precision
implementation the conformance tolerance compares against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from attnref.errors import invalid_value
from attnref.patterns import Pattern, QueryBlock
from attnref.reference._numerics import apply_softcap, cast, compute_dtype, masked_softmax, matmul, weighted_sum
from attnref.validation import (
    AttentionArgs,
    check_attention,
    check_flag,
    chunk_pattern,
    full_pattern,
    host_array,
    window_pattern,
)

__all__ = [
    "global_attention",
    "local_attention",
    "chunked_attention",
    "attention",
    "dense_attention",
    "Block",
    "blocks",
    "block_scores",
    "block_allowed",
    "block_sinks",
    "sequences",
    "sequence_view",
    "SCORE_BLOCK_ELEMENTS",
]

#: Most elements of one query block's score array (all query heads of one
#: sequence): 32 MiB per float64 array, whatever the sequence length.
SCORE_BLOCK_ELEMENTS = 1 << 22

#: The fixed cost of one block (Python and NumPy call overheads), counted in
#: score elements, when choosing how many query rows a block holds.
BLOCK_OVERHEAD_ELEMENTS = 1 << 15


# -- the three ops ------------------------------------------------------------
def global_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: str = "bottom_right",
    return_lse: bool = False,
    sinks: Any = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
    return_weights: bool = False,
    precision: Any = None,
) -> Any:
    """Full softmax attention, the reference definition.

    Pattern: every key ``j`` is allowed; with ``causal=True`` only ``j <= p``,
    ``p = i + offset`` the aligned query position (so ``causal=True`` equals
    ``local_attention(window=(None, 0))``). The steps are in
    :mod:`attnref.reference.multihead`.

    Parameters
    ----------
    q : array, (B, Hq, Lq, D), or (Tq, Hq, D) packed
        Queries. float16, bfloat16, float32 or float64; ``k`` and ``v`` share its dtype.
    k : array, (B, Hkv, Lk, D), or (Tk, Hkv, D) packed
        Keys. ``Hq % Hkv == 0``; query head ``h`` reads kv head ``h // (Hq // Hkv)``.
    v : array, (B, Hkv, Lk, Dv), or (Tk, Hkv, Dv) packed
        Values.
    causal : bool
        Allow only keys at or before the aligned query position.
    scale : float, optional
        Multiplies ``q . k``; finite and > 0. Default ``1 / sqrt(D)``.
    softcap : float, optional
        If given, ``s = softcap * tanh(s / softcap)`` before bias and mask.
    bias : float array, optional
        Broadcastable to ``(B, Hq, Lq, Lk)``; added to the scores after softcap.
    mask : bool array, optional
        Broadcastable to ``(B, Hq, Lq, Lk)``; True = may attend.
    kv_lengths : int array (B,), optional
        Key ``j`` of batch ``b`` is allowed only if ``j < kv_lengths[b]``.
    q_lengths : int array (B,), optional
        Query rows ``i >= q_lengths[b]`` are padding: output 0, lse ``-inf``.
    align : {"bottom_right", "top_left"}
        Aligned position ``p = i + offset``: ``offset = Lk_b - Lq_b`` for
        ``"bottom_right"`` (the default), ``0`` for ``"top_left"``.
    return_lse : bool
        Also return the log-sum-exp, natural log (``-inf`` for an empty row).
    sinks : float array (Hq,), optional
        One sink logit per query head, any floating dtype (step 5).
    cu_seqlens_q, cu_seqlens_k : int arrays (B + 1,), optional
        Offsets of packed sequences, given together (step 7). Not with
        ``bias``, ``mask``, ``kv_lengths``, ``q_lengths`` or ``return_weights``.
    return_weights : bool
        Also return the dense probabilities ``(B, Hq, Lq, Lk)`` (memory ``O(Lq Lk)``).
    precision : dtype, optional
        Run the same algorithm with every intermediate rounded to this dtype
        (products of 16-bit dtypes accumulate in float32). Default float64.

    Returns
    -------
    out : ndarray, (B, Hq, Lq, Dv), or (Tq, Hq, Dv) packed
        float64, or the ``precision`` dtype.
    lse : ndarray, (B, Hq, Lq), or (Tq, Hq) packed
        Only with ``return_lse=True``.
    weights : ndarray, (B, Hq, Lq, Lk)
        Only with ``return_weights=True`` (after ``lse`` when both are asked for).

    Raises
    ------
    InvalidArgumentError
        (a ``ValueError``) for bad shapes, sizes or option values.
    InvalidTypeError
        (a ``TypeError``) for bad dtypes or argument types.
    """
    return attention(
        q, k, v, full_pattern(causal), scale=scale, softcap=softcap, bias=bias, mask=mask,
        kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse, sinks=sinks,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, return_weights=return_weights, precision=precision,
    )  # fmt: skip


def local_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    window: Any,
    scale: float | None = None,
    softcap: float | None = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: str = "bottom_right",
    return_lse: bool = False,
    sinks: Any = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
    return_weights: bool = False,
    precision: Any = None,
) -> Any:
    """Sliding-window attention (Mistral, Gemma, Longformer), the reference definition.

    Pattern: key ``j`` is allowed iff ``p - left <= j <= p + right`` (both ends
    inclusive), ``p = i + offset`` the aligned query position. A window of
    ``(left, right)`` holds up to ``left + right + 1`` keys. A causal sliding
    window of ``W`` tokens, the current one included, is ``window=(W - 1, 0)``;
    see :func:`attnref.window_from_size`. A side of any size is allowed; beyond
    the sequence it acts as unbounded. The steps are in
    :mod:`attnref.reference.multihead`.

    Parameters
    ----------
    q : array, (B, Hq, Lq, D), or (Tq, Hq, D) packed
        Queries. float16, bfloat16, float32 or float64; ``k`` and ``v`` share its dtype.
    k : array, (B, Hkv, Lk, D), or (Tk, Hkv, D) packed
        Keys. ``Hq % Hkv == 0``; query head ``h`` reads kv head ``h // (Hq // Hkv)``.
    v : array, (B, Hkv, Lk, Dv), or (Tk, Hkv, Dv) packed
        Values.
    window : int or (int or None, int or None)
        ``(left, right)``; an int ``w`` means ``(w, w)``; ``None`` or ``-1``
        leaves that side unbounded.
    scale : float, optional
        Multiplies ``q . k``; finite and > 0. Default ``1 / sqrt(D)``.
    softcap : float, optional
        If given, ``s = softcap * tanh(s / softcap)`` before bias and mask.
    bias : float array, optional
        Broadcastable to ``(B, Hq, Lq, Lk)``; added to the scores after softcap.
    mask : bool array, optional
        Broadcastable to ``(B, Hq, Lq, Lk)``; True = may attend.
    kv_lengths : int array (B,), optional
        Key ``j`` of batch ``b`` is allowed only if ``j < kv_lengths[b]``.
    q_lengths : int array (B,), optional
        Query rows ``i >= q_lengths[b]`` are padding: output 0, lse ``-inf``.
    align : {"bottom_right", "top_left"}
        Aligned position ``p = i + offset``: ``offset = Lk_b - Lq_b`` for
        ``"bottom_right"`` (the default), ``0`` for ``"top_left"``.
    return_lse : bool
        Also return the log-sum-exp, natural log (``-inf`` for an empty row).
    sinks : float array (Hq,), optional
        One sink logit per query head, any floating dtype (step 5).
    cu_seqlens_q, cu_seqlens_k : int arrays (B + 1,), optional
        Offsets of packed sequences, given together (step 7). Not with
        ``bias``, ``mask``, ``kv_lengths``, ``q_lengths`` or ``return_weights``.
    return_weights : bool
        Also return the dense probabilities ``(B, Hq, Lq, Lk)`` (memory ``O(Lq Lk)``).
    precision : dtype, optional
        Run the same algorithm with every intermediate rounded to this dtype
        (products of 16-bit dtypes accumulate in float32). Default float64.

    Returns
    -------
    out : ndarray, (B, Hq, Lq, Dv), or (Tq, Hq, Dv) packed
        float64, or the ``precision`` dtype.
    lse : ndarray, (B, Hq, Lq), or (Tq, Hq) packed
        Only with ``return_lse=True``.
    weights : ndarray, (B, Hq, Lq, Lk)
        Only with ``return_weights=True`` (after ``lse`` when both are asked for).

    Raises
    ------
    InvalidArgumentError
        (a ``ValueError``) for bad shapes, sizes or option values.
    InvalidTypeError
        (a ``TypeError``) for bad dtypes or argument types.
    """
    return attention(
        q, k, v, window_pattern(window), scale=scale, softcap=softcap, bias=bias, mask=mask,
        kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse, sinks=sinks,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, return_weights=return_weights, precision=precision,
    )  # fmt: skip


def chunked_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    chunk_size: int,
    causal: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: str = "bottom_right",
    return_lse: bool = False,
    sinks: Any = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
    return_weights: bool = False,
    precision: Any = None,
) -> Any:
    """Chunked (block-local) attention, as in Llama 4: the reference definition.

    Pattern: key ``j`` is allowed iff ``j // chunk_size == p // chunk_size``
    (floor division; a negative ``p`` lies in a chunk no key is in), and, with
    ``causal=True``, ``j <= p``. ``p = i + offset`` is the aligned position. The
    steps are in :mod:`attnref.reference.multihead`.

    Parameters
    ----------
    q : array, (B, Hq, Lq, D), or (Tq, Hq, D) packed
        Queries. float16, bfloat16, float32 or float64; ``k`` and ``v`` share its dtype.
    k : array, (B, Hkv, Lk, D), or (Tk, Hkv, D) packed
        Keys. ``Hq % Hkv == 0``; query head ``h`` reads kv head ``h // (Hq // Hkv)``.
    v : array, (B, Hkv, Lk, Dv), or (Tk, Hkv, Dv) packed
        Values.
    chunk_size : int
        Keys per chunk, >= 1, any size. When every aligned position lies in
        ``[0, chunk_size)`` (for example ``chunk_size >= Lk >= Lq``) this is
        global attention.
    causal : bool
        Also allow only keys at or before ``p`` (Llama 4's chunked layers).
    scale : float, optional
        Multiplies ``q . k``; finite and > 0. Default ``1 / sqrt(D)``.
    softcap : float, optional
        If given, ``s = softcap * tanh(s / softcap)`` before bias and mask.
    bias : float array, optional
        Broadcastable to ``(B, Hq, Lq, Lk)``; added to the scores after softcap.
    mask : bool array, optional
        Broadcastable to ``(B, Hq, Lq, Lk)``; True = may attend.
    kv_lengths : int array (B,), optional
        Key ``j`` of batch ``b`` is allowed only if ``j < kv_lengths[b]``.
    q_lengths : int array (B,), optional
        Query rows ``i >= q_lengths[b]`` are padding: output 0, lse ``-inf``.
    align : {"bottom_right", "top_left"}
        Aligned position ``p = i + offset``: ``offset = Lk_b - Lq_b`` for
        ``"bottom_right"`` (the default), ``0`` for ``"top_left"``.
    return_lse : bool
        Also return the log-sum-exp, natural log (``-inf`` for an empty row).
    sinks : float array (Hq,), optional
        One sink logit per query head, any floating dtype (step 5).
    cu_seqlens_q, cu_seqlens_k : int arrays (B + 1,), optional
        Offsets of packed sequences, given together (step 7). Not with
        ``bias``, ``mask``, ``kv_lengths``, ``q_lengths`` or ``return_weights``.
    return_weights : bool
        Also return the dense probabilities ``(B, Hq, Lq, Lk)`` (memory ``O(Lq Lk)``).
    precision : dtype, optional
        Run the same algorithm with every intermediate rounded to this dtype
        (products of 16-bit dtypes accumulate in float32). Default float64.

    Returns
    -------
    out : ndarray, (B, Hq, Lq, Dv), or (Tq, Hq, Dv) packed
        float64, or the ``precision`` dtype.
    lse : ndarray, (B, Hq, Lq), or (Tq, Hq) packed
        Only with ``return_lse=True``.
    weights : ndarray, (B, Hq, Lq, Lk)
        Only with ``return_weights=True`` (after ``lse`` when both are asked for).

    Raises
    ------
    InvalidArgumentError
        (a ``ValueError``) for bad shapes, sizes or option values.
    InvalidTypeError
        (a ``TypeError``) for bad dtypes or argument types.
    """
    return attention(
        q, k, v, chunk_pattern(chunk_size, causal), scale=scale, softcap=softcap, bias=bias, mask=mask,
        kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse, sinks=sinks,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, return_weights=return_weights, precision=precision,
    )  # fmt: skip


# -- validation, then dense or packed ------------------------------------------
def attention(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern,
    *,
    scale: Any = None,
    softcap: Any = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: Any = "bottom_right",
    return_lse: Any = False,
    sinks: Any = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
    return_weights: Any = False,
    precision: Any = None,
) -> Any:
    """The op of ``pattern`` (the three ops above call it): validate, then steps 1 to 7."""
    q, k, v = host_array("q", q), host_array("k", k), host_array("v", v)
    bias = None if bias is None else host_array("bias", bias)
    mask = None if mask is None else host_array("mask", mask)
    args = check_attention(
        q, k, v, scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths,
        align=align, return_lse=return_lse, sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
    )  # fmt: skip
    want_weights = check_flag("return_weights", return_weights)
    if want_weights and args.packed:
        raise invalid_value("return_weights", "True", "False with packed sequences (cu_seqlens_q/cu_seqlens_k)")
    dt = compute_dtype(precision)
    if args.packed:
        out, lse = _packed_attention(q, k, v, pattern, args, dt)
        weights = None
    else:
        out, lse, weights = dense_attention(q, k, v, pattern, args, dt, bias=bias, mask=mask, weights=want_weights)
    results = (out,) + ((lse,) if return_lse else ()) + ((weights,) if want_weights else ())
    return results[0] if len(results) == 1 else results


def _packed_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, pattern: Pattern, args: AttentionArgs, dt: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Step 7: each packed sequence is the dense op on its own rows."""
    out = np.zeros((args.q_len, args.q_heads, args.value_dim), dtype=dt)
    lse = np.full((args.q_len, args.q_heads), -np.inf, dtype=dt)
    for rows, keys, one in sequences(args):
        qb, kb, vb = sequence_view(q, rows), sequence_view(k, keys), sequence_view(v, keys)
        out_b, lse_b, _ = dense_attention(qb, kb, vb, pattern, one, dt)
        sequence_view(out, rows)[...] = out_b
        sequence_view(lse[..., None], rows)[..., 0] = lse_b
    return out, lse


def sequences(args: AttentionArgs) -> Iterator[tuple[slice, slice, AttentionArgs]]:
    """Step 7's cut: each packed sequence with query rows, as ``(rows, keys, one)``.

    ``rows`` and ``keys`` are its rows of the packed ``q`` and of ``k``/``v``
    (``cu_seqlens_q[b]:cu_seqlens_q[b + 1]``, ``cu_seqlens_k[b]:cu_seqlens_k[b + 1]``);
    ``one`` is the arguments of that sequence alone as a dense batch of one.
    A sequence without query rows has no output and no gradient: it is skipped.
    """
    cu_q, cu_k = args.cu_seqlens_q, args.cu_seqlens_k
    for b in range(args.batch):
        rows, keys = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        if rows.stop == rows.start:
            continue
        one = dataclasses.replace(
            args, batch=1, q_len=rows.stop - rows.start, kv_len=keys.stop - keys.start,
            cu_seqlens_q=None, cu_seqlens_k=None,
        )  # fmt: skip
        yield rows, keys, one


def sequence_view(packed: np.ndarray, part: slice) -> np.ndarray:
    """Rows ``part`` of a packed ``(T, H, n)`` array as a dense ``(1, H, L, n)`` view (writable if ``packed`` is)."""
    return np.swapaxes(packed[part], 0, 1)[None]


def dense_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    args: AttentionArgs,
    dt: np.dtype,
    *,
    bias: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    weights: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Steps 1 to 6 on validated dense inputs, block by block: ``(out, lse, weights or None)``."""
    out = np.zeros((args.batch, args.q_heads, args.q_len, args.value_dim), dtype=dt)
    lse = np.full((args.batch, args.q_heads, args.q_len), -np.inf, dtype=dt)
    dense_weights = np.zeros(args.scores_shape, dtype=dt) if weights else None
    for blk in blocks(args, pattern):
        _, s = block_scores(args, q, k, bias, blk, dt)  # steps 1 to 3
        allowed = block_allowed(args, pattern, mask, blk)  # step 4
        P, lse[blk.b, :, blk.rows] = masked_softmax(s, allowed, block_sinks(args, blk, dt))  # steps 5, 6
        out[blk.b, :, blk.rows] = _block_values(args, P, allowed, v, blk, dt)  # step 5: out = P v
        if dense_weights is not None:
            dense_weights[blk.b, :, blk.rows, blk.keys] = P
    return out, lse, dense_weights


# -- the steps, on one block -----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Block:
    """Query ``rows`` of batch ``b`` and the only ``keys`` they may see; ``offset``: ``p = i + offset``."""

    b: int
    rows: slice
    keys: slice
    offset: int


def blocks(args: AttentionArgs, pattern: Pattern) -> Iterator[Block]:
    """The query blocks of dense inputs, batch by batch, every row exactly once.

    Rows are planned with :meth:`~attnref.patterns.Pattern.plan_blocks` at the batch's own
    lengths and offset (padding rows included: step 4 leaves them no key); a
    block whose rows see no key has an empty ``keys`` slice.
    """
    offsets, kv_lens = args.offsets(), args.kv_lens()
    plans: dict[tuple[int, int], tuple[QueryBlock, ...]] = {}
    for b in range(args.batch):
        key = (int(offsets[b]), int(kv_lens[b]))
        if key not in plans:
            plans[key] = _plan(args, pattern, *key)
        for qb in plans[key]:
            yield Block(b, slice(qb.start, qb.stop), slice(qb.key_start, qb.key_stop), key[0])


def _plan(args: AttentionArgs, pattern: Pattern, offset: int, kv_len: int) -> tuple[QueryBlock, ...]:
    """The plan of one batch: of block heights ``2^n`` whose widest block fits :data:`SCORE_BLOCK_ELEMENTS`,
    the one that costs least, each block counting its score elements plus :data:`BLOCK_OVERHEAD_ELEMENTS`
    (a tall block scores keys that a band's rows cannot see; a short one pays the overhead more often)."""

    def plan(rows: int) -> tuple[QueryBlock, ...]:
        return pattern.plan_blocks(args.q_len, kv_len, offset=offset, block_rows=rows)

    def elements(block: QueryBlock) -> int:
        return args.q_heads * (block.stop - block.start) * (block.key_stop - block.key_start)

    def cost(plan: tuple[QueryBlock, ...]) -> int:
        return sum(elements(block) + BLOCK_OVERHEAD_ELEMENTS for block in plan)

    rows = 1 << max(0, args.q_len - 1).bit_length()  # the first power of two >= q_len
    best = plan(rows)
    while rows > 1 and max(map(elements, best), default=0) > SCORE_BLOCK_ELEMENTS:
        rows //= 2
        best = plan(rows)
    while rows > 1:  # shorter blocks, while that is cheaper
        shorter = plan(rows // 2)
        if cost(shorter) >= cost(best):
            break
        rows, best = rows // 2, shorter
    return best


def block_scores(
    args: AttentionArgs, q: np.ndarray, k: np.ndarray, bias: np.ndarray | None, blk: Block, dt: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1 to 3 for one block, ``(Hq, rows, keys)`` in ``dt``: ``(s0, s)``.

    ``s0 = scale * (q_i . k_j)`` (step 1, kept for the softcap's derivative) and
    ``s`` after softcap and bias. Query head ``h`` reads kv head ``h // group``:
    the query heads are viewed as ``(Hkv, group)``, so ``k`` is never repeated.
    """
    qg = cast(q[blk.b, :, blk.rows], dt).reshape(args.kv_heads, args.group, -1, args.head_dim)
    kg = cast(k[blk.b, :, blk.keys], dt)[:, None]
    s0 = (matmul(qg, np.swapaxes(kg, -1, -2), dt) * dt.type(args.scale)).astype(dt, copy=False)
    s0 = s0.reshape(args.q_heads, qg.shape[2], kg.shape[2])
    s = s0 if args.softcap is None else apply_softcap(s0, args.softcap, dt)
    if bias is not None:
        with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is NaN data, not an error
            s = (s + cast(np.broadcast_to(bias, args.scores_shape)[blk.b, :, blk.rows, blk.keys], dt)).astype(dt)
    return s0, s


def block_allowed(args: AttentionArgs, pattern: Pattern, mask: np.ndarray | None, blk: Block) -> np.ndarray:
    """Step 4 for one block: boolean ``(Hq, rows, keys)``, True where ``j`` is in ``A_i``."""
    i = np.arange(blk.rows.start, blk.rows.stop)[:, None]
    j = np.arange(blk.keys.start, blk.keys.stop)[None, :]
    ok = pattern.allows(i + blk.offset, j) & (j < args.kv_lens()[blk.b]) & (i < args.q_lens()[blk.b])
    ok = np.broadcast_to(ok, (args.q_heads, *ok.shape))
    if mask is not None:
        ok = ok & np.broadcast_to(mask, args.scores_shape)[blk.b, :, blk.rows, blk.keys]
    return ok


def block_sinks(args: AttentionArgs, blk: Block, dt: np.dtype) -> np.ndarray | None:
    """The sink logit of each row of the block, ``(Hq, rows, 1)`` in ``dt``: ``sinks_h``, and
    ``-inf`` (no sink) on padding rows, which stay outside their sequence (step 6)."""
    if args.sinks is None:
        return None
    inside = np.arange(blk.rows.start, blk.rows.stop) < args.q_lens()[blk.b]
    return np.where(inside[None, :, None], cast(args.sinks, dt)[:, None, None], dt.type(-np.inf)).astype(dt)


def _block_values(
    args: AttentionArgs, P: np.ndarray, allowed: np.ndarray, v: np.ndarray, blk: Block, dt: np.dtype
) -> np.ndarray:
    """``out_i = sum_{j in A_i} P_ij v_j`` for one block, ``(Hq, rows, Dv)``; kv head ``h // group`` again."""
    shape = (args.kv_heads, args.group, *P.shape[1:])
    vg = cast(v[blk.b, :, blk.keys], dt)[:, None]
    out = weighted_sum(P.reshape(shape), np.reshape(allowed, shape), vg, dt)
    return out.reshape(args.q_heads, -1, args.value_dim)
