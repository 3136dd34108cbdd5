"""What ``docs/systems.md`` says about PyTorch's ``scaled_dot_product_attention``, checked on the installed torch.

Measured with torch 2.13.0 (CPU build).
"""

from __future__ import annotations

import numpy as np
import pytest
from peer_kit import need

from attnref import reference

torch = need("torch")
bias_module = need("torch.nn.attention.bias")
F = torch.nn.functional

GEN = np.random.default_rng(213)


def _qkv(q_len: int, kv_len: int, heads: int = 1, kv_heads: int = 1, dim: int = 4):
    q = GEN.standard_normal((1, heads, q_len, dim))
    k = GEN.standard_normal((1, kv_heads, kv_len, dim))
    v = GEN.standard_normal((1, kv_heads, kv_len, dim))
    return q, k, v


def _sdpa(q, k, v, **options) -> np.ndarray:
    return F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v)), **options).numpy()


def test_is_causal_is_top_left_a_tril_of_the_l_by_s_matrix():
    q, k, v = _qkv(3, 5)
    out = _sdpa(q, k, v, is_causal=True)
    tril = torch.ones(3, 5, dtype=torch.bool).tril(diagonal=0)
    np.testing.assert_allclose(out, _sdpa(q, k, v, attn_mask=tril), atol=1e-12)
    np.testing.assert_allclose(out, reference.global_attention(q, k, v, causal=True, align="top_left"), atol=1e-12)


def test_causal_lower_right_is_bottom_right():
    q, k, v = _qkv(3, 5)
    out = _sdpa(q, k, v, attn_mask=bias_module.causal_lower_right(3, 5))
    np.testing.assert_allclose(out, reference.global_attention(q, k, v, causal=True), atol=1e-12)


def test_fully_masked_rows_give_zero():
    q, k, v = _qkv(3, 5)
    allowed = torch.ones(3, 5, dtype=torch.bool)
    allowed[1] = False
    assert _sdpa(q, k, v, attn_mask=allowed)[0, 0, 1].tolist() == [0.0] * 4
    additive = torch.zeros(3, 5, dtype=torch.float64)
    additive[1] = -torch.inf
    assert _sdpa(q, k, v, attn_mask=additive)[0, 0, 1].tolist() == [0.0] * 4
    q, k, v = _qkv(5, 3)  # causal_lower_right(5, 3): rows 0 and 1 see no key; it warns of NaNs, and gives 0
    with pytest.warns(UserWarning, match="will produce NaNs"):
        lower_right = bias_module.causal_lower_right(5, 3)
    out = _sdpa(q, k, v, attn_mask=lower_right)
    assert out[0, 0, :2].tolist() == [[0.0] * 4] * 2
    np.testing.assert_allclose(out, reference.global_attention(q, k, v, causal=True), atol=1e-12)


def test_enable_gqa_is_repeat_interleave_query_head_h_reads_kv_head_h_over_group():
    q, k, v = _qkv(3, 5, heads=6, kv_heads=2)
    out = _sdpa(q, k, v, enable_gqa=True)
    repeated = [np.repeat(a, 3, axis=1) for a in (k, v)]  # [h0, h0, h0, h1, h1, h1]
    np.testing.assert_allclose(out, _sdpa(q, *repeated), atol=1e-12)
    np.testing.assert_allclose(out, reference.global_attention(q, k, v), atol=1e-12)


def test_a_nan_behind_a_bool_mask_leaks():
    """3-D inputs: a NaN in a masked-out key makes the whole output NaN; a NaN in one component of a
    masked-out value makes that component NaN in every row."""
    q, k, v = (a[0] for a in _qkv(3, 4))  # (H, L, D)
    allowed = torch.ones(3, 4, dtype=torch.bool)
    allowed[:, 3] = False
    k_nan = k.copy()
    k_nan[0, 3, 0] = np.nan
    assert np.isnan(_sdpa(q, k_nan, v, attn_mask=allowed)).all()
    v_nan = v.copy()
    v_nan[0, 3, 1] = np.nan
    out = _sdpa(q, k, v_nan, attn_mask=allowed)
    assert np.isnan(out[0, :, 1]).all() and not np.isnan(np.delete(out[0], 1, axis=-1)).any()
    assert not np.isnan(reference.global_attention(q[None], k[None], v_nan[None], mask=allowed.numpy())).any()
