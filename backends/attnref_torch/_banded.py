"""Banded attention through SDPA: each query block attends to its own band of keys.

The CPU's fast path for local and chunked attention (and global attention with
a mask or lengths, or with the lse or a gradient asked) without ``softcap``:
the query blocks of :mod:`attnref_torch._plan` become the *batch* of one
``scaled_dot_product_attention`` call, each with its band of keys and a
``(rows x band)`` mask drawn by :meth:`attnref.patterns.Pattern.allows`. SDPA's
fused kernel (online softmax, no score array in memory) then does the work in
one operation per step: time and memory stay O(L x band), and the CPU pays
few thread synchronisations. Consecutive blocks whose bands advance by
exactly their row count read overlapping strided *views* of ``k`` and ``v``
(no copy). Blocks whose rows see exactly the lower triangle of their band (a
causal chunk, whose blocks the plan merges into one per chunk:
:meth:`attnref.patterns.Pattern.block_is_causal`) take the kernel's own
``is_causal`` instead of a mask: no mask array, and the kernel skips the
upper triangle's products.

The lse and gradients. When the lse or a gradient is asked, each step calls
ATen's CPU flash-attention kernel directly (:func:`attnref_torch._sdpa.flash_forward`),
which returns the rows' lse too; the backward (:class:`BandedFunction`) runs the
same steps again through its backward (:func:`attnref_torch._sdpa.flash_backward`)
with the saved ``out`` and lse, writes each block's ``dq`` rows and adds each
band's ``dk`` and ``dv`` into the full tensors (overlapping bands sum): no
``Lq x Lk`` array, O(L x band) memory. Gradients are computed in float32 for
16-bit inputs, as the blocked path's. The bias gets no gradient here (a bias
that requires one goes to the blocked path).

When it applies (:func:`banded_applies`): SDPA adds its mask to the scores, so
a NaN or infinite score at a masked key would leak; the path therefore needs
finite ``q``, ``k`` and ``bias``, which is asked of the values. That is free on
the CPU (no device to wait for) and a device synchronisation elsewhere, so the
path runs on the CPU only; on CUDA the blocked path (or FlexAttention) runs,
whose choice reads no value. Values may hold NaN and infinities: they are given
to SDPA with those entries set to 0 and put back where an allowed key holds
them (:func:`attnref_torch._blocked.values_put_back`), unless a user mask is
given, in which case ``v`` must be finite too. Rows with no allowed key are
given every key of their band for the kernel, then set to 0 (lse ``-inf``).
With a gradient ``v`` must be finite as well, and the backward reads the
upstream ``dout`` and ``dlse`` (after the rows with lse ``-inf``, which never
read them, are set to 0): where one is not finite, a kernel's product with a
0 weight would carry it to keys its row cannot see, so that backward is the
blocked path's (:func:`attnref_torch._blocked.blocked_backward`, its forward
recomputed), which keeps the contract's rules.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_torch import _numerics, _plan, _sdpa
from attnref_torch._blocked import blocked_backward, values_put_back
from attnref_torch._numerics import compute_dtype, finite_part, known_finite
from attnref_torch._plan import Block, Group, as5d, block_rows, cut_tiles, groups, indices, plan

__all__ = ["BandedFunction", "banded_applies", "banded_attention"]

#: Largest ``blocks x heads x rows x band`` of one SDPA call's mask (bounds the mask's memory).
STEP_MASK_ELEMENTS = 1 << 23
#: Query rows per block with a gradient, over the forward's: the kernel's backward runs
#: faster on taller blocks (about 10% less time for a 513-key window, D=64, on 2 cores,
#: more than the wider bands cost), and forward and backward must share one plan.
GRAD_ROWS_FACTOR = 2


def banded_applies(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    args: AttentionArgs,
    *,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    return_lse: bool,
    requires_grad: bool,
) -> bool:
    """Whether banded SDPA computes exactly attnref's answer for this call.

    Reads the values (whether ``q``, ``k``, ``bias``, and with a mask or a
    gradient ``v``, are finite) only on the CPU, where that waits for no device.
    The lse and gradients need the CPU flash-attention ops
    (:func:`attnref_torch._sdpa.flash_applies`).
    """
    if not _numerics.reads_values_on(q.device) or args.softcap is not None:
        return False
    if (return_lse or requires_grad) and not _sdpa.flash_applies(q, args):
        return False
    if requires_grad:
        if bias is not None and bias.requires_grad:
            return False
        return known_finite(q, k, v, bias)
    return known_finite(q, k, bias, v if mask is not None else None)


def banded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    args: AttentionArgs,
    *,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    return_lse: bool = False,
    requires_grad: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The op of ``pattern`` through SDPA on key bands; call only when :func:`banded_applies`.

    Returns ``out`` in ``q``'s dtype, and ``lse`` too when ``return_lse``;
    differentiable in ``q``, ``k`` and ``v`` (:class:`BandedFunction`).
    """
    if not (return_lse or requires_grad):
        runner = _Runner.of(q, k, v, pattern, args, bias=bias, mask=mask, with_lse=False)
        out = runner.forward()[0]
        return out if runner.finite_v else values_put_back(out, None, v, pattern, args)
    dt = compute_dtype(q.dtype) if requires_grad else q.dtype
    bias = None if bias is None else bias.to(dt)
    # with a gradient banded_applies found v finite: nothing to set to 0 or put back
    out, lse = BandedFunction.apply(q.to(dt), k.to(dt), v.to(dt), bias, mask, pattern, args, requires_grad)
    out = out.to(q.dtype)
    return (out, lse.to(q.dtype)) if return_lse else out


