"""The CuPy backend: the shared blocked code (:mod:`attnref_blocked`), run with ``xp = cupy``.

CuPy is imported lazily: importing this module, listing the backend and asking
:attr:`CupyBackend.unavailable_reason` never fail, with or without CuPy or a
GPU. On a GPU the blocks are larger than on the CPU (fewer, bigger kernel
launches) and run one after another on the current device's stream.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

import attnref
from attnref.validation import AttentionArgs
from attnref_blocked import ArrayBackend, BlockConfig

__all__ = ["CupyBackend"]


@functools.cache
def _import_cupy() -> tuple[Any, str | None]:
    """``(cupy module or None, reason it cannot be used or None)``, checked once."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken install failing at import
        if isinstance(exc, ImportError):
            return None, "cupy is not installed"
        return None, f"cupy failed to import: {type(exc).__name__}: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device, driver too old
        return cupy, f"no CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return cupy, "no CUDA device"
    return cupy, None


class CupyBackend(ArrayBackend):
    """attnref's ops on CuPy arrays (float16 and float32 computed in float32, float64 in float64).

    Parameters
    ----------
    xp : module, optional
        The array namespace to run (default: ``cupy``, imported on first use).
        Tests pass ``numpy`` here to exercise this backend's code path on a
        machine without a GPU.
    block : BlockConfig, optional
        Block sizes (default: large blocks, few kernel launches; ``threads`` is
        always 1).
    """

    name = "cupy"
    dtypes = frozenset({"float16", "float32", "float64"})  # CuPy has no bfloat16

    def __init__(self, xp: Any = None, block: BlockConfig | None = None) -> None:
        self._xp = xp
        self.block = (
            BlockConfig(score_elements=1 << 25, max_rows=1024, tile=128, key_block=1024, row_overhead=1024)
            if block is None
            else block
        )

    @property
    def unavailable_reason(self) -> str | None:
        """None when usable; otherwise "cupy is not installed" or "no CUDA device (...)"."""
        if self._xp is not None:
            return None
        return _import_cupy()[1]

    @property
    def version(self) -> str:
        cupy = self._xp if self._xp is not None else _import_cupy()[0]
        library = "cupy not installed" if cupy is None else f"{cupy.__name__} {cupy.__version__}"
        return f"{attnref.__version__} ({library})"

    def namespace(self) -> Any:
        if self._xp is not None:
            return self._xp
        cupy, reason = _import_cupy()
        if reason is not None:
            raise attnref.BackendUnavailableError(f"the cupy backend is unavailable: {reason}")
        return cupy

    def asarray(self, array: Any) -> Any:
        """A NumPy array on the current device (dtype kept)."""
        return self.namespace().asarray(array)

    def to_numpy(self, array: Any) -> np.ndarray:
        """A device array back on the host (dtype kept)."""
        xp = self.namespace()
        return xp.asnumpy(array) if hasattr(xp, "asnumpy") else np.asarray(array)

    def block_config(self, args: AttentionArgs) -> BlockConfig:
        return dataclasses.replace(self.block, threads=1)
