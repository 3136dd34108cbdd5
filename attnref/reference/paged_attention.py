"""Attention over a paged KV cache (FlashAttention's ``flash_attn_with_kvcache``, vLLM, FlashInfer)."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnref.reference._numerics import compute_dtype
from attnref.reference.multihead import dense_attention
from attnref.validation import PagedArgs, check_paged, host_array

__all__ = ["paged_attention"]


def paged_attention(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    *,
    block_table: Any,
    cache_seqlens: Any,
    causal: bool = False,
    window: Any = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: Any = None,
    align: str = "bottom_right",
    return_lse: bool = False,
    precision: Any = None,
) -> Any:
    """Attention of ``q`` over keys and values stored in fixed-size blocks, the reference definition.

    The cache holds ``num_blocks`` blocks of ``block_size`` key slots; sequence
    ``b`` owns the blocks its row of ``block_table`` lists, in order. With
    ``n = block_size`` and ``Lk_b = cache_seqlens[b]``::

        key t of sequence b   = k_cache[block_table[b, t // n], t % n]     for t < Lk_b
        value t of sequence b = v_cache[block_table[b, t // n], t % n]

    and the result is :func:`~attnref.reference.local_attention` with
    ``window`` (or :func:`~attnref.reference.global_attention` when ``window``
    is None) over those keys, with ``kv_lengths = cache_seqlens``; ``causal``
    narrows the window's right side to 0. Every step (scale, softcap, sinks,
    alignment, empty rows, NaN) is theirs: see
    :mod:`attnref.reference.multihead`.

    Table entries past a sequence's last used block (``t // n`` for no
    ``t < Lk_b``) are never read and may hold anything (``-1``, say). Sequences
    may share blocks (prefix caching).

    Parameters
    ----------
    q : array, (B, Hq, Lq, D)
        Queries; a floating dtype shared by the caches.
    k_cache : array, (num_blocks, block_size, Hkv, D)
        Key blocks. ``Hq % Hkv == 0``; query head ``h`` reads kv head ``h // (Hq // Hkv)``.
    v_cache : array, (num_blocks, block_size, Hkv, Dv)
        Value blocks.
    block_table : int array, (B, max_blocks)
        Block indices in ``[0, num_blocks)`` where used.
    cache_seqlens : int array, (B,)
        Keys of each sequence, in ``[0, max_blocks * block_size]``.
    causal : bool
        Allow only keys at or before the aligned position.
    window : int or (int or None, int or None), optional
        A sliding window, as in :func:`~attnref.reference.local_attention`.
    scale : float, optional
        Multiplies ``q . k``; default ``1 / sqrt(D)``.
    softcap : float, optional
        ``s = softcap * tanh(s / softcap)``.
    sinks : float array (Hq,), optional
        One sink logit per query head (contract section 7).
    align : {"bottom_right", "top_left"}
        ``"bottom_right"`` (the default) puts the last query on key ``Lk_b - 1``.
    return_lse : bool
        Also return ``lse (B, Hq, Lq)``.
    precision : dtype, optional
        Every intermediate in this dtype instead of float64.

    Returns
    -------
    out : ndarray, (B, Hq, Lq, Dv)
    lse : ndarray, (B, Hq, Lq)
        Only with ``return_lse=True``.

    Raises
    ------
    InvalidArgumentError
        A used ``block_table`` entry outside ``[0, num_blocks)`` (naming
        ``block_table``), ``cache_seqlens`` beyond the table's capacity (naming
        ``cache_seqlens``), wrong shapes or options.
    InvalidTypeError
        Bad dtypes or argument types.
    """
    q, k_cache, v_cache = host_array("q", q), host_array("k_cache", k_cache), host_array("v_cache", v_cache)
    args = check_paged(
        q, k_cache, v_cache, block_table=block_table, cache_seqlens=cache_seqlens, causal=causal, window=window,
        scale=scale, softcap=softcap, sinks=sinks, align=align, return_lse=return_lse,
    )  # fmt: skip
    k, v = _gather(args, k_cache), _gather(args, v_cache)
    out, lse, _ = dense_attention(q, k, v, args.pattern, args.attention, compute_dtype(precision))
    return (out, lse) if return_lse else out


def _gather(args: PagedArgs, cache: np.ndarray) -> np.ndarray:
    """Each sequence's keys (or values) in order, ``(B, Hkv, max_blocks * block_size, D)``.

    Only the slots ``t < cache_seqlens[b]`` are read from the cache; the others
    stay 0 and lie beyond ``kv_lengths``, where no row may see them.
    """
    a = args.attention
    keys = np.zeros((a.batch, cache.shape[2], a.kv_len, cache.shape[3]), dtype=cache.dtype)
    for b in range(a.batch):
        blocks, slots = args.key_slots(b)
        keys[b, :, : len(slots)] = np.swapaxes(cache[blocks, slots], 0, 1)
    return keys
