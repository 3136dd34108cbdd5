"""Local and chunked attention through compiled FlexAttention on CUDA (opt-in).

Switched on by ``TorchBackend(flex=True)`` or ``ATTNREF_TORCH_FLEX=1``; off by
default, so that the default path never compiles (compiling takes seconds per
new shape and may warn). It runs only where its result is attnref's:

* a CUDA tensor of float16, bfloat16 or float32, head sizes equal and a power
  of two from 16 to 256, and a problem large enough to pay for the planning;
* no ``bias``, ``mask``, ``softcap``, ``kv_lengths`` or ``q_lengths`` (one
  alignment offset for the whole batch);
* no input requiring a gradient (the blocked path's backward keeps the
  contract's NaN rule; FlexAttention's has no CPU implementation either).

Values are given to the kernel with their non-finite entries set to 0 (a
kernel multiplies a masked key's 0 weight by its value: a NaN there would
leak) and put back afterwards where an allowed key holds them
(:func:`attnref_torch._blocked.values_put_back`); scores are masked by
``mask_mod``, which selects. Nothing reads a value on the host.

The block mask is built directly from the pattern's per-block key ranges
(:meth:`~attnref.patterns.Pattern.key_range`,
:meth:`~attnref.patterns.Pattern.block_is_full`), never through
``create_block_mask`` (which evaluates the mask densely: gigabytes at long
lengths), and its ``mask_mod`` is :meth:`~attnref.patterns.Pattern.allows`.
FlexAttention gives rows with no allowed key output 0 and lse ``-inf``, as
attnref does.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_torch._blocked import values_put_back
from attnref_torch._numerics import finite_part

__all__ = ["available", "BLOCK", "MIN_SCORES", "MAX_VARIANTS", "flex_applies", "flex_attention", "block_mask", "reset"]

#: FlexAttention's block size (rows and keys).
BLOCK = 128
#: Smallest ``Lq * Lk`` sent to FlexAttention (smaller problems are faster blocked).
MIN_SCORES = 1 << 22


def flex_applies(q: torch.Tensor, args: AttentionArgs, *, bias: Any, mask: Any, requires_grad: bool) -> bool:
    """Whether compiled FlexAttention computes exactly attnref's answer for this call (metadata only)."""
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if not available():
        return False
    if bias is not None or mask is not None or args.softcap is not None or requires_grad:
        return False
    if args.kv_lengths is not None or args.q_lengths is not None:
        return False
    d = args.head_dim
    if args.value_dim != d or d < 16 or d > 256 or d & (d - 1):
        return False
    return args.q_len * args.kv_len >= MIN_SCORES


def available() -> bool:
    """Whether this torch has FlexAttention (2.5 and later)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


#: Most compiled variants (dtype, shapes, pattern, offset, ...) this module asks for. Dynamo
#: compiles ``flex_attention`` once per variant and, past its recompile limit (8), warns and
#: falls back to an unfused kernel that builds the whole score matrix; below that limit a call
#: of a new variant takes the banded path instead.
MAX_VARIANTS = 6
_variants: set[tuple] = set()


@functools.cache
def _compiled() -> Any:
    from torch.nn.attention.flex_attention import flex_attention as flex

    return torch.compile(flex)


def reset() -> None:
    """Forget the compiled variants and cached block masks (after ``torch._dynamo.reset()``)."""
    _variants.clear()
    _block_mask.cache_clear()


def block_mask(pattern: Pattern, q_len: int, kv_len: int, offset: int, device: torch.device) -> Any:
    """The ``BlockMask`` of ``pattern`` from its per-block key ranges (cached: the last few)."""
    return _block_mask(pattern, q_len, kv_len, offset, torch.device(device))


@functools.lru_cache(maxsize=8)
def _block_mask(pattern: Pattern, q_len: int, kv_len: int, offset: int, device: torch.device) -> Any:
    """The ``BlockMask`` of ``pattern`` from its per-block key ranges (no dense evaluation)."""
    from torch.nn.attention.flex_attention import BlockMask

    n_q = -(-q_len // BLOCK)
    n_k = -(-kv_len // BLOCK)
    partial: list[list[int]] = []
    full: list[list[int]] = []
    for qb in range(n_q):
        p_first = qb * BLOCK + offset
        p_last = min(q_len, (qb + 1) * BLOCK) - 1 + offset
        lo, hi = pattern.key_range(p_first, p_last, kv_len)
        some, every = [], []
        for kb in range(lo // BLOCK, -(-hi // BLOCK)) if lo < hi else ():
            j_first, j_last = max(kb * BLOCK, lo), min((kb + 1) * BLOCK, hi) - 1
            whole = j_first == kb * BLOCK and j_last == min((kb + 1) * BLOCK, kv_len) - 1
            (every if whole and pattern.block_is_full(p_first, p_last, j_first, j_last) else some).append(kb)
        partial.append(some)
        full.append(every)

    def tensors(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        counts = torch.tensor([len(x) for x in lists], dtype=torch.int32)
        indices = torch.zeros((n_q, n_k), dtype=torch.int32)
        for row, blocks in enumerate(lists):
            indices[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        return counts[None, None].to(device), indices[None, None].to(device)

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return pattern.allows(q_idx + offset, kv_idx)

    kv_num, kv_idx = tensors(partial)
    full_num, full_idx = tensors(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(q_len, kv_len)
    )


def flex_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, args: AttentionArgs, *, return_lse: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
    """The op of ``pattern`` through compiled FlexAttention; call only when :func:`flex_applies`.

    Returns None (the caller takes another path) for a new variant once :data:`MAX_VARIANTS`
    are compiled.
    """
    offset = int(args.offsets()[0])
    variant = (q.dtype, q.device, tuple(q.shape), tuple(k.shape), pattern, offset)
    if variant not in _variants:
        if len(_variants) >= MAX_VARIANTS:
            return None
        _variants.add(variant)
    mask = block_mask(pattern, args.q_len, args.kv_len, offset, q.device)
    flex = _compiled()
    out, lse = _with_lse(flex, q, k, finite_part(v), block_mask=mask, scale=args.scale, enable_gqa=args.group > 1)
    out = values_put_back(out, lse, v, pattern, args)
    return (out, lse.to(q.dtype)) if return_lse else out


def _with_lse(flex: Any, *operands: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of a FlexAttention call: ``return_aux=AuxRequest(lse=True)`` where torch
    has it (2.9 and later), else the older ``return_lse=True``."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return flex(*operands, return_lse=True, **kwargs)
    out, aux = flex(*operands, return_aux=AuxRequest(lse=True), **kwargs)
    return out, aux.lse
