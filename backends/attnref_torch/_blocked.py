"""Blocked multi-head attention: query blocks against the band of keys they may see,
forward and backward.

The torch backend's path for every multi-head call that
:mod:`attnref_torch._sdpa` does not take: it handles every option
(``softcap``, ``return_lse``, ``bias``, ``mask``, lengths, NaN and infinities
anywhere) with the reference's exact semantics, and its own backward pass.

Plan. For each block of query rows, :meth:`~attnref.patterns.Pattern.key_range`
gives the band of keys any of its rows may see, and
:meth:`~attnref.patterns.Pattern.block_is_full` says which key tiles of the
band the pattern cuts (only those are masked, with
:meth:`~attnref.patterns.Pattern.allows`). Time and memory are O(Lq x band):
O(L x window) for a sliding window, O(L x chunk_size) for chunks. Blocks whose
bands have the same width are computed together (one batched product, one
softmax, one product with the values for as many blocks as fit in a score
budget): on the CPU every torch operation pays a thread synchronisation, so
the number of operations would otherwise decide the speed. Batches whose
alignment offset or lengths differ are planned separately. Grouped-query
attention folds the query heads of a kv head into the rows of one product.

Forward, per step (``s`` the block's scores, disallowed keys set to ``-inf``)::

    s   = softcap * tanh(scale * q k^T / softcap) + bias      (softcap, bias optional)
    P, lse = softmax over the row (attnref_torch._numerics.softmax_rows; its shift m and sum z kept)
    out = P @ finite_part(v)

and after all steps the non-finite values of allowed keys are put back
(:func:`attnref_torch._numerics.put_back`), rows with lse ``-inf`` set to 0.

Backward (FlashAttention-2's, recomputing ``P = exp(s - m) / z`` per block: the forward's
very roundings, where ``exp(s - lse)`` would be off by ``|s| * eps`` for large logits)::

    dV += P^T dout            dP = dout V^T        delta_i = dout_i . out_i
    dS  = P * (dP - delta + dlse)       (0 at disallowed keys: selected, not multiplied)
    dbias += dS                         (summed over the axes bias broadcasts along)
    dS0 = dS * (1 - tanh^2)             (softcap's chain rule)
    dQ  = scale * dS0 K,   dK += scale * dS0^T Q

Masking selects in the backward too (contract section 6): rows with lse
``-inf`` (no allowed key, padding) neither read ``dout`` nor contribute; every
product takes the finite parts of its operands, and the non-finite entries a
formula uses are put back from counts over allowed keys (``dV`` from ``dout``
over the rows that allow a key, ``dQ`` from ``K`` over a row's allowed keys).
``dK`` needs no such step: a row with a non-finite query is NaN (its ``dS`` is
NaN at every allowed key) or has no finite score at all (lse ``-inf``).

Nothing reads a value on the host: which path runs and what it computes depend
on shapes, dtypes and options only (no device synchronisation on CUDA).
"""

from __future__ import annotations

from typing import Any

import torch

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_torch import _plan
from attnref_torch._numerics import (
    compute_dtype,
    finite_part,
    known_finite,
    mask_counts,
    nan_where_counted,
    nonfinite_codes,
    put_back,
    range_counts,
    softmax_rows,
)
from attnref_torch._plan import Block, Group, as5d, block_rows, cut_tiles, groups, indices, plan, ranges

__all__ = ["blocked_attention", "blocked_backward", "block_rows", "values_put_back"]

#: Largest score array of one batched step, in elements, on the CPU and on CUDA.
CPU_STEP_ELEMENTS = 1 << 23
CUDA_STEP_ELEMENTS = 1 << 26


def values_put_back(
    out: torch.Tensor, lse: torch.Tensor | None, v: torch.Tensor, pattern: Pattern, args: AttentionArgs
) -> torch.Tensor:
    """``out = P @ finite_part(v)`` of a pattern (no user mask) with the non-finite values of
    each row's allowed keys put back; rows with lse ``-inf`` (when ``lse`` is given) set to 0.

    Without ``lse`` the caller's rows with no allowed key must be 0 already (their
    ranges are empty, so nothing is put back there).
    """
    if known_finite(v):  # on the CPU only: nothing to put back
        return out if lse is None else torch.where((lse == float("-inf"))[..., None], 0.0, out).to(out.dtype)
    a = args
    lo, hi = ranges(pattern, groups(a), a.q_len, False, v.device)
    counts = range_counts(nonfinite_codes(v), lo, hi)  # (B, Hkv, Lq, Dv)
    out5 = put_back(out.reshape(a.batch, a.kv_heads, a.group, a.q_len, -1), counts[:, :, None]).reshape(out.shape)
    if lse is None:
        return out5
    return torch.where((lse == float("-inf"))[..., None], 0.0, out5).to(out.dtype)


