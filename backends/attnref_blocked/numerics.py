"""The numerical steps every blocked kernel shares, for any NumPy-like namespace ``xp``.

One masked softmax and one weighted sum for all the blocked code (the forward
and backward kernels and the pooling ops); the float64 reference keeps its own,
literal pair in :mod:`attnref.reference`. Both follow one rule: **masking
selects, it never multiplies**. A disallowed key contributes nothing, even when
its score or value is NaN or infinite, and an allowed key's non-finite value
reaches its row even where its weight is 0 (``0 * nan = nan``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "NEG_INF",
    "compute_dtype",
    "quiet",
    "to_host",
    "nonfinite_rows",
    "masked_softmax",
    "weighted_sum",
    "add_nonfinite_terms",
]

NEG_INF = float("-inf")


def compute_dtype(dtype: Any) -> np.dtype:
    """The dtype the blocked code computes in: float64 for float64 inputs, float32 for every
    other floating dtype (16-bit inputs are computed in float32 and rounded once at the end)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def quiet(xp: Any) -> Any:
    """NumPy's floating-point warnings off: non-finite inputs are data, and ``log(0)`` or
    ``inf - inf`` are expected steps here. (CuPy raises no such warnings.)"""
    if xp is np:
        return np.errstate(divide="ignore", invalid="ignore", over="ignore")
    return contextlib.nullcontext()


def to_host(xp: Any, array: Any) -> np.ndarray:
    """``array`` as a NumPy array (copied from the device for CuPy)."""
    return array.get() if xp is not np and hasattr(array, "get") else np.asarray(array)


def nonfinite_rows(xp: Any, values: Any) -> np.ndarray:
    """Host indices ``j`` of the rows ``values[..., j, :]`` holding a NaN or inf (any leading index)."""
    bad = ~xp.isfinite(values)
    return np.flatnonzero(to_host(xp, bad.any(axis=tuple(a for a in range(values.ndim) if a != values.ndim - 2))))


def masked_softmax(
    xp: Any, s: Any, allowed: Any = None, *, sink: Any = None, overwrite: bool = False
) -> tuple[Any, Any]:
    """Softmax of ``s`` over the allowed entries of its last axis, and its log-sum-exp.

    With ``m_i = max_{j allowed} s_ij`` (and the sink's logit, if given)::

        lse_i = m_i + log(exp(sink_i - m_i) + sum_{j allowed} exp(s_ij - m_i))
        P_ij  = exp(s_ij - lse_i)   (j allowed; else exactly 0)

    ``allowed`` (bool, broadcastable to ``s``; None = every entry, the scores
    already ``-inf`` where disallowed) selects: disallowed entries are exactly
    0, even in a row made NaN by an allowed NaN score. ``sink`` (broadcastable
    to ``s.shape[:-1] + (1,)``) is one more, always allowed key without a value
    (contract section 7; ``-inf`` = no sink). A row with nothing allowed (or only
    ``-inf`` scores) is all 0 with lse ``-inf``, or the sink. With ``overwrite``
    (and no ``allowed``), ``P`` is computed in ``s``'s memory. Returns ``(P,
    lse)``, ``lse`` of shape ``s.shape[:-1]``.
    """
    dt = s.dtype.type
    masked = s if allowed is None else xp.where(allowed, s, dt(NEG_INF))
    m = masked.max(axis=-1, keepdims=True)
    if sink is not None:
        m = xp.maximum(m, sink)  # a NaN sink: NaN everywhere in its rows
    m = xp.where(m == NEG_INF, dt(0), m)  # an empty row must not compute -inf - -inf
    if overwrite and allowed is None:
        e = xp.subtract(s, m, out=s)
        xp.exp(e, out=e)
    else:
        e = xp.exp(masked - m)
    total = e.sum(axis=-1, keepdims=True)
    if sink is not None:
        total = total + xp.exp(sink - m)
    lse = (m + xp.log(total))[..., 0]  # an empty row: 0 + log(0) = -inf
    inverse = 1 / xp.where(total == 0, dt(1), total)  # an empty row: 0 * 1
    P = xp.multiply(e, inverse, out=e) if overwrite and allowed is None else e * inverse
    if allowed is not None:
        P = xp.where(allowed, P, dt(0))
    return P, lse


def weighted_sum(
    xp: Any,
    weights: Any,
    values: Any,
    allowed: Callable[[Any], Any],
    bad: np.ndarray | None = None,
    matmul: Callable[..., Any] | None = None,
) -> Any:
    """``out[..., i, :] = sum over allowed j of weights[..., i, j] * values[..., j, :]``.

    ``weights (..., n, m)`` must be 0 at disallowed ``(i, j)``, so one matrix
    product is right for finite values. A NaN or infinite value would still
    leak through a 0 weight (``0 * nan = nan``), so the rows ``j`` of ``values``
    listed in ``bad`` (default: found here) are zeroed for the product, and their
    terms are added back with IEEE rules only where allowed
    (:func:`add_nonfinite_terms`). ``allowed(columns)`` (an index array of
    ``xp``) returns the allowed mask of those columns, broadcastable to
    ``weights[..., columns]``. ``matmul`` is the product to use (default ``xp.matmul``).
    """
    matmul = xp.matmul if matmul is None else matmul
    if bad is None:
        bad = nonfinite_rows(xp, values)
    if bad.size == 0:
        return matmul(weights, values)
    index = xp.asarray(bad)
    picked = values[..., index, :]
    clean = xp.where(xp.isfinite(values), values, xp.zeros((), dtype=values.dtype))
    result = matmul(weights, clean)
    add_nonfinite_terms(xp, result, weights[..., index], picked, allowed(index))
    return result


def add_nonfinite_terms(xp: Any, out: Any, weights: Any, values: Any, allowed: Any) -> None:
    """``out += sum_c where(allowed[..., c] & ~isfinite(values[..., c, :]), weights[..., c] * values[..., c, :], 0)``.

    The second half of :func:`weighted_sum`, for kernels that ran the product
    on zeroed values themselves: ``weights (..., n, c)``, ``values (..., c, d)``
    and ``allowed`` (broadcastable to ``weights``) hold only the few columns
    ``c`` whose values are non-finite; ``out (..., n, d)`` is updated in place.
    """
    zero = xp.zeros((), dtype=out.dtype)
    allowed = xp.broadcast_to(allowed, weights.shape)
    for c in range(weights.shape[-1]):
        vc = values[..., c : c + 1, :]  # (..., 1, d)
        keep = allowed[..., c : c + 1] & ~xp.isfinite(vc)  # (..., n, d)
        out += xp.where(keep, weights[..., c : c + 1] * vc, zero)
