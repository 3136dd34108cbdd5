"""The block plan shared by the blocked and banded paths.

For each batch group (batches with one alignment offset and one pair of
lengths), the query rows are cut into blocks; each block gets the band of keys
any of its rows may see (:meth:`attnref.patterns.Pattern.key_range`); blocks
of one shape are computed together. The same ranges, one row at a time, say
which keys each row may see, and which rows may see each key: the blocked and
banded paths count non-finite values over them
(:func:`attnref_torch._numerics.range_counts`).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs

__all__ = [
    "BLOCK_ROWS",
    "CUDA_BLOCK_ROWS",
    "MAX_MERGED_ROWS",
    "KEY_TILE",
    "Group",
    "Block",
    "groups",
    "plan",
    "cut_tiles",
    "indices",
    "block_rows",
    "ranges",
    "as5d",
]

#: Query rows per block on the CPU and on CUDA.
BLOCK_ROWS = 64
CUDA_BLOCK_ROWS = 128
#: Most rows of a block merged from blocks that share one band (see :func:`plan`).
MAX_MERGED_ROWS = 1024
#: Keys per tile when masking a band: tiles the pattern allows whole are not masked.
KEY_TILE = 128


# -- the plan -----------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """Batches that share one plan: same offset, key count and query count."""

    first: int  # batches first:stop
    stop: int
    offset: int
    kv_len: int
    q_len: int

    @property
    def batches(self) -> slice:
        return slice(self.first, self.stop)


@dataclass(frozen=True)
class Block:
    """Query rows ``r0:r1`` of a group, the band ``lo:hi`` of keys they may see, and the
    tiles of the band the pattern cuts, as ``(start, stop)`` relative to ``lo``; ``causal``:
    the rows see exactly the band's lower triangle (a kernel's ``is_causal`` draws it)."""

    r0: int
    r1: int
    lo: int
    hi: int
    cut: tuple[tuple[int, int], ...]
    causal: bool = False


def groups(args: AttentionArgs) -> tuple[Group, ...]:
    offsets = args.offsets()
    if args.kv_lengths is None and args.q_lengths is None:
        return (Group(0, args.batch, int(offsets[0]), args.kv_len, args.q_len),)
    kv = args.kv_lengths if args.kv_lengths is not None else [args.kv_len] * args.batch
    ql = args.q_lengths if args.q_lengths is not None else [args.q_len] * args.batch
    return tuple(Group(b, b + 1, int(offsets[b]), int(kv[b]), int(ql[b])) for b in range(args.batch))


@functools.lru_cache(maxsize=64)
def plan(
    pattern: Pattern, group: Group, rows: int, max_rows: int, key_tile: int, causal: bool = False
) -> tuple[tuple[tuple[int, int, bool], tuple[Block, ...]], ...]:
    """Blocks by shape: ``((rows, band width, causal), blocks)``, from
    :meth:`attnref.patterns.Pattern.plan_blocks`; rows that see no key are in none.

    Consecutive blocks with the same band are merged (up to ``max_rows`` rows):
    the band is shared, so one larger block does the same work in larger tiles
    (all the blocks of a chunk, for example). With ``causal`` (a kernel with a
    built-in causal mask), blocks also merge while the merged block stays causal
    (a causal chunk's blocks into the chunk), and such blocks are marked
    :attr:`Block.causal`. Cached: calls of one shape plan once.
    """
    buckets: dict[tuple[int, int, bool], list[Block]] = defaultdict(list)
    planned = pattern.plan_blocks(
        group.q_len, group.kv_len, offset=group.offset, block_rows=rows, key_tile=key_tile, merge_rows=max_rows,
        merge_causal=causal,
    )  # fmt: skip
    for qb in planned:
        if qb.empty:
            continue
        cut = tuple((t.start - qb.key_start, t.stop - qb.key_start) for t in qb.tiles if not t.full)
        blk = Block(qb.start, qb.stop, qb.key_start, qb.key_stop, cut, causal and qb.causal)
        buckets[(blk.r1 - blk.r0, blk.hi - blk.lo, blk.causal)].append(blk)
    return tuple((shape, tuple(b)) for shape, b in buckets.items())


def cut_tiles(blocks: tuple[Block, ...]) -> list[tuple[int, int]]:
    """The tiles (relative to each band's start) that the pattern cuts in any of ``blocks``
    (blocks of one shape: their tiles line up)."""
    return sorted({tile for blk in blocks for tile in blk.cut})


@functools.lru_cache(maxsize=256)
def indices(blocks: tuple[Block, ...], rows: int, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Row and key indices of blocks of one shape, ``(n, rows)`` and ``(n, width)`` (cached)."""
    r0 = torch.tensor([blk.r0 for blk in blocks], device=device)
    lo = torch.tensor([blk.lo for blk in blocks], device=device)
    return r0[:, None] + torch.arange(rows, device=device), lo[:, None] + torch.arange(width, device=device)


def block_rows(device: torch.device) -> int:
    """Query rows per block on ``device``."""
    return CUDA_BLOCK_ROWS if device.type == "cuda" else BLOCK_ROWS


@functools.lru_cache(maxsize=64)
def _row_ranges(pattern: Pattern, group: Group) -> tuple[np.ndarray, np.ndarray]:
    """Allowed keys ``lo_i:hi_i`` of each query row ``i < group.q_len`` (host int64)."""
    lo = np.zeros(group.q_len, dtype=np.int64)
    hi = np.zeros(group.q_len, dtype=np.int64)
    for i in range(group.q_len):
        p = i + group.offset
        lo[i], hi[i] = pattern.key_range(p, p, group.kv_len)
    lo = np.minimum(lo, group.kv_len)  # an empty range may start past the keys
    return lo, np.maximum(hi, lo)


@functools.lru_cache(maxsize=64)
def _key_ranges(pattern: Pattern, group: Group) -> tuple[np.ndarray, np.ndarray]:
    """Query rows ``a_j:b_j`` that allow each key ``j < group.kv_len`` (host int64).

    Every pattern's ranges start and end in non-decreasing order with the
    row, so the rows that allow key ``j`` are one range, found by bisection.
    """
    lo, hi = _row_ranges(pattern, group)
    if np.any(np.diff(lo) < 0) or np.any(np.diff(hi) < 0):
        raise NotImplementedError(f"key ranges of {pattern.describe()} that are not monotone")  # none are
    j = np.arange(group.kv_len)
    a = np.searchsorted(hi, j, side="right")
    b = np.searchsorted(lo, j, side="right")
    return a, np.maximum(a, b)


@functools.lru_cache(maxsize=64)
def ranges(
    pattern: Pattern, groups: tuple[Group, ...], length: int, of_keys: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)``, int64 ``(B or 1, length)`` on ``device``: per query row its allowed
    keys, or (``of_keys``) per key the rows that allow it. Positions past a
    batch's length get an empty range. Cached, so repeated calls copy nothing."""
    lo = np.zeros((len(groups), length), dtype=np.int64)
    hi = np.zeros((len(groups), length), dtype=np.int64)
    for row, group in enumerate(groups):
        a, b = (_key_ranges if of_keys else _row_ranges)(pattern, group)
        lo[row, : len(a)], hi[row, : len(b)] = a, b
    return torch.from_numpy(lo).to(device), torch.from_numpy(hi).to(device)


def as5d(t: torch.Tensor | None, kv_heads: int, group: int) -> torch.Tensor | None:
    """A tensor broadcastable to ``(B, Hq, Lq, Lk)`` viewed as ``(B', Hkv', G', Lq', Lk')``."""
    if t is None:
        return None
    t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.reshape(t.shape[0], kv_heads, group, t.shape[2], t.shape[3])
