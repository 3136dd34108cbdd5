"""Blocked multi-head attention, written once for any NumPy-like namespace.

The NumPy backend runs this with ``xp = numpy`` (on a few threads), the CuPy
backend with ``xp = cupy``. Nothing here builds an ``Lq x Lk`` array:

* **Plan** (host side, plain ints). Query rows are cut into blocks (their
  height chosen per pattern: tall for global attention, short for a narrow
  band). For each block, :meth:`Pattern.key_range` gives the only keys it may
  see, clipped to the batch's kv length; a block with an empty range is
  skipped (its rows stay 0 with lse ``-inf``), so causal attention does about
  half the work and local attention ``O(Lq x window)``. The range is cut into
  tiles, and :meth:`Pattern.block_is_full` marks the tiles that need the
  pattern's mask. Rows at or past the batch's ``q_lengths`` are not planned.
* **Run** one task (batch, group of kv heads, query block): the scores of
  every query head of those kv heads against the key range in one product
  (GQA: the query heads of a kv head become extra rows, so K and V are never
  repeated), then softcap, bias, and the masks (the pattern's small
  ``rows x tile`` mask from :meth:`Pattern.allows`, the user's mask sliced
  from its broadcast view) set disallowed scores to ``-inf``; then the
  softmax and the product with ``v``.

float32 (also for float16/bfloat16 inputs, rounded once at the end): the
scores are laid out ``keys x queries`` (``k @ q.T`` is the faster product
here), the scale is folded into the query block, ``v`` carries an extra row of
ones so that the softmax denominator comes out of the second product, a row's
max is subtracted only when ``exp`` would otherwise overflow or lose precision
(it cancels in ``out = numerator / denominator``), and a long key range is
streamed in pieces of ``key_block`` keys with an online softmax so that the
score block stays in cache. float64 follows the reference's steps, in its
order, over the block's whole key range.

Semantics (as the reference): a disallowed key never contributes, even if its
score or value is NaN or infinite (masking replaces scores by ``-inf`` before
the max; non-finite values are zeroed for the products and added back only to
the rows that may see them); a row with no allowed key, or whose allowed
scores are all ``-inf``, gets output 0 and lse ``-inf``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs
from attnref_numpy._blas import single_threaded_blas

__all__ = ["BlockConfig", "Task", "plan", "attend"]

NEG_INF = float("-inf")
#: The shortest query block considered.
MIN_ROWS = 32
#: In float32, rows whose maximum score lies in about ``[-40, 40]`` skip the max subtraction.
UNSHIFTED_LIMIT = 40.0
#: ``exp(x)`` is 0 in float64 for ``x`` below this.
FLOAT64_EXP_UNDERFLOW = -745.14


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """How :func:`attend` cuts the work.

    Attributes
    ----------
    score_elements : int
        Target size (elements) of one task's score block, ``heads x rows x keys``.
    max_rows : int
        Most query rows per block (per query head); narrow bands get fewer
        (see ``_choose_rows``).
    tile : int
        Width of the key tiles whose need for the pattern's mask is decided
        one by one.
    key_block : int
        In float32, a key range longer than this (by more than a quarter) is
        processed in pieces of about this many keys with a streaming (online)
        softmax: the score block stays in cache, and the float32 sums inside
        the products stay short (their rounding grows with their length);
        0 = always the whole range at once.
    row_overhead : int
        The fixed cost of one block, in query rows, when choosing the block
        height for a band (see ``_choose_rows``); large on a GPU, where each
        block costs kernel launches.
    threads : int
        Worker threads (1 = run on the calling thread).
    """

    score_elements: int = 1 << 19
    max_rows: int = 256
    tile: int = 64
    key_block: int = 512
    row_overhead: int = 8
    threads: int = 1


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work: a query block of one batch against its key range.

    ``heads`` are kv heads ``[h0, h1)`` (their query heads come along),
    ``rows`` query rows ``[r0, r1)``, ``keys`` the key range ``[lo, hi)``,
    ``masked`` the key sub-ranges that need the pattern's mask, and
    ``offset`` the batch's alignment offset (row ``i`` sits at ``i + offset``).
    """

    batch: int
    heads: tuple[int, int]
    rows: tuple[int, int]
    keys: tuple[int, int]
    masked: tuple[tuple[int, int], ...]
    offset: int

    @property
    def cost(self) -> int:
        """Score elements of the task (per query head of its group), for ordering the work."""
        return (self.rows[1] - self.rows[0]) * (self.keys[1] - self.keys[0]) * (self.heads[1] - self.heads[0])


