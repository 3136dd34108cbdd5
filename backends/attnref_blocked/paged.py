"""Paged KV caches and merged partial states (contract sections 9 and 10), for any namespace ``xp``.

Paged attention runs sequence by sequence, each on the worker threads of
:func:`attnref_blocked.threads.run_tasks` (the longest first), and reads only
the cache blocks its table row uses (``ceil(cache_seqlens[b] / block_size)``
entries; the rest of the table is never read). With few query rows
(decoding), :func:`attnref_blocked.decode.attend_paged` streams them: each
chunk of blocks is gathered into a small reused buffer, scored and merged
with an online softmax. With many rows, or where a chunk holds a non-finite
value, the sequence's blocks are gathered into its own key array, which is
then the dense kernel ``kernel`` with the op's pattern, sinks and alignment.
Nothing the size of the whole cache is ever built.

Merging partial states selects: a part whose lse is ``-inf`` has weight
exactly 0, so a NaN in its output cannot leak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from attnref.validation import MergeArgs, PagedArgs
from attnref_blocked.decode import Buffers, attend_paged, chunk_length
from attnref_blocked.numerics import NEG_INF, compute_dtype, quiet
from attnref_blocked.plan import BlockConfig
from attnref_blocked.threads import run_tasks

__all__ = ["paged_attention", "merge_states"]


def paged_attention(
    xp: Any, q: Any, k_cache: Any, v_cache: Any, paged: PagedArgs, kernel: Callable[..., tuple[Any, Any]],
    config: BlockConfig | None = None,
) -> tuple[Any, Any]:  # fmt: skip
    """``(out, lse)``: sequence ``b`` streamed (:func:`attend_paged`) when its score chunk
    ``Hq x Lq x chunk`` fits ``config.score_elements``, else ``kernel(q_b, k_b, v_b, args_b)``
    on its gathered blocks; ``config.threads`` workers."""
    config = BlockConfig() if config is None else config
    args = paged.attention
    out = xp.zeros((args.batch, args.q_heads, args.q_len, args.value_dim), dtype=q.dtype)
    lse = xp.full((args.batch, args.q_heads, args.q_len), NEG_INF, dtype=q.dtype)
    lengths = paged.cache_seqlens.tolist()
    used = paged.used_blocks().tolist()
    chunk = chunk_length(config.key_block, paged.block_size)
    streamed = args.q_heads * args.q_len * chunk <= config.score_elements

    def run(b: int, buffers: Buffers | None) -> None:
        length = lengths[b]
        if length == 0:  # no key: output 0, lse = the sink (or -inf)
            if args.sinks is not None:
                lse[b] = xp.asarray(args.sinks.astype(q.dtype))[:, None]
            return
        table = xp.asarray(paged.block_table[b, : used[b]])
        result = None
        if buffers is not None:
            result = attend_paged(xp, q[b], k_cache, v_cache, table, length, paged.pattern, args, buffers, chunk)
        if result is None:
            k = k_cache[table].reshape(-1, *k_cache.shape[2:])[:length]  # (length, Hkv, D): this sequence only
            v = v_cache[table].reshape(-1, *v_cache.shape[2:])[:length]
            one = dataclasses.replace(args, batch=1, kv_len=length, kv_lengths=None)
            result = kernel(q[b : b + 1], k.swapaxes(0, 1)[None], v.swapaxes(0, 1)[None], one)
            result = result[0][0], result[1][0]
        out[b], lse[b] = result

    def buffers() -> Buffers | None:
        return Buffers(xp, k_cache, v_cache, chunk, args.group * args.q_len) if streamed else None

    # The streamed products stay on xp.matmul, not config.matmul: measured 1.2-1.3x faster for their small,
    # strided operands (2026-12-02), and at g * Lq <= 4 rows x 512 keys x D = 64 they are below the size
    # at which OpenBLAS starts its own threads, so the workers do not oversubscribe the cores.
    order = sorted(range(args.batch), key=lambda b: -lengths[b])  # the longest first: load balance
    # a fallback's kernel runs its own workers: the sequences then run one after the other
    run_tasks(xp, order, run, buffers, config.threads if streamed else 1)
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
