"""Global attention: every query may see every key (optionally causal)."""

from __future__ import annotations

from typing import Any

from attnref.reference._docs import with_common_parameters
from attnref.reference._multihead import attend
from attnref.validation import full_pattern

__all__ = ["global_attention"]


@with_common_parameters
def global_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
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
    """Full softmax attention, the reference definition.

    Pattern: every key ``j`` is allowed; with ``causal=True`` only ``j <= p``,
    ``p = i + offset`` the aligned query position (so ``causal=True`` equals
    ``local_attention(window=(None, 0))``).

    Parameters
    ----------
    causal : bool
        Allow only keys at or before the aligned query position.
    {common}
    """
    return attend(
        q, k, v, full_pattern(causal),
        scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths,
        q_lengths=q_lengths, align=align, return_lse=return_lse,
        return_weights=return_weights, precision=precision,
    )  # fmt: skip