# -- planning ---------------------------------------------------------------
def _masked_ranges(pattern: Pattern, p_first: int, p_last: int, lo: int, hi: int, tile: int) -> tuple:
    """Key sub-ranges of ``[lo, hi)`` where some position in ``p_first..p_last`` is disallowed."""
    if pattern.block_is_full(p_first, p_last, lo, hi - 1):
        return ()
    ranges: list[tuple[int, int]] = []
    for j0 in range(lo, hi, tile):
        j1 = min(j0 + tile, hi)
        if pattern.block_is_full(p_first, p_last, j0, j1 - 1):
            continue
        if ranges and ranges[-1][1] == j0:
            ranges[-1] = (ranges[-1][0], j1)
        else:
            ranges.append((j0, j1))
    return tuple(ranges)


def _row_blocks(pattern: Pattern, q_len: int, kv_len: int, offset: int, rows: int) -> list[tuple[int, int, int, int]]:
    """``(r0, r1, lo, hi)`` for every block of ``rows`` query rows with a non-empty key range."""
    blocks = []
    for r0 in range(0, q_len, rows):
        r1 = min(r0 + rows, q_len)
        lo, hi = pattern.key_range(r0 + offset, r1 - 1 + offset, kv_len)
        if lo < hi:
            blocks.append((r0, r1, lo, hi))
    return blocks


