"""``precision=`` on the reference VJPs: the same backward, every intermediate in that dtype."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from attnref import reference as ref

LOW = [np.float16, ml_dtypes.bfloat16]


def _case(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 4, 16, 8))
    k = rng.standard_normal((2, 2, 24, 8))
    v = rng.standard_normal((2, 2, 24, 4))
    dout = rng.standard_normal((2, 4, 16, 4))
    dlse = rng.standard_normal((2, 4, 16))
    bias = rng.standard_normal((1, 4, 16, 24))
    return q, k, v, dout, dlse, bias


def _vjp(precision=None, seed: int = 0) -> tuple[np.ndarray, ...]:
    q, k, v, dout, dlse, bias = _case(seed)
    return ref.local_attention_vjp(q, k, v, dout, dlse=dlse, window=(6, 2), softcap=3.0, bias=bias, precision=precision)


def test_float64_precision_is_the_default() -> None:
    for a, b in zip(_vjp(), _vjp(np.float64), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, *LOW], ids=["float32", "float16", "bfloat16"])
def test_precision_returns_that_dtype_near_the_float64_answer(dtype) -> None:
    exact = _vjp()
    low = _vjp(dtype)
    eps = float(np.finfo(dtype).eps)
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), exact, low, strict=True):
        assert b.dtype == np.dtype(dtype) and b.shape == a.shape, name
        err = np.abs(b.astype(np.float64) - a).max()
        scale = np.abs(a).max()
        # within a few hundred roundings of the gradient's scale, yet not the float64 answer rounded once
        assert err <= 20 * eps * scale, (name, err / (eps * scale))
        assert err > 0.5 * eps * scale or dtype is np.float32, name


def test_sixteen_bit_products_accumulate_in_float32() -> None:
    # One key: every row's weight is 1 and dv = sum_i dout_i. Summed in float16, 2048 + 1 + 1 + ...
    # stays 2048 (float16 steps by 2 there); accumulated in float32 and rounded once it is 2148.
    L = 101
    q = np.zeros((1, 1, L, 1), dtype=np.float16)
    k = np.zeros((1, 1, 1, 1), dtype=np.float16)
    v = np.zeros((1, 1, 1, 1), dtype=np.float16)
    dout = np.ones((1, 1, L, 1), dtype=np.float16)
    dout[0, 0, 0, 0] = 2048
    _, _, dv = ref.global_attention_vjp(q, k, v, dout, precision=np.float16)
    assert dv.dtype == np.float16 and float(dv[0, 0, 0, 0]) == 2148.0


def test_an_unknown_precision_is_a_type_error_naming_precision() -> None:
    q, k, v, dout, *_ = _case()
    with pytest.raises(TypeError, match="precision"):
        ref.global_attention_vjp(q, k, v, dout, precision="int8")
