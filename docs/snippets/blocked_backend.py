"""A complete small backend: the three multi-head ops in NumPy, blocked over queries.

This file is the example of docs/guides/write-a-backend.md, shown there verbatim
and run by tests/test_docs.py against the reference. It is written for reading,
not speed: one batch and one query block at a time, keys limited to the range
the pattern can reach.
"""

from __future__ import annotations

import numpy as np

import attnref
from attnref import validation
from attnref.patterns import Pattern
from attnref_blocked import numerics

QUERY_BLOCK = 64


class BlockedNumpy:
    """Global, local and chunked attention, float32 and float64."""

    name = "blocked_numpy_example"
    version = "0.1.0"
    ops = frozenset({"global_attention", "local_attention", "chunked_attention"})
    dtypes = frozenset({"float32", "float64"})
    unavailable_reason = None  # always usable: NumPy is a dependency of attnref

    def asarray(self, array):
        return np.asarray(array)

    def to_numpy(self, array):
        return np.asarray(array)

    # -- the ops: validate the pattern's own argument, then the shared ones --
    def global_attention(self, q, k, v, *, causal=False, scale=None, softcap=None, bias=None, mask=None,
                         kv_lengths=None, q_lengths=None, align="bottom_right", return_lse=False, sinks=None,
                         cu_seqlens_q=None, cu_seqlens_k=None):  # fmt: skip
        pattern = validation.full_pattern(causal)
        return _attend(q, k, v, pattern, scale, softcap, bias, mask, kv_lengths, q_lengths, align, return_lse,
                       sinks, cu_seqlens_q, cu_seqlens_k)  # fmt: skip

    def local_attention(self, q, k, v, *, window, scale=None, softcap=None, bias=None, mask=None,
                        kv_lengths=None, q_lengths=None, align="bottom_right", return_lse=False, sinks=None,
                        cu_seqlens_q=None, cu_seqlens_k=None):  # fmt: skip
        pattern = validation.window_pattern(window)
        return _attend(q, k, v, pattern, scale, softcap, bias, mask, kv_lengths, q_lengths, align, return_lse,
                       sinks, cu_seqlens_q, cu_seqlens_k)  # fmt: skip

    def chunked_attention(self, q, k, v, *, chunk_size, causal=False, scale=None, softcap=None, bias=None,
                          mask=None, kv_lengths=None, q_lengths=None, align="bottom_right",
                          return_lse=False, sinks=None, cu_seqlens_q=None, cu_seqlens_k=None):  # fmt: skip
        pattern = validation.chunk_pattern(chunk_size, causal)
        return _attend(q, k, v, pattern, scale, softcap, bias, mask, kv_lengths, q_lengths, align, return_lse,
                       sinks, cu_seqlens_q, cu_seqlens_k)  # fmt: skip


