"""Banded attention through SDPA: each query block attends to its own band of keys.

The CPU's fast forward path for local and chunked attention (and global
attention with a mask or lengths) without ``softcap``, ``return_lse`` or a
gradient: the query blocks of :mod:`attnref_torch._plan` become the *batch* of
one ``scaled_dot_product_attention`` call, each with its band of keys and a
``(rows x band)`` mask drawn by :meth:`attnref.patterns.Pattern.allows`. SDPA's
fused kernel (online softmax, no score array in memory) then does the work in
one operation per step: time and memory stay O(L x band), and the CPU pays
few thread synchronisations. Consecutive blocks whose bands advance by
exactly their row count read overlapping strided *views* of ``k`` and ``v``
(no copy).

When it applies (:func:`banded_applies`): SDPA adds its mask to the scores, so
a NaN or infinite score at a masked key would leak; the path therefore needs
finite ``q``, ``k`` and ``bias``, which is asked of the values. That is free on
the CPU (no device to wait for) and a device synchronisation elsewhere, so the
path runs on the CPU only; on CUDA the blocked path (or FlexAttention) runs,
whose choice reads no value. Values may hold NaN and infinities: they are given
to SDPA with those entries set to 0 and put back where an allowed key holds
them (:func:`attnref_torch._blocked.values_put_back`), unless a user mask is
given, in which case ``v`` must be finite too. Rows with no allowed key are
given every key of their band for the kernel, then set to 0.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_torch import _numerics, _plan, _sdpa
from attnref_torch._blocked import values_put_back
from attnref_torch._numerics import finite_part, known_finite
from attnref_torch._plan import Block, Group, as5d, block_rows, cut_tiles, groups, indices, plan

__all__ = ["banded_applies", "banded_attention"]

#: Largest ``blocks x heads x rows x band`` of one SDPA call's mask (bounds the mask's memory).
STEP_MASK_ELEMENTS = 1 << 23


def banded_applies(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    args: AttentionArgs,
    *,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    return_lse: bool,
    requires_grad: bool,
) -> bool:
    """Whether banded SDPA computes exactly attnref's answer for this call.

    Reads the values (whether ``q``, ``k``, ``bias``, and with a mask ``v``,
    are finite) only on the CPU, where that waits for no device.
    """
    if not _numerics.reads_values_on(q.device) or return_lse or args.softcap is not None or requires_grad:
        return False
    return known_finite(q, k, bias, v if mask is not None else None)


def banded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    args: AttentionArgs,
    *,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The op of ``pattern`` through SDPA on key bands; call only when :func:`banded_applies`."""
    runner = _Runner(
        q=q, k=k.contiguous(), v=finite_part(v).contiguous(), pattern=pattern, args=args,
        bias5=as5d(None if bias is None else bias.to(q.dtype), args.kv_heads, args.group),
        mask5=as5d(mask, args.kv_heads, args.group),
    )  # fmt: skip
    out = q.new_zeros((args.batch, args.q_heads, args.q_len, args.value_dim))
    for g in groups(args):
        for b in range(g.first, g.stop):
            runner.batch(b, g, out[b])
    if mask is not None:  # v is finite here, and masked rows are 0 already
        return out
    return values_put_back(out, None, v, pattern, args)


