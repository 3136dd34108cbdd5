"""Small cases whose expected numbers were worked out by hand.

Two devices keep the arithmetic checkable on paper:

* ``q = 0`` makes every score 0, so the weights are uniform over the allowed
  keys; with ``v_j = j`` the output is the mean of the allowed key indices and
  ``lse = log(number of allowed keys)``.
* ``q = 1``, ``scale = 1`` and ``k_j = log(w_j)`` make ``exp(s_j) = w_j``, so the
  weights are ``w_j / sum(w)`` over the allowed keys.

``atanh(1/2) = ln(3) / 2`` and ``tanh(ln 3) = 4/5`` give exact tanh values for
softcap, the concat score, additive pooling and Luong's local-p position.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnref.reference import (
    additive_attention,
    chunked_attention,
    global_attention,
    local_attention,
    luong_attention,
)

LN3 = math.log(3.0)
ATANH_HALF = LN3 / 2  # tanh(ATANH_HALF) == 1/2
NEG_INF = -math.inf
E = math.e


def close(actual: np.ndarray, expected: object) -> None:
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), rtol=1e-12, atol=1e-14)


def uniform(Lq: int, Lk: int, B: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``q = k = 0`` (uniform weights), ``v_j = j``; one head, ``D = Dv = 1``."""
    v = np.broadcast_to(np.arange(Lk, dtype=np.float64)[:, None], (B, 1, Lk, 1)).copy()
    return np.zeros((B, 1, Lq, 1)), np.zeros((B, 1, Lk, 1)), v


def run(op, q, k, v, **kwargs):  # type: ignore[no-untyped-def]
    out, lse, weights = op(q, k, v, return_lse=True, return_weights=True, **kwargs)
    assert out.dtype == lse.dtype == weights.dtype == np.float64
    return out[..., 0], lse, weights


# -- local attention: asymmetric window, Lq != Lk, both alignments -----------
def test_window_bottom_right_lq_lt_lk() -> None:
    # offset = 6 - 3 = 3: p = 3, 4, 5; keys p-2..p+1 within [0, 6).
    out, lse, weights = run(local_attention, *uniform(3, 6), window=(2, 1))
    close(out[0, 0], [2.5, 3.5, 4.0])  # {1,2,3,4}, {2,3,4,5}, {3,4,5}
    close(lse[0, 0], [math.log(4), math.log(4), math.log(3)])
    q = 1 / 4
    t = 1 / 3
    close(weights[0, 0], [[0, q, q, q, q, 0], [0, 0, q, q, q, q], [0, 0, 0, t, t, t]])


def test_window_top_left_lq_lt_lk() -> None:
    # offset 0: p = 0, 1, 2.
    out, lse, weights = run(local_attention, *uniform(3, 6), window=(2, 1), align="top_left")
    close(out[0, 0], [0.5, 1.0, 1.5])  # {0,1}, {0,1,2}, {0,1,2,3}
    close(lse[0, 0], [math.log(2), math.log(3), math.log(4)])
    h, t, q = 1 / 2, 1 / 3, 1 / 4
    close(weights[0, 0], [[h, h, 0, 0, 0, 0], [t, t, t, 0, 0, 0], [q, q, q, q, 0, 0]])


def test_window_weighted_scores() -> None:
    # exp(s_j) = w_j = j + 1; bottom_right p = 3, 4, 5 with window (2, 1).
    w = np.arange(1.0, 7.0)
    q = np.ones((1, 1, 3, 1))
    k = np.log(w).reshape(1, 1, 6, 1)
    v = np.arange(6.0).reshape(1, 1, 6, 1)
    out, lse, weights = run(local_attention, q, k, v, window=(2, 1), scale=1.0)
    # row 0: keys 1..4, w 2,3,4,5 (sum 14); row 1: keys 2..5, w 3..6 (18); row 2: keys 3..5, w 4,5,6 (15).
    close(out[0, 0], [(2 * 1 + 3 * 2 + 4 * 3 + 5 * 4) / 14, (3 * 2 + 4 * 3 + 5 * 4 + 6 * 5) / 18, (12 + 20 + 30) / 15])
    close(lse[0, 0], [math.log(14), math.log(18), math.log(15)])
    close(weights[0, 0, 0], [0, 2 / 14, 3 / 14, 4 / 14, 5 / 14, 0])


