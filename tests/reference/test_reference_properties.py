"""Properties of the reference that hold for every input (hypothesis).

Sizes are drawn by hypothesis; array values come from a NumPy generator seeded
by a drawn integer, which keeps the examples small and the shrinking useful.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
from bruteforce import allowed_grid
from hypothesis import assume, given
from hypothesis import strategies as st

from attnref.reference import (
    additive_attention,
    chunked_attention,
    global_attention,
    local_attention,
    luong_attention,
)

Case = tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]


def _broadcast_shape(draw: st.DrawFn, full: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(draw(st.sampled_from([1, n])) for n in full)
    return shape[draw(st.integers(0, 2)) :]


@st.composite
def attention_cases(draw: st.DrawFn, *, lengths: bool = True, mask: bool = True, min_group: int = 1) -> Case:
    """Random ``(q, k, v), kwargs`` with the options common to the three ops."""
    B, Hkv, group = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(min_group, 3))
    Lq, Lk, D, Dv = draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal((B, Hkv * group, Lq, D))
    k = rng.standard_normal((B, Hkv, Lk, D))
    v = rng.standard_normal((B, Hkv, Lk, Dv))
    full = (B, Hkv * group, Lq, Lk)
    kwargs: dict[str, Any] = {"align": draw(st.sampled_from(["bottom_right", "top_left"]))}
    if draw(st.booleans()):
        kwargs["scale"] = draw(st.floats(0.1, 3.0))
    if draw(st.booleans()):
        kwargs["softcap"] = draw(st.floats(0.5, 10.0))
    if draw(st.booleans()):
        kwargs["bias"] = rng.standard_normal(_broadcast_shape(draw, full))
    if mask and draw(st.booleans()):
        kwargs["mask"] = rng.random(_broadcast_shape(draw, full)) < 0.75
    if lengths and draw(st.booleans()):
        kwargs["kv_lengths"] = draw(st.lists(st.integers(0, Lk), min_size=B, max_size=B))
    if lengths and draw(st.booleans()):
        kwargs["q_lengths"] = np.array(draw(st.lists(st.integers(0, Lq), min_size=B, max_size=B)))
    return (q, k, v), kwargs


def all_outputs(op: Any, qkv: tuple[np.ndarray, ...], **kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return op(*qkv, return_lse=True, return_weights=True, **kwargs)


def assert_identical(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> None:
    """Same allowed sets, same arithmetic: the results must agree bit for bit."""
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def assert_close(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def aligned_positions(qkv: tuple[np.ndarray, ...], kwargs: dict[str, Any]) -> list[int]:
    """Every aligned position ``p`` of a non-padding row (restated from the contract)."""
    B, _, Lq, _ = qkv[0].shape
    Lk = qkv[1].shape[2]
    kv = kwargs.get("kv_lengths") or [Lk] * B
    ql = kwargs.get("q_lengths", [Lq] * B)
    offsets = [kv[b] - ql[b] if kwargs["align"] == "bottom_right" else 0 for b in range(B)]
    return [i + offsets[b] for b in range(B) for i in range(ql[b])]


# -- pattern equivalences ---------------------------------------------------------
@given(attention_cases(), st.booleans(), st.sampled_from(["big", "none", "minus_one"]))
def test_window_covering_everything_is_global(case: Case, causal: bool, spelling: str) -> None:
    qkv, kwargs = case
    reach = qkv[0].shape[2] + qkv[1].shape[2]  # |p - j| < Lq + Lk for every row and key
    unbounded = {"big": reach, "none": None, "minus_one": -1}[spelling]
    window = (unbounded, 0 if causal else unbounded)
    assert_identical(
        all_outputs(local_attention, qkv, window=window, **kwargs),
        all_outputs(global_attention, qkv, causal=causal, **kwargs),
    )


@given(attention_cases(), st.booleans(), st.integers(0, 5))
def test_chunk_covering_every_position_is_global(case: Case, causal: bool, extra: int) -> None:
    qkv, kwargs = case
    positions = aligned_positions(qkv, kwargs)
    assume(min(positions, default=0) >= 0)  # a negative p lies in a chunk with no key
    chunk_size = max([*positions, qkv[1].shape[2] - 1]) + 1 + extra
    assert_identical(
        all_outputs(chunked_attention, qkv, chunk_size=chunk_size, causal=causal, **kwargs),
        all_outputs(global_attention, qkv, causal=causal, **kwargs),
    )


@given(attention_cases(), st.sampled_from([None, -1]))
def test_causal_is_window_unbounded_left_zero_right(case: Case, unbounded: int | None) -> None:
    qkv, kwargs = case
    assert_identical(
        all_outputs(global_attention, qkv, causal=True, **kwargs),
        all_outputs(local_attention, qkv, window=(unbounded, 0), **kwargs),
    )


@given(attention_cases(), st.integers(0, 8))
def test_int_window_is_symmetric_pair(case: Case, w: int) -> None:
    qkv, kwargs = case
    assert_identical(
        all_outputs(local_attention, qkv, window=w, **kwargs),
        all_outputs(local_attention, qkv, window=(w, w), **kwargs),
    )


@given(attention_cases(), st.integers(0, 8), st.integers(0, 2))
def test_minus_one_is_none(case: Case, w: int, which: int) -> None:
    qkv, kwargs = case
    with_minus_one = [(-1, w), (w, -1), (-1, -1)][which]
    with_none = [(None, w), (w, None), (None, None)][which]
    assert_identical(
        all_outputs(local_attention, qkv, window=with_minus_one, **kwargs),
        all_outputs(local_attention, qkv, window=with_none, **kwargs),
    )


# -- heads, weights, bias, permutations -----------------------------------------
@given(attention_cases(min_group=2), st.sampled_from(["global", "window", "chunk"]))
def test_gqa_equals_repeated_kv(case: Case, kind: str) -> None:
    (q, k, v), kwargs = case
    group = q.shape[1] // k.shape[1]
    op, extra = {
        "global": (global_attention, {"causal": True}),
        "window": (local_attention, {"window": (2, 1)}),
        "chunk": (chunked_attention, {"chunk_size": 3}),
    }[kind]
    repeated = (q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1))
    assert_identical(all_outputs(op, (q, k, v), **extra, **kwargs), all_outputs(op, repeated, **extra, **kwargs))


@given(attention_cases(), st.integers(0, 4), st.integers(0, 4))
def test_weights_rows_sum_to_one_or_zero(case: Case, left: int, right: int) -> None:
    (q, k, v), kwargs = case
    out, lse, weights = all_outputs(local_attention, (q, k, v), window=(left, right), **kwargs)
    sums = weights.sum(axis=-1)
    empty = np.isneginf(lse)
    np.testing.assert_allclose(sums[~empty], 1.0, rtol=0, atol=1e-12)
    assert not weights[empty].any()
    assert (weights >= 0).all()
    # and the output is those weights applied to the (repeated) values
    group = q.shape[1] // k.shape[1]
    np.testing.assert_allclose(out, weights @ np.repeat(v, group, axis=1), rtol=1e-12, atol=1e-14)


@given(attention_cases(), st.integers(0, 2**32 - 1))
def test_per_row_bias_constant_changes_nothing(case: Case, seed: int) -> None:
    qkv, kwargs = case
    B, Hq, Lq, _ = qkv[0].shape
    shift = np.random.default_rng(seed).uniform(-20, 20, size=(B, Hq, Lq, 1))
    shifted = dict(kwargs, bias=kwargs.get("bias", 0.0) + shift)
    out, lse, weights = all_outputs(global_attention, qkv, causal=True, **kwargs)
    out2, lse2, weights2 = all_outputs(global_attention, qkv, causal=True, **shifted)
    assert_close((out, weights), (out2, weights2))
    finite = np.isfinite(lse)
    np.testing.assert_array_equal(np.isfinite(lse2), finite)
    np.testing.assert_allclose(lse2[finite], (lse + shift[..., 0])[finite], rtol=1e-12, atol=1e-12)


@given(attention_cases(lengths=False), st.integers(0, 2**32 - 1))
def test_permuting_keys_changes_nothing_in_global_attention(case: Case, seed: int) -> None:
    (q, k, v), kwargs = case
    perm = np.random.default_rng(seed).permutation(k.shape[2])
    permuted = dict(kwargs)
    for name in ("bias", "mask"):
        if name in kwargs:
            full = np.broadcast_to(kwargs[name], (*q.shape[:3], k.shape[2]))
            permuted[name] = full[..., perm]
    out, lse, weights = all_outputs(global_attention, (q, k, v), **kwargs)
    out2, lse2, weights2 = all_outputs(global_attention, (q, k[:, :, perm], v[:, :, perm]), **permuted)
    assert_close((out, lse, weights[..., perm]), (out2, lse2, weights2))


@given(attention_cases(), st.sampled_from(["global", "causal", "window", "chunk"]))
def test_lse_is_log_sum_exp_of_allowed_scores(case: Case, kind: str) -> None:
    (q, k, v), kwargs = case
    op, name, extra = {
        "global": (global_attention, "global_attention", {}),
        "causal": (global_attention, "global_attention", {"causal": True}),
        "window": (local_attention, "local_attention", {"window": (1, 2)}),
        "chunk": (chunked_attention, "chunked_attention", {"chunk_size": 2, "causal": True}),
    }[kind]
    _, lse = op(q, k, v, return_lse=True, **extra, **kwargs)
    # The scores written out directly: scale, softcap, bias; no max subtraction (they are small).
    kr = np.repeat(k, q.shape[1] // k.shape[1], axis=1)
    s = kwargs.get("scale", 1 / np.sqrt(q.shape[-1])) * (q @ np.swapaxes(kr, -1, -2))
    if "softcap" in kwargs:
        s = kwargs["softcap"] * np.tanh(s / kwargs["softcap"])
    s = s + kwargs.get("bias", 0.0)
    grid_options = {key: kwargs[key] for key in ("mask", "kv_lengths", "q_lengths", "align") if key in kwargs}
    allowed = allowed_grid(name, s.shape, **grid_options, **extra)
    with np.errstate(divide="ignore"):
        expected = np.log(np.where(allowed, np.exp(s), 0.0).sum(axis=-1))
    np.testing.assert_allclose(lse, expected, rtol=1e-12, atol=1e-12)


# -- precision= -------------------------------------------------------------------
PRECISIONS = ["float32", "float16", "bfloat16"]


def eps(name: str) -> float:
    return float(ml_dtypes.finfo(name).eps)


# The naive low-precision run rounds every intermediate once or a few times; with the
# scores these cases draw (|s| of a few units) its error stays within a few eps of the
# output's scale. 32 eps is loose on purpose: it catches a run that ignores precision=
# (too exact, tested below) or computes garbage, not the last bit.
PRECISION_FACTOR = 32


@given(attention_cases(), st.sampled_from(PRECISIONS), st.sampled_from(["global", "window", "chunk"]))
def test_precision_runs_in_that_dtype_and_stays_close(case: Case, precision: str, kind: str) -> None:
    qkv, kwargs = case
    op, extra = {
        "global": (global_attention, {"causal": False}),
        "window": (local_attention, {"window": (2, 0)}),
        "chunk": (chunked_attention, {"chunk_size": 3}),
    }[kind]
    out, lse, weights = all_outputs(op, qkv, **extra, **kwargs)
    low = all_outputs(op, qkv, precision=precision, **extra, **kwargs)
    assert all(x.dtype == np.dtype(ml_dtypes.finfo(precision).dtype) for x in low)
    out_low, lse_low, weights_low = (x.astype(np.float64) for x in low)
    bound = PRECISION_FACTOR * eps(precision)
    assert np.abs(out_low - out).max() <= bound * max(1.0, np.abs(qkv[2]).max())
    assert np.abs(weights_low - weights).max() <= bound
    finite = np.isfinite(lse)
    np.testing.assert_array_equal(np.isfinite(lse_low), finite)
    assert (np.abs(lse_low[finite] - lse[finite]) <= bound * (1 + np.abs(lse[finite]))).all()


def test_precision_really_rounds() -> None:
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 16, 8)) for _ in range(3))
    exact = local_attention(q, k, v, window=(4, 4))
    errors = {p: np.abs(local_attention(q, k, v, window=(4, 4), precision=p) - exact).max() for p in PRECISIONS}
    assert 0 < errors["float32"] < errors["float16"] < errors["bfloat16"]
    for p, err in errors.items():
        assert err > eps(p) / 64, (p, err)  # rounded at that dtype's level, not at float64's


@given(st.integers(0, 2**32 - 1), st.sampled_from(PRECISIONS))
def test_precision_pooling_ops(seed: int, precision: str) -> None:
    rng = np.random.default_rng(seed)
    B, L, d = 2, int(rng.integers(1, 9)), int(rng.integers(1, 4))
    x = rng.standard_normal((B, L, d))
    w_in, b_in, w_out = rng.standard_normal((d, 3)), rng.standard_normal(3), rng.standard_normal(3)
    bound = PRECISION_FACTOR * eps(precision) * max(1.0, np.abs(x).max())
    context, _ = additive_attention(x, w_in, b_in, w_out, window=(1, 2))
    context_low, weights_low = additive_attention(x, w_in, b_in, w_out, window=(1, 2), precision=precision)
    assert context_low.dtype == weights_low.dtype == np.dtype(ml_dtypes.finfo(precision).dtype)
    assert np.abs(context_low.astype(np.float64) - context).max() <= bound
    # Luong global and local-m (local-p's window edge moves with the rounded p_t, a discrete change)
    h_s = rng.standard_normal((B, L + 2, d))
    for mode in ("global", "local-m"):
        context, _ = luong_attention(x, h_s, score="general", w_a=np.eye(d), mode=mode, half_width=1)
        low, low_weights = luong_attention(
            x, h_s, score="general", w_a=np.eye(d), mode=mode, half_width=1, precision=precision
        )
        assert low.dtype == low_weights.dtype == np.dtype(ml_dtypes.finfo(precision).dtype)
        assert np.abs(low.astype(np.float64) - context).max() <= PRECISION_FACTOR * eps(precision) * np.abs(h_s).max()


# -- pooling ops ------------------------------------------------------------------
@given(st.integers(0, 2**32 - 1), st.integers(1, 9), st.booleans())
def test_additive_window_covering_everything_is_global(seed: int, L: int, with_mask: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, L, 3))
    params = (rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal(4))
    mask = rng.random((2, L)) < 0.7 if with_mask else None
    center = rng.integers(0, L, size=2)
    assert_identical(
        additive_attention(x, *params, mask=mask, window=(L, None), center=center),
        additive_attention(x, *params, mask=mask),
    )
    # b_out shifts every score alike
    assert_close(additive_attention(x, *params, 7.5, mask=mask), additive_attention(x, *params, mask=mask))


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 8))
def test_luong_local_m_with_wide_window_is_global(seed: int, T: int, S: int) -> None:
    rng = np.random.default_rng(seed)
    h_t, h_s = rng.standard_normal((2, T, 3)), rng.standard_normal((2, S, 3))
    lengths = rng.integers(0, S + 1, size=2)
    assert_identical(
        luong_attention(h_t, h_s, mode="local-m", half_width=S, source_lengths=lengths),
        luong_attention(h_t, h_s, source_lengths=lengths),
    )
