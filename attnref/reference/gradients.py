"""Reference vector-Jacobian products (VJPs) of the three multi-head ops.

Given the upstream gradients ``dout`` (of ``out``) and ``dlse`` (of ``lse``;
0 when not given), for one sequence and query head ``h`` reading kv head
``h // group``, with ``A_i`` the allowed keys of row ``i``, ``lse_i`` the
forward's log-sum-exp (with the sink ``sinks[h]`` when given) and
``P_ij = exp(s_ij - lse_i)`` the forward weights (0 off ``A_i``)::

    out_i    = sum_{j in A_i} P_ij v_j                       (the forward output)
    delta_i  = dout_i . out_i                                (0 when A_i is empty)
    dP_ij    = dout_i . v_j                                  (j in A_i)
    dS_ij    = P_ij (dP_ij - delta_i + dlse_i)               (j in A_i; else 0)
    dS0_ij   = dS_ij (1 - tanh(s0_ij / softcap)^2)           (with softcap; else dS_ij)
    dq_i     = scale sum_{j in A_i} dS0_ij k_j
    dk_j     = scale sum_{h in group} sum_{i : j in A_i} dS0_ij q_i
    dv_j     = sum_{h in group} sum_{i : j in A_i} P_ij dout_i
    dbias    = dS, summed over the axes along which ``bias`` broadcasts
    dsinks_h = sum_{b, i} exp(sinks[h] - lse_i) (dlse_i - delta_i)

``s0_ij = scale * (q_i . k_j)`` is the score before softcap and bias. Keys
outside ``A_i`` are *selected* away, never multiplied by 0: a NaN or inf in a
key, a value or a bias entry that row ``i`` may not see, in the query of a
padding row, or in the ``dout``/``dlse`` of a row with no allowed key, reaches
no gradient. A NaN of an allowed key reaches its row's gradients even where
its weight ``P_ij`` underflows to 0 (``0 * nan`` is NaN, as the formula says).
A row with no allowed key contributes nothing to ``dq``, ``dk``, ``dv``,
``dbias`` and its ``dout`` is never read; with a sink it adds ``dlse_i`` to
``dsinks`` (its weight on the sink is 1, its ``out`` exactly 0). Padding rows
(``i >= q_lengths[b]``) contribute nothing at all. A sink of ``-inf`` adds
exactly 0 (it is no sink); a NaN sink makes its head's gradients NaN.

Packed sequences (``cu_seqlens_q``/``cu_seqlens_k``) are the dense VJP of
each sequence alone, written into gradients shaped like the packed inputs.

The computation follows the forward reference block by block: each block of
query rows of a sequence scores only the keys its pattern can allow
(:meth:`~attnref.patterns.Pattern.plan_blocks`), so a windowed or chunked VJP
costs O(L x window). Under ``precision=`` every intermediate is rounded to that
dtype, products of 16-bit dtypes accumulate in float32, and the sums over
query blocks and sequences (``dk``, ``dv``, ``dbias``, ``dsinks``) accumulate
in float32 for 16-bit dtypes and are rounded once at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnref.patterns import Pattern, QueryBlock
from attnref.reference._numerics import apply_softcap, cast, compute_dtype, masked_softmax, matmul, weighted_sum
from attnref.validation import (
    AttentionArgs,
    check_attention,
    check_upstream_gradient,
    chunk_pattern,
    full_pattern,
    window_pattern,
)

__all__ = ["global_attention_vjp", "local_attention_vjp", "chunked_attention_vjp"]

#: About the most elements of one block's score array (query heads x rows x
#: keys): bounds the VJP's memory (32 MiB per float64 array).
BLOCK_ELEMENTS = 1 << 22

#: Query rows per block that the planner does not go below for a pattern whose
#: rows see few keys: fewer, smaller blocks would only add Python overhead.
MIN_BLOCK_ROWS = 128


def global_attention_vjp(
    q: Any,
    k: Any,
    v: Any,
    dout: Any,
    *,
    dlse: Any = None,
    causal: Any = False,
    scale: Any = None,
    softcap: Any = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: Any = "bottom_right",
    sinks: Any = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
    precision: Any = None,
) -> tuple[np.ndarray, ...]:
    """Gradients of :func:`~attnref.reference.global_attention` (formulas in the module docstring).

    Parameters
    ----------
    q, k, v : array
        The forward inputs, ``(B, Hq, Lq, D)``, ``(B, Hkv, Lk, D)``,
        ``(B, Hkv, Lk, Dv)``; packed: ``(Tq, Hq, D)``, ``(Tk, Hkv, D)``, ``(Tk, Hkv, Dv)``.
    dout : array
        Gradient of the loss with respect to ``out``, shaped like ``out``
        (``(B, Hq, Lq, Dv)``; packed ``(Tq, Hq, Dv)``); any floating dtype.
    dlse : array, optional
        Gradient with respect to ``lse``, shaped like ``lse`` (``(B, Hq, Lq)``;
        packed ``(Tq, Hq)``); any floating dtype. Default 0.
    causal, scale, softcap, bias, mask, kv_lengths, q_lengths, align, sinks, cu_seqlens_q, cu_seqlens_k
        The forward op's keyword arguments.
    precision : dtype, optional
        Run the same backward with every intermediate in this dtype (see the
        module docstring); default float64.

    Returns
    -------
    tuple of ndarray
        ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v``; then ``dbias`` shaped
        like ``bias`` when a ``bias`` is given; then ``dsinks`` ``(Hq,)`` when
        ``sinks`` are given. float64, or the ``precision`` dtype.
    """
    options = dict(
        scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths,
        align=align, sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
    )  # fmt: skip
    return _attention_vjp(q, k, v, dout, full_pattern(causal), dlse, precision, options)


def local_attention_vjp(
    q: Any,
    k: Any,
    v: Any,
    dout: Any,
    *,
    window: Any,
    dlse: Any = None,
    scale: Any = None,
    softcap: Any = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: Any = "bottom_right",
    sinks: Any = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
    precision: Any = None,
) -> tuple[np.ndarray, ...]:
    """Gradients of :func:`~attnref.reference.local_attention`.

    Parameters and results as :func:`global_attention_vjp`, with the forward
    op's ``window`` in place of ``causal``.
    """
    options = dict(
        scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths,
        align=align, sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
    )  # fmt: skip
    return _attention_vjp(q, k, v, dout, window_pattern(window), dlse, precision, options)


def chunked_attention_vjp(
    q: Any,
    k: Any,
    v: Any,
    dout: Any,
    *,
    chunk_size: Any,
    causal: Any = False,
    dlse: Any = None,
    scale: Any = None,
    softcap: Any = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: Any = "bottom_right",
    sinks: Any = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
    precision: Any = None,
) -> tuple[np.ndarray, ...]:
    """Gradients of :func:`~attnref.reference.chunked_attention`.

    Parameters and results as :func:`global_attention_vjp`, with the forward
    op's ``chunk_size`` and ``causal``.
    """
    options = dict(
        scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths,
        align=align, sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
    )  # fmt: skip
    return _attention_vjp(q, k, v, dout, chunk_pattern(chunk_size, causal), dlse, precision, options)


def _attention_vjp(
    q: Any, k: Any, v: Any, dout: Any, pattern: Pattern, dlse: Any, precision: Any, options: dict[str, Any]
) -> tuple[np.ndarray, ...]:
    """Validate, then run the backward sequence by sequence, block by block."""
    q, k, v, dout = np.asarray(q), np.asarray(k), np.asarray(v), np.asarray(dout)
    bias = None if options["bias"] is None else np.asarray(options["bias"])
    mask = None if options["mask"] is None else np.asarray(options["mask"])
    args = check_attention(q, k, v, **{**options, "bias": bias, "mask": mask})
    out_shape = (*q.shape[:-1], args.value_dim)
    check_upstream_gradient("dout", dout, out_shape)
    if dlse is not None:
        dlse = np.asarray(dlse)
        check_upstream_gradient("dlse", dlse, out_shape[:-1])
    dt = compute_dtype(precision)
    x = _Inputs(
        q=cast(q, dt), k=cast(k, dt), v=cast(v, dt), dout=cast(dout, dt),
        dlse=np.zeros(out_shape[:-1], dtype=dt) if dlse is None else cast(dlse, dt),
        bias=None if bias is None else np.broadcast_to(bias, args.scores_shape),
        mask=None if mask is None else np.broadcast_to(mask, args.scores_shape),
        sinks=None if args.sinks is None else cast(args.sinks, dt),
    )  # fmt: skip
    grads = _Gradients(args, dt, q.shape, k.shape, v.shape, None if bias is None else bias.shape)
    for seq in _sequences(args, x, grads):
        rows = _block_rows(pattern, args.q_heads, seq)
        for block in pattern.plan_blocks(seq.q_len, seq.kv_len, offset=seq.offset, block_rows=rows):
            if not block.empty or x.sinks is not None:  # an empty block matters only to dsinks
                _block_vjp(args, pattern, x, grads, seq, block)
    return grads.result()


@dataclass(frozen=True)
class _Inputs:
    """The VJP's arrays in the compute dtype (``bias``/``mask`` broadcast views, own dtypes)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dout: np.ndarray
    dlse: np.ndarray
    bias: np.ndarray | None
    mask: np.ndarray | None
    sinks: np.ndarray | None


