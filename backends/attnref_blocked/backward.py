"""The blocked backward pass (vector-Jacobian product) of the multi-head ops.

FlashAttention-2's backward, run on the forward's plan
(:func:`attnref_blocked.plan.plan`, without streaming: each task holds every
key its rows may see). For each task, with ``dO`` its rows of ``dout``::

    s     = masked scores, recomputed (steps 1 to 4 of the op)
    P     = exp(s - lse)                     (softmax over the task's keys; lse from the same pass)
    dP    = dO V^T
    delta = rowsum(P * dP)                   (= rowsum(dO * out): no forward output is needed)
    dS    = P * (dP - delta + dlse)
    dV   += P^T dO                           (the g query heads of a kv head are rows of one product)
    dS0   = dS * (1 - tanh(s0 / softcap)^2)  (if softcap; s0 = scale * q . k)
    dQ    = scale * dS0 K
    dK   += scale * dS0^T Q
    dbias += dS                              (summed over the axes bias broadcasts along)
    dsinks += sum_i exp(sinks[h] - lse_i) (dlse_i - delta_i)   (with sinks: lse_i counts the sink)

Nothing is ``Lq x Lk``: a task's arrays are ``rows x (its key range)``, so
memory is ``O(L x window)`` for local and chunked patterns, and K and V are
never repeated for GQA. ``dQ`` rows belong to one task; ``dK``, ``dV`` and
``dbias`` are added under a lock.

Masking selects (contract section 6). With every input finite (a ``-inf``
bias allowed), ``P`` is exactly 0 at every disallowed key and every product is
plain. Otherwise each task builds its allowed mask, selects ``P``, ``delta``
and ``dS`` with it, and runs the three products that sum over keys or queries
through :func:`attnref_blocked.numerics.weighted_sum`, so that a NaN or inf
reaches exactly the gradient entries whose formula uses it (an allowed key's
NaN even where its weight underflowed to 0), and a row with no allowed key
contributes nothing (its ``dout`` and ``dlse`` are never read).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import numpy as np

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_blocked.blocks import Inputs, allowed, block_of, scores
from attnref_blocked.numerics import NEG_INF, masked_softmax, quiet, weighted_sum
from attnref_blocked.plan import BlockConfig, Task, plan
from attnref_blocked.threads import run_tasks

__all__ = ["attend_vjp"]


def _finite(xp: Any, array: Any, minus_inf_ok: bool = False) -> bool:
    """True if ``array`` holds no NaN or inf (``-inf`` allowed with ``minus_inf_ok``).

    Without ``minus_inf_ok``, one pass: a sum is finite only if every term is
    (a sum that overflows merely sends the call down the exact path).
    """
    if not minus_inf_ok:
        with quiet(xp):
            return math.isfinite(float(array.sum()))
    high, low = float(array.max()), float(array.min())  # NaN survives max and min
    return math.isfinite(high) and (math.isfinite(low) or low == -math.inf)


class _Backward(Inputs):
    """The call's inputs and gradient accumulators."""

    def __init__(
        self, xp: Any, q: Any, k: Any, v: Any, dout: Any, dlse: Any, pattern: Pattern, args: AttentionArgs,
        bias: Any, mask: Any, matmul: Any = None,
    ) -> None:  # fmt: skip
        super().__init__(xp, q, k, pattern, args, bias, mask, matmul)
        dt = self.dtype
        self.v = xp.ascontiguousarray(v.astype(dt, copy=False))
        self.dout = dout
        self.dlse = dlse
        self.exact = not (
            all(_finite(xp, a) for a in (q, k, v, dout) + (() if dlse is None else (dlse,)))
            and (bias is None or _finite(xp, bias, minus_inf_ok=True))
        )
        self.dq = xp.zeros(q.shape, dtype=dt)
        self.dk = xp.zeros(k.shape, dtype=dt)
        self.dv = xp.zeros(v.shape, dtype=dt)
        self.dbias = None if self.bias is None else xp.zeros(self.bias.shape, dtype=dt)
        self.sinks = None if args.sinks is None else xp.asarray(args.sinks.astype(dt))  # (Hq,)
        self.dsinks = None if args.sinks is None else xp.zeros(args.q_heads, dtype=dt)
        self.lock = threading.Lock()


