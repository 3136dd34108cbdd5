"""The attention pooling ops (additive, Luong) on tensors.

Small problems (one score per position or per target/source pair), so they
follow the reference's formulas directly, in float32 for the 16-bit dtypes
and in the input dtype otherwise, with the exact masking semantics of
:mod:`attnref_torch._numerics`. The allowed positions come from
:class:`attnref.patterns.Pattern`.
"""

from __future__ import annotations

from typing import Any

import torch

from attnref.patterns import Pattern
from attnref.validation import LuongArgs, check_additive, check_luong
from attnref_torch._numerics import compute_dtype, masked_softmax, weighted_sum

__all__ = ["additive_attention", "luong_attention"]


def _tensors(named: dict[str, Any], first: str) -> dict[str, Any]:
    from attnref_torch._ops import as_tensors  # one definition of the tensor/device checks

    return as_tensors(named, first=first)


def additive_attention(
    x: Any,
    w_in: Any,
    b_in: Any,
    w_out: Any,
    b_out: Any = None,
    *,
    mask: Any = None,
    window: Any = None,
    center: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attnref.reference.additive_attention` on tensors: ``(context (B, Din), weights (B, L))``."""
    args = check_additive(x, w_in, b_in, w_out, b_out, mask=mask, window=window, center=center)
    t = _tensors({"x": x, "w_in": w_in, "b_in": b_in, "w_out": w_out, "b_out": b_out, "mask": mask}, "x")
    x = t["x"]
    dt = compute_dtype(x.dtype)
    xc = x.to(dt)
    hidden = torch.tanh(xc @ t["w_in"].to(dt) + t["b_in"].to(dt))
    e = hidden @ t["w_out"].to(dt)
    if t["b_out"] is not None:
        b_out = t["b_out"]
        e = e + (b_out.to(dt).reshape(()) if isinstance(b_out, torch.Tensor) else b_out)
    positions = torch.arange(args.length, device=x.device)[None, :]
    allowed = torch.ones((args.batch, args.length), dtype=torch.bool, device=x.device)
    if t["mask"] is not None:
        allowed = allowed & t["mask"]
    if args.window is not None:
        centers = torch.as_tensor(args.centers, device=x.device)[:, None]
        allowed = allowed & Pattern.window(*args.window).allows(centers, positions)
    weights = masked_softmax(e, allowed)
    context = weighted_sum(weights[:, None, :], allowed[:, None, :], xc)[:, 0, :]
    return context.to(x.dtype), weights.to(x.dtype)


def luong_attention(
    h_t: Any,
    h_s: Any,
    *,
    score: Any = "dot",
    w_a: Any = None,
    v_a: Any = None,
    mode: Any = "global",
    half_width: Any = None,
    w_p: Any = None,
    v_p: Any = None,
    source_lengths: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attnref.reference.luong_attention` on tensors: ``(context (B, T, d), weights (B, T, S))``."""
    args = check_luong(
        h_t, h_s, score=score, w_a=w_a, v_a=v_a, mode=mode, half_width=half_width,
        w_p=w_p, v_p=v_p, source_lengths=source_lengths,
    )  # fmt: skip
    t = _tensors({"h_t": h_t, "h_s": h_s, "w_a": w_a, "v_a": v_a, "w_p": w_p, "v_p": v_p}, "h_t")
    h_t = t["h_t"]
    dt = compute_dtype(h_t.dtype)
    ht, hs = h_t.to(dt), t["h_s"].to(dt)
    weights_of = {name: (None if t[name] is None else t[name].to(dt)) for name in ("w_a", "v_a", "w_p", "v_p")}
    scores = _scores(args, ht, hs, weights_of["w_a"], weights_of["v_a"])
    device = h_t.device
    s = torch.arange(args.source_len, device=device)[None, None, :]
    source_lengths = torch.as_tensor(args.source_lengths, device=device)[:, None, None]
    allowed = (s < source_lengths).expand(scores.shape)
    if args.mode == "global":
        weights = masked_softmax(scores, allowed)
        return weighted_sum(weights, allowed, hs).to(h_t.dtype), weights.to(h_t.dtype)
    p_t = _aligned_positions(args, ht, weights_of["w_p"], weights_of["v_p"], source_lengths)  # (B, T, 1)
    allowed = allowed & Pattern.window(args.half_width, args.half_width).allows(p_t.detach(), s)
    weights = masked_softmax(scores, allowed)
    if args.mode == "local-p":
        sigma = args.half_width / 2
        gauss = torch.exp(-((s.to(dt) - p_t) ** 2) / (2 * sigma * sigma))
        weights = torch.where(allowed, weights * gauss, torch.zeros((), dtype=dt, device=device))
        # A NaN p_t leaves the window undefined (every comparison above is False): the NaN
        # must reach the outputs, so every valid source position of that row gets NaN.
        unknown = torch.isnan(p_t) & (s < source_lengths)
        weights = torch.where(unknown, float("nan"), weights).to(dt)
        allowed = allowed | unknown
    return weighted_sum(weights, allowed, hs).to(h_t.dtype), weights.to(h_t.dtype)


def _scores(args: LuongArgs, ht: torch.Tensor, hs: torch.Tensor, w_a: Any, v_a: Any) -> torch.Tensor:
    """``score(t, s)`` for every pair, ``(B, T, S)``."""
    hs_t = hs.transpose(-1, -2)
    if args.score == "dot":
        return ht @ hs_t
    if args.score == "general":
        return (ht @ w_a) @ hs_t
    # concat(h_t, h_s) @ w_a == h_t @ w_a[:d] + h_s @ w_a[d:]
    from_t = (ht @ w_a[: args.dim])[:, :, None, :]
    from_s = (hs @ w_a[args.dim :])[:, None, :, :]
    return torch.tanh(from_t + from_s) @ v_a


def _aligned_positions(
    args: LuongArgs, ht: torch.Tensor, w_p: Any, v_p: Any, source_lengths: torch.Tensor
) -> torch.Tensor:
    """``p_t`` of local-m (integer) or local-p (real, differentiable), shape ``(B, T, 1)``."""
    if args.mode == "local-m":
        t = torch.arange(args.target_len, device=ht.device)[None, :, None]
        return torch.minimum(t, source_lengths - 1)
    gate = torch.tanh(ht @ w_p) @ v_p[:, None]
    return source_lengths.to(ht.dtype) * torch.sigmoid(gate)
