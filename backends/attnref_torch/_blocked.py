"""Blocked multi-head attention: query blocks against the band of keys they may see.

The general path of the torch backend: it handles every option (``softcap``,
``return_lse``, ``bias``, ``mask``, lengths, NaN and infinities anywhere) with
the reference's exact semantics. The faster paths (:mod:`attnref_torch._sdpa`,
:mod:`attnref_torch._banded`) share its plan and take over where they are exact.

The work is planned with :class:`attnref.patterns.Pattern`: for each block of
query rows, :meth:`~attnref.patterns.Pattern.key_range` gives the band of keys
any of its rows may see, :meth:`~attnref.patterns.Pattern.block_is_full` says
whether the pattern cuts a tile of that band (only cut tiles are masked), and
:meth:`~attnref.patterns.Pattern.allows` draws the mask there. Time and memory
are O(Lq x band): O(L x window) for a sliding window, O(L x chunk_size) for
chunks; nothing of size Lq x Lk is ever built (unless the band is all keys).

Blocks whose bands have the same width are computed together: their rows and
their bands (gathered with ``index_select``) form one batched product, one
softmax and one product with the values, for as many blocks as fit in a score
budget. A few large operations instead of many small ones: on the CPU every
torch operation pays a thread synchronisation, so the number of operations,
not the arithmetic, would otherwise decide the speed.

Batches whose alignment offset or lengths differ are planned separately (one
plan per batch), so a band never has to cover two offsets. Grouped-query
attention folds the query heads of a kv head into the rows of one product, so
keys and values are never copied per query head.

Everything is plain differentiable torch. When autograd records, masked
entries are written with out-of-place ``torch.where`` and rows that would
softmax ``-inf`` only get finite dummy scores first (their result is selected
away), so no NaN reaches a gradient.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

import torch

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_torch._numerics import Finite, compute_dtype, row_lse, weighted_sum

__all__ = ["blocked_attention"]

#: Query rows per block on the CPU (measured: 64 beats 128 and 256 with SDPA on bands) and on CUDA.
BLOCK_ROWS = 64
CUDA_BLOCK_ROWS = 128
#: Most rows of a block merged from blocks that share one band (see :func:`_plan`).
MAX_MERGED_ROWS = 1024
#: Keys per tile when masking a band: tiles the pattern allows whole are not masked.
KEY_TILE = 128
#: Largest score array of one batched step, in elements, on the CPU and on CUDA.
CPU_STEP_ELEMENTS = 1 << 23
CUDA_STEP_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class _Group:
    """Batches that share one plan: same offset, key count and query count."""

    first: int  # batches first:stop
    stop: int
    offset: int
    kv_len: int
    q_len: int

    @property
    def batches(self) -> slice:
        return slice(self.first, self.stop)


@dataclass(frozen=True)
class _Block:
    """Query rows ``r0:r1`` of a group and the band ``lo:hi`` of keys they may see."""

    r0: int
    r1: int
    lo: int
    hi: int


def _groups(args: AttentionArgs) -> list[_Group]:
    offsets = args.offsets()
    if args.kv_lengths is None and args.q_lengths is None:
        return [_Group(0, args.batch, int(offsets[0]), args.kv_len, args.q_len)]
    kv = args.kv_lengths if args.kv_lengths is not None else [args.kv_len] * args.batch
    ql = args.q_lengths if args.q_lengths is not None else [args.q_len] * args.batch
    return [_Group(b, b + 1, int(offsets[b]), int(kv[b]), int(ql[b])) for b in range(args.batch)]


@functools.lru_cache(maxsize=64)
def _plan(
    pattern: Pattern, group: _Group, rows: int, max_rows: int
) -> tuple[tuple[tuple[tuple[int, int], tuple[_Block, ...]], ...], tuple[int, ...]]:
    """Blocks by shape ``((rows, band width), blocks)``, and the rows that see no key at all.

    Consecutive blocks with the same band are merged (up to ``max_rows`` rows):
    the band is shared, so one larger block does the same work in larger tiles
    (all the blocks of a chunk, for example). Cached: calls of one shape plan once.
    """
    blocks: list[_Block] = []
    empty: list[int] = []
    for r0 in range(0, group.q_len, rows):
        r1 = min(r0 + rows, group.q_len)
        lo, hi = pattern.key_range(r0 + group.offset, r1 - 1 + group.offset, group.kv_len)
        if lo >= hi:
            empty.extend(range(r0, r1))
        elif _extends(blocks, r0, lo, hi) and r1 - blocks[-1].r0 <= max_rows:
            blocks[-1] = _Block(blocks[-1].r0, r1, lo, hi)
        else:
            blocks.append(_Block(r0, r1, lo, hi))
    buckets: dict[tuple[int, int], list[_Block]] = defaultdict(list)
    for blk in blocks:
        buckets[(blk.r1 - blk.r0, blk.hi - blk.lo)].append(blk)
    return tuple((shape, tuple(b)) for shape, b in buckets.items()), tuple(empty)


def _extends(blocks: list[_Block], r0: int, lo: int, hi: int) -> bool:
    """Whether rows from ``r0`` with band ``lo:hi`` continue the last block with the same band."""
    return bool(blocks) and (blocks[-1].r1, blocks[-1].lo, blocks[-1].hi) == (r0, lo, hi)


@functools.lru_cache(maxsize=256)
def _indices(blocks: tuple[_Block, ...], rows: int, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Row and key indices of blocks of one shape, ``(n, rows)`` and ``(n, width)`` (cached)."""
    r0 = torch.tensor([blk.r0 for blk in blocks], device=device)
    lo = torch.tensor([blk.lo for blk in blocks], device=device)
    return r0[:, None] + torch.arange(rows, device=device), lo[:, None] + torch.arange(width, device=device)