def test_window_lq_gt_lk_both_alignments() -> None:
    # Lq = 5, Lk = 3, window (1, 0). bottom_right: offset -2, p = -2..2.
    out, lse, _ = run(local_attention, *uniform(5, 3), window=(1, 0))
    close(out[0, 0], [0, 0, 0, 0.5, 1.5])  # {}, {}, {0}, {0,1}, {1,2}
    close(lse[0, 0], [NEG_INF, NEG_INF, 0, math.log(2), math.log(2)])
    # top_left: p = 0..4: {0}, {0,1}, {1,2}, {2}, {}.
    out, lse, _ = run(local_attention, *uniform(5, 3), window=(1, 0), align="top_left")
    close(out[0, 0], [0, 0.5, 1.5, 2, 0])
    close(lse[0, 0], [0, math.log(2), math.log(2), 0, NEG_INF])


# -- chunked attention --------------------------------------------------------
@pytest.mark.parametrize("align", ["bottom_right", "top_left"])
def test_chunked_square(align: str) -> None:
    # chunks {0..3} and {4, 5}; Lq == Lk so both alignments agree.
    out, lse, _ = run(chunked_attention, *uniform(6, 6), chunk_size=4, align=align)
    close(out[0, 0], [1.5, 1.5, 1.5, 1.5, 4.5, 4.5])
    close(lse[0, 0], np.log([4, 4, 4, 4, 2, 2]))
    out, lse, _ = run(chunked_attention, *uniform(6, 6), chunk_size=4, causal=True, align=align)
    close(out[0, 0], [0, 0.5, 1, 1.5, 4, 4.5])
    close(lse[0, 0], np.log([1, 2, 3, 4, 1, 2]))


def test_chunked_lq_lt_lk() -> None:
    # Lq = 2, Lk = 6, chunk 4. bottom_right: p = 4, 5 (chunk {4, 5}); top_left: p = 0, 1 (chunk {0..3}).
    out, lse, _ = run(chunked_attention, *uniform(2, 6), chunk_size=4)
    close(out[0, 0], [4.5, 4.5])
    close(lse[0, 0], np.log([2, 2]))
    out, lse, _ = run(chunked_attention, *uniform(2, 6), chunk_size=4, causal=True)
    close(out[0, 0], [4, 4.5])
    close(lse[0, 0], np.log([1, 2]))
    out, _, _ = run(chunked_attention, *uniform(2, 6), chunk_size=4, align="top_left")
    close(out[0, 0], [1.5, 1.5])
    out, lse, _ = run(chunked_attention, *uniform(2, 6), chunk_size=4, causal=True, align="top_left")
    close(out[0, 0], [0, 0.5])
    close(lse[0, 0], np.log([1, 2]))


def test_chunked_negative_positions_use_floor_division() -> None:
    # Lq = 6, Lk = 3, chunk 2, bottom_right: p = -3..2. p = -1 lies in chunk -1 (floor),
    # not chunk 0 (truncation), so it sees no key.
    out, lse, _ = run(chunked_attention, *uniform(6, 3), chunk_size=2)
    close(out[0, 0], [0, 0, 0, 0.5, 0.5, 2])
    close(lse[0, 0], [NEG_INF, NEG_INF, NEG_INF, math.log(2), math.log(2), 0])


# -- GQA ----------------------------------------------------------------------
def test_gqa_six_query_heads_two_kv_heads() -> None:
    # kv head 0: k = [0, ln 3] -> weights [1/4, 3/4], v = [0, 4] -> 3.
    # kv head 1: k = [ln 3, 0] -> weights [3/4, 1/4], v = [0, 8] -> 2.
    q = np.ones((1, 6, 1, 1))
    k = np.array([[0.0, LN3], [LN3, 0.0]]).reshape(1, 2, 2, 1)
    v = np.array([[0.0, 4.0], [0.0, 8.0]]).reshape(1, 2, 2, 1)
    out, lse, weights = run(global_attention, q, k, v, scale=1.0)
    close(out[0, :, 0], [3, 3, 3, 2, 2, 2])  # h -> h // 3 (not h % 2, which would give 3, 2, 3, 2, 3, 2)
    close(lse[0, :, 0], [math.log(4)] * 6)
    close(weights[0, :, 0], [[1 / 4, 3 / 4]] * 3 + [[3 / 4, 1 / 4]] * 3)


