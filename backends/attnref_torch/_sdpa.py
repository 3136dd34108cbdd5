"""Global attention through ``torch.nn.functional.scaled_dot_product_attention``.

SDPA is used only where its result is attnref's by construction:

* no softcap and no lse (SDPA offers neither);
* ``q`` and ``k`` finite and ``bias`` finite, so no row's allowed scores can all
  be ``-inf`` (attnref's rule gives such a row 0; kernels differ);
* ``v`` finite whenever some key is disallowed (a kernel multiplies the 0
  weight of a masked key by its value, so a NaN there would leak);
* the boolean mask of allowed keys (when one is needed) is at most
  :data:`MAX_MASK_ELEMENTS`; larger problems go to the blocked code.

Alignment: ``is_causal=True`` is top-left, so it is used only when every
batch's offset is 0; any other causal case gets an explicit mask drawn by
:meth:`attnref.patterns.Pattern.allows`. Rows with no allowed key (padding
rows, negative aligned positions) are given every key for the kernel and then
set to 0, so that no kernel's convention for empty rows matters and no NaN
reaches a gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_torch._numerics import Finite

__all__ = ["MAX_MASK_ELEMENTS", "sdpa_applies", "sdpa_attention", "dense_allowed"]

#: Largest dense mask (in elements) built for SDPA; beyond it the blocked code runs.
MAX_MASK_ELEMENTS = 1 << 26


def _needs_mask(args: AttentionArgs, pattern: Pattern, mask: torch.Tensor | None) -> bool:
    if mask is not None or args.kv_lengths is not None or args.q_lengths is not None:
        return True
    return pattern.kind == "causal" and int(args.offsets()[0]) != 0


def sdpa_applies(
    pattern: Pattern, args: AttentionArgs, *, mask: torch.Tensor | None, return_lse: bool, finite: Finite
) -> bool:
    """Whether SDPA computes exactly attnref's answer for this call."""
    if pattern.kind not in ("global", "causal") or return_lse or args.softcap is not None:
        return False
    if _needs_mask(args, pattern, mask):
        heads = args.q_heads if mask is not None and mask.dim() >= 3 and mask.shape[-3] > 1 else 1
        if args.batch * heads * args.q_len * args.kv_len > MAX_MASK_ELEMENTS:
            return False
        some_key_disallowed = True
    else:
        some_key_disallowed = pattern.kind == "causal"
    if some_key_disallowed and not finite.v:
        return False
    return finite.scores


def dense_allowed(
    args: AttentionArgs, pattern: Pattern, mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Bool ``(B, 1 or Hq, Lq, Lk)``: pattern, lengths and mask together."""
    i = torch.arange(args.q_len, device=device)[None, :, None]
    j = torch.arange(args.kv_len, device=device)[None, None, :]
    offsets = torch.as_tensor(args.offsets(), device=device)[:, None, None]
    ok = pattern.allows(i + offsets, j)
    if args.kv_lengths is not None:
        ok = ok & (j < torch.as_tensor(args.kv_lengths, device=device)[:, None, None])
    if args.q_lengths is not None:
        ok = ok & (i < torch.as_tensor(args.q_lengths, device=device)[:, None, None])
    ok = ok.expand(args.batch, args.q_len, args.kv_len)[:, None]
    return ok if mask is None else ok & mask


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    args: AttentionArgs,
    *,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Global (or causal) attention through SDPA; call only when :func:`sdpa_applies`."""
    attn_mask = None if bias is None else bias.to(q.dtype)
    is_causal = False
    dead = None
    if _needs_mask(args, pattern, mask):
        allowed = dense_allowed(args, pattern, mask, q.device)
        dead = ~allowed.any(-1, keepdim=True)
        allowed = allowed | dead  # the kernel sees a normal row; the result is replaced by 0 below
        if attn_mask is None:
            attn_mask = allowed
        else:
            attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
    elif pattern.kind == "causal":
        if attn_mask is None:
            is_causal = True
        else:  # offset 0 here, so the top-left causal mask is the pattern
            attn_mask = attn_mask.masked_fill(~dense_allowed(args, pattern, None, q.device), float("-inf"))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=args.scale, enable_gqa=args.group > 1
    )
    if dead is not None:
        out = torch.where(dead, torch.zeros((), dtype=out.dtype, device=out.device), out)
    return out
