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

The computation follows the forward reference (:mod:`attnref.reference.multihead`)
block by block, with its steps: each block of query rows scores only the keys
its pattern can allow, so a windowed or chunked VJP costs O(L x window).
Under ``precision=`` every intermediate is rounded to that dtype, products of
16-bit dtypes accumulate in float32, and the sums over query blocks and
sequences (``dk``, ``dv``, ``dbias``, ``dsinks``) accumulate in float32 for
16-bit dtypes and are rounded once at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from attnref.patterns import Pattern
from attnref.reference._numerics import cast, compute_dtype, masked_softmax, matmul, weighted_sum
from attnref.reference.multihead import (
    Block,
    block_allowed,
    block_scores,
    block_sinks,
    blocks,
    sequence_view,
    sequences,
)
from attnref.validation import (
    AttentionArgs,
    check_attention,
    check_upstream_gradient,
    chunk_pattern,
    full_pattern,
    host_array,
    window_pattern,
)

__all__ = ["global_attention_vjp", "local_attention_vjp", "chunked_attention_vjp"]


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
    """Validate, then run the backward: dense inputs at once, packed ones sequence by sequence."""
    q, k, v, dout = host_array("q", q), host_array("k", k), host_array("v", v), host_array("dout", dout)
    bias = None if options["bias"] is None else host_array("bias", options["bias"])
    mask = None if options["mask"] is None else host_array("mask", options["mask"])
    args = check_attention(q, k, v, **{**options, "bias": bias, "mask": mask})
    out_shape = (*q.shape[:-1], args.value_dim)
    check_upstream_gradient("dout", dout, out_shape)
    if dlse is not None:
        dlse = host_array("dlse", dlse)
        check_upstream_gradient("dlse", dlse, out_shape[:-1])
    dt = compute_dtype(precision)
    x = _Inputs(
        q=cast(q, dt), k=cast(k, dt), v=cast(v, dt), dout=cast(dout, dt),
        dlse=np.zeros(out_shape[:-1], dtype=dt) if dlse is None else cast(dlse, dt), bias=bias, mask=mask,
    )  # fmt: skip
    grads = _Gradients.zeros(args, dt, q.shape, k.shape, v.shape, None if bias is None else bias.shape)
    if args.packed:
        _packed_vjp(args, pattern, x, grads)
    else:
        _dense_vjp(args, pattern, x, grads)
    return grads.result()


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """The VJP's arrays: ``q`` to ``dlse`` in the compute dtype, ``bias``/``mask`` as given."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dout: np.ndarray
    dlse: np.ndarray
    bias: np.ndarray | None
    mask: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class _Gradients:
    """The gradients, shaped like the inputs (or views of a packed sequence's part of them).

    ``dq`` is written once per query block, in the compute dtype ``dt``. ``dk``,
    ``dv``, ``dbias`` and ``dsinks`` sum terms over query blocks and sequences
    in ``acc``: float32 for 16-bit dtypes (as real kernels accumulate), else
    ``dt``; :meth:`result` rounds them once. ``dbias`` is kept 4-D, with size-1
    axes where the bias broadcasts.
    """

    dt: np.dtype
    acc: np.dtype
    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
    dbias: np.ndarray | None
    dsinks: np.ndarray | None
    bias_shape: tuple[int, ...] | None

    @classmethod
    def zeros(
        cls,
        args: AttentionArgs,
        dt: np.dtype,
        q_shape: tuple[int, ...],
        k_shape: tuple[int, ...],
        v_shape: tuple[int, ...],
        bias_shape: tuple[int, ...] | None,
    ) -> _Gradients:
        acc = np.dtype(np.float32) if dt.itemsize == 2 else dt
        return cls(
            dt=dt, acc=acc, dq=np.zeros(q_shape, dt), dk=np.zeros(k_shape, acc), dv=np.zeros(v_shape, acc),
            dbias=None if bias_shape is None else np.zeros((1,) * (4 - len(bias_shape)) + bias_shape, acc),
            dsinks=None if args.sinks is None else np.zeros(args.q_heads, acc), bias_shape=bias_shape,
        )  # fmt: skip

    def add_bias(self, blk: Block, dS: np.ndarray) -> None:
        """Add a block's ``dS`` ``(Hq, rows, keys)``, summed over the axes along which ``bias`` broadcasts."""
        acc = dS.astype(self.acc, copy=False)
        axes = tuple(a for a in range(3) if self.dbias.shape[a + 1] == 1 and acc.shape[a] != 1)
        reduced = acc.sum(axis=axes, keepdims=True) if axes else acc
        b = 0 if self.dbias.shape[0] == 1 else blk.b
        rows = slice(None) if self.dbias.shape[2] == 1 else blk.rows
        keys = slice(None) if self.dbias.shape[3] == 1 else blk.keys
        self.dbias[b, :, rows, keys] += reduced

    def result(self) -> tuple[np.ndarray, ...]:
        """``(dq, dk, dv)``, then ``dbias``, then ``dsinks``, in the compute dtype."""
        grads = [self.dq, self.dk.astype(self.dt, copy=False), self.dv.astype(self.dt, copy=False)]
        if self.dbias is not None:
            grads.append(self.dbias.reshape(self.bias_shape).astype(self.dt, copy=False))
        if self.dsinks is not None:
            grads.append(self.dsinks.astype(self.dt, copy=False))
        return tuple(grads)


def _packed_vjp(args: AttentionArgs, pattern: Pattern, x: _Inputs, grads: _Gradients) -> None:
    """Each packed sequence is the dense VJP of its own rows (step 7's :func:`sequences`), written
    through views into the packed gradients; ``dsinks`` sums over the sequences."""
    for rows, keys, one in sequences(args):
        xb = _Inputs(
            q=sequence_view(x.q, rows), k=sequence_view(x.k, keys), v=sequence_view(x.v, keys),
            dout=sequence_view(x.dout, rows), dlse=sequence_view(x.dlse[..., None], rows)[..., 0], bias=None, mask=None,
        )  # fmt: skip
        gb = dataclasses.replace(
            grads, dq=sequence_view(grads.dq, rows), dk=sequence_view(grads.dk, keys), dv=sequence_view(grads.dv, keys)
        )
        _dense_vjp(one, pattern, xb, gb)


def _dense_vjp(args: AttentionArgs, pattern: Pattern, x: _Inputs, grads: _Gradients) -> None:
    """The backward of dense inputs, on the forward's blocks; a block whose rows
    see no key matters only to ``dsinks`` (each row adds its ``dlse``)."""
    for blk in blocks(args, pattern):
        if blk.keys.stop > blk.keys.start or grads.dsinks is not None:
            _block_vjp(args, pattern, x, grads, blk)


def _block_vjp(args: AttentionArgs, pattern: Pattern, x: _Inputs, grads: _Gradients, blk: Block) -> None:
    """Add the gradients of one block: its query rows against the keys they may see.

    The forward's steps give ``s0``, ``s``, ``A`` and ``P`` (``(Hq, rows,
    keys)``); the products then run per kv head (:func:`_per_kv_head`), so GQA
    reads each key once and the sums over a group happen inside them.
    """
    dt = grads.dt
    zero, scale = dt.type(0), dt.type(args.scale)
    s0, s = block_scores(args, x.q, x.k, x.bias, blk, dt)  # steps 1 to 3
    allowed = block_allowed(args, pattern, x.mask, blk)  # step 4
    sink = block_sinks(args, blk, dt)
    P, lse = masked_softmax(s, allowed, sink)  # steps 5, 6
    shape = P.shape  # (Hq, rows, keys)
    P, allowed = _per_kv_head(args, P), _per_kv_head(args, allowed)
    q_rows = _per_kv_head(args, x.q[blk.b, :, blk.rows])
    d_out = _per_kv_head(args, x.dout[blk.b, :, blk.rows])
    d_lse = _per_kv_head(args, x.dlse[blk.b, :, blk.rows, None])
    k_keys, v_keys = x.k[blk.b, :, blk.keys], x.v[blk.b, :, blk.keys]
    out = weighted_sum(P, allowed, v_keys, dt)
    has_key = allowed.any(axis=-1, keepdims=True)
    delta = np.where(has_key, _row_dot(d_out, out, dt), zero)  # an empty row's dout is never read
    with np.errstate(invalid="ignore", over="ignore"):
        dP = matmul(d_out, np.swapaxes(v_keys, -1, -2), dt)
        dS = np.where(allowed, P * (dP - delta + d_lse), zero).astype(dt, copy=False)
        if grads.dbias is not None:
            grads.add_bias(blk, dS.reshape(shape))
        if grads.dsinks is not None:
            # exp(sinks_h - lse_i) (dlse_i - delta_i); a -inf sink (also a padding row's) adds exactly 0
            sink, lse = _per_kv_head(args, sink), _per_kv_head(args, lse[..., None])
            terms = np.where(sink == -np.inf, zero, np.exp(sink - lse) * (d_lse - delta)).astype(grads.acc)
            grads.dsinks[:] += terms.reshape(args.q_heads, -1).sum(axis=1)
        if args.softcap is not None:
            slope = dt.type(1) - np.tanh(_per_kv_head(args, s0) / dt.type(args.softcap)) ** 2
            dS = np.where(allowed, dS * slope, zero).astype(dt, copy=False)
        dq = (scale * weighted_sum(dS, allowed, k_keys, dt)).astype(dt, copy=False)
        allowed_t = np.swapaxes(allowed, -1, -2)
        dk = (scale * weighted_sum(_transposed(dS), allowed_t, q_rows, dt)).astype(dt, copy=False)
    dv = weighted_sum(_transposed(P), allowed_t, d_out, dt)
    grads.dq[blk.b, :, blk.rows] = dq.reshape(args.q_heads, -1, args.head_dim)
    grads.dk[blk.b, :, blk.keys] += dk
    grads.dv[blk.b, :, blk.keys] += dv


def _per_kv_head(args: AttentionArgs, x: np.ndarray) -> np.ndarray:
    """``(Hq, R, n)`` as ``(Hkv, group * R, n)``: the rows of the query heads
    ``h`` that read kv head ``h // group``, stacked (a copy if needed)."""
    _, R, n = x.shape
    return np.reshape(x, (args.kv_heads, args.group * R, n))


def _transposed(x: np.ndarray) -> np.ndarray:
    """``x`` with its last two axes swapped, contiguous (BLAS is several times
    faster on it than on the strided view when the block has few rows)."""
    return np.ascontiguousarray(np.swapaxes(x, -1, -2))


def _row_dot(a: np.ndarray, b: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``sum_c a[..., c] * b[..., c]`` with a trailing axis of 1, as a product in ``dt``."""
    return matmul(a[..., None, :], b[..., :, None], dt)[..., 0].astype(dt, copy=False)
