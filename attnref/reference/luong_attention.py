"""Luong attention: global, local-m and local-p (Luong, Pham & Manning, 2015)."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnref.patterns import Pattern
from attnref.reference._numerics import cast, compute_dtype, masked_softmax, matmul, weighted_sum
from attnref.validation import LuongArgs, check_luong

__all__ = ["luong_attention"]


def luong_attention(
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
    precision: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Luong's global and local attention, the reference definition.

    "Effective Approaches to Attention-based Neural Machine Translation"
    (EMNLP 2015). For batch ``b``, target step ``t``, source position ``s``,
    ``S_b = source_lengths[b]`` (default ``S``) and ``D = half_width``::

        score(t, s) = h_t . h_s                                   score="dot"
                    = h_t @ w_a @ h_s                             score="general"
                    = tanh(concat(h_t, h_s) @ w_a) @ v_a          score="concat"

        global : A_t = {s : s < S_b}
        local-m: p_t = min(t, S_b - 1);                    A_t = {s : |s - p_t| <= D, s < S_b}
        local-p: p_t = S_b * sigmoid(tanh(h_t @ w_p) @ v_p);  A_t = {s : |s - p_t| <= D, 0 <= s < S_b}

        a_t(s) = softmax over A_t of score(t, s)                  (0 outside A_t)
        a_t(s) = a_t(s) * exp(-(s - p_t)^2 / (2 sigma^2)), sigma = D / 2   (local-p only,
                 not renormalised, as in the paper)
        c_t    = sum_s a_t(s) h_s

    A NaN ``p_t`` (from NaN in ``h_t``, ``w_p`` or ``v_p``) leaves the window
    undefined: every ``a_t(s)`` with ``s < S_b`` is then NaN, never silently 0.

    Parameters
    ----------
    h_t : array, (B, T, d)
        Target (decoder) states.
    h_s : array, (B, S, d)
        Source (encoder) states, same dtype.
    score : {"dot", "general", "concat"}
    w_a : array, optional
        ``(d, d)`` for "general", ``(2d, da)`` for "concat".
    v_a : array (da,), optional
        For "concat".
    mode : {"global", "local-m", "local-p"}
    half_width : int, optional
        ``D``: >= 0 for local-m, >= 1 for local-p; required for both.
    w_p : array (d, dp), optional
        For local-p.
    v_p : array (dp,), optional
        For local-p.
    source_lengths : int array (B,), optional
        Valid source positions per batch, in ``[0, S]``.
    precision : dtype, optional
        Every intermediate in this dtype instead of float64.

    Returns
    -------
    context : ndarray, (B, T, d)
    weights : ndarray, (B, T, S)
    """
    h_t, h_s = np.asarray(h_t), np.asarray(h_s)
    w_a, v_a, w_p, v_p = (None if a is None else np.asarray(a) for a in (w_a, v_a, w_p, v_p))
    args = check_luong(
        h_t, h_s, score=score, w_a=w_a, v_a=v_a, mode=mode, half_width=half_width,
        w_p=w_p, v_p=v_p, source_lengths=source_lengths,
    )  # fmt: skip
    dt = compute_dtype(precision)
    ht, hs = cast(h_t, dt), cast(h_s, dt)
    scores = _scores(args, ht, hs, w_a, v_a, dt)
    s = np.arange(args.source_len)[None, None, :]
    allowed = np.broadcast_to(s < args.source_lengths[:, None, None], scores.shape)
    if args.mode == "global":
        weights, _ = masked_softmax(scores, allowed)
        return weighted_sum(weights, allowed, hs, dt), weights
    p_t = _aligned_positions(args, ht, w_p, v_p, dt)  # (B, T, 1)
    allowed = allowed & Pattern.window(args.half_width, args.half_width).allows(p_t, s)
    weights, _ = masked_softmax(scores, allowed)
    if args.mode == "local-p":
        # A half_width beyond the dtype's range rounds sigma to inf: the Gaussian factor is then 1, as it should.
        with np.errstate(over="ignore"):
            sigma = dt.type(args.half_width / 2)
            offset = (s.astype(dt) - p_t).astype(dt)
            gauss = np.exp((-(offset * offset) / (dt.type(2) * sigma * sigma)).astype(dt))
        weights = np.where(allowed, weights * gauss, dt.type(0)).astype(dt)
        # A NaN p_t leaves the window undefined; the comparisons above would silently
        # drop every position. The NaN must reach the outputs: all valid positions get NaN.
        unknown = np.isnan(p_t) & (s < args.source_lengths[:, None, None])
        if unknown.any():
            weights = np.where(unknown, dt.type(np.nan), weights).astype(dt)
            allowed = allowed | unknown
    return weighted_sum(weights, allowed, hs, dt), weights


def _scores(args: LuongArgs, ht: np.ndarray, hs: np.ndarray, w_a: Any, v_a: Any, dt: np.dtype) -> np.ndarray:
    """``score(t, s)`` for every pair, ``(B, T, S)``."""
    hs_t = np.swapaxes(hs, -1, -2)
    if args.score == "dot":
        return matmul(ht, hs_t, dt)
    if args.score == "general":
        return matmul(matmul(ht, cast(w_a, dt), dt), hs_t, dt)
    # concat(h_t, h_s) @ w_a == h_t @ w_a[:d] + h_s @ w_a[d:]
    wa = cast(w_a, dt)
    from_t = matmul(ht, wa[: args.dim], dt)[:, :, None, :]
    from_s = matmul(hs, wa[args.dim :], dt)[:, None, :, :]
    hidden = np.tanh((from_t + from_s).astype(dt))
    return matmul(hidden, cast(v_a, dt)[:, None], dt)[..., 0]


def _aligned_positions(args: LuongArgs, ht: np.ndarray, w_p: Any, v_p: Any, dt: np.dtype) -> np.ndarray:
    """``p_t`` of local-m (integer) or local-p (real), shape ``(B, T, 1)``."""
    S_b = args.source_lengths[:, None, None]
    if args.mode == "local-m":
        t = np.arange(args.target_len)[None, :, None]
        return np.minimum(t, S_b - 1)
    gate = matmul(np.tanh(matmul(ht, cast(w_p, dt), dt)), cast(v_p, dt)[:, None], dt)
    sigmoid = (dt.type(1) / (dt.type(1) + np.exp(-gate))).astype(dt)
    return (S_b.astype(dt) * sigmoid).astype(dt)
