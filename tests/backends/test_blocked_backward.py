"""The blocked backward pass (``*_attention_vjp``) of the NumPy backend against the reference VJPs.

float64 runs must agree with :mod:`attnref.reference` to rounding (``rtol
1e-9``): that checks the algorithm (blocking, GQA sums, masks, softcap's
chain rule, ``dlse``, bias broadcasting, lengths, alignment). Lower dtypes are
checked with the contract's gradient rule (factor 3) where the reference VJPs
take ``precision=``, else against a bound of a few units of the dtype's
rounding. The NaN rule of contract section 6 ("masking selects") is checked
directly: a non-finite value reaches exactly the gradient entries whose
formula uses it.
"""

from __future__ import annotations

import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from attnref import reference
from attnref.dtypes import DTYPE_NAMES, numpy_dtype
from attnref_blocked import BlockConfig
from attnref_numpy.backend import NumpyBackend

TINY = NumpyBackend(threads=2, block=BlockConfig(score_elements=256, max_rows=6, tile=4, key_block=4))
DEFAULT = NumpyBackend()
MULTIHEAD = ("global_attention", "local_attention", "chunked_attention")
NAMES = ("dq", "dk", "dv", "dbias/dsinks", "dsinks")


def vjp(backend, op: str, *args, **kwargs):
    return getattr(backend, f"{op}_vjp")(*args, **kwargs)


def random_case(rng, op: str, dtype: str) -> tuple:
    B, kv_heads, group = int(rng.integers(1, 3)), int(rng.choice([1, 2])), int(rng.choice([1, 2, 3]))
    Lq, Lk = int(rng.integers(1, 25)), int(rng.integers(1, 25))
    D, Dv = int(rng.choice([4, 8])), int(rng.choice([4, 3]))
    dt = numpy_dtype(dtype)
    full = (B, kv_heads * group, Lq, Lk)
    q = (rng.standard_normal((B, kv_heads * group, Lq, D)) * float(rng.choice([1.0, 3.0]))).astype(dt)
    k = rng.standard_normal((B, kv_heads, Lk, D)).astype(dt)
    v = rng.standard_normal((B, kv_heads, Lk, Dv)).astype(dt)
    dout = rng.standard_normal((B, kv_heads * group, Lq, Dv)).astype(dt)
    if op == "global_attention":
        kwargs = {"causal": bool(rng.integers(2))}
    elif op == "local_attention":
        kwargs = {"window": [0, 2, (3, 0), (0, 2), (None, 1), (4, None), (30, 30)][rng.integers(7)]}
    else:
        kwargs = {"chunk_size": int(rng.choice([1, 3, 5, 30])), "causal": bool(rng.integers(2))}
    kwargs["align"] = str(rng.choice(["bottom_right", "top_left"]))
    if rng.random() < 0.5:
        kwargs["dlse"] = rng.standard_normal(full[:3]).astype(dt)
    if rng.random() < 0.3:
        kwargs["scale"] = float(rng.uniform(0.1, 1.0))
    if rng.random() < 0.3:
        kwargs["softcap"] = float(rng.uniform(1.0, 10.0))
    if rng.random() < 0.4:
        shape = tuple(n if rng.random() < 0.6 else 1 for n in full)[int(rng.integers(0, 3)) :]
        kwargs["bias"] = rng.standard_normal(shape).astype(dt)
    if rng.random() < 0.3:
        shape = tuple(n if rng.random() < 0.6 else 1 for n in full)
        kwargs["mask"] = rng.random(shape) < 0.7
    if rng.random() < 0.3:
        kwargs["kv_lengths"] = rng.integers(0, Lk + 1, size=B)
    if rng.random() < 0.3:
        kwargs["q_lengths"] = rng.integers(0, Lq + 1, size=B)
    if rng.random() < 0.3:
        sinks = rng.standard_normal(kv_heads * group)
        if rng.random() < 0.3:
            sinks[0] = -np.inf  # the same as no sink for that head
        kwargs["sinks"] = sinks.astype(np.float32 if rng.random() < 0.5 else np.float64)
    return q, k, v, dout, kwargs


def naive_grads(op: str, dtype: str, *args, **kwargs):
    """The reference VJP run in ``dtype`` (None while the reference VJPs take no ``precision=``)."""
    try:
        return getattr(reference, f"{op}_vjp")(*args, precision=dtype, **kwargs)
    except TypeError:
        return None


