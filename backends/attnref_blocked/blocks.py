"""What the forward and backward kernels share: the call's prepared inputs, and a task's
masked scores and allowed-key mask.

Scores are laid out ``(hk, g * rows, keys)``: the ``g`` query heads of each
of the task's ``hk`` kv heads are stacked as rows, so one product serves a
whole GQA group and K and V are never repeated. The float32 forward uses the
transposed layout ``(hk, keys, g * rows)`` (``k @ q.T`` is the faster product
for its shapes, and its softmax then reduces over the middle axis).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_blocked.numerics import NEG_INF, compute_dtype, to_host
from attnref_blocked.plan import Task

__all__ = ["Inputs", "block_of", "scores", "allowed", "nonfinite_keys"]

#: Most pattern masks one call keeps (see :meth:`Inputs.disallowed`); a band needs a handful.
MASK_CACHE_ENTRIES = 256


class Inputs:
    """One call's inputs, prepared once: ``k`` in the compute dtype with its rows contiguous
    (a packed ``(T, H, D)`` batch's view is used as it is: BLAS reads a row stride), ``bias``
    and ``mask`` as 4-d views (no broadcast copy)."""

    def __init__(
        self, xp: Any, q: Any, k: Any, pattern: Pattern, args: AttentionArgs, bias: Any, mask: Any,
        matmul: Any = None,
    ) -> None:  # fmt: skip
        self.xp = xp
        self.matmul = xp.matmul if matmul is None else matmul  # the blocks' products (BlockConfig.matmul)
        self.args = args
        self.pattern = pattern
        self.dtype = compute_dtype(q.dtype)
        self.q = q
        k = k.astype(self.dtype, copy=False)
        self.k = k if k.strides[-1] == k.itemsize else xp.ascontiguousarray(k)  # BLAS-friendly slices
        self.bias = None if bias is None else _as_4d(bias)
        self.mask = None if mask is None else _as_4d(mask)
        self._masks: dict[tuple, Any] = {}  # see disallowed

    def disallowed(self, p0: int, rows: int, m0: int, m1: int, transposed: bool) -> Any:
        """``~allows`` of query positions ``p0 .. p0 + rows - 1`` against keys ``[m0, m1)``, laid
        out ``(1, 1, rows, keys)`` (``(1, keys, 1, rows)`` if ``transposed``), contiguous.

        Kept for the call by the block's place in the pattern's period
        (:attr:`Pattern.period`): every block of a band at the same place has
        the same mask, and drawing it anew costs a dozen small array calls per
        block. A pattern-like object without a period (a packed batch's) is
        drawn every time.
        """
        period = getattr(self.pattern, "period", None)
        if period is None:
            return self._draw_disallowed(p0, rows, m0, m1, transposed)
        base = p0 - p0 % period
        key = (p0 - base, rows, m0 - base, m1 - m0, transposed)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._draw_disallowed(p0 - base, rows, m0 - base, m1 - base, transposed)
            if len(self._masks) < MASK_CACHE_ENTRIES:
                self._masks[key] = mask
        return mask

    def _draw_disallowed(self, p0: int, rows: int, m0: int, m1: int, transposed: bool) -> Any:
        xp = self.xp
        ok = self.pattern.allows(xp.arange(p0, p0 + rows)[:, None], xp.arange(m0, m1)[None, :])  # (rows, keys)
        return xp.ascontiguousarray(_layout(~ok[None, None], transposed))


def _as_4d(array: Any) -> Any:
    """``array`` with leading axes of size 1 added up to 4 dimensions (a view)."""
    return array.reshape((1,) * (4 - array.ndim) + tuple(array.shape))


def nonfinite_keys(xp: Any, array: Any, extremes: tuple[float, float] | None = None) -> np.ndarray | None:
    """Host bool ``(B, L)``: positions whose row holds a NaN or inf in some head; None if all finite.

    Checked first through ``max``/``min`` (NaN and inf survive them), which
    needs no temporary the size of ``array``; ``extremes`` are those two if
    the caller has them already.
    """
    high, low = (float(array.max()), float(array.min())) if extremes is None else extremes
    if np.isfinite(high) and np.isfinite(low):
        return None
    return to_host(xp, ~xp.isfinite(array).all(axis=(1, 3)))


def block_of(array: Any, task: Task, group: int) -> Any:
    """The part of a broadcastable 4-d ``bias``/``mask`` a task reads, as ``(hk|1, g|1, rows|1, keys|1)``.

    Axes of size 1 stay size 1 (broadcast later), so no broadcast copy is made.
    """
    b, (h0, h1), (r0, r1), (lo, hi) = task.batch, task.heads, task.rows, task.keys
    index = (slice(b, b + 1), slice(h0 * group, h1 * group), slice(r0, r1), slice(lo, hi))
    part = array[tuple(slice(None) if n == 1 else s for n, s in zip(array.shape, index, strict=True))][0]
    if part.shape[0] == 1:
        return part[None]
    return part.reshape((h1 - h0, group, *tuple(part.shape[1:])))


def _keys(block: Any, task: Task, j0: int, j1: int) -> Any:
    """Keys ``[j0, j1)`` of a task-shaped block (unchanged if it broadcasts over keys)."""
    lo = task.keys[0]
    return block if block.shape[-1] == 1 else block[..., j0 - lo : j1 - lo]


def _layout(block: Any, transposed: bool) -> Any:
    """A ``(hk|1, g|1, rows|1, keys|1)`` block in the scores' layout (``(hk, keys, g, rows)`` if transposed)."""
    return block.transpose(0, 3, 1, 2) if transposed else block


def scores(
    ctx: Inputs, task: Task, qb: Any, keys: tuple[int, int], user: Any, out: Any, *, transposed: bool,
    scaled: bool, softcap_grad: bool = False,
) -> tuple[Any, Any]:  # fmt: skip
    """Masked scores of the task's queries ``qb (hk, g * rows, D)`` against keys ``[j0, j1)``.

    Steps 1 to 4 of the op: scale (unless ``scaled``: already folded into
    ``qb``), softcap, bias, and ``-inf`` at disallowed entries (the pattern's
    masked ranges, the user's ``mask`` block ``user``). Returns ``(s, dcap)``:
    ``dcap = 1 - tanh(s0 / softcap)^2`` (the softcap's derivative, before the
    bias is added) when ``softcap_grad``, else None.
    """
    xp, args, g = ctx.xp, ctx.args, ctx.args.group
    (h0, h1), (r0, r1) = task.heads, task.rows
    j0, j1 = keys
    hk, rows, n = h1 - h0, r1 - r0, j1 - j0
    k = ctx.k[task.batch, h0:h1, j0:j1]
    if transposed:
        s = ctx.matmul(k, qb.swapaxes(-1, -2), out=out)
        s4 = s.reshape(hk, n, g, rows)
    else:
        s = ctx.matmul(qb, k.swapaxes(-1, -2), out=out)
        s4 = s.reshape(hk, g, rows, n)
    if not scaled:
        s *= ctx.dtype.type(args.scale)
    dcap = None
    if args.softcap is not None:
        s /= ctx.dtype.type(args.softcap)
        xp.tanh(s, out=s)
        if softcap_grad:
            dcap = 1 - s * s
        s *= ctx.dtype.type(args.softcap)
    if ctx.bias is not None:
        s4 += _layout(_keys(block_of(ctx.bias, task, g), task, j0, j1), transposed).astype(ctx.dtype, copy=False)
    for m0, m1 in task.masked:
        m0, m1 = max(m0, j0), min(m1, j1)
        if m0 < m1:
            target = s4[:, m0 - j0 : m1 - j0] if transposed else s4[..., m0 - j0 : m1 - j0]
            xp.copyto(target, NEG_INF, where=ctx.disallowed(r0 + task.offset, rows, m0, m1, transposed))
    if user is not None:
        xp.copyto(s4, NEG_INF, where=~_layout(_keys(user, task, j0, j1), transposed))
    return s, dcap


def allowed(ctx: Inputs, task: Task, columns: Any, user: Any) -> Any:
    """The allowed mask of the task's rows at the key positions ``columns`` (host ints),
    ``(hk|1, g|1, rows, len(columns))``: the pattern and the user's mask (the key range is
    already within the batch's kv length, the rows within its q length)."""
    xp = ctx.xp
    r0, r1 = task.rows
    cols = xp.asarray(np.asarray(columns))
    ok = ctx.pattern.allows(xp.arange(r0 + task.offset, r1 + task.offset)[:, None], cols[None, :])[None, None]
    if user is not None:
        u = user if user.shape[-1] == 1 else user[..., cols - task.keys[0]]
        ok = ok & u
    return ok
