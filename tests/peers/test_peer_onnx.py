"""What ``docs/systems.md`` says about the ONNX ``Attention`` op, checked on ONNX's own reference implementation.

Measured with onnx 1.23.2 (``onnx.reference.ReferenceEvaluator``), opsets 23 and 25.
"""

from __future__ import annotations

import numpy as np
from peer_kit import attention_model, need, onnx_reference, qkv_model, rows_with_nan

from attnref import reference

onnx = need("onnx")
TP = onnx.TensorProto

RNG = np.random.default_rng(23)


def _qkv(q_len: int, kv_len: int, heads: int = 1, kv_heads: int = 1, dim: int = 4) -> tuple[np.ndarray, ...]:
    q = RNG.standard_normal((1, heads, q_len, dim)).astype(np.float32)
    k = RNG.standard_normal((1, kv_heads, kv_len, dim)).astype(np.float32)
    v = RNG.standard_normal((1, kv_heads, kv_len, dim)).astype(np.float32)
    return q, k, v


def _f64(*arrays: np.ndarray) -> list[np.ndarray]:
    return [a.astype(np.float64) for a in arrays]


def test_is_causal_without_a_cache_is_top_left():
    q, k, v = _qkv(3, 5)
    (out,) = onnx_reference(qkv_model(is_causal=1), {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(out, reference.global_attention(*_f64(q, k, v), causal=True, align="top_left"), 1e-6)
    assert not np.allclose(out, reference.global_attention(*_f64(q, k, v), causal=True), atol=1e-3)


def _with_past(q, k, v, past: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    past_k = RNG.standard_normal((1, 1, past, q.shape[-1])).astype(np.float32)
    past_v = RNG.standard_normal((1, 1, past, q.shape[-1])).astype(np.float32)
    model = attention_model(
        [("Q", TP.FLOAT), ("K", TP.FLOAT), ("V", TP.FLOAT), ("", 0), ("PK", TP.FLOAT), ("PV", TP.FLOAT)],
        [("Y", TP.FLOAT), ("PKo", TP.FLOAT), ("PVo", TP.FLOAT)],
        is_causal=1,
    )
    out = onnx_reference(model, {"Q": q, "K": k, "V": v, "PK": past_k, "PV": past_v})[0]
    return out, np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2)


def test_with_past_key_the_causal_offset_is_the_past_length():
    q, k, v = _qkv(3, 5)  # 2 cached keys, then 5 new keys for 3 queries: offset 2, not 7 - 3
    out, all_k, all_v = _with_past(q, k, v, past=2)
    offset_2 = np.arange(7)[None, :] <= np.arange(3)[:, None] + 2
    np.testing.assert_allclose(out, reference.global_attention(*_f64(q, all_k, all_v), mask=offset_2), atol=1e-6)
    assert not np.allclose(out, reference.global_attention(*_f64(q, all_k, all_v), causal=True), atol=1e-3)


def test_with_past_key_it_is_bottom_right_when_k_holds_exactly_the_new_tokens():
    q, k, v = _qkv(3, 3)
    out, all_k, all_v = _with_past(q, k, v, past=4)
    np.testing.assert_allclose(out, reference.global_attention(*_f64(q, all_k, all_v), causal=True), atol=1e-6)


def test_a_fully_masked_bool_row_gives_zero_not_nan():
    q, k, v = _qkv(3, 5)
    mask = np.ones((1, 1, 3, 5), dtype=bool)
    mask[..., 1, :] = False
    (out,) = onnx_reference(qkv_model(mask=TP.BOOL), {"Q": q, "K": k, "V": v, "M": mask})
    assert out[0, 0, 1].tolist() == [0.0] * 4


def test_opset_25_window_sizes_are_inclusive_top_left_and_minus_one_is_unbounded():
    q, k, v = _qkv(4, 9)
    feeds = {"Q": q, "K": k, "V": v}
    for left, right, window in ((2, 1, (2, 1)), (-1, 0, (None, 0)), (1, -1, (1, None))):
        (out,) = onnx_reference(qkv_model(opset=25, left_window_size=left, right_window_size=right), feeds)
        expected = reference.local_attention(*_f64(q, k, v), window=window, align="top_left")
        np.testing.assert_allclose(out, expected, atol=1e-6, err_msg=f"{(left, right)}")
    (out,) = onnx_reference(qkv_model(opset=25, left_window_size=2, right_window_size=1), feeds)
    assert not np.allclose(out, reference.local_attention(*_f64(q, k, v), window=(2, 1)), atol=1e-3)


def test_gqa_query_head_h_reads_kv_head_h_over_group():
    q, k, v = _qkv(3, 5, heads=6, kv_heads=2)
    (out,) = onnx_reference(qkv_model(), {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(out, reference.global_attention(*_f64(q, k, v)), atol=1e-6)


def test_softcap_comes_before_the_bias():
    q, k, v = _qkv(3, 5, heads=2)
    bias = (3 * RNG.standard_normal((1, 2, 3, 5))).astype(np.float32)
    (out,) = onnx_reference(qkv_model(mask=TP.FLOAT, softcap=0.5), {"Q": q, "K": k, "V": v, "M": bias})
    before = reference.global_attention(*_f64(q, k, v), softcap=0.5, bias=bias.astype(np.float64))
    np.testing.assert_allclose(out, before, atol=1e-6)


def test_a_nan_hidden_by_the_pattern_or_a_mask_leaks_into_every_row():
    q, k, v = _qkv(3, 3)
    v[0, 0, 2, 0] = np.nan  # key 2: hidden from rows 0 and 1 by the causal pattern
    (out,) = onnx_reference(qkv_model(is_causal=1), {"Q": q, "K": k, "V": v})
    assert rows_with_nan(out) == [True, True, True]
    k[0, 0, 2, 0], v[0, 0, 2, 0] = np.nan, 0.0  # a NaN key behind a mask leaks too: the mask is added
    mask = np.ones((1, 1, 3, 3), dtype=bool)
    mask[..., 2] = False
    (out,) = onnx_reference(qkv_model(mask=TP.BOOL), {"Q": q, "K": k, "V": v, "M": mask})
    assert rows_with_nan(out) == [True, True, True]
