"""Attention of a few query rows over one sequence of a paged KV cache, streamed chunk by chunk.

Decoding reads a long cache with one (or a few) query rows per sequence: the
work is the reading, so the fast way is to read each key and value once. Here
sequence ``b``'s key range (:meth:`Pattern.key_range` of its rows) is cut into
chunks of ``chunk`` positions on a grid that is a multiple of the cache's
block size; each chunk's blocks are gathered with ``take(..., out=buffer)``
into buffers reused for the whole call (small enough to stay in cache: no
copy of a whole sequence, let alone of the cache), scored, and folded into an
online softmax:

    s = scale q k^T           (softcap, then -inf where the pattern disallows)
    m' = max(m, max_j s_j)    shift c' = m' (0 while m' = -inf)
    acc' = acc exp(c - c') + sum_j exp(s_j - c') v_j
    l'   = l   exp(c - c') + sum_j exp(s_j - c')

and at the end ``out = acc / l`` (0 where ``l = 0``) and ``lse = c + log l``
(``-inf`` for a row without keys). The ``g`` query heads that share a kv head
are stacked as rows of one product, so K and V are never repeated (GQA). A
sink, a key without a value (contract section 7), is added last: ``lse' =
logaddexp(lse, sink)``, ``out' = out exp(lse - lse')``.

Semantics (as the reference): disallowed keys get ``-inf`` before the max, so
a NaN or inf score there never reaches a row's softmax. A non-finite *value*,
however, reaches the products even through a weight of exactly 0 (``0 * nan
= nan``, which the reference wants for an allowed key but not for a
disallowed one), and so does a non-finite score or query. Every such case
leaves a non-finite number in ``acc`` (IEEE products and sums propagate them,
as BLAS's do), so :func:`attend_paged` then returns None and the caller runs
the exact dense kernel, which selects those terms, on that sequence: one
check per sequence instead of one pass over its values.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from attnref.patterns import Pattern, align_offset
from attnref_blocked.numerics import NEG_INF, compute_dtype

__all__ = ["Buffers", "attend_paged", "chunk_length"]


def chunk_length(key_block: int, block_size: int) -> int:
    """Positions per chunk: ``key_block`` rounded down to whole cache blocks (at least one)."""
    return max(1, key_block // block_size) * block_size


class Buffers:
    """One worker's gather buffers, ``(chunk // block_size, block_size, Hkv, D)`` in the caches' dtypes,
    and its score buffer; reused for every chunk of every sequence the worker runs."""

    def __init__(self, xp: Any, k_cache: Any, v_cache: Any, chunk: int, rows: int) -> None:
        blocks = chunk // k_cache.shape[1]
        self.k = xp.empty((blocks, *k_cache.shape[1:]), dtype=k_cache.dtype)
        self.v = xp.empty((blocks, *v_cache.shape[1:]), dtype=v_cache.dtype)
        self.scores = xp.empty(k_cache.shape[2] * rows * chunk, dtype=compute_dtype(k_cache.dtype))


def _gather(xp: Any, cache: Any, buffer: Any, table: Any, j0: int, j1: int, dtype: np.dtype) -> Any:
    """Positions ``[j0, j1)`` of one sequence, ``(j1 - j0, H, D)`` in ``dtype``: its blocks copied into ``buffer``."""
    size = cache.shape[1]
    first, last = j0 // size, -(-j1 // size)
    part = buffer[: last - first]
    xp.take(cache, table[first:last], axis=0, out=part)
    rows = part.reshape(-1, *cache.shape[2:])[j0 - first * size : j1 - first * size]
    return rows.astype(dtype, copy=False)


def _pieces(lo: int, hi: int, chunk: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` cut at the multiples of ``chunk``."""
    cuts = [lo, *range((lo // chunk + 1) * chunk, hi, chunk), hi]
    return list(itertools.pairwise(cuts))


def attend_paged(
    xp: Any, q: Any, k_cache: Any, v_cache: Any, table: Any, length: int, pattern: Pattern, args: Any,
    buffers: Buffers, chunk: int,
) -> tuple[Any, Any] | None:  # fmt: skip
    """``(out (Hq, Lq, Dv), lse (Hq, Lq))`` in the compute dtype, of the queries ``q (Hq, Lq, D)`` over
    the ``length`` keys whose blocks ``table`` lists (on ``xp``); None if the accumulated output is
    not finite (see the module's docstring). ``args`` gives the scale, softcap, sinks, groups and
    alignment; ``length >= 1``."""
    dt = compute_dtype(q.dtype)
    hkv, g = args.kv_heads, args.group
    q_len = q.shape[1]
    offset = int(align_offset(args.align, q_len, length))
    lo, hi = pattern.key_range(offset, q_len - 1 + offset, length)
    rows = g * q_len
    qs = q.astype(dt, copy=False) * dt.type(args.scale)  # a copy, the scale folded in
    qs = qs.reshape(hkv, rows, q.shape[-1])
    acc = xp.zeros((hkv, rows, args.value_dim), dtype=dt)
    total = xp.zeros((hkv, rows, 1), dtype=dt)
    shift = xp.zeros((hkv, rows, 1), dtype=dt)
    m = xp.full((hkv, rows, 1), NEG_INF, dtype=dt)
    for j0, j1 in _pieces(lo, hi, chunk) if lo < hi else ():
        k = _gather(xp, k_cache, buffers.k, table, j0, j1, dt)  # (n, Hkv, D)
        v = _gather(xp, v_cache, buffers.v, table, j0, j1, dt)
        s = xp.matmul(qs, k.transpose(1, 2, 0), out=buffers.scores[: hkv * rows * (j1 - j0)].reshape(hkv, rows, -1))
        if args.softcap is not None:
            s /= dt.type(args.softcap)
            xp.tanh(s, out=s)
            s *= dt.type(args.softcap)
        if not pattern.block_is_full(offset, q_len - 1 + offset, j0, j1 - 1):
            ok = pattern.allows(xp.arange(offset, q_len + offset)[:, None], xp.arange(j0, j1)[None, :])
            xp.copyto(s.reshape(hkv, g, q_len, -1), NEG_INF, where=~ok)
        m_new = xp.maximum(m, s.max(axis=-1, keepdims=True))  # NaN stays NaN
        shift_new = xp.where(m_new == NEG_INF, dt.type(0), m_new)  # nothing allowed yet: no shift
        s -= shift_new
        xp.exp(s, out=s)
        factor = xp.exp(shift - shift_new)  # 1 while the shift stays; acc and total are 0 before any key
        acc *= factor
        acc += xp.matmul(s, v.transpose(1, 0, 2))
        total *= factor
        total += s.sum(axis=-1, keepdims=True)
        m, shift = m_new, shift_new
    if not bool(xp.isfinite(acc).all()):  # a non-finite value, score or query: the exact path decides
        return None
    out = acc / xp.where(total == 0, dt.type(1), total)  # a row without keys: 0
    lse = shift + xp.log(total)  # a row without keys: 0 + log(0) = -inf
    out, lse = out.reshape(args.q_heads, q_len, -1), lse.reshape(args.q_heads, q_len)
    if args.sinks is not None:
        out, lse = _with_sink(xp, out, lse, xp.asarray(args.sinks.astype(dt))[:, None])
    return out, lse


def _with_sink(xp: Any, out: Any, lse: Any, sink: Any) -> tuple[Any, Any]:
    """Add the sink: ``lse' = logaddexp(lse, sink)``, ``out' = out exp(lse - lse')``; a ``-inf`` sink
    changes nothing, a NaN sink makes both NaN, and a row without keys keeps output 0."""
    total = xp.logaddexp(lse, sink)
    factor = xp.where(lse == NEG_INF, out.dtype.type(0), xp.exp(lse - total))
    return out * factor[..., None], total
