"""``additive_attention`` reproduces the classic PyTorch attention-pooling modules.

The modules are written here the way they appear in classifier and NMT code:
``linear_in = nn.Linear(input, hidden)``, ``tanh``, ``linear_out =
nn.Linear(hidden, 1)``, a softmax over the sequence and a weighted sum (global);
the local variant keeps a window of odd size ``n`` around ``L // 2``, zeroes the
other weights and renormalises.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnref.reference import additive_attention

torch = pytest.importorskip("torch")
nn = torch.nn


class AttentionPooling(nn.Module):  # type: ignore[misc]
    """Global attention pooling: ``(B, L, input) -> (B, input)`` and the weights ``(B, L)``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.linear_in = nn.Linear(input_size, hidden_size)
        self.linear_out = nn.Linear(hidden_size, 1)

    def scores(self, x):  # type: ignore[no-untyped-def]
        return self.linear_out(torch.tanh(self.linear_in(x))).squeeze(-1)

    def pool(self, x, weights):  # type: ignore[no-untyped-def]
        return (weights.unsqueeze(-1) * x).sum(dim=1), weights

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.pool(x, torch.softmax(self.scores(x), dim=1))


class LocalAttentionPooling(AttentionPooling):
    """The same, keeping only the ``n`` (odd) positions around ``L // 2``, then renormalising."""

    def __init__(self, input_size: int, hidden_size: int, n: int) -> None:
        super().__init__(input_size, hidden_size)
        self.n = n

    def forward(self, x):  # type: ignore[no-untyped-def]
        weights = torch.softmax(self.scores(x), dim=1)
        centre = x.shape[1] // 2
        keep = torch.zeros_like(weights)
        keep[:, max(0, centre - self.n // 2) : centre + self.n // 2 + 1] = 1
        weights = weights * keep
        return self.pool(x, weights / weights.sum(dim=1, keepdim=True))


def parameters(module: AttentionPooling) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The module's weights in ``additive_attention``'s form (see its docstring)."""
    return (
        module.linear_in.weight.detach().numpy().T,
        module.linear_in.bias.detach().numpy(),
        module.linear_out.weight.detach().numpy()[0],
        float(module.linear_out.bias.detach()[0]),
    )


@pytest.mark.parametrize(("B", "L", "input_size", "hidden"), [(1, 1, 1, 1), (3, 10, 6, 8), (2, 33, 16, 5)])
def test_global_pooling_module(B: int, L: int, input_size: int, hidden: int) -> None:
    torch.manual_seed(B * 100 + L)
    module = AttentionPooling(input_size, hidden).double()
    x = torch.randn(B, L, input_size, dtype=torch.float64)
    with torch.no_grad():
        expected_context, expected_weights = module(x)
    context, weights = additive_attention(x.numpy(), *parameters(module))
    np.testing.assert_allclose(context, expected_context.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(weights, expected_weights.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("B", "L", "n"),
    [(2, 10, 3), (2, 11, 5), (1, 7, 1), (3, 9, 9), (2, 8, 15), (1, 32, 7)],  # n > L: the window is clipped
)
def test_local_pooling_module(B: int, L: int, n: int) -> None:
    torch.manual_seed(B * 1000 + L * 10 + n)
    module = LocalAttentionPooling(5, 4, n).double()
    x = torch.randn(B, L, 5, dtype=torch.float64)
    with torch.no_grad():
        expected_context, expected_weights = module(x)
    context, weights = additive_attention(x.numpy(), *parameters(module), window=(n // 2, n // 2))
    np.testing.assert_allclose(context, expected_context.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(weights, expected_weights.numpy(), rtol=1e-12, atol=1e-14)
    kept = min(L, L // 2 + n // 2 + 1) - max(0, L // 2 - n // 2)
    assert (np.count_nonzero(weights, axis=1) == kept).all()
