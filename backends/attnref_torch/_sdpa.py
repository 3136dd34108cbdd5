"""Attention in which every row sees every key, through
``torch.nn.functional.scaled_dot_product_attention``.

SDPA is used only where its result is attnref's by construction, decided from
shapes and options alone (never from the values, which would cost a device
synchronisation on CUDA):

* the pattern allows every key to every row (global attention, or a window or
  chunk wider than the sequences), no ``mask``, no ``kv_lengths`` or
  ``q_lengths``: no key is disallowed, so no 0 weight can meet a NaN or an
  infinity (a kernel multiplies, attnref selects), and a NaN or ``+inf`` score
  makes its row NaN in both;
* no ``softcap`` and no ``return_lse`` (SDPA offers neither);
* no input requires a gradient (the banded and blocked paths' own backwards
  keep the contract's rule that a row whose scores are all ``-inf`` never reads
  ``dout``).

A row whose scores are all ``-inf`` (a ``-inf`` bias row) is 0 in attnref;
torch 2.13's CPU kernels give 0 too (tested).

``enable_gqa=`` (torch >= 2.5) is passed where torch has it; before, the kv
heads are repeated for grouped-query attention.

A call that asks for the lse or a gradient leaves this path: on the CPU the
banded path (:mod:`attnref_torch._banded`) gives both through ATen's CPU
flash-attention kernel, whose two ops this module wraps (:func:`flash_forward`,
:func:`flash_backward`). What they do in torch 2.13 (checked, and tested):

* ``_scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal,
  *, attn_mask, scale) -> (out, lse)``: ``(B, H, L, D)`` operands (any strides),
  ``k`` and ``v`` with the same head size as ``q`` and ``H`` or a divisor of it
  heads (grouped-query attention); an additive mask of ``q``'s dtype that
  broadcasts to ``(B, H, Lq, Lk)``; ``lse (B, H, Lq)`` in natural log, float32
  for 16-bit inputs. A row whose mask is all ``-inf`` gets output 0 and lse 0
  (not ``-inf``): callers give such rows keys and select them away.
* ``..._backward(dout, q, k, v, out, lse, dropout_p, is_causal, *, attn_mask,
  scale) -> (dq, dk, dv)``, ``dk`` and ``dv`` with the kv heads; it recomputes
  ``P = exp(s - lse)`` and takes ``delta = dout . out`` from the ``out`` it is
  given (which :func:`flash_backward` uses to add an upstream ``dlse``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs

__all__ = [
    "HAS_ENABLE_GQA",
    "HAS_FLASH_CPU",
    "flash_applies",
    "flash_backward",
    "flash_forward",
    "sdpa_applies",
    "sdpa_attention",
]


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int(minor)


#: Whether ``scaled_dot_product_attention`` takes ``enable_gqa=`` (torch >= 2.5).
HAS_ENABLE_GQA = _version(torch.__version__) >= (2, 5)

_FLASH = "_scaled_dot_product_flash_attention_for_cpu"
#: Whether ATen has the CPU flash-attention ops with lse and backward (torch >= 2.2).
HAS_FLASH_CPU = hasattr(torch.ops.aten, _FLASH) and hasattr(torch.ops.aten, _FLASH + "_backward")


def sdpa_applies(pattern: Pattern, args: AttentionArgs, *, mask: object, return_lse: bool, requires_grad: bool) -> bool:
    """Whether SDPA computes exactly attnref's answer for this call (metadata only)."""
    if mask is not None or args.kv_lengths is not None or args.q_lengths is not None:
        return False
    if return_lse or args.softcap is not None or requires_grad:
        return False
    offset = int(args.offsets()[0])
    return pattern.block_is_full(offset, offset + args.q_len - 1, 0, args.kv_len - 1)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: AttentionArgs, *, bias: torch.Tensor | None
) -> torch.Tensor:
    """Attention over all keys through SDPA; call only when :func:`sdpa_applies`."""
    attn_mask = None if bias is None else bias.to(q.dtype)
    if args.group == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=args.scale)
    if HAS_ENABLE_GQA:  # read at call time, so that a test can force the fallback
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=args.scale, enable_gqa=True)
    k, v = k.repeat_interleave(args.group, 1), v.repeat_interleave(args.group, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=args.scale)


# -- the CPU flash-attention kernel, with its lse and backward --------------------------------
def flash_applies(q: torch.Tensor, args: AttentionArgs) -> bool:
    """Whether :func:`flash_forward` and :func:`flash_backward` can run this call (metadata only):
    on the CPU, where torch has the ops, with ``k``'s head size equal to ``v``'s."""
    # HAS_FLASH_CPU is read at call time, so that a test can force the fallback
    return HAS_FLASH_CPU and q.device.type == "cpu" and args.head_dim == args.value_dim


def _kv_heads(k: torch.Tensor, v: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` and ``v`` with their heads repeated ``group`` times where torch predates grouped-query attention."""
    if group == 1 or HAS_ENABLE_GQA:
        return k, v
    return k.repeat_interleave(group, -3), v.repeat_interleave(group, -3)


def flash_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None,
    scale: float,
    group: int,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of ``softmax(scale * q k^T + attn_mask) v`` for ``(..., H, L, D)`` operands,
    ``k`` and ``v`` with ``H / group`` heads; ``lse`` float32 for 16-bit inputs. ``is_causal``
    (no ``attn_mask``): row ``i`` sees keys ``0..i`` only (top-left aligned).
    A row whose ``attn_mask`` is all ``-inf`` gets output 0 and lse 0 (see the module's docstring)."""
    k, v = _kv_heads(k, v, group)
    op = getattr(torch.ops.aten, _FLASH)
    return op(q, k, v, 0.0, is_causal, attn_mask=attn_mask, scale=scale)


def flash_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    dlse: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    scale: float,
    group: int,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of :func:`flash_forward` for upstream ``dout`` and ``dlse`` (None = 0),
    given its ``out`` and ``lse`` (and its ``is_causal``).

    The kernel computes ``dS = P * (dout v^T - delta)`` with ``delta = dout . out``; an
    upstream ``dlse`` adds ``P * dlse`` (``d lse_i / d s_ij = P_ij``), so it enters as
    one more head-dim column: 0 in ``q``, ``k`` and ``v`` (scores and ``dout v^T``
    unchanged), 1 in ``out`` and ``-dlse`` in ``dout`` (``delta - dlse``).
    """
    heads = k.shape[-3]
    k, v = _kv_heads(k, v, group)
    if dlse is not None:
        q, k, v = (torch.nn.functional.pad(x, (0, 1)) for x in (q, k, v))
        out = torch.cat([out, torch.ones_like(out[..., :1])], -1)
        dout = torch.cat([dout, -dlse.to(dout.dtype)[..., None]], -1)
    op = getattr(torch.ops.aten, _FLASH + "_backward")
    dq, dk, dv = op(dout, q, k, v, out, lse, 0.0, is_causal, attn_mask=attn_mask, scale=scale)
    if dlse is not None:
        dq, dk, dv = dq[..., :-1], dk[..., :-1], dv[..., :-1]
    if dk.shape[-3] != heads:  # heads repeated above: sum each kv head's copies
        dk = dk.unflatten(-3, (heads, group)).sum(-3)
        dv = dv.unflatten(-3, (heads, group)).sum(-3)
    return dq, dk, dv
