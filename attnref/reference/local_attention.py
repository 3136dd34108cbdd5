"""Local (sliding-window) attention: each query sees a band of keys."""

from __future__ import annotations

from typing import Any

from attnref.reference._docs import with_common_parameters
from attnref.reference._multihead import attend
from attnref.validation import window_pattern

__all__ = ["local_attention"]


@with_common_parameters
def local_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    window: Any,
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
    """Sliding-window attention (Mistral, Gemma, Longformer), the reference definition.

    Pattern: key ``j`` is allowed iff ``p - left <= j <= p + right`` (both ends
    inclusive), ``p = i + offset`` the aligned query position. A window of
    ``(left, right)`` holds up to ``left + right + 1`` keys. A causal sliding
    window of ``W`` tokens, the current one included, is ``window=(W - 1, 0)``;
    see :func:`attnref.window_from_size`.

    Parameters
    ----------
    window : int or (int or None, int or None)
        ``(left, right)``; an int ``w`` means ``(w, w)``; ``None`` or ``-1``
        leaves that side unbounded.
    {common}
    """
    return attend(
        q, k, v, window_pattern(window),
        scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths,
        q_lengths=q_lengths, align=align, return_lse=return_lse,
        return_weights=return_weights, precision=precision,
    )  # fmt: skip
