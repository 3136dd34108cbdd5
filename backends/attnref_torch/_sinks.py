"""Attention sinks (contract section 7) on top of any path's ``(out, lse)``.

A sink is a virtual key with logit ``s`` and no value. Every path computes a
row's ``(o, lse)`` over its allowed keys without it; the sink then joins the
row's softmax as one more term (``m = max(lse, s)``, 0 where both are ``-inf``)::

    lse' = m + log(exp(lse - m) + exp(s - m))     (NaN for a NaN or +inf sink, as the reference)
    w    = exp(lse - lse')                        the keys' share of the row
    p    = exp(s - lse')                          the sink's share (w + p = 1)
    o'   = w * o

and backward, for upstream ``do'``, ``dlse'`` and ``delta' = do' . o'``
(``dlse'/dlse = w``, ``dlse'/ds = p``, ``dw/dlse = w p``, ``dw/ds = -w p``)::

    ds   = p * (dlse' - delta')                   summed over rows into dsinks (contract section 7)
    dlse = w * dlse' + p * delta'
    do   = w * do'

Selections, never products with 0, keep the contract's edge cases exact:

* a row with no allowed key (``lse = -inf``): ``o' = 0``, ``lse' = s``, ``w = 0``;
  its ``do'`` is never read (``delta' = 0``), so it adds ``p * dlse'`` to ``ds``
  (``p = 1``) and sends nothing to the path's backward;
* a ``-inf`` sink is no sink: ``p = 0`` exactly, ``lse' = lse``, ``o' = o``;
* padding rows get the sink ``-inf`` from the caller (see :func:`row_sinks`), so
  they keep output 0 and lse ``-inf`` and feed no gradient;
* a NaN sink makes its head's lse, its rows' outputs (those with a key) and
  every gradient they feed NaN; rows without a key keep output 0.

Speed: the sink needs the path's lse. On the CPU the banded path gives one
from ATen's CPU flash-attention kernel (:mod:`attnref_torch._banded`, global
calls included), so a call with sinks runs the same kernel as without them
(a global call SDPA takes goes through the banded path, whose bands are then
the whole key range) and pays only the join above, a few passes over ``out``
and ``lse``. Before,
it fell to the blocked path: 1.8x the time without sinks for causal global
attention and 4.2x for a 256-key causal window (fp32, H=8, L=2048, D=64, a
loaded 2-core CPU); issue 11's target is 1.05x. On CUDA the lse comes from the
blocked path (or FlexAttention), as before.
"""

from __future__ import annotations

from typing import Any

import torch

from attnref_torch._numerics import reads_values_on

__all__ = ["row_sinks", "with_sinks"]

NEG_INF = float("-inf")


def row_sinks(sinks: torch.Tensor, shape: tuple[int, ...], padding: Any = None) -> torch.Tensor:
    """The sink logit of every row of an ``lse`` of ``shape`` (its axis 1 the heads: ``(B, Hq, Lq)``
    or packed ``(Tq, Hq)``): ``sinks[h]``, and ``-inf`` (no sink) where ``padding`` (a bool tensor
    broadcastable to ``shape``) is True.

    Differentiable in ``sinks`` (the rows' gradients sum into ``dsinks``).
    """
    view = [1] * len(shape)
    view[1] = shape[1]
    rows = sinks.reshape(view).expand(shape)
    if padding is None:
        return rows
    return torch.where(padding, NEG_INF, rows).to(rows.dtype)


def with_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out', lse')``: a path's ``out (..., Dv)`` and ``lse (...)`` with the sink logits
    ``sinks`` (of ``lse``'s shape, one per row, see :func:`row_sinks`) joined in.

    All three in one floating dtype; differentiable in each (see the module's docstring).
    ``out`` is overwritten with ``out'`` when it requires no gradient (a path's fresh
    result: on a CPU VM a new array of its size costs more than the join's arithmetic).
    """
    return SinkFunction.apply(out, lse, sinks)


def _shares(lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(keys, lse', w, p)``: which rows have an allowed key, and the formulas above, selected."""
    keys = lse != NEG_INF  # NaN rows count as rows with keys: their NaN must reach out'
    m = torch.maximum(lse, sinks)  # NaN if either is NaN
    m = torch.where(m == NEG_INF, 0.0, m).to(lse.dtype)
    lse2 = m + torch.log(torch.exp(lse - m) + torch.exp(sinks - m))
    w = torch.where(keys, torch.exp(lse - lse2), 0.0).to(lse.dtype)
    p = torch.where(sinks == NEG_INF, 0.0, torch.exp(sinks - lse2)).to(lse.dtype)
    return keys, lse2, w, p


class SinkFunction(torch.autograd.Function):
    """Autograd's view of :func:`with_sinks`, with the backward written out (selections kept)."""

    @staticmethod
    def forward(ctx: Any, out, lse, sinks):  # type: ignore[override]
        keys, lse2, w, p = _shares(lse, sinks)
        if out.requires_grad:  # another backward may have saved it
            out2 = out * w[..., None]
        else:  # a path's fresh result that nothing else reads: no new (B, H, L, Dv) array
            out2 = out.mul_(w[..., None])
            ctx.mark_dirty(out)
        if not (reads_values_on(out.device) and bool(keys.all())):  # on the CPU: only if a row has no key
            out2.masked_fill_(~keys[..., None], 0.0)  # selected: rows without a key are 0 whatever out holds
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(out2, keys, w, p, sinks != NEG_INF)
        return out2, lse2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout, dlse):  # type: ignore[override]
        out2, keys, w, p, has_sink = ctx.saved_tensors
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        delta = zero if dout is None else torch.where(keys, (dout * out2).sum(-1), zero)
        up = zero if dlse is None else dlse
        d_out = None if dout is None else torch.where(keys[..., None], w[..., None] * dout, zero)
        d_lse = torch.where(keys, w * up + p * delta, zero)
        d_sinks = torch.where(has_sink, p * (up - delta), zero)  # a -inf sink is no sink: nothing read
        return d_out, d_lse, d_sinks
