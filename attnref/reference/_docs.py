"""Docstring pieces shared by the three multi-head ops."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

COMMON_PARAMETERS = """\
q : array, (B, Hq, Lq, D)
    Queries. float16, bfloat16, float32 or float64; ``k`` and ``v`` share its dtype.
k : array, (B, Hkv, Lk, D)
    Keys. ``Hq % Hkv == 0``; query head ``h`` reads kv head ``h // (Hq // Hkv)``.
v : array, (B, Hkv, Lk, Dv)
    Values.
scale : float, optional
    Multiplies ``q . k``; finite and > 0. Default ``1 / sqrt(D)``.
softcap : float, optional
    If given, ``s = softcap * tanh(s / softcap)`` before bias and mask.
bias : float array, optional
    Broadcastable to ``(B, Hq, Lq, Lk)``; added to the scores after softcap.
mask : bool array, optional
    Broadcastable to ``(B, Hq, Lq, Lk)``; True = may attend.
kv_lengths : int array (B,), optional
    Key ``j`` of batch ``b`` is allowed only if ``j < kv_lengths[b]``.
q_lengths : int array (B,), optional
    Query rows ``i >= q_lengths[b]`` are padding: output 0, lse ``-inf``.
align : {"bottom_right", "top_left"}
    Aligned position ``p = i + offset``: ``offset = Lk_b - Lq_b`` for
    ``"bottom_right"`` (the default), ``0`` for ``"top_left"``. ``Lk_b``/``Lq_b``
    are the per-batch lengths when given.
return_lse : bool
    Also return ``lse (B, Hq, Lq)``, natural log; ``-inf`` for an empty row.
return_weights : bool
    Also return the dense probabilities ``(B, Hq, Lq, Lk)`` (memory ``O(Lq Lk)``).
precision : dtype, optional
    Run the same algorithm with every intermediate rounded to this dtype
    (products of 16-bit dtypes accumulate in float32). Default float64.

Returns
-------
out : ndarray, (B, Hq, Lq, Dv)
    float64, or the ``precision`` dtype.
lse : ndarray, (B, Hq, Lq)
    Only with ``return_lse=True``.
weights : ndarray, (B, Hq, Lq, Lk)
    Only with ``return_weights=True`` (after ``lse`` when both are asked for).

Raises
------
InvalidArgumentError
    (a ``ValueError``) for bad shapes, sizes or option values.
InvalidTypeError
    (a ``TypeError``) for bad dtypes or argument types.

Notes
-----
For batch ``b``, head ``h``, query ``i`` and key ``j``::

    s_ij   = scale * (q_i . k_j)
    s_ij   = softcap * tanh(s_ij / softcap)        if softcap
    s_ij   = s_ij + bias_ij                        if bias
    A_i    = {j : pattern allows j at p = i + offset, mask_ij, j < Lk_b, i < Lq_b}
    P_ij   = exp(s_ij) / sum_{j' in A_i} exp(s_ij')   for j in A_i, else 0
    out_i  = sum_{j in A_i} P_ij v_j
    lse_i  = log sum_{j in A_i} exp(s_ij)

A row with empty ``A_i`` gives ``out_i = 0`` and ``lse_i = -inf``, never NaN.
NaN in an input reaches exactly the outputs whose formula uses it. The
reference works through queries in blocks, so its memory stays bounded."""


def with_common_parameters(func: F) -> F:
    """Substitute ``{common}`` in ``func``'s docstring by :data:`COMMON_PARAMETERS`."""
    indent = " " * 4
    text = "\n".join(indent + line if line else line for line in COMMON_PARAMETERS.splitlines())
    func.__doc__ = (func.__doc__ or "").replace("    {common}", text)
    return func
