"""Hold NumPy's BLAS to one thread while the backend's worker threads run.

The NumPy backend runs query blocks on a few worker threads (NumPy's ufuncs
and BLAS calls release the GIL). If each worker's matrix product also spread
over BLAS threads, the cores would be oversubscribed, and OpenBLAS's spinning
threads then slow everything down badly on a busy machine. So, while a
multi-threaded call runs, OpenBLAS's thread count (process-wide: OpenBLAS has
no per-thread setting that leaves other threads alone) is set to 1, and the
previous count is restored when the last such call ends. BLAS calls made by
other threads of the process during that time run single-threaded.

Where OpenBLAS cannot be found (another BLAS), :func:`blas_can_be_limited`
says so and the backend runs its blocks on the calling thread instead.
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

__all__ = ["blas_can_be_limited", "single_threaded_blas"]

# (set, get) symbol names, plain OpenBLAS and the prefixed/suffixed builds NumPy's wheels bundle.
_SYMBOLS = [
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
]

_lock = threading.Lock()
_users = 0
_saved = 0


def _candidate_libraries() -> list[str]:
    """Paths of the OpenBLAS libraries NumPy may have loaded."""
    paths = []
    try:
        with open("/proc/self/maps") as maps:  # Linux: exactly what is loaded
            paths += [line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line]
    except OSError:
        pass
    base = os.path.dirname(os.path.dirname(np.__file__))
    for pattern in ("numpy.libs/*openblas*", "numpy/.dylibs/*openblas*"):  # Linux and macOS wheels
        paths += glob.glob(os.path.join(base, pattern))
    return list(dict.fromkeys(paths))


@functools.cache
def _thread_controls() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    for path in _candidate_libraries():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            setter, getter = getattr(library, set_name, None), getattr(library, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


def blas_can_be_limited() -> bool:
    """True if :func:`single_threaded_blas` can hold NumPy's BLAS to one thread here."""
    return _thread_controls() is not None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the body with OpenBLAS on one thread; nested and concurrent uses are counted,
    and the thread count found on first entry is restored on last exit."""
    global _users, _saved
    controls = _thread_controls()
    if controls is None:
        yield
        return
    setter, getter = controls
    with _lock:
        if _users == 0:
            _saved = getter()
            setter(1)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                setter(_saved)
