"""The block helpers the VJPs used before the reference planned its blocks by key range.

:mod:`attnref.reference.gradients` still calls these (every key of a query
block, ``k`` repeated per query head); they are thin wrappers over the steps of
:mod:`attnref.reference.multihead` and go once the VJPs use
:func:`~attnref.reference.multihead.blocks`, :func:`~attnref.reference.multihead.block_scores`
and :func:`~attnref.reference.multihead.block_allowed` directly. Nothing else uses them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from attnref.patterns import Pattern
from attnref.reference import multihead
from attnref.reference.multihead import Block
from attnref.validation import AttentionArgs

__all__ = ["allowed_keys", "query_blocks", "block_scores"]


def _all_keys(args: AttentionArgs, b: int, rows: slice) -> Block:
    return Block(b, rows, slice(0, args.kv_len), int(args.offsets()[b]))


def allowed_keys(args: AttentionArgs, pattern: Pattern, mask: np.ndarray | None, rows: slice) -> np.ndarray:
    """Step 4 for query ``rows`` of every batch against every key: boolean ``(B, Hq, len(rows), Lk)``."""
    return np.stack([multihead.block_allowed(args, pattern, mask, _all_keys(args, b, rows)) for b in range(args.batch)])


def query_blocks(args: AttentionArgs) -> Iterator[slice]:
    """Slices of query rows whose scores against all keys (all batches and heads) hold at most
    :data:`attnref.reference.multihead.SCORE_BLOCK_ELEMENTS` elements (at least one row each)."""
    step = max(1, multihead.SCORE_BLOCK_ELEMENTS // max(1, args.batch * args.q_heads * args.kv_len))
    for start in range(0, args.q_len, step):
        yield slice(start, min(start + step, args.q_len))


def block_scores(
    args: AttentionArgs, qc: np.ndarray, kc: np.ndarray, bias: np.ndarray | None, rows: slice, dt: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1 to 3 for query ``rows`` of every batch against every key: ``(s0, s)``, ``(B, Hq, rows, Lk)``.

    ``kc`` holds the kv heads already repeated to the query heads.
    """
    repeated = dataclasses.replace(args, kv_heads=args.q_heads)  # one (repeated) kv head per query head
    parts = [multihead.block_scores(repeated, qc, kc, bias, _all_keys(args, b, rows), dt) for b in range(args.batch)]
    return np.stack([s0 for s0, _ in parts]), np.stack([s for _, s in parts])
