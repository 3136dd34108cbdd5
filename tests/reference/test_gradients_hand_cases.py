"""Reference VJPs on cases small enough to derive by hand, and their invalid inputs."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from attnref import reference as ref

LOG3 = math.log(3.0)


def _one_row() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # D = 1, scale 1, q = 1 and k = (0, log 3): scores (0, log 3), weights P = (1/4, 3/4);
    # v = (4, 8): out = 1 + 6 = 7. With dout = 1: dP = (4, 8), delta = 7.
    q = np.ones((1, 1, 1, 1))
    k = np.array([0.0, LOG3]).reshape(1, 1, 2, 1)
    v = np.array([4.0, 8.0]).reshape(1, 1, 2, 1)
    dout = np.ones((1, 1, 1, 1))
    return q, k, v, dout


def test_one_row_by_hand() -> None:
    # dS = P (dP - delta) = (1/4 (4 - 7), 3/4 (8 - 7)) = (-3/4, 3/4)
    # dq = dS . k = 3/4 log 3; dk = dS q = (-3/4, 3/4); dv = P dout = (1/4, 3/4)
    dq, dk, dv = ref.global_attention_vjp(*_one_row(), scale=1.0)
    np.testing.assert_allclose(dq.ravel(), [0.75 * LOG3], rtol=1e-15)
    np.testing.assert_allclose(dk.ravel(), [-0.75, 0.75], rtol=1e-15)
    np.testing.assert_allclose(dv.ravel(), [0.25, 0.75], rtol=1e-15)


def test_one_row_with_dlse_and_a_bias_by_hand() -> None:
    # dlse = 2: dS = (1/4 (4 - 7 + 2), 3/4 (8 - 7 + 2)) = (-1/4, 9/4); dbias = dS, summed to a scalar-like (1,)
    q, k, v, dout = _one_row()
    dq, dk, dv, dbias = ref.global_attention_vjp(
        q, k, v, dout, dlse=np.full((1, 1, 1), 2.0), scale=1.0, bias=np.zeros(1)
    )
    np.testing.assert_allclose(dq.ravel(), [2.25 * LOG3], rtol=1e-15)
    np.testing.assert_allclose(dk.ravel(), [-0.25, 2.25], rtol=1e-15)
    np.testing.assert_allclose(dv.ravel(), [0.25, 0.75], rtol=1e-15)  # dv does not see dlse
    assert dbias.shape == (1,)
    np.testing.assert_allclose(dbias, [2.0], rtol=1e-15)


def test_scale_multiplies_dq_and_dk_only() -> None:
    # scale 2 with q = 1/2 gives the same scores, weights, out and dS; dq = scale dS k, dk = scale dS q
    q, k, v, dout = _one_row()
    dq, dk, dv = ref.global_attention_vjp(q / 2, k, v, dout, scale=2.0)
    np.testing.assert_allclose(dq.ravel(), [1.5 * LOG3], rtol=1e-15)
    np.testing.assert_allclose(dk.ravel(), [-0.75, 0.75], rtol=1e-15)
    np.testing.assert_allclose(dv.ravel(), [0.25, 0.75], rtol=1e-15)


def test_softcap_chain_rule_by_hand() -> None:
    # s0 = (0, log 3), softcap c: s = c tanh(s0 / c); the dS of the capped scores times 1 - tanh(s0 / c)^2
    q, k, v, dout = _one_row()
    c = 1.0
    s = c * np.tanh(np.array([0.0, LOG3]) / c)
    P = np.exp(s) / np.exp(s).sum()
    out = P @ np.array([4.0, 8.0])
    dS = P * (np.array([4.0, 8.0]) - out) * (1 - np.tanh(np.array([0.0, LOG3]) / c) ** 2)
    dq, dk, _ = ref.global_attention_vjp(q, k, v, dout, scale=1.0, softcap=c)
    np.testing.assert_allclose(dq.ravel(), [dS @ np.array([0.0, LOG3])], rtol=1e-14)
    np.testing.assert_allclose(dk.ravel(), dS, rtol=1e-14)


def test_gqa_two_query_heads_sum_into_one_kv_head() -> None:
    # both query heads see the same case: dk and dv of the shared kv head are twice one head's
    q, k, v, dout = _one_row()
    dq, dk, dv = ref.global_attention_vjp(np.repeat(q, 2, axis=1), k, v, np.repeat(dout, 2, axis=1), scale=1.0)
    assert dq.shape == (1, 2, 1, 1) and dk.shape == (1, 1, 2, 1) and dv.shape == (1, 1, 2, 1)
    np.testing.assert_allclose(dk.ravel(), [-1.5, 1.5], rtol=1e-15)
    np.testing.assert_allclose(dv.ravel(), [0.5, 1.5], rtol=1e-15)


def test_a_row_without_allowed_keys_has_zero_gradients() -> None:
    q, k, v, dout = _one_row()
    dq, dk, dv = ref.global_attention_vjp(q, k, v, dout, kv_lengths=[0])
    assert not dq.any() and not dk.any() and not dv.any()


# -- invalid inputs -----------------------------------------------------------------
Q = np.zeros((1, 1, 2, 3))


@pytest.mark.parametrize(
    "dout",
    [np.zeros((1, 1, 2, 3), dtype=np.complex128), np.array("abc"), np.zeros((1, 1, 2, 3), dtype=np.int64)],
    ids=["complex", "string", "int"],
)
def test_dout_of_a_non_floating_dtype_is_a_type_error_naming_dout(dout) -> None:
    with pytest.raises(TypeError, match=r"^dout"):
        ref.global_attention_vjp(Q, Q, Q, dout)


def test_dout_of_another_shape_is_a_value_error_naming_dout() -> None:
    with pytest.raises(ValueError, match=r"^dout"):
        ref.global_attention_vjp(Q, Q, Q, np.zeros((1, 1, 2, 2)))


@pytest.mark.parametrize(
    "dlse", [np.zeros((1, 1, 2), dtype=np.complex64), ["a", "b"], np.zeros((1, 1, 2), dtype=bool)], ids=str
)
def test_dlse_of_a_non_floating_dtype_is_a_type_error_naming_dlse(dlse) -> None:
    with pytest.raises(TypeError, match=r"^dlse"):
        ref.global_attention_vjp(Q, Q, Q, np.zeros((1, 1, 2, 3)), dlse=dlse)


def test_dlse_of_another_shape_is_a_value_error_naming_dlse() -> None:
    with pytest.raises(ValueError, match=r"^dlse"):
        ref.global_attention_vjp(Q, Q, Q, np.zeros((1, 1, 2, 3)), dlse=np.zeros((1, 1, 2, 1)))


def test_upstream_gradients_may_have_another_floating_dtype_than_q() -> None:
    grads = ref.global_attention_vjp(
        Q, Q, Q, np.ones((1, 1, 2, 3), dtype=np.float16), dlse=np.ones((1, 1, 2), np.float32)
    )
    assert all(g.dtype == np.float64 for g in grads)


def test_the_vjps_validate_like_their_forward_ops() -> None:
    dout = np.zeros((1, 1, 2, 3))
    with pytest.raises(ValueError, match="window"):
        ref.local_attention_vjp(Q, Q, Q, dout, window=-2)
    with pytest.raises(TypeError, match="chunk_size"):
        ref.chunked_attention_vjp(Q, Q, Q, dout, chunk_size=1.5)
    with pytest.raises(TypeError, match="causal"):
        ref.global_attention_vjp(Q, Q, Q, dout, causal="yes")
    with pytest.raises(ValueError, match="kv_lengths"):
        ref.global_attention_vjp(Q, Q, Q, dout, kv_lengths=[5])
    with pytest.raises(TypeError, match="mask"):
        ref.global_attention_vjp(Q, Q, Q, dout, mask=np.ones((2, 2)))


@pytest.mark.parametrize("op", ["global_attention", "local_attention", "chunked_attention"])
def test_a_vjp_takes_the_keyword_arguments_of_its_op(op: str) -> None:
    forward = inspect.signature(getattr(ref, op)).parameters
    vjp = inspect.signature(getattr(ref, f"{op}_vjp")).parameters
    expected = [name for name in forward if name not in ("return_lse", "return_weights")]
    assert list(vjp)[:4] == ["q", "k", "v", "dout"] and "dlse" in vjp
    assert sorted(set(vjp) - {"dout", "dlse"}) == sorted(expected)
    for name in expected:
        assert vjp[name].kind == forward[name].kind and vjp[name].default == forward[name].default, name


def test_torch_tensors_that_require_grad_are_read_as_arrays() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    q, k, v, dout = (rng.standard_normal((1, 2, 3, 4)) for _ in range(4))
    want = ref.local_attention_vjp(q, k, v, dout, window=1)
    tensors = [torch.tensor(a, requires_grad=True) for a in (q, k, v, dout)]
    got = ref.local_attention_vjp(*tensors, window=1)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
