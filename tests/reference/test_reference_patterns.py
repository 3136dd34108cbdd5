"""``attnref.patterns.Pattern`` against the rules restated in ``bruteforce.key_allowed``.

The backends plan their blocks with ``key_range`` and ``block_is_full``; a slip
there would make a fast backend skip keys the reference attends to. Checked
exhaustively on small position ranges, negative aligned positions included.
"""

from __future__ import annotations

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