class _Gradients:
    """The gradients, shaped like the inputs.

    ``dq`` is written once per query block, in the compute dtype. ``dk``,
    ``dv``, ``dbias`` and ``dsinks`` sum terms over query blocks and
    sequences; they accumulate in float32 for 16-bit dtypes (as real kernels
    do) and are rounded once in :meth:`result`.
    """

    def __init__(
        self,
        args: AttentionArgs,
        dt: np.dtype,
        q_shape: tuple[int, ...],
        k_shape: tuple[int, ...],
        v_shape: tuple[int, ...],
        bias_shape: tuple[int, ...] | None,
    ) -> None:
        self.dt = dt
        self.acc = np.dtype(np.float32) if dt.itemsize == 2 else dt
        self.dq = np.zeros(q_shape, dtype=dt)
        self.dk = np.zeros(k_shape, dtype=self.acc)
        self.dv = np.zeros(v_shape, dtype=self.acc)
        self.bias_shape = bias_shape
        # dbias is kept 4-D (size-1 axes where bias broadcasts) until the end
        self.dbias = None if bias_shape is None else np.zeros((1,) * (4 - len(bias_shape)) + bias_shape, self.acc)
        self.dsinks = None if args.sinks is None else np.zeros(args.q_heads, dtype=self.acc)

    def add_bias(self, batch: int, dS: np.ndarray, rows: slice, keys: slice) -> None:
        """Add a block's ``dS`` ``(Hq, rows, keys)`` of sequence ``batch``, summed
        over the axes along which ``bias`` broadcasts."""
        acc = dS.astype(self.acc, copy=False)
        axes = tuple(a for a in range(3) if self.dbias.shape[a + 1] == 1 and acc.shape[a] != 1)
        reduced = acc.sum(axis=axes, keepdims=True) if axes else acc
        b = 0 if self.dbias.shape[0] == 1 else batch
        row_index = slice(None) if self.dbias.shape[2] == 1 else rows
        key_index = slice(None) if self.dbias.shape[3] == 1 else keys
        self.dbias[b, :, row_index, key_index] += reduced

    def result(self) -> tuple[np.ndarray, ...]:
        """``(dq, dk, dv)``, then ``dbias``, then ``dsinks``, in the compute dtype."""
        grads = [self.dq, self.dk.astype(self.dt, copy=False), self.dv.astype(self.dt, copy=False)]
        if self.dbias is not None:
            grads.append(self.dbias.reshape(self.bias_shape).astype(self.dt, copy=False))
        if self.dsinks is not None:
            grads.append(self.dsinks.astype(self.dt, copy=False))
        return tuple(grads)