# -- the op ----------------------------------------------------------------------------
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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The multi-head op of ``pattern`` on tensors (validated ``args``), block by block.

    Returns ``out`` in ``q``'s dtype, and ``lse`` too when ``return_lse``.
    16-bit inputs are computed in float32. Differentiable in ``q``, ``k``,
    ``v`` and ``bias`` (its own backward, see the module's docstring).
    """
    dt = compute_dtype(q.dtype)
    bias = None if bias is None else bias.to(dt)
    out, lse = BlockedFunction.apply(q.to(dt), k.to(dt), v.to(dt), bias, mask, pattern, args)
    out = out.to(q.dtype)
    return (out, lse.to(q.dtype)) if return_lse else out


def blocked_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    pattern: Pattern,
    args: AttentionArgs,
    dout: torch.Tensor | None,
    dlse: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of the op at ``(q, k, v)`` (compute dtype, bias without gradient) by the
    blocked path, its forward recomputed: for another path's backward where only this one
    keeps the contract's rules (non-finite upstream gradients)."""
    run = _Run(q, k, v, bias, mask, pattern, args)
    out, lse, mz = run.forward()
    dq, dk, dv, _ = run.backward(out, lse, mz, dout, dlse, bias_grad=False)
    return dq, dk, dv


class BlockedFunction(torch.autograd.Function):
    """Autograd's view of :class:`_Run`: forward and backward by blocks."""

    @staticmethod
    def forward(ctx: Any, q, k, v, bias, mask, pattern, args):  # type: ignore[override]
        out, lse, mz = _Run(q, k, v, bias, mask, pattern, args).forward()
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, bias, mask, out, lse, mz)
        ctx.pattern, ctx.args = pattern, args
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout, dlse):  # type: ignore[override]
        q, k, v, bias, mask, out, lse, mz = ctx.saved_tensors
        if dout is None and dlse is None:
            return None, None, None, None, None, None, None
        run = _Run(q, k, v, bias, mask, ctx.pattern, ctx.args)
        dq, dk, dv, dbias = run.backward(out, lse, mz, dout, dlse, bias_grad=ctx.needs_input_grad[3])
        return dq, dk, dv, dbias, None, None, None


