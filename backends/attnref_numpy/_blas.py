"""NumPy's BLAS thread count: read it (always), hold it at one (only when the caller opts in).

The backend's worker threads help only while each worker's matrix products
run on one BLAS thread: with OpenBLAS's own threads on top, the cores are
oversubscribed, and its spinning threads slow everything down badly on a busy
machine (20x on the 2-core development machine under load). OpenBLAS has no
per-thread setting, so by default attnref never changes the count: it reads it
(:func:`blas_threads`) and runs workers only when it is already 1.

:func:`holding_blas` is the documented opt-in (``NumpyBackend(hold_blas=True)``
or ``ATTNREF_NUMPY_HOLD_BLAS=1``): for the duration of a multi-worker call,
OpenBLAS's thread count is set to 1 *for the whole process* and restored when
the last such call ends. Meanwhile other threads' BLAS calls run on one thread,
and a ``threadpoolctl`` limit entered or left by another thread during the call
is overridden when the call ends.

The library is the OpenBLAS that NumPy's own wheel bundles (in ``numpy.libs``
or ``numpy/.dylibs``; never another copy, such as scipy's or torch's), looked
up on the first large call, never when the backend is listed or built.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["blas_threads", "holding_blas"]

#: (set, get) names in plain OpenBLAS and in the prefixed/suffixed builds NumPy's wheels bundle.
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)

_lock = threading.Lock()
_holders = 0
_saved = 0


@functools.cache
def _controls() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    base = os.path.dirname(os.path.dirname(np.__file__))
    for pattern in ("numpy.libs/*openblas*", "numpy/.dylibs/*openblas*"):  # Linux and macOS wheels
        for path in sorted(glob.glob(os.path.join(base, pattern))):
            try:
                library = ctypes.CDLL(path)  # already loaded by NumPy: this only finds it
            except OSError:
                continue
            for set_name, get_name in _SYMBOLS:
                setter, getter = getattr(library, set_name, None), getattr(library, get_name, None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    return setter, getter
    return None


def blas_threads() -> int | None:
    """The thread count of NumPy's bundled OpenBLAS now (as set by ``OPENBLAS_NUM_THREADS``,
    ``threadpoolctl.threadpool_limits`` or the like), or None where NumPy has no bundled OpenBLAS."""
    controls = _controls()
    return None if controls is None else int(controls[1]())


@contextmanager
def holding_blas() -> Iterator[bool]:
    """Hold NumPy's OpenBLAS at one thread, process-wide, for the body (the opt-in above).

    Yields whether it could (False where NumPy has no bundled OpenBLAS).
    Nested and concurrent holds are counted; the count found by the first is
    restored by the last.
    """
    global _holders, _saved
    controls = _controls()
    if controls is None:
        yield False
        return
    setter, getter = controls
    with _lock:
        if _holders == 0:
            _saved = getter()
            setter(1)
        _holders += 1
    try:
        yield True
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                setter(_saved)
