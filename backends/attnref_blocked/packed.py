"""Packed variable-length sequences (contract section 8): each sequence runs alone, without padding.

``q (Tq, Hq, D)``, ``k (Tk, Hkv, D)``, ``v (Tk, Hkv, Dv)`` hold ``B`` sequences
at the offsets ``cu_seqlens_q``/``cu_seqlens_k``. Sequence ``b`` is the dense
op on its own rows and keys: a ``(1, H, L_b, D)`` view of the packed arrays
(no copy, no padding to the longest sequence) goes through the dense kernel,
with its own lengths and alignment, and its results are written back into the
packed outputs. A sequence without rows does nothing; one without keys gives
output 0 and lse ``sinks[h]`` (``-inf`` without sinks), and adds its ``dlse``
to ``dsinks``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from attnref.validation import AttentionArgs
from attnref_blocked.numerics import NEG_INF, quiet, to_host

__all__ = ["by_sequence", "vjp_by_sequence"]


def _sequences(args: AttentionArgs) -> Iterator[tuple[slice, slice, AttentionArgs]]:
    """``(rows, keys, args)`` of every sequence with at least one row."""
    cq, ck = args.cu_seqlens_q.tolist(), args.cu_seqlens_k.tolist()
    for q0, q1, k0, k1 in zip(cq[:-1], cq[1:], ck[:-1], ck[1:], strict=True):
        if q1 > q0:
            one = dataclasses.replace(
                args, batch=1, q_len=q1 - q0, kv_len=k1 - k0, kv_lengths=None, q_lengths=None,
                cu_seqlens_q=None, cu_seqlens_k=None,
            )  # fmt: skip
            yield slice(q0, q1), slice(k0, k1), one


def _dense(x: Any) -> Any:
    """``(L, H, ...)`` packed rows as a ``(1, H, L, ...)`` view."""
    return x.swapaxes(0, 1)[None]


def _packed(x: Any) -> Any:
    """The inverse of :func:`_dense`: ``(1, H, L, ...)`` as ``(L, H, ...)``."""
    return x[0].swapaxes(0, 1)


def _sink_weight(xp: Any, sinks: Any) -> Any:
    """The sink's weight in a row without keys: 1, 0 for a ``-inf`` sink (no sink), NaN for a NaN sink."""
    with quiet(xp):
        return xp.where(sinks == NEG_INF, 0, xp.exp(sinks - sinks))


def by_sequence(
    xp: Any, q: Any, k: Any, v: Any, args: AttentionArgs, kernel: Callable[..., tuple[Any, Any]]
) -> tuple[Any, Any]:
    """``(out, lse)`` of ``kernel(q, k, v, args)``, sequence by sequence when the inputs are packed."""
    if not args.packed:
        return kernel(q, k, v, args)
    out = xp.zeros((q.shape[0], args.q_heads, args.value_dim), dtype=q.dtype)
    lse = xp.full((q.shape[0], args.q_heads), NEG_INF, dtype=q.dtype)
    for rows, keys, one in _sequences(args):
        if one.kv_len == 0:  # no key: output 0, lse = the sink (or -inf)
            if args.sinks is not None:
                lse[rows] = xp.asarray(args.sinks.astype(q.dtype))
            continue
        seq_out, seq_lse = kernel(_dense(q[rows]), _dense(k[keys]), _dense(v[keys]), one)
        out[rows], lse[rows] = _packed(seq_out), _packed(seq_lse)
    return out, lse


def vjp_by_sequence(
    xp: Any, q: Any, k: Any, v: Any, dout: Any, dlse: Any, sinks: Any, args: AttentionArgs,
    kernel: Callable[..., tuple[Any, ...]],
) -> tuple[Any, ...]:  # fmt: skip
    """The gradients of ``kernel(q, k, v, dout, dlse, args)``, sequence by sequence when packed
    (``dsinks`` summed over the sequences)."""
    if not args.packed:
        return kernel(q, k, v, dout, dlse, args)
    dq, dk, dv = xp.zeros(q.shape, dtype=q.dtype), xp.zeros(k.shape, dtype=k.dtype), xp.zeros(v.shape, dtype=v.dtype)
    dsinks = None if sinks is None else np.zeros(args.q_heads)  # host float64: a few numbers
    for rows, keys, one in _sequences(args):
        if one.kv_len == 0:  # no key: each row adds its dlse to dsinks, nothing else
            if dsinks is not None and dlse is not None:
                weight = _sink_weight(np, args.sinks)
                dsinks += weight * to_host(xp, dlse[rows]).astype(np.float64).sum(axis=0)
            continue
        d_lse = None if dlse is None else _dense(dlse[rows])
        grads = kernel(_dense(q[rows]), _dense(k[keys]), _dense(v[keys]), _dense(dout[rows]), d_lse, one)
        dq[rows], dk[keys], dv[keys] = _packed(grads[0]), _packed(grads[1]), _packed(grads[2])
        if dsinks is not None:
            dsinks += to_host(xp, grads[-1]).astype(np.float64)
    if dsinks is None:
        return dq, dk, dv
    return dq, dk, dv, xp.asarray(dsinks.astype(q.dtype))
