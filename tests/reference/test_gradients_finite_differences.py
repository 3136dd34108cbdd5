"""The reference VJPs against central finite differences of the reference forward.

The loss is ``sum(out * dout) + sum(lse * dlse)`` (rows whose lse is ``-inf``
depend on no input and are left out); each gradient entry is compared with
``(loss(x + h) - loss(x - h)) / 2h`` in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from attnref import reference as ref

OPS = {
    "global": (ref.global_attention, ref.global_attention_vjp),
    "local": (ref.local_attention, ref.local_attention_vjp),
    "chunked": (ref.chunked_attention, ref.chunked_attention_vjp),
}

B, HQ, LQ, LK, D, DV = 2, 4, 5, 6, 3, 2


def _bias(shape: tuple[int, ...]) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.standard_normal(shape)


def _mask_with_empty_row(rng: np.random.Generator) -> np.ndarray:
    mask = rng.random((B, 1, LQ, LK)) < 0.7
    mask[0, 0, 2] = False  # a fully masked row: zero gradient, never NaN
    return mask


# name: (op, kv heads, options); an option that is a function of the rng is drawn per case
CASES: dict[str, tuple[str, int, dict[str, Any]]] = {
    "global": ("global", HQ, {}),
    "global-dlse": ("global", HQ, {"dlse": True}),
    "global-scale": ("global", HQ, {"scale": 0.7}),
    "causal-gqa-dlse": ("global", 2, {"causal": True, "dlse": True}),
    "causal-mqa-top_left": ("global", 1, {"causal": True, "align": "top_left", "dlse": True}),
    "global-softcap-dlse": ("global", 2, {"softcap": 0.8, "dlse": True}),
    "local-softcap": ("local", 2, {"window": (2, 1), "softcap": 1.5}),
    "local-window-at-the-start": ("local", 2, {"window": (0, 1), "align": "top_left", "dlse": True}),
    "local-window-at-the-end": ("local", 1, {"window": (1, 0), "dlse": True}),
    "local-lengths": ("local", 2, {"window": 1, "kv_lengths": [6, 3], "q_lengths": [4, 5], "dlse": True}),
    "chunk-lengths": (
        "chunked", 2,
        {"chunk_size": 3, "causal": True, "kv_lengths": [6, 4], "q_lengths": [5, 3], "align": "top_left", "dlse": True},
    ),
    "chunk-bottom_right": ("chunked", 4, {"chunk_size": 2, "dlse": True}),
    "global-bias-row": ("global", 2, {"bias": _bias((1, LQ, LK)), "mask": _mask_with_empty_row}),
    "global-bias-key": ("global", 2, {"bias": _bias((LK,)), "dlse": True}),
    "global-bias-head": ("global", 2, {"bias": _bias((1, HQ, 1, LK)), "softcap": 2.0, "dlse": True}),
    "global-bias-query": ("global", 4, {"bias": _bias((B, 1, LQ, 1)), "causal": True, "dlse": True}),
    "local-bias-full": ("local", 2, {"window": (None, 1), "bias": _bias((B, HQ, LQ, LK))}),
    "global-causal-sinks-bias": (
        "global", 2, {"causal": True, "sinks": _bias((HQ,)), "bias": _bias((LK,)), "dlse": True},
    ),
    "local-sinks-lengths": (
        "local", 1, {"window": (1, 0), "sinks": _bias((HQ,)), "kv_lengths": [6, 0], "q_lengths": [4, 5], "dlse": True},
    ),
    "chunk-sinks-softcap": ("chunked", 2, {"chunk_size": 2, "causal": True, "sinks": _bias((HQ,)), "softcap": 1.0}),
}  # fmt: skip


def _case(name: str) -> tuple[Callable, Callable, dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    op, hkv, options = CASES[name]
    forward, vjp = OPS[op]
    rng = np.random.default_rng(sorted(CASES).index(name))
    leaves = {
        "q": rng.standard_normal((B, HQ, LQ, D)),
        "k": rng.standard_normal((B, hkv, LK, D)),
        "v": rng.standard_normal((B, hkv, LK, DV)),
    }
    kwargs = {key: value(rng) if callable(value) else value for key, value in options.items() if key != "dlse"}
    for name in ("bias", "sinks"):  # in the order of the VJP's results
        if name in kwargs:
            leaves[name] = kwargs.pop(name)
    dout = rng.standard_normal((B, HQ, LQ, DV))
    dlse = rng.standard_normal((B, HQ, LQ)) if options.get("dlse") else np.zeros((B, HQ, LQ))
    return forward, vjp, leaves, dout, dlse, kwargs


def loss(forward: Callable, leaves: dict[str, np.ndarray], dout: np.ndarray, dlse: np.ndarray, kwargs: dict) -> float:
    out, lse = forward(**leaves, return_lse=True, **kwargs)
    lse = np.where(np.isneginf(lse), 0.0, lse)  # -inf rows do not depend on any input
    return float(np.sum(out * dout) + np.sum(lse * dlse))


def numeric_grad(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of ``f`` with respect to every entry of ``x`` (changed in place, restored)."""
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
    forward, vjp, leaves, dout, dlse, kwargs = _case(name)
    q, k, v = leaves["q"], leaves["k"], leaves["v"]
    grads = vjp(q, k, v, dout, dlse=dlse, bias=leaves.get("bias"), sinks=leaves.get("sinks"), **kwargs)
    assert len(grads) == len(leaves)
    for (leaf_name, leaf), grad in zip(leaves.items(), grads, strict=True):
        assert grad.shape == leaf.shape and grad.dtype == np.float64 and np.isfinite(grad).all(), leaf_name
        expected = numeric_grad(lambda: loss(forward, leaves, dout, dlse, kwargs), leaf)
        assert np.abs(expected).max() > 1e-3, leaf_name  # the case exercises this gradient
        np.testing.assert_allclose(grad, expected, atol=1e-7, rtol=1e-6, err_msg=leaf_name)


def test_dlse_none_is_dlse_zero() -> None:
    _, vjp, leaves, dout, _, kwargs = _case("causal-gqa-dlse")
    without = vjp(leaves["q"], leaves["k"], leaves["v"], dout, **kwargs)
    zero = vjp(leaves["q"], leaves["k"], leaves["v"], dout, dlse=np.zeros((B, HQ, LQ)), **kwargs)
    for a, b in zip(without, zero, strict=True):
        np.testing.assert_array_equal(a, b)


def test_gqa_gradients_are_the_group_sums_of_the_repeated_heads() -> None:
    _, vjp, leaves, dout, dlse, kwargs = _case("causal-gqa-dlse")
    q, k, v = leaves["q"], leaves["k"], leaves["v"]
    dq, dk, dv = vjp(q, k, v, dout, dlse=dlse, **kwargs)
    group = HQ // k.shape[1]
    dq_r, dk_r, dv_r = vjp(q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1), dout, dlse=dlse, **kwargs)
    np.testing.assert_allclose(dq, dq_r, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dk, dk_r.reshape(B, -1, group, LK, D).sum(axis=2), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dv, dv_r.reshape(B, -1, group, LK, DV).sum(axis=2), rtol=1e-13, atol=1e-15)
