"""The reference VJPs against central finite differences of the reference forward."""

from __future__ import annotations

import numpy as np
import pytest

from attnref import reference as ref

CASES = {
    "global": (ref.global_attention, ref.global_attention_vjp, {}),
    "causal-gqa-lse": (ref.global_attention, ref.global_attention_vjp, {"causal": True}),
    "local-softcap": (ref.local_attention, ref.local_attention_vjp, {"window": (2, 1), "softcap": 1.5}),
    "chunk-lengths": (
        ref.chunked_attention,
        ref.chunked_attention_vjp,
        {"chunk_size": 3, "causal": True, "kv_lengths": [6, 4], "q_lengths": [5, 3], "align": "top_left"},
    ),
    "global-bias-mask": (ref.global_attention, ref.global_attention_vjp, {"bias": "row", "mask": "empty-row"}),
    "local-bias-full": (ref.local_attention, ref.local_attention_vjp, {"window": (None, 1), "bias": "full"}),
}


def _inputs(rng: np.random.Generator, kwargs: dict) -> tuple:
    q = rng.standard_normal((2, 4, 5, 3))
    k = rng.standard_normal((2, 2, 6, 3))
    v = rng.standard_normal((2, 2, 6, 2))
    kwargs = dict(kwargs)
    if kwargs.get("bias") == "row":
        kwargs["bias"] = rng.standard_normal((1, 5, 6))  # broadcast over batch and heads
    elif kwargs.get("bias") == "full":
        kwargs["bias"] = rng.standard_normal((2, 4, 5, 6))
    if kwargs.get("mask") == "empty-row":
        mask = rng.random((2, 1, 5, 6)) < 0.7
        mask[0, 0, 2] = False  # a fully masked row: zero gradient, never NaN
        kwargs["mask"] = mask
    return q, k, v, kwargs


def _loss(forward, q, k, v, dout, dlse, kwargs) -> float:
    out, lse = forward(q, k, v, return_lse=True, **kwargs)
    lse = np.where(np.isneginf(lse), 0.0, lse)  # -inf rows do not depend on any input
    return float(np.sum(out * dout) + np.sum(lse * dlse))


def _numeric_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + h
        up = f()
        x[index] = saved - h
        down = f()
        x[index] = saved
        grad[index] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("name", list(CASES))
def test_vjp_matches_finite_differences(name: str) -> None:
    forward, vjp, kwargs = CASES[name]
    rng = np.random.default_rng(sorted(CASES).index(name))
    q, k, v, kwargs = _inputs(rng, kwargs)
    dout = rng.standard_normal((2, 4, 5, 2))
    dlse = rng.standard_normal((2, 4, 5)) if "lse" in name or "chunk" in name else np.zeros((2, 4, 5))
    grads = vjp(q, k, v, dout, dlse=dlse, **kwargs)
    leaves = [q, k, v] + ([kwargs["bias"]] if "bias" in kwargs else [])
    assert len(grads) == len(leaves)
    for leaf, grad in zip(leaves, grads, strict=True):
        assert grad.shape == leaf.shape and np.isfinite(grad).all()
        expected = _numeric_grad(lambda: _loss(forward, q, k, v, dout, dlse, kwargs), leaf)
        np.testing.assert_allclose(grad, expected, atol=1e-7, rtol=1e-6)


def test_vjp_rejects_wrong_dout_shape() -> None:
    q = np.zeros((1, 1, 2, 3))
    with pytest.raises(ValueError, match="dout"):
        ref.global_attention_vjp(q, q, q, np.zeros((1, 1, 2, 2)))


def test_vjp_validates_like_the_forward() -> None:
    q = np.zeros((1, 1, 2, 3))
    with pytest.raises(ValueError, match="window"):
        ref.local_attention_vjp(q, q, q, np.zeros((1, 1, 2, 3)), window=-2)
