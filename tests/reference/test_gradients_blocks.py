"""The reference VJPs work block by block over the keys each pattern can allow.

Splitting the queries into blocks (the forward's, planned by
:meth:`~attnref.patterns.Pattern.plan_blocks`), each scored only against the
keys its rows may see, must not change the gradients;
and a windowed VJP never holds anything of size ``Lq x Lk``.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from attnref import reference as ref
from attnref.reference import multihead

B, HQ, HKV, LQ, LK, D, DV = 2, 4, 2, 9, 13, 3, 2

CASES: dict[str, tuple[Callable, dict[str, Any]]] = {
    "global": (ref.global_attention_vjp, {}),
    "causal-lengths": (ref.global_attention_vjp, {"causal": True, "kv_lengths": [13, 5], "q_lengths": [9, 2]}),
    "causal-top_left": (ref.global_attention_vjp, {"causal": True, "align": "top_left", "kv_lengths": [7, 13]}),
    "window": (ref.local_attention_vjp, {"window": (2, 1), "kv_lengths": [13, 8]}),
    "window-top_left-mask": (
        ref.local_attention_vjp, {"window": (1, 3), "align": "top_left", "mask": "random", "bias": "key"},
    ),
    "window-beyond-the-sequence": (ref.local_attention_vjp, {"window": (40, 0), "softcap": 2.0}),
    "chunk": (ref.chunked_attention_vjp, {"chunk_size": 3, "q_lengths": [9, 6]}),
    "chunk-causal-top_left": (
        ref.chunked_attention_vjp, {"chunk_size": 4, "causal": True, "align": "top_left", "bias": "full"},
    ),
}  # fmt: skip


def _run(name: str) -> tuple[np.ndarray, ...]:
    vjp, options = CASES[name]
    rng = np.random.default_rng(sorted(CASES).index(name))
    q = rng.standard_normal((B, HQ, LQ, D))
    k = rng.standard_normal((B, HKV, LK, D))
    v = rng.standard_normal((B, HKV, LK, DV))
    dout, dlse = rng.standard_normal((B, HQ, LQ, DV)), rng.standard_normal((B, HQ, LQ))
    kwargs = dict(options)
    if kwargs.get("mask") == "random":
        kwargs["mask"] = rng.random((B, 1, LQ, LK)) < 0.8
    if kwargs.get("bias") == "key":
        kwargs["bias"] = rng.standard_normal(LK)
    elif kwargs.get("bias") == "full":
        kwargs["bias"] = rng.standard_normal((B, HQ, LQ, LK))
    return vjp(q, k, v, dout, dlse=dlse, **kwargs)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("rows", [1, 2, 4])
def test_small_blocks_give_the_gradients_of_one_block(name: str, rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _run(name)  # these sizes fit one block
    monkeypatch.setattr(multihead, "SCORE_BLOCK_ELEMENTS", HQ * rows * LK)  # blocks of `rows` rows or more
    blocked = _run(name)
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def traced_peak(call: Callable[[], Any]) -> int:
    """Bytes allocated at the peak of ``call()`` beyond what was live before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_a_windowed_vjp_holds_memory_of_its_window_not_of_the_sequence() -> None:
    L, D_ = 1 << 15, 8
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, 1, L, D_)) for _ in range(4))
    peak = traced_peak(lambda: ref.local_attention_vjp(q, k, v, dout, window=(31, 0)))
    arrays = 8 * L * D_ * 8  # the gradients and a few more (L, D) arrays
    assert peak <= arrays + (8 << 20), peak  # the blocks: a few MiB
    assert peak < L * L * 8 / 256  # the dense scores would be 8 GiB
