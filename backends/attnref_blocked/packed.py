"""Packed variable-length sequences (contract section 8): each sequence runs alone, without padding.

``q (Tq, Hq, D)``, ``k (Tk, Hkv, D)``, ``v (Tk, Hkv, Dv)`` hold ``B`` sequences
at the offsets ``cu_seqlens_q``/``cu_seqlens_k``. Sequence ``b`` is the dense
op on its own rows and keys, with its own lengths and alignment.

The forward runs all sequences in **one** call of the dense kernel on the
packed arrays seen as one ``(1, H, T, D)`` batch (no copy, no padding to the
longest sequence), under :class:`SequencePattern`: the op's pattern inside
each sequence, nothing across sequences (block-diagonal, as a document mask).
Its block plan cuts each sequence's rows on their own, so no block straddles
two sequences, and every sequence's blocks form one task list for the
workers: they stay busy across sequences, and the call's set-up (the copies
of ``k`` and ``v`` in the kernel's layout) happens once. A sequence without
rows does nothing; one without keys gives output 0 and lse ``sinks[h]``
(``-inf`` without sinks), as any row without an allowed key.

The gradients run sequence by sequence (:func:`vjp_by_sequence`); a sequence
without keys adds its ``dlse`` to ``dsinks``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from attnref.patterns import KeyTile, Pattern, QueryBlock, align_offset
from attnref.validation import AttentionArgs
from attnref_blocked.numerics import NEG_INF, quiet, to_host

__all__ = ["SequencePattern", "by_sequence", "vjp_by_sequence"]


class SequencePattern:
    """``pattern`` inside each packed sequence, nothing across sequences (block-diagonal).

    Packed row ``r`` of sequence ``b`` (``cu_q[b] <= r < cu_q[b + 1]``) sees
    packed key ``j`` iff ``j`` belongs to sequence ``b`` too and
    ``pattern.allows(r - cu_q[b] + offsets[b], j - cu_k[b])``. The dense kernel
    calls it as a :class:`~attnref.patterns.Pattern` on one batch of ``Tq``
    rows and ``Tk`` keys with the alignment offset ``base`` (its positions are
    ``r + base``): :meth:`allows` for masks, :meth:`plan_blocks` for the block
    plan. ``kind`` is ``"packed"``, which no rule of a plain pattern matches.
    """

    kind = "packed"

    def __init__(self, xp: Any, pattern: Pattern, args: AttentionArgs) -> None:
        self.xp, self.pattern = xp, pattern
        self.cu_q, self.cu_k = args.cu_seqlens_q.tolist(), args.cu_seqlens_k.tolist()
        self.offsets = args.offsets().tolist()
        self.base = int(align_offset(args.align, args.q_len, args.kv_len))
        self._cu_q, self._cu_k, self._offsets = (xp.asarray(a) for a in (self.cu_q, self.cu_k, self.offsets))

    def allows(self, p: Any, j: Any) -> Any:
        """Elementwise: may the row at position ``p`` (packed row ``p - base``) see packed key ``j``?
        ``p`` and ``j`` are integer arrays of ``xp``."""
        xp = self.xp
        rows = p - self.base
        seq = xp.searchsorted(self._cu_q, rows, side="right") - 1  # empty sequences are skipped
        seq_k = xp.searchsorted(self._cu_k, j, side="right") - 1
        inside = self.pattern.allows(rows - self._cu_q[seq] + self._offsets[seq], j - self._cu_k[seq])
        return inside & (seq == seq_k)

    def plan_blocks(self, q_len: int, kv_len: int, *, offset: int = 0, block_rows: int = 128,
                    key_tile: int | None = None, **options: Any) -> tuple[QueryBlock, ...]:  # fmt: skip
        """Every sequence's own plan (:meth:`Pattern.plan_blocks` of ``pattern``), in packed rows and keys."""
        if (q_len, kv_len, offset) != (self.cu_q[-1], self.cu_k[-1], self.base):
            raise ValueError(f"a plan of {(q_len, kv_len, offset)} asked of packed sequences "
                             f"{(self.cu_q[-1], self.cu_k[-1], self.base)}")  # fmt: skip
        blocks = []
        for b, offset_b in enumerate(self.offsets):
            q0, k0 = self.cu_q[b], self.cu_k[b]
            own = self.pattern.plan_blocks(self.cu_q[b + 1] - q0, self.cu_k[b + 1] - k0, offset=offset_b,
                                           block_rows=block_rows, key_tile=key_tile, **options)  # fmt: skip
            for block in own:
                tiles = tuple(KeyTile(t.start + k0, t.stop + k0, t.full) for t in block.tiles)
                blocks.append(QueryBlock(block.start + q0, block.stop + q0, block.key_start + k0,
                                         block.key_stop + k0, tiles, block.causal))  # fmt: skip
        return tuple(blocks)


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
    xp: Any, q: Any, k: Any, v: Any, args: AttentionArgs, kernel: Callable[..., tuple[Any, Any]], pattern: Pattern
) -> tuple[Any, Any]:
    """``(out, lse)`` of ``kernel(q, k, v, args, pattern)``; packed inputs as one batch under
    :class:`SequencePattern`."""
    if not args.packed:
        return kernel(q, k, v, args, pattern)
    one = dataclasses.replace(
        args, batch=1, kv_lengths=None, q_lengths=None, cu_seqlens_q=None, cu_seqlens_k=None
    )  # fmt: skip
    out, lse = kernel(_dense(q), _dense(k), _dense(v), one, SequencePattern(xp, pattern, args))
    return xp.ascontiguousarray(_packed(out)), xp.ascontiguousarray(_packed(lse))


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
