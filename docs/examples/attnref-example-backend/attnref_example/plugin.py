"""The ``example`` backend: plain NumPy global and local attention, float32 and float64.

What a backend author writes: an object with ``name``, ``version``, ``ops``,
``dtypes``, ``unavailable_reason``, ``asarray``/``to_numpy`` and one method per
op, and a hook returning it. Validation and the allowed-key rules come from
attnref itself, so this backend rejects exactly what the reference rejects
and plans nothing by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import attnref
from attnref.patterns import Pattern
from attnref.validation import check_attention, full_pattern, window_pattern
from attnref_example import __version__


class ExampleBackend:
    """Dense NumPy attention computed in the input dtype."""

    name = "example"
    version = __version__
    ops = frozenset({"global_attention", "local_attention"})
    dtypes = frozenset({"float32", "float64"})
    unavailable_reason = None  # NumPy is always there

    def asarray(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def global_attention(self, q, k, v, *, causal=False, **options):
        return _attend(q, k, v, full_pattern(causal), **options)

    def local_attention(self, q, k, v, *, window, **options):
        return _attend(q, k, v, window_pattern(window), **options)


def _attend(
    q,
    k,
    v,
    pattern: Pattern,
    *,
    scale=None,
    softcap=None,
    bias=None,
    mask=None,
    kv_lengths=None,
    q_lengths=None,
    align="bottom_right",
    return_lse=False,
    sinks=None,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
):
    """Scores, softcap, bias, the allowed keys, a masked softmax and the weighted sum."""
    for feature, value in (("sinks", sinks), ("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if value is not None:  # declined, not failed: the suite reports these cases as unsupported
            raise attnref.UnsupportedError(feature, "this example has no sinks and no packed sequences")
    args = check_attention(
        q,
        k,
        v,
        scale=scale,
        softcap=softcap,
        bias=bias,
        mask=mask,
        kv_lengths=kv_lengths,
        q_lengths=q_lengths,
        align=align,
        return_lse=return_lse,
    )
    dt = q.dtype
    k = np.repeat(k, args.group, axis=1)  # query head h reads kv head h // group
    v = np.repeat(v, args.group, axis=1)
    s = (q @ np.swapaxes(k, -1, -2)) * dt.type(args.scale)
    if args.softcap is not None:
        cap = dt.type(args.softcap)
        s = cap * np.tanh(s / cap)
    if bias is not None:
        s = s + bias
    allowed = np.broadcast_to(args.allowed(pattern, mask), args.scores_shape)  # pattern, lengths, mask
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        masked = np.where(allowed, s, -np.inf)  # select, never add: NaN at a masked key stays out
        m = masked.max(axis=-1, keepdims=True)
        m = np.where(m == -np.inf, 0, m)  # an empty (or all -inf) row: no shift, total 0 below
        e = np.where(allowed, np.exp(masked - m), 0)
        total = e.sum(axis=-1, keepdims=True)
        empty = total == 0
        p = np.where(empty, 0, e / np.where(empty, 1, total))
        # Only allowed keys contribute, so a NaN or inf value at a masked key never leaks.
        out = np.where(allowed[..., None], p[..., None] * v[:, :, None], 0).sum(axis=-2)
        lse = np.where(empty, -np.inf, m + np.log(np.where(empty, 1, total)))[..., 0]
    out = out.astype(dt)
    return (out, lse.astype(dt)) if return_lse else out


@attnref.hookimpl
def attnref_backends():
    """The backends this plugin provides."""
    return [ExampleBackend()]
