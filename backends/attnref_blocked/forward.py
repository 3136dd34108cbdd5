"""The blocked forward pass of the multi-head ops, written once for any NumPy-like namespace.

Nothing here builds an ``Lq x Lk`` array: :func:`attnref_blocked.plan.plan`
cuts the call into tasks (batch, group of kv heads, query block, key range),
and each task computes its masked scores (:func:`attnref_blocked.blocks.scores`),
the softmax and the product with ``v``, and writes its rows of ``out`` and
``lse``.

float32 (also for float16/bfloat16 inputs, rounded once at the end): the
scores are laid out ``keys x queries``, the scale is folded into the query
block, ``v`` carries an extra column of ones so that the softmax denominator comes
out of the second product, a row's max is subtracted only when ``exp`` would
otherwise overflow or lose precision (it cancels in ``out = numerator /
denominator``), and a long key range is streamed in pieces of ``key_block``
keys with an online softmax so that the score block stays in cache. When
``max|v| * Lk`` comes near float32's range (a numerator could overflow where
the average does not), and in float64, the task instead follows the
reference's steps over its whole key range: masked softmax (normalised), then
the weighted sum (:mod:`attnref_blocked.numerics`).

With ``sinks``, the reference's steps count the sink in the softmax, the
streamed float32 path adds it after the keys (``lse' = logaddexp(lse, sink)``,
``out' = out exp(lse - lse')``), and rows no task holds keep ``lse = sinks[h]``.

Semantics (as the reference): a disallowed key never contributes, even if its
score or value is NaN or infinite (masking replaces scores by ``-inf`` before
the max; non-finite values are zeroed for the products and added back only to
the rows that may see them); a row with no allowed key, or whose allowed
scores are all ``-inf``, gets output 0 and lse ``-inf``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_blocked.blocks import Inputs, allowed, block_of, nonfinite_keys, scores
from attnref_blocked.numerics import NEG_INF, add_nonfinite_terms, masked_softmax, weighted_sum
from attnref_blocked.plan import BlockConfig, Task, key_pieces, plan
from attnref_blocked.threads import run_tasks

__all__ = ["attend"]

#: In float32, rows whose maximum score lies in about ``[-40, 40]`` skip the max subtraction.
UNSHIFTED_LIMIT = 40.0
#: float32 takes the streamed path only while ``max|v| * Lk`` stays below this (float32's max is 3.4e38).
STREAM_LIMIT = 1e36


class _Forward(Inputs):
    """The call's inputs and outputs, and the float32 path's precomputed bounds."""

    def __init__(
        self, xp: Any, q: Any, k: Any, v: Any, pattern: Pattern, args: AttentionArgs, bias: Any, mask: Any,
        matmul: Any = None,
    ) -> None:  # fmt: skip
        super().__init__(xp, q, k, pattern, args, bias, mask, matmul)
        v = v.astype(self.dtype, copy=False)
        extremes = (float(v.max()), float(v.min()))  # no temporary the size of v
        self.bad_keys = nonfinite_keys(xp, v, extremes)  # (B, Lk) host bool, or None
        self.v_raw = v
        if self.bad_keys is not None:
            v = xp.where(xp.isfinite(v), v, xp.zeros((), dtype=self.dtype))
            extremes = (float(v.max()), float(v.min()))
        largest = max(extremes[0], -extremes[1], 0.0)
        self.fast = self.dtype == np.float32 and largest * max(args.kv_len, 1) < STREAM_LIMIT
        self.v = self._prepare_values(v, largest, bias is None) if self.fast else xp.ascontiguousarray(v)
        shape = (args.batch, args.q_heads, args.q_len)
        self.out = xp.zeros((*shape, args.value_dim), dtype=self.dtype)
        self.lse = xp.full(shape, NEG_INF, dtype=self.dtype)
        self.sinks = None if args.sinks is None else xp.asarray(args.sinks.astype(self.dtype))  # (Hq,)
        if self.sinks is not None:  # a row without keys: lse = the sink; padding rows stay -inf
            for b, q_len in enumerate(args.q_lens().tolist()):
                self.lse[b, :, :q_len] = self.sinks[:, None]

    def _prepare_values(self, v: Any, largest: float, no_bias: bool) -> Any:
        """float32: ``v`` with a column of ones after it, ``(B, Hkv, Lk, Dv + 1)``, so that the
        softmax denominator comes out of the product (the product reads it transposed, which BLAS
        does without a copy; a transposed copy here would cost 3 to 4 times a plain one). Also sets
        the shift-free range."""
        xp, args = self.xp, self.args
        self.unshifted = (np.inf, -np.inf)  # see _stream: maxima for which exp(s) needs no shift
        self.score_bound = -np.inf  # see _scores_bounded
        self.key_norms = None
        largest = largest if largest > 0 else 1.0
        # exp(m) * |v| * Lk must stay far from overflow, exp(m) * |v| * eps far from subnormal.
        high = min(UNSHIFTED_LIMIT, math.log(STREAM_LIMIT / (largest * max(args.kv_len, 1))))
        low = max(-UNSHIFTED_LIMIT, math.log(1e-28 / largest))
        if low < high:
            self.unshifted = (low, high)
            self.score_bound = min(high, -low)
            if no_bias:  # (B, Hkv, Lk): bounds the scores by Cauchy-Schwarz
                self.key_norms = xp.sqrt(xp.einsum("bhld,bhld->bhl", self.k, self.k))
        extended = xp.empty((*v.shape[:3], v.shape[3] + 1), dtype=self.dtype)
        extended[..., :-1] = v
        extended[..., -1] = 1
        return extended

    def bad_columns(self, task: Task, j0: int, j1: int) -> np.ndarray:
        """Host key indices in ``[j0, j1)`` whose value is non-finite in some kv head."""
        if self.bad_keys is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.bad_keys[task.batch, j0:j1]) + j0


class _Scratch:
    """One worker's reusable score buffer (NumPy only; CuPy's memory pool does this itself).

    Allocating a fresh multi-MiB score block per task costs page faults and
    zeroing by the kernel; a buffer reused for the worker's whole share of one
    call does not. It is dropped when the call ends.
    """

    def __init__(self, xp: Any, dtype: np.dtype) -> None:
        self.xp, self.dtype, self.buffer = xp, dtype, None

    def scores(self, shape: tuple[int, ...]) -> Any:
        if self.xp is not np:
            return None
        size = int(np.prod(shape))
        if self.buffer is None or self.buffer.size < size:
            self.buffer = np.empty(size, dtype=self.dtype)
        return self.buffer[:size].reshape(shape)


def _run_task(ctx: _Forward, task: Task, scratch: _Scratch, key_block: int) -> None:
    xp, args, dt, g = ctx.xp, ctx.args, ctx.dtype, ctx.args.group
    (h0, h1), (r0, r1), (lo, hi) = task.heads, task.rows, task.keys
    hk, rows = h1 - h0, r1 - r0
    qb = ctx.q[task.batch, h0 * g : h1 * g, r0:r1].astype(dt)  # a copy: the block's queries
    if ctx.fast:
        qb *= dt.type(args.scale)
    qb = qb.reshape(hk, g * rows, args.head_dim)
    user = None if ctx.mask is None else block_of(ctx.mask, task, g)
    if ctx.fast:
        out, lse = _stream(ctx, task, qb, key_pieces(task, key_block), user, scratch)
    else:  # the reference's steps, in its order
        s, _ = scores(ctx, task, qb, (lo, hi), user, scratch.scores((hk, g * rows, hi - lo)),
                      transposed=False, scaled=False)  # fmt: skip
        ok = allowed(ctx, task, np.arange(lo, hi), user)  # (hk|1, g|1, rows, keys)
        sink = None if ctx.sinks is None else ctx.sinks[h0 * g : h1 * g].reshape(hk, g, 1, 1)
        P, lse = masked_softmax(xp, s.reshape(hk, g, rows, hi - lo), ok, sink=sink)
        values = ctx.v_raw[task.batch, h0:h1, lo:hi][:, None]  # (hk, 1, keys, Dv): one kv head per group
        out = weighted_sum(xp, P, values, lambda c: ok[..., c], ctx.bad_columns(task, lo, hi) - lo, ctx.matmul)
    out, lse = out.reshape(hk * g, rows, -1), lse.reshape(hk * g, rows)
    if ctx.fast and ctx.sinks is not None:  # the other path counted the sink in its softmax
        out, lse = _with_sink(xp, out, lse, ctx.sinks[h0 * g : h1 * g, None])
    ctx.out[task.batch, h0 * g : h1 * g, r0:r1] = out
    ctx.lse[task.batch, h0 * g : h1 * g, r0:r1] = lse


def _with_sink(xp: Any, out: Any, lse: Any, sink: Any) -> tuple[Any, Any]:
    """Add the sink, a key with no value (contract section 7): ``lse' = log(exp(sink) + exp(lse))``
    and ``out' = out exp(lse - lse')``; a ``-inf`` sink changes nothing, a NaN sink makes both NaN."""
    total = xp.logaddexp(lse, sink)
    factor = xp.where(lse == NEG_INF, out.dtype.type(0), xp.exp(lse - total))  # a row without keys: out stays 0
    return out * factor[..., None], total


def _stream(ctx: _Forward, task: Task, qb: Any, pieces: list, user: Any, scratch: _Scratch) -> tuple[Any, Any]:
    """float32, transposed layout: ``(out, lse)`` of the task, ``(hk, g * rows, Dv)`` and ``(hk, g * rows)``.

    ``acc (hk, Dv + 1, g * rows) = sum_j [v_j, 1] exp(s_j - shift)`` over the
    allowed ``j`` of every piece. Each query is shifted by its running maximum
    ``m`` only when it must be: while ``m`` lies in ``ctx.unshifted`` (or is
    ``-inf``), ``exp(s)`` can neither overflow nor lose precision in the
    products, and the shift, which cancels in ``out = acc / total``, is 0. When
    ``|q_i| |k_j| scale`` (or the softcap) already bounds every score of the
    task inside that range, the max is not even computed. With several pieces
    (an online softmax), ``acc`` is rescaled when a shift changes. Keys with a
    non-finite value were zeroed in ``ctx.v``; their ``s - shift`` is kept, and
    their terms are added once the final shift and total are known.
    """
    xp, dt = ctx.xp, ctx.dtype
    (h0, h1), batch = task.heads, task.batch
    low, high = ctx.unshifted
    bounded = _scores_bounded(ctx, task, qb)
    acc = m_run = shift = None
    kept = []  # (columns, s - shift, shift) of keys with a non-finite value
    for j0, j1 in pieces:
        s, _ = scores(ctx, task, qb, (j0, j1), user, scratch.scores((qb.shape[0], j1 - j0, qb.shape[1])),
                      transposed=True, scaled=True)  # fmt: skip
        if bounded:
            m_new = shift_new = xp.zeros((qb.shape[0], 1, qb.shape[1]), dtype=dt)
        else:
            m_block = _max_over_keys(xp, s)
            m_new = m_block if m_run is None else xp.maximum(m_run, m_block)
            safe = ((m_new >= low) & (m_new <= high)) | (m_new == NEG_INF)
            shift_new = xp.where(safe, dt.type(0), m_new)  # NaN and +inf rows shift by NaN / inf: NaN, as the reference
            if not bool(safe.all()):
                s -= shift_new
        bad = ctx.bad_columns(task, j0, j1)
        if bad.size:
            kept.append((bad, s[:, xp.asarray(bad - j0), :], shift_new))
        xp.exp(s, out=s)
        part = ctx.matmul(ctx.v[batch, h0:h1, j0:j1].swapaxes(-1, -2), s)  # (hk, Dv + 1, g * rows)
        if acc is None:
            acc = part
        else:
            if not bounded and bool((shift_new != shift).any()):  # rescale; 0 while nothing was allowed
                acc *= xp.where(m_run == NEG_INF, dt.type(0), xp.exp(shift - shift_new))
            acc += part
        m_run, shift = m_new, shift_new
    total = acc[:, -1:]  # the column of ones in v gives the softmax denominator
    empty = total == 0
    out = acc[:, :-1] / xp.where(empty, dt.type(1), total)  # (hk, Dv, g * rows)
    out, shift, total, empty = (xp.ascontiguousarray(a.swapaxes(-1, -2)) for a in (out, shift, total, empty))
    for columns, shifted, used in kept:  # P_ij = exp(s_ij - final shift) / total, laid out (hk, g * rows, c)
        p = xp.exp(shifted.swapaxes(-1, -2) + (used.swapaxes(-1, -2) - shift)) / xp.where(empty, dt.type(1), total)
        p = xp.where(empty, dt.type(0), p)
        values = ctx.v_raw[batch, h0:h1][:, xp.asarray(columns)]  # (hk, c, Dv)
        ok = allowed(ctx, task, columns, user)  # (hk|1, g|1, rows, c)
        out4 = out.reshape(out.shape[0], ctx.args.group, -1, out.shape[-1])
        add_nonfinite_terms(xp, out4, p.reshape((*out4.shape[:3], -1)), values[:, None], ok)
    return out, (shift + xp.log(total))[..., 0]  # an empty row: 0 + log(0) = -inf


def _scores_bounded(ctx: _Forward, task: Task, qb: Any) -> bool:
    """True if ``|s_ij| <= |q_i| |k_j| scale`` (or the softcap) keeps every score of the task
    inside the range where no shift is needed (no bias: it could add anything)."""
    if ctx.key_norms is None:
        return False
    xp = ctx.xp
    (h0, h1), (lo, hi) = task.heads, task.keys
    longest_key = ctx.key_norms[task.batch, h0:h1, lo:hi].max(axis=-1)  # (hk,)
    bound = xp.sqrt(xp.einsum("hcd,hcd->hc", qb, qb)) * longest_key[:, None]  # qb carries the scale
    if ctx.args.softcap is not None:
        bound = xp.minimum(bound, ctx.args.softcap)
    return bool((bound <= ctx.score_bound).all())  # NaN or inf in q or k: False


def _max_over_keys(xp: Any, s: Any) -> Any:
    """``s.max(axis=-2, keepdims=True)``; for NumPy with few columns, by halving (pairwise
    maxima over long contiguous runs), which is several times faster than NumPy's own
    reduction over the middle axis of such an array."""
    if xp is not np or s.shape[-1] >= 256:
        return s.max(axis=-2, keepdims=True)
    while s.shape[-2] > 16:
        half = s.shape[-2] // 2
        top = np.maximum(s[:, :half], s[:, half : 2 * half])
        if s.shape[-2] % 2:
            np.maximum(top[:, -1:], s[:, -1:], out=top[:, -1:])
        s = top
    return s.max(axis=-2, keepdims=True)


def attend(
    xp: Any,
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern,
    args: AttentionArgs,
    *,
    bias: Any,
    mask: Any,
    return_lse: bool,
    config: BlockConfig,
) -> Any:
    """Compute one multi-head op (arguments already validated into ``args``).

    Returns ``out`` (and ``lse`` if ``return_lse``) in the dtype of ``q``.
    """
    ctx = _Forward(xp, q, k, v, pattern, args, bias, mask, config.matmul)
    if not ctx.fast:
        config = dataclasses.replace(config, key_block=0)  # the reference's steps: no streaming
    key_block = config.key_block
    run_tasks(
        xp, plan(args, pattern, config), lambda task, scratch: _run_task(ctx, task, scratch, key_block),
        lambda: _Scratch(xp, ctx.dtype), config.threads,
    )  # fmt: skip
    out = ctx.out.astype(q.dtype, copy=False)
    if return_lse:
        return out, ctx.lse.astype(q.dtype, copy=False)
    return out
