"""Paged attention read block by block from the cache (contract section 9), without a copy
of any sequence's keys.

For a sequence whose query rows all see the same key range ``[lo, hi)`` (one
decoding step: ``Lq = 1`` with causal attention, a window, or none), the keys
are streamed in chunks of whole cache blocks:

1. each chunk's blocks are gathered (``index_select(..., out=)``) into one
   reused buffer, small enough to stay in the CPU's cache, and scored,
   ``s = (scale q) k^T`` (then ``softcap tanh(s / softcap)``), with the query
   heads of a kv head stacked as the rows of one product (grouped-query
   attention without repeating K);
2. slots of the first and last chunk outside ``[lo, hi)`` (a block's positions
   before ``lo`` or past the sequence's end, and buffer rows past the last
   block) become ``-inf`` by selection, then one softmax over all the scores,
   :func:`attnref_torch._numerics.softmax_rows` (``P``, and ``lse``);
3. each chunk's values are gathered the same way (the slots outside the range
   set to 0, so that a NaN there meets no 0 weight) and ``P_chunk @ v_chunk``
   is accumulated.

The cache is read about once, as attention over keys gathered beforehand would
read them; the Python steps are a few per chunk. Products multiply as the
reference does (an allowed key's NaN or infinity reaches the output, even at
weight 0), and a row whose scores are all ``-inf`` gets 0 and lse ``-inf``.

Speed (issue 11's decode case: B=16, Hq=32, Hkv=8, D=64, block 16, cache
lengths 1k..32k, fp32): 1.17x to 1.40x the time of SDPA per sequence on keys
gathered beforehand (target 1.2x), against 5.7x for gathering and then SDPA,
each with one thread at load average 5 to 7, where the ratios move by 20% from
run to run. The products have only ``Hq / Hkv`` rows per kv head, the shape of
SDPA's own decode; the extra time is the gather into the buffer. Known gap:
two threads could not be timed on that loaded machine (every parallel region
then waits for a descheduled thread), so the quiet two-thread ratio is the
asv run's to show.

No gradient: ``index_select(out=)`` records none; the caller takes its general
path then, and for rows that see different keys (a prefill step with ``Lq >
1`` under a causal rule) or scores larger than :data:`SCORES_MAX_ELEMENTS`.
Nothing here reads a tensor's values on the host: the block table and lengths
are host data by contract.
"""

from __future__ import annotations

import torch

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_torch._numerics import compute_dtype, softmax_rows

__all__ = ["CHUNK_BYTES", "SCORES_MAX_ELEMENTS", "key_range", "streamed_attention"]

#: Bytes of one chunk of gathered keys (compute dtype): about a core's share of the
#: last-level cache, so that the gathered chunk is read back from the cache.
CHUNK_BYTES = 1 << 20
#: Largest ``Hq x Lq x (hi - lo)`` score array of one sequence the streamed path builds.
SCORES_MAX_ELEMENTS = 1 << 24

NEG_INF = float("-inf")


def key_range(pattern: Pattern, one: AttentionArgs) -> tuple[int, int] | None:
    """``(lo, hi)``, the keys every query row of the one sequence ``one`` sees, when all its rows
    see exactly that range (``lo >= hi``: none); None when its rows see different keys or the
    scores would exceed :data:`SCORES_MAX_ELEMENTS`."""
    first = int(one.offsets()[0])
    last = first + one.q_len - 1
    lo, hi = pattern.key_range(first, last, one.kv_len)
    if lo >= hi:
        return lo, hi
    if not pattern.block_is_full(first, last, lo, hi - 1):
        return None
    return (lo, hi) if one.q_heads * one.q_len * (hi - lo) <= SCORES_MAX_ELEMENTS else None


