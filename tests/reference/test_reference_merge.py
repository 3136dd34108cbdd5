"""Merging partial attention states (contract section 10).

``lse = log sum_n exp(lses[n])``, ``out = sum_n exp(lses[n] - lse) outs[n]``;
attention over a union of disjoint key sets is the merge of the parts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from bruteforce import merge_bruteforce

from attnref import InvalidArgumentError, InvalidTypeError
from attnref.reference import global_attention, local_attention, merge_attention_states

NEG_INF = -math.inf


def test_by_hand() -> None:
    # Parts with lse log 1 and log 3 (weights 1/4, 3/4) and outputs 1 and 5: out = 4, lse = log 4.
    out, lse = merge_attention_states(np.array([[[1.0]], [[5.0]]]), np.array([[0.0], [math.log(3)]]))
    np.testing.assert_allclose(out, [[4.0]], rtol=1e-15)
    np.testing.assert_allclose(lse, [math.log(4)], rtol=1e-15)


@pytest.mark.parametrize("seed", range(30))
def test_merge_matches_bruteforce(seed: int) -> None:
    rng = np.random.default_rng([80, seed])
    N = int(rng.integers(1, 5))
    shape = tuple(int(n) for n in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    outs = rng.standard_normal((N, *shape, 3)).astype(rng.choice([np.float64, np.float32, np.float16]))
    lses = (rng.standard_normal((N, *shape)) * 30).astype(rng.choice([np.float64, np.float32]))
    lses[rng.random(lses.shape) < 0.3] = NEG_INF
    out, lse = merge_attention_states(outs, lses)
    bf_out, bf_lse = merge_bruteforce(outs, lses)
    assert out.dtype == lse.dtype == np.float64
    np.testing.assert_allclose(out, bf_out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lse, bf_lse, rtol=1e-12)


@pytest.mark.parametrize("seed", range(15))
def test_merge_of_a_random_disjoint_key_split_is_the_whole(seed: int) -> None:
    rng = np.random.default_rng([81, seed])
    B, Hkv, g, Lq, Lk, D = 2, 2, 2, 5, 9, 3
    q, k, v = (
        rng.standard_normal((B, Hkv * g, Lq, D)),
        rng.standard_normal((B, Hkv, Lk, D)),
        rng.standard_normal((B, Hkv, Lk, 2)),
    )
    sinks = rng.standard_normal(Hkv * g)
    options = {"window": (3, 1), "kv_lengths": [9, 6], "softcap": 2.0}
    whole = local_attention(q, k, v, sinks=sinks, return_lse=True, **options)
    N = int(rng.integers(1, 5))
    part_of_key = rng.integers(0, N, size=Lk)  # each key in exactly one part (some parts may be empty)
    masks = [(part_of_key == n)[None, None, None, :] for n in range(N)]
    sinks_of = [sinks] + [None] * (N - 1)  # the sinks count in exactly one part
    parts = [
        local_attention(q, k, v, mask=m, sinks=s, return_lse=True, **options)
        for m, s in zip(masks, sinks_of, strict=True)
    ]
    out, lse = merge_attention_states(np.stack([o for o, _ in parts]), np.stack([part for _, part in parts]))
    np.testing.assert_allclose(out, whole[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lse, whole[1], rtol=1e-12)


def test_a_part_that_saw_no_key_is_selected_away() -> None:
    outs = np.array([[[np.nan, np.inf]], [[2.0, 3.0]]])
    out, lse = merge_attention_states(outs, np.array([[NEG_INF], [0.5]]))
    np.testing.assert_array_equal(out, [[2.0, 3.0]])
    np.testing.assert_array_equal(lse, [0.5])
    out, lse = merge_attention_states(outs, np.array([[NEG_INF], [NEG_INF]]))
    np.testing.assert_array_equal(out, [[0.0, 0.0]])
    np.testing.assert_array_equal(lse, [NEG_INF])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_plus_inf_lse_makes_its_position_nan(bad: float) -> None:
    outs = np.ones((2, 3, 2))
    lses = np.zeros((2, 3))
    lses[1, 1] = bad
    out, lse = merge_attention_states(outs, lses)
    assert np.isnan(out[1]).all() and np.isnan(lse[1])
    np.testing.assert_array_equal(out[[0, 2]], 1.0)
    np.testing.assert_allclose(lse[[0, 2]], math.log(2))


def test_one_part_and_precision() -> None:
    rng = np.random.default_rng(2)
    outs, lses = rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 4)) * 50
    out, lse = merge_attention_states(outs, lses)
    np.testing.assert_allclose(out, outs[0], rtol=1e-15)
    np.testing.assert_allclose(lse, lses[0], rtol=1e-15)
    out16, lse16 = merge_attention_states(
        np.concatenate([outs, outs]), np.concatenate([lses, lses]), precision="float16"
    )
    assert out16.dtype == lse16.dtype == np.float16
    np.testing.assert_allclose(out16, outs[0], rtol=2e-3, atol=2e-3)
    # Large lses: the max shift keeps exp from overflowing, even in float16.
    big, _ = merge_attention_states(
        np.ones((2, 1, 1)), np.array([[1e4], [1e4 - 1]], dtype=np.float32), precision="float16"
    )
    assert np.isfinite(big).all()


def test_merge_of_global_decode_split_in_key_halves() -> None:
    """Split-KV decoding: each half of the keys attended separately, then merged."""
    rng = np.random.default_rng(6)
    q, k, v = rng.standard_normal((1, 2, 1, 4)), rng.standard_normal((1, 2, 64, 4)), rng.standard_normal((1, 2, 64, 4))
    whole = global_attention(q, k, v, return_lse=True)
    halves = [global_attention(q, k[:, :, s], v[:, :, s], return_lse=True) for s in (slice(0, 32), slice(32, 64))]
    out, lse = merge_attention_states(np.stack([h[0] for h in halves]), np.stack([h[1] for h in halves]))
    np.testing.assert_allclose(out, whole[0], rtol=1e-13)
    np.testing.assert_allclose(lse, whole[1], rtol=1e-14)


@pytest.mark.parametrize(
    ("outs", "lses", "error", "argument"),
    [
        (np.zeros((0, 2, 3)), np.zeros((0, 2)), InvalidArgumentError, "outs"),
        (np.zeros((2, 2, 3)), np.zeros((2, 3)), InvalidArgumentError, "lses"),
        (np.zeros((2, 2, 3), int), np.zeros((2, 2)), InvalidTypeError, "outs"),
        (np.zeros((2, 2, 3)), np.zeros((2, 2), bool), InvalidTypeError, "lses"),
    ],
)
def test_invalid_merge_input_names_the_argument(outs, lses, error, argument) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=rf"^{argument}:"):
        merge_attention_states(outs, lses)
