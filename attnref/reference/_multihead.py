"""The pipeline shared by the three multi-head ops (global, local, chunked).

The ops differ only in their :class:`~attnref.patterns.Pattern`; everything
else (scores, softcap, bias, the allowed-key rule, softmax, GQA) is here once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from attnref.patterns import Pattern
from attnref.reference._numerics import apply_softcap, cast, compute_dtype, masked_softmax, matmul, weighted_sum
from attnref.validation import AttentionArgs, check_attention, check_flag

#: Elements of one query block's score array; bounds the reference's memory
#: (32 MiB per float64 array) whatever the sequence length.
SCORE_BLOCK_ELEMENTS = 1 << 22


def allowed_keys(args: AttentionArgs, pattern: Pattern, mask: np.ndarray | None, rows: slice) -> np.ndarray:
    """Boolean ``(B, Hq, len(rows), Lk)``: may query row ``i`` see key ``j``?

    True iff the pattern allows ``j`` at ``p = i + offset_b``, ``j < kv_lengths[b]``,
    ``i < q_lengths[b]`` and ``mask`` (if given) is True.
    """
    i = np.arange(rows.start, rows.stop)[None, :, None]
    j = np.arange(args.kv_len)[None, None, :]
    p = i + args.offsets()[:, None, None]
    ok = np.asarray(pattern.allows(p, j))
    if args.kv_lengths is not None:
        ok = ok & (j < args.kv_lengths[:, None, None])
    if args.q_lengths is not None:
        ok = ok & (i < args.q_lengths[:, None, None])
    ok = np.broadcast_to(ok[:, None], (args.batch, args.q_heads, rows.stop - rows.start, args.kv_len))
    if mask is not None:
        ok = ok & np.broadcast_to(mask, args.scores_shape)[:, :, rows]
    return ok


def query_blocks(args: AttentionArgs) -> Iterator[slice]:
    """Slices of query rows whose scores against all keys hold at most
    :data:`SCORE_BLOCK_ELEMENTS` elements (at least one row each)."""
    step = max(1, SCORE_BLOCK_ELEMENTS // (args.batch * args.q_heads * args.kv_len))
    for start in range(0, args.q_len, step):
        yield slice(start, min(start + step, args.q_len))


def block_scores(
    args: AttentionArgs, qc: np.ndarray, kc: np.ndarray, bias: np.ndarray | None, rows: slice, dt: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the query ``rows`` against every key, in ``dt``.

    Returns ``(s0, s)``: ``s0 = scale * (q_i . k_j)``, and ``s`` after softcap
    and bias (steps 1 to 3 of the op). ``kc`` holds the kv heads already
    repeated to the query heads.
    """
    s0 = (matmul(qc[:, :, rows], np.swapaxes(kc, -1, -2), dt) * dt.type(args.scale)).astype(dt, copy=False)
    s = s0 if args.softcap is None else apply_softcap(s0, args.softcap, dt)
    if bias is not None:
        s = (s + cast(np.broadcast_to(bias, args.scores_shape)[:, :, rows], dt)).astype(dt, copy=False)
    return s0, s


def attend(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern,
    *,
    scale: Any,
    softcap: Any,
    bias: Any,
    mask: Any,
    kv_lengths: Any,
    q_lengths: Any,
    align: Any,
    return_lse: Any,
    return_weights: Any,
    precision: Any,
) -> Any:
    """Validate, then compute the op for ``pattern`` block by block over queries."""
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    bias = None if bias is None else np.asarray(bias)
    mask = None if mask is None else np.asarray(mask)
    args = check_attention(
        q, k, v, scale=scale, softcap=softcap, bias=bias, mask=mask,
        kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
    )  # fmt: skip
    want_weights = check_flag("return_weights", return_weights)
    dt = compute_dtype(precision)
    qc = cast(q, dt)
    kc = np.repeat(cast(k, dt), args.group, axis=1)  # query head h reads kv head h // group
    vc = np.repeat(cast(v, dt), args.group, axis=1)

    out = np.zeros((args.batch, args.q_heads, args.q_len, args.value_dim), dtype=dt)
    lse = np.zeros((args.batch, args.q_heads, args.q_len), dtype=dt)
    weights = np.zeros(args.scores_shape, dtype=dt) if want_weights else None
    for rows in query_blocks(args):
        _, s = block_scores(args, qc, kc, bias, rows, dt)
        allowed = allowed_keys(args, pattern, mask, rows)
        P, lse[:, :, rows] = masked_softmax(s, allowed)
        out[:, :, rows] = weighted_sum(P, allowed, vc, dt)
        if weights is not None:
            weights[:, :, rows] = P
    results = (out,) + ((lse,) if return_lse else ()) + ((weights,) if want_weights else ())
    return results[0] if len(results) == 1 else results
