"""How a blocked kernel cuts one multi-head call into tasks (host side, plain ints).

The blocks come from the one block planner, :meth:`Pattern.plan_blocks`:
query rows cut into blocks, each with the only keys it may see (clipped to the
batch's kv length) and its key tiles marked full or cut by the pattern. Here a
block height is chosen per pattern (tall for global attention, short for a
narrow band), blocks with an empty key range are dropped (their rows stay 0
with lse ``-inf``; causal attention does about half the work, local attention
``O(Lq x window)``), and each block becomes tasks of a few kv heads. Rows at
or past the batch's ``q_lengths`` are not planned. The forward and the
backward kernels run the same plan.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from attnref.patterns import Pattern, QueryBlock
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
        block costs kernel launches. 12 on the CPU: the causal window
        (255, 0) then takes blocks of 64 rows instead of 32, about 20% less
        time at L=16384 on 2 cores (fp32, H=8, D=64; 8 and 12 timed
        alternately in one process); the other benchmarked bands keep their
        blocks.
    threads : int
        Worker threads (1 = run on the calling thread).
    matmul : callable, optional
        The matrix product of the kernels' blocks, with ``numpy.matmul``'s
        signature (``None``: the namespace's own ``matmul``). The NumPy backend
        gives its worker threads a product on a private single-threaded BLAS
        (:mod:`attnref_numpy._gemm`).
    """

    score_elements: int = 1 << 19
    max_rows: int = 256
    tile: int = 64
    key_block: int = 512
    row_overhead: int = 12
    threads: int = 1
    matmul: Callable[..., Any] | None = None


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


def _row_blocks(pattern: Pattern, q_len: int, kv_len: int, offset: int, rows: int) -> list[QueryBlock]:
    """The non-empty blocks of ``rows`` query rows (:meth:`Pattern.plan_blocks`, without tiles)."""
    return [block for block in pattern.plan_blocks(q_len, kv_len, offset=offset, block_rows=rows) if not block.empty]


def plan(args: AttentionArgs, pattern: Pattern, config: BlockConfig) -> list[Task]:
    """Cut the op into tasks, the most expensive first (for load balance)."""
    offsets = args.offsets()
    shape = dataclasses.replace(config, matmul=None)  # what the cut depends on (and hashable)
    # Only plain patterns are cached: they are values; any other pattern-like object (such as a
    # packed batch's) is planned afresh, so that the cache never keeps it alive.
    planner = _sequence_plan if type(pattern) is Pattern else _sequence_plan.__wrapped__
    tasks = []
    for b, (q_len, kv_len) in enumerate(zip(args.q_lens().tolist(), args.kv_lens().tolist(), strict=True)):
        offset = int(offsets[b])
        for heads, rows, keys, masked in planner(
            pattern, q_len, kv_len, offset, args.group, args.kv_heads, args.batch, shape
        ):  # fmt: skip
            tasks.append(Task(b, heads, rows, keys, masked, offset))
    tasks.sort(key=lambda t: -t.cost)
    return tasks


@functools.lru_cache(maxsize=64)
def _sequence_plan(
    pattern: Pattern, q_len: int, kv_len: int, offset: int, g: int, kv_heads: int, batch: int, config: BlockConfig
) -> tuple[tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[tuple[int, int], ...]], ...]:
    """The tasks of one sequence as ``(heads, rows, keys, masked)``. Cached: a model calls the same
    shapes again and again, and planning a long sequence costs tens of milliseconds in Python."""
    rows, blocks = _choose_rows(pattern, q_len, kv_len, offset, config)
    if not blocks:
        return ()
    widest = _score_width(blocks, config.key_block)
    if g * rows * widest > config.score_elements and rows > 1:
        rows = max(1, config.score_elements // (g * widest))
        blocks = _row_blocks(pattern, q_len, kv_len, offset, rows)
        widest = _score_width(blocks, config.key_block)
    heads = _heads_per_task(kv_heads, g * rows * widest, config, len(blocks) * batch)
    tiled = pattern.plan_blocks(q_len, kv_len, offset=offset, block_rows=rows, key_tile=config.tile)
    return tuple(
        ((h0, min(h0 + heads, kv_heads)), (block.start, block.stop), (block.key_start, block.key_stop),
         block.masked_ranges())
        for block in tiled
        if not block.empty
        for h0 in range(0, kv_heads, heads)
    )  # fmt: skip


def _choose_rows(
    pattern: Pattern, q_len: int, kv_len: int, offset: int, config: BlockConfig
) -> tuple[int, list[QueryBlock]]:
    """Query rows per block, and the blocks: the candidate (a power of two up to ``max_rows``)
    with the least planned work, counting each block as ``rows + config.row_overhead`` rows against its
    key range. Tall blocks waste keys in a narrow band (the range grows with the rows); short
    ones cost per-block overhead and slower products. Global attention takes ``max_rows``."""
    candidates = [config.max_rows]
    while candidates[-1] > MIN_ROWS:
        candidates.append(candidates[-1] // 2)
    best = None
    for rows in candidates:
        blocks = _row_blocks(pattern, q_len, kv_len, offset, rows)
        work = sum((b.stop - b.start + config.row_overhead) * (b.key_stop - b.key_start) for b in blocks)
        if best is None or work < best[0]:
            best = (work, rows, blocks)
    return best[1], best[2]


def _score_width(blocks: list[QueryBlock], key_block: int) -> int:
    """Widest score block, in keys (longer key ranges are streamed in pieces of ``key_block``)."""
    widest = max(block.key_stop - block.key_start for block in blocks)
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