# -- empty rows -----------------------------------------------------------------
def test_fully_masked_row() -> None:
    mask = np.array([[True, False, True], [False, False, False]])
    out, lse, weights = run(global_attention, *uniform(2, 3), mask=mask)
    close(out[0, 0], [1, 0])
    close(lse[0, 0], [math.log(2), NEG_INF])
    close(weights[0, 0], [[0.5, 0, 0.5], [0, 0, 0]])


def test_all_minus_inf_bias_row_is_empty() -> None:
    bias = np.array([[0.0, 0.0, 0.0], [NEG_INF, NEG_INF, NEG_INF]])
    out, lse, weights = run(global_attention, *uniform(2, 3), bias=bias)
    close(out[0, 0], [1, 0])
    close(lse[0, 0], [math.log(3), NEG_INF])
    close(weights[0, 0, 1], [0, 0, 0])


def test_zero_kv_length_empties_the_batch() -> None:
    out, lse, weights = run(global_attention, *uniform(2, 3, B=2), kv_lengths=[3, 0])
    close(out[:, 0], [[1, 1], [0, 0]])
    close(lse[:, 0], [[math.log(3)] * 2, [NEG_INF] * 2])
    assert not weights[1].any()


# -- lengths --------------------------------------------------------------------
def test_q_lengths_padding_rows() -> None:
    # B = 2, Lq = 3, Lk = 4, q_lengths = [3, 1], causal.
    # bottom_right: batch 0 offset 1 (p = 1, 2, 3); batch 1 offset 4 - 1 = 3 (p = 3), rows 1, 2 padding.
    out, lse, _ = run(global_attention, *uniform(3, 4, B=2), causal=True, q_lengths=np.array([3, 1]))
    close(out[:, 0], [[0.5, 1, 1.5], [1.5, 0, 0]])
    close(lse[:, 0], [np.log([2, 3, 4]), [math.log(4), NEG_INF, NEG_INF]])
    # top_left: p = i in both batches.
    out, lse, _ = run(global_attention, *uniform(3, 4, B=2), causal=True, q_lengths=[3, 1], align="top_left")
    close(out[:, 0], [[0, 0.5, 1], [0, 0, 0]])
    close(lse[:, 0], [np.log([1, 2, 3]), [0, NEG_INF, NEG_INF]])


def test_kv_lengths() -> None:
    # B = 2, Lq = 2, Lk = 4, kv_lengths = [4, 2]; bottom_right offsets 2 and 0.
    out, lse, _ = run(global_attention, *uniform(2, 4, B=2), causal=True, kv_lengths=[4, 2])
    close(out[:, 0], [[1, 1.5], [0, 0.5]])
    close(lse[:, 0], np.log([[3, 4], [1, 2]]))
    out, _, weights = run(global_attention, *uniform(2, 4, B=2), kv_lengths=[4, 2])
    close(out[:, 0], [[1.5, 1.5], [0.5, 0.5]])
    close(weights[1, 0], [[0.5, 0.5, 0, 0]] * 2)


def test_q_and_kv_lengths_set_the_alignment_together() -> None:
    # Lq_b = 2, Lk_b = 3: offset 1, p = 1, 2; rows 2, 3 padding.
    out, lse, _ = run(local_attention, *uniform(4, 5), window=(None, 0), q_lengths=[2], kv_lengths=[3])
    close(out[0, 0], [0.5, 1, 0, 0])
    close(lse[0, 0], [math.log(2), math.log(3), NEG_INF, NEG_INF])


