"""Reference vector-Jacobian products of the three multi-head ops.

For upstream gradients ``dout`` (of ``out``) and ``dlse`` (of ``lse``, optional),
with ``P`` the attention probabilities of the forward pass::

    dV   = P^T dout                                  (summed over the query heads of a kv head)
    dP   = dout V^T
    dS   = P * (dP - rowsum(dout * out) + dlse)      (0 wherever P is 0: disallowed keys)
    dS0  = dS * (1 - tanh(s0 / softcap)^2)           if softcap, else dS
    dQ   = scale * dS0 K,    dK = scale * dS0^T Q
    dbias = dS, summed over the axes ``bias`` broadcasts along

``s0 = scale * q . k`` is the score before softcap. The computation runs in
float64, in the same query blocks as the forward reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnref.errors import invalid_value
from attnref.patterns import Pattern
from attnref.reference._multihead import allowed_keys, block_scores, query_blocks
from attnref.reference._numerics import masked_softmax, weighted_sum
from attnref.validation import check_attention, chunk_pattern, full_pattern, window_pattern

__all__ = ["global_attention_vjp", "local_attention_vjp", "chunked_attention_vjp"]


def global_attention_vjp(q: Any, k: Any, v: Any, dout: Any, *, dlse: Any = None, causal: bool = False, **kwargs: Any):
    """Gradients of :func:`~attnref.reference.global_attention`.

    Parameters
    ----------
    q, k, v
        The forward inputs.
    dout : array, (B, Hq, Lq, Dv)
        Gradient of the loss with respect to ``out``.
    dlse : array, (B, Hq, Lq), optional
        Gradient with respect to ``lse`` (default 0).
    causal, **kwargs
        The forward op's keyword arguments (``scale``, ``softcap``, ``bias``,
        ``mask``, ``kv_lengths``, ``q_lengths``, ``align``).

    Returns
    -------
    tuple
        ``(dq, dk, dv)``, float64, shaped like ``q``, ``k``, ``v``; with a ``bias``,
        ``(dq, dk, dv, dbias)``, ``dbias`` shaped like ``bias``.
    """
    return _attention_vjp(q, k, v, dout, full_pattern(causal), dlse=dlse, **kwargs)


def local_attention_vjp(q: Any, k: Any, v: Any, dout: Any, *, window: Any, dlse: Any = None, **kwargs: Any):
    """Gradients of :func:`~attnref.reference.local_attention` (see :func:`global_attention_vjp`)."""
    return _attention_vjp(q, k, v, dout, window_pattern(window), dlse=dlse, **kwargs)


def chunked_attention_vjp(
    q: Any, k: Any, v: Any, dout: Any, *, chunk_size: Any, causal: bool = False, dlse: Any = None, **kwargs: Any
):
    """Gradients of :func:`~attnref.reference.chunked_attention` (see :func:`global_attention_vjp`)."""
    return _attention_vjp(q, k, v, dout, chunk_pattern(chunk_size, causal), dlse=dlse, **kwargs)


def _upstream(argument: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise invalid_value(argument, f"shape {array.shape}", f"shape {shape}, the shape of the forward output")
    return array


def _attention_vjp(
    q: Any,
    k: Any,
    v: Any,
    dout: Any,
    pattern: Pattern,
    *,
    dlse: Any = None,
    scale: Any = None,
    softcap: Any = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: Any = "bottom_right",
) -> tuple[np.ndarray, ...]:
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    bias = None if bias is None else np.asarray(bias)
    mask = None if mask is None else np.asarray(mask)
    args = check_attention(
        q, k, v, scale=scale, softcap=softcap, bias=bias, mask=mask,
        kv_lengths=kv_lengths, q_lengths=q_lengths, align=align,
    )  # fmt: skip
    B, Hq, Lq, Lk = args.scores_shape
    g = args.group
    dout = _upstream("dout", dout, (B, Hq, Lq, args.value_dim))
    dlse = np.zeros((B, Hq, Lq)) if dlse is None else _upstream("dlse", dlse, (B, Hq, Lq))
    f64 = np.dtype(np.float64)
    qc = q.astype(f64)
    kc = np.repeat(k.astype(np.float64), g, axis=1)
    vc = np.repeat(v.astype(np.float64), g, axis=1)
    dq, dk, dv = np.zeros_like(qc), np.zeros_like(kc), np.zeros_like(vc)
    bias4 = None if bias is None else np.zeros((1,) * (4 - bias.ndim) + bias.shape)
    for rows in query_blocks(args):
        s0, s = block_scores(args, qc, kc, bias, rows, f64)
        allowed = allowed_keys(args, pattern, mask, rows)
        P, _ = masked_softmax(s, allowed)
        out = weighted_sum(P, allowed, vc, f64)
        d_out = dout[:, :, rows]
        dv += np.swapaxes(P, -1, -2) @ d_out
        row_dot = np.sum(d_out * out, axis=-1, keepdims=True)
        dS = np.where(allowed, P * (d_out @ np.swapaxes(vc, -1, -2) - row_dot + dlse[:, :, rows, None]), 0.0)
        if bias4 is not None:
            _accumulate_bias(bias4, dS, rows)
        if args.softcap is not None:
            dS = dS * (1.0 - np.tanh(s0 / args.softcap) ** 2)
        dq[:, :, rows] = args.scale * (dS @ kc)
        dk += args.scale * (np.swapaxes(dS, -1, -2) @ qc[:, :, rows])
    # query head h read kv head h // g: sum the gradients of the g heads sharing it
    dk = dk.reshape(B, args.kv_heads, g, Lk, -1).sum(axis=2)
    dv = dv.reshape(B, args.kv_heads, g, Lk, -1).sum(axis=2)
    if bias4 is None:
        return dq, dk, dv
    return dq, dk, dv, bias4.reshape(bias.shape)


def _accumulate_bias(bias4: np.ndarray, dS: np.ndarray, rows: slice) -> None:
    """Add one block's ``dS`` into the bias gradient, summing over broadcast axes."""
    axes = tuple(a for a in (0, 1, 3) if bias4.shape[a] == 1 and dS.shape[a] != 1)
    reduced = dS.sum(axis=axes, keepdims=True) if axes else dS
    if bias4.shape[2] == 1:
        bias4 += reduced.sum(axis=2, keepdims=True)
    else:
        bias4[:, :, rows] += reduced
