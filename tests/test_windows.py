"""``attnref.window_from_size``: the "window of n tokens" of model configs as ``(left, right)``."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from attnref import InvalidArgumentError, InvalidTypeError, window_from_size
from attnref.reference import local_attention


@pytest.mark.parametrize(
    ("n", "causal", "expected"),
    [
        (1, True, (0, 0)),
        (2, True, (1, 0)),
        (4096, True, (4095, 0)),  # Mistral 7B v0.1 / Hugging Face sliding_window
        (0, False, (0, 0)),
        (2, False, (1, 1)),
        (512, False, (256, 256)),  # Longformer attention_window
        (128, False, (64, 64)),  # ModernBERT local_attention
    ],
)
def test_values(n: int, causal: bool, expected: tuple[int, int]) -> None:
    assert window_from_size(n, causal=causal) == expected


def test_causal_is_the_default() -> None:
    assert window_from_size(7) == (6, 0)


def keys_per_row(window: tuple[int, int], L: int) -> np.ndarray:
    """How many keys each query sees, read off the reference's weights (uniform scores)."""
    q, k, v = np.zeros((1, 1, L, 1)), np.zeros((1, 1, L, 1)), np.zeros((1, 1, L, 1))
    _, weights = local_attention(q, k, v, window=window, return_weights=True)
    return np.count_nonzero(weights[0, 0], axis=-1)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_causal_window_holds_n_keys_current_included(n: int) -> None:
    L = 12
    counts = keys_per_row(window_from_size(n), L)
    np.testing.assert_array_equal(counts, np.minimum(np.arange(L) + 1, n))  # row i sees keys i-n+1 .. i


@pytest.mark.parametrize("n", [0, 2, 6])
def test_bidirectional_window_holds_n_plus_one_keys(n: int) -> None:
    L = 12
    counts = keys_per_row(window_from_size(n, causal=False), L)
    interior = counts[n // 2 : L - n // 2]
    np.testing.assert_array_equal(interior, n + 1)  # n/2 on each side plus the current one


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        pytest.param({"n": 0}, InvalidArgumentError, "n", id="causal-zero"),
        pytest.param({"n": -3}, InvalidArgumentError, "n", id="causal-negative"),
        pytest.param({"n": 3, "causal": False}, InvalidArgumentError, "n", id="bidirectional-odd"),
        pytest.param({"n": -2, "causal": False}, InvalidArgumentError, "n", id="bidirectional-negative"),
        pytest.param({"n": 4.0}, InvalidTypeError, "n", id="float"),
        pytest.param({"n": True}, InvalidTypeError, "n", id="bool"),
        pytest.param({"n": "4096"}, InvalidTypeError, "n", id="string"),
        pytest.param({"n": None}, InvalidTypeError, "n", id="none"),
        pytest.param({"n": 4, "causal": "yes"}, InvalidTypeError, "causal", id="causal-string"),
        pytest.param({"n": 4, "causal": 1}, InvalidTypeError, "causal", id="causal-int"),
    ],
)
def test_invalid(kwargs: dict[str, Any], error: type[Exception], argument: str) -> None:
    with pytest.raises(error) as info:
        window_from_size(**kwargs)
    assert re.match(rf"{argument}: expected .+, got .+", str(info.value)), str(info.value)


def test_numpy_integer_is_accepted() -> None:
    left, right = window_from_size(np.int64(4096))
    assert (left, right) == (4095, 0) and type(left) is int
