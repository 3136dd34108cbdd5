"""``dsinks`` and the other gradients with attention sinks (contract section 7).

A sink logit ``sinks[h]`` is a virtual key that every non-padding row may
always see, with no value and a score not scaled, softcapped, biased or masked.
For global attention it is exactly one more key with ``k = 0`` and ``v = 0``
(its score ``scale * q . 0 = 0`` is 0 after softcap too) whose bias is
``sinks[h]``: the checks below compare against that construction, which runs
through the code paths of plain keys and biases.
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from test_gradients_finite_differences import numeric_grad

from attnref import reference as ref

B, HQ, HKV, LQ, LK, D, DV = 2, 4, 2, 5, 6, 3, 2


def _inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "q": rng.standard_normal((B, HQ, LQ, D)),
        "k": rng.standard_normal((B, HKV, LK, D)),
        "v": rng.standard_normal((B, HKV, LK, DV)),
        "dout": rng.standard_normal((B, HQ, LQ, DV)),
        "dlse": rng.standard_normal((B, HQ, LQ)),
        "sinks": rng.standard_normal(HQ),
    }


def _as_extra_key(a: dict[str, np.ndarray], kwargs: dict[str, Any]) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """Global attention with the sink as key 0 (k = v = 0, bias = sinks[h]); the real keys follow it."""
    k = np.concatenate([np.zeros((B, HKV, 1, D)), a["k"]], axis=2)
    v = np.concatenate([np.zeros((B, HKV, 1, DV)), a["v"]], axis=2)
    bias = np.zeros((B, HQ, LQ, LK)) if kwargs.get("bias") is None else np.broadcast_to(kwargs["bias"], (B, HQ, LQ, LK))
    column = np.broadcast_to(a["sinks"][None, :, None, None], (B, HQ, LQ, 1))
    extended = {**kwargs, "bias": np.concatenate([column, bias], axis=-1)}
    if kwargs.get("mask") is not None:
        mask = np.broadcast_to(kwargs["mask"], (B, HQ, LQ, LK))
        extended["mask"] = np.concatenate([np.ones((B, HQ, LQ, 1), dtype=bool), mask], axis=-1)
    if kwargs.get("kv_lengths") is not None:
        extended["kv_lengths"] = [n + 1 for n in kwargs["kv_lengths"]]
    return (a["q"], k, v), extended


GLOBAL_CASES = {
    "plain": {},
    "softcap-scale": {"softcap": 1.3, "scale": 0.9},
    "lengths": {"kv_lengths": [6, 0], "q_lengths": [5, 3]},
    "mask-with-empty-rows": {"mask": "empty-rows"},
    "bias": {"bias": "row"},
}


def _kwargs(name: str, rng: np.random.Generator) -> dict[str, Any]:
    kwargs = dict(GLOBAL_CASES[name])
    if kwargs.get("mask") == "empty-rows":
        mask = rng.random((B, 1, LQ, LK)) < 0.6
        mask[0, :, 1] = False
        kwargs["mask"] = mask
    if kwargs.get("bias") == "row":
        kwargs["bias"] = rng.standard_normal((1, LQ, LK))
    return kwargs


@pytest.mark.parametrize("name", list(GLOBAL_CASES))
def test_the_sink_is_one_more_key_with_no_value(name: str) -> None:
    a = _inputs(sorted(GLOBAL_CASES).index(name))
    kwargs = _kwargs(name, np.random.default_rng(1))
    grads = ref.global_attention_vjp(a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"], sinks=a["sinks"], **kwargs)
    (q, k, v), extended = _as_extra_key(a, kwargs)
    dq, dk, dv, dbias = ref.global_attention_vjp(q, k, v, a["dout"], dlse=a["dlse"], **extended)
    assert len(grads) == 4 + ("bias" in kwargs)
    np.testing.assert_allclose(grads[0], dq, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads[1], dk[:, :, 1:], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads[2], dv[:, :, 1:], rtol=1e-12, atol=1e-14)
    if "bias" in kwargs:  # (1, LQ, LK): summed over batch and heads
        np.testing.assert_allclose(grads[3], dbias[..., 1:].sum(axis=(0, 1))[None], rtol=1e-12, atol=1e-14)
    dsinks = grads[-1]
    assert dsinks.shape == (HQ,) and dsinks.dtype == np.float64
    np.testing.assert_allclose(dsinks, dbias[..., 0].sum(axis=(0, 2)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["plain", "lengths", "mask-with-empty-rows"])
def test_dsinks_matches_finite_differences(name: str) -> None:
    a = _inputs(10 + sorted(GLOBAL_CASES).index(name))
    kwargs = _kwargs(name, np.random.default_rng(2))
    dsinks = ref.global_attention_vjp(a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"], sinks=a["sinks"], **kwargs)[-1]

    def loss() -> float:
        (q, k, v), extended = _as_extra_key(a, kwargs)
        out, lse = ref.global_attention(q, k, v, return_lse=True, **extended)
        lse = np.where(np.isneginf(lse), 0.0, lse)
        return float(np.sum(out * a["dout"]) + np.sum(lse * a["dlse"]))

    np.testing.assert_allclose(dsinks, numeric_grad(loss, a["sinks"]), atol=1e-7, rtol=1e-6)


def test_one_row_by_hand() -> None:
    # q = 1, k = (0, log 3), sink log 4, scale 1: exp-scores 1, 3 and 4, lse = log 8;
    # P = (1/8, 3/8), sink weight 1/2; v = (4, 8): out = 1/2 + 3 = 7/2.
    # dout = 1, dlse = 2: dsinks = 1/2 (2 - 7/2) = -3/4
    q = np.ones((1, 1, 1, 1))
    k = np.array([0.0, math.log(3.0)]).reshape(1, 1, 2, 1)
    v = np.array([4.0, 8.0]).reshape(1, 1, 2, 1)
    dout, dlse, sinks = np.ones((1, 1, 1, 1)), np.full((1, 1, 1), 2.0), np.array([math.log(4.0)])
    dq, dk, dv, dsinks = ref.global_attention_vjp(q, k, v, dout, dlse=dlse, sinks=sinks, scale=1.0)
    np.testing.assert_allclose(dsinks, [-0.75], rtol=1e-15)
    np.testing.assert_allclose(dv.ravel(), [1 / 8, 3 / 8], rtol=1e-15)
    # dS = P (dP - delta + dlse) = (1/8 (4 - 7/2 + 2), 3/8 (8 - 7/2 + 2)) = (5/16, 39/16)
    np.testing.assert_allclose(dk.ravel(), [5 / 16, 39 / 16], rtol=1e-15)
    np.testing.assert_allclose(dq.ravel(), [39 / 16 * math.log(3.0)], rtol=1e-15)


def test_a_row_without_keys_adds_its_dlse_and_never_reads_its_dout() -> None:
    q, k, v = np.ones((1, 2, 3, 1)), np.ones((1, 1, 2, 1)), np.ones((1, 1, 2, 1))
    dout = np.full((1, 2, 3, 1), np.nan)
    dlse = np.arange(6.0).reshape(1, 2, 3)
    dq, dk, dv, dsinks = ref.global_attention_vjp(q, k, v, dout, dlse=dlse, sinks=np.array([0.5, -3.0]), kv_lengths=[0])
    np.testing.assert_array_equal(dsinks, [0 + 1 + 2, 3 + 4 + 5])
    assert not dq.any() and not dk.any() and not dv.any()


def test_padding_rows_add_nothing_to_dsinks() -> None:
    a = _inputs(30)
    a["dlse"][1, :, 3:] = np.nan
    a["dout"][1, :, 3:] = np.nan
    grads = ref.local_attention_vjp(
        a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"], sinks=a["sinks"], window=(1, 1), q_lengths=[5, 3]
    )
    assert all(np.isfinite(g).all() for g in grads)
    a["dlse"][1, :, 3:] = 0.0
    a["dout"][1, :, 3:] = 0.0
    again = ref.local_attention_vjp(
        a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"], sinks=a["sinks"], window=(1, 1), q_lengths=[5, 3]
    )
    for g, h in zip(grads, again, strict=True):
        np.testing.assert_array_equal(g, h)


@pytest.mark.parametrize("vjp, options", [
    (ref.global_attention_vjp, {"causal": True}),
    (ref.chunked_attention_vjp, {"chunk_size": 2, "kv_lengths": [6, 0]}),
])  # fmt: skip
def test_a_minus_inf_sink_is_no_sink(vjp, options) -> None:
    a = _inputs(31)
    a["dlse"][1, 0, 0] = np.nan  # a row without keys (kv_lengths 0): its dlse is not read without a sink
    if "kv_lengths" not in options:
        a["dlse"][1, 0, 0] = 0.5
    without = vjp(a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"], **options)
    with_sink = vjp(a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"], sinks=np.full(HQ, -np.inf), **options)
    for g, h in zip(without, with_sink[:3], strict=True):
        np.testing.assert_array_equal(g, h)
    np.testing.assert_array_equal(with_sink[3], np.zeros(HQ))


def test_a_nan_sink_poisons_exactly_its_head() -> None:
    a = _inputs(32)
    a["sinks"][1] = np.nan
    dq, dk, dv, dsinks = ref.global_attention_vjp(
        a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"], sinks=a["sinks"], kv_lengths=[6, 4]
    )
    np.testing.assert_array_equal(np.isnan(dsinks), [False, True, False, False])
    assert np.isnan(dq[:, 1]).all() and np.isfinite(dq[:, [0, 2, 3]]).all()
    # head 1 reads kv head 0: every key its rows see is NaN, the keys behind kv_lengths are not
    assert np.isnan(dk[0, 0]).all() and np.isnan(dk[1, 0, :4]).all() and not dk[1, 0, 4:].any()
    assert np.isnan(dv[0, 0]).all() and np.isfinite(dk[:, 1]).all() and np.isfinite(dv[:, 1]).all()


@pytest.mark.parametrize("sink_dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_sinks_of_any_floating_dtype_and_precision(sink_dtype) -> None:
    a = _inputs(33)
    q, k, v = (a[n].astype(np.float16) for n in "qkv")
    sinks = a["sinks"].astype(sink_dtype)
    exact = ref.global_attention_vjp(q, k, v, a["dout"], dlse=a["dlse"], sinks=sinks)
    low = ref.global_attention_vjp(q, k, v, a["dout"], dlse=a["dlse"], sinks=sinks, precision=np.float16)
    assert len(low) == 4 and all(g.dtype == np.float16 for g in low)
    for g, h in zip(exact, low, strict=True):
        np.testing.assert_allclose(h.astype(np.float64), g, atol=0.02 * np.abs(g).max())


def test_integer_sinks_are_a_type_error_naming_sinks() -> None:
    a = _inputs(34)
    with pytest.raises(TypeError, match="sinks"):
        ref.global_attention_vjp(a["q"], a["k"], a["v"], a["dout"], sinks=np.zeros(HQ, dtype=np.int64))
