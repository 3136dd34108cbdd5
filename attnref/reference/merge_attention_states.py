"""Merging partial attention results over disjoint key sets (split-KV, ring and cascade attention)."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnref.reference._numerics import cast, compute_dtype
from attnref.validation import check_merge, host_array

__all__ = ["merge_attention_states"]


def merge_attention_states(outs: Any, lses: Any, *, precision: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Combine the results of attention over ``N`` disjoint key sets, the reference definition.

    ``outs[n]`` and ``lses[n]`` are the output and log-sum-exp of the same
    queries over key set ``n`` (FlashInfer's ``merge_state``, vLLM's
    ``merge_attn_states``). At each position::

        lse = log sum_n exp(lses[n])
        out = sum_n exp(lses[n] - lse) * outs[n]

    computed with the maximum ``m = max_n lses[n]`` shifted out
    (``lse = m + log sum_n exp(lses[n] - m)``). Attention over the union of the
    key sets is the merge of the parts (sinks counted in exactly one part).

    A part whose lse is ``-inf`` (it saw no key) has weight exactly 0: it is
    selected away, so a NaN in its ``outs`` does not leak. Where every part's
    lse is ``-inf``: output 0, lse ``-inf``. A NaN or ``+inf`` lse makes that
    position's output and lse NaN.

    Parameters
    ----------
    outs : array, (N, ..., Dv)
        Partial outputs, any floating dtype; ``N >= 1``.
    lses : array, (N, ...)
        Their log-sum-exps (natural log), any floating dtype.
    precision : dtype, optional
        Every intermediate in this dtype instead of float64.

    Returns
    -------
    out : ndarray, (..., Dv)
    lse : ndarray, (...)

    Raises
    ------
    InvalidArgumentError
        No part, or shapes that do not match (naming ``outs`` or ``lses``).
    InvalidTypeError
        A non-floating dtype.
    """
    outs, lses = host_array("outs", outs), host_array("lses", lses)
    check_merge(outs, lses)
    dt = compute_dtype(precision)
    part_lse, part_out = cast(lses, dt), cast(outs, dt)
    neg_inf, zero = dt.type(-np.inf), dt.type(0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = part_lse.max(axis=0)  # NaN if some part's lse is NaN
        m = np.where(m == neg_inf, zero, m)  # no part saw a key: every weight below is 0
        e = np.exp((part_lse - m).astype(dt))  # a +inf lse gives inf - inf = NaN here, as it must
        total = e.sum(axis=0, dtype=dt)
        empty = total == zero
        lse = np.where(empty, neg_inf, m + np.log(np.where(empty, dt.type(1), total)))
        weight = np.where(part_lse == neg_inf, zero, e / np.where(empty, dt.type(1), total))
        # Select, never multiply, for the parts that saw no key: 0 * NaN would leak.
        out = np.where((part_lse == neg_inf)[..., None], zero, weight[..., None] * part_out).sum(axis=0, dtype=dt)
    return out.astype(dt, copy=False), lse.astype(dt, copy=False)
