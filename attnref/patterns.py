"""The allowed-key rule of every attention pattern, and the block plan, written once.

A pattern answers one question: may the query at *aligned* position ``p`` see
the key at position ``j``? The reference evaluates :meth:`Pattern.allows` on
whole index grids, every blocked implementation (the NumPy/CuPy and torch
backends, the FlexAttention baseline, the docs' example backend) cuts its work
with :meth:`Pattern.plan_blocks` (built from :meth:`Pattern.key_range` and
:meth:`Pattern.block_is_full`; :meth:`Pattern.query_range` is the transpose,
for passes over key blocks), and the docs draw their pictures from
:meth:`Pattern.dense`. Nothing else in attnref restates these rules.

Alignment maps a query row ``i`` to ``p = i + offset`` (:func:`align_offset`):
``offset = Lk - Lq`` for ``"bottom_right"`` (the last query sits on the last
key, as in KV-cache decoding) and ``0`` for ``"top_left"``.

=============  ==========================================================
pattern        key ``j`` is allowed at aligned position ``p`` iff
=============  ==========================================================
global         always
causal         ``j <= p``
window         ``p - left <= j <= p + right`` (an unbounded side omits its bound)
chunk          ``j // c == p // c`` (floor division), and ``j <= p`` if causal
=============  ==========================================================

A window side or chunk size may be any non-negative integer, however large: the
rule is evaluated on the distance ``j - p`` (which the sequences bound), never
on ``p + right``, so a side beyond every sequence acts as unbounded instead of
overflowing a fixed-width integer.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnref.errors import invalid_type, invalid_value

__all__ = ["ALIGNMENTS", "KINDS", "KeyTile", "Pattern", "QueryBlock", "align_offset"]

#: The accepted values of ``align``.
ALIGNMENTS: tuple[str, ...] = ("bottom_right", "top_left")

#: The kinds of :class:`Pattern`.
KINDS: tuple[str, ...] = ("global", "causal", "window", "chunk")


def align_offset(align: str, q_len: Any, kv_len: Any) -> Any:
    """Offset added to a query row to get its aligned position.

    ``kv_len - q_len`` for ``"bottom_right"``, ``0`` for ``"top_left"``. Works
    elementwise on per-batch length arrays.
    """
    if align == "bottom_right":
        return kv_len - q_len
    return kv_len * 0


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _side(argument: str, value: Any) -> int | None:
    """A window side: ``None`` (unbounded) or an int >= 0 of any size."""
    if value is None:
        return None
    if not _is_int(value):
        raise invalid_type(argument, repr(value), "an integer >= 0, or None for an unbounded side")
    if value < 0:
        raise invalid_value(argument, repr(value), "an integer >= 0, or None for an unbounded side")
    return int(value)


def _fits(bound: int, like: Any) -> Any:
    """``bound`` made comparable with the integer array ``like`` without overflow.

    Positions and distances of real sequences fit ``like``'s dtype, so a bound
    beyond that dtype's range behaves exactly like the dtype's largest value.
    Python ints and floating arrays take the bound as it is.
    """
    dtype = getattr(like, "dtype", None)
    if dtype is None or getattr(dtype, "is_floating_point", False) or getattr(dtype, "kind", "i") == "f":
        return bound if dtype is None else float(bound)
    largest = (1 << (8 * dtype.itemsize - 1)) - 1
    return min(bound, largest)


@dataclass(frozen=True)
class KeyTile:
    """Keys ``start:stop`` of a query block; ``full``: every row of the block may see every one."""

    start: int
    stop: int
    full: bool


@dataclass(frozen=True)
class QueryBlock:
    """Query rows ``start:stop`` and the only keys ``key_start:key_stop`` they may see.

    ``tiles`` cut the keys (see :meth:`Pattern.plan_blocks`); a block whose key
    range is empty (:attr:`empty`) has no tiles: its rows see no key at all.
    ``causal`` (:meth:`Pattern.block_is_causal`): the rows see exactly the lower
    triangle of the block, which a kernel's built-in causal mask draws.
    """

    start: int
    stop: int
    key_start: int
    key_stop: int
    tiles: tuple[KeyTile, ...]
    causal: bool = False  #: square, row ``start + t`` sees exactly keys ``key_start..key_start + t``

    @property
    def empty(self) -> bool:
        """No key is allowed to any row of the block (output 0, lse ``-inf``)."""
        return self.key_start >= self.key_stop

    @property
    def full(self) -> bool:
        """Every row may see every key of the range: the block needs no pattern mask."""
        return not self.empty and all(tile.full for tile in self.tiles)

    def masked_ranges(self) -> tuple[tuple[int, int], ...]:
        """Key ranges ``(start, stop)`` that need the pattern's mask: the cut tiles, adjacent ones merged."""
        ranges: list[tuple[int, int]] = []
        for tile in self.tiles:
            if tile.full:
                continue
            if ranges and ranges[-1][1] == tile.start:
                ranges[-1] = (ranges[-1][0], tile.stop)
            else:
                ranges.append((tile.start, tile.stop))
        return tuple(ranges)


