"""Reference vector-Jacobian products (VJPs) of the three multi-head ops.

Given the upstream gradients ``dout`` (of ``out``) and ``dlse`` (of ``lse``;
0 when not given), for one batch ``b`` and query head ``h`` reading kv head
``h // group``, with ``A_i`` the allowed keys of row ``i`` and
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

``s0_ij = scale * (q_i . k_j)`` is the score before softcap and bias. Keys
outside ``A_i`` are *selected* away, never multiplied by 0: a NaN or inf in a
key, a value or a bias entry that row ``i`` may not see, in the query of a
padding row, or in the ``dout``/``dlse`` of a row with no allowed key, reaches
no gradient. A NaN of an allowed key reaches its row's gradients even where
its weight ``P_ij`` underflows to 0 (``0 * nan`` is NaN, as the formula says).
A row with no allowed key contributes nothing, and its ``dout`` is never read.

The computation follows the forward reference block by block: each block of
query rows scores only the keys its pattern can allow
(:meth:`~attnref.patterns.Pattern.key_range`), so a windowed or chunked VJP
costs O(L x window). Under ``precision=`` every intermediate is rounded to that
dtype, products of 16-bit dtypes accumulate in float32, and the sums over
query rows, query blocks and GQA groups (``dk``, ``dv``, ``dbias``) accumulate
in float32 for 16-bit dtypes and are rounded once at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnref.patterns import Pattern
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

#: Elements of one block's score array (query rows x keys x batch x heads);
#: bounds the memory of the VJP (32 MiB per float64 array).
BLOCK_ELEMENTS = 1 << 22

#: Query rows per block that the planner never goes below for a pattern whose
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
    precision: Any = None,
) -> tuple[np.ndarray, ...]:
    """Gradients of :func:`~attnref.reference.global_attention` (formulas in the module docstring).

    Parameters
    ----------
    q, k, v : array
        The forward inputs, ``(B, Hq, Lq, D)``, ``(B, Hkv, Lk, D)``, ``(B, Hkv, Lk, Dv)``.
    dout : array, (B, Hq, Lq, Dv)
        Gradient of the loss with respect to ``out``; any floating dtype.
    dlse : array, (B, Hq, Lq), optional
        Gradient with respect to ``lse`` (default 0); any floating dtype.
    causal, scale, softcap, bias, mask, kv_lengths, q_lengths, align
        The forward op's keyword arguments.
    precision : dtype, optional
        Run the same backward with every intermediate in this dtype (see the
        module docstring); default float64.

    Returns
    -------
    tuple of ndarray
        ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v``, then ``dbias`` shaped
        like ``bias`` when a ``bias`` is given; float64 (or ``precision``).
    """
    options = dict(scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths)
    return _attention_vjp(q, k, v, dout, full_pattern(causal), dlse, align, precision, **options)


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
    precision: Any = None,
) -> tuple[np.ndarray, ...]:
    """Gradients of :func:`~attnref.reference.local_attention`.

    Parameters and results as :func:`global_attention_vjp`, with the forward
    op's ``window`` in place of ``causal``.
    """
    options = dict(scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths)
    return _attention_vjp(q, k, v, dout, window_pattern(window), dlse, align, precision, **options)


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
    precision: Any = None,
) -> tuple[np.ndarray, ...]:
    """Gradients of :func:`~attnref.reference.chunked_attention`.

    Parameters and results as :func:`global_attention_vjp`, with the forward
    op's ``chunk_size`` and ``causal``.
    """
    options = dict(scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths)
    return _attention_vjp(q, k, v, dout, chunk_pattern(chunk_size, causal), dlse, align, precision, **options)


def _attention_vjp(
    q: Any,
    k: Any,
    v: Any,
    dout: Any,
    pattern: Pattern,
    dlse: Any,
    align: Any,
    precision: Any,
    *,
    scale: Any,
    softcap: Any,
    bias: Any,
    mask: Any,
    kv_lengths: Any,
    q_lengths: Any,
) -> tuple[np.ndarray, ...]:
    """Validate, then run the backward block by block."""
    q, k, v, dout = np.asarray(q), np.asarray(k), np.asarray(v), np.asarray(dout)
    bias = None if bias is None else np.asarray(bias)
    mask = None if mask is None else np.asarray(mask)
    args = check_attention(
        q, k, v, scale=scale, softcap=softcap, bias=bias, mask=mask,
        kv_lengths=kv_lengths, q_lengths=q_lengths, align=align,
    )  # fmt: skip
    B, Hq, Lq, _ = args.scores_shape
    check_upstream_gradient("dout", dout, (B, Hq, Lq, args.value_dim))
    if dlse is not None:
        dlse = np.asarray(dlse)
        check_upstream_gradient("dlse", dlse, (B, Hq, Lq))
    dt = compute_dtype(precision)
    grads = _Gradients(args, dt, None if bias is None else bias.shape)
    inputs = _Inputs(
        q=cast(q, dt), k=cast(k, dt), v=cast(v, dt), dout=cast(dout, dt),
        dlse=np.zeros((B, Hq, Lq), dtype=dt) if dlse is None else cast(dlse, dt),
        bias=None if bias is None else np.broadcast_to(bias, args.scores_shape),
        mask=None if mask is None else np.broadcast_to(mask, args.scores_shape),
    )  # fmt: skip
    for rows, keys in _blocks(args, pattern):
        _block_vjp(args, pattern, grads, inputs, rows, keys)
    return grads.result()


@dataclass(frozen=True)
class _Inputs:
    """The VJP's arrays: ``q``..``dlse`` in the compute dtype, ``bias``/``mask``
    broadcast (views) to ``(B, Hq, Lq, Lk)`` in their own dtypes."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dout: np.ndarray
    dlse: np.ndarray
    bias: np.ndarray | None
    mask: np.ndarray | None


