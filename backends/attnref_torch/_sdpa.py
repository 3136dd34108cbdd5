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
* no input requires a gradient (the blocked path's own backward keeps the
  contract's rule that a row whose scores are all ``-inf`` never reads ``dout``).

A row whose scores are all ``-inf`` (a ``-inf`` bias row) is 0 in attnref;
torch 2.13's CPU kernels give 0 too (tested).

``enable_gqa=`` (torch >= 2.5) is passed where torch has it; before, the kv
heads are repeated for grouped-query attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs

__all__ = ["HAS_ENABLE_GQA", "sdpa_applies", "sdpa_attention"]


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int(minor)


#: Whether ``scaled_dot_product_attention`` takes ``enable_gqa=`` (torch >= 2.5).
HAS_ENABLE_GQA = _version(torch.__version__) >= (2, 5)


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