def _run_task(ctx: _Backward, task: Task) -> None:
    xp, args, dt, g = ctx.xp, ctx.args, ctx.dtype, ctx.args.group
    b, (h0, h1), (r0, r1), (lo, hi) = task.batch, task.heads, task.rows, task.keys
    hk, rows, n = h1 - h0, r1 - r0, hi - lo
    qb = ctx.q[b, h0 * g : h1 * g, r0:r1].astype(dt).reshape(hk, g * rows, args.head_dim)
    qb *= dt.type(args.scale)  # scale folded into q: s = k . (scale q), dK = dS0^T (scale q)
    dO = ctx.dout[b, h0 * g : h1 * g, r0:r1].astype(dt).reshape(hk, g, rows, -1)
    user = None if ctx.mask is None else block_of(ctx.mask, task, g)
    s, dcap = scores(ctx, task, qb, (lo, hi), user, None, transposed=False, scaled=True,
                     softcap_grad=args.softcap is not None)  # fmt: skip
    ok = allowed(ctx, task, np.arange(lo, hi), user) if ctx.exact else None  # (hk|1, g|1, rows, n)
    sink = None if ctx.sinks is None else ctx.sinks[h0 * g : h1 * g].reshape(hk, g, 1, 1)
    P, lse = masked_softmax(xp, s.reshape(hk, g, rows, n), ok, sink=sink, overwrite=True)
    if sink is not None:  # the sink's weight exp(sinks[h] - lse_i); exactly 0 for a -inf sink
        p_sink = xp.where(sink[..., 0] == NEG_INF, dt.type(0), xp.exp(sink[..., 0] - lse))
    v = ctx.v[b, h0:h1, lo:hi][:, None]  # (hk, 1, n, Dv)
    dS = ctx.matmul(dO, v.swapaxes(-1, -2))  # dP (hk, g, rows, n), turned into dS in place
    if ok is None:
        delta = xp.einsum("...j,...j->...", P, dS)[..., None]  # rowsum(P * dP), no temporary
    else:
        delta = xp.where(ok, P * dS, dt.type(0)).sum(axis=-1, keepdims=True)
    dS -= delta
    if ctx.dsinks is not None:
        _add_sink_grad(ctx, task, p_sink, delta[..., 0])
    if ctx.dlse is not None:
        dS += ctx.dlse[b, h0 * g : h1 * g, r0:r1].astype(dt).reshape(hk, g, rows, 1)
    dS *= P
    if ok is not None:
        dS = xp.where(ok, dS, dt.type(0))
        ok = xp.broadcast_to(ok, (hk, g, rows, n)).reshape(hk, g * rows, n)
    P = P.reshape(hk, g * rows, n)
    dO = dO.reshape(hk, g * rows, -1)
    dv = _product(ctx, P.swapaxes(-1, -2), dO, None if ok is None else ok.swapaxes(-1, -2))
    if ctx.dbias is not None:
        _add_bias_grad(ctx, task, dS)
    dS = dS.reshape(hk, g * rows, n)
    if dcap is not None:
        dS *= dcap
        if ok is not None:
            dS = xp.where(ok, dS, dt.type(0))
    dq = _product(ctx, dS, ctx.k[b, h0:h1, lo:hi], ok)
    dq *= dt.type(args.scale)
    dk = _product(ctx, dS.swapaxes(-1, -2), qb, None if ok is None else ok.swapaxes(-1, -2))
    ctx.dq[b, h0 * g : h1 * g, r0:r1] = dq.reshape(hk * g, rows, -1)
    with ctx.lock:
        ctx.dk[b, h0:h1, lo:hi] += dk
        ctx.dv[b, h0:h1, lo:hi] += dv


def _add_sink_grad(ctx: _Backward, task: Task, p_sink: Any, delta: Any) -> None:
    """``dsinks[h] += sum_i exp(sinks[h] - lse_i) (dlse_i - delta_i)`` over the task's rows."""
    (h0, h1), (r0, r1), g = task.heads, task.rows, ctx.args.group
    term = -delta if ctx.dlse is None else ctx.dlse[task.batch, h0 * g : h1 * g, r0:r1].astype(ctx.dtype).reshape(
        delta.shape) - delta  # fmt: skip
    term = (p_sink * term).reshape((h1 - h0) * g, r1 - r0).sum(axis=-1)
    with ctx.lock:
        ctx.dsinks[h0 * g : h1 * g] += term


