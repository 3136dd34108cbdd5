"""A private, single-threaded BLAS for the NumPy backend's worker threads.

The backend runs a call's blocks on a few worker threads, and each worker's
matrix products must run on one BLAS thread: with BLAS's own threads on top,
the cores are oversubscribed and OpenBLAS's spinning threads slow everything
down (13x at L=16384 on the 2-core development machine under load; see
``docs/profile.md``). NumPy's bundled OpenBLAS has one thread count for the
whole process, so holding it at one during a call would change every other
thread's matmuls too (issue 9). Instead, the products of the blocked kernels
go through a *second* OpenBLAS, the one the ``scipy-openblas32`` wheel ships
(``libscipy_openblas``, every symbol prefixed ``scipy_``): attnref loads it
itself and sets *its* thread count to one. NumPy's BLAS, and everything else in
the process, is never touched. NumPy's and SciPy's wheels bundle their own
renamed copies, so nothing else normally shares this library; a program that
links the ``scipy-openblas32`` library itself shares its (process-wide) thread
count with attnref, which sets it to one on first use.

:func:`private_blas` loads it on the first call that asks (never when the
backend is listed or built) and returns None where the wheel is absent or its
library lacks the functions used; the backend then falls back to NumPy's own
``matmul`` (see :mod:`attnref_numpy.backend`).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import itertools
import os
from typing import Any

import numpy as np

__all__ = ["PrivateBlas", "private_blas"]

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
#: The library's integers are 32-bit: larger dimensions, leading dimensions or batch strides fall back.
_INT_MAX = 2**31 - 1


class PrivateBlas:
    """Matrix products on a private OpenBLAS held at one thread.

    Parameters
    ----------
    library : ctypes.CDLL
        The loaded ``libscipy_openblas`` (see :func:`private_blas`).
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        library.scipy_openblas_set_num_threads(1)
        self.library = library
        self.kernels = {
            np.dtype(np.float32): _batched(library, "s", ctypes.c_float),
            np.dtype(np.float64): _batched(library, "d", ctypes.c_double),
        }

    def threads(self) -> int:
        """The private library's thread count (1 once loaded)."""
        return int(self.library.scipy_openblas_get_num_threads())

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``numpy.matmul(a, b, out=out)`` for real float32/float64 stacks of matrices (batch axes
        broadcast), run on the private single-threaded BLAS.

        Operands whose last two axes are strided as a row-major matrix or its
        transpose are passed as they are (views such as ``x.swapaxes(-1, -2)``
        or a slice of columns cost no copy); others, other dtypes, and sizes
        beyond 32-bit integers go to ``numpy.matmul``, as do empty products.
        """
        a, b = np.asarray(a), np.asarray(b)
        kernel = self.kernels.get(a.dtype)
        if kernel is None or b.dtype != a.dtype or a.ndim < 2 or b.ndim < 2:
            return np.matmul(a, b, out=out)
        m, k = a.shape[-2:]
        n = b.shape[-1]
        if b.shape[-2] != k or 0 in (m, n, k) or max(m, n, k) > _INT_MAX:
            return np.matmul(a, b, out=out)
        # Kept lean: the blocked kernels call this hundreds of times per op, from worker threads
        # that share the GIL, and NumPy's broadcasting helpers cost microseconds each.
        batch_a, batch_b = a.shape[:-2], b.shape[:-2]
        batch = batch_a if batch_a == batch_b else np.broadcast_shapes(batch_a, batch_b)
        shape = (*batch, m, n)
        if out is None:
            out = np.empty(shape, dtype=a.dtype)
        elif out.shape != shape or out.dtype != a.dtype or not out.flags.c_contiguous:
            return np.matmul(a, b, out=out)
        a_layout, b_layout = _layout(a), _layout(b)
        if a_layout is None:
            a = np.ascontiguousarray(a)
            a_layout = _layout(a)
        if b_layout is None:
            b = np.ascontiguousarray(b)
            b_layout = _layout(b)
        if batch_a != batch:
            a = np.broadcast_to(a, (*batch, m, k))
        if batch_b != batch:
            b = np.broadcast_to(b, (*batch, k, n))
        size = a.itemsize
        inner = batch[-1] if batch else 1
        stride_a = a.strides[-3] // size if inner > 1 else 0
        stride_b = b.strides[-3] // size if inner > 1 else 0
        if max(abs(stride_a), abs(stride_b), m * n) > _INT_MAX or stride_a < 0 or stride_b < 0:
            return np.matmul(a, b, out=out)
        outers = itertools.product(*(range(extent) for extent in batch[:-1])) if len(batch) > 1 else ((),)
        for outer in outers:
            kernel(
                a_layout[0], b_layout[0], m, n, k, 1.0,
                a[outer].ctypes.data, a_layout[1], stride_a,
                b[outer].ctypes.data, b_layout[1], stride_b,
                0.0, out[outer].ctypes.data, n, m * n, inner,
            )  # fmt: skip
        return out


def _batched(library: ctypes.CDLL, prefix: str, scalar: Any) -> Any:
    """``gemm(trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c,
    count)``: ``count`` products at fixed strides, through ``cblas_?gemm_batch_strided`` where the
    library has it (OpenBLAS 0.3.34 and later), else one ``cblas_?gemm`` call per product."""
    i, p = ctypes.c_int, ctypes.c_void_p
    batched = getattr(library, f"scipy_cblas_{prefix}gemm_batch_strided", None)
    if batched is not None:
        batched.argtypes = [i, i, i, i, i, i, scalar, p, i, i, p, i, i, scalar, p, i, i, i]
        batched.restype = None
        return functools.partial(batched, _ROW_MAJOR)
    single = getattr(library, f"scipy_cblas_{prefix}gemm")
    single.argtypes = [i, i, i, i, i, i, scalar, p, i, p, i, scalar, p, i]
    single.restype = None
    size = np.dtype(np.float32 if prefix == "s" else np.float64).itemsize

    def loop(*call: Any) -> None:
        ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, count = call
        for index in range(count):
            single(_ROW_MAJOR, ta, tb, m, n, k, alpha, a + index * sa * size, lda, b + index * sb * size, ldb,
                   beta, c + index * sc * size, ldc)  # fmt: skip

    return loop


def _layout(x: np.ndarray) -> tuple[int, int] | None:
    """``(transpose flag, leading dimension)`` of the matrices in ``x``'s last two axes for a
    row-major BLAS call, or None if neither they nor their transpose are stored row by row."""
    rows, cols = x.shape[-2:]
    size = x.itemsize
    row_stride, col_stride = x.strides[-2:]
    if row_stride % size or col_stride % size:
        return None
    if (col_stride == size or cols == 1) and (rows == 1 or row_stride >= cols * size):
        lead = max(row_stride // size, cols) if rows > 1 else cols
        return (_NO_TRANS, lead) if lead <= _INT_MAX else None
    if (row_stride == size or rows == 1) and (cols == 1 or col_stride >= rows * size):
        lead = max(col_stride // size, rows) if cols > 1 else rows
        return (_TRANS, lead) if lead <= _INT_MAX else None
    return None


@functools.cache
def private_blas() -> PrivateBlas | None:
    """The private BLAS, loaded on first use; None where the ``scipy-openblas32`` wheel is absent
    or unusable (``ATTNREF_NUMPY_PRIVATE_BLAS=0`` also switches it off)."""
    if os.environ.get("ATTNREF_NUMPY_PRIVATE_BLAS", "") == "0":
        return None
    try:
        import scipy_openblas32
    except ImportError:
        return None
    paths = sorted(glob.glob(os.path.join(scipy_openblas32.get_lib_dir(), "*scipy_openblas*")))
    for path in paths:
        if not path.endswith((".so", ".dylib", ".dll")):
            continue
        try:
            return PrivateBlas(ctypes.CDLL(path))
        except (OSError, AttributeError):
            continue
    return None
