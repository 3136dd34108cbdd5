"""The allowed-key rule of every attention pattern, written once.

A pattern answers one question: may the query at *aligned* position ``p`` see
the key at position ``j``? The reference evaluates :meth:`Pattern.allows` on
whole index grids, the fast backends ask :meth:`Pattern.key_range` and
:meth:`Pattern.block_is_full` to plan their blocks, and the docs draw their
pictures from :meth:`Pattern.allows`. Nothing else in attnref restates these
rules.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ALIGNMENTS", "Pattern", "align_offset"]

#: The accepted values of ``align``.
ALIGNMENTS: tuple[str, ...] = ("bottom_right", "top_left")


def align_offset(align: str, q_len: Any, kv_len: Any) -> Any:
    """Offset added to a query row to get its aligned position.

    ``kv_len - q_len`` for ``"bottom_right"``, ``0`` for ``"top_left"``. Works
    elementwise on per-batch length arrays.
    """
    if align == "bottom_right":
        return kv_len - q_len
    return kv_len * 0


@dataclass(frozen=True)
class Pattern:
    """One attention pattern (validated values; build it with the class methods).

    Attributes
    ----------
    kind : {"global", "causal", "window", "chunk"}
    left, right : int or None
        Window reach before and after ``p`` (``None`` = unbounded). Only for
        ``kind="window"``.
    chunk_size : int or None
        Only for ``kind="chunk"``.
    causal : bool
        For ``kind="chunk"``: also require ``j <= p``.
    """

    kind: str
    left: int | None = None
    right: int | None = None
    chunk_size: int | None = None
    causal: bool = False

    # -- constructors -----------------------------------------------------
    @classmethod
    def full(cls, causal: bool = False) -> Pattern:
        """Global attention, optionally causal."""
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

        ``p`` and ``j`` are integer arrays (or ints) that broadcast together;
        works with any array library whose operators follow NumPy's.
        """
        if self.kind == "global":
            return (p <= j) | (p > j)  # all True, in the arrays' own library and shape
        if self.kind == "causal":
            return j <= p
        if self.kind == "window":
            ok = (p <= j) | (p > j)
            if self.left is not None:
                ok = ok & (j >= p - self.left)
            if self.right is not None:
                ok = ok & (j <= p + self.right)
            return ok
        same_chunk = (j // self.chunk_size) == (p // self.chunk_size)
        return (same_chunk & (j <= p)) if self.causal else same_chunk

    # -- block planning ---------------------------------------------------
    def key_range(self, p_first: int, p_last: int, kv_len: int) -> tuple[int, int]:
        """Half-open range ``[lo, hi)`` of keys in ``[0, kv_len)`` that some
        position in ``p_first..p_last`` may see; ``lo >= hi`` means none.

        Every allowed key of those positions lies in the range; keys inside it
        may still be disallowed for some positions (use :meth:`allows`).
        """
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

    def block_is_full(self, p_first: int, p_last: int, j_first: int, j_last: int) -> bool:
        """True if every position in ``p_first..p_last`` may see every key in
        ``j_first..j_last`` (both inclusive), so a kernel can skip the mask."""
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
