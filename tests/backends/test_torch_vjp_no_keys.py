"""The torch backend's VJPs when no input reaches the output (every packed sequence without keys).

Found by the conformance suite's random gradient cases (``global_attention_vjp/random-s0-003``):
autograd refused to differentiate an output with no graph; the contract asks for zero gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnref import reference

torch = pytest.importorskip("torch")
from attnref_torch.backend import TorchBackend  # noqa: E402

BACKEND = TorchBackend()


@pytest.mark.parametrize("with_dlse", [False, True])
@pytest.mark.parametrize(
    "op, options", [("global_attention", {"causal": True}), ("local_attention", {"window": (2, 0)})]
)
def test_packed_sequences_without_keys_give_zero_gradients(op, options, with_dlse):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 2, 4))  # packed (Tq, Hq, D), one sequence of 5 queries
    k = np.zeros((0, 1, 4))  # and no keys at all
    v = np.zeros((0, 1, 3))
    dout = rng.standard_normal((5, 2, 3))
    kwargs = dict(options, cu_seqlens_q=[0, 5], cu_seqlens_k=[0, 0])
    if with_dlse:
        kwargs["dlse"] = rng.standard_normal((5, 2))
    got = getattr(BACKEND, f"{op}_vjp")(*(torch.from_numpy(a) for a in (q, k, v, dout)), **{
        key: torch.from_numpy(value) if key == "dlse" else value for key, value in kwargs.items()})  # fmt: skip
    want = getattr(reference, f"{op}_vjp")(q, k, v, dout, **kwargs)
    for g, w in zip(got, want, strict=True):
        assert tuple(g.shape) == w.shape
        np.testing.assert_array_equal(g.numpy(), w)
        assert not np.any(w)