def block_rows(device: torch.device) -> int:
    """Query rows per block on ``device``."""
    return CUDA_BLOCK_ROWS if device.type == "cuda" else BLOCK_ROWS


def _as5d(t: torch.Tensor | None, kv_heads: int, group: int) -> torch.Tensor | None:
    """A tensor broadcastable to ``(B, Hq, Lq, Lk)`` viewed as ``(B', Hkv', G', Lq', Lk')``."""
    if t is None:
        return None
    t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.reshape(t.shape[0], kv_heads, group, t.shape[2], t.shape[3])


def _zero(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=t.dtype, device=t.device)


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    args: AttentionArgs,
    *,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    return_lse: bool,
    finite: Finite | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The multi-head op of ``pattern`` on tensors (validated ``args``), block by block.

    Returns ``out`` in ``q``'s dtype, and ``lse`` too when ``return_lse``.
    16-bit inputs are computed in float32.
    """
    dt = compute_dtype(q.dtype)
    B, Hkv, G, Lq = args.batch, args.kv_heads, args.group, args.q_len
    finite = finite or Finite.of(q, k, v, bias)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
    kernel = _Kernel(
        q5=(q.to(dt) * args.scale).reshape(B, Hkv, G, Lq, args.head_dim),
        k=k.to(dt), v=v.to(dt), pattern=pattern, args=args,
        bias5=_as5d(None if bias is None else bias.to(dt), Hkv, G), mask5=_as5d(mask, Hkv, G),
        return_lse=return_lse,
        scores_may_be_neg_inf=not finite.scores, values_finite=finite.v, grad=grad,
    )  # fmt: skip
    budget = CUDA_STEP_ELEMENTS if q.device.type == "cuda" else CPU_STEP_ELEMENTS
    outs, lses = zip(*(kernel.group(g, budget) for g in _groups(args)), strict=True)
    out = torch.cat(outs, 0).reshape(B, args.q_heads, Lq, args.value_dim).to(q.dtype)
    if not return_lse:
        return out
    return out, torch.cat(lses, 0).reshape(B, args.q_heads, Lq).to(q.dtype)


@dataclass
class _Kernel:
    """The batched computation of blocks, with the call's inputs and flags."""

    q5: torch.Tensor  # (B, Hkv, G, Lq, D), scaled, compute dtype
    k: torch.Tensor  # (B, Hkv, Lk, D)
    v: torch.Tensor  # (B, Hkv, Lk, Dv)
    pattern: Pattern
    args: AttentionArgs
    bias5: torch.Tensor | None
    mask5: torch.Tensor | None
    return_lse: bool
    scores_may_be_neg_inf: bool  # some allowed row may hold only -inf scores
    values_finite: bool
    grad: bool  # autograd is recording: no in-place writes, no NaN in dead rows

    # -- one batch group ----------------------------------------------------------
    def group(self, group: _Group, budget: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output ``(b, Hkv, G, Lq, Dv)`` and lse ``(b, Hkv, G, Lq)`` (or None) of one group."""
        a = self.args
        b = group.batches.stop - group.batches.start
        rows_per_block = block_rows(self.q5.device)
        max_rows = max(rows_per_block, budget // (b * a.q_heads * max(group.kv_len, 1)))
        buckets, empty = _plan(self.pattern, group, rows_per_block, max_rows)
        empty = [*empty, *range(group.q_len, a.q_len)]  # padding rows (q_lengths): no key is allowed
        outs, lses, order = [], [], []
        for (rows, width), blocks in buckets:
            step = max(1, budget // (b * a.q_heads * rows * width))
            for start in range(0, len(blocks), step):
                chunk = blocks[start : start + step]
                out, lse = self.step(group, chunk, rows, width)
                outs.append(out)
                lses.append(lse)
                order.extend(r for blk in chunk for r in range(blk.r0, blk.r1))
        if empty:
            shape = (b, a.kv_heads, a.group, len(empty))
            outs.append(self.q5.new_zeros((*shape, a.value_dim)))
            lses.append(self.q5.new_full(shape, float("-inf")))
            order.extend(empty)
        out = torch.cat(outs, 3)
        lse = torch.cat(lses, 3) if self.return_lse else None
        if order != list(range(a.q_len)):
            inverse = torch.argsort(torch.tensor(order, device=out.device))
            out = out.index_select(3, inverse)
            lse = None if lse is None else lse.index_select(3, inverse)
        return out, lse

    # -- one batched step: blocks with the same shape ------------------------------
    def step(
        self, group: _Group, blocks: list[_Block], rows: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output ``(b, Hkv, G, n * rows, Dv)`` and lse of ``n`` blocks with bands of one width."""
        a, n = self.args, len(blocks)
        bs = group.batches
        b = bs.stop - bs.start
        row_index, key_index = _indices(tuple(blocks), rows, width, self.q5.device)  # (n, rows), (n, width)
        q = self._rows(self.q5[bs], row_index, b, n, rows)
        k = self._keys(self.k[bs], key_index, b, n, width)
        v = self._keys(self.v[bs], key_index, b, n, width)
        s = torch.matmul(q, k.transpose(-1, -2)).view(b, a.kv_heads, n, a.group, rows, width)
        if a.softcap is not None:
            s = torch.tanh(s / a.softcap) * a.softcap
        if self.bias5 is not None:
            s = s + self._gather_scores(self.bias5, bs, row_index, key_index)
        if self.mask5 is None and self.values_finite and not self.grad:
            allowed = None  # the common case: mask only the tiles the pattern cuts, in place
            s, mask_dead = self._mask_tiles(s, group, blocks, row_index, key_index)
        else:
            allowed = self._allowed(group, blocks, bs, row_index, key_index)
            s, mask_dead = self._mask(s, allowed)
        out, lse = self._softmax_values(s, allowed, mask_dead, v)
        out = out.permute(0, 1, 3, 2, 4, 5).reshape(b, a.kv_heads, a.group, n * rows, a.value_dim)
        if lse is not None:
            lse = lse.permute(0, 1, 3, 2, 4).reshape(b, a.kv_heads, a.group, n * rows)
        return out, lse

    def _rows(self, q5: torch.Tensor, row_index: torch.Tensor, b: int, n: int, rows: int) -> torch.Tensor:
        """Query rows of the blocks, ``(b, Hkv, n, G * rows, D)`` (the G heads of a kv head stacked)."""
        a = self.args
        q = q5.index_select(3, row_index.reshape(-1)).view(b, a.kv_heads, a.group, n, rows, a.head_dim)
        return q.transpose(2, 3).reshape(b, a.kv_heads, n, a.group * rows, a.head_dim)

    def _keys(self, k: torch.Tensor, key_index: torch.Tensor, b: int, n: int, width: int) -> torch.Tensor:
        """The blocks' bands of keys (or values), ``(b, Hkv, n, width, D)``."""
        return k.index_select(2, key_index.reshape(-1)).view(b, self.args.kv_heads, n, width, k.shape[-1])

    @staticmethod
    def _gather_scores(t5: torch.Tensor, bs: slice, row_index: torch.Tensor, key_index: torch.Tensor) -> torch.Tensor:
        """Entries of a broadcastable ``(B', Hkv', G', Lq', Lk')`` tensor at the blocks'
        rows and keys, as ``(b', Hkv', n, G', rows, width)``."""
        t = t5[bs] if t5.shape[0] > 1 else t5
        rows = row_index[:, :, None] if t.shape[3] > 1 else torch.zeros_like(row_index)[:, :, None]
        keys = key_index[:, None, :] if t.shape[4] > 1 else torch.zeros_like(key_index)[:, None, :]
        return t[:, :, :, rows, keys].transpose(2, 3)  # advanced indices: (b', Hkv', G', n, rows, width)

    # -- masks ----------------------------------------------------------------------
    def _positions(self, group: _Group, row_index: torch.Tensor) -> torch.Tensor:
        """Aligned positions of the blocks' rows, ``(n, 1, rows, 1)``."""
        return (row_index + group.offset)[:, None, :, None]

    def _allowed(
        self, group: _Group, blocks: list[_Block], bs: slice, row_index: torch.Tensor, key_index: torch.Tensor
    ) -> torch.Tensor | None:
        """Bool, broadcastable to the scores ``(b, Hkv, n, G, rows, width)``; None when all keys are allowed."""
        allowed = None
        if not all(self._full(group, blk, blk.lo, blk.hi) for blk in blocks):
            allowed = self.pattern.allows(self._positions(group, row_index), key_index[:, None, None, :])
        if self.mask5 is not None:
            user = self._gather_scores(self.mask5, bs, row_index, key_index)
            allowed = user if allowed is None else allowed & user
        return allowed

    def _full(self, group: _Group, blk: _Block, j_first: int, j_stop: int) -> bool:
        return self.pattern.block_is_full(blk.r0 + group.offset, blk.r1 - 1 + group.offset, j_first, j_stop - 1)

    def _mask_tiles(
        self, s: torch.Tensor, group: _Group, blocks: list[_Block], row_index: torch.Tensor, key_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Disallowed keys to ``-inf`` in place, tile by tile of the bands: a tile the pattern
        allows whole in every block is left alone. Returns the scores and the rows with no
        allowed key (None if there is none)."""
        width = s.shape[-1]
        some_full = False
        seen = None  # rows with an allowed key in a cut tile
        p = None
        for t0 in range(0, width, KEY_TILE):
            t1 = min(t0 + KEY_TILE, width)
            if all(self._full(group, blk, blk.lo + t0, blk.lo + t1) for blk in blocks):
                some_full = True
                continue
            if p is None:
                p = self._positions(group, row_index)
            allowed = self.pattern.allows(p, key_index[:, None, None, t0:t1])
            s[..., t0:t1].masked_fill_(~allowed, float("-inf"))
            rows = allowed.any(-1, keepdim=True)
            seen = rows if seen is None else seen | rows
        return s, (None if some_full or seen is None else ~seen)

    def _mask(self, s: torch.Tensor, allowed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores with disallowed keys at ``-inf``, and the rows with no allowed key (or None)."""
        if allowed is None:
            return s, None
        mask_dead = ~allowed.any(-1, keepdim=True)
        if not self.grad:
            return s.masked_fill_(~allowed, float("-inf")), mask_dead
        # Rows with no allowed key get finite dummy scores (0), so their softmax stays finite.
        fill = torch.where(mask_dead, 0.0, float("-inf")).to(s.dtype)
        return torch.where(allowed, s, fill), mask_dead

    # -- softmax and values ---------------------------------------------------------
    def _softmax_values(
        self, s: torch.Tensor, allowed: torch.Tensor | None, mask_dead: torch.Tensor | None, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(out (b, Hkv, n, G, rows, Dv), lse (b, Hkv, n, G, rows) or None)`` from masked scores."""
        score_dead = None
        if self.scores_may_be_neg_inf:  # e.g. a bias of -inf on every allowed key of a row
            score_dead = s.amax(-1, keepdim=True) == float("-inf")
            if mask_dead is not None:
                score_dead = score_dead & ~mask_dead
            if self.grad:
                s = torch.where(score_dead, _zero(s), s)
        lse = row_lse(s) if self.return_lse else None
        P = torch.softmax(s, -1)
        if score_dead is not None:  # P = 0 there, as in the reference (0 * nan in v still shows)
            P = torch.where(score_dead, _zero(P), P)
        out = self._weighted(P, allowed, v)
        if mask_dead is not None:
            out = torch.where(mask_dead, _zero(out), out)
        dead = mask_dead if score_dead is None else (score_dead if mask_dead is None else mask_dead | score_dead)
        if lse is not None and dead is not None:
            lse = torch.where(dead[..., 0], torch.full((), float("-inf"), dtype=lse.dtype, device=lse.device), lse)
        return out, lse

    def _weighted(self, P: torch.Tensor, allowed: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
        """``P @ v`` per block, ``(b, Hkv, n, G, rows, Dv)``, without leaking non-finite values."""
        b, h, n, g, rows, width = P.shape
        if self.values_finite or allowed is None:
            flat = P.reshape(b, h, n, g * rows, width)
            return torch.matmul(flat, v).view(b, h, n, g, rows, v.shape[-1])
        return weighted_sum(P, allowed, v[:, :, :, None])
