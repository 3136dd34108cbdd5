"""``attnref.patterns.Pattern`` against the rules restated in ``bruteforce.key_allowed``.

The backends plan their blocks with ``key_range`` and ``block_is_full``; a slip
there would make a fast backend skip keys the reference attends to. Checked
exhaustively on small position ranges, negative aligned positions included.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from bruteforce import key_allowed

from attnref.patterns import Pattern

PATTERNS: list[tuple[str, dict[str, Any], Pattern]] = [
    ("global_attention", {}, Pattern.full(False)),
    ("global_attention", {"causal": True}, Pattern.full(True)),
    *[
        ("local_attention", {"window": (left, right)}, Pattern.window(left, right))
        for left in (None, 0, 1, 3)
        for right in (None, 0, 2)
    ],
    *[
        ("chunked_attention", {"chunk_size": c, "causal": causal}, Pattern.chunk(c, causal))
        for c in (1, 2, 3, 5)
        for causal in (False, True)
    ],
]
IDS = [pattern.describe() for _, _, pattern in PATTERNS]
KV_LEN = 8
POSITIONS = range(-5, 11)


@pytest.mark.parametrize(("op", "options", "pattern"), PATTERNS, ids=IDS)
def test_allows_and_dense(op: str, options: dict[str, Any], pattern: Pattern) -> None:
    p = np.array(list(POSITIONS))[:, None]
    j = np.arange(KV_LEN)[None, :]
    expected = np.array([[key_allowed(op, options, int(pp), jj) for jj in range(KV_LEN)] for pp in POSITIONS])
    np.testing.assert_array_equal(np.broadcast_to(pattern.allows(p, j), expected.shape), expected)
    for Lq, align in [(3, "bottom_right"), (3, "top_left"), (11, "bottom_right"), (11, "top_left")]:
        offset = KV_LEN - Lq if align == "bottom_right" else 0
        dense = [[key_allowed(op, options, i + offset, jj) for jj in range(KV_LEN)] for i in range(Lq)]
        np.testing.assert_array_equal(pattern.dense(Lq, KV_LEN, align), dense)


@pytest.mark.parametrize(("op", "options", "pattern"), PATTERNS, ids=IDS)
def test_key_range_holds_every_allowed_key(op: str, options: dict[str, Any], pattern: Pattern) -> None:
    for first in POSITIONS:
        for last in range(first, first + 5):
            lo, hi = pattern.key_range(first, last, KV_LEN)
            assert 0 <= lo and hi <= KV_LEN
            allowed = [j for p in range(first, last + 1) for j in range(KV_LEN) if key_allowed(op, options, p, j)]
            assert all(lo <= j < hi for j in allowed), (first, last, lo, hi, allowed)


@pytest.mark.parametrize(("op", "options", "pattern"), PATTERNS, ids=IDS)
def test_block_is_full_exactly_when_every_pair_is_allowed(op: str, options: dict[str, Any], pattern: Pattern) -> None:
    for first in POSITIONS:
        for last in range(first, first + 4):
            for j_first in range(KV_LEN):
                for j_last in range(j_first, KV_LEN):
                    every = all(
                        key_allowed(op, options, p, j)
                        for p in range(first, last + 1)
                        for j in range(j_first, j_last + 1)
                    )
                    assert pattern.block_is_full(first, last, j_first, j_last) == every, (first, last, j_first, j_last)


@pytest.mark.parametrize(("op", "options", "pattern"), PATTERNS, ids=IDS)
def test_block_is_causal_exactly_when_the_block_is_its_lower_triangle(
    op: str, options: dict[str, Any], pattern: Pattern
) -> None:
    """A kernel's ``is_causal`` replaces the mask of such a block: one pair off would be a wrong answer."""
    for first in POSITIONS:
        for last in range(first, first + 5):
            for j_first in range(KV_LEN):
                for j_last in range(j_first, KV_LEN):
                    square = last - first == j_last - j_first
                    triangle = square and all(
                        key_allowed(op, options, first + t, j_first + u) == (u <= t)
                        for t in range(last - first + 1)
                        for u in range(j_last - j_first + 1)
                    )
                    got = pattern.block_is_causal(first, last, j_first, j_last)
                    assert got == triangle, (first, last, j_first, j_last)


@pytest.mark.parametrize(("op", "options", "pattern"), PATTERNS, ids=IDS)
def test_period_is_the_smallest_shift_that_keeps_every_pair(op: str, options: dict[str, Any], pattern: Pattern) -> None:
    """Blocked kernels reuse one block's mask for every block a period away: a period too short
    would give those blocks a wrong mask, one too long only costs reuse (so it must be the smallest)."""
    pairs = [(p, j) for p in POSITIONS for j in range(-5, 16)]

    def keeps(shift: int) -> bool:
        return all(key_allowed(op, options, p + shift, j + shift) == key_allowed(op, options, p, j) for p, j in pairs)

    assert keeps(pattern.period) and keeps(3 * pattern.period) and keeps(-2 * pattern.period)
    assert not any(keeps(shift) for shift in range(1, pattern.period))


