"""How a blocked kernel cuts one multi-head call into tasks (host side, plain ints).

Query rows are cut into blocks (their height chosen per pattern: tall for
global attention, short for a narrow band). For each block,
:meth:`Pattern.key_range` gives the only keys it may see, clipped to the
batch's kv length; a block with an empty range is not planned (its rows stay 0
with lse ``-inf``), so causal attention does about half the work and local
attention ``O(Lq x window)``. The range is cut into tiles, and
:meth:`Pattern.block_is_full` marks the tiles that need the pattern's mask.
Rows at or past the batch's ``q_lengths`` are not planned. The forward and the
backward kernels run the same plan.
"""

from __future__ import annotations

import dataclasses

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs

__all__ = ["BlockConfig", "Task", "plan", "key_pieces"]

#: The shortest query block considered.
MIN_ROWS = 32


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """How the blocked kernels cut the work.

    Attributes
    ----------
    score_elements : int
        Target size (elements) of one task's score block, ``heads x rows x keys``.
    max_rows : int
        Most query rows per block (per query head); narrow bands get fewer
        (see ``_choose_rows``).
    tile : int
        Width of the key tiles whose need for the pattern's mask is decided
        one by one.
    key_block : int
        In the float32 forward, a key range longer than this (by more than a
        quarter) is processed in pieces of about this many keys with a
        streaming (online) softmax: the score block stays in cache, and the
        float32 sums inside the products stay short (their rounding grows with
        their length); 0 = always the whole range at once.
    row_overhead : int
        The fixed cost of one block, in query rows, when choosing the block
        height for a band (see ``_choose_rows``); large on a GPU, where each
        block costs kernel launches.
    threads : int
        Worker threads (1 = run on the calling thread).
    """

    score_elements: int = 1 << 19
    max_rows: int = 256
    tile: int = 64
    key_block: int = 512
    row_overhead: int = 8
    threads: int = 1


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work: a query block of one batch against its key range.

    ``heads`` are kv heads ``[h0, h1)`` (their query heads come along),
    ``rows`` query rows ``[r0, r1)``, ``keys`` the key range ``[lo, hi)``,
    ``masked`` the key sub-ranges that need the pattern's mask, and
    ``offset`` the batch's alignment offset (row ``i`` sits at ``i + offset``).
    """

    batch: int
    heads: tuple[int, int]
    rows: tuple[int, int]
    keys: tuple[int, int]
    masked: tuple[tuple[int, int], ...]
    offset: int

    @property
    def cost(self) -> int:
        """Score elements of the task (per query head of its group), for ordering the work."""
        return (self.rows[1] - self.rows[0]) * (self.keys[1] - self.keys[0]) * (self.heads[1] - self.heads[0])


def _masked_ranges(pattern: Pattern, p_first: int, p_last: int, lo: int, hi: int, tile: int) -> tuple:
    """Key sub-ranges of ``[lo, hi)`` where some position in ``p_first..p_last`` is disallowed."""
    if pattern.block_is_full(p_first, p_last, lo, hi - 1):
        return ()
    ranges: list[tuple[int, int]] = []
    for j0 in range(lo, hi, tile):
        j1 = min(j0 + tile, hi)
        if pattern.block_is_full(p_first, p_last, j0, j1 - 1):
            continue
        if ranges and ranges[-1][1] == j0:
            ranges[-1] = (ranges[-1][0], j1)
        else:
            ranges.append((j0, j1))
    return tuple(ranges)


def _row_blocks(pattern: Pattern, q_len: int, kv_len: int, offset: int, rows: int) -> list[tuple[int, int, int, int]]:
    """``(r0, r1, lo, hi)`` for every block of ``rows`` query rows with a non-empty key range."""
    blocks = []
    for r0 in range(0, q_len, rows):
        r1 = min(r0 + rows, q_len)
        lo, hi = pattern.key_range(r0 + offset, r1 - 1 + offset, kv_len)
        if lo < hi:
            blocks.append((r0, r1, lo, hi))
    return blocks


def plan(args: AttentionArgs, pattern: Pattern, config: BlockConfig) -> list[Task]:
    """Cut the op into tasks, the most expensive first (for load balance)."""
    offsets = args.offsets()
    g = args.group
    tasks = []
    cache: dict[tuple[int, int, int], tuple[int, list]] = {}
    for b in range(args.batch):
        q_len = args.q_len if args.q_lengths is None else int(args.q_lengths[b])
        kv_len = args.kv_len if args.kv_lengths is None else int(args.kv_lengths[b])
        offset = int(offsets[b])
        rows, blocks = _choose_rows(pattern, q_len, kv_len, offset, config, cache)
        if not blocks:
            continue
        widest = _score_width(blocks, config.key_block)
        if g * rows * widest > config.score_elements and rows > 1:
            rows = max(1, config.score_elements // (g * widest))
            blocks = _row_blocks(pattern, q_len, kv_len, offset, rows)
            widest = _score_width(blocks, config.key_block)
        heads = _heads_per_task(args.kv_heads, g * rows * widest, config, len(blocks) * args.batch)
        for r0, r1, lo, hi in blocks:
            masked = _masked_ranges(pattern, r0 + offset, r1 - 1 + offset, lo, hi, config.tile)
            for h0 in range(0, args.kv_heads, heads):
                h1 = min(h0 + heads, args.kv_heads)
                tasks.append(Task(b, (h0, h1), (r0, r1), (lo, hi), masked, offset))
    tasks.sort(key=lambda t: -t.cost)
    return tasks


def _choose_rows(
    pattern: Pattern, q_len: int, kv_len: int, offset: int, config: BlockConfig, cache: dict
) -> tuple[int, list[tuple[int, int, int, int]]]:
    """Query rows per block, and the blocks: the candidate (a power of two up to ``max_rows``)
    with the least planned work, counting each block as ``rows + config.row_overhead`` rows against its
    key range. Tall blocks waste keys in a narrow band (the range grows with the rows); short
    ones cost per-block overhead and slower products. Global attention takes ``max_rows``."""
    key = (q_len, kv_len, offset)
    if key not in cache:
        candidates = [config.max_rows]
        while candidates[-1] > MIN_ROWS:
            candidates.append(candidates[-1] // 2)
        best = None
        for rows in candidates:
            blocks = _row_blocks(pattern, q_len, kv_len, offset, rows)
            work = sum((r1 - r0 + config.row_overhead) * (hi - lo) for r0, r1, lo, hi in blocks)
            if best is None or work < best[0]:
                best = (work, rows, blocks)
        cache[key] = best[1:]
    return cache[key]


def _score_width(blocks: list[tuple[int, int, int, int]], key_block: int) -> int:
    """Widest score block, in keys (longer key ranges are streamed in pieces of ``key_block``)."""
    widest = max(hi - lo for _, _, lo, hi in blocks)
    return widest if key_block <= 0 or widest <= key_block + key_block // 4 else key_block


def _heads_per_task(kv_heads: int, per_head: int, config: BlockConfig, blocks: int) -> int:
    """kv heads per task: fill the score budget, but leave a few tasks per thread."""
    most = max(1, min(kv_heads, config.score_elements // max(per_head, 1)))
    if config.threads > 1:
        while most > 1 and blocks * -(-kv_heads // most) < 4 * config.threads:
            most -= 1
    groups = -(-kv_heads // most)
    return -(-kv_heads // groups)  # the same number of heads in every group, as far as possible


def key_pieces(task: Task, key_block: int) -> list[tuple[int, int]]:
    """The task's key range in about equal pieces of at most ``key_block`` keys (one piece if 0,
    or if it exceeds ``key_block`` by at most a quarter)."""
    lo, hi = task.keys
    if key_block <= 0 or hi - lo <= key_block + key_block // 4:
        return [(lo, hi)]
    pieces = -(-(hi - lo) // key_block)
    step = -(-(hi - lo) // pieces)
    return [(j, min(j + step, hi)) for j in range(lo, hi, step)]