@dataclass(frozen=True)
class Pattern:
    """One attention pattern; build it with the class methods.

    The constructor checks its arguments: an unknown ``kind``, a negative or
    non-integer side or chunk size, or a field that the kind does not use is an
    error naming the field.

    Attributes
    ----------
    kind : {"global", "causal", "window", "chunk"}
    left, right : int or None
        Window reach before and after ``p`` (``None`` = unbounded; any size).
        Only for ``kind="window"``.
    chunk_size : int or None
        Keys per chunk, >= 1 (any size). Only for ``kind="chunk"``.
    causal : bool
        For ``kind="chunk"``: also require ``j <= p``.
    """

    kind: str
    left: int | None = None
    right: int | None = None
    chunk_size: int | None = None
    causal: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise invalid_value("kind", repr(self.kind), "one of " + ", ".join(repr(k) for k in KINDS))
        if not isinstance(self.causal, (bool, np.bool_)):
            raise invalid_type("causal", repr(self.causal), "True or False")
        object.__setattr__(self, "causal", bool(self.causal))
        if self.kind == "window":
            object.__setattr__(self, "left", _side("left", self.left))
            object.__setattr__(self, "right", _side("right", self.right))
        elif self.left is not None or self.right is not None:
            side = "left" if self.left is not None else "right"
            raise invalid_value(side, repr(getattr(self, side)), f"None for {self.kind!r} (only windows have sides)")
        if self.kind == "chunk":
            if not _is_int(self.chunk_size):
                raise invalid_type("chunk_size", repr(self.chunk_size), "an integer >= 1")
            if self.chunk_size < 1:
                raise invalid_value("chunk_size", repr(self.chunk_size), "an integer >= 1")
            object.__setattr__(self, "chunk_size", int(self.chunk_size))
        elif self.chunk_size is not None:
            raise invalid_value("chunk_size", repr(self.chunk_size), f"None for {self.kind!r}")
        if self.causal and self.kind != "chunk":
            raise invalid_value("causal", "True", f"False for {self.kind!r} (use Pattern.full(causal=True))")

    # -- constructors -----------------------------------------------------
    @classmethod
    def full(cls, causal: bool = False) -> Pattern:
        """Global attention, optionally causal."""
        if not isinstance(causal, (bool, np.bool_)):
            raise invalid_type("causal", repr(causal), "True or False")
        return cls("causal") if causal else cls("global")

    @classmethod
    def window(cls, left: int | None, right: int | None) -> Pattern:
        """Sliding window ``p - left <= j <= p + right`` (``None`` = unbounded side)."""
        return cls("window", left=left, right=right)

    @classmethod
    def chunk(cls, chunk_size: int, causal: bool = False) -> Pattern:
        """Chunked (block-local) attention with chunks of ``chunk_size`` keys."""
        return cls("chunk", chunk_size=chunk_size, causal=causal)

    # -- the rule ---------------------------------------------------------
    def allows(self, p: Any, j: Any) -> Any:
        """Elementwise: may aligned query position ``p`` see key ``j``?

        ``p`` and ``j`` are integer arrays (or ints) that broadcast together
        (``p`` may also be real, as Luong's local-p centre); works with any
        array library whose operators follow NumPy's. A NaN ``p`` allows nothing.
        """
        if self.kind == "global":
            return (p <= j) | (p > j)  # all True, in the arrays' own library and shape
        if self.kind == "causal":
            return j <= p
        if self.kind == "window":
            d = j - p  # the key's distance from the query, bounded by the sequences
            ok = (p <= j) | (p > j)
            if self.left is not None:
                ok = ok & (d >= -_fits(self.left, d))
            if self.right is not None:
                ok = ok & (d <= _fits(self.right, d))
            return ok
        c = _fits(self.chunk_size, j - p)  # a chunk beyond every position: one chunk for j >= 0
        same_chunk = (j // c) == (p // c)
        return (same_chunk & (j <= p)) if self.causal else same_chunk

    @property
    def period(self) -> int:
        """The smallest shift ``s >= 1`` with ``allows(p + s, j + s) == allows(p, j)`` for every ``p, j``.

        1 for global, causal and window patterns (the rule reads only
        ``j - p``); the chunk size for chunks (shifting by whole chunks keeps
        every pair in, or out of, one chunk). Blocked kernels draw the mask of
        one block and reuse it for every block at the same place in the period.
        """
        return self.chunk_size if self.kind == "chunk" else 1

    # -- block planning ---------------------------------------------------
    def key_range(self, p_first: int, p_last: int, kv_len: int) -> tuple[int, int]:
        """Half-open range ``[lo, hi)`` of keys in ``[0, kv_len)`` that some
        position in ``p_first..p_last`` may see; ``lo >= hi`` means none.

        Every allowed key of those positions lies in the range; keys inside it
        may still be disallowed for some positions (use :meth:`allows`). Plain
        Python ints: any side or chunk size, no overflow.
        """
        p_first, p_last, kv_len = int(p_first), int(p_last), int(kv_len)
        lo, hi = 0, kv_len
        if self.kind == "causal":
            hi = p_last + 1
        elif self.kind == "window":
            if self.left is not None:
                lo = p_first - self.left
            if self.right is not None:
                hi = p_last + self.right + 1
        elif self.kind == "chunk":
            c = self.chunk_size
            lo = (p_first // c) * c
            hi = p_last + 1 if self.causal else (p_last // c + 1) * c
        return max(lo, 0), min(hi, kv_len)

    def query_range(self, j_first: int, j_last: int, q_len: int, offset: int = 0) -> tuple[int, int]:
        """Half-open range ``[a, b)`` of query rows in ``[0, q_len)`` (row ``i`` at
        ``p = i + offset``) whose position may see some key in ``j_first..j_last``;
        ``a >= b`` means none. The transpose of :meth:`key_range`, for passes that
        walk key blocks (a FlashAttention-2 style backward).

        Every row that may see one of those keys lies in the range; rows inside it
        may still be disallowed for some keys (use :meth:`allows`).
        """
        j_first, j_last, q_len, offset = int(j_first), int(j_last), int(q_len), int(offset)
        lo, hi = 0, q_len  # in rows
        if self.kind == "causal":
            lo = j_first - offset  # p >= j
        elif self.kind == "window":
            if self.right is not None:
                lo = j_first - self.right - offset  # p >= j - right
            if self.left is not None:
                hi = j_last + self.left + 1 - offset  # p <= j + left
        elif self.kind == "chunk":
            c = self.chunk_size
            lo = (j_first if self.causal else (j_first // c) * c) - offset
            hi = (j_last // c + 1) * c - offset
        return max(lo, 0), min(hi, q_len)

    def block_is_full(self, p_first: int, p_last: int, j_first: int, j_last: int) -> bool:
        """True if every position in ``p_first..p_last`` may see every key in
        ``j_first..j_last`` (both inclusive), so a kernel can skip the mask.

        Exact: False whenever some pair in the block is disallowed.
        """
        p_first, p_last, j_first, j_last = int(p_first), int(p_last), int(j_first), int(j_last)
        if self.kind == "global":
            return True
        if self.kind == "causal":
            return j_last <= p_first
        if self.kind == "window":
            left_ok = self.left is None or j_first >= p_last - self.left
            right_ok = self.right is None or j_last <= p_first + self.right
            return left_ok and right_ok
        c = self.chunk_size
        one_chunk = p_first // c == p_last // c == j_first // c == j_last // c
        return one_chunk and (not self.causal or j_last <= p_first)

    def block_is_causal(self, p_first: int, p_last: int, j_first: int, j_last: int) -> bool:
        """True if the block is square and position ``p_first + t`` may see exactly the keys
        ``j_first..j_first + t`` of it (both ranges inclusive): the lower triangle, which a
        kernel's own causal mask (``is_causal``, top-left aligned) draws without a mask array.

        Exact: False whenever some pair of the block is allowed off that triangle or
        disallowed on it.
        """
        p_first, p_last, j_first, j_last = int(p_first), int(p_last), int(j_first), int(j_last)
        n = p_last - p_first + 1
        if n < 1 or j_last - j_first + 1 != n:
            return False
        if n == 1:  # the triangle is the one pair
            return self.block_is_full(p_first, p_last, j_first, j_last)
        if self.kind == "causal":  # row p sees j <= p
            return p_first == j_first
        if self.kind == "window":  # row p sees p - left .. p + right
            top = self.right is not None and p_first + self.right == j_first
            return top and (self.left is None or p_last - self.left <= j_first)
        if self.kind == "chunk" and self.causal:  # row p sees its chunk's start .. p
            c = self.chunk_size
            return p_first == j_first and p_first // c == p_last // c
        return False  # global, or a plain chunk: row 0 sees more than one key

    def plan_blocks(
        self,
        q_len: int,
        kv_len: int,
        *,
        offset: int = 0,
        block_rows: int = 128,
        key_tile: int | None = None,
        grid: bool = False,
        merge_rows: int | None = None,
        merge_causal: bool = False,
    ) -> tuple[QueryBlock, ...]:
        """The block plan of query rows ``0..q_len-1`` (row ``i`` at ``p = i + offset``) against ``kv_len`` keys.

        Rows are cut into blocks of ``block_rows``; each block gets the key
        range :meth:`key_range` of its positions, and the range is cut into
        tiles, each marked ``full`` (:meth:`block_is_full`: every row may see
        every key, no mask needed) or not. Blocks whose range is empty are in
        the plan too (:attr:`QueryBlock.empty`, no tiles), so the blocks cover
        every row exactly once, in order.

        Parameters
        ----------
        q_len, kv_len : int
            Query rows and keys of one sequence (its own lengths, when lengths
            or packed sequences differ).
        offset : int
            Alignment offset of the sequence (see :func:`align_offset`).
        block_rows : int
            Query rows per block, >= 1 (the last block may be shorter).
        key_tile : int, optional
            Tile width, >= 1. ``None``: one tile, the block's whole key range.
        grid : bool
            ``False``: tiles start at the block's ``key_start`` and are clipped
            to its range (a band cut from its own start). ``True``: tiles are
            the cells ``[n * key_tile, (n + 1) * key_tile)`` (clipped to
            ``kv_len`` only) that meet the range, as a block-sparse kernel
            (FlexAttention's ``BlockMask``) indexes them; a cell reaching
            outside the range holds keys no row may see, so it is never full.
            Needs ``key_tile``.
        merge_rows : int, optional
            Merge consecutive blocks with the same key range into one, up to
            this many rows (they share a band: one larger block does the same
            work in larger products). ``None``: no merging.
        merge_causal : bool
            With ``merge_rows``: also merge consecutive blocks while the merged
            block stays causal (:meth:`block_is_causal`; a causal chunk's
            blocks, for example, merge into the chunk), for a kernel with a
            built-in causal mask. Such a block does half its products' work
            in a kernel without one, so the option is off by default.

        Returns
        -------
        tuple of QueryBlock
        """
        q_len, kv_len, offset = _count("q_len", q_len, 0), _count("kv_len", kv_len, 0), int(offset)
        block_rows = _count("block_rows", block_rows, 1)
        if key_tile is not None:
            key_tile = _count("key_tile", key_tile, 1)
        if grid and key_tile is None:
            raise invalid_value("key_tile", "None", "an integer >= 1 when grid=True")
        if merge_rows is not None:
            merge_rows = _count("merge_rows", merge_rows, 1)
        spans: list[list[int]] = []  # [start, stop, lo, hi]
        for start in range(0, q_len, block_rows):
            stop = min(start + block_rows, q_len)
            lo, hi = self.key_range(start + offset, stop - 1 + offset, kv_len)
            lo, hi = (lo, hi) if lo < hi else (0, 0)
            last = spans[-1] if spans else None
            fits = bool(merge_rows) and last is not None and stop - last[0] <= merge_rows
            if fits and (
                (last[2], last[3]) == (lo, hi) or (merge_causal and self._merges_causal(last, stop, lo, hi, offset))
            ):
                last[1], last[2], last[3] = stop, min(last[2], lo), max(last[3], hi)
            else:
                spans.append([start, stop, lo, hi])
        return tuple(self._block(*span, offset, kv_len, key_tile, grid) for span in spans)

    def _merges_causal(self, last: list[int], stop: int, lo: int, hi: int, offset: int) -> bool:
        """Whether block ``last`` (``[start, stop, lo, hi]``) and the next block (rows up to
        ``stop``, keys ``lo:hi``) make one causal block (checked on the merged block itself)."""
        if lo >= hi or last[2] >= last[3]:
            return False
        first, end = min(last[2], lo), max(last[3], hi)
        return self.block_is_causal(last[0] + offset, stop - 1 + offset, first, end - 1)

    def _block(
        self, start: int, stop: int, lo: int, hi: int, offset: int, kv_len: int, key_tile: int | None, grid: bool
    ) -> QueryBlock:
        """One :class:`QueryBlock` with its tiles."""
        p_first, p_last = start + offset, stop - 1 + offset
        if lo >= hi:
            return QueryBlock(start, stop, lo, hi, ())
        if key_tile is None:
            cuts = [(lo, hi)]
        elif grid:
            first = lo // key_tile * key_tile
            cuts = [(j, min(j + key_tile, kv_len)) for j in range(first, hi, key_tile)]
        else:
            cuts = [(j, min(j + key_tile, hi)) for j in range(lo, hi, key_tile)]
        tiles = tuple(
            KeyTile(j0, j1, j0 >= lo and j1 <= hi and self.block_is_full(p_first, p_last, j0, j1 - 1))
            for j0, j1 in cuts
        )
        causal = self.block_is_causal(p_first, p_last, lo, hi - 1)
        return QueryBlock(start, stop, lo, hi, tiles, causal)

    def dense(self, q_len: int, kv_len: int, align: str = "bottom_right") -> np.ndarray:
        """The boolean ``(q_len, kv_len)`` picture of the pattern (for docs and tests)."""
        p = np.arange(q_len)[:, None] + align_offset(align, q_len, kv_len)
        j = np.arange(kv_len)[None, :]
        return np.asarray(self.allows(p, j))

    def describe(self) -> str:
        """A short human-readable name, e.g. ``"window(255, 0)"``."""
        if self.kind == "window":
            return f"window({self.left}, {self.right})"
        if self.kind == "chunk":
            return f"chunk({self.chunk_size}{', causal' if self.causal else ''})"
        return self.kind


def _count(argument: str, value: Any, minimum: int) -> int:
    if not _is_int(value):
        raise invalid_type(argument, repr(value), f"an integer >= {minimum}")
    if value < minimum:
        raise invalid_value(argument, repr(value), f"an integer >= {minimum}")
    return int(value)