class _Gradients:
    """The gradient accumulators.

    ``dq`` is written once per query block, in the compute dtype. ``dk``,
    ``dv`` and ``dbias`` sum terms over query blocks; they accumulate in
    float32 for 16-bit dtypes (as real kernels do) and are rounded once.
    """

    def __init__(self, args: AttentionArgs, dt: np.dtype, bias_shape: tuple[int, ...] | None) -> None:
        self.dt = dt
        self.acc = np.dtype(np.float32) if dt.itemsize == 2 else dt
        B, Hkv, Lk = args.batch, args.kv_heads, args.kv_len
        self.dq = np.zeros((B, args.q_heads, args.q_len, args.head_dim), dtype=dt)
        self.dk = np.zeros((B, Hkv, Lk, args.head_dim), dtype=self.acc)
        self.dv = np.zeros((B, Hkv, Lk, args.value_dim), dtype=self.acc)
        self.bias_shape = bias_shape
        # dbias is kept 4-D (size-1 axes where bias broadcasts) until the end
        self.dbias = None if bias_shape is None else np.zeros((1,) * (4 - len(bias_shape)) + bias_shape, self.acc)

    def add_bias(self, dS: np.ndarray, rows: slice, keys: slice) -> None:
        """Add a block's ``dS`` ``(B, Hq, rows, keys)``, summed over the axes ``bias`` broadcasts along."""
        acc = dS.astype(self.acc, copy=False)
        axes = tuple(a for a in range(4) if self.dbias.shape[a] == 1 and acc.shape[a] != 1)
        reduced = acc.sum(axis=axes, keepdims=True) if axes else acc
        row_index = slice(None) if self.dbias.shape[2] == 1 else rows
        key_index = slice(None) if self.dbias.shape[3] == 1 else keys
        self.dbias[:, :, row_index, key_index] += reduced

    def result(self) -> tuple[np.ndarray, ...]:
        """``(dq, dk, dv[, dbias])`` in the compute dtype."""
        grads = (self.dq, self.dk.astype(self.dt, copy=False), self.dv.astype(self.dt, copy=False))
        if self.dbias is None:
            return grads
        return (*grads, self.dbias.reshape(self.bias_shape).astype(self.dt, copy=False))


