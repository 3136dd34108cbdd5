"""What ``docs/systems.md`` says about onnxruntime, checked on the installed onnxruntime (CPU kernels).

Measured with onnxruntime 1.30.0 and onnx 1.23.2: the ``Attention`` op (opset
23), compared with ONNX's reference implementation and with attnref's, and the
contrib op ``com.microsoft.GroupQueryAttention``.
"""

from __future__ import annotations

import numpy as np
import pytest
from peer_kit import attention_model, need, onnx_reference, onnxruntime_run, qkv_model, rows_with_nan

from attnref import reference, window_from_size

onnx = need("onnx")
ort = need("onnxruntime")
TP = onnx.TensorProto

RNG = np.random.default_rng(30)


def _qkv(q_len: int, kv_len: int, heads: int = 1, kv_heads: int = 1, dim: int = 4, v_dim: int | None = None):
    q = RNG.standard_normal((1, heads, q_len, dim)).astype(np.float32)
    k = RNG.standard_normal((1, kv_heads, kv_len, dim)).astype(np.float32)
    v = RNG.standard_normal((1, kv_heads, kv_len, v_dim or dim)).astype(np.float32)
    return q, k, v


def _both(model, feeds) -> tuple[np.ndarray, np.ndarray]:
    return onnxruntime_run(model, feeds)[0], onnx_reference(model, feeds)[0]


def _f64(*arrays: np.ndarray) -> list[np.ndarray]:
    return [a.astype(np.float64) for a in arrays]