def assert_grads_conform(got, ref, naive, dtype: str, what: str) -> None:
    assert len(got) == len(ref), what
    eps = float(ml_dtypes.finfo(numpy_dtype(dtype)).eps)
    for name, g, r, n in zip(NAMES, got, ref, naive if naive is not None else ref, strict=False):
        g, r = np.asarray(g, dtype=np.float64), np.asarray(r, dtype=np.float64)
        assert g.shape == r.shape, f"{what} {name}: shape"
        scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
        if dtype == "float64":
            allowed = 1e-9 * scale
        elif naive is not None:
            allowed = 3 * float(np.abs(np.asarray(n, dtype=np.float64) - r).max()) + 4 * eps * scale
        else:
            allowed = 8 * max(eps, 2.0**-21) * scale
        err = float(np.abs(g - r).max()) if r.size else 0.0
        assert err <= allowed, f"{what} {name}: error {err:.3g} > allowed {allowed:.3g}"


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("op", MULTIHEAD)
def test_random_cases_match_the_reference_vjp(op, dtype):
    rng = np.random.default_rng([MULTIHEAD.index(op), DTYPE_NAMES.index(dtype), 14])
    for seed in range(30 if dtype == "float64" else 10):
        q, k, v, dout, kwargs = random_case(rng, op, dtype)
        got = vjp(TINY, op, q, k, v, dout, **kwargs)
        assert [g.dtype for g in got[:3]] == [q.dtype] * 3
        if "bias" in kwargs:
            assert got[3].dtype == kwargs["bias"].dtype and got[3].shape == kwargs["bias"].shape
        if "sinks" in kwargs:
            assert got[-1].dtype == q.dtype and got[-1].shape == kwargs["sinks"].shape
        ref = getattr(reference, f"{op}_vjp")(q, k, v, dout, **kwargs)
        shown = {n: (a.shape if hasattr(a, "shape") else a) for n, a in kwargs.items()}
        assert_grads_conform(got, ref, naive_grads(op, dtype, q, k, v, dout, **kwargs), dtype, f"case {seed} {shown}")


