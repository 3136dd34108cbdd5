"""Additive attention pooling, global or over a window (the classic NMT/classifier pooling)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from attnref.patterns import Pattern
from attnref.reference._numerics import cast, compute_dtype, masked_softmax, matmul, weighted_sum
from attnref.validation import check_additive

__all__ = ["additive_attention"]


def additive_attention(
    x: Any,
    w_in: Any,
    b_in: Any,
    w_out: Any,
    b_out: Any = None,
    *,
    mask: Any = None,
    window: Any = None,
    center: Any = None,
    precision: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attention pooling of a sequence into one vector, the reference definition.

    For batch ``b`` and position ``i``::

        e_i  = tanh(x_i @ w_in + b_in) @ w_out + b_out
        A    = {i : mask_i, and c - left <= i <= c + right if window}
        a_i  = exp(e_i) / sum_{i' in A} exp(e_i')      for i in A, else 0
        context = sum_{i in A} a_i x_i

    ``window=None`` is global attention pooling; a window is local attention
    pooling around ``c = center`` (default ``L // 2``). With no allowed
    position the context and weights are 0.

    With PyTorch modules ``linear_in = nn.Linear(Din, Dh)`` and
    ``linear_out = nn.Linear(Dh, 1)``: ``w_in = linear_in.weight.T``,
    ``b_in = linear_in.bias``, ``w_out = linear_out.weight[0]``,
    ``b_out = linear_out.bias[0]``. Keeping an odd window of ``n`` positions
    around ``L // 2`` (zeroing the other weights, then renormalising) is
    ``window=(n // 2, n // 2)``.

    Parameters
    ----------
    x : array, (B, L, Din)
        The sequence; a floating dtype shared by ``w_in``, ``b_in``, ``w_out``.
    w_in : array, (Din, Dh)
    b_in : array, (Dh,)
    w_out : array, (Dh,)
    b_out : float, optional
        Shifts every score alike, so it never changes the result; accepted for
        fidelity to ``nn.Linear(Dh, 1)``.
    mask : bool array (B, L), optional
        True = the position may be attended.
    window : int or (int or None, int or None), optional
        ``(left, right)`` around the centre, as in ``local_attention``.
    center : int or int array (B,), optional
        Window centre(s) in ``[0, L)``; only with a window. Default ``L // 2``.
    precision : dtype, optional
        Every intermediate in this dtype instead of float64.

    Returns
    -------
    context : ndarray, (B, Din)
    weights : ndarray, (B, L)
    """
    x, w_in, b_in, w_out = (np.asarray(a) for a in (x, w_in, b_in, w_out))
    if b_out is not None and not isinstance(b_out, numbers.Real):  # a Python/NumPy scalar is checked as it is
        b_out = np.asarray(b_out)
    mask = None if mask is None else np.asarray(mask)
    args = check_additive(x, w_in, b_in, w_out, b_out, mask=mask, window=window, center=center)
    dt = compute_dtype(precision)
    xc = cast(x, dt)
    hidden = np.tanh((matmul(xc, cast(w_in, dt), dt) + cast(b_in, dt)).astype(dt))
    e = matmul(hidden, cast(w_out, dt)[:, None], dt)[..., 0]
    if b_out is not None:
        e = (e + cast(b_out, dt).reshape(())).astype(dt)
    allowed = np.ones((args.batch, args.length), dtype=bool) if mask is None else mask.copy()
    if args.window is not None:
        positions = np.arange(args.length)[None, :]
        allowed &= Pattern.window(*args.window).allows(args.centers[:, None], positions)
    weights, _ = masked_softmax(e, allowed)
    context = weighted_sum(weights[:, None, :], allowed[:, None, :], xc, dt)[:, 0, :]
    return context, weights