class _MaskCache:
    """A few recent pattern masks, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_bytes: int, max_entries: int):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._entries: OrderedDict[tuple, tuple[torch.Tensor | None, torch.Tensor | None]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _bytes(entry: tuple[torch.Tensor | None, torch.Tensor | None]) -> int:
        return sum(t.numel() * t.element_size() for t in entry if t is not None)

    def get(self, key: tuple) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple, entry: tuple[torch.Tensor | None, torch.Tensor | None]) -> None:
        if self._bytes(entry) > self.max_bytes:
            return
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.max_entries or (
                sum(self._bytes(e) for e in self._entries.values()) > self.max_bytes
            ):
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: The pattern masks of recent calls (see :meth:`_Runner._pattern_mask`).
_MASKS = _MaskCache(max_bytes=1 << 27, max_entries=16)


class _Runner:
    """The SDPA calls of one op call, batch element by batch element."""

    def __init__(
        self,
        *,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        pattern: Pattern,
        args: AttentionArgs,
        bias5: torch.Tensor | None,
        mask5: torch.Tensor | None,
    ):
        self.q, self.k, self.v = q, k, v
        self.pattern, self.args = pattern, args
        self.bias5, self.mask5 = bias5, mask5

    def batch(self, b: int, group: Group, out: torch.Tensor) -> None:
        """Write the output ``(Hq, Lq, Dv)`` of batch element ``b`` into ``out`` (rows that see
        no key stay 0)."""
        a = self.args
        heads = a.q_heads if (self.mask5 is not None or self.bias5 is not None) else 1
        for (rows, width), blocks in plan(
            self.pattern, group, block_rows(self.q.device), _plan.MAX_MERGED_ROWS, _plan.KEY_TILE
        ):
            step = max(1, STEP_MASK_ELEMENTS // (heads * rows * width))
            for start in range(0, len(blocks), step):
                chunk = blocks[start : start + step]
                result = self.step(b, group, chunk, rows, width)  # (n, Hq, rows, Dv)
                row_index = [r for blk in chunk for r in range(blk.r0, blk.r1)]
                if row_index == list(range(row_index[0], row_index[0] + len(row_index))):
                    out[:, row_index[0] : row_index[0] + len(row_index)].view(
                        a.q_heads, len(chunk), rows, a.value_dim
                    ).copy_(result.transpose(0, 1))
                else:
                    index = torch.tensor(row_index, device=out.device)
                    out.index_copy_(1, index, result.transpose(0, 1).reshape(a.q_heads, len(row_index), -1))

    def step(self, b: int, group: Group, blocks: list[Block], rows: int, width: int) -> torch.Tensor:
        """Output ``(n, Hq, rows, Dv)`` of ``n`` blocks of one shape, in one SDPA call."""
        a, device = self.args, self.q.device
        row_index, key_index = indices(tuple(blocks), rows, width, device)  # (n, rows), (n, width)
        q, k, v = self._operands(b, blocks, rows, width, row_index, key_index)
        attn_mask, dead = self._attn_mask(b, group, blocks, row_index, key_index)
        if a.group > 1 and not _sdpa.HAS_ENABLE_GQA:
            k, v = k.repeat_interleave(a.group, 1), v.repeat_interleave(a.group, 1)
        gqa = {"enable_gqa": True} if a.group > 1 and _sdpa.HAS_ENABLE_GQA else {}
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=a.scale, **gqa)  # (n, Hq, rows, Dv)
        if dead is not None:
            out = torch.where(dead, torch.zeros((), dtype=out.dtype, device=device), out)
        return out

    def _attn_mask(
        self, b: int, group: Group, blocks: list[Block], row_index: torch.Tensor, key_index: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """SDPA's mask for the blocks (bool, or float with the bias) and the rows with no
        allowed key (None when there is none). Such rows are given every key of their
        band, so the kernel sees normal rows; their result is replaced by 0."""
        if self.mask5 is None:
            return self._pattern_mask(b, group, blocks, row_index, key_index)
        allowed = self._gather(self.mask5, b, row_index, key_index)
        if any(blk.cut for blk in blocks):
            allowed = allowed & self.pattern.allows(self._positions(group, row_index), key_index[:, None, None, :])
        dead = ~allowed.any(-1, keepdim=True)
        allowed = allowed | dead
        if self.bias5 is None:
            return allowed, dead
        return self._gather(self.bias5, b, row_index, key_index).masked_fill(~allowed, float("-inf")), dead

    def _pattern_mask(
        self, b: int, group: Group, blocks: list[Block], row_index: torch.Tensor, key_index: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The mask of the pattern alone (plus the bias), drawn only in the key tiles the pattern
        cuts: tiles every block's rows may see whole stay 0.

        Without a bias the result depends only on the pattern, the offset, the blocks, the
        dtype and the device, so it is kept in a small cache: calls of one shape (a training
        loop, a benchmark) draw it once.
        """
        if self.bias5 is not None:
            return self._draw_pattern_mask(b, group, blocks, row_index, key_index)
        key = (self.pattern, group.offset, tuple(blocks), _plan.KEY_TILE, self.q.dtype, self.q.device)
        cached = _MASKS.get(key)
        if cached is None:
            cached = self._draw_pattern_mask(b, group, blocks, row_index, key_index)
            _MASKS.put(key, cached)
        return cached

    def _draw_pattern_mask(
        self, b: int, group: Group, blocks: list[Block], row_index: torch.Tensor, key_index: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        n, rows, width = row_index.shape[0], row_index.shape[1], key_index.shape[1]
        bias = None if self.bias5 is None else self._gather(self.bias5, b, row_index, key_index)
        mask = None
        cut = cut_tiles(tuple(blocks))
        some_full = len(cut) < -(-width // _plan.KEY_TILE)  # a tile every block sees whole
        seen = None  # rows with an allowed key in a cut tile
        for t0, t1 in cut:
            if mask is None:
                mask = bias.clone() if bias is not None else self.q.new_zeros((n, 1, rows, width))
            allowed = self.pattern.allows(self._positions(group, row_index), key_index[:, None, None, t0:t1])
            mask[..., t0:t1].masked_fill_(~allowed, float("-inf"))
            tile_rows = allowed.any(-1, keepdim=True)
            seen = tile_rows if seen is None else seen | tile_rows
        if mask is None:
            return bias, None
        dead = None if some_full else ~seen
        if dead is not None and bool(dead.any()):
            mask = torch.where(dead, torch.zeros((), dtype=mask.dtype, device=mask.device), mask)
        else:
            dead = None
        return mask, dead

    def _positions(self, group: Group, row_index: torch.Tensor) -> torch.Tensor:
        """Aligned positions of the blocks' rows, ``(n, 1, rows, 1)``."""
        return (row_index + group.offset)[:, None, :, None]

    def _operands(
        self, b: int, blocks: list[Block], rows: int, width: int, row_index: torch.Tensor, key_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q (n, Hq, rows, D)``, ``k (n, Hkv, width, D)``, ``v (n, Hkv, width, Dv)`` of the blocks."""
        n = len(blocks)
        first = blocks[0]
        stride = all(blk.r0 == first.r0 + i * rows and blk.lo == first.lo + i * rows for i, blk in enumerate(blocks))
        if stride:  # bands advance with the rows: overlapping strided views, no copy
            q = self.q[b, :, first.r0 : first.r0 + n * rows].unflatten(1, (n, rows)).transpose(0, 1)
            return (
                q,
                self._band_view(self.k[b], first.lo, n, rows, width),
                self._band_view(self.v[b], first.lo, n, rows, width),
            )
        q = self.q[b].index_select(1, row_index.reshape(-1)).unflatten(1, (n, rows)).transpose(0, 1)
        k = self.k[b].index_select(1, key_index.reshape(-1)).unflatten(1, (n, width)).transpose(0, 1)
        v = self.v[b].index_select(1, key_index.reshape(-1)).unflatten(1, (n, width)).transpose(0, 1)
        return q, k, v

    @staticmethod
    def _band_view(t: torch.Tensor, lo: int, n: int, rows: int, width: int) -> torch.Tensor:
        """``(n, H, width, D)``: block ``i`` sees rows ``lo + i * rows`` onward of ``t (H, L, D)``."""
        sh, sl, sd = t.stride()
        return t.as_strided((n, t.shape[0], width, t.shape[2]), (rows * sl, sh, sl, sd), t.storage_offset() + lo * sl)

    def _gather(self, t5: torch.Tensor, b: int, row_index: torch.Tensor, key_index: torch.Tensor) -> torch.Tensor:
        """Entries of a broadcastable ``(B', Hkv', G', Lq', Lk')`` tensor at the blocks' rows
        and keys, for batch ``b``, as ``(n, Hq or 1, rows, width)``."""
        t = t5[b if t5.shape[0] > 1 else 0]  # (Hkv', G', Lq', Lk')
        rows = row_index[:, :, None] if t.shape[2] > 1 else torch.zeros_like(row_index)[:, :, None]
        keys = key_index[:, None, :] if t.shape[3] > 1 else torch.zeros_like(key_index)[:, None, :]
        g = t[:, :, rows, keys]  # (Hkv', G', n, rows, width)
        return g.flatten(0, 1).transpose(0, 1)
