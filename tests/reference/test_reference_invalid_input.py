"""Invalid input raises the documented error class, with a message naming the argument.

Messages read ``"<argument>: expected <expected>, got <given>"``; each case
checks the class (``InvalidArgumentError`` is a ``ValueError``,
``InvalidTypeError`` a ``TypeError``) and that the message starts with the
argument's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from attnref import AttnrefError, InvalidArgumentError, InvalidTypeError
from attnref.reference import (
    additive_attention,
    chunked_attention,
    global_attention,
    local_attention,
    luong_attention,
)

V = InvalidArgumentError
T = InvalidTypeError

# A valid multi-head problem: B = 1, Hq = 2, Hkv = 1, Lq = 3, Lk = 5, D = 4, Dv = 2.
Q, K, VV = np.zeros((1, 2, 3, 4)), np.zeros((1, 1, 5, 4)), np.zeros((1, 1, 5, 2))


def mh(op: Callable[..., Any] = global_attention, **changes: Any) -> Callable[[], Any]:
    """A call of ``op`` on the valid problem with some arguments replaced."""
    args = {"q": Q, "k": K, "v": VV, **changes}
    if op is local_attention:
        args.setdefault("window", (1, 1))
    if op is chunked_attention:
        args.setdefault("chunk_size", 2)
    return lambda: op(**args)


# A valid pooling problem: B = 2, L = 4, Din = 3, Dh = 2.
X = np.zeros((2, 4, 3))
POOL = {"x": X, "w_in": np.zeros((3, 2)), "b_in": np.zeros(2), "w_out": np.zeros(2)}


def additive(**changes: Any) -> Callable[[], Any]:
    return lambda: additive_attention(**{**POOL, **changes})


# A valid Luong problem: B = 2, T = 3, S = 5, d = 2.
H_T, H_S = np.zeros((2, 3, 2)), np.zeros((2, 5, 2))


def luong(**changes: Any) -> Callable[[], Any]:
    return lambda: luong_attention(**{"h_t": H_T, "h_s": H_S, **changes})


# Two kv heads: a head ratio of 3 / 2 with a 3-head q.
K3, V3 = np.zeros((1, 2, 5, 4)), np.zeros((1, 2, 5, 2))

LOCAL_P = {"mode": "local-p", "half_width": 1, "w_p": np.zeros((2, 3)), "v_p": np.zeros(3)}

CASES = [
    # -- ranks and sizes
    pytest.param(mh(q=Q[0]), V, "q", id="q-rank-3"),
    pytest.param(mh(k=K[None]), V, "k", id="k-rank-5"),
    pytest.param(mh(v=VV[0, 0]), V, "v", id="v-rank-2"),
    pytest.param(mh(q=np.zeros((1, 2, 0, 4))), V, "q", id="q-empty-axis"),
    pytest.param(mh(k=np.zeros((2, 1, 5, 4))), V, "k", id="k-batch-mismatch"),
    pytest.param(mh(v=np.zeros((2, 1, 5, 2))), V, "v", id="v-batch-mismatch"),
    pytest.param(mh(q=np.zeros((1, 3, 3, 4)), k=K3, v=V3), V, "k", id="head-ratio-3-over-2"),
    pytest.param(mh(v=np.zeros((1, 2, 5, 2))), V, "v", id="v-heads-differ-from-k"),
    pytest.param(mh(k=np.zeros((1, 1, 5, 3))), V, "k", id="k-head-size-mismatch"),
    pytest.param(mh(v=np.zeros((1, 1, 4, 2))), V, "v", id="v-length-mismatch"),
    # -- dtypes
    pytest.param(mh(q=Q.astype(np.int64)), T, "q", id="q-integer-dtype"),
    pytest.param(mh(k=K.astype(np.complex128)), T, "k", id="k-complex-dtype"),
    pytest.param(mh(v=VV.astype(bool)), T, "v", id="v-bool-dtype"),
    pytest.param(mh(k=K.astype(np.float32)), T, "k", id="mixed-float32-float64"),
    pytest.param(mh(q=None), T, "q", id="q-none"),
    # -- window
    pytest.param(mh(local_attention, window=(-2, 0)), V, "window[0]", id="window-negative-side"),
    pytest.param(mh(local_attention, window=-3), V, "window", id="window-negative-int"),
    pytest.param(mh(local_attention, window=(1.5, 0)), T, "window[0]", id="window-float-side"),
    pytest.param(mh(local_attention, window=(0, 2.0)), T, "window[1]", id="window-float-right"),
    pytest.param(mh(local_attention, window=True), T, "window", id="window-bool"),
    pytest.param(mh(local_attention, window=(True, 0)), T, "window[0]", id="window-bool-side"),
    pytest.param(mh(local_attention, window=(1, 2, 3)), T, "window", id="window-three-sides"),
    pytest.param(mh(local_attention, window="2"), T, "window", id="window-string"),
    pytest.param(mh(local_attention, window=None), T, "window", id="window-none"),
    # -- chunk and causal
    pytest.param(mh(chunked_attention, chunk_size=0), V, "chunk_size", id="chunk-zero"),
    pytest.param(mh(chunked_attention, chunk_size=-4), V, "chunk_size", id="chunk-negative"),
    pytest.param(mh(chunked_attention, chunk_size=2.0), T, "chunk_size", id="chunk-float"),
    pytest.param(mh(chunked_attention, chunk_size=True), T, "chunk_size", id="chunk-bool"),
    pytest.param(mh(chunked_attention, chunk_size=None), T, "chunk_size", id="chunk-none"),
    pytest.param(mh(causal="yes"), T, "causal", id="causal-string"),
    pytest.param(mh(causal=1), T, "causal", id="causal-int"),
    pytest.param(mh(chunked_attention, causal=None), T, "causal", id="chunk-causal-none"),
    # -- lengths
    pytest.param(mh(kv_lengths=[6]), V, "kv_lengths", id="kv-lengths-above-lk"),
    pytest.param(mh(kv_lengths=np.array([-1])), V, "kv_lengths", id="kv-lengths-negative"),
    pytest.param(mh(kv_lengths=[3, 3]), V, "kv_lengths", id="kv-lengths-wrong-shape"),
    pytest.param(mh(kv_lengths=np.array([[3]])), V, "kv_lengths", id="kv-lengths-2d"),
    pytest.param(mh(kv_lengths=np.array([3.0])), T, "kv_lengths", id="kv-lengths-float"),
    pytest.param(mh(kv_lengths=[True]), T, "kv_lengths", id="kv-lengths-bool"),
    pytest.param(mh(kv_lengths="3"), T, "kv_lengths", id="kv-lengths-string"),
    pytest.param(mh(q_lengths=[4]), V, "q_lengths", id="q-lengths-above-lq"),
    pytest.param(mh(q_lengths=2), V, "q_lengths", id="q-lengths-scalar"),
    pytest.param(mh(q_lengths=[1.5]), T, "q_lengths", id="q-lengths-float"),
    # -- mask and bias
    pytest.param(mh(mask=np.ones((3, 4), dtype=bool)), V, "mask", id="mask-wrong-shape"),
    pytest.param(mh(mask=np.ones((1, 1, 1, 1, 5), dtype=bool)), V, "mask", id="mask-rank-5"),
    pytest.param(mh(mask=np.ones((1, 2, 3, 5))), T, "mask", id="mask-float-dtype"),
    pytest.param(mh(mask=np.ones((3, 5), dtype=np.int8)), T, "mask", id="mask-int-dtype"),
    pytest.param(mh(bias=np.zeros((1, 2, 3, 6))), V, "bias", id="bias-wrong-shape"),
    pytest.param(mh(bias=np.zeros((2, 1, 1, 1, 5))), V, "bias", id="bias-rank-5"),
    pytest.param(mh(bias=np.zeros((3, 5), dtype=np.int32)), T, "bias", id="bias-int-dtype"),
    pytest.param(mh(bias=np.zeros((3, 5), dtype=bool)), T, "bias", id="bias-bool-dtype"),
    # -- options
    pytest.param(mh(align="center"), V, "align", id="align-unknown"),
    pytest.param(mh(align=None), V, "align", id="align-none"),
    pytest.param(mh(scale=0.0), V, "scale", id="scale-zero"),
    pytest.param(mh(scale=-1.0), V, "scale", id="scale-negative"),
    pytest.param(mh(scale=float("nan")), V, "scale", id="scale-nan"),
    pytest.param(mh(scale=float("inf")), V, "scale", id="scale-inf"),
    pytest.param(mh(scale="0.5"), T, "scale", id="scale-string"),
    pytest.param(mh(scale=True), T, "scale", id="scale-bool"),
    pytest.param(mh(softcap=0), V, "softcap", id="softcap-zero"),
    pytest.param(mh(softcap=-30.0), V, "softcap", id="softcap-negative"),
    pytest.param(mh(softcap=float("inf")), V, "softcap", id="softcap-inf"),
    pytest.param(mh(softcap=float("nan")), V, "softcap", id="softcap-nan"),
    pytest.param(mh(return_lse="yes"), T, "return_lse", id="return-lse-string"),
    pytest.param(mh(return_weights=1), T, "return_weights", id="return-weights-int"),
    pytest.param(mh(precision="float8"), T, "precision", id="precision-unknown"),
    pytest.param(mh(precision="int32"), T, "precision", id="precision-int32"),
    pytest.param(mh(precision=np.complex128), T, "precision", id="precision-complex"),
    pytest.param(additive(precision="half"), T, "precision", id="additive-precision-unknown"),
    pytest.param(luong(precision=np.int16), T, "precision", id="luong-precision-int"),
    # -- additive attention pooling
    pytest.param(additive(x=X[0]), V, "x", id="additive-x-rank-2"),
    pytest.param(additive(x=X.astype(np.int32)), T, "x", id="additive-x-int"),
    pytest.param(additive(w_in=np.zeros((2, 2))), V, "w_in", id="additive-w-in-features"),
    pytest.param(additive(w_in=np.zeros((3, 2), dtype=np.float32)), T, "w_in", id="additive-w-in-dtype"),
    pytest.param(additive(b_in=np.zeros(3)), V, "b_in", id="additive-b-in-shape"),
    pytest.param(additive(w_out=np.zeros((2, 1))), V, "w_out", id="additive-w-out-shape"),
    pytest.param(additive(b_out=np.zeros(2)), V, "b_out", id="additive-b-out-vector"),
    pytest.param(additive(b_out="1"), T, "b_out", id="additive-b-out-string"),
    pytest.param(additive(mask=np.ones((2, 5), dtype=bool)), V, "mask", id="additive-mask-shape"),
    pytest.param(additive(mask=np.ones((2, 4))), T, "mask", id="additive-mask-float"),
    pytest.param(additive(window=(0, -5)), V, "window[1]", id="additive-window-negative"),
    pytest.param(additive(window=1.0), T, "window", id="additive-window-float"),
    pytest.param(additive(center=1), V, "center", id="additive-center-without-window"),
    pytest.param(additive(window=1, center=4), V, "center", id="additive-center-past-end"),
    pytest.param(additive(window=1, center=-1), V, "center", id="additive-center-negative"),
    pytest.param(additive(window=1, center=1.0), T, "center", id="additive-center-float"),
    pytest.param(additive(window=1, center=[0, 1, 2]), V, "center", id="additive-center-wrong-shape"),
    pytest.param(additive(window=1, center=True), T, "center", id="additive-center-bool"),
    # -- Luong
    pytest.param(luong(h_t=H_T[0]), V, "h_t", id="luong-h-t-rank-2"),
    pytest.param(luong(h_s=np.zeros((3, 5, 2))), V, "h_s", id="luong-h-s-batch"),
    pytest.param(luong(h_s=np.zeros((2, 5, 3))), V, "h_s", id="luong-h-s-features"),
    pytest.param(luong(h_s=H_S.astype(np.int64)), T, "h_s", id="luong-h-s-int"),
    pytest.param(luong(score="bilinear"), V, "score", id="luong-score-unknown"),
    pytest.param(luong(mode="local"), V, "mode", id="luong-mode-unknown"),
    pytest.param(luong(score="general"), V, "w_a", id="luong-general-without-w-a"),
    pytest.param(luong(score="general", w_a=np.zeros((2, 3))), V, "w_a", id="luong-general-w-a-shape"),
    pytest.param(luong(score="general", w_a=np.zeros((2, 2), np.float16)), T, "w_a", id="luong-w-a-dtype"),
    pytest.param(luong(score="concat", w_a=np.zeros((4, 3))), V, "v_a", id="luong-concat-without-v-a"),
    pytest.param(luong(score="concat", w_a=np.zeros((2, 3)), v_a=np.zeros(3)), V, "w_a", id="luong-concat-w-a-rows"),
    pytest.param(luong(score="concat", w_a=np.zeros((4, 3)), v_a=np.zeros(2)), V, "v_a", id="luong-concat-v-a-shape"),
    pytest.param(luong(mode="local-m"), V, "half_width", id="luong-local-m-without-half-width"),
    pytest.param(luong(mode="local-m", half_width=-1), V, "half_width", id="luong-half-width-negative"),
    pytest.param(luong(**{**LOCAL_P, "half_width": 0}), V, "half_width", id="luong-local-p-half-width-0"),
    pytest.param(luong(**{**LOCAL_P, "half_width": 1.5}), T, "half_width", id="luong-half-width-float"),
    pytest.param(luong(**{**LOCAL_P, "half_width": True}), T, "half_width", id="luong-half-width-bool"),
    pytest.param(luong(**{**LOCAL_P, "w_p": None}), V, "w_p", id="luong-local-p-without-w-p"),
    pytest.param(luong(**{**LOCAL_P, "v_p": None}), V, "v_p", id="luong-local-p-without-v-p"),
    pytest.param(luong(**{**LOCAL_P, "w_p": np.zeros((3, 3))}), V, "w_p", id="luong-w-p-features"),
    pytest.param(luong(**{**LOCAL_P, "v_p": np.zeros(2)}), V, "v_p", id="luong-v-p-shape"),
    pytest.param(luong(source_lengths=[6, 1]), V, "source_lengths", id="luong-source-lengths-above-s"),
    pytest.param(luong(source_lengths=[1.0, 2.0]), T, "source_lengths", id="luong-source-lengths-float"),
    pytest.param(luong(source_lengths=[3]), V, "source_lengths", id="luong-source-lengths-shape"),
]


def test_enough_distinct_cases() -> None:
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids) >= 40


@pytest.mark.parametrize(("call", "error", "argument"), CASES)
def test_invalid_input_raises(call: Callable[[], Any], error: type[Exception], argument: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, AttnrefError)
    assert isinstance(info.value, ValueError if error is V else TypeError)
    message = str(info.value)
    assert re.match(rf"{re.escape(argument)}: expected .+, got .+", message), message


def test_error_classes_are_the_builtin_ones() -> None:
    assert issubclass(InvalidArgumentError, ValueError) and issubclass(InvalidArgumentError, AttnrefError)
    assert issubclass(InvalidTypeError, TypeError) and issubclass(InvalidTypeError, AttnrefError)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(mh(local_attention, window=(-1, None)), id="window-minus-one-and-none"),
        pytest.param(mh(local_attention, window=-1), id="window-int-minus-one-is-unbounded"),
        pytest.param(mh(local_attention, window=[0, 0]), id="window-list"),
        pytest.param(mh(local_attention, window=np.int64(2)), id="window-numpy-int"),
        pytest.param(mh(chunked_attention, chunk_size=np.int32(3), causal=np.bool_(True)), id="numpy-scalars"),
        pytest.param(mh(kv_lengths=np.array([0], dtype=np.uint8), q_lengths=(3,)), id="lengths-uint8-and-tuple"),
        pytest.param(mh(mask=np.ones(5, dtype=bool), bias=np.zeros((2, 1, 5), np.float32)), id="broadcast-mask-bias"),
        pytest.param(mh(scale=np.float32(0.5), softcap=30), id="numpy-scale-int-softcap"),
        pytest.param(additive(b_out=1, window=(None, 0), center=np.array([0, 3])), id="additive-int-b-out"),
        pytest.param(luong(**{**LOCAL_P, "source_lengths": np.array([0, 5])}), id="luong-zero-length"),
    ],
)
def test_edge_values_that_are_valid(call: Callable[[], Any]) -> None:
    """Values near the invalid ones that the contract accepts."""
    results = call()
    for array in results if isinstance(results, tuple) else (results,):
        assert not np.isnan(array).any()


def test_int_minus_one_window_is_unbounded_on_both_sides() -> None:
    """An int ``w`` means ``(w, w)``; ``-1`` is FlashAttention's spelling of unbounded."""
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((1, 2, 6, 3)), rng.standard_normal((1, 2, 6, 2))
    np.testing.assert_array_equal(local_attention(q, k, v, window=-1), global_attention(q, k, v))