@pytest.mark.parametrize(("op", "options", "pattern"), PATTERNS, ids=IDS)
@pytest.mark.parametrize(("q_len", "kv_len"), [(16, 16), (13, 16), (16, 13), (7, 16)])
@pytest.mark.parametrize("rows", [1, 2, 3])
def test_plans_cover_every_row_once_and_mark_causal_blocks(
    op: str, options: dict[str, Any], pattern: Pattern, q_len: int, kv_len: int, rows: int
) -> None:
    """Every plan (merged or not) covers the rows once, in order, with each block's exact key range;
    ``merge_causal`` merges only into causal blocks, and ``causal`` is what the rule says."""
    offset = kv_len - q_len
    plain = pattern.plan_blocks(q_len, kv_len, offset=offset, block_rows=rows)
    for merge_causal in (False, True):
        plan = pattern.plan_blocks(
            q_len, kv_len, offset=offset, block_rows=rows, key_tile=2, merge_rows=6, merge_causal=merge_causal
        )
        assert [b.start for b in plan] == [0, *[b.stop for b in plan[:-1]]] and plan[-1].stop == q_len
        for block in plan:
            allowed = [
                j for i in range(block.start, block.stop) for j in range(kv_len)
                if key_allowed(op, options, i + offset, j)
            ]  # fmt: skip
            lo, hi = (min(allowed), max(allowed) + 1) if allowed else (0, 0)
            assert (block.key_start, block.key_stop) == (lo, hi) or (block.empty and not allowed)
            expected = not block.empty and pattern.block_is_causal(
                block.start + offset, block.stop - 1 + offset, block.key_start, block.key_stop - 1
            )
            assert block.causal == expected
            merged = block.stop - block.start > rows
            if merged and not merge_causal:
                assert all(b.key_start == block.key_start for b in plain if block.start <= b.start < block.stop)
            if merged and merge_causal:
                assert block.causal or all(
                    (b.key_start, b.key_stop) == (block.key_start, block.key_stop)
                    for b in plain
                    if block.start <= b.start < block.stop
                )
    if pattern in (Pattern.chunk(3, True), Pattern.full(True)) and q_len == kv_len:
        merged = pattern.plan_blocks(q_len, kv_len, block_rows=1, merge_rows=q_len, merge_causal=True)
        assert merged[0].causal and merged[0].stop == (3 if pattern.kind == "chunk" else q_len)


# -- the constructor checks its own arguments --------------------------------
@pytest.mark.parametrize(
    ("build", "error", "argument"),
    [
        (lambda: Pattern.window(-5, None), ValueError, "left"),
        (lambda: Pattern.window(0, -1), ValueError, "right"),
        (lambda: Pattern.window(1.5, 0), TypeError, "left"),
        (lambda: Pattern.window(True, 0), TypeError, "left"),
        (lambda: Pattern("chunks", chunk_size=4), ValueError, "kind"),
        (lambda: Pattern("glob"), ValueError, "kind"),
        (lambda: Pattern.chunk(0), ValueError, "chunk_size"),
        (lambda: Pattern.chunk(2.0), TypeError, "chunk_size"),
        (lambda: Pattern("chunk"), TypeError, "chunk_size"),
        (lambda: Pattern.chunk(4, causal="yes"), TypeError, "causal"),
        (lambda: Pattern.full(causal=1), TypeError, "causal"),
        (lambda: Pattern("global", left=3), ValueError, "left"),
        (lambda: Pattern("window", chunk_size=3), ValueError, "chunk_size"),
        (lambda: Pattern("window", causal=True), ValueError, "causal"),
    ],
)
def test_constructor_rejects_nonsense(build: Any, error: type, argument: str) -> None:
    with pytest.raises(error, match=rf"^{argument}:"):
        build()


def test_numpy_integers_are_normalised() -> None:
    assert Pattern.window(np.int64(3), np.int32(0)) == Pattern.window(3, 0)
    assert type(Pattern.window(np.int64(3), None).left) is int
    assert Pattern.chunk(np.int64(4), np.bool_(True)) == Pattern.chunk(4, True)


# -- sides of any size (issue 10 item 8) ---------------------------------------
HUGE = [2**31 - 1, 2**31, 2**62, 2**63 - 1, 2**63, 10**30]