def plan(args: AttentionArgs, pattern: Pattern, config: BlockConfig) -> list[Task]:
    """Cut the op into tasks, the most expensive first (for load balance)."""
    offsets = args.offsets()
    g = args.group
    tasks = []
    cache: dict[tuple[int, int, int], tuple[int, list]] = {}
    for b in range(args.batch):
        q_len = args.q_len if args.q_lengths is None else int(args.q_lengths[b])
        kv_len = args.kv_len if args.kv_lengths is None else int(args.kv_lengths[b])
        offset = int(offsets[b])
        rows, blocks = _choose_rows(pattern, q_len, kv_len, offset, config, cache)
        if not blocks:
            continue
        widest = _score_width(blocks, config.key_block)
        if g * rows * widest > config.score_elements and rows > 1:
            rows = max(1, config.score_elements // (g * widest))
            blocks = _row_blocks(pattern, q_len, kv_len, offset, rows)
            widest = _score_width(blocks, config.key_block)
        heads = _heads_per_task(args.kv_heads, g * rows * widest, config, len(blocks) * args.batch)
        for r0, r1, lo, hi in blocks:
            masked = _masked_ranges(pattern, r0 + offset, r1 - 1 + offset, lo, hi, config.tile)
            for h0 in range(0, args.kv_heads, heads):
                h1 = min(h0 + heads, args.kv_heads)
                tasks.append(Task(b, (h0, h1), (r0, r1), (lo, hi), masked, offset))
    tasks.sort(key=lambda t: -t.cost)
    return tasks


def _choose_rows(
    pattern: Pattern, q_len: int, kv_len: int, offset: int, config: BlockConfig, cache: dict
) -> tuple[int, list[tuple[int, int, int, int]]]:
    """Query rows per block, and the blocks: the candidate (a power of two up to ``max_rows``)
    with the least planned work, counting each block as ``rows + config.row_overhead`` rows against its
    key range. Tall blocks waste keys in a narrow band (the range grows with the rows); short
    ones cost per-block overhead and slower products. Global attention takes ``max_rows``."""
    key = (q_len, kv_len, offset)
    if key not in cache:
        candidates = [config.max_rows]
        while candidates[-1] > MIN_ROWS:
            candidates.append(candidates[-1] // 2)
        best = None
        for rows in candidates:
            blocks = _row_blocks(pattern, q_len, kv_len, offset, rows)
            work = sum((r1 - r0 + config.row_overhead) * (hi - lo) for r0, r1, lo, hi in blocks)
            if best is None or work < best[0]:
                best = (work, rows, blocks)
        cache[key] = best[1:]
    return cache[key]


def _score_width(blocks: list[tuple[int, int, int, int]], key_block: int) -> int:
    """Widest score block, in keys (longer key ranges are streamed in pieces of ``key_block``)."""
    widest = max(hi - lo for _, _, lo, hi in blocks)
    return widest if key_block <= 0 or widest <= key_block + key_block // 4 else key_block


def _heads_per_task(kv_heads: int, per_head: int, config: BlockConfig, blocks: int) -> int:
    """kv heads per task: fill the score budget, but leave a few tasks per thread."""
    most = max(1, min(kv_heads, config.score_elements // max(per_head, 1)))
    if config.threads > 1:
        while most > 1 and blocks * -(-kv_heads // most) < 4 * config.threads:
            most -= 1
    groups = -(-kv_heads // most)
    return -(-kv_heads // groups)  # the same number of heads in every group, as far as possible


# -- running ----------------------------------------------------------------
class _Context:
    """Everything a task needs, prepared once per call."""

    def __init__(self, xp: Any, q: Any, k: Any, v: Any, pattern: Pattern, args: AttentionArgs, bias: Any, mask: Any):
        self.xp = xp
        self.args = args
        self.pattern = pattern
        self.out_dtype = q.dtype
        self.dtype = np.dtype(np.float64) if np.dtype(q.dtype) == np.float64 else np.dtype(np.float32)
        self.fast = self.dtype == np.float32  # the float32 path (see the module docstring)
        self.q = q
        self.k = xp.ascontiguousarray(k.astype(self.dtype, copy=False))  # BLAS-friendly slices
        self.bias = None if bias is None else _as_4d(bias)
        self.mask = None if mask is None else _as_4d(mask)
        self.v = self._prepare_values(v, bias is None)
        shape = (args.batch, args.q_heads, args.q_len)
        self.out = xp.zeros((*shape, args.value_dim), dtype=self.dtype)
        self.lse = xp.full(shape, NEG_INF, dtype=self.dtype)

    def _prepare_values(self, v: Any, no_bias: bool) -> Any:
        """``v`` in the compute dtype, non-finite entries zeroed (kept aside in ``v_raw``); in
        float32 transposed with a row of ones below, ``(B, Hkv, Dv + 1, Lk)``, so that the
        softmax denominator comes out of the product. Also sets the shift-free range."""
        xp, args = self.xp, self.args
        v = v.astype(self.dtype, copy=False)
        self.nonfinite_keys = None  # (B, Lk) host bool: keys with a non-finite value in some kv head
        largest = max(float(v.max()), -float(v.min()))  # no temporary the size of v
        if not math.isfinite(largest):
            finite = xp.isfinite(v)
            self.nonfinite_keys = _to_host(xp, ~finite.all(axis=(1, 3)))
            self.v_raw = v
            v = xp.where(finite, v, xp.zeros((), dtype=self.dtype))
            largest = float(xp.abs(v).max())
        self.unshifted = (np.inf, -np.inf)  # see _stream: maxima for which exp(s) needs no shift
        self.score_bound = -np.inf  # see _scores_bounded
        self.key_norms = None
        if not self.fast:
            return xp.ascontiguousarray(v)
        largest = largest if largest > 0 else 1.0
        # exp(m) * |v| * Lk must stay far from overflow, exp(m) * |v| * eps far from subnormal.
        high = min(UNSHIFTED_LIMIT, math.log(1e36 / (largest * max(args.kv_len, 1))))
        low = max(-UNSHIFTED_LIMIT, math.log(1e-28 / largest))
        if low < high:
            self.unshifted = (low, high)
            self.score_bound = min(high, -low)
            if no_bias:  # (B, Hkv, Lk): bounds the scores by Cauchy-Schwarz
                self.key_norms = xp.sqrt(xp.einsum("bhld,bhld->bhl", self.k, self.k))
        extended = xp.empty((*v.shape[:2], v.shape[3] + 1, v.shape[2]), dtype=self.dtype)
        extended[:, :, :-1] = v.swapaxes(-1, -2)
        extended[:, :, -1] = 1
        return extended

    def errstate(self) -> Any:
        """NumPy's floating-point warnings off (log(0), inf - inf are expected here)."""
        if self.xp is np:
            return np.errstate(divide="ignore", invalid="ignore", over="ignore")
        return contextlib.nullcontext()


def _as_4d(array: Any) -> Any:
    """``array`` with leading axes of size 1 added up to 4 dimensions (a view)."""
    return array.reshape((1,) * (4 - array.ndim) + tuple(array.shape))


def _to_host(xp: Any, array: Any) -> np.ndarray:
    return array.get() if hasattr(array, "get") and xp is not np else np.asarray(array)


def _block_of(array: Any, task: Task, group: int) -> Any:
    """The part of a broadcastable 4-d ``bias``/``mask`` a task reads, as ``(hk|1, g|1, rows|1, keys|1)``.

    Axes of size 1 stay size 1 (broadcast later), so no broadcast copy is made.
    """
    b, (h0, h1), (r0, r1), (lo, hi) = task.batch, task.heads, task.rows, task.keys
    index = (slice(b, b + 1), slice(h0 * group, h1 * group), slice(r0, r1), slice(lo, hi))
    part = array[tuple(slice(None) if n == 1 else s for n, s in zip(array.shape, index, strict=True))][0]
    if part.shape[0] == 1:
        return part[None]
    return part.reshape((h1 - h0, group, *tuple(part.shape[1:])))


class _Scratch:
    """One worker's reusable score buffer (NumPy only; CuPy's memory pool does this itself).

    Allocating a fresh multi-MiB score block per task costs page faults and
    zeroing by the kernel; a buffer reused for the worker's whole share of one
    call does not. It is dropped when the call ends.
    """

    def __init__(self, xp: Any, dtype: np.dtype) -> None:
        self.xp, self.dtype, self.buffer = xp, dtype, None

    def scores(self, shape: tuple[int, ...]) -> Any:
        if self.xp is not np:
            return None
        size = int(np.prod(shape))
        if self.buffer is None or self.buffer.size < size:
            self.buffer = np.empty(size, dtype=self.dtype)
        return self.buffer[:size].reshape(shape)


def _scores(ctx: _Context, task: Task, qb: Any, keys: tuple[int, int], user: Any, out: Any) -> Any:
    """Masked scores of the task's queries against keys ``[j0, j1)``.

    Laid out ``(hk, keys, g * rows)`` in float32 (``k @ q.T`` runs faster than
    ``q @ k.T`` for these shapes, and the softmax then reduces over the outer
    axis), ``(hk, g * rows, keys)`` in float64. Scale (unless folded into
    ``qb``), softcap, bias; disallowed entries (the pattern's masked ranges,
    the user's mask) are ``-inf``.
    """
    xp, args, dt, g = ctx.xp, ctx.args, ctx.dtype, ctx.args.group
    (h0, h1), (r0, r1), lo = task.heads, task.rows, task.keys[0]
    j0, j1 = keys
    hk, rows, n = h1 - h0, r1 - r0, j1 - j0
    k = ctx.k[task.batch, h0:h1, j0:j1]
    if ctx.fast:
        s = xp.matmul(k, qb.swapaxes(-1, -2), out=out)
        s4 = s.reshape(hk, n, g, rows)
    else:
        s = xp.matmul(qb, k.swapaxes(-1, -2), out=out)
        s *= args.scale
        s4 = s.reshape(hk, g, rows, n)
    if args.softcap is not None:
        s /= args.softcap
        xp.tanh(s, out=s)
        s *= args.softcap
    if ctx.bias is not None:
        bias = _block_of(ctx.bias, task, g)
        bias = bias if bias.shape[-1] == 1 else bias[..., j0 - lo : j1 - lo]
        s4 += _layout(ctx, bias).astype(dt, copy=False)
    for m0, m1 in task.masked:
        m0, m1 = max(m0, j0), min(m1, j1)
        if m0 < m1:
            positions = xp.arange(r0 + task.offset, r1 + task.offset)
            allowed = ctx.pattern.allows(positions[:, None], xp.arange(m0, m1)[None, :])  # (rows, keys)
            target = s4[:, m0 - j0 : m1 - j0] if ctx.fast else s4[..., m0 - j0 : m1 - j0]
            xp.copyto(target, NEG_INF, where=~_layout(ctx, allowed[None, None]))
    if user is not None:
        xp.copyto(s4, NEG_INF, where=~_layout(ctx, user if user.shape[-1] == 1 else user[..., j0 - lo : j1 - lo]))
    return s


def _layout(ctx: _Context, block: Any) -> Any:
    """A ``(hk|1, g|1, rows|1, keys|1)`` block in the scores' layout (``(hk, keys, g, rows)`` in float32)."""
    return block.transpose(0, 3, 1, 2) if ctx.fast else block


def _key_blocks(task: Task, key_block: int) -> list[tuple[int, int]]:
    """The task's key range in about equal pieces of at most ``key_block`` keys (one piece if 0,
    or if it exceeds ``key_block`` by at most a quarter)."""
    lo, hi = task.keys
    if key_block <= 0 or hi - lo <= key_block + key_block // 4:
        return [(lo, hi)]
    pieces = -(-(hi - lo) // key_block)
    step = -(-(hi - lo) // pieces)
    return [(j, min(j + step, hi)) for j in range(lo, hi, step)]


def _run_task(ctx: _Context, task: Task, scratch: _Scratch, key_block: int) -> None:
    xp, args, dt, g = ctx.xp, ctx.args, ctx.dtype, ctx.args.group
    (h0, h1), (r0, r1), (lo, hi) = task.heads, task.rows, task.keys
    hk, rows = h1 - h0, r1 - r0
    qb = ctx.q[task.batch, h0 * g : h1 * g, r0:r1].astype(dt)  # a copy: the block's queries
    if ctx.fast:
        qb *= dt.type(args.scale)
    qb = qb.reshape(hk, g * rows, args.head_dim)
    user = None if ctx.mask is None else _block_of(ctx.mask, task, g)
    bad = _BadColumns(ctx, task)
    if ctx.fast:
        acc, shift = _stream(ctx, task, qb, _key_blocks(task, key_block), user, scratch, bad)
        total = acc[:, -1:]  # the row of ones in v.T gives the softmax denominator
        out = acc[:, :-1] / xp.where(total == 0, dt.type(1), total)  # (hk, Dv, g * rows)
        out, shift, total = (xp.ascontiguousarray(a.swapaxes(-1, -2)) for a in (out, shift, total))
    else:  # float64: the reference's steps, in its order
        s = _scores(ctx, task, qb, (lo, hi), user, scratch.scores((hk, g * rows, hi - lo)))
        shift = s.max(axis=-1, keepdims=True)
        shift = xp.where(shift == NEG_INF, dt.type(0), shift)  # no allowed finite score: exp(-inf - 0) = 0
        s -= shift
        bad.keep(s, lo, hi, shift)
        xp.exp(s, out=s)
        total = s.sum(axis=-1, keepdims=True)
        s /= xp.where(total == 0, dt.type(1), total)
        out = xp.matmul(s, ctx.v[task.batch, h0:h1, lo:hi])
    lse = shift + xp.log(total)  # an empty row: 0 + log(0) = -inf
    bad.add_to(out, shift, total, user)
    ctx.out[task.batch, h0 * g : h1 * g, r0:r1] = out.reshape(hk * g, rows, -1)
    ctx.lse[task.batch, h0 * g : h1 * g, r0:r1] = lse.reshape(hk * g, rows)


def _stream(
    ctx: _Context, task: Task, qb: Any, blocks: list, user: Any, scratch: _Scratch, bad: _BadColumns
) -> tuple[Any, Any]:
    """Softmax numerators over the key pieces (float32, transposed layout): ``(acc, shift)``,
    ``acc (hk, Dv + 1, g * rows) = sum_j [v_j, 1] exp(s_j - shift)`` over allowed ``j``.

    Each query is shifted by its running maximum ``m`` only when it must be:
    while ``m`` lies in ``ctx.unshifted`` (or is ``-inf``), ``exp(s)`` can
    neither overflow nor lose precision in the products, and the shift, which
    cancels in ``out = acc / total``, is 0. When ``|q_i| |k_j| scale`` (or the
    softcap) already bounds every score of the task inside that range, the max
    is not even computed. With several pieces (an online softmax), ``acc`` is
    rescaled when a shift changes.
    """
    xp, dt = ctx.xp, ctx.dtype
    (h0, h1), batch = task.heads, task.batch
    low, high = ctx.unshifted
    bounded = _scores_bounded(ctx, task, qb)
    acc = m_run = shift = None
    for j0, j1 in blocks:
        s = _scores(ctx, task, qb, (j0, j1), user, scratch.scores((qb.shape[0], j1 - j0, qb.shape[1])))
        if bounded:
            m_new = shift_new = xp.zeros((qb.shape[0], 1, qb.shape[1]), dtype=dt)
        else:
            m_block = _max_over_keys(xp, s)
            m_new = m_block if m_run is None else xp.maximum(m_run, m_block)
            safe = ((m_new >= low) & (m_new <= high)) | (m_new == NEG_INF)
            shift_new = xp.where(safe, dt.type(0), m_new)  # NaN and +inf rows shift by NaN / inf: NaN, as the reference
            if not bool(safe.all()):
                s -= shift_new
        bad.keep(s, j0, j1, shift_new)
        xp.exp(s, out=s)
        part = xp.matmul(ctx.v[batch, h0:h1, :, j0:j1], s)
        if acc is None:
            acc = part
        else:
            if not bounded and bool((shift_new != shift).any()):  # rescale; 0 while nothing was allowed
                acc *= xp.where(m_run == NEG_INF, dt.type(0), xp.exp(shift - shift_new))
            acc += part
        m_run, shift = m_new, shift_new
    return acc, shift


def _scores_bounded(ctx: _Context, task: Task, qb: Any) -> bool:
    """True if ``|s_ij| <= |q_i| |k_j| scale`` (or the softcap) keeps every score of the task
    inside the range where no shift is needed (no bias: it could add anything)."""
    if ctx.key_norms is None:
        return False
    xp = ctx.xp
    (h0, h1), (lo, hi) = task.heads, task.keys
    longest_key = ctx.key_norms[task.batch, h0:h1, lo:hi].max(axis=-1)  # (hk,)
    bound = xp.sqrt(xp.einsum("hcd,hcd->hc", qb, qb)) * longest_key[:, None]  # qb carries the scale
    if ctx.args.softcap is not None:
        bound = xp.minimum(bound, ctx.args.softcap)
    return bool((bound <= ctx.score_bound).all())  # NaN or inf in q or k: False


def _max_over_keys(xp: Any, s: Any) -> Any:
    """``s.max(axis=-2, keepdims=True)``; for NumPy with few columns, by halving (pairwise
    maxima over long contiguous runs), which is several times faster than NumPy's own
    reduction over the middle axis of such an array."""
    if xp is not np or s.shape[-1] >= 256:
        return s.max(axis=-2, keepdims=True)
    while s.shape[-2] > 16:
        half = s.shape[-2] // 2
        top = np.maximum(s[:, :half], s[:, half : 2 * half])
        if s.shape[-2] % 2:
            np.maximum(top[:, -1:], s[:, -1:], out=top[:, -1:])
        s = top
    return s.max(axis=-2, keepdims=True)


class _BadColumns:
    """Keys of a task with a non-finite value: their ``s - shift`` is kept before ``exp``, so that
    ``P_ij v_j`` can be added back with IEEE rules once the final shift and total are known.

    The products ran with those values zeroed, so a NaN or infinite value at a
    disallowed key cannot leak; at an allowed key it must count (``0 * inf =
    nan`` where the weight is exactly 0), as in the reference. In float32 a
    weight that underflowed to 0 although the float64 reference keeps it
    positive (``s - m > log(smallest float64)``, ``m`` the row maximum, or 0
    where the shift was skipped) counts as the smallest positive weight, so
    ``inf`` stays ``inf`` as in the reference.
    """

    def __init__(self, ctx: _Context, task: Task) -> None:
        self.ctx, self.task = ctx, task
        self.parts: list[tuple[list[int], Any, Any]] = []  # (keys, s - shift, shift), laid out (hk, g * rows, .)

    def keep(self, shifted: Any, j0: int, j1: int, shift: Any) -> None:
        if self.ctx.nonfinite_keys is None:
            return
        keys = np.flatnonzero(self.ctx.nonfinite_keys[self.task.batch, j0:j1])
        if keys.size:
            index = self.ctx.xp.asarray(keys)
            if self.ctx.fast:  # transposed scores
                shifted, shift = shifted[:, index, :].swapaxes(-1, -2), shift.swapaxes(-1, -2)
            else:
                shifted = shifted[..., index]
            self.parts.append(((keys + j0).tolist(), shifted, shift))

    def add_to(self, out: Any, shift: Any, total: Any, user: Any) -> None:
        """Add the kept keys' terms to ``out (hk, g * rows, Dv)``; ``shift`` and ``total`` are ``(hk, g * rows, 1)``."""
        ctx, task = self.ctx, self.task
        xp, dt, g = ctx.xp, ctx.dtype, ctx.args.group
        (h0, h1), (r0, r1), lo = task.heads, task.rows, task.keys[0]
        hk, rows = h1 - h0, r1 - r0
        out4 = out.reshape(hk, g, rows, -1)
        positions = xp.arange(r0 + task.offset, r1 + task.offset)
        for keys, shifted, used in self.parts:
            shifted = shifted + (used - shift)  # relative to the final shift
            p = xp.where(total == 0, dt.type(0), xp.exp(shifted) / xp.where(total == 0, dt.type(1), total))
            if ctx.fast:
                kept = (p == 0) & (shifted > FLOAT64_EXP_UNDERFLOW)
                p = xp.where(kept, dt.type(np.finfo(dt).smallest_subnormal), p)
            for column, j in enumerate(keys):
                allowed = ctx.pattern.allows(positions, j)[None, None, :]  # (1, 1, rows)
                if user is not None:
                    allowed = allowed & user[..., j - lo if user.shape[-1] > 1 else 0]
                vj = ctx.v_raw[task.batch, h0:h1, j][:, None, None, :]  # (hk, 1, 1, Dv)
                add = allowed[..., None] & ~xp.isfinite(vj)
                pj = p[..., column : column + 1].reshape(hk, g, rows, 1)
                out4 += xp.where(add, pj * vj, dt.type(0))


# -- threads ------------------------------------------------------------------
_EXECUTORS: dict[int, ThreadPoolExecutor] = {}
_EXECUTORS_LOCK = threading.Lock()
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_EXECUTORS.clear)


def _executor(threads: int) -> ThreadPoolExecutor:
    with _EXECUTORS_LOCK:
        if threads not in _EXECUTORS:
            _EXECUTORS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="attnref-numpy")
        return _EXECUTORS[threads]


def _run_all(ctx: _Context, tasks: list[Task], config: BlockConfig) -> None:
    """Run the tasks, on ``threads`` workers pulling from one queue."""
    threads, key_block = config.threads, config.key_block
    if threads <= 1 or len(tasks) <= 1:
        scratch = _Scratch(ctx.xp, ctx.dtype)
        with ctx.errstate():
            for task in tasks:
                _run_task(ctx, task, scratch, key_block)
        return
    queue: Iterator[Task] = iter(tasks)
    lock = threading.Lock()

    def worker() -> None:
        scratch = _Scratch(ctx.xp, ctx.dtype)
        with ctx.errstate():
            while True:
                with lock:
                    task = next(queue, None)
                if task is None:
                    return
                _run_task(ctx, task, scratch, key_block)

    with single_threaded_blas():
        futures = [_executor(threads).submit(worker) for _ in range(min(threads, len(tasks)))]
        for future in futures:
            future.result()


# -- the op -------------------------------------------------------------------
def attend(
    xp: Any,
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern,
    args: AttentionArgs,
    *,
    bias: Any,
    mask: Any,
    return_lse: bool,
    config: BlockConfig,
) -> Any:
    """Compute one multi-head op (arguments already validated into ``args``).

    Returns ``out`` (and ``lse`` if ``return_lse``) in the dtype of ``q``.
    """
    ctx = _Context(xp, q, k, v, pattern, args, bias, mask)
    if not ctx.fast:
        config = dataclasses.replace(config, key_block=0)  # float64 follows the reference: no streaming
    _run_all(ctx, plan(args, pattern, config), config)
    out = ctx.out.astype(ctx.out_dtype, copy=False)
    if return_lse:
        return out, ctx.lse.astype(ctx.out_dtype, copy=False)
    return out
