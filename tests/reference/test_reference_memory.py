"""The reference's peak memory is bounded by its query block, not by Lq x Lk.

NumPy reports its array allocations to :mod:`tracemalloc`, so the traced peak
of one call is the most memory its arrays held at once.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from attnref.reference import chunked_attention, local_attention
from attnref.reference import multihead as _multihead

FLOAT64 = 8

#: The measured peak of one call, in units of one float64 score block: the block's
#: scores and the few temporaries of the softmax (measured about 6.4). A change that
#: keeps more block-sized arrays alive, or an O(Lq * Lk) one, breaks this.
BLOCKS_AT_PEAK = 8


def traced_peak(call: Callable[[], Any]) -> int:
    """Bytes allocated at the peak of ``call()`` beyond what was live before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_local_attention_at_8192_never_holds_the_dense_scores() -> None:
    L, D = 8192, 16
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, L, D)) for _ in range(3))
    dense = L * L * FLOAT64  # 512 MiB
    peak = traced_peak(lambda: local_attention(q, k, v, window=(127, 0), return_lse=True))
    block = _multihead.SCORE_BLOCK_ELEMENTS * FLOAT64
    small_arrays = 8 * L * D * FLOAT64  # the repeated k and v, out, lse: O(L * D)
    assert peak <= BLOCKS_AT_PEAK * block + small_arrays, peak / block
    assert peak < dense / 2


def test_the_block_constant_governs_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 64x smaller block must give a 64x smaller peak: the constant, not the sequence, sets memory.
    monkeypatch.setattr(_multihead, "SCORE_BLOCK_ELEMENTS", 1 << 16)
    B, H, L, D = 1, 2, 2048, 8
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((B, H, L, D)) for _ in range(3))
    peak = traced_peak(lambda: chunked_attention(q, k, v, chunk_size=256, causal=True))
    block = (1 << 16) * FLOAT64
    small_arrays = 8 * B * H * L * D * FLOAT64
    assert peak <= BLOCKS_AT_PEAK * block + small_arrays, peak / block
    assert peak < B * H * L * L * FLOAT64 / 16


def test_projected_peak_for_b1_h8_l16384_d64_is_well_under_4_gb() -> None:
    """Not run: the arithmetic of the block rule for the size issue 2 names."""
    B, H, L, D = 1, 8, 16384, 64
    rows = max(1, _multihead.SCORE_BLOCK_ELEMENTS // (B * H * L))  # query rows per block
    assert rows >= 1 and rows * B * H * L <= _multihead.SCORE_BLOCK_ELEMENTS
    block = rows * B * H * L * FLOAT64
    # q, k, v themselves, the repeated k and v, and out: six (B, H, L, D) float64 arrays.
    arrays = 6 * B * H * L * D * FLOAT64
    projected = BLOCKS_AT_PEAK * block + arrays
    assert projected < 1 << 30  # about 0.6 GiB, far under the 4 GB of issue 2
