"""Chunked (block-local) attention, as in Llama 4."""

from __future__ import annotations

from typing import Any

from attnref.reference._docs import with_common_parameters
from attnref.reference._multihead import attend
from attnref.validation import chunk_pattern

__all__ = ["chunked_attention"]


@with_common_parameters
def chunked_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    chunk_size: int,
    causal: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: str = "bottom_right",
    return_lse: bool = False,
    return_weights: bool = False,
    precision: Any = None,
) -> Any:
    """Chunked attention, the reference definition.

    Pattern: key ``j`` is allowed iff ``j // chunk_size == p // chunk_size``
    (floor division; a negative ``p`` lies in a chunk no key is in), and, with
    ``causal=True``, ``j <= p``. ``p = i + offset`` is the aligned position.

    Parameters
    ----------
    chunk_size : int
        Keys per chunk, >= 1. When every aligned position lies in
        ``[0, chunk_size)`` (for example ``chunk_size >= Lk >= Lq``) this is
        global attention.
    causal : bool
        Also allow only keys at or before ``p`` (Llama 4's chunked layers).
    {common}
    """
    return attend(
        q, k, v, chunk_pattern(chunk_size, causal),
        scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths,
        q_lengths=q_lengths, align=align, return_lse=return_lse,
        return_weights=return_weights, precision=precision,
    )  # fmt: skip