def _attend(q, k, v, pattern: Pattern, scale, softcap, bias, mask, kv_lengths, q_lengths, align, return_lse,
            sinks, cu_seqlens_q, cu_seqlens_k):  # fmt: skip
    args = validation.check_attention(
        q, k, v, scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths,
        align=align, return_lse=return_lse, sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
    )  # fmt: skip
    if args.packed:  # packed sequences: each one is the dense op on its own rows and keys
        return _by_sequence(q, k, v, pattern, args, scale, softcap, align, return_lse, sinks)
    if q.dtype.name not in ("float32", "float64"):
        raise attnref.InvalidTypeError(f"q: expected float32 or float64 for this backend, got dtype {q.dtype}")
    # Accumulate in float64 and round once at the end: simple, and more accurate than the rule demands.
    out = np.zeros((args.batch, args.q_heads, args.q_len, args.value_dim))
    lse = np.full((args.batch, args.q_heads, args.q_len), -np.inf)
    sink = None if args.sinks is None else args.sinks[:, None, None]  # one logit per query head (float64)
    kv_head = np.arange(args.q_heads) // args.group  # query head h reads kv head h // group
    offsets = args.offsets()  # per-batch alignment offset: p = i + offsets[b]
    for b in range(args.batch):
        kv_len = args.kv_len if args.kv_lengths is None else int(args.kv_lengths[b])
        q_len = args.q_len if args.q_lengths is None else int(args.q_lengths[b])
        if sink is not None:
            lse[b][:, :q_len] = sink[:, :, 0]  # rows that see no key: lse is the sink (padding rows stay -inf)
        # attnref's one block planner: each block of rows with the only keys its pattern allows
        for block in pattern.plan_blocks(q_len, kv_len, offset=int(offsets[b]), block_rows=QUERY_BLOCK):
            if block.empty:
                continue  # no key for this block: out 0, lse -inf (rows >= q_len are never planned)
            rows = np.arange(block.start, block.stop)
            p = rows + offsets[b]
            lo, hi = block.key_start, block.key_stop  # every allowed key is in [lo, hi)
            keys = np.arange(lo, hi)
            s = q[b][:, rows].astype(np.float64) @ k[b][kv_head][:, keys].astype(np.float64).swapaxes(1, 2)
            s *= args.scale
            if args.softcap is not None:
                s = args.softcap * np.tanh(s / args.softcap)
            if bias is not None:
                s += np.broadcast_to(bias, args.scores_shape)[b][:, rows][:, :, keys]
            if block.full:
                allowed = np.ones(s.shape, dtype=bool)  # the pattern allows the whole block: no mask needed
            else:
                allowed = np.broadcast_to(pattern.allows(p[:, None], keys[None, :]), s.shape)
            if mask is not None:
                allowed = allowed & np.broadcast_to(mask, args.scores_shape)[b][:, rows][:, :, keys]
            values = v[b][kv_head][:, keys].astype(np.float64)
            out[b][:, rows], lse[b][:, rows] = _softmax_times(s, allowed, values, sink)
    out, lse = out.astype(q.dtype), lse.astype(q.dtype)
    return (out, lse) if return_lse else out


def _by_sequence(q, k, v, pattern, args, scale, softcap, align, return_lse, sinks):
    """Packed ``(T, H, D)`` inputs: sequence ``b`` (rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``, likewise keys)
    runs alone as a dense ``(1, H, L_b, D)`` call; a sequence without keys gives 0 and lse = the sink."""
    out = np.zeros((q.shape[0], args.q_heads, args.value_dim), dtype=q.dtype)
    lse = np.full((q.shape[0], args.q_heads), -np.inf, dtype=q.dtype)
    cq, ck = args.cu_seqlens_q.tolist(), args.cu_seqlens_k.tolist()
    for q0, q1, k0, k1 in zip(cq[:-1], cq[1:], ck[:-1], ck[1:], strict=True):
        if q1 > q0 and k1 == k0 and args.sinks is not None:
            lse[q0:q1] = args.sinks
        if q1 == q0 or k1 == k0:
            continue
        dense = [a.swapaxes(0, 1)[None] for a in (q[q0:q1], k[k0:k1], v[k0:k1])]  # (1, H, L_b, D) views
        o, s = _attend(*dense, pattern, scale, softcap, None, None, None, None, align, True, sinks, None, None)
        out[q0:q1], lse[q0:q1] = o[0].swapaxes(0, 1), s[0].swapaxes(0, 1)
    return (out, lse) if return_lse else out


def _softmax_times(s, allowed, values, sink):
    """``softmax(s) @ values`` over the allowed keys (and the sink, a key without a value), and the lse;
    empty rows give 0 and -inf (or the sink).

    attnref's own blocked backends share these two steps (``attnref_blocked.numerics``): the softmax
    selects (a NaN at a masked key stays out), and the weighted sum adds a non-finite value only to
    the rows allowed to see it (``0 * nan`` would be NaN).
    """
    with numerics.quiet(np):
        P, lse = numerics.masked_softmax(np, s, allowed, sink=sink)
        out = numerics.weighted_sum(np, P, values, lambda columns: allowed[..., columns])
    return out, lse


@attnref.hookimpl
def attnref_backends():
    """The hook the registry calls: this plugin provides one backend."""
    return [BlockedNumpy()]
