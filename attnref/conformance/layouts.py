"""Memory layouts a caller really passes, built with the backend's own array operations.

A layout case hands a backend the same values as a plain case, but in a native
array whose memory is laid out differently. The suite never imports a
backend's library: it converts a NumPy array with the backend's ``asarray``,
then reshapes memory with the array API of the native array's own library,
found through ``array-api-compat`` (NumPy, CuPy, PyTorch and any library that
implements the array API standard):

``transposed``
    a ``(B, L, H, D)`` array viewed as ``(B, H, L, D)`` (``permute_dims``): the
    layout of ``q.view(B, L, H, D).transpose(1, 2)`` after a projection.
``sliced``
    every other element of a twice-as-long last axis (a non-unit innermost
    stride), as a slice of a fused QKV buffer gives.
``negative-strides``
    the sequence axis read backwards (``a[:, :, ::-1]`` of reversed memory);
    libraries without negative strides (PyTorch) get ``flip``, a copy.
``broadcast``
    one batch entry broadcast over the batch (``broadcast_to``: stride 0), as a
    shared prefix of K/V is passed; the case's values are equal across the batch.
``readonly``
    a read-only view where the library has them (NumPy); elsewhere the array as is.
``fortran``
    column-major (Fortran) order: the reversed-axes array, viewed back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["LAYOUTS", "native_layout"]


def _namespace(native: Any) -> Any:
    from array_api_compat import array_namespace

    return array_namespace(native)


def _transposed(asarray: Callable[[np.ndarray], Any], a: np.ndarray) -> Any:
    order = (0, 2, 1, 3) if a.ndim == 4 else tuple(reversed(range(a.ndim)))
    native = asarray(np.ascontiguousarray(a.transpose(order)))
    return _namespace(native).permute_dims(native, order)  # the inverse of a swap is itself


def _sliced(asarray: Callable[[np.ndarray], Any], a: np.ndarray) -> Any:
    wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), dtype=a.dtype)
    wide[..., 1::2] = a
    wide[..., 0::2] = np.nan  # a kernel that reads the gaps gets NaN, never a plausible number
    return asarray(wide)[..., 1::2]


def _negative_strides(asarray: Callable[[np.ndarray], Any], a: np.ndarray) -> Any:
    axis = 2 if a.ndim == 4 else 1
    native = asarray(np.ascontiguousarray(np.flip(a, axis=axis)))
    index = tuple(slice(None, None, -1) if i == axis else slice(None) for i in range(a.ndim))
    try:
        return native[index]
    except (ValueError, IndexError, TypeError, NotImplementedError):  # no negative strides (PyTorch)
        return _namespace(native).flip(native, axis=axis)


def _broadcast(asarray: Callable[[np.ndarray], Any], a: np.ndarray) -> Any:
    if not np.array_equal(a, np.broadcast_to(a[:1], a.shape), equal_nan=True):
        raise ValueError("catalogue problem: a 'broadcast' input must be equal across its first axis")
    native = asarray(np.ascontiguousarray(a[:1]))
    return _namespace(native).broadcast_to(native, a.shape)


def _readonly(asarray: Callable[[np.ndarray], Any], a: np.ndarray) -> Any:
    from array_api_compat import is_numpy_array

    native = asarray(a)
    if is_numpy_array(native):
        native = native.view()
        native.flags.writeable = False
    return native


def _fortran(asarray: Callable[[np.ndarray], Any], a: np.ndarray) -> Any:
    order = tuple(reversed(range(a.ndim)))
    native = asarray(np.ascontiguousarray(a.transpose(order)))
    return _namespace(native).permute_dims(native, order)


#: Each layout's builder: ``(asarray, numpy_array) -> native array with those values``.
LAYOUTS: dict[str, Callable[[Callable[[np.ndarray], Any], np.ndarray], Any]] = {
    "transposed": _transposed,
    "sliced": _sliced,
    "negative-strides": _negative_strides,
    "broadcast": _broadcast,
    "readonly": _readonly,
    "fortran": _fortran,
}


def native_layout(backend: Any, array: np.ndarray, layout: str | None) -> Any:
    """``array`` as ``backend``'s native array in ``layout`` (``None``: plain ``asarray``)."""
    if layout is None:
        return backend.asarray(array)
    return LAYOUTS[layout](backend.asarray, np.asarray(array))
