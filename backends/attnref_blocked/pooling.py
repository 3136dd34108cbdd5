"""The attention pooling ops (additive, Luong) for any NumPy-like namespace ``xp``.

These are cheap (one score per query/position pair, no head dimension), so a
straightforward vectorised form is used: the whole score array at once, in the
compute dtype (float32 for 16-bit and float32 inputs, float64 for float64),
rounded once to the input dtype at the end, with the blocked code's masked
softmax and weighted sum (:mod:`attnref_blocked.numerics`). The semantics are
the reference's: masking selects (``where``), a NaN or infinite value at a
disallowed position never leaks, and a position set with nothing allowed gives
zeros.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from attnref.patterns import Pattern
from attnref.validation import check_additive, check_luong
from attnref_blocked.numerics import compute_dtype, masked_softmax, quiet, weighted_sum

__all__ = ["additive_attention", "luong_attention"]


def additive_attention(xp: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Additive attention pooling (see :func:`attnref.reference.additive_attention`)."""
    with quiet(xp):
        return _additive_attention(xp, *args, **kwargs)


def luong_attention(xp: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Luong global / local-m / local-p attention (see :func:`attnref.reference.luong_attention`)."""
    with quiet(xp):
        return _luong_attention(xp, *args, **kwargs)


def _additive_attention(
    xp: Any,
    x: Any,
    w_in: Any,
    b_in: Any,
    w_out: Any,
    b_out: Any = None,
    *,
    mask: Any = None,
    window: Any = None,
    center: Any = None,
) -> tuple[Any, Any]:
    x, w_in, b_in, w_out = (xp.asarray(a) for a in (x, w_in, b_in, w_out))
    if b_out is not None and not isinstance(b_out, numbers.Real):  # a Python/NumPy scalar is checked as it is
        b_out = xp.asarray(b_out)
    mask = None if mask is None else xp.asarray(mask)
    args = check_additive(x, w_in, b_in, w_out, b_out, mask=mask, window=window, center=center)
    dt = compute_dtype(x.dtype)
    xc = x.astype(dt)
    hidden = xp.tanh(xp.matmul(xc, w_in.astype(dt)) + b_in.astype(dt))
    e = xp.matmul(hidden, w_out.astype(dt))
    if b_out is not None:
        e = e + xp.asarray(b_out, dtype=dt).reshape(())
    allowed = xp.ones((args.batch, args.length), dtype=bool) if mask is None else mask.copy()
    if args.window is not None:
        centers = xp.asarray(args.centers)[:, None]
        allowed &= Pattern.window(*args.window).allows(centers, xp.arange(args.length)[None, :])
    weights, _ = masked_softmax(xp, e, allowed)
    context = weighted_sum(xp, weights[:, None, :], xc, lambda c: allowed[:, None, c])[:, 0, :]
    return context.astype(x.dtype), weights.astype(x.dtype)


def _luong_attention(
    xp: Any,
    h_t: Any,
    h_s: Any,
    *,
    score: str = "dot",
    w_a: Any = None,
    v_a: Any = None,
    mode: str = "global",
    half_width: int | None = None,
    w_p: Any = None,
    v_p: Any = None,
    source_lengths: Any = None,
) -> tuple[Any, Any]:
    h_t, h_s = xp.asarray(h_t), xp.asarray(h_s)
    w_a, v_a, w_p, v_p = (None if a is None else xp.asarray(a) for a in (w_a, v_a, w_p, v_p))
    args = check_luong(
        h_t, h_s, score=score, w_a=w_a, v_a=v_a, mode=mode, half_width=half_width,
        w_p=w_p, v_p=v_p, source_lengths=source_lengths,
    )  # fmt: skip
    dt = compute_dtype(h_t.dtype)
    ht, hs = h_t.astype(dt), h_s.astype(dt)
    scores = _luong_scores(xp, args.score, ht, hs, w_a, v_a, dt)
    positions = xp.arange(args.source_len)[None, None, :]
    lengths = xp.asarray(args.source_lengths)[:, None, None]
    allowed = xp.broadcast_to(positions < lengths, scores.shape)
    if args.mode != "global":
        if args.mode == "local-m":
            aligned = xp.minimum(xp.arange(args.target_len)[None, :, None], lengths - 1)
        else:
            gate = xp.matmul(xp.tanh(xp.matmul(ht, w_p.astype(dt))), v_p.astype(dt)[:, None])
            aligned = lengths.astype(dt) * (1 / (1 + xp.exp(-gate)))  # S_b * sigmoid(gate), (B, T, 1)
        allowed = allowed & Pattern.window(args.half_width, args.half_width).allows(aligned, positions)
    weights, _ = masked_softmax(xp, scores, allowed)
    if args.mode == "local-p":
        sigma = args.half_width / 2
        gauss = xp.exp(-((positions.astype(dt) - aligned) ** 2) / dt.type(2 * sigma * sigma))
        weights = xp.where(allowed, weights * gauss, dt.type(0))
        # A NaN p_t leaves the window undefined: every valid position gets NaN (never a silent 0).
        unknown = xp.isnan(aligned) & (positions < lengths)
        if bool(unknown.any()):
            weights = xp.where(unknown, dt.type(np.nan), weights)
            allowed = allowed | unknown
    context = weighted_sum(xp, weights, hs, lambda c: allowed[..., c])
    return context.astype(h_t.dtype), weights.astype(h_t.dtype)


def _luong_scores(xp: Any, score: str, ht: Any, hs: Any, w_a: Any, v_a: Any, dt: np.dtype) -> Any:
    """``score(t, s)`` for every pair, ``(B, T, S)``."""
    hs_t = hs.swapaxes(-1, -2)
    if score == "dot":
        return xp.matmul(ht, hs_t)
    if score == "general":
        return xp.matmul(xp.matmul(ht, w_a.astype(dt)), hs_t)
    d = ht.shape[-1]  # concat(h_t, h_s) @ w_a == h_t @ w_a[:d] + h_s @ w_a[d:]
    wa = w_a.astype(dt)
    hidden = xp.tanh(xp.matmul(ht, wa[:d])[:, :, None, :] + xp.matmul(hs, wa[d:])[:, None, :, :])
    return xp.matmul(hidden, v_a.astype(dt))