def _add_unplanned_rows(ctx: _Backward, tasks: list[Task]) -> None:
    """Rows inside their sequence that no task holds (no key in range): ``lse = sinks[h]``,
    ``out = 0``, so each adds its ``dlse`` to ``dsinks`` (nothing with a ``-inf`` sink)."""
    xp, args = ctx.xp, ctx.args
    weight = xp.where(ctx.sinks == NEG_INF, ctx.dtype.type(0), xp.exp(ctx.sinks - ctx.sinks))  # 1, 0 or NaN
    for b, q_len in enumerate(args.q_lens().tolist()):
        planned = np.zeros(q_len, dtype=bool)
        for task in tasks:
            if task.batch == b:
                planned[task.rows[0] : task.rows[1]] = True
        rows = np.flatnonzero(~planned)
        if rows.size:
            dlse = ctx.dlse[b][:, xp.asarray(rows)].astype(ctx.dtype).sum(axis=-1)  # (Hq,)
            ctx.dsinks += weight * dlse


def _product(ctx: _Backward, weights: Any, values: Any, ok: Any) -> Any:
    """``weights @ values`` summing over allowed pairs only (``ok`` None: every input finite)."""
    if ok is None:
        return ctx.matmul(weights, values)
    return weighted_sum(ctx.xp, weights, values, lambda c: ok[..., c], matmul=ctx.matmul)


def _add_bias_grad(ctx: _Backward, task: Task, dS: Any) -> None:
    """Add the task's ``dS (hk, g, rows, keys)`` into ``dbias``, summed over the axes ``bias`` broadcasts along."""
    b, (h0, h1), (r0, r1), (lo, hi) = task.batch, task.heads, task.rows, task.keys
    g = ctx.args.group
    d = dS.reshape((h1 - h0) * g, r1 - r0, hi - lo)
    shape = ctx.dbias.shape
    index = []
    parts = (slice(h0 * g, h1 * g), slice(r0, r1), slice(lo, hi))
    for axis, (size, part) in enumerate(zip(shape[1:], parts, strict=True)):
        if size == 1:
            d = d.sum(axis=axis, keepdims=True)
            part = slice(None)
        index.append(part)
    with ctx.lock:
        ctx.dbias[(slice(None) if shape[0] == 1 else b, *index)] += d


def attend_vjp(
    xp: Any,
    q: Any,
    k: Any,
    v: Any,
    dout: Any,
    pattern: Pattern,
    args: AttentionArgs,
    *,
    dlse: Any,
    bias: Any,
    mask: Any,
    sinks: Any = None,
    config: BlockConfig,
) -> tuple[Any, ...]:
    """The gradients of one multi-head op (arguments already validated into ``args``).

    Returns ``(dq, dk, dv)`` in the dtypes of ``q``, ``k``, ``v``, then ``dbias``
    (shaped and typed like ``bias``) when a bias is given, then ``dsinks``
    (in ``q``'s dtype, as the reference run at that precision) when sinks are given.
    """
    ctx = _Backward(xp, q, k, v, dout, dlse, pattern, args, bias, mask, config.matmul)
    # A task holds its whole key range. A backward block costs more per block than a forward one (five
    # products and the softmax's passes against two), so narrow bands take taller blocks: 4x the forward's
    # per-block overhead in the planner's choice took the window (256, 256), L=16384 backward from 1.55 s to
    # 1.0 s on the 2-core development VM (fp32, H=8, D=64, 2026-12-02, alternately in one process; measured
    # as 4 x 8, and 4 x 12 keeps that window's blocks of 128 rows).
    config = dataclasses.replace(config, key_block=0, row_overhead=4 * config.row_overhead)
    tasks = plan(args, pattern, config)
    run_tasks(xp, tasks, lambda task, _: _run_task(ctx, task), lambda: None, config.threads)
    if ctx.dsinks is not None and ctx.dlse is not None:
        with quiet(xp):
            _add_unplanned_rows(ctx, tasks)
    grads = (ctx.dq.astype(q.dtype, copy=False), ctx.dk.astype(k.dtype, copy=False), ctx.dv.astype(v.dtype, copy=False))
    if bias is not None:
        grads = (*grads, ctx.dbias.reshape(bias.shape).astype(bias.dtype, copy=False))
    if sinks is not None:
        grads = (*grads, ctx.dsinks.astype(q.dtype, copy=False))  # as the reference run in q's dtype
    return grads
