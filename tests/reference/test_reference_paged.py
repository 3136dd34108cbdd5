"""Paged KV cache (contract section 9): keys looked up through a block table.

Key ``t`` of sequence ``b`` is ``k_cache[block_table[b, t // n], t % n]``;
the result is local (or global) attention on those keys with
``kv_lengths = cache_seqlens``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from bruteforce import paged_bruteforce

from attnref import InvalidArgumentError
from attnref.reference import global_attention, local_attention, paged_attention

NEG_INF = -math.inf


def random_paged_case(rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """Random caches and tables: shared blocks, unused entries of -1 or garbage, empty sequences."""
    B, Hkv, g, Lq, D, Dv = (int(n) for n in rng.integers(1, [4, 3, 3, 5, 4, 4]))
    n, max_blocks = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    num_blocks = int(rng.integers(1, 7))
    seqlens = rng.integers(0, max_blocks * n + 1, size=B)
    table = rng.integers(0, num_blocks, size=(B, max_blocks))  # blocks may repeat: shared prefixes
    used = np.arange(max_blocks)[None, :] < -(-seqlens // n)[:, None]
    table = np.where(used, table, rng.choice([-1, num_blocks, 10**6]))  # never read
    dtype = rng.choice([np.float64, np.float32, np.float16])
    q = rng.standard_normal((B, Hkv * g, Lq, D)).astype(dtype)
    k_cache = rng.standard_normal((num_blocks, n, Hkv, D)).astype(dtype)
    v_cache = rng.standard_normal((num_blocks, n, Hkv, Dv)).astype(dtype)
    kwargs: dict[str, Any] = {"block_table": table, "cache_seqlens": seqlens, "causal": bool(rng.random() < 0.5)}
    if rng.random() < 0.6:
        kwargs["window"] = (int(rng.integers(0, 4)), int(rng.integers(0, 3)) if rng.random() < 0.7 else None)
    if rng.random() < 0.3:
        kwargs["softcap"] = float(rng.uniform(0.5, 3))
    if rng.random() < 0.4:
        kwargs["sinks"] = rng.standard_normal(Hkv * g)
    kwargs["align"] = "bottom_right" if rng.random() < 0.7 else "top_left"
    return (q, k_cache, v_cache), kwargs


@pytest.mark.parametrize("seed", range(40))
def test_paged_matches_bruteforce(seed: int) -> None:
    rng = np.random.default_rng([70, seed])
    args, kwargs = random_paged_case(rng)
    out, lse = paged_attention(*args, return_lse=True, **kwargs)
    bf_out, bf_lse = paged_bruteforce(*args, **kwargs)
    np.testing.assert_allclose(out, bf_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lse, bf_lse, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(15))
def test_paged_equals_the_dense_op_on_the_gathered_keys(seed: int) -> None:
    rng = np.random.default_rng([71, seed])
    (q, k_cache, v_cache), kwargs = random_paged_case(rng)
    table, seqlens = kwargs.pop("block_table"), kwargs.pop("cache_seqlens")
    causal, window = kwargs.pop("causal"), kwargs.pop("window", None)
    n = k_cache.shape[1]
    Lk = table.shape[1] * n
    positions = np.arange(Lk)
    blocks = np.where(
        positions[None, :] < seqlens[:, None], table[:, np.minimum(positions // n, table.shape[1] - 1)], 0
    )
    k = np.moveaxis(k_cache[blocks, positions % n], 2, 1)  # (B, Hkv, Lk, D); slots past the length are masked
    v = np.moveaxis(v_cache[blocks, positions % n], 2, 1)
    precision = "float32" if seed % 3 == 0 else None
    out, lse = paged_attention(
        q, k_cache, v_cache, block_table=table, cache_seqlens=seqlens, causal=causal, window=window,
        return_lse=True, precision=precision, **kwargs,
    )  # fmt: skip
    if window is None:
        dense = global_attention(
            q, k, v, causal=causal, kv_lengths=seqlens, return_lse=True, precision=precision, **kwargs
        )
    else:
        narrowed = (window[0], 0 if causal else window[1])
        dense = local_attention(
            q, k, v, window=narrowed, kv_lengths=seqlens, return_lse=True, precision=precision, **kwargs
        )
    np.testing.assert_array_equal(out, dense[0])
    np.testing.assert_array_equal(lse, dense[1])


def test_by_hand_with_a_shared_block() -> None:
    # Blocks of 2 slots; values 10 * block + slot; q = k = 0: uniform over the allowed keys.
    k_cache = np.zeros((3, 2, 1, 1))
    v_cache = (10.0 * np.arange(3)[:, None] + np.arange(2)[None, :]).reshape(3, 2, 1, 1)
    table = np.array([[2, 0], [2, -1]])  # both sequences start with block 2 (a shared prefix)
    out, lse = paged_attention(
        np.zeros((2, 1, 1, 1)), k_cache, v_cache, block_table=table, cache_seqlens=[3, 1], return_lse=True
    )
    np.testing.assert_allclose(out[:, 0, 0, 0], [(20 + 21 + 0) / 3, 20.0])
    np.testing.assert_allclose(lse[:, 0, 0], [math.log(3), 0.0])
    # causal narrows a window's right side to 0: the last query (p = 2) with window (1, 5) sees keys 1, 2.
    two = paged_attention(
        np.zeros((1, 1, 1, 1)), k_cache, v_cache, block_table=table[:1], cache_seqlens=[3], window=(1, 5), causal=True
    )
    np.testing.assert_allclose(two[0, 0, 0, 0], (21 + 0) / 2)


def test_what_is_never_read_cannot_leak() -> None:
    """Unused table entries hold anything; NaN in unused blocks or in slots past the length stays out."""
    rng = np.random.default_rng(9)
    k_cache, v_cache = rng.standard_normal((4, 3, 1, 2)), rng.standard_normal((4, 3, 1, 2))
    k_cache[3], v_cache[3] = np.nan, np.inf  # block 3 belongs to no sequence
    k_cache[1, 2], v_cache[1, 2] = np.nan, np.nan  # slot 2 of block 1: past sequence 0's 5 keys
    table = np.array([[0, 1, -5, 99], [2, 2, 2, 2]])
    out, lse = paged_attention(
        rng.standard_normal((2, 2, 2, 2)), k_cache, v_cache, block_table=table, cache_seqlens=[5, 0], return_lse=True
    )
    assert np.isfinite(out).all() and np.isfinite(lse[0]).all()
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(lse[1], NEG_INF)  # an empty cache: no key


def test_nan_in_a_read_slot_reaches_its_rows() -> None:
    k_cache, v_cache = np.zeros((2, 2, 1, 1)), np.ones((2, 2, 1, 1))
    v_cache[1, 0] = np.nan
    out = paged_attention(
        np.zeros((1, 1, 3, 1)), k_cache, v_cache, block_table=[[0, 1]], cache_seqlens=[3], causal=True, align="top_left"
    )
    np.testing.assert_array_equal(out[0, 0, :2, 0], [1.0, 1.0])  # rows 0, 1 see keys 0..1 only
    assert np.isnan(out[0, 0, 2, 0])  # row 2 sees key 2 = block 1, slot 0


@pytest.mark.parametrize(
    ("changes", "argument"),
    [
        ({"block_table": [[0, 2]]}, "block_table"),
        ({"block_table": [[-1, 0]]}, "block_table"),
        ({"cache_seqlens": [5]}, "cache_seqlens"),
        ({"cache_seqlens": [1, 1]}, "cache_seqlens"),
        ({"window": (1, -3)}, "window[1]"),
        ({"sinks": np.zeros(2)}, "sinks"),
    ],
)
def test_invalid_paged_input_names_the_argument(changes: dict[str, Any], argument: str) -> None:
    kwargs = {"block_table": [[0, 1]], "cache_seqlens": [3], **changes}
    with pytest.raises(InvalidArgumentError) as info:
        paged_attention(np.zeros((1, 1, 1, 1)), np.zeros((2, 2, 1, 1)), np.zeros((2, 2, 1, 1)), **kwargs)
    assert str(info.value).startswith(f"{argument}:"), str(info.value)
