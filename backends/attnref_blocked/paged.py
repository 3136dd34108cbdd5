"""Paged KV caches and merged partial states (contract sections 9 and 10), for any namespace ``xp``.

Paged attention runs sequence by sequence: sequence ``b`` reads only the
cache blocks its table row uses (``ceil(cache_seqlens[b] / block_size)``
entries; the rest of the table is never read), gathered into its own key
array, which is then dense attention with the op's pattern, sinks and
alignment. Nothing the size of the whole cache is ever built.

Merging partial states selects: a part whose lse is ``-inf`` has weight
exactly 0, so a NaN in its output cannot leak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from attnref.validation import MergeArgs, PagedArgs
from attnref_blocked.numerics import NEG_INF, compute_dtype, quiet

__all__ = ["paged_attention", "merge_states"]


def paged_attention(
    xp: Any, q: Any, k_cache: Any, v_cache: Any, paged: PagedArgs, kernel: Callable[..., tuple[Any, Any]]
) -> tuple[Any, Any]:
    """``(out, lse)``: ``kernel(q_b, k_b, v_b, args_b)`` per sequence on its gathered blocks."""
    args = paged.attention
    out = xp.zeros((args.batch, args.q_heads, args.q_len, args.value_dim), dtype=q.dtype)
    lse = xp.full((args.batch, args.q_heads, args.q_len), NEG_INF, dtype=q.dtype)
    used = paged.used_blocks().tolist()
    for b, length in enumerate(paged.cache_seqlens.tolist()):
        if length == 0:  # no key: output 0, lse = the sink (or -inf)
            if args.sinks is not None:
                lse[b] = xp.asarray(args.sinks.astype(q.dtype))[:, None]
            continue
        blocks = xp.asarray(paged.block_table[b, : used[b]])
        k = k_cache[blocks].reshape(-1, *k_cache.shape[2:])[:length]  # (length, Hkv, D): this sequence only
        v = v_cache[blocks].reshape(-1, *v_cache.shape[2:])[:length]
        one = dataclasses.replace(args, batch=1, kv_len=length, kv_lengths=None)
        out[b : b + 1], lse[b : b + 1] = kernel(q[b : b + 1], k.swapaxes(0, 1)[None], v.swapaxes(0, 1)[None], one)
    return out, lse


def merge_states(xp: Any, outs: Any, lses: Any, merge: MergeArgs) -> tuple[Any, Any]:
    """``lse = log sum_n exp(lses[n])``, ``out = sum_n exp(lses[n] - lse) outs[n]``.

    A ``-inf`` part has weight exactly 0; where every part is ``-inf``, output 0
    and lse ``-inf``; a NaN or ``+inf`` lse makes its position's output and lse NaN.
    """
    dt = compute_dtype(outs.dtype)
    o, s = outs.astype(dt), lses.astype(dt)
    with quiet(xp):
        m = s.max(axis=0)  # NaN if any part is NaN
        poisoned = xp.isnan(m) | (m == float("inf"))
        shift = xp.where(xp.isfinite(m), m, dt.type(0))
        w = xp.where(s == NEG_INF, dt.type(0), xp.exp(s - shift))
        total = w.sum(axis=0)
        lse = xp.where(total == 0, dt.type(NEG_INF), shift + xp.log(total))
        w = w / xp.where(total == 0, dt.type(1), total)
        out = xp.zeros(o.shape[1:], dtype=dt)
        for n in range(merge.parts):  # select, never multiply: a -inf part's NaN output stays out
            out += xp.where((s[n] == NEG_INF)[..., None], dt.type(0), w[n][..., None] * o[n])
        out = xp.where(poisoned[..., None], dt.type("nan"), out)
        lse = xp.where(poisoned, dt.type("nan"), lse)
    return out.astype(outs.dtype, copy=False), lse.astype(lses.dtype, copy=False)
