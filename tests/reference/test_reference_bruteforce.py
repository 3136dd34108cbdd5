"""The vectorised reference against the brute-force loops of ``bruteforce.py``.

Many random small shapes, every op and every option (dtypes, GQA, scale,
softcap, bias with ``-inf`` entries, masks, both length kinds, both alignments,
every window spelling, chunk sizes, causal, pooling windows and centres, every
Luong score and mode).
"""

from __future__ import annotations

import numpy as np
import pytest
from bruteforce import (
    MULTIHEAD_OPS,
    additive_bruteforce,
    attention_bruteforce,
    luong_bruteforce,
    random_additive_case,
    random_attention_case,
    random_luong_case,
)

from attnref import reference
from attnref.reference import multihead as _multihead

CASES = 60


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == np.float64
    assert actual.shape == expected.shape
    # Both sides compute in float64; they differ only in summation order.
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(CASES))
@pytest.mark.parametrize("op", MULTIHEAD_OPS)
def test_multihead_matches_bruteforce(op: str, seed: int) -> None:
    rng = np.random.default_rng([MULTIHEAD_OPS.index(op), seed])
    (q, k, v), kwargs = random_attention_case(rng, op)
    out, lse, weights = getattr(reference, op)(q, k, v, return_lse=True, return_weights=True, **kwargs)
    bf_out, bf_lse, bf_weights = attention_bruteforce(op, q, k, v, **kwargs)
    assert_same(out, bf_out)
    assert_same(lse, bf_lse)
    assert_same(weights, bf_weights)


@pytest.mark.parametrize("block_elements", [1, 40, 150])
@pytest.mark.parametrize("seed", range(CASES // 3))
@pytest.mark.parametrize("op", MULTIHEAD_OPS)
def test_query_blocks_match_bruteforce(
    op: str, seed: int, block_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference works through queries in blocks; small blocks split these shapes into many.

    The block size is private, so it is patched: at the default size every shape
    above fits in one block and a row-offset slip between blocks would go unseen.
    """
    monkeypatch.setattr(_multihead, "SCORE_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng([20 + MULTIHEAD_OPS.index(op), seed])
    (q, k, v), kwargs = random_attention_case(rng, op)
    out, lse, weights = getattr(reference, op)(q, k, v, return_lse=True, return_weights=True, **kwargs)
    bf_out, bf_lse, bf_weights = attention_bruteforce(op, q, k, v, **kwargs)
    assert_same(out, bf_out)
    assert_same(lse, bf_lse)
    assert_same(weights, bf_weights)


@pytest.mark.parametrize("seed", range(CASES))
def test_additive_matches_bruteforce(seed: int) -> None:
    rng = np.random.default_rng([10, seed])
    args, kwargs = random_additive_case(rng)
    context, weights = reference.additive_attention(*args, **kwargs)
    bf_context, bf_weights = additive_bruteforce(*args, **kwargs)
    assert_same(context, bf_context)
    assert_same(weights, bf_weights)


@pytest.mark.parametrize("seed", range(2 * CASES))
def test_luong_matches_bruteforce(seed: int) -> None:
    rng = np.random.default_rng([11, seed])
    args, kwargs = random_luong_case(rng)
    context, weights = reference.luong_attention(*args, **kwargs)
    bf_context, bf_weights = luong_bruteforce(*args, **kwargs)
    assert_same(context, bf_context)
    assert_same(weights, bf_weights)


def test_random_cases_cover_every_option() -> None:
    """The generators really exercise the options (a guard against a silent narrowing)."""
    seen: set[str] = set()
    for seed in range(CASES):
        for op in MULTIHEAD_OPS:
            (q, k, _), kwargs = random_attention_case(np.random.default_rng([MULTIHEAD_OPS.index(op), seed]), op)
            seen.update(kwargs)
            seen.add(f"dtype={q.dtype}")
            seen.add("gqa" if q.shape[1] != k.shape[1] else "mha")
            seen.add("lq<lk" if q.shape[2] < k.shape[2] else "lq>lk" if q.shape[2] > k.shape[2] else "lq=lk")
            seen.add(f"align={kwargs['align']}")
            if "bias" in kwargs and np.isneginf(kwargs["bias"]).any():
                seen.add("bias=-inf")
        _, kwargs = random_luong_case(np.random.default_rng([11, seed]))
        seen.add(f"{kwargs['score']}/{kwargs['mode']}")
        _, kwargs = random_additive_case(np.random.default_rng([10, seed]))
        seen.update(f"additive:{key}" for key in kwargs)
    expected = {
        "scale", "softcap", "bias", "mask", "kv_lengths", "q_lengths", "window", "chunk_size", "causal",
        "dtype=float64", "dtype=float32", "dtype=float16", "dtype=bfloat16", "gqa", "mha",
        "lq<lk", "lq>lk", "lq=lk", "align=top_left", "align=bottom_right", "bias=-inf",
        "additive:mask", "additive:window", "additive:center",
    }  # fmt: skip
    expected |= {f"{s}/{m}" for s in ("dot", "general", "concat") for m in ("global", "local-m", "local-p")}
    assert expected <= seen, expected - seen
