"""The NumPy backend: the shared blocked code (:mod:`attnref_blocked`) with ``xp = numpy``, on threads.

NumPy's ufuncs and BLAS calls release the GIL, so a call's query blocks run
on a few worker threads that live only for that call
(:mod:`attnref_blocked.threads`). Workers pay off only while each one's
matrix products run on a single BLAS thread, and the backend changes no
process-wide state to get there: the workers' products go through a private
OpenBLAS held at one thread (:mod:`attnref_numpy._gemm`, from the
``scipy-openblas32`` wheel, a dependency), never through NumPy's own BLAS,
whose thread count stays as the user set it. Where that library is missing
(or switched off with ``ATTNREF_NUMPY_PRIVATE_BLAS=0``), the backend runs
workers only when NumPy's BLAS is already single-threaded
(``OPENBLAS_NUM_THREADS=1``, ``threadpoolctl.threadpool_limits(1, "blas")``),
and otherwise runs on the calling thread with BLAS's own threads in the
products; ``hold_blas=True`` (or ``ATTNREF_NUMPY_HOLD_BLAS=1``) is then the
opt-in that holds NumPy's BLAS at one thread, process-wide, during each
multi-worker call (:mod:`attnref_numpy._blas` says what that costs other
threads).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

import attnref
from attnref.dtypes import DTYPE_NAMES
from attnref.validation import AttentionArgs
from attnref_blocked import ArrayBackend, BlockConfig
from attnref_numpy._blas import blas_threads, holding_blas
from attnref_numpy._gemm import private_blas

__all__ = ["NumpyBackend", "default_threads", "usable_cores"]


#: Environment switch of the opt-in ``hold_blas`` for the registered backend.
HOLD_BLAS_ENV = "ATTNREF_NUMPY_HOLD_BLAS"


def default_threads() -> int:
    """Worker threads for one large call of the NumPy backend: the cores this process may use (at
    most 8) when the workers' products can run on one BLAS thread each (the private BLAS is there,
    or NumPy's BLAS runs on one thread: read now, never set), else 1: the calling thread, with
    BLAS's threads in the products (workers on top of them would oversubscribe the cores)."""
    if private_blas() is None and blas_threads() != 1:
        return 1
    return usable_cores()


def usable_cores() -> int:
    """The cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


class NumpyBackend(ArrayBackend):
    """attnref's ops on NumPy arrays: blocked, memory-bounded, multi-threaded.

    Parameters
    ----------
    threads : int, optional
        Worker threads for the multi-head ops and their gradients (default:
        :func:`default_threads`, decided at each call). Their products run
        on the private single-threaded BLAS; without it, with ``threads > 1``,
        hold NumPy's BLAS to one thread yourself (``OPENBLAS_NUM_THREADS=1``,
        or ``threadpoolctl.threadpool_limits(1, "blas")``) or the cores are
        oversubscribed. Calls too small to split run on the calling thread.
    hold_blas : bool, optional
        Only where the private BLAS is missing: opt in to holding NumPy's
        OpenBLAS at one thread, process-wide, during each call large enough
        for workers, which then run on every usable core whatever BLAS's own
        setting (default: the environment variable ``ATTNREF_NUMPY_HOLD_BLAS``
        is ``1``, read at each call).
    block : BlockConfig, optional
        Block sizes (its ``threads`` is ignored); the default suits CPUs with
        about 1 MiB of L2 cache per core. Tests use tiny blocks.
    """

    name = "numpy"
    version = f"{attnref.__version__} (numpy {np.__version__})"
    dtypes = frozenset(DTYPE_NAMES)
    unavailable_reason = None

    def __init__(
        self, threads: int | None = None, block: BlockConfig | None = None, hold_blas: bool | None = None
    ) -> None:
        self.threads = None if threads is None else max(1, int(threads))
        self.block = BlockConfig() if block is None else block
        self.hold_blas = hold_blas

    def _holds_blas(self) -> bool:
        if self.hold_blas is not None:
            return bool(self.hold_blas)
        return os.environ.get(HOLD_BLAS_ENV, "") == "1"

    def namespace(self) -> Any:
        return np

    def asarray(self, array: Any) -> np.ndarray:
        """A NumPy array as it is (dtype kept)."""
        return np.asarray(array)

    def to_numpy(self, array: Any) -> np.ndarray:
        """A NumPy array as it is (dtype kept)."""
        return np.asarray(array)

    def block_config(self, args: AttentionArgs) -> BlockConfig:
        work = args.batch * args.q_heads * args.q_len * args.kv_len
        if work <= self.block.score_elements:
            threads = 1
        elif self.threads is not None:
            threads = self.threads
        else:
            threads = usable_cores() if self._holds_blas() else default_threads()
        matmul = self.block.matmul
        blas = private_blas() if threads > 1 and matmul is None else None
        if blas is not None:
            matmul = blas.matmul
        return dataclasses.replace(self.block, threads=threads, matmul=matmul)

    def _run(self, kernel: Any, config: BlockConfig) -> Any:
        """Run ``kernel()``, holding NumPy's BLAS at one thread around it if opted in, the call
        uses workers and their products have no private BLAS."""
        if config.threads > 1 and config.matmul is None and self._holds_blas():
            with holding_blas():
                return kernel()
        return kernel()