def _block_vjp(args: AttentionArgs, pattern: Pattern, grads: _Gradients, x: _Inputs, rows: slice, keys: slice) -> None:
    """Add the gradients of the query ``rows`` against the ``keys`` (all their allowed keys).

    The block is laid out per kv head (:func:`_per_kv_head`), so GQA reads
    each key once and the sums over a group happen inside the products.
    """
    dt = grads.dt
    zero, scale = dt.type(0), dt.type(args.scale)
    q_rows = _per_kv_head(args, x.q[:, :, rows])
    d_out = _per_kv_head(args, x.dout[:, :, rows])
    d_lse = _per_kv_head(args, x.dlse[:, :, rows, None])
    k_keys, v_keys = x.k[:, :, keys], x.v[:, :, keys]
    allowed = _per_kv_head(args, _allowed(args, pattern, x.mask, rows, keys))
    bias = None if x.bias is None else _per_kv_head(args, cast(x.bias[:, :, rows, keys], dt))
    s0, s = _scores(args, q_rows, k_keys, bias, dt)
    P, _ = masked_softmax(s, allowed)
    out = weighted_sum(P, allowed, v_keys, dt)
    has_key = allowed.any(axis=-1, keepdims=True)
    delta = np.where(has_key, _row_dot(d_out, out, dt), zero)  # an empty row's dout is never read
    with np.errstate(invalid="ignore", over="ignore"):
        dP = matmul(d_out, np.swapaxes(v_keys, -1, -2), dt)
        dS = np.where(allowed, P * (dP - delta + d_lse), zero).astype(dt, copy=False)
        if grads.dbias is not None:
            grads.add_bias(_per_query_head(args, dS), rows, keys)
        if args.softcap is not None:
            slope = dt.type(1) - np.tanh(s0 / dt.type(args.softcap)) ** 2
            dS = np.where(allowed, dS * slope, zero).astype(dt, copy=False)
        dq = (scale * weighted_sum(dS, allowed, k_keys, dt)).astype(dt, copy=False)
        allowed_t = np.swapaxes(allowed, -1, -2)
        dk = (scale * weighted_sum(_transposed(dS), allowed_t, q_rows, dt)).astype(dt, copy=False)
    dv = weighted_sum(_transposed(P), allowed_t, d_out, dt)
    grads.dq[:, :, rows] = _per_query_head(args, dq)
    grads.dk[:, :, keys] += dk
    grads.dv[:, :, keys] += dv


def _per_kv_head(args: AttentionArgs, x: np.ndarray) -> np.ndarray:
    """``(B, Hq, R, n)`` as ``(B, Hkv, group * R, n)``: the rows of the query
    heads ``h`` that read kv head ``h // group``, stacked (a copy if needed)."""
    B, _, R, n = x.shape
    return x.reshape(B, args.kv_heads, args.group * R, n)


def _per_query_head(args: AttentionArgs, x: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_per_kv_head`."""
    B, _, gR, n = x.shape
    return x.reshape(B, args.q_heads, gR // args.group, n)


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


def _allowed(args: AttentionArgs, pattern: Pattern, mask: np.ndarray | None, rows: slice, keys: slice) -> np.ndarray:
    """Boolean ``(B, Hq, len(rows), len(keys))``: may query row ``i`` see key ``j``?

    ``mask`` is already broadcast to ``(B, Hq, Lq, Lk)``.
    """
    i = np.arange(rows.start, rows.stop)[None, :, None]
    j = np.arange(keys.start, keys.stop)[None, None, :]
    ok = np.asarray(pattern.allows(i + args.offsets()[:, None, None], j))
    if args.kv_lengths is not None:
        ok = ok & (j < args.kv_lengths[:, None, None])
    if args.q_lengths is not None:
        ok = ok & (i < args.q_lengths[:, None, None])
    ok = np.broadcast_to(ok[:, None], (args.batch, args.q_heads, i.shape[1], j.shape[2]))
    if mask is not None:
        ok = ok & mask[:, :, rows, keys]
    return ok


def _blocks(args: AttentionArgs, pattern: Pattern) -> Iterator[tuple[slice, slice]]:
    """Blocks of query rows, each with the range of keys its pattern can allow.

    Rows past every batch's ``q_lengths`` are padding and skipped. A block
    grows to :data:`MIN_BLOCK_ROWS` rows or to the key span of one row,
    whichever is larger, as long as its score array stays within
    :data:`BLOCK_ELEMENTS`.
    """
    offsets = args.offsets()
    last_row = args.q_len if args.q_lengths is None else int(args.q_lengths.max(initial=0))
    last_key = args.kv_len if args.kv_lengths is None else int(args.kv_lengths.max(initial=0))
    per_key = args.batch * args.q_heads

    def key_range(start: int, stop: int) -> slice:
        lo, hi = pattern.key_range(start + int(offsets.min()), stop - 1 + int(offsets.max()), last_key)
        return slice(lo, max(lo, hi))

    start = 0
    while start < last_row:
        one_row = key_range(start, start + 1)
        n = min(last_row - start, max(MIN_BLOCK_ROWS, one_row.stop - one_row.start))
        keys = key_range(start, start + n)
        while n > 1 and n * (keys.stop - keys.start) * per_key > BLOCK_ELEMENTS:
            n = max(1, n // 2)
            keys = key_range(start, start + n)
        if keys.stop > keys.start:
            yield slice(start, start + n), keys
        start += n