class BandedFunction(torch.autograd.Function):
    """Autograd's view of the banded path with the lse: forward and backward by the
    flash-attention kernel's ops, step by step (see the module's docstring)."""

    @staticmethod
    def forward(ctx: Any, q, k, v, bias, mask, pattern, args, grad):  # type: ignore[override]
        runner = _Runner.of(q, k, v, pattern, args, bias=bias, mask=mask, with_lse=True, grad=grad)
        out, lse_kernel, lse = runner.forward()
        if not runner.finite_v:
            out = values_put_back(out, None, v, pattern, args)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, bias, mask, out, lse_kernel, lse)
        ctx.pattern, ctx.args = pattern, args
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout, dlse):  # type: ignore[override]
        q, k, v, bias, mask, out, lse_kernel, lse = ctx.saved_tensors
        if dout is None and dlse is None:
            return None, None, None, None, None, None, None, None
        live = lse != float("-inf")  # rows with no allowed key never read dout or dlse
        if dout is None:
            dout = torch.zeros_like(out)
        elif not bool(live.all()):  # a host read: this path runs on the CPU only
            dout = torch.where(live[..., None], dout, torch.zeros((), dtype=dout.dtype))
        if dlse is not None:
            dlse = torch.where(live, dlse, torch.zeros((), dtype=dlse.dtype))
        if known_finite(dout, dlse):
            runner = _Runner.of(q, k, v, ctx.pattern, ctx.args, bias=bias, mask=mask, with_lse=True, grad=True)
            dq, dk, dv = runner.backward(out, lse_kernel, dout, dlse)
        else:
            dq, dk, dv = blocked_backward(q, k, v, bias, mask, ctx.pattern, ctx.args, dout, dlse)
        return dq, dk, dv, None, None, None, None, None