@dataclass(frozen=True)
class _Sequence:
    """One sequence: head-major views ``(H, L, n)`` of its inputs and of its gradients.

    ``bias``/``mask`` are ``(Hq, q_len, kv_len)`` views; ``batch`` indexes
    ``dbias`` (dense inputs only).
    """

    batch: int
    q_len: int
    kv_len: int
    offset: int
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dout: np.ndarray
    dlse: np.ndarray
    bias: np.ndarray | None
    mask: np.ndarray | None
    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray


def _sequences(args: AttentionArgs, x: _Inputs, grads: _Gradients) -> Iterator[_Sequence]:
    """Each sequence alone: batch ``b`` cut to its lengths, or packed rows ``cu_seqlens[b]:cu_seqlens[b + 1]``.

    Rows past ``q_lengths[b]`` and keys past ``kv_lengths[b]`` are not part of
    the sequence: they are never read, and their gradients stay 0.
    """
    q_lens, kv_lens, offsets = args.q_lens(), args.kv_lens(), args.offsets()
    for b in range(args.batch):
        if args.packed:
            rq = slice(int(args.cu_seqlens_q[b]), int(args.cu_seqlens_q[b + 1]))
            rk = slice(int(args.cu_seqlens_k[b]), int(args.cu_seqlens_k[b + 1]))
        else:
            rq, rk = slice(0, int(q_lens[b])), slice(0, int(kv_lens[b]))
        yield _Sequence(
            batch=b, q_len=int(q_lens[b]), kv_len=int(kv_lens[b]), offset=int(offsets[b]),
            q=_cut(args, x.q, b, rq), k=_cut(args, x.k, b, rk), v=_cut(args, x.v, b, rk),
            dout=_cut(args, x.dout, b, rq), dlse=_cut(args, x.dlse, b, rq),
            bias=None if x.bias is None else x.bias[b, :, rq, rk],
            mask=None if x.mask is None else x.mask[b, :, rq, rk],
            dq=_cut(args, grads.dq, b, rq), dk=_cut(args, grads.dk, b, rk), dv=_cut(args, grads.dv, b, rk),
        )  # fmt: skip