# -- score transforms -------------------------------------------------------------
def test_softcap() -> None:
    # k = [0, ln 3]: plain scores [0, ln 3]; softcap 2: 2 tanh(ln 3 / 2) = 2 * (1/2) = 1.
    q = np.ones((1, 1, 1, 1))
    k = np.array([0.0, LN3]).reshape(1, 1, 2, 1)
    v = np.array([0.0, 1.0]).reshape(1, 1, 2, 1)
    out, lse, _ = run(global_attention, q, k, v, scale=1.0)
    close(out, [[[3 / 4]]])
    close(lse, [[[math.log(4)]]])
    out, lse, _ = run(global_attention, q, k, v, scale=1.0, softcap=2.0)
    close(out, [[[E / (1 + E)]]])
    close(lse, [[[math.log(1 + E)]]])


def test_softcap_comes_before_bias() -> None:
    # softcap 2 of [0, ln 3] is [0, 1]; bias [0, ln 2] then gives [0, 1 + ln 2]: weights 1 : 2e.
    q = np.ones((1, 1, 1, 1))
    k = np.array([0.0, LN3]).reshape(1, 1, 2, 1)
    v = np.array([0.0, 1.0]).reshape(1, 1, 2, 1)
    bias = np.array([0.0, math.log(2)])
    out, lse, _ = run(global_attention, q, k, v, scale=1.0, softcap=2.0, bias=bias)
    close(out, [[[2 * E / (1 + 2 * E)]]])
    close(lse, [[[math.log(1 + 2 * E)]]])


def test_bias() -> None:
    # q = 0, bias [0, ln 3, ln 4]: weights [1, 3, 4] / 8; v = [8, 0, 2]: out = (8 + 8) / 8.
    q, k, _ = uniform(1, 3)
    v = np.array([8.0, 0.0, 2.0]).reshape(1, 1, 3, 1)
    out, lse, weights = run(global_attention, q, k, v, bias=np.log([1.0, 3.0, 4.0]))
    close(out, [[[2.0]]])
    close(lse, [[[math.log(8)]]])
    close(weights, [[[[1 / 8, 3 / 8, 4 / 8]]]])


def test_default_and_explicit_scale() -> None:
    # D = 4, q = 1, k_1 = ln(3)/2 everywhere: q . k = 2 ln 3. Default scale 1/2: s = [0, ln 3].
    q = np.ones((1, 1, 1, 4))
    k = np.stack([np.zeros(4), np.full(4, LN3 / 2)]).reshape(1, 1, 2, 4)
    v = np.array([0.0, 1.0]).reshape(1, 1, 2, 1)
    close(global_attention(q, k, v), [[[[3 / 4]]]])
    # scale 1/4: s = [0, ln(3) / 2], weights 1 : sqrt(3).
    close(global_attention(q, k, v, scale=0.25), [[[[math.sqrt(3) / (1 + math.sqrt(3))]]]])


def test_return_order() -> None:
    q, k, v = uniform(2, 3)
    out = global_attention(q, k, v)
    assert isinstance(out, np.ndarray) and out.shape == (1, 1, 2, 1)
    out_w, weights = global_attention(q, k, v, return_weights=True)
    assert weights.shape == (1, 1, 2, 3)
    out_l, lse = global_attention(q, k, v, return_lse=True)
    assert lse.shape == (1, 1, 2)
    close(out_w, out)
    close(out_l, out)


def test_low_precision_inputs_return_float64() -> None:
    q, k, v = (a.astype(np.float16) for a in uniform(3, 6))
    out = local_attention(q, k, v, window=(2, 1))
    assert out.dtype == np.float64
    close(out[0, 0, :, 0], [2.5, 3.5, 4.0])