class _MaskCache:
    """A few recent pattern masks, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_bytes: int, max_entries: int):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._entries: OrderedDict[tuple, tuple[torch.Tensor | None, torch.Tensor | None]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _bytes(entry: tuple[torch.Tensor | None, torch.Tensor | None]) -> int:
        return sum(t.numel() * t.element_size() for t in entry if t is not None)

    def get(self, key: tuple) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple, entry: tuple[torch.Tensor | None, torch.Tensor | None]) -> None:
        if self._bytes(entry) > self.max_bytes:
            return
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.max_entries or (
                sum(self._bytes(e) for e in self._entries.values()) > self.max_bytes
            ):
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: The pattern masks of recent calls (see :meth:`_Runner._pattern_mask`).
_MASKS = _MaskCache(max_bytes=1 << 27, max_entries=16)


class _Runner:
    """The SDPA calls of one op call, batch element by batch element."""

    def __init__(
        self,
        *,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        pattern: Pattern,
        args: AttentionArgs,
        bias5: torch.Tensor | None,
        mask5: torch.Tensor | None,
        with_lse: bool,
        rows: int,
        finite_v: bool,
    ):
        self.q, self.k, self.v = q, k, v
        self.pattern, self.args = pattern, args
        self.bias5, self.mask5 = bias5, mask5
        self.with_lse, self.rows = with_lse, rows
        self.finite_v = finite_v  # False: v's non-finite values were set to 0, the caller puts them back

    @classmethod
    def of(
        cls,
        q,
        k,
        v,
        pattern: Pattern,
        args: AttentionArgs,
        *,
        bias,
        mask,
        with_lse: bool,
        grad: bool = False,
    ) -> _Runner:
        """The runner of one call: ``k`` contiguous, and ``v`` as it is when it is known finite
        (:func:`banded_applies` found it so with a mask or a gradient; otherwise one sum says),
        else a copy with its non-finite entries set to 0 (:attr:`finite_v` False: the caller puts
        them back); with ``grad`` (the forward and backward of a gradient) the blocks are
        :data:`GRAD_ROWS_FACTOR` times taller."""
        finite_v = mask is not None or grad or known_finite(v)
        return cls(
            q=q, k=k.contiguous(), v=(v if finite_v else finite_part(v)).contiguous(), pattern=pattern, args=args,
            bias5=as5d(None if bias is None else bias.to(q.dtype), args.kv_heads, args.group),
            mask5=as5d(mask, args.kv_heads, args.group), with_lse=with_lse,
            rows=block_rows(q.device) * (GRAD_ROWS_FACTOR if grad else 1), finite_v=finite_v,
        )  # fmt: skip

    def steps(self, group: Group):
        """``(rows, width, blocks)`` of every SDPA call of a batch element of ``group``.

        Without a user mask or bias, blocks whose rows see exactly their band's lower
        triangle (a causal chunk, merged into one block) are marked causal: the kernel's
        own causal mask draws them, with no mask array and half the products."""
        a = self.args
        plain = self.mask5 is None and self.bias5 is None
        heads = 1 if plain else a.q_heads
        shapes = plan(self.pattern, group, self.rows, _plan.MAX_MERGED_ROWS, _plan.KEY_TILE, causal=plain)
        for (rows, width, _), blocks in shapes:
            step = max(1, STEP_MASK_ELEMENTS // (heads * rows * width))
            for start in range(0, len(blocks), step):
                yield rows, width, blocks[start : start + step]

    def forward(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``out (B, Hq, Lq, Dv)`` (rows that see no key 0, ``v``'s non-finite entries not put
        back), and with the lse the kernel's lse and attnref's (``-inf`` on rows with no allowed
        key; the kernel's is finite there, as its backward needs), ``(B, Hq, Lq)`` each."""
        a = self.args
        out = self.q.new_zeros((a.batch, a.q_heads, a.q_len, a.value_dim))
        lse_kernel = lse = None
        if self.with_lse:
            lse_kernel = torch.zeros(out.shape[:-1], dtype=compute_dtype(self.q.dtype), device=out.device)
            lse = torch.full_like(lse_kernel, float("-inf"))
        for group in groups(a):
            for b in range(group.first, group.stop):
                for rows, width, blocks in self.steps(group):
                    o, lk, dead = self.step(b, group, blocks, rows, width)  # (n, Hq, rows, Dv), (n, Hq, rows)
                    self._put(out[b], blocks, rows, o)
                    if lk is not None:
                        self._put(lse_kernel[b], blocks, rows, lk)
                        attnref_lse = lk if dead is None else lk.masked_fill(dead[..., 0], float("-inf"))
                        self._put(lse[b], blocks, rows, attnref_lse)
        return out, lse_kernel, lse

    def backward(
        self, out: torch.Tensor, lse_kernel: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(dq, dk, dv)`` for upstream ``dout`` and ``dlse`` (0 on rows with no allowed key),
        given the forward's ``out`` and the kernel's lse: each step's kernel backward, ``dq``
        written by rows, ``dk`` and ``dv`` added by keys."""
        a = self.args
        dq, dk, dv = torch.zeros_like(self.q), torch.zeros_like(self.k), torch.zeros_like(self.v)
        for group in groups(a):
            for b in range(group.first, group.stop):
                for rows, width, blocks in self.steps(group):
                    row_index, key_index = indices(tuple(blocks), rows, width, self.q.device)
                    q, k, v = self._operands(b, blocks, rows, width, row_index, key_index)
                    attn_mask, _ = self._attn_mask(b, group, blocks, row_index, key_index)
                    dl = None if dlse is None else self._take(dlse[b], blocks, rows, row_index)
                    dqb, dkb, dvb = _sdpa.flash_backward(
                        self._take(dout[b], blocks, rows, row_index), q, k, v,
                        self._take(out[b], blocks, rows, row_index),
                        self._take(lse_kernel[b], blocks, rows, row_index),
                        dlse=dl, attn_mask=self._additive(attn_mask), scale=a.scale, group=a.group,
                        is_causal=blocks[0].causal,
                    )  # fmt: skip
                    self._put(dq[b], blocks, rows, dqb)
                    keys = key_index.reshape(-1)
                    dk[b].index_add_(1, keys, dkb.transpose(0, 1).reshape(a.kv_heads, -1, a.head_dim))
                    dv[b].index_add_(1, keys, dvb.transpose(0, 1).reshape(a.kv_heads, -1, a.value_dim))
        return dq, dk, dv

    @staticmethod
    def _put(target: torch.Tensor, blocks: list[Block], rows: int, result: torch.Tensor) -> None:
        """Write ``result (n, H, rows, ...)`` into the blocks' rows of ``target (H, L, ...)``."""
        n, first = len(blocks), blocks[0].r0
        if all(blk.r0 == first + i * rows for i, blk in enumerate(blocks)):  # consecutive rows: a view
            part = target[:, first : first + n * rows]
            part.view(target.shape[0], n, rows, *target.shape[2:]).copy_(result.transpose(0, 1))
        else:
            index = torch.tensor([r for blk in blocks for r in range(blk.r0, blk.r1)], device=target.device)
            target.index_copy_(1, index, result.transpose(0, 1).reshape(target.shape[0], n * rows, *target.shape[2:]))

    @staticmethod
    def _take(t: torch.Tensor, blocks: list[Block], rows: int, row_index: torch.Tensor) -> torch.Tensor:
        """The blocks' rows of ``t (H, L, ...)`` as ``(n, H, rows, ...)`` (a view where they are consecutive)."""
        n, first = len(blocks), blocks[0].r0
        if all(blk.r0 == first + i * rows for i, blk in enumerate(blocks)):
            return t[:, first : first + n * rows].unflatten(1, (n, rows)).transpose(0, 1)
        return t.index_select(1, row_index.reshape(-1)).unflatten(1, (n, rows)).transpose(0, 1)

    def _additive(self, attn_mask: torch.Tensor | None) -> torch.Tensor | None:
        """A mask as the flash kernel takes it: additive, in ``q``'s dtype (a bool mask's False as ``-inf``)."""
        if attn_mask is None or attn_mask.dtype != torch.bool:
            return attn_mask
        return torch.zeros(attn_mask.shape, dtype=self.q.dtype, device=attn_mask.device).masked_fill_(
            ~attn_mask, float("-inf")
        )

    def step(
        self, b: int, group: Group, blocks: list[Block], rows: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Output ``(n, Hq, rows, Dv)`` of ``n`` blocks of one shape, in one SDPA call; with the lse
        also the kernel's lse ``(n, Hq, rows)`` and the rows with no allowed key (or None)."""
        a, device = self.args, self.q.device
        row_index, key_index = indices(tuple(blocks), rows, width, device)  # (n, rows), (n, width)
        q, k, v = self._operands(b, blocks, rows, width, row_index, key_index)
        attn_mask, dead = self._attn_mask(b, group, blocks, row_index, key_index)
        lse, causal = None, blocks[0].causal
        if self.with_lse:
            out, lse = _sdpa.flash_forward(
                q, k, v, attn_mask=self._additive(attn_mask), scale=a.scale, group=a.group, is_causal=causal
            )  # fmt: skip
        else:
            if a.group > 1 and not _sdpa.HAS_ENABLE_GQA:
                k, v = k.repeat_interleave(a.group, 1), v.repeat_interleave(a.group, 1)
            gqa = {"enable_gqa": True} if a.group > 1 and _sdpa.HAS_ENABLE_GQA else {}
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=a.scale, is_causal=causal, **gqa)
        if dead is not None:
            out = torch.where(dead, torch.zeros((), dtype=out.dtype, device=device), out)
        return out, lse, dead

    def _attn_mask(
        self, b: int, group: Group, blocks: list[Block], row_index: torch.Tensor, key_index: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """SDPA's mask for the blocks (bool, or float with the bias) and the rows with no
        allowed key (None when there is none). Such rows are given every key of their
        band, so the kernel sees normal rows; their result is replaced by 0. Causal
        blocks need neither (the kernel's ``is_causal``; every row sees its diagonal key)."""
        if blocks[0].causal:
            return None, None
        if self.mask5 is None:
            return self._pattern_mask(b, group, blocks, row_index, key_index)
        allowed = self._gather(self.mask5, b, row_index, key_index)
        if any(blk.cut for blk in blocks):
            allowed = allowed & self.pattern.allows(self._positions(group, row_index), key_index[:, None, None, :])
        dead = ~allowed.any(-1, keepdim=True)
        allowed = allowed | dead
        if self.bias5 is None:
            return allowed, dead
        return self._gather(self.bias5, b, row_index, key_index).masked_fill(~allowed, float("-inf")), dead

    def _pattern_mask(
        self, b: int, group: Group, blocks: list[Block], row_index: torch.Tensor, key_index: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The mask of the pattern alone (plus the bias), drawn only in the key tiles the pattern
        cuts: tiles every block's rows may see whole stay 0.

        Without a bias the result depends only on the pattern, the offset, the blocks, the
        dtype and the device, so it is kept in a small cache: calls of one shape (a training
        loop, a benchmark) draw it once.
        """
        if self.bias5 is not None:
            return self._draw_pattern_mask(b, group, blocks, row_index, key_index)
        key = (self.pattern, group.offset, tuple(blocks), _plan.KEY_TILE, self.q.dtype, self.q.device)
        cached = _MASKS.get(key)
        if cached is None:
            cached = self._draw_pattern_mask(b, group, blocks, row_index, key_index)
            _MASKS.put(key, cached)
        return cached

    def _draw_pattern_mask(
        self, b: int, group: Group, blocks: list[Block], row_index: torch.Tensor, key_index: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        n, rows, width = row_index.shape[0], row_index.shape[1], key_index.shape[1]
        bias = None if self.bias5 is None else self._gather(self.bias5, b, row_index, key_index)
        mask = None
        cut = cut_tiles(tuple(blocks))
        some_full = len(cut) < -(-width // _plan.KEY_TILE)  # a tile every block sees whole
        seen = None  # rows with an allowed key in a cut tile
        for t0, t1 in cut:
            if mask is None:
                mask = bias.clone() if bias is not None else self.q.new_zeros((n, 1, rows, width))
            allowed = self.pattern.allows(self._positions(group, row_index), key_index[:, None, None, t0:t1])
            mask[..., t0:t1].masked_fill_(~allowed, float("-inf"))
            tile_rows = allowed.any(-1, keepdim=True)
            seen = tile_rows if seen is None else seen | tile_rows
        if mask is None:
            return bias, None
        dead = None if some_full else ~seen
        if dead is not None and bool(dead.any()):
            mask = torch.where(dead, torch.zeros((), dtype=mask.dtype, device=mask.device), mask)
        else:
            dead = None
        return mask, dead

    def _positions(self, group: Group, row_index: torch.Tensor) -> torch.Tensor:
        """Aligned positions of the blocks' rows, ``(n, 1, rows, 1)``."""
        return (row_index + group.offset)[:, None, :, None]

    def _operands(
        self, b: int, blocks: list[Block], rows: int, width: int, row_index: torch.Tensor, key_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q (n, Hq, rows, D)``, ``k (n, Hkv, width, D)``, ``v (n, Hkv, width, Dv)`` of the blocks."""
        n = len(blocks)
        first = blocks[0]
        stride = all(blk.r0 == first.r0 + i * rows and blk.lo == first.lo + i * rows for i, blk in enumerate(blocks))
        if stride:  # bands advance with the rows: overlapping strided views, no copy
            q = self.q[b, :, first.r0 : first.r0 + n * rows].unflatten(1, (n, rows)).transpose(0, 1)
            return (
                q,
                self._band_view(self.k[b], first.lo, n, rows, width),
                self._band_view(self.v[b], first.lo, n, rows, width),
            )
        q = self.q[b].index_select(1, row_index.reshape(-1)).unflatten(1, (n, rows)).transpose(0, 1)
        k = self.k[b].index_select(1, key_index.reshape(-1)).unflatten(1, (n, width)).transpose(0, 1)
        v = self.v[b].index_select(1, key_index.reshape(-1)).unflatten(1, (n, width)).transpose(0, 1)
        return q, k, v

    @staticmethod
    def _band_view(t: torch.Tensor, lo: int, n: int, rows: int, width: int) -> torch.Tensor:
        """``(n, H, width, D)``: block ``i`` sees rows ``lo + i * rows`` onward of ``t (H, L, D)``."""
        sh, sl, sd = t.stride()
        return t.as_strided((n, t.shape[0], width, t.shape[2]), (rows * sl, sh, sl, sd), t.storage_offset() + lo * sl)

    def _gather(self, t5: torch.Tensor, b: int, row_index: torch.Tensor, key_index: torch.Tensor) -> torch.Tensor:
        """Entries of a broadcastable ``(B', Hkv', G', Lq', Lk')`` tensor at the blocks' rows
        and keys, for batch ``b``, as ``(n, Hq or 1, rows, width)``."""
        t = t5[b if t5.shape[0] > 1 else 0]  # (Hkv', G', Lq', Lk')
        rows = row_index[:, :, None] if t.shape[2] > 1 else torch.zeros_like(row_index)[:, :, None]
        keys = key_index[:, None, :] if t.shape[3] > 1 else torch.zeros_like(key_index)[:, None, :]
        g = t[:, :, rows, keys]  # (Hkv', G', n, rows, width)
        return g.flatten(0, 1).transpose(0, 1)
