"""The pass rule (attnref.conformance.tolerance), checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnref.conformance import tolerance
from attnref.conformance.tolerance import atol, eps, judge, sensitivity


def test_eps_and_accumulation_dtype() -> None:
    assert eps("bfloat16") == 2.0**-7
    assert eps("float16") == 2.0**-10
    assert eps("float32") == 2.0**-23
    assert eps("float64") == 2.0**-52
    assert tolerance.accumulation_dtype("float16") == "float32"
    assert tolerance.accumulation_dtype("bfloat16") == "float32"
    assert tolerance.accumulation_dtype("float64") == "float64"


def test_atol_is_the_documented_formula() -> None:
    # one rounding of the dtype plus ACCUMULATION_ULPS roundings of the accumulation dtype, times the scale
    assert atol("float64", 3.0) == pytest.approx((1 + 4) * 2.0**-52 * 3.0)
    assert atol("float16", 2.0) == pytest.approx((2.0**-10 + 4 * 2.0**-23) * 2.0)
    assert atol("float32", 0.0) == 0.0


def test_within_twice_the_naive_error_passes_and_beyond_fails() -> None:
    ref = np.array([1.0, 2.0, 3.0])
    naive = ref + np.array([0.0, 1e-3, 0.0])
    floor = atol("float16", 3.0)
    ok = judge("out", ref + 2e-3, ref, naive, "float16")
    assert ok.ok and ok.allowed == pytest.approx(2e-3 + floor)
    bad = judge("out", ref + np.array([0.0, 0.0, 2e-3 + 2 * floor]), ref, naive, "float16")
    assert not bad.ok
    assert "out: max error" in bad.detail and "[2]" in bad.detail and bad.ratio > 1


def test_float64_allows_only_the_floor() -> None:
    ref = np.array([0.5, -0.25])
    floor = atol("float64", 0.5)
    assert judge("out", ref + 0.9 * floor, ref, ref, "float64").ok
    assert not judge("out", ref + 1.1 * floor, ref, ref, "float64").ok


def test_terms_set_the_scale_of_an_average() -> None:
    ref = np.array([1e-3])  # an average of values of size 4 that nearly cancel
    err = 10 * 2.0**-52
    assert not judge("out", ref + err, ref, ref, "float64").ok
    assert judge("out", ref + err, ref, ref, "float64", terms=np.array([4.0, -4.0])).ok


def test_sensitivity_widens_the_bound() -> None:
    ref = np.array([1.0, 2.0])
    moved = ref + np.array([1e-14, -3e-14])
    assert sensitivity(ref, moved) == pytest.approx(3e-14)
    widened = atol("float64", 2.0) + tolerance.SENSITIVITY_FACTOR * 3e-14
    assert judge("out", ref, ref, ref, "float64", moved=moved).allowed == pytest.approx(widened)
    assert not judge("out", ref + 0.99 * widened, ref, ref, "float64").ok
    assert judge("out", ref + 0.99 * widened, ref, ref, "float64", moved=moved).ok
    assert not judge("out", ref + 1.01 * widened, ref, ref, "float64", moved=moved).ok
    assert sensitivity(np.array([np.nan, 1.0]), np.array([5.0, 1.0])) == 0.0


def test_zero_scale_requires_exact_zero() -> None:
    zeros = np.zeros(4)
    assert judge("out", zeros, zeros, zeros, "bfloat16").ok
    assert not judge("out", zeros + 1e-30, zeros, zeros, "bfloat16").ok


@pytest.mark.parametrize(
    ("got", "ok"),
    [([-np.inf, 1.0], True), ([0.0, 1.0], False), ([-1e30, 1.0], False), ([np.nan, 1.0], False)],
)
def test_minus_inf_lse_must_match_exactly(got: list[float], ok: bool) -> None:
    ref = np.array([-np.inf, 1.0])
    verdict = judge("lse", np.array(got), ref, ref, "float32")
    assert verdict.ok is ok
    if not ok:
        assert math.isinf(verdict.err) and "lse[0]" in verdict.detail and "-inf" in verdict.detail


def test_nan_where_the_reference_has_a_number_fails_and_propagated_nan_passes() -> None:
    ref = np.array([np.nan, 1.0])
    assert judge("out", np.array([np.nan, 1.0]), ref, ref, "float32").ok
    assert not judge("out", np.array([0.0, 1.0]), ref, ref, "float32").ok  # a NaN masked away
    bad = judge("out", np.array([np.nan, np.nan]), ref, ref, "float32")
    assert not bad.ok and "out[1] = nan where the reference has 1" in bad.detail


def test_naive_overflow_does_not_widen_the_bound() -> None:
    ref = np.array([1.0, 2.0])
    naive = np.array([np.nan, 2.0])  # the naive fp16 run overflowed on the first entry
    verdict = judge("out", np.array([1.5, 2.0]), ref, naive, "float16")
    assert not verdict.ok and verdict.allowed == pytest.approx(atol("float16", 2.0))


def test_the_sensitivity_constant_is_one_documented_number() -> None:
    assert tolerance.SENSITIVITY_FACTOR == 2.0
    assert tolerance.unit_roundoff("float16") == 2.0**-11
    assert "SENSITIVITY_FACTOR" in tolerance.__doc__


@pytest.mark.parametrize(
    ("ref", "naive", "got", "ok"),
    [
        (np.inf, np.inf, np.inf, True),  # agrees with float64
        (np.inf, np.inf, np.nan, False),  # float64 and the naive run agree on inf: the backend must too
        (np.inf, np.inf, -np.inf, False),  # the sign of an infinity matters
        (np.nan, np.nan, np.inf, False),
        (5.0, np.inf, np.inf, True),  # overflow where the naive same-precision run overflows
        (5.0, np.inf, np.nan, True),  # any non-finite value there
        (5.0, np.inf, 5.0, True),  # or a finite one within the bound
        (5.0, 5.0, np.inf, False),  # overflow where the naive run did not
        (np.inf, np.nan, np.nan, True),  # 0 * inf after an underflowed weight, as the naive run
        (np.inf, np.nan, 3.0, False),  # but never a number where float64 has inf
    ],
)
def test_the_non_finite_rule(ref: float, naive: float, got: float, ok: bool) -> None:
    verdict = judge("out", np.array([got, 1.0]), np.array([ref, 1.0]), np.array([naive, 1.0]), "float32")
    assert verdict.ok is ok, verdict.detail
