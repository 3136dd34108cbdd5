"""Long sequences: the reference scores only the keys a pattern allows, and sides of any size work.

The reference restricts each query block to its pattern's key range, so a
window or a chunk costs ``O(L x window)`` while staying the float64
definition. These tests count the scored elements (a slip back to ``O(L^2)``
fails them whatever the machine's speed), check far-away rows of sequences
with ``Lq * Lk >= 2^31`` against a direct computation of those rows, and run
sides and chunk sizes beyond any sequence (issue 10 item 8).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from attnref.patterns import Pattern
from attnref.reference import (
    chunked_attention,
    global_attention,
    local_attention,
    luong_attention,
    multihead,
    paged_attention,
)


def scored_elements(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch the reference's step 1 to count the score elements of every block."""
    counts: list[int] = []
    original = multihead.block_scores

    def counting(*args: Any, **kwargs: Any) -> Any:
        s0, s = original(*args, **kwargs)
        counts.append(s.size)
        return s0, s

    monkeypatch.setattr(multihead, "block_scores", counting)
    return counts


def direct_rows(q: np.ndarray, k: np.ndarray, v: np.ndarray, rows: list[int], allowed: Any) -> np.ndarray:
    """``out`` of the given rows (one head), straight from the formula over their allowed keys."""
    out = []
    for i in rows:
        keys = np.flatnonzero(allowed(i))
        s = (k[keys] @ q[i]) / math.sqrt(q.shape[-1])
        w = np.exp(s - s.max())
        out.append((w / w.sum()) @ v[keys])
    return np.array(out)


def test_local_attention_is_linear_in_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    L, window = 1 << 16, (63, 0)  # Lq * Lk = 2^32
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, L, 4)) for _ in range(3))
    counts = scored_elements(monkeypatch)
    out = local_attention(q, k, v, window=window)
    # Within a small factor of L x window (a block of r rows scores r + 63 keys), never L^2 = 2^32.
    assert sum(counts) <= 8 * L * 64, sum(counts) / (L * 64)
    rows = [0, 1, 63, 64, 40000, L - 1]
    expected = direct_rows(q[0, 0], k[0, 0], v[0, 0], rows, lambda i: (np.arange(L) >= i - 63) & (np.arange(L) <= i))
    np.testing.assert_allclose(out[0, 0, rows], expected, rtol=1e-12)


def test_chunked_attention_with_fewer_queries_is_linear_in_the_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    Lq, Lk, c = 1 << 12, 1 << 19, 256  # bottom-right: the queries sit on the last 4096 keys
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((1, 1, Lq, 2)), rng.standard_normal((1, 1, Lk, 2)), rng.standard_normal((1, 1, Lk, 2))
    counts = scored_elements(monkeypatch)
    out = chunked_attention(q, k, v, chunk_size=c, causal=True)
    assert sum(counts) <= 8 * Lq * c
    rows = [0, 255, 256, Lq - 1]
    j = np.arange(Lk)
    p = lambda i: i + Lk - Lq  # noqa: E731
    expected = direct_rows(q[0, 0], k[0, 0], v[0, 0], rows, lambda i: (j // c == p(i) // c) & (j <= p(i)))
    np.testing.assert_allclose(out[0, 0, rows], expected, rtol=1e-12)


def test_global_decode_against_a_million_keys() -> None:
    Lq, Lk = 4, 1 << 20
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((1, 1, Lq, 2)), rng.standard_normal((1, 1, Lk, 2)), rng.standard_normal((1, 1, Lk, 2))
    out, lse = global_attention(q, k, v, causal=True, return_lse=True)
    j = np.arange(Lk)
    expected = direct_rows(q[0, 0], k[0, 0], v[0, 0], [0, 3], lambda i: j <= i + Lk - Lq)
    np.testing.assert_allclose(out[0, 0, [0, 3]], expected, rtol=1e-12)
    assert np.isfinite(lse).all()


HUGE = [2**31, 2**63 - 1, 2**63, 10**30]


@pytest.mark.parametrize("huge", HUGE)
def test_window_sides_and_chunks_of_any_size(huge: int) -> None:
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((2, 2, 5, 3)), rng.standard_normal((2, 1, 7, 3)), rng.standard_normal((2, 1, 7, 2))
    options = {"kv_lengths": [7, 5], "return_lse": True}  # every aligned position >= 0: one chunk is global
    cases = [
        (local_attention(q, k, v, window=(0, huge), **options), local_attention(q, k, v, window=(0, None), **options)),
        (local_attention(q, k, v, window=huge, **options), global_attention(q, k, v, **options)),
        (local_attention(q, k, v, window=(huge, 0), **options), global_attention(q, k, v, causal=True, **options)),
        (chunked_attention(q, k, v, chunk_size=huge, **options), global_attention(q, k, v, **options)),
    ]
    for got, expected in cases:
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)
    table, seqlens = np.array([[0, 1]]), [7]
    cache = rng.standard_normal((2, 4, 1, 3))
    paged = paged_attention(q[:1], cache, cache, block_table=table, cache_seqlens=seqlens, window=(huge, huge))
    unbounded = paged_attention(q[:1], cache, cache, block_table=table, cache_seqlens=seqlens)
    np.testing.assert_array_equal(paged, unbounded)


@pytest.mark.parametrize("huge", HUGE)
@pytest.mark.parametrize("precision", [None, "float32", "float16"])
def test_luong_half_width_of_any_size(huge: int, precision: str | None) -> None:
    rng = np.random.default_rng(4)
    h_t, h_s = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 6, 4))
    local_m = luong_attention(h_t, h_s, mode="local-m", half_width=huge, precision=precision)
    whole = luong_attention(h_t, h_s, mode="local-m", half_width=6, precision=precision)
    for a, b in zip(local_m, whole, strict=True):
        np.testing.assert_array_equal(a, b)  # a half width beyond the source is all of it
    w_p, v_p = rng.standard_normal((4, 3)), rng.standard_normal(3)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # and no overflow warning on the way
        context, weights = luong_attention(
            h_t, h_s, mode="local-p", half_width=huge, w_p=w_p, v_p=v_p, precision=precision
        )
    assert np.isfinite(context).all() and np.isfinite(weights).all()


def test_plan_of_a_long_band_is_small() -> None:
    blocks = Pattern.window(63, 0).plan_blocks(200_000, 200_000, block_rows=128)
    assert sum((b.stop - b.start) * (b.key_stop - b.key_start) for b in blocks) < 200_000 * 200