@pytest.mark.parametrize("huge", HUGE)
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
def test_huge_window_side_is_unbounded(huge: int, index_dtype: type) -> None:
    p = (np.arange(-4, 12, dtype=index_dtype) - 2)[:, None]
    j = np.arange(10, dtype=index_dtype)[None, :]
    for left, right, same in [
        (0, huge, Pattern.window(0, None)),
        (huge, 0, Pattern.window(None, 0)),
        (huge, huge, Pattern.window(None, None)),
        (3, huge, Pattern.window(3, None)),
    ]:
        np.testing.assert_array_equal(Pattern.window(left, right).allows(p, j), same.allows(p, j))
    for causal in (False, True):
        np.testing.assert_array_equal(
            Pattern.chunk(huge, causal).allows(p, j), Pattern.chunk(10**6, causal).allows(p, j), err_msg=str(huge)
        )


@pytest.mark.parametrize("huge", HUGE)
def test_huge_sides_in_python_ints_and_block_plans(huge: int) -> None:
    assert Pattern.window(0, huge).allows(5, 9) and not Pattern.window(0, huge).allows(5, 4)
    assert Pattern.window(0, huge).key_range(3, 6, 100) == (3, 100)
    assert Pattern.window(huge, 0).key_range(3, 6, 100) == (0, 7)
    assert Pattern.chunk(huge).key_range(3, 6, 100) == (0, 100)
    assert Pattern.chunk(huge, True).block_is_full(3, 6, 0, 3)
    assert Pattern.window(huge, huge).block_is_full(0, 99, 0, 99)


def test_huge_window_side_with_real_positions() -> None:
    """Luong's local-p centre is real (and may be NaN): a huge side is still unbounded."""
    for dtype in (np.float16, np.float32, np.float64):
        p = np.array([0.5, 3.25, np.nan], dtype=dtype)[:, None]
        got = Pattern.window(10**30, 10**30).allows(p, np.arange(6)[None, :])
        np.testing.assert_array_equal(got, [[True] * 6, [True] * 6, [False] * 6])


def test_huge_window_side_with_torch_indices() -> None:
    torch = pytest.importorskip("torch")
    for dtype in (torch.int32, torch.int64):
        p = torch.arange(-3, 9, dtype=dtype)[:, None]
        j = torch.arange(8, dtype=dtype)[None, :]
        for huge in (2**31, 2**63 - 1, 10**30):
            got = Pattern.window(1, huge).allows(p, j)
            assert torch.equal(got, Pattern.window(1, None).allows(p, j))
            assert torch.equal(Pattern.chunk(huge).allows(p, j), Pattern.chunk(10**6).allows(p, j))


# -- the block plan --------------------------------------------------------------
PLAN_SHAPES = [(1, 1, 0), (7, 9, 2), (9, 7, -2), (12, 12, 0), (5, 13, 8), (13, 5, 0), (6, 0, 0), (0, 6, 6)]


def _check_plan(op: str, options: dict[str, Any], blocks: Any, q_len: int, kv_len: int, offset: int) -> None:
    rows = [i for blk in blocks for i in range(blk.start, blk.stop)]
    assert rows == list(range(q_len)), "the blocks cover every row once, in order"
    for blk in blocks:
        positions = range(blk.start + offset, blk.stop + offset)
        allowed = {j for p in positions for j in range(kv_len) if key_allowed(op, options, p, j)}
        assert blk.empty == (not allowed)
        if blk.empty:
            assert blk.tiles == () and not blk.full and blk.masked_ranges() == ()
            continue
        assert all(blk.key_start <= j < blk.key_stop for j in allowed)
        for tile in blk.tiles:
            every = all(key_allowed(op, options, p, j) for p in positions for j in range(tile.start, tile.stop))
            assert tile.full == every, (blk, tile)
        masked = {j for start, stop in blk.masked_ranges() for j in range(start, stop)}
        cut = {j for tile in blk.tiles if not tile.full for j in range(tile.start, tile.stop)}
        assert masked == cut


@pytest.mark.parametrize(("op", "options", "pattern"), PATTERNS, ids=IDS)
@pytest.mark.parametrize("block_rows", [1, 3, 4])
@pytest.mark.parametrize("key_tile", [None, 1, 2, 5])
def test_plan_blocks_against_the_rules(
    op: str, options: dict[str, Any], pattern: Pattern, block_rows: int, key_tile: int | None
) -> None:
    for q_len, kv_len, offset in PLAN_SHAPES:
        blocks = pattern.plan_blocks(q_len, kv_len, offset=offset, block_rows=block_rows, key_tile=key_tile)
        _check_plan(op, options, blocks, q_len, kv_len, offset)
        assert all(blk.stop - blk.start <= block_rows for blk in blocks)
        for blk in blocks:  # tiles cut the range from its start, clipped to it
            if not blk.empty:
                assert blk.tiles[0].start == blk.key_start and blk.tiles[-1].stop == blk.key_stop
                assert all(a.stop == b.start for a, b in itertools.pairwise(blk.tiles))
                if key_tile is not None:
                    assert all(t.start - blk.key_start == n * key_tile for n, t in enumerate(blk.tiles))


