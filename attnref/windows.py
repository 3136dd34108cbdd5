"""Convert the "window of n tokens" of model configs to ``(left, right)``."""

from __future__ import annotations

import numbers

import numpy as np

from attnref.errors import invalid_type, invalid_value
from attnref.validation import check_flag

__all__ = ["window_from_size"]


def window_from_size(n: int, causal: bool = True) -> tuple[int, int]:
    """The ``window=(left, right)`` of a sliding window described by one size ``n``.

    Configs say "window of n" and mean different things; attnref's windows are
    explicit and inclusive (``p - left <= j <= p + right``).

    * ``causal=True`` returns ``(n - 1, 0)``: ``n`` keys, the current token
      included. This is what Hugging Face Transformers' sliding-window masks
      compute from ``config.sliding_window`` (``j > i - n``; Mistral, Gemma 2/3,
      Qwen2 configs). Some implementations keep ``n + 1`` keys for the same
      number: the original Mistral reference code (``triu(diagonal=-n)``) and
      callers that pass ``n`` as FlashAttention's inclusive ``window_size``
      left side. For those, use ``window=(n, 0)`` directly.
    * ``causal=False`` returns ``(n // 2, n // 2)`` for an even ``n``: ``n / 2``
      keys on each side plus the current one, ``n + 1`` keys, as Longformer's
      ``attention_window`` and ModernBERT's ``local_attention`` count.

    Parameters
    ----------
    n : int
        Window size, >= 1 (causal) or an even number >= 0 (non-causal).
    causal : bool
        Whether the window looks only backwards.

    Returns
    -------
    tuple of int
        ``(left, right)`` for :func:`attnref.reference.local_attention`.

    Examples
    --------
    >>> window_from_size(4096)
    (4095, 0)
    >>> window_from_size(512, causal=False)
    (256, 256)
    """
    causal = check_flag("causal", causal)
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise invalid_type("n", repr(n), "an integer window size")
    n = int(n)  # NumPy integers too, as everywhere else in attnref; return plain ints
    if causal:
        if n < 1:
            raise invalid_value("n", repr(n), "an integer >= 1 (keys in a causal window, current one included)")
        return n - 1, 0
    if n < 0 or n % 2:
        raise invalid_value("n", repr(n), "an even integer >= 0 (keys on both sides together)")
    return n // 2, n // 2
