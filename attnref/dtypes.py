"""The four floating dtypes attnref knows, by name.

Backends and the conformance suite speak of dtypes by these names, so that a
NumPy dtype, a ``torch.dtype`` and a CuPy dtype of the same kind compare equal.
bfloat16 on the NumPy side is :data:`ml_dtypes.bfloat16`.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from attnref.errors import invalid_type

__all__ = ["DTYPE_NAMES", "numpy_dtype", "dtype_name", "name_of_array", "is_low_precision"]

#: Names of the supported floating dtypes, from the least to the most precise.
DTYPE_NAMES: tuple[str, ...] = ("bfloat16", "float16", "float32", "float64")

_NUMPY_DTYPES: dict[str, np.dtype] = {
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}


def dtype_name(dtype: Any, argument: str = "dtype") -> str:
    """Return the attnref name of ``dtype``.

    Accepts a name (``"float16"``), a NumPy dtype or scalar type, or any object
    whose ``str()`` is ``"torch.<name>"`` or ``"<name>"``. Raises
    :class:`~attnref.errors.InvalidTypeError` for anything that is not one of
    :data:`DTYPE_NAMES`.
    """
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    name = name.removeprefix("torch.")
    if name not in _NUMPY_DTYPES:
        raise invalid_type(argument, f"dtype {name!r}", f"one of {', '.join(DTYPE_NAMES)}")
    return name


def numpy_dtype(dtype: Any, argument: str = "dtype") -> np.dtype:
    """Return the NumPy dtype for a supported dtype given in any form."""
    return _NUMPY_DTYPES[dtype_name(dtype, argument)]


def name_of_array(array: Any) -> str:
    """Return the raw dtype name of a NumPy, PyTorch or CuPy array (not validated)."""
    return str(array.dtype).removeprefix("torch.")


def is_low_precision(name: str) -> bool:
    """True for the 16-bit dtypes, whose products real kernels accumulate in float32."""
    return name in ("float16", "bfloat16")
