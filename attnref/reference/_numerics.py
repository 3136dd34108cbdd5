"""Numerical pieces shared by the reference ops.

Everything here runs in one *compute dtype*: float64 by default, or the
``precision=`` dtype, in which case every intermediate is rounded to it. Matrix
products of 16-bit dtypes accumulate in float32 and round once, as every real
fp16/bf16 kernel does; elementwise steps and reductions run in the dtype.

Masking selects, it never multiplies: a disallowed key contributes nothing,
even when its score or value is NaN or infinite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnref.dtypes import numpy_dtype

__all__ = ["compute_dtype", "cast", "matmul", "masked_softmax", "weighted_sum", "apply_softcap"]


def compute_dtype(precision: Any) -> np.dtype:
    """float64 for ``precision=None``, else the NumPy dtype of ``precision``."""
    return np.dtype(np.float64) if precision is None else numpy_dtype(precision, "precision")


def cast(x: Any, dt: np.dtype) -> np.ndarray:
    """``x`` as a NumPy array of dtype ``dt`` (rounding once)."""
    return np.asarray(x).astype(dt, copy=False)


def matmul(a: np.ndarray, b: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``a @ b`` in ``dt``; 16-bit dtypes accumulate in float32, then round once.

    Non-finite inputs are data, not errors: ``inf * 0`` gives NaN silently.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        if dt.itemsize == 2:
            return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(dt)
        return np.matmul(a, b)


def apply_softcap(s: np.ndarray, cap: float, dt: np.dtype) -> np.ndarray:
    """``cap * tanh(s / cap)``, in ``dt``."""
    c = dt.type(cap)
    return (c * np.tanh(s / c)).astype(dt, copy=False)


def masked_softmax(s: np.ndarray, allowed: np.ndarray, sink: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of ``s`` over the allowed entries of its last axis, with an optional sink.

    The sink is one more logit per row, of a virtual entry that is always
    allowed and has no value (attention sinks); without one, ``sink = -inf``.
    With ``m_i = max(sink_i, max_{j allowed} s_ij)``::

        Z_i   = exp(sink_i - m_i) + sum_{j allowed} exp(s_ij - m_i)
        P_ij  = exp(s_ij - m_i) / Z_i          (j allowed; else 0)
        lse_i = m_i + log Z_i

    A row with no allowed key, or whose allowed scores are all ``-inf``, has
    ``P = 0`` and ``lse = sink_i`` (``-inf`` without a sink). NaN in an allowed
    score or in the sink makes its row's allowed entries and its lse NaN;
    disallowed entries stay 0. The last axis may be empty.

    Parameters
    ----------
    s : ndarray
        Scores; the softmax runs over the last axis, in ``s``'s dtype.
    allowed : ndarray of bool
        Broadcastable to ``s``.
    sink : ndarray, optional
        Broadcastable to ``s.shape[:-1] + (1,)``, in ``s``'s dtype.

    Returns
    -------
    P : ndarray, same shape and dtype as ``s``
    lse : ndarray, ``s.shape[:-1]``
    """
    dt = s.dtype
    neg_inf, zero, one = dt.type(-np.inf), dt.type(0), dt.type(1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        masked = np.where(allowed, s, neg_inf)
        m = masked.max(axis=-1, keepdims=True, initial=neg_inf)
        if sink is not None:
            m = np.maximum(m, sink)  # a NaN sink makes m NaN, so the whole row NaN
        m = np.where(m == neg_inf, zero, m)
        e = np.where(allowed, np.exp(masked - m), zero)
        total = e.sum(axis=-1, keepdims=True, dtype=dt)
        if sink is not None:
            total = (total + np.exp(sink - m)).astype(dt, copy=False)
        empty = total == zero
        # Disallowed keys get exactly 0, even in a NaN row (a NaN total must not reach them).
        P = np.where(empty | ~allowed, zero, e / np.where(empty, one, total))
        lse = np.where(empty, neg_inf, m + np.log(np.where(empty, one, total)))
    return P.astype(dt, copy=False), lse[..., 0].astype(dt, copy=False)


def weighted_sum(P: np.ndarray, allowed: np.ndarray, v: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``out_i = sum_{j allowed} P_ij v_j`` over the last two axes, in ``dt``.

    ``P`` is 0 at disallowed keys, so a plain product is right for finite
    ``v``. A NaN or infinite value at a disallowed key would still leak
    (``0 * nan = nan``), so non-finite entries of ``v`` are added back one by
    one, only to the rows that may see them.
    """
    finite = np.isfinite(v)
    if finite.all():
        return matmul(P, v, dt)
    out = matmul(P, np.where(finite, v, dt.type(0)), dt)
    lead = P.shape[:-2]
    for index in np.argwhere(~np.broadcast_to(finite, lead + v.shape[-2:])):
        *batch, j, c = (int(n) for n in index)
        batch = tuple(batch)
        rows = allowed[batch][:, j]
        vb = np.broadcast_to(v, lead + v.shape[-2:])[batch]
        with np.errstate(invalid="ignore"):
            out[batch][rows, c] = (out[batch][rows, c] + P[batch][rows, j] * vb[j, c]).astype(dt)
    return out
