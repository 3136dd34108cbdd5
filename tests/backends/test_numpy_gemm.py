"""The NumPy backend's private single-threaded BLAS (:mod:`attnref_numpy._gemm`) against ``numpy.matmul``."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from attnref_numpy import _blas, _gemm

BLAS = _gemm.private_blas()
pytestmark = pytest.mark.skipif(BLAS is None, reason="the scipy-openblas32 wheel is not installed")

SHAPES = [(1, 1, 1), (3, 5, 7), (64, 64, 130), (1, 64, 9), (9, 64, 1), (17, 1, 3)]
BATCHES = [((), ()), ((4,), (4,)), ((4,), (1,)), ((2, 3), (2, 1)), ((1, 3), (2, 3)), ((2, 1), ()), ((3,), ())]


def operand(rng: np.random.Generator, batch: tuple, rows: int, cols: int, transposed: bool, dtype: type) -> np.ndarray:
    """A ``(*batch, rows, cols)`` operand, stored row by row or as the transpose of such a matrix."""
    if transposed:
        return rng.standard_normal((*batch, cols, rows)).astype(dtype).swapaxes(-1, -2)
    return rng.standard_normal((*batch, rows, cols)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_matches_numpy_matmul_for_every_layout_and_broadcast(dtype, m, k, n):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    for (batch_a, batch_b), ta, tb in itertools.product(BATCHES, (False, True), (False, True)):
        a, b = operand(rng, batch_a, m, k, ta, dtype), operand(rng, batch_b, k, n, tb, dtype)
        expected, got = np.matmul(a, b), BLAS.matmul(a, b)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"{batch_a} {batch_b} {ta} {tb}")


def test_column_slices_out_and_odd_strides():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 65, 1000)).astype(np.float32)
    y = rng.standard_normal((3, 200, 64)).astype(np.float32)
    out = np.full((3, 65, 64), np.nan, dtype=np.float32)  # never read (beta = 0)
    assert BLAS.matmul(x[:, :, 100:300], y, out=out) is out
    np.testing.assert_allclose(out, x[:, :, 100:300] @ y, rtol=1e-5, atol=1e-4)
    every_other = x[:, ::2, 100:300]  # rows strided: still row by row
    np.testing.assert_allclose(BLAS.matmul(every_other, y), every_other @ y, rtol=1e-5, atol=1e-4)
    reversed_ = y[:, ::-1]  # a negative stride: copied first
    np.testing.assert_allclose(BLAS.matmul(x[:, :, :200], reversed_), x[:, :, :200] @ reversed_, rtol=1e-5, atol=1e-4)


def test_what_it_does_not_handle_goes_to_numpy():
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    b = np.arange(6, dtype=np.float16).reshape(3, 2)
    assert BLAS.matmul(a, b).dtype == np.float16
    np.testing.assert_array_equal(BLAS.matmul(a.astype(np.int64), b.astype(np.int64)), a.astype(np.int64) @ b)
    assert BLAS.matmul(np.ones((2, 0), np.float32), np.ones((0, 3), np.float32)).tolist() == [[0.0] * 3] * 2


def test_ieee_rules_as_numpy():
    a = np.ones((2, 3), dtype=np.float32)
    a[0, 0] = np.nan
    b = np.zeros((3, 2), dtype=np.float32)
    b[1, 1] = np.inf
    np.testing.assert_array_equal(BLAS.matmul(a, b), a @ b)  # 0 * nan and 0 * inf are NaN


def test_concurrent_calls_from_several_threads():
    errors = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(20):
            a = rng.standard_normal((4, 128, 64)).astype(np.float32)
            b = rng.standard_normal((4, 64, 256)).astype(np.float32)
            if not np.allclose(BLAS.matmul(a, b), a @ b, rtol=1e-4, atol=1e-4):
                errors.append(seed)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_it_holds_its_own_library_at_one_thread_and_leaves_numpys_alone():
    assert BLAS.threads() == 1
    before = _blas.blas_threads()
    BLAS.matmul(np.ones((256, 256), np.float32), np.ones((256, 256), np.float32))
    assert _blas.blas_threads() == before


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("ATTNREF_NUMPY_PRIVATE_BLAS", "0")
    _gemm.private_blas.cache_clear()
    try:
        assert _gemm.private_blas() is None
    finally:
        monkeypatch.delenv("ATTNREF_NUMPY_PRIVATE_BLAS")
        _gemm.private_blas.cache_clear()
    assert _gemm.private_blas() is not None


class _WithoutBatchedCalls:
    """The private library as an OpenBLAS older than 0.3.34 shows it: no ``cblas_?gemm_batch_strided``."""

    def __init__(self, library):
        self._library = library

    def __getattr__(self, name):
        if name.endswith("_batch_strided"):
            raise AttributeError(name)
        return getattr(self._library, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_batched_calls_one_call_per_product(dtype):
    blas = _gemm.PrivateBlas(_WithoutBatchedCalls(BLAS.library))
    rng = np.random.default_rng(5)
    for (batch_a, batch_b), ta, tb in itertools.product(BATCHES, (False, True), (False, True)):
        a, b = operand(rng, batch_a, 9, 64, ta, dtype), operand(rng, batch_b, 64, 33, tb, dtype)
        np.testing.assert_allclose(blas.matmul(a, b), np.matmul(a, b), rtol=1e-5, atol=1e-5)