# -- Luong ------------------------------------------------------------------------
def test_luong_local_p_gaussian() -> None:
    # h_t @ w_p = [ln(3)/2] -> tanh 1/2 -> times v_p = -2 ln 3 -> gate -ln 3 -> sigmoid 1/4.
    # Batch 0: S_b = 6, p_t = 1.5, D = 1 (sigma 1/2): s in {1, 2}, gauss exp(-0.25 / 0.5) = e^-0.5 each.
    # Batch 1: S_b = 4, p_t = 1: s in {0, 1, 2}, gauss exp(-2 (s - 1)^2) = e^-2, 1, e^-2.
    # Step t = 1 has h_t = 0: gate 0, sigmoid 1/2: p_t = 3 (batch 0, s in {2,3,4}), 2 (batch 1, s in {1,2,3}).
    # Scores are 0 (h_s[:, 0] = 0 and h_t[1] = 0), so the softmax is uniform over the window.
    h_t = np.broadcast_to(np.array([[ATANH_HALF, 0.0], [0.0, 0.0]]), (2, 2, 2)).copy()
    h_s = np.zeros((2, 6, 2))
    h_s[:, :, 1] = np.arange(6)
    w_p = np.array([[1.0], [0.0]])
    v_p = np.array([-2 * LN3])
    context, weights = luong_attention(h_t, h_s, mode="local-p", half_width=1, w_p=w_p, v_p=v_p, source_lengths=[6, 4])
    g = math.exp(-0.5)
    f = math.exp(-2)
    close(weights[0, 0], [0, g / 2, g / 2, 0, 0, 0])
    close(weights[1, 0], [f / 3, 1 / 3, f / 3, 0, 0, 0])
    close(weights[0, 1], [0, 0, f / 3, 1 / 3, f / 3, 0])
    close(weights[1, 1], [0, f / 3, 1 / 3, f / 3, 0, 0])
    close(context[0, 0], [0, g / 2 * (1 + 2)])
    close(context[1, 0], [0, (1 + 2 * f) / 3])
    close(context[0, 1], [0, (2 * f + 3 + 4 * f) / 3])
    close(context[1, 1], [0, (f + 2 + 3 * f) / 3])


def test_luong_local_m() -> None:
    # Uniform scores (h_t = 0); h_s = s. p_t = min(t, S_b - 1).
    h_t = np.zeros((2, 3, 1))
    h_s = np.broadcast_to(np.arange(5.0)[:, None], (2, 5, 1)).copy()
    context, weights = luong_attention(h_t, h_s, mode="local-m", half_width=1, source_lengths=[5, 2])
    close(context[0, :, 0], [0.5, 1, 2])  # {0,1}, {0,1,2}, {1,2,3}
    close(context[1, :, 0], [0.5, 0.5, 0.5])  # p_t = 0, 1, 1 within S_b = 2: {0,1} each time
    close(weights[0, 2], [0, 1 / 3, 1 / 3, 1 / 3, 0])
    context, _ = luong_attention(h_t, h_s, mode="local-m", half_width=0)
    close(context[:, :, 0], [[0, 1, 2], [0, 1, 2]])


def test_luong_global_dot_with_source_lengths() -> None:
    # dot scores h_t . h_s = [0, ln 3, ln 3]; batch 1 keeps only s < 2.
    h_t = np.ones((2, 1, 1))
    h_s = np.broadcast_to(np.array([0.0, LN3, LN3])[:, None], (2, 3, 1)).copy()
    context, weights = luong_attention(h_t, h_s, source_lengths=[3, 2])
    close(weights[:, 0], [[1 / 7, 3 / 7, 3 / 7], [1 / 4, 3 / 4, 0]])
    close(context[:, 0, 0], [6 / 7 * LN3, 3 / 4 * LN3])


def test_luong_general_score() -> None:
    # w_a = [[0, 1], [0, 0]]: score = h_t[0] * h_s[1] = [0, ln 3] (dot would give [4, 5 ln 3]).
    h_t = np.array([[[1.0, 5.0]]])
    h_s = np.array([[[4.0, 0.0], [0.0, LN3]]])
    w_a = np.array([[0.0, 1.0], [0.0, 0.0]])
    context, weights = luong_attention(h_t, h_s, score="general", w_a=w_a)
    close(weights, [[[1 / 4, 3 / 4]]])
    close(context, [[[1.0, 3 / 4 * LN3]]])