def _cut(args: AttentionArgs, a: np.ndarray, b: int, positions: slice) -> np.ndarray:
    """A head-major view ``(H, L, ...)`` of sequence ``b``'s ``positions``: of
    batch ``b`` of a dense ``(B, H, L, ...)`` array, or of a packed ``(T, H, ...)`` one."""
    return np.swapaxes(a[positions], 0, 1) if args.packed else a[b, :, positions]


def _block_rows(pattern: Pattern, heads: int, seq: _Sequence) -> int:
    """Query rows per block: as many as one row sees keys (at least
    :data:`MIN_BLOCK_ROWS`), halved until a block's scores hold about
    :data:`BLOCK_ELEMENTS` elements or fewer."""

    def widest(rows: int) -> int:
        # the key range of a block of `rows` at the start, the middle and the end of the sequence
        starts = {0, max(0, (seq.q_len - rows) // 2), max(0, seq.q_len - rows)}
        ranges = (pattern.key_range(s + seq.offset, s + rows - 1 + seq.offset, seq.kv_len) for s in starts)
        return max(hi - lo for lo, hi in ranges)

    rows = max(1, min(seq.q_len, max(MIN_BLOCK_ROWS, widest(1))))
    while rows > 1 and heads * rows * widest(rows) > BLOCK_ELEMENTS:
        rows //= 2
    return rows


def _block_vjp(
    args: AttentionArgs, pattern: Pattern, x: _Inputs, grads: _Gradients, seq: _Sequence, block: QueryBlock
) -> None:
    """Add the gradients of one block: its query rows against the keys they may see.

    The block is laid out per kv head (:func:`_per_kv_head`), so GQA reads
    each key once and the sums over a group happen inside the products.
    """
    dt = grads.dt
    zero, scale = dt.type(0), dt.type(args.scale)
    rows, keys = slice(block.start, block.stop), slice(block.key_start, block.key_stop)
    q_rows = _per_kv_head(args, seq.q[:, rows])
    d_out = _per_kv_head(args, seq.dout[:, rows])
    d_lse = _per_kv_head(args, seq.dlse[:, rows, None])
    k_keys, v_keys = seq.k[:, keys], seq.v[:, keys]
    allowed = _per_kv_head(args, _allowed(args, pattern, seq, rows, keys))
    bias = None if seq.bias is None else _per_kv_head(args, cast(seq.bias[:, rows, keys], dt))
    s0, s = _scores(args, q_rows, k_keys, bias, dt)
    if x.sinks is None:
        P, _ = masked_softmax(s, allowed)
    else:
        P, p_sink, sink = _softmax_with_sink(args, s, allowed, x.sinks)
    out = weighted_sum(P, allowed, v_keys, dt)
    has_key = allowed.any(axis=-1, keepdims=True)
    delta = np.where(has_key, _row_dot(d_out, out, dt), zero)  # an empty row's dout is never read
    with np.errstate(invalid="ignore", over="ignore"):
        dP = matmul(d_out, np.swapaxes(v_keys, -1, -2), dt)
        dS = np.where(allowed, P * (dP - delta + d_lse), zero).astype(dt, copy=False)
        if grads.dbias is not None:
            grads.add_bias(seq.batch, _per_query_head(args, dS), rows, keys)
        if grads.dsinks is not None:
            # exp(sinks[h] - lse_i) (dlse_i - delta_i); a -inf sink is no sink: exactly 0, whatever dlse holds
            terms = np.where(sink == -np.inf, zero, p_sink * (d_lse - delta)).astype(grads.acc)
            grads.dsinks += _per_query_head(args, terms).sum(axis=(1, 2))
        if args.softcap is not None:
            slope = dt.type(1) - np.tanh(s0 / dt.type(args.softcap)) ** 2
            dS = np.where(allowed, dS * slope, zero).astype(dt, copy=False)
        dq = (scale * weighted_sum(dS, allowed, k_keys, dt)).astype(dt, copy=False)
        allowed_t = np.swapaxes(allowed, -1, -2)
        dk = (scale * weighted_sum(_transposed(dS), allowed_t, q_rows, dt)).astype(dt, copy=False)
    dv = weighted_sum(_transposed(P), allowed_t, d_out, dt)
    seq.dq[:, rows] = _per_query_head(args, dq)
    seq.dk[:, keys] += dk
    seq.dv[:, keys] += dv


def _softmax_with_sink(
    args: AttentionArgs, s: np.ndarray, allowed: np.ndarray, sinks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The forward weights with the sink as one more, always allowed key.

    Returns ``(P, p_sink, sink)``: the weights of the keys, ``exp(sinks[h] -
    lse_i)`` and the sink logit of each row, the last two with a trailing axis
    of 1, all per kv head like ``s``.
    """
    heads, rows = s.shape[0], s.shape[1]
    per_head = np.broadcast_to(sinks.reshape(args.q_heads, 1, 1), (args.q_heads, rows // args.group, 1))
    sink = _per_kv_head(args, per_head)
    P, _ = masked_softmax(
        np.concatenate([s, sink], axis=-1), np.concatenate([allowed, np.ones((heads, rows, 1), dtype=bool)], axis=-1)
    )
    return P[..., :-1], P[..., -1:], sink


def _per_kv_head(args: AttentionArgs, x: np.ndarray) -> np.ndarray:
    """``(Hq, R, n)`` as ``(Hkv, group * R, n)``: the rows of the query heads
    ``h`` that read kv head ``h // group``, stacked (a copy if needed)."""
    _, R, n = x.shape
    return x.reshape(args.kv_heads, args.group * R, n)


def _per_query_head(args: AttentionArgs, x: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_per_kv_head`."""
    _, gR, n = x.shape
    return x.reshape(args.q_heads, gR // args.group, n)


def _transposed(x: np.ndarray) -> np.ndarray:
    """``x`` with its last two axes swapped, contiguous (BLAS is several times
    faster on it than on the strided view when the block has few rows)."""
    return np.ascontiguousarray(np.swapaxes(x, -1, -2))


def _row_dot(a: np.ndarray, b: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``sum_c a[..., c] * b[..., c]`` with a trailing axis of 1, as a product in ``dt``."""
    return matmul(a[..., None, :], b[..., :, None], dt)[..., 0].astype(dt, copy=False)


def _scores(
    args: AttentionArgs, q_rows: np.ndarray, k_keys: np.ndarray, bias: np.ndarray | None, dt: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """``(s0, s)`` of a block: ``s0 = scale * q . k``, ``s`` after softcap and bias, in ``dt``."""
    s0 = (matmul(q_rows, np.swapaxes(k_keys, -1, -2), dt) * dt.type(args.scale)).astype(dt, copy=False)
    s = s0 if args.softcap is None else apply_softcap(s0, args.softcap, dt)
    if bias is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            s = (s + bias).astype(dt, copy=False)
    return s0, s


def _allowed(args: AttentionArgs, pattern: Pattern, seq: _Sequence, rows: slice, keys: slice) -> np.ndarray:
    """Boolean ``(Hq, len(rows), len(keys))``: may query row ``i`` of the sequence see its key ``j``?

    The pattern at ``p = i + offset`` and the mask; the lengths are already
    the sequence's own (its rows and keys end there).
    """
    i = np.arange(rows.start, rows.stop)[:, None]
    j = np.arange(keys.start, keys.stop)[None, :]
    ok = np.broadcast_to(np.asarray(pattern.allows(i + seq.offset, j)), (args.q_heads, i.shape[0], j.shape[1]))
    if seq.mask is not None:
        ok = ok & seq.mask[:, rows, keys]
    return ok
