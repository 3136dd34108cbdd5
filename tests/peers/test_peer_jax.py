"""What ``docs/systems.md`` says about JAX's ``jax.nn.dot_product_attention``, checked on the installed JAX.

Measured with jax 0.10.2 (CPU, the ``xla`` implementation). JAX's layout is
``(B, L, H, D)``; attnref's reference is the yardstick.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from peer_kit import need, rows_with_nan, to_bhld

from attnref import reference

jax = need("jax")
jnp = need("jax.numpy")

RNG = np.random.default_rng(12)


def _qkv(q_len: int, kv_len: int, heads: int = 1, kv_heads: int = 1, dim: int = 4) -> tuple[np.ndarray, ...]:
    q = RNG.standard_normal((1, q_len, heads, dim)).astype(np.float32)
    k = RNG.standard_normal((1, kv_len, kv_heads, dim)).astype(np.float32)
    v = RNG.standard_normal((1, kv_len, kv_heads, dim)).astype(np.float32)
    return q, k, v


def _jax(q, k, v, **options) -> np.ndarray:
    return to_bhld(jax.nn.dot_product_attention(q, k, v, **options))


def _ref(op, q, k, v, **options) -> np.ndarray:
    return getattr(reference, op)(to_bhld(q), to_bhld(k), to_bhld(v), **options)


def test_is_causal_is_top_left():
    q, k, v = _qkv(3, 5)
    out = _jax(q, k, v, is_causal=True)
    np.testing.assert_allclose(out, _ref("global_attention", q, k, v, causal=True, align="top_left"), atol=1e-6)
    assert not np.allclose(out, _ref("global_attention", q, k, v, causal=True, align="bottom_right"), atol=1e-3)


def test_local_window_size_is_inclusive_and_top_left():
    q, k, v = _qkv(4, 9)
    out = _jax(q, k, v, local_window_size=(2, 1))  # keys i - 2 .. i + 1
    np.testing.assert_allclose(out, _ref("local_attention", q, k, v, window=(2, 1), align="top_left"), atol=1e-6)
    assert not np.allclose(out, _ref("local_attention", q, k, v, window=(2, 1), align="bottom_right"), atol=1e-3)


def test_lengths_only_pad_they_add_no_per_batch_offset():
    q, k, v = _qkv(3, 6)
    out = _jax(q, k, v, is_causal=True, key_value_seq_lengths=jnp.array([5], dtype=jnp.int32))
    top_left = _ref("global_attention", q, k, v, causal=True, align="top_left", kv_lengths=[5])
    np.testing.assert_allclose(out, top_left, atol=1e-6)
    bottom_right = _ref("global_attention", q, k, v, causal=True, kv_lengths=[5])  # offset 5 - 3
    assert not np.allclose(out, bottom_right, atol=1e-3)


def test_minus_one_is_not_an_unbounded_side():
    """``(-1, 0)`` allows no key at all: every row becomes a row with no allowed key (the mean of V)."""
    q, k, v = _qkv(3, 5)
    out = _jax(q, k, v, local_window_size=(-1, 0))
    mean_of_v = to_bhld(v).mean(axis=2, keepdims=True)
    np.testing.assert_allclose(out, np.broadcast_to(mean_of_v, out.shape), atol=1e-6)


def test_a_fully_masked_row_returns_the_mean_of_v_and_a_finite_lse():
    q, k, v = _qkv(3, 5)
    mask = np.ones((1, 1, 3, 5), dtype=bool)
    mask[..., 1, :] = False
    out, lse = jax.nn.dot_product_attention(q, k, v, mask=mask, return_residual=True)
    np.testing.assert_allclose(np.asarray(out)[0, 1], v[0].mean(axis=0), atol=1e-6)
    row = float(np.asarray(lse)[0, 1, 0])  # the residual is (B, Lq, Hq)
    assert np.isfinite(row) and -3e38 < row < -2e38  # about -2.4e38: a finite fill, not -inf
    assert reference.global_attention(to_bhld(q), to_bhld(k), to_bhld(v), mask=mask)[0, 0, 1].tolist() == [0.0] * 4


def test_query_padding_rows_are_zero():
    q, k, v = _qkv(3, 5)
    out = _jax(q, k, v, query_seq_lengths=jnp.array([2], dtype=jnp.int32))
    assert out[0, 0, 2].tolist() == [0.0] * 4


def test_the_softmax_runs_in_float32_for_float64_inputs():
    q, k, v = (a.astype(np.float64) for a in _qkv(8, 8, dim=16))
    with jax.enable_x64(True):
        out = jax.nn.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
        assert out.dtype == jnp.float64
    err = np.abs(to_bhld(out) - _ref("global_attention", q, k, v)).max()
    assert 1e-10 < err < 1e-5  # float32's rounding, far above float64's (~1e-16)


def test_gqa_query_head_h_reads_kv_head_h_over_group():
    q, k, v = _qkv(3, 5, heads=6, kv_heads=2)
    np.testing.assert_allclose(_jax(q, k, v), _ref("global_attention", q, k, v), atol=1e-6)


def test_a_nan_value_hidden_by_the_causal_pattern_leaks_into_every_row():
    q, k, v = _qkv(3, 3)
    v[0, 2, 0, 0] = np.nan  # key 2: hidden from rows 0 and 1
    assert rows_with_nan(_jax(q, k, v, is_causal=True)) == [True, True, True]
    assert rows_with_nan(_ref("global_attention", q, k, v, causal=True)) == [False, False, True]
    k[0, 2, 0, 0], v[0, 2, 0, 0] = np.nan, 0.0  # a NaN key is selected away: it does not leak
    assert rows_with_nan(_jax(q, k, v, is_causal=True)) == [False, False, True]


def test_no_softcap_and_the_value_head_size_must_equal_the_query_s():
    assert "softcap" not in inspect.signature(jax.nn.dot_product_attention).parameters
    q, k, _ = _qkv(3, 5)
    with pytest.raises(ValueError, match="value shape"):
        jax.nn.dot_product_attention(q, k, RNG.standard_normal((1, 5, 1, 6)).astype(np.float32))
