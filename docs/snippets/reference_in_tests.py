"""attnref as the reference in your own tests: the example of docs/guides/testing.md.

Shown there verbatim and run by tests/test_docs.py (skipped without torch). The
code under test here is PyTorch's own attention; put yours in its place.
"""

from __future__ import annotations

import numpy as np
import pytest

import attnref
from attnref.conformance.tolerance import judge
from attnref.reference import global_attention, global_attention_vjp, local_attention

torch = pytest.importorskip("torch")
F = torch.nn.functional


def random_qkv(rng, batch=2, heads=4, q_len=5, kv_len=9, dim=16, dtype=np.float32):
    """q, k, v as NumPy arrays of ``dtype``."""
    shapes = [(batch, heads, q_len, dim), (batch, heads, kv_len, dim), (batch, heads, kv_len, dim)]
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def test_causal_sdpa_matches_the_reference():
    q, k, v = random_qkv(np.random.default_rng(0))
    got = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), is_causal=True).numpy()

    # PyTorch's is_causal puts the first query on the first key: attnref's align="top_left".
    ref = global_attention(q, k, v, causal=True, align="top_left")
    naive = global_attention(q, k, v, causal=True, align="top_left", precision="float32")
    verdict = judge("out", got, ref, naive, "float32")  # the conformance suite's own rule
    assert verdict.ok, verdict.detail


def test_a_hugging_face_style_sliding_window():
    q, k, v = random_qkv(np.random.default_rng(1), q_len=12, kv_len=12)
    n = 4  # config.sliding_window
    i, j = np.arange(12)[:, None], np.arange(12)[None, :]
    mask = (j <= i) & (j > i - n)  # Transformers' sliding-window mask: n keys, the current one included
    got = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), attn_mask=torch.from_numpy(mask)).numpy()

    window = attnref.window_from_size(n)  # (3, 0)
    ref = local_attention(q, k, v, window=window)
    naive = local_attention(q, k, v, window=window, precision="float32")
    verdict = judge("out", got, ref, naive, "float32")
    assert verdict.ok, verdict.detail


def test_gradients_match_the_reference():
    q, k, v = random_qkv(np.random.default_rng(2), dtype=np.float64)
    dout = np.random.default_rng(3).standard_normal((2, 4, 5, 16))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    F.scaled_dot_product_attention(tq, tk, tv, is_causal=True).backward(torch.from_numpy(dout))

    dq, dk, dv = global_attention_vjp(q, k, v, dout, causal=True, align="top_left")
    for got, ref in ((tq.grad, dq), (tk.grad, dk), (tv.grad, dv)):
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)