@pytest.mark.parametrize(("op", "options", "pattern"), PATTERNS, ids=IDS)
@pytest.mark.parametrize("key_tile", [1, 2, 3])
def test_plan_blocks_on_a_grid(op: str, options: dict[str, Any], pattern: Pattern, key_tile: int) -> None:
    for q_len, kv_len, offset in PLAN_SHAPES:
        blocks = pattern.plan_blocks(q_len, kv_len, offset=offset, block_rows=2, key_tile=key_tile, grid=True)
        _check_plan(op, options, blocks, q_len, kv_len, offset)
        for blk in blocks:
            for tile in blk.tiles:  # whole grid cells (clipped only to kv_len) that meet the key range
                assert tile.start % key_tile == 0 and tile.stop == min(tile.start + key_tile, kv_len)
                assert tile.start < blk.key_stop and tile.stop > blk.key_start


@pytest.mark.parametrize(("op", "options", "pattern"), PATTERNS, ids=IDS)
def test_plan_blocks_merges_blocks_that_share_a_band(op: str, options: dict[str, Any], pattern: Pattern) -> None:
    for q_len, kv_len, offset in PLAN_SHAPES:
        plain = pattern.plan_blocks(q_len, kv_len, offset=offset, block_rows=2)
        merged = pattern.plan_blocks(q_len, kv_len, offset=offset, block_rows=2, merge_rows=6, key_tile=2)
        _check_plan(op, options, merged, q_len, kv_len, offset)
        assert all(blk.stop - blk.start <= 6 for blk in merged)
        for blk in merged:  # a merged block is a run of plain blocks with one key range
            parts = [b for b in plain if blk.start <= b.start < blk.stop]
            assert {(b.key_start, b.key_stop) for b in parts} == {(blk.key_start, blk.key_stop)}
        for a, b in itertools.pairwise(merged):  # and a run is only cut at the row limit
            if (a.key_start, a.key_stop) == (b.key_start, b.key_stop):
                assert b.stop - a.start > 6


def test_plan_blocks_is_linear_in_the_band() -> None:
    """The planner itself only touches the band: 2^18 rows of a narrow window plan quickly and small."""
    blocks = Pattern.window(63, 0).plan_blocks(2**18, 2**18, block_rows=256, key_tile=64)
    assert len(blocks) == 2**10
    assert max(blk.key_stop - blk.key_start for blk in blocks) == 256 + 63
    assert Pattern.window(0, 2**63 - 1).plan_blocks(4, 10)[0].key_stop == 10


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"block_rows": 0}, ValueError, "block_rows"),
        ({"block_rows": 2.0}, TypeError, "block_rows"),
        ({"key_tile": 0}, ValueError, "key_tile"),
        ({"grid": True}, ValueError, "key_tile"),
        ({"merge_rows": 0}, ValueError, "merge_rows"),
    ],
)
def test_plan_blocks_rejects_bad_arguments(kwargs: dict[str, Any], error: type, argument: str) -> None:
    with pytest.raises(error, match=rf"^{argument}:"):
        Pattern.full().plan_blocks(4, 4, **kwargs)
    with pytest.raises(ValueError, match=r"^q_len:"):
        Pattern.full().plan_blocks(-1, 4)


@pytest.mark.parametrize(("op", "options", "pattern"), PATTERNS, ids=IDS)
def test_query_range_holds_every_row_that_sees_the_keys(op: str, options: dict[str, Any], pattern: Pattern) -> None:
    Q_LEN = 9
    for offset in (-4, 0, 3):
        for j_first in range(KV_LEN):
            for j_last in range(j_first, KV_LEN):
                a, b = pattern.query_range(j_first, j_last, Q_LEN, offset)
                assert 0 <= a and b <= Q_LEN
                keys = range(j_first, j_last + 1)
                rows = [i for i in range(Q_LEN) if any(key_allowed(op, options, i + offset, j) for j in keys)]
                assert all(a <= i < b for i in rows), (offset, j_first, j_last, a, b, rows)
                if j_first == j_last and rows:  # for one key the range is exact: those rows are consecutive
                    assert (a, b) == (min(rows), max(rows) + 1)


@pytest.mark.parametrize("huge", HUGE)
def test_query_range_with_huge_sides(huge: int) -> None:
    assert Pattern.window(huge, 0).query_range(3, 3, 10) == (3, 10)
    assert Pattern.window(0, huge).query_range(3, 5, 10) == (0, 6)
    assert Pattern.chunk(huge).query_range(3, 5, 10, offset=-2) == (2, 10)
