"""Attention sinks (contract section 7) in the three multi-head ops.

The sink is a virtual key with no value: ``lse_i = log(exp(sinks_h) + sum exp(s_ij))``,
``P_ij = exp(s_ij - lse_i)``. Checked by hand, against the brute-force loops,
against an explicit extra key, and at every edge the contract decides.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from bruteforce import MULTIHEAD_OPS, attention_bruteforce, random_attention_case

from attnref import InvalidArgumentError, InvalidTypeError, reference
from attnref.reference import chunked_attention, global_attention, local_attention

NEG_INF = -math.inf


def uniform(Lq: int, Lk: int, H: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``q = k = 0`` (every score 0), ``v_j = j``; ``D = Dv = 1``."""
    v = np.broadcast_to(np.arange(Lk, dtype=np.float64)[:, None], (1, H, Lk, 1)).copy()
    return np.zeros((1, H, Lq, 1)), np.zeros((1, H, Lk, 1)), v


def random_sinks(rng: np.random.Generator, heads: int) -> np.ndarray:
    sinks = rng.standard_normal(heads) * 2
    sinks[rng.random(heads) < 0.2] = NEG_INF
    return sinks.astype(rng.choice([np.float64, np.float32, np.float16]))


# -- by hand -----------------------------------------------------------------------
def test_sink_takes_its_share_by_hand() -> None:
    # Two allowed keys with score 0 and a sink of log 2: Z = 2 + 1 + 1 = 4.
    q, k, v = uniform(1, 2)
    out, lse, weights = global_attention(q, k, v, sinks=np.array([math.log(2)]), return_lse=True, return_weights=True)
    np.testing.assert_allclose(lse[0, 0], [math.log(4)], rtol=1e-15)
    np.testing.assert_allclose(weights[0, 0], [[0.25, 0.25]], rtol=1e-15)
    np.testing.assert_allclose(out[0, 0, :, 0], [0.25], rtol=1e-15)  # (0 + 1) / 4: the sink has no value
    assert weights.sum() == pytest.approx(1 - math.exp(math.log(2) - math.log(4)))


def test_sink_is_neither_scaled_softcapped_biased_nor_windowed() -> None:
    q, k, v = uniform(3, 3)
    sink = np.array([1.5])
    out, lse = local_attention(
        q, k, v, window=(0, 0), scale=7.0, softcap=0.5, bias=np.full((1, 1, 3, 3), 2.0), sinks=sink, return_lse=True
    )
    # One key per row (the window), score 0 * 7 -> softcap 0 -> + 2; the sink stays 1.5.
    np.testing.assert_allclose(lse[0, 0], np.full(3, math.log(math.exp(2.0) + math.exp(1.5))), rtol=1e-14)
    w = math.exp(2.0) / (math.exp(2.0) + math.exp(1.5))
    np.testing.assert_allclose(out[0, 0, :, 0], [0 * w, 1 * w, 2 * w], rtol=1e-14)


def test_row_with_no_allowed_key_has_the_sink_as_lse_and_padding_rows_stay_outside() -> None:
    q, k, v = uniform(3, 4)
    out, lse = global_attention(
        q, k, v, sinks=np.array([0.75]), kv_lengths=[0], q_lengths=[2], return_lse=True, align="top_left"
    )
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(lse[0, 0], [0.75, 0.75, NEG_INF])  # row 2 is padding: -inf, sink or not


def test_minus_inf_sink_is_no_sink_exactly() -> None:
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((2, 4, 5, 3)), rng.standard_normal((2, 2, 6, 3)), rng.standard_normal((2, 2, 6, 2))
    for op, options in [(global_attention, {"causal": True}), (chunked_attention, {"chunk_size": 2})]:
        with_sinks = op(q, k, v, sinks=np.full(4, NEG_INF), kv_lengths=[6, 0], return_lse=True, **options)
        without = op(q, k, v, kv_lengths=[6, 0], return_lse=True, **options)
        for a, b in zip(with_sinks, without, strict=True):
            np.testing.assert_array_equal(a, b)