@pytest.mark.parametrize(
    "op, kwargs",
    [
        ("global_attention", {}),
        ("global_attention", {"causal": True, "kv_lengths": [300, 77], "dlse": True}),
        ("local_attention", {"window": (40, 7), "softcap": 3.0}),
        ("local_attention", {"window": (31, 0), "q_lengths": [250, 1], "bias": (1, 4, 1, 300)}),
        ("chunked_attention", {"chunk_size": 64, "causal": True, "align": "top_left", "mask": (260, 300)}),
    ],
)
def test_default_blocks_match_the_reference_vjp(op, kwargs):
    """Sizes above the default block, GQA (4 query heads on 2 kv heads), Lq < Lk, float64."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 4, 260, 16))
    k, v = rng.standard_normal((2, 2, 300, 16)), rng.standard_normal((2, 2, 300, 8))
    dout = rng.standard_normal((2, 4, 260, 8))
    if kwargs.get("dlse"):
        kwargs = {**kwargs, "dlse": rng.standard_normal((2, 4, 260))}
    if "bias" in kwargs:
        kwargs = {**kwargs, "bias": rng.standard_normal(kwargs["bias"])}
    if "mask" in kwargs:
        kwargs = {**kwargs, "mask": rng.random(kwargs["mask"]) < 0.8}
    got = vjp(DEFAULT, op, q, k, v, dout, **kwargs)
    ref = getattr(reference, f"{op}_vjp")(q, k, v, dout, **kwargs)
    assert_grads_conform(got, ref, None, "float64", op)


def test_results_do_not_depend_on_threads_or_blocks():
    rng = np.random.default_rng(9)
    q, k, v, dout = (rng.standard_normal((2, 4, 70, 8)) for _ in range(4))
    k, v = k[:, :2], v[:, :2]
    one = NumpyBackend(threads=1).local_attention_vjp(q, k, v, dout, window=(9, 3))
    many = NumpyBackend(threads=3, block=BlockConfig(score_elements=300, max_rows=7, tile=5)).local_attention_vjp(
        q, k, v, dout, window=(9, 3)
    )
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


# -- masking selects (contract section 6) ---------------------------------------
def grads_with(build, dtype=np.float64):
    """Gradients of local attention with non-finite values planted by ``build``, and of the same
    call with those values replaced by 0 (what every entry that does not use them must equal)."""
    rng = np.random.default_rng(21)
    q, k, v, dout = (rng.standard_normal((1, 2, 12, 4)) for _ in range(4))
    clean = [a.copy() for a in (q, k, v, dout)]
    kwargs = build(q, k, v, dout)
    cast = [a.astype(dtype) for a in (q, k, v, dout)]
    got = TINY.local_attention_vjp(*cast, **kwargs)
    base = TINY.local_attention_vjp(*(a.astype(dtype) for a in clean), **kwargs)
    return got, base


def close(got, expected) -> None:
    """Equal up to the rounding of a different summation order (and finite: no NaN leaked)."""
    assert np.isfinite(got).all()
    rtol = 1e-5 if got.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * max(1.0, float(np.abs(expected).max())))


def test_nan_key_behind_kv_lengths_reaches_no_gradient():
    def build(q, k, v, dout):
        k[0, :, 10], v[0, :, 11] = np.nan, np.inf
        return {"window": (None, None), "kv_lengths": [10]}

    (dq, dk, dv), base = grads_with(build)
    for g, b in zip((dq, dk, dv), base, strict=True):
        assert np.isfinite(g).all()
        close(g, b)  # what the hidden values do not touch
    assert np.all(dk[0, :, 10:] == 0) and np.all(dv[0, :, 10:] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_value_outside_the_window_reaches_only_the_rows_that_see_it(dtype):
    def build(q, k, v, dout):
        v[0, 0, 0, 1] = np.nan  # key 0: seen by rows 0..2 of kv head 0 (window (2, 0))
        return {"window": (2, 0)}

    (dq, dk, dv), (bq, bk, bv) = grads_with(build, dtype)
    sees = np.zeros((12,), dtype=bool)
    sees[:3] = True
    assert np.isnan(dq[0, 0, sees]).all()
    close(dq[0, 0, ~sees], bq[0, 0, ~sees])
    close(dq[0, 1], bq[0, 1])  # query head 1 reads kv head 1 only
    assert np.isnan(dk[0, 0, :3]).all()
    close(dk[0, 0, 3:], bk[0, 0, 3:])
    close(dv, bv)  # dv_j = sum_i P_ij dout_i: no value enters it


def test_nan_dout_row_reaches_only_its_keys_and_padding_rows_are_never_read():
    def build(q, k, v, dout):
        dout[0, 1, 5] = np.nan  # a real row: window (1, 1) sees keys 4..6
        dout[0, 0, 9:] = np.nan  # padding rows (q_lengths = 9): never read
        dlse = np.zeros((1, 2, 12))
        dlse[..., 9:] = np.nan  # padding rows: never read either
        return {"window": (1, 1), "q_lengths": [9], "align": "top_left", "dlse": dlse}

    (dq, dk, dv), _ = grads_with(build)
    assert np.isnan(dq[0, 1, 5]).all() and np.isfinite(np.delete(dq[0, 1], 5, axis=0)).all()
    assert np.isfinite(dq[0, 0]).all() and np.all(dq[0, :, 9:] == 0)
    assert np.isnan(dv[0, 1, 4:7]).all() and np.isfinite(np.delete(dv[0, 1], [4, 5, 6], axis=0)).all()
    assert np.isfinite(dv[0, 0]).all() and np.isfinite(dk[0, 0]).all()


def test_dlse_nan_with_every_input_finite_stays_in_its_row():
    rng = np.random.default_rng(2)
    q, k, v, dout = (rng.standard_normal((1, 1, 8, 4)) for _ in range(4))
    dlse = np.zeros((1, 1, 8))
    dlse[0, 0, 3] = np.nan
    dq, dk, dv = TINY.local_attention_vjp(q, k, v, dout, window=(0, 0), dlse=dlse)
    assert np.isnan(dq[0, 0, 3]).all() and np.isfinite(np.delete(dq[0, 0], 3, axis=0)).all()
    assert np.isnan(dk[0, 0, 3]).all() and np.isfinite(np.delete(dk[0, 0], 3, axis=0)).all()
    assert np.isfinite(dv).all()


def test_rows_without_allowed_keys_contribute_nothing():
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((1, 1, 6, 4)) for _ in range(3))
    dout, dlse = np.full((1, 1, 6, 4), np.nan), np.full((1, 1, 6), np.inf)
    mask = np.zeros((6, 6), dtype=bool)
    grads = TINY.global_attention_vjp(q, k, v, dout, dlse=dlse, mask=mask, bias=np.zeros((6, 6)))
    for g in grads:
        assert np.all(g == 0)


def test_sinks_edge_cases():
    """A -inf sink is no sink; a NaN sink poisons its head only; rows without keys add dlse to dsinks."""
    rng = np.random.default_rng(8)
    q, k, v, dout = (rng.standard_normal((1, 2, 9, 4)) for _ in range(4))
    dlse = rng.standard_normal((1, 2, 9))
    kwargs = {"window": (1, 0), "kv_lengths": [5], "align": "top_left", "dlse": dlse}  # rows 6.. see no key
    plain = TINY.local_attention_vjp(q, k, v, dout, **kwargs)
    *grads, dsinks = TINY.local_attention_vjp(q, k, v, dout, sinks=np.array([-np.inf, 0.5]), **kwargs)
    ref = reference.local_attention_vjp(q, k, v, dout, sinks=np.array([-np.inf, 0.5]), **kwargs)
    for g, p in zip(grads, plain, strict=True):
        np.testing.assert_array_equal(g[0, 0], p[0, 0])  # head 0: exactly as without sinks
    assert dsinks[0] == 0
    assert_grads_conform((*grads, dsinks), ref, None, "float64", "sinks")
    *grads, dsinks = TINY.local_attention_vjp(q, k, v, dout, sinks=np.array([np.nan, 0.5]), **kwargs)
    assert np.isnan(dsinks[0]) and np.isfinite(dsinks[1])
    assert np.isnan(grads[0][0, 0, :6]).all() and np.isfinite(grads[0][0, 1]).all()


# -- memory, validation -------------------------------------------------------------
def test_local_vjp_never_allocates_a_dense_array():
    L = 8192
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, 1, L, 8)).astype(np.float32) for _ in range(4))
    tracemalloc.start()
    grads = NumpyBackend(threads=2).local_attention_vjp(q, k, v, dout, window=(16, 16))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    inputs = 4 * q.nbytes  # the three gradients and the float32 copy of k, at most
    assert all(g.dtype == np.float32 for g in grads)
    assert peak < inputs + L * L / 32, f"peak {peak} bytes"


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        ({"dout": np.zeros((1, 2, 3, 5))}, ValueError, "dout"),
        ({"dout": np.zeros((1, 2, 3, 4), dtype=np.complex128)}, TypeError, "dout"),
        ({"dout": np.zeros((1, 2, 3, 4), dtype=np.int64)}, TypeError, "dout"),
        ({"dlse": np.zeros((1, 2, 4))}, ValueError, "dlse"),
        ({"dlse": np.array(["a"] * 6).reshape(1, 2, 3)}, TypeError, "dlse"),
        ({"window": -3}, ValueError, "window"),
        ({"q": np.zeros((2, 3, 4))}, ValueError, "q"),
    ],
)
def test_invalid_upstream_gradients_name_the_argument(kwargs, error, argument):
    call = {"q": np.zeros((1, 2, 3, 4)), "k": np.zeros((1, 2, 3, 4)), "v": np.zeros((1, 2, 3, 4))}
    call.update(dout=np.zeros((1, 2, 3, 4)), window=(1, 1))
    call.update(kwargs)
    with pytest.raises(error, match=f"^{argument}"):
        TINY.local_attention_vjp(call.pop("q"), call.pop("k"), call.pop("v"), call.pop("dout"), **call)


def test_finite_inputs_whose_sum_overflows_float32_give_the_same_gradients():
    """The backward's finiteness check sums each input once; a sum that overflows (finite terms)
    must only send the call down the exact path, never change a gradient."""
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal((1, 2, 40, 8)).astype(np.float32) for _ in range(3))
    dout = np.zeros((1, 2, 40, 8), dtype=np.float32)
    for i in range(8):
        dout[0, i % 2, i, i] = 1e38  # eight terms near float32's maximum: their sum overflows, each row is fine
    with np.errstate(over="ignore"):
        assert not np.isfinite(dout.sum()) and np.isfinite(dout).all()
    got = DEFAULT.local_attention_vjp(q, k, v, dout, window=(5, 5))
    want = reference.local_attention_vjp(q, k, v, dout, window=(5, 5))
    for name, g, w in zip(NAMES, got, want, strict=False):
        assert np.isfinite(g).all(), name
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e31, err_msg=name)