class _Run:
    """The blocked computation of one call: its inputs, plan and steps."""

    def __init__(self, q, k, v, bias, mask, pattern: Pattern, args: AttentionArgs):
        a = args
        self.args, self.pattern = a, pattern
        self.q5s = (q * a.scale).reshape(a.batch, a.kv_heads, a.group, a.q_len, a.head_dim)  # scaled
        self.k, self.v = k, v
        self.bias5 = as5d(bias, a.kv_heads, a.group)
        self.bias_shape = None if bias is None else bias.shape
        self.mask5 = as5d(mask, a.kv_heads, a.group)
        self.device = q.device
        self.groups = groups(a)

    # -- steps -----------------------------------------------------------------------
    def steps(self):
        """``(group, rows, width, blocks, row_index, key_index)`` of every batched step."""
        a = self.args
        budget = CUDA_STEP_ELEMENTS if self.device.type == "cuda" else CPU_STEP_ELEMENTS
        per_row = block_rows(self.device)
        for group in self.groups:
            b = group.stop - group.first
            max_rows = max(per_row, min(_plan.MAX_MERGED_ROWS, budget // (b * a.q_heads * max(group.kv_len, 1))))
            for (rows, width, _), blocks in plan(self.pattern, group, per_row, max_rows, _plan.KEY_TILE):
                step = max(1, budget // (b * a.q_heads * rows * width))
                for start in range(0, len(blocks), step):
                    chunk = blocks[start : start + step]
                    row_index, key_index = indices(chunk, rows, width, self.device)
                    yield group, rows, width, chunk, row_index, key_index

    def rows_of(self, t5: torch.Tensor, bs: slice, row_index: torch.Tensor) -> torch.Tensor:
        """Rows of a ``(B, Hkv, G, Lq, C)`` tensor as ``(b, Hkv, n, G * rows, C)``."""
        n, rows = row_index.shape
        t = t5[bs].index_select(3, row_index.reshape(-1))
        b, h, g = t.shape[:3]
        return t.view(b, h, g, n, rows, -1).transpose(2, 3).reshape(b, h, n, g * rows, -1)

    def put_rows(self, t5: torch.Tensor, bs: slice, row_index: torch.Tensor, block: torch.Tensor) -> None:
        """Write ``block (b, Hkv, n, G * rows, C)`` into the rows of ``t5 (B, Hkv, G, Lq, C)``."""
        n, rows = row_index.shape
        b, h = block.shape[:2]
        g = self.args.group
        block = block.view(b, h, n, g, rows, -1).transpose(2, 3).reshape(b, h, g, n * rows, -1)
        t5[bs].index_copy_(3, row_index.reshape(-1), block)

    @staticmethod
    def band(t: torch.Tensor, bs: slice, key_index: torch.Tensor) -> torch.Tensor:
        """Bands of a ``(B, Hkv, Lk, C)`` tensor as ``(b, Hkv, n, width, C)``."""
        n, width = key_index.shape
        g = t[bs].index_select(2, key_index.reshape(-1))
        return g.view(g.shape[0], g.shape[1], n, width, g.shape[-1])

    @staticmethod
    def add_band(t: torch.Tensor, bs: slice, key_index: torch.Tensor, block: torch.Tensor) -> None:
        """Add ``block (b, Hkv, n, width, C)`` into the keys of ``t (B, Hkv, Lk, C)``."""
        b, h = block.shape[:2]
        t[bs].index_add_(2, key_index.reshape(-1), block.reshape(b, h, -1, block.shape[-1]))

    def scores(
        self, group: Group, blocks: tuple[Block, ...], row_index: torch.Tensor, key_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, list, torch.Tensor | None]:
        """Masked scores ``(b, Hkv, n, G * rows, width)`` of a step, with what masked them.

        Returns ``(s, tanh, tiles, allowed)``: ``tanh`` is ``tanh(s0 / softcap)``
        (None without softcap); ``tiles`` the pattern's cut tiles ``(t0, t1,
        allowed)``; ``allowed`` the whole band's allowed keys when a user mask is
        given (else None).
        """
        a = self.args
        bs = group.batches
        n, rows = row_index.shape
        width = key_index.shape[1]
        q = self.rows_of(self.q5s, bs, row_index)
        s = torch.matmul(q, self.band(self.k, bs, key_index).transpose(-1, -2))
        s6 = s.view(s.shape[0], a.kv_heads, n, a.group, rows, width)
        tanh = None
        if a.softcap is not None:
            tanh = torch.tanh(s6 / a.softcap)
            s6.copy_(tanh).mul_(a.softcap)
        if self.bias5 is not None:
            s6.add_(self._gather(self.bias5, bs, row_index, key_index))
        positions = (row_index + group.offset)[:, None, :, None]  # (n, 1, rows, 1)
        tiles = [
            (t0, t1, self.pattern.allows(positions, key_index[:, None, None, t0:t1])) for t0, t1 in cut_tiles(blocks)
        ]
        allowed = None
        if self.mask5 is not None:
            allowed = self._gather(self.mask5, bs, row_index, key_index)
            allowed = allowed.expand(s6.shape[0], a.kv_heads, n, a.group, rows, width).clone()
            for t0, t1, ok in tiles:
                allowed[..., t0:t1] &= ok
        self.fill(s6, tiles, allowed, float("-inf"))
        return s, tanh, tiles, allowed

    def fill(self, t6: torch.Tensor, tiles: list, allowed: torch.Tensor | None, value: float) -> None:
        """Set the disallowed entries of ``t6 (b, Hkv, n, G, rows, width)`` to ``value``, in place."""
        if allowed is not None:
            t6.masked_fill_(~allowed, value)
            return
        for t0, t1, ok in tiles:
            t6[..., t0:t1].masked_fill_(~ok, value)

    @staticmethod
    def _gather(t5: torch.Tensor, bs: slice, row_index: torch.Tensor, key_index: torch.Tensor) -> torch.Tensor:
        """Entries of a broadcastable ``(B', Hkv', G', Lq', Lk')`` tensor at the blocks'
        rows and keys, as ``(b', Hkv', n, G', rows, width)``."""
        t = t5[bs] if t5.shape[0] > 1 else t5
        rows = row_index[:, :, None] if t.shape[3] > 1 else torch.zeros_like(row_index)[:, :, None]
        keys = key_index[:, None, :] if t.shape[4] > 1 else torch.zeros_like(key_index)[:, None, :]
        return t[:, :, :, rows, keys].transpose(2, 3)  # advanced indices: (b', Hkv', G', n, rows, width)

    def six(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """``(b, Hkv, n, G * rows, width)`` viewed as ``(b, Hkv, n, G, rows, width)``."""
        return t.view(t.shape[0], t.shape[1], n, self.args.group, -1, t.shape[-1])

    # -- forward -----------------------------------------------------------------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``out (B, Hq, Lq, Dv)``, ``lse (B, Hq, Lq)`` and the softmax's shift and sum
        ``mz (B, Hkv, G, Lq, 2)``."""
        a = self.args
        shape = (a.batch, a.kv_heads, a.group, a.q_len)
        out5 = self.q5s.new_zeros((*shape, a.value_dim))
        lse5 = self.q5s.new_full((*shape, 1), float("-inf"))
        mz5 = self.q5s.new_zeros((*shape, 2))
        mz5[..., 1] = 1  # rows that see no key: P = exp(-inf - 0) / 1 = 0
        counts5 = None
        if self.mask5 is not None:
            counts5 = torch.zeros((*shape, a.value_dim), dtype=torch.int64, device=self.device)
        v0 = finite_part(self.v)
        for group, _rows, _width, blocks, row_index, key_index in self.steps():
            bs = group.batches
            n = row_index.shape[0]
            s, _, _, allowed = self.scores(group, blocks, row_index, key_index)
            P, lse, mz = softmax_rows(s, inplace=True)
            self.put_rows(out5, bs, row_index, torch.matmul(P, self.band(v0, bs, key_index)))
            self.put_rows(lse5, bs, row_index, lse[..., None])
            self.put_rows(mz5, bs, row_index, mz)
            if allowed is not None:
                flat = allowed.reshape(allowed.shape[0], a.kv_heads, n, -1, allowed.shape[-1])
                self.put_rows(counts5, bs, row_index, mask_counts(flat, self.band(self.v, bs, key_index)))
        lse = lse5.reshape(a.batch, a.q_heads, a.q_len)
        out = out5.reshape(a.batch, a.q_heads, a.q_len, a.value_dim)
        if counts5 is not None:
            out = put_back(out, counts5.reshape(out.shape))
            return torch.where((lse == float("-inf"))[..., None], 0.0, out).to(out.dtype), lse, mz5
        return values_put_back(out, lse, self.v, self.pattern, self.args), lse, mz5

    # -- backward ----------------------------------------------------------------------
    def backward(
        self,
        out: torch.Tensor,
        lse: torch.Tensor,
        mz5: torch.Tensor,
        dout: torch.Tensor | None,
        dlse: torch.Tensor | None,
        *,
        bias_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(dq, dk, dv, dbias)`` for upstream ``dout`` and ``dlse`` (None = 0)."""
        a = self.args
        shape = (a.batch, a.kv_heads, a.group, a.q_len)
        lse5 = lse.reshape(shape)
        live = lse5 != float("-inf")  # rows with an allowed finite score: the others are never read
        out5 = out.reshape(*shape, a.value_dim)
        dout5 = torch.zeros_like(out5) if dout is None else dout.reshape(out5.shape)
        dout5 = torch.where(live[..., None], dout5, 0.0).to(out5.dtype)
        dout0 = finite_part(dout5)
        row_terms = -(dout5 * out5).sum(-1)  # -delta_i + dlse_i
        if dlse is not None:
            row_terms = row_terms + torch.where(live, dlse.reshape(shape), 0.0)
        k0, v0, qs0 = finite_part(self.k), finite_part(self.v), finite_part(self.q5s)
        dq5 = torch.zeros_like(self.q5s)
        dk, dv = torch.zeros_like(self.k), torch.zeros_like(self.v)
        dbias5 = None if not bias_grad else torch.zeros_like(self.bias5)
        masked = self.mask5 is not None
        dq_counts = torch.zeros(dq5.shape, dtype=torch.int64, device=self.device) if masked else None
        dv_counts = torch.zeros(dv.shape, dtype=torch.int64, device=self.device) if masked else None
        for group, _rows, _width, blocks, row_index, key_index in self.steps():
            bs = group.batches
            n = row_index.shape[0]
            s, tanh, tiles, allowed = self.scores(group, blocks, row_index, key_index)
            mz = self.rows_of(mz5, bs, row_index)
            P = s.sub_(mz[..., :1]).exp_().div_(mz[..., 1:])
            self.fill(self.six(P, n), tiles, allowed, 0.0)  # NaN rows: exp(-inf - nan) is nan
            do0 = self.rows_of(dout0, bs, row_index)
            self.add_band(dv, bs, key_index, torch.matmul(P.transpose(-1, -2), do0))
            dS = torch.matmul(self.rows_of(dout5, bs, row_index), self.band(v0, bs, key_index).transpose(-1, -2))
            dS.add_(self.rows_of(row_terms[..., None], bs, row_index)).mul_(P)
            self.fill(self.six(dS, n), tiles, allowed, 0.0)
            if dbias5 is not None:
                self._add_bias_grad(dbias5, self.six(dS, n), bs, row_index, key_index)
            if tanh is not None:
                self.six(dS, n).mul_(1 - tanh * tanh)
            self.put_rows(dq5, bs, row_index, torch.matmul(dS, self.band(k0, bs, key_index)))
            self.add_band(dk, bs, key_index, torch.matmul(dS.transpose(-1, -2), self.rows_of(qs0, bs, row_index)))
            if masked:
                flat = allowed.reshape(allowed.shape[0], a.kv_heads, n, -1, allowed.shape[-1])
                self.put_rows(dq_counts, bs, row_index, mask_counts(flat, self.band(self.k, bs, key_index)))
                rows5 = self.rows_of(dout5, bs, row_index)
                self.add_band(dv_counts, bs, key_index, mask_counts(flat.transpose(-1, -2), rows5))
        if not masked and not known_finite(self.k):
            lo, hi = ranges(self.pattern, self.groups, a.q_len, False, self.device)
            dq_counts = range_counts((~torch.isfinite(self.k)).to(torch.int64), lo, hi)[:, :, None]
        if not masked and not known_finite(dout5):
            lo, hi = ranges(self.pattern, self.groups, a.kv_len, True, self.device)
            codes = nonfinite_codes(dout5).reshape(a.batch, a.q_heads, a.q_len, a.value_dim)
            dv_counts = range_counts(codes, lo, hi).reshape(a.batch, a.kv_heads, a.group, a.kv_len, -1).sum(2)
        if dq_counts is not None:
            dq5 = nan_where_counted(dq5, dq_counts)
        dq5 = torch.where(live[..., None], dq5, 0.0).to(dq5.dtype) * a.scale
        if dv_counts is not None:
            dv = put_back(dv, dv_counts)
        dbias = None if dbias5 is None else dbias5.reshape(self.bias_shape)
        return dq5.reshape(a.batch, a.q_heads, a.q_len, a.head_dim), dk, dv, dbias

    def _add_bias_grad(
        self, dbias5: torch.Tensor, dS6: torch.Tensor, bs: slice, row_index: torch.Tensor, key_index: torch.Tensor
    ) -> None:
        """Add a step's ``dS (b, Hkv, n, G, rows, width)`` into ``dbias5 (B', Hkv', G', Lq', Lk')``,
        summed over the axes the bias broadcasts along."""
        Bp, Hp, Gp, Lqp, Lkp = dbias5.shape
        d = dS6
        for axis, size in ((0, Bp), (1, Hp), (3, Gp)):
            if size == 1 and d.shape[axis] > 1:
                d = d.sum(axis, keepdim=True)
        rows = row_index if Lqp > 1 else torch.zeros_like(row_index)
        keys = key_index if Lkp > 1 else torch.zeros_like(key_index)
        flat = (rows[:, :, None] * Lkp + keys[:, None, :]).reshape(-1)  # (n * rows * width,)
        d = d.transpose(2, 3).reshape(d.shape[0], Hp, Gp, -1)
        target = dbias5[bs] if Bp > 1 else dbias5
        target.view(target.shape[0], Hp, Gp, Lqp * Lkp).index_add_(3, flat, d)