def test_nan_sink_poisons_its_head_only() -> None:
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((1, 3, 4, 2)), rng.standard_normal((1, 3, 4, 2)), rng.standard_normal((1, 3, 4, 2))
    sinks = np.array([0.0, np.nan, 1.0])
    out, lse = local_attention(
        q, k, v, window=(0, 0), sinks=sinks, kv_lengths=[2], q_lengths=[3], align="top_left", return_lse=True
    )
    # Head 1: NaN lse on every row of the sequence; NaN output where a key is allowed (rows 0, 1);
    # row 2 sees no key (kv_lengths), its output is the empty sum 0; row 3 is padding.
    assert np.isnan(lse[0, 1, :3]).all() and lse[0, 1, 3] == NEG_INF
    assert np.isnan(out[0, 1, :2]).all()
    np.testing.assert_array_equal(out[0, 1, 2:], 0.0)
    assert np.isfinite(out[0, [0, 2]]).all() and np.isfinite(lse[0, [0, 2], :3]).all()


def test_sinks_dtype_is_independent_and_rounded_like_the_scores() -> None:
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for _ in range(3))
    sinks = np.array([0.1, -0.3])
    for dtype in (np.float16, ml_dtypes.bfloat16, np.float64):
        np.testing.assert_array_equal(
            global_attention(q, k, v, sinks=sinks.astype(dtype)),
            global_attention(q, k, v, sinks=sinks.astype(dtype).astype(np.float64)),
        )
    for precision in ("float16", "bfloat16", "float32"):
        rounded = sinks.astype(np.dtype(ml_dtypes.bfloat16) if precision == "bfloat16" else precision)
        a = global_attention(q, k, v, sinks=sinks, precision=precision, return_lse=True)
        b = global_attention(q, k, v, sinks=rounded, precision=precision, return_lse=True)
        assert a[0].dtype == rounded.dtype
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


# -- against independent definitions --------------------------------------------------
@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("op", MULTIHEAD_OPS)
def test_sinks_match_bruteforce(op: str, seed: int) -> None:
    rng = np.random.default_rng([30 + MULTIHEAD_OPS.index(op), seed])
    (q, k, v), kwargs = random_attention_case(rng, op)
    kwargs["sinks"] = random_sinks(rng, q.shape[1])
    out, lse, weights = getattr(reference, op)(q, k, v, return_lse=True, return_weights=True, **kwargs)
    bf_out, bf_lse, bf_weights = attention_bruteforce(op, q, k, v, **kwargs)
    for got, expected in ((out, bf_out), (lse, bf_lse), (weights, bf_weights)):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_sink_equals_an_extra_key_with_zero_value(seed: int) -> None:
    """A sink is a key that every row sees, whose score is the sink logit and whose value is 0."""
    rng = np.random.default_rng([40, seed])
    B, Hkv, g, Lq, Lk, D, Dv = 2, 2, 2, 4, 5, 3, 2
    q, k, v = (
        rng.standard_normal((B, Hkv * g, Lq, D)),
        rng.standard_normal((B, Hkv, Lk, D)),
        rng.standard_normal((B, Hkv, Lk, Dv)),
    )
    sinks = rng.standard_normal(Hkv * g)
    mask = rng.random((B, 1, Lq, Lk)) < 0.6
    out, lse = global_attention(q, k, v, sinks=sinks, mask=mask, return_lse=True)
    k_extra = np.concatenate([k, np.zeros((B, Hkv, 1, D))], axis=2)  # score 0, then the bias adds the sink
    v_extra = np.concatenate([v, np.zeros((B, Hkv, 1, Dv))], axis=2)
    bias = np.zeros((B, Hkv * g, Lq, Lk + 1))
    bias[..., Lk] = sinks[None, :, None]
    mask_extra = np.concatenate([np.broadcast_to(mask, (B, 1, Lq, Lk)), np.ones((B, 1, Lq, 1), bool)], axis=3)
    out_x, lse_x = global_attention(q, k_extra, v_extra, bias=bias, mask=mask_extra, return_lse=True)
    np.testing.assert_allclose(out, out_x, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lse, lse_x, rtol=1e-12)


# -- invalid sinks at the op --------------------------------------------------------------
@pytest.mark.parametrize(
    ("sinks", "error"),
    [
        (np.zeros(3), InvalidArgumentError),
        (np.zeros((2, 2)), InvalidArgumentError),
        (np.zeros(2, int), InvalidTypeError),
    ],
)
def test_invalid_sinks_name_the_argument(sinks: np.ndarray, error: type) -> None:
    q, k, v = uniform(2, 2, H=2)
    for op, options in [
        (global_attention, {}),
        (local_attention, {"window": 1}),
        (chunked_attention, {"chunk_size": 2}),
    ]:
        with pytest.raises(error, match=r"^sinks:"):
            op(q, k, v, sinks=sinks, **options)
