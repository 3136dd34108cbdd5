"""The attention pooling ops (additive, Luong) for any NumPy-like namespace.

These are cheap (one score per query/position pair, no head dimension), so a
straightforward vectorised form is used: the whole score array at once, in the
compute dtype (float32 for 16-bit and float32 inputs, float64 for float64),
rounded once to the input dtype at the end. The semantics are the reference's:
masking selects (``where``), a NaN or infinite value at a disallowed position
never leaks, and a position set with nothing allowed gives zeros.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any

import numpy as np

from attnref.patterns import Pattern
from attnref.validation import check_additive, check_luong

__all__ = ["additive_attention", "luong_attention", "compute_dtype"]

NEG_INF = float("-inf")


def _quiet(xp: Any) -> Any:
    """NumPy's floating-point warnings off: non-finite inputs are data, not errors."""
    if xp is np:
        return np.errstate(divide="ignore", invalid="ignore", over="ignore")
    return contextlib.nullcontext()


def compute_dtype(dtype: Any) -> np.dtype:
    """float64 for float64 inputs, float32 for every other floating dtype."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _to_host(xp: Any, array: Any) -> np.ndarray:
    return array.get() if xp is not np and hasattr(array, "get") else np.asarray(array)


def masked_softmax(xp: Any, s: Any, allowed: Any) -> Any:
    """Softmax of ``s`` over the allowed entries of its last axis.

    Disallowed entries are exactly 0, even in a row made NaN by an allowed NaN
    score; a row with nothing allowed (or only ``-inf`` scores) is all 0.
    """
    dt = s.dtype.type
    masked = xp.where(allowed, s, dt(NEG_INF))
    m = masked.max(axis=-1, keepdims=True)
    m = xp.where(m == NEG_INF, dt(0), m)
    e = xp.where(allowed, xp.exp(masked - m), dt(0))
    total = e.sum(axis=-1, keepdims=True)
    empty = total == 0
    return xp.where(empty | ~allowed, dt(0), e / xp.where(empty, dt(1), total))


def weighted_sum(xp: Any, weights: Any, allowed: Any, values: Any) -> Any:
    """``out[..., i, :] = sum over allowed j of weights[..., i, j] * values[..., j, :]``.

    ``weights`` (B, T, S) is 0 at disallowed positions, so a plain product is
    right for finite values; non-finite values are zeroed for the product and
    added back only where allowed, so they cannot leak.
    """
    finite = xp.isfinite(values)
    if bool(finite.all()):
        return xp.matmul(weights, values)
    dt = values.dtype.type
    out = xp.matmul(weights, xp.where(finite, values, dt(0)))
    allowed = xp.broadcast_to(allowed, weights.shape)
    for b, j in np.argwhere(_to_host(xp, ~finite.all(axis=-1))).tolist():
        rows = allowed[b, :, j][:, None]
        bad = ~finite[b, j][None, :]
        out[b] += xp.where(rows & bad, weights[b, :, j][:, None] * values[b, j][None, :], dt(0))
    return out


def additive_attention(xp: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Additive attention pooling (see :func:`attnref.reference.additive_attention`)."""
    with _quiet(xp):
        return _additive_attention(xp, *args, **kwargs)


def luong_attention(xp: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Luong global / local-m / local-p attention (see :func:`attnref.reference.luong_attention`)."""
    with _quiet(xp):
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
    weights = masked_softmax(xp, e, allowed)
    context = weighted_sum(xp, weights[:, None, :], allowed[:, None, :], xc)[:, 0, :]
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
    weights = masked_softmax(xp, scores, allowed)
    if args.mode == "local-p":
        sigma = args.half_width / 2
        gauss = xp.exp(-((positions.astype(dt) - aligned) ** 2) / dt.type(2 * sigma * sigma))
        weights = xp.where(allowed, weights * gauss, dt.type(0))
        # A NaN p_t leaves the window undefined: every valid position gets NaN (never a silent 0).
        unknown = xp.isnan(aligned) & (positions < lengths)
        if bool(unknown.any()):
            weights = xp.where(unknown, dt.type(np.nan), weights)
            allowed = allowed | unknown
    context = weighted_sum(xp, weights, allowed, hs)
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