def test_luong_concat_score() -> None:
    # d = 1, da = 2. Rows of w_a: first the h_t part, then the h_s part.
    # hidden_0 = tanh(h_t + h_s) = tanh(0) = 0 or tanh(ln 3) = 4/5; hidden_1 = tanh(2 h_t) = 4/5 (the same
    # for every s, so it cancels in the softmax). v_a[0] = 1.25 ln 3: scores [0, ln 3] + const.
    h_t = np.array([[[ATANH_HALF]]])
    h_s = np.array([[[-ATANH_HALF], [ATANH_HALF]]])
    w_a = np.array([[1.0, 2.0], [1.0, 0.0]])
    v_a = np.array([1.25 * LN3, 5.0])
    context, weights = luong_attention(h_t, h_s, score="concat", w_a=w_a, v_a=v_a)
    close(weights, [[[1 / 4, 3 / 4]]])
    close(context, [[[LN3 / 4]]])


# -- additive attention pooling ---------------------------------------------------
def test_additive_global() -> None:
    # Dh = 2: unit 0 = tanh(x + ln(3)/2), unit 1 ignored (w_out[1] = 0). x = [-ln3/2, 0, -ln3/2]:
    # unit 0 = [0, 1/2, 0], e = 2 ln 3 * unit 0 + b_out = [0, ln 3, 0] + 5: weights [1, 3, 1] / 5.
    x = np.array([-ATANH_HALF, 0.0, -ATANH_HALF]).reshape(1, 3, 1)
    w_in = np.array([[1.0, 2.0]])
    b_in = np.array([ATANH_HALF, 0.3])
    w_out = np.array([2 * LN3, 0.0])
    context, weights = additive_attention(x, w_in, b_in, w_out, 5.0)
    assert context.dtype == weights.dtype == np.float64
    close(weights, [[1 / 5, 3 / 5, 1 / 5]])
    close(context, [[-LN3 / 5]])


def _pooling_sequence(B: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """L = 7, Din = 2: feature 0 drives the score (e = ln 3 at position 2, else 0), feature 1 = position."""
    x = np.zeros((B, 7, 2))
    x[:, 2, 0] = ATANH_HALF
    x[:, :, 1] = np.arange(7)
    return x, np.array([[1.0], [0.0]]), np.zeros(1), np.array([2 * LN3])


def test_additive_window_with_centre() -> None:
    x, w_in, b_in, w_out = _pooling_sequence()
    # centre 1, window (1, 2): positions {0, 1, 2, 3}, unnormalised weights 1, 1, 3, 1.
    context, weights = additive_attention(x, w_in, b_in, w_out, window=(1, 2), center=1)
    close(weights, [[1 / 6, 1 / 6, 1 / 2, 1 / 6, 0, 0, 0]])
    close(context, [[LN3 / 4, (1 + 2 * 3 + 3) / 6]])
    # default centre L // 2 = 3, window 1: positions {2, 3, 4}, weights 3, 1, 1.
    context, weights = additive_attention(x, w_in, b_in, w_out, window=1)
    close(weights, [[0, 0, 3 / 5, 1 / 5, 1 / 5, 0, 0]])
    close(context, [[0.3 * LN3, (6 + 3 + 4) / 5]])
    # window (None, 0) around 2: positions {0, 1, 2}, weights 1, 1, 3.
    context, _ = additive_attention(x, w_in, b_in, w_out, window=(None, 0), center=2)
    close(context[0, 1], (1 + 6) / 5)


def test_additive_per_batch_centres_and_mask() -> None:
    x, w_in, b_in, w_out = _pooling_sequence(B=2)
    context, weights = additive_attention(x, w_in, b_in, w_out, window=1, center=np.array([0, 6]))
    close(context[:, 1], [0.5, 5.5])  # {0, 1} and {5, 6}, uniform
    close(weights[1], [0, 0, 0, 0, 0, 0.5, 0.5])
    mask = np.ones((2, 7), dtype=bool)
    mask[0, 2] = False
    mask[1] = False
    context, weights = additive_attention(x, w_in, b_in, w_out, mask=mask, window=(1, 1))
    close(context, [[0, 3.5], [0, 0]])  # batch 0: {3, 4}; batch 1: nothing allowed -> zeros
    close(weights[1], np.zeros(7))