def test_is_causal_is_top_left_as_in_the_onnx_reference():
    q, k, v = _qkv(3, 5)
    got, onnx_ref = _both(qkv_model(is_causal=1), {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(got, onnx_ref, atol=1e-6)
    np.testing.assert_allclose(got, reference.global_attention(*_f64(q, k, v), causal=True, align="top_left"), 1e-6)


def test_gqa_and_a_value_head_size_of_its_own_as_in_the_onnx_reference():
    q, k, v = _qkv(3, 5, heads=4, kv_heads=2, v_dim=6)
    got, onnx_ref = _both(qkv_model(), {"Q": q, "K": k, "V": v})
    np.testing.assert_allclose(got, onnx_ref, atol=1e-6)
    np.testing.assert_allclose(got, reference.global_attention(*_f64(q, k, v)), atol=1e-6)


def test_softcap_comes_before_the_bias_as_in_the_onnx_reference():
    q, k, v = _qkv(3, 5, heads=2)
    bias = (3 * RNG.standard_normal((1, 2, 3, 5))).astype(np.float32)
    got, onnx_ref = _both(qkv_model(mask=TP.FLOAT, softcap=0.5), {"Q": q, "K": k, "V": v, "M": bias})
    np.testing.assert_allclose(got, onnx_ref, atol=1e-6)
    expected = reference.global_attention(*_f64(q, k, v), softcap=0.5, bias=bias.astype(np.float64))
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_a_fully_masked_row_gives_zero_as_in_the_onnx_reference(kind):
    q, k, v = _qkv(3, 5)
    allowed = np.ones((1, 1, 3, 5), dtype=bool)
    allowed[..., 1, :] = False
    mask = allowed if kind == "bool" else np.where(allowed, 0, -np.inf).astype(np.float32)
    got, onnx_ref = _both(qkv_model(mask=TP.BOOL if kind == "bool" else TP.FLOAT), {"Q": q, "K": k, "V": v, "M": mask})
    assert got[0, 0, 1].tolist() == [0.0] * 4 == onnx_ref[0, 0, 1].tolist()


def test_hidden_scores_are_the_lowest_finite_float_not_minus_infinity():
    """Its ``is_causal`` and boolean masks fill hidden scores with -3.4e38 (seen in ``qk_matmul_output``)."""
    q, k, v = _qkv(3, 5)
    allowed = np.ones((1, 1, 3, 5), dtype=bool)
    allowed[..., 4] = False
    inputs = [("Q", TP.FLOAT), ("K", TP.FLOAT), ("V", TP.FLOAT), ("M", TP.BOOL)]
    outputs = [("Y", TP.FLOAT), ("", 0), ("", 0), ("S", TP.FLOAT)]
    scores = onnxruntime_run(attention_model(inputs, outputs, is_causal=1, qk_matmul_output_mode=2),
                             {"Q": q, "K": k, "V": v, "M": allowed})[1]  # fmt: skip
    lowest = np.finfo(np.float32).min
    assert (scores[0, 0, :, 4] == lowest).all()  # hidden by the mask
    assert scores[0, 0, 0, 1] == lowest  # hidden by is_causal (row 0 sees key 0 only)


def test_rejects_the_opset_25_window_attributes():
    q, k, v = _qkv(4, 9)
    model = qkv_model(opset=25, left_window_size=2, right_window_size=1)
    onnx_reference(model, {"Q": q, "K": k, "V": v})  # valid ONNX
    with pytest.raises(Exception, match="INVALID_GRAPH"):
        onnxruntime_run(model, {"Q": q, "K": k, "V": v})


def test_refuses_past_key_without_the_present_key_output():
    q, k, v = _qkv(3, 3)
    past = RNG.standard_normal((1, 1, 2, 4)).astype(np.float32)
    inputs = [("Q", TP.FLOAT), ("K", TP.FLOAT), ("V", TP.FLOAT), ("", 0), ("PK", TP.FLOAT), ("PV", TP.FLOAT)]
    model = attention_model(inputs, [("Y", TP.FLOAT)], is_causal=1)
    feeds = {"Q": q, "K": k, "V": v, "PK": past, "PV": past}
    onnx_reference(model, feeds)  # valid ONNX
    with pytest.raises(Exception, match="present_key"):
        onnxruntime_run(model, feeds)


def test_rejects_a_mask_that_broadcasts_over_the_query_axis():
    q, k, v = _qkv(3, 5)
    feeds = {"Q": q, "K": k, "V": v, "M": np.ones((1, 1, 1, 5), dtype=bool)}
    onnx_reference(qkv_model(mask=TP.BOOL), feeds)  # valid ONNX
    with pytest.raises(Exception, match="q_sequence_length"):
        onnxruntime_run(qkv_model(mask=TP.BOOL), feeds)


def test_rejects_bfloat16():
    ml_dtypes = need("ml_dtypes")
    q, k, v = (a.astype(ml_dtypes.bfloat16) for a in _qkv(3, 5))
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        onnxruntime_run(qkv_model(dtype=TP.BFLOAT16), {"Q": q, "K": k, "V": v})


def test_a_nan_hidden_by_the_pattern_or_a_mask_leaks_into_every_row():
    q, k, v = _qkv(3, 3)
    v[0, 0, 2, 0] = np.nan  # key 2: hidden from rows 0 and 1 by the causal pattern
    (out,) = onnxruntime_run(qkv_model(is_causal=1), {"Q": q, "K": k, "V": v})
    assert rows_with_nan(out) == [True, True, True]
    assert rows_with_nan(reference.global_attention(*_f64(q, k, v), causal=True)) == [False, False, True]
    k[0, 0, 2, 0], v[0, 0, 2, 0] = np.nan, 0.0
    mask = np.ones((1, 1, 3, 3), dtype=bool)
    mask[..., 2] = False
    (out,) = onnxruntime_run(qkv_model(mask=TP.BOOL), {"Q": q, "K": k, "V": v, "M": mask})
    assert rows_with_nan(out) == [True, True, True]


def test_group_query_attention_local_window_size_keeps_w_keys_including_the_current_one():
    """Contrib ``GroupQueryAttention(local_window_size=W)`` is attnref's ``window_from_size(W)``."""
    from onnx import helper

    batch, heads, kv_heads, length, dim, w = 1, 2, 1, 9, 8, 3  # its CPU kernel wants head sizes in multiples of 8
    node = helper.make_node(
        "GroupQueryAttention", ["Q", "K", "V", "", "", "S", "T"], ["Y", "PK", "PV"],
        domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, local_window_size=w,
    )  # fmt: skip
    inputs = [helper.make_tensor_value_info(n, TP.FLOAT, None) for n in "QKV"]
    inputs += [helper.make_tensor_value_info(n, TP.INT32, None) for n in "ST"]
    outputs = [helper.make_tensor_value_info(n, TP.FLOAT, None) for n in ("Y", "PK", "PV")]
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    q = RNG.standard_normal((batch, heads, length, dim)).astype(np.float32)
    k, v = (RNG.standard_normal((batch, kv_heads, length, dim)).astype(np.float32) for _ in range(2))
    packed = [np.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(batch, length, -1)) for a in (q, k, v)]
    feeds = dict(zip("QKV", packed, strict=True), S=np.array([length - 1], np.int32), T=np.array(length, np.int32))
    out = onnxruntime_run(model, feeds)[0].reshape(batch, length, heads, dim).transpose(0, 2, 1, 3)
    assert window_from_size(w) == (w - 1, 0)
    np.testing.assert_allclose(out, reference.local_attention(*_f64(q, k, v), window=window_from_size(w)), atol=1e-5)
    assert not np.allclose(out, reference.local_attention(*_f64(q, k, v), window=(w, 0)), atol=1e-3)


def test_float64_a_row_with_no_allowed_key_gives_nan():
    """float16 and float32 give 0 (above); the float64 kernel does not guard the empty row."""
    q, k, v = (a.astype(np.float64) for a in _qkv(3, 5))
    allowed = np.ones((1, 1, 3, 5), dtype=bool)
    allowed[..., 1, :] = False
    for mask, kind in ((allowed, TP.BOOL), (np.where(allowed, 0.0, -np.inf), TP.DOUBLE)):
        (out,) = onnxruntime_run(qkv_model(dtype=TP.DOUBLE, mask=kind), {"Q": q, "K": k, "V": v, "M": mask})
        assert np.isnan(out[0, 0, 1]).all() and not np.isnan(out[0, 0, [0, 2]]).any()


def test_float64_is_exact_only_when_the_scale_and_the_softcap_are_float32_numbers():
    """ONNX float attributes are float32, and the default scale 1/sqrt(D) is not float64-exact either."""
    rng = np.random.default_rng(64)

    def error(dim: int, **attributes) -> float:
        q, k, v = (rng.standard_normal((1, 1, 8, dim)) for _ in range(3))
        (out,) = onnxruntime_run(qkv_model(dtype=TP.DOUBLE, **attributes), {"Q": q, "K": k, "V": v})
        options = {"softcap": attributes["softcap"]} if "softcap" in attributes else {}
        return float(np.abs(out - reference.global_attention(q, k, v, **options)).max())

    assert error(16) < 1e-13  # 1/sqrt(16) = 0.25, a float32 number
    assert 1e-10 < error(12) < 1e-6  # 1/sqrt(12) is not
    assert error(16, softcap=3.0) < 1e-13
    assert 1e-10 < error(16, softcap=3.3) < 1e-6