def streamed_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    blocks: torch.Tensor,
    keys: tuple[int, int],
    one: AttentionArgs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out (1, Hq, Lq, Dv), lse (1, Hq, Lq))`` in ``q``'s dtype of one sequence ``q (1, Hq, Lq, D)``
    over its keys ``keys = (lo, hi)`` (``lo < hi``), which every row sees; ``blocks`` is its block
    table row (a tensor on ``q``'s device; only the entries that hold ``lo..hi-1`` are read)."""
    lo, hi = keys
    dt = compute_dtype(q.dtype)
    bs = k_cache.shape[1]
    rows = one.group * one.q_len
    qg = (q[0].to(dt) * one.scale).reshape(one.kv_heads, rows, one.head_dim)  # query head h -> kv head h // G
    first = lo // bs
    used = blocks[first : -(-hi // bs)]  # the blocks that hold keys lo..hi-1
    per_chunk = max(1, min(len(used), CHUNK_BYTES // (bs * one.kv_heads * one.head_dim * _size(dt))))
    width = per_chunk * bs
    indices = used.split(per_chunk)
    start = first * bs  # position of the first buffer slot
    tail = hi - start - (len(indices) - 1) * width  # valid slots of the last chunk
    s = q.new_empty((len(indices), one.kv_heads, rows, width), dtype=dt)
    k_stream = _Stream(k_cache, per_chunk, dt)
    k_t = k_stream.full.permute(1, 2, 0)  # the buffer as (Hkv, D, width): the views are made once
    for index, s_c in zip(indices, s.unbind(0), strict=True):
        k_stream.gather(index)
        torch.bmm(qg, k_t, out=s_c)
    if one.softcap is not None:
        s.div_(one.softcap).tanh_().mul_(one.softcap)
    s[0, ..., : lo - start] = NEG_INF
    s[-1, ..., tail:] = NEG_INF
    p, lse, _ = softmax_rows(s.permute(1, 2, 0, 3).reshape(one.kv_heads, rows, -1), inplace=True)
    out = q.new_zeros((one.kv_heads, rows, one.value_dim), dtype=dt)
    v_stream = _Stream(v_cache, per_chunk, dt)
    v_h = v_stream.full.transpose(0, 1)  # (Hkv, width, Dv)
    for c, (index, p_c) in enumerate(zip(indices, p.split(width, -1), strict=True)):
        v_stream.gather(index)
        if c == 0:
            v_stream.full[: lo - start] = 0  # never a 0 weight times a NaN of a slot outside the range
        if c == len(indices) - 1:
            v_stream.full[tail:] = 0
        out.baddbmm_(p_c, v_h)
    out = out.reshape(1, one.q_heads, one.q_len, one.value_dim).to(q.dtype)
    return out, lse.reshape(1, one.q_heads, one.q_len).to(q.dtype)


def _size(dtype: torch.dtype) -> int:
    """Bytes per element of a floating ``dtype``."""
    return torch.finfo(dtype).bits // 8


class _Stream:
    """Chunks of up to ``per_chunk`` cache blocks gathered, in table order, into one reused buffer
    ``(per_chunk * block_size, H, C)`` of dtype ``dt`` (through a buffer of the cache's own dtype
    when they differ). Slots past a chunk's last block keep stale values: the caller masks them."""

    def __init__(self, cache: torch.Tensor, per_chunk: int, dt: torch.dtype):
        self.cache = cache
        shape = (per_chunk, *cache.shape[1:])
        self.buffer = cache.new_empty(shape, dtype=dt)
        self.raw = self.buffer if cache.dtype == dt else cache.new_empty(shape)
        self.full = self.buffer.flatten(0, 1)

    def gather(self, index: torch.Tensor) -> None:
        """The blocks ``index`` into the buffer (seen whole as :attr:`full`, ``(per_chunk * block_size, H, C)``)."""
        n = len(index)
        raw = self.raw if n == len(self.raw) else self.raw[:n]
        torch.index_select(self.cache, 0, index, out=raw)
        if self.raw is not self.buffer:
            (self.buffer if n == len(self.buffer) else self.buffer[:n]).copy_(raw)
