"""The NumPy backend against the float64 reference.

Pass rule (the contract's, section 5): with ``ref64`` the float64 reference and
``naive`` the reference run at the input dtype (``precision=``),
``max|out - ref64| <= 2 * max|naive - ref64| + atol``, ``atol = 4 * eps(dtype) *
scale`` (``scale``: the largest finite |value| that can reach the output, or
``max(1, |lse|)`` for the lse). NaN and infinities must sit exactly where the
reference has them, except where the naive run lost them too (see
``assert_conforms``). Most cases run with tiny blocks (a few rows and keys) so
that every block edge, skipped block and thread hand-off is exercised on small
arrays.
"""

from __future__ import annotations

import threading
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from attnref import reference
from attnref.backend import OPS, backend_problems
from attnref.dtypes import DTYPE_NAMES, numpy_dtype
from attnref.patterns import Pattern
from attnref.validation import check_attention
from attnref_blocked import BlockConfig, blocks, forward, plan
from attnref_numpy import _blas, _gemm
from attnref_numpy import backend as backend_module
from attnref_numpy.backend import NumpyBackend
from attnref_numpy.plugin import attnref_backends

TINY = NumpyBackend(threads=2, block=BlockConfig(score_elements=256, max_rows=6, tile=4, key_block=4))
DEFAULT = NumpyBackend()
TWO_THREADS = NumpyBackend(threads=2)  # memory bounds below count two workers' blocks
MULTIHEAD = ("global_attention", "local_attention", "chunked_attention")


# -- the comparison ---------------------------------------------------------
def eps(dtype: str) -> float:
    return float(ml_dtypes.finfo(numpy_dtype(dtype)).eps)


def same_non_finite(a, b):
    """Elementwise: both NaN, or the same infinity."""
    return (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))


def assert_conforms(out, ref64, naive, dtype: str, scale: float, what: str = "out") -> None:
    """The contract's rule (section 5), non-finite values included: where ``ref64`` is non-finite,
    the same non-finite value; where the naive same-precision run is non-finite too but differs
    (an underflowed weight times inf), any non-finite value; where only ``naive`` is non-finite
    (overflow), any non-finite value or a finite one within the bound."""
    out, ref64, naive = (np.asarray(a, dtype=np.float64) for a in (out, ref64, naive))
    assert out.shape == ref64.shape, what
    ref_bad, naive_bad = ~np.isfinite(ref64), ~np.isfinite(naive)
    loose = naive_bad & ~same_non_finite(naive, ref64)  # the naive run itself lost the value
    strict = ref_bad & ~loose
    assert same_non_finite(out, ref64)[strict].all(), f"{what}: non-finite entries differ from the reference"
    assert (~np.isfinite(out))[ref_bad & loose].all(), f"{what}: finite where the reference is not"
    finite = ~ref_bad & np.isfinite(out)
    assert not (~np.isfinite(out) & ~ref_bad & ~naive_bad).any(), f"{what}: non-finite where the reference is not"
    if not finite.any():
        return
    with np.errstate(invalid="ignore"):
        err = np.abs(out - ref64)[finite].max()
        naive_err = np.abs(naive - ref64)[finite & ~naive_bad]
    allowed = 2 * (naive_err.max() if naive_err.size else 0.0) + 4 * eps(dtype) * scale
    assert err <= allowed, f"{what}: error {err:.3g} > allowed {allowed:.3g} ({dtype})"


def finite_max(*arrays) -> float:
    values = [np.abs(np.asarray(a, dtype=np.float64)) for a in arrays if a is not None]
    values = [a[np.isfinite(a)] for a in values]
    return max([1e-300] + [float(a.max()) for a in values if a.size])


def check_multihead(backend, op: str, dtype: str, q, k, v, **kwargs) -> None:
    """Run ``op`` on the backend and compare output and lse with the reference."""
    got_out, got_lse = getattr(backend, op)(q, k, v, return_lse=True, **kwargs)
    ref_out, ref_lse = getattr(reference, op)(q, k, v, return_lse=True, **kwargs)
    naive_out, naive_lse = getattr(reference, op)(q, k, v, return_lse=True, precision=dtype, **kwargs)
    assert got_out.dtype == q.dtype and got_lse.dtype == q.dtype
    assert_conforms(got_out, ref_out, naive_out, dtype, finite_max(v), "out")
    assert_conforms(got_lse, ref_lse, naive_lse, dtype, max(1.0, finite_max(ref_lse)), "lse")


# -- random multi-head cases ------------------------------------------------
def random_pattern(rng, op: str, L: int) -> dict:
    if op == "global_attention":
        return {"causal": bool(rng.integers(2))}
    if op == "local_attention":
        windows = [0, 1, 3, (2, 0), (0, 2), (5, 1), (None, 0), (0, -1), (-1, 3), (L + 5, L + 5), (L, 0)]
        return {"window": windows[rng.integers(len(windows))]}
    return {"chunk_size": int(rng.choice([1, 2, 3, 5, 8, L + 2])), "causal": bool(rng.integers(2))}


def broadcast_shape(rng, full: tuple[int, ...]) -> tuple[int, ...]:
    """A random shape broadcastable to ``full`` (some axes 1, some leading axes dropped)."""
    shape = tuple(n if rng.random() < 0.6 else 1 for n in full)
    return shape[int(rng.integers(0, 3)) :]


def random_case(rng, op: str, dtype: str) -> tuple:
    B = int(rng.integers(1, 3))
    kv_heads = int(rng.choice([1, 2]))
    group = int(rng.choice([1, 2, 3]))
    Lq, Lk = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    if rng.random() < 0.3:
        Lk = Lq
    D = int(rng.choice([4, 8]))
    Dv = int(rng.choice([D, 3]))
    dt = numpy_dtype(dtype)
    logits = float(rng.choice([1.0, 1.0, 4.0, 12.0]))  # 12: large logits
    q = (rng.standard_normal((B, kv_heads * group, Lq, D)) * logits).astype(dt)
    k = rng.standard_normal((B, kv_heads, Lk, D)).astype(dt)
    v = rng.standard_normal((B, kv_heads, Lk, Dv)).astype(dt)
    full = (B, kv_heads * group, Lq, Lk)
    kwargs = random_pattern(rng, op, max(Lq, Lk))
    kwargs["align"] = str(rng.choice(["bottom_right", "top_left"]))
    if rng.random() < 0.3:
        kwargs["scale"] = float(rng.uniform(0.05, 1.0))
    if rng.random() < 0.3:
        kwargs["softcap"] = float(rng.uniform(1.0, 20.0))
    if rng.random() < 0.4:
        kwargs["bias"] = (2 * rng.standard_normal(broadcast_shape(rng, full))).astype(dt)
    if rng.random() < 0.4:
        mask = rng.random(broadcast_shape(rng, full)) < 0.7
        if mask.ndim >= 2 and rng.random() < 0.5:
            mask[..., 0, :] = False  # a fully masked row
        kwargs["mask"] = mask
    if rng.random() < 0.4:
        kwargs["kv_lengths"] = rng.integers(0, Lk + 1, size=B)
    if rng.random() < 0.3:
        kwargs["q_lengths"] = [int(n) for n in rng.integers(0, Lq + 1, size=B)]
    return q, k, v, kwargs


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("op", MULTIHEAD)
def test_random_cases_match_reference(op, dtype):
    rng = np.random.default_rng([OPS.index(op), DTYPE_NAMES.index(dtype)])
    for seed in range(40):
        q, k, v, kwargs = random_case(rng, op, dtype)
        try:
            check_multihead(TINY, op, dtype, q, k, v, **kwargs)
        except AssertionError as exc:
            shown = {n: (a.shape if hasattr(a, "shape") else a) for n, a in kwargs.items()}
            raise AssertionError(f"case {seed}: q{q.shape} k{k.shape} v{v.shape} {shown}: {exc}") from None


@pytest.mark.parametrize(
    "op, kwargs",
    [
        ("global_attention", {}),
        ("global_attention", {"causal": True}),
        ("global_attention", {"causal": True, "align": "top_left", "kv_lengths": [300, 0, 77]}),
        ("local_attention", {"window": (40, 7)}),
        ("local_attention", {"window": (31, 0), "q_lengths": [250, 1, 0], "softcap": 5.0}),
        ("chunked_attention", {"chunk_size": 64, "causal": True}),
        ("chunked_attention", {"chunk_size": 100, "align": "top_left", "kv_lengths": [1, 200, 300]}),
    ],
)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_default_blocks_match_reference(op, kwargs, dtype):
    """Sizes above the default block (128 rows), GQA, Lq < Lk, on the default backend's threads."""
    rng = np.random.default_rng(7)
    dt = numpy_dtype(dtype)
    q = rng.standard_normal((3, 4, 260, 16)).astype(dt)
    k = rng.standard_normal((3, 2, 300, 16)).astype(dt)
    v = rng.standard_normal((3, 2, 300, 8)).astype(dt)
    check_multihead(DEFAULT, op, dtype, q, k, v, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"causal": True},
        {"bias": np.linspace(-3, 3, 2600), "kv_lengths": [2600, 2101]},
        {"mask": np.arange(2600) % 7 != 3, "softcap": 2.0, "align": "top_left"},
    ],
)
def test_default_blocks_stream_long_key_ranges(kwargs):
    """Key ranges longer than 2 x key_block (1024) go through the online softmax in pieces."""
    rng = np.random.default_rng(8)
    q = (4 * rng.standard_normal((2, 2, 150, 8))).astype(np.float32)
    k, v = (rng.standard_normal((2, 1, 2600, 8)).astype(np.float32) for _ in range(2))
    kwargs = {
        n: a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for n, a in kwargs.items()
    }
    check_multihead(DEFAULT, "global_attention", "float32", q, k, v, **kwargs)


@pytest.mark.parametrize("logits", [1.0, 6.0, 30.0])
@pytest.mark.parametrize("v_scale", [1e-30, 1.0, 1e30])
@pytest.mark.parametrize("backend", [TINY, DEFAULT], ids=["tiny", "default"])
def test_float32_softmax_shift_is_skipped_only_when_safe(backend, v_scale, logits):
    """float32 skips subtracting the row max while ``exp`` cannot overflow or underflow in the
    products (decided from |v| and a bound on the scores, or from the max itself): scores from
    small to beyond exp's range, and values near float32's extremes, must all match the reference."""
    rng = np.random.default_rng(12)
    q = (logits * rng.standard_normal((1, 2, 40, 16))).astype(np.float32)
    k = rng.standard_normal((1, 2, 3000, 16)).astype(np.float32)
    v = (v_scale * rng.standard_normal((1, 2, 3000, 4))).astype(np.float32)
    check_multihead(backend, "global_attention", "float32", q, k, v)
    check_multihead(backend, "local_attention", "float32", q, k, v, window=(50, 2), align="top_left")


@pytest.mark.parametrize("backend", [TINY, NumpyBackend(threads=1)], ids=["tiny-threads", "one-thread"])
def test_bias_and_mask_broadcast_shapes(backend):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 4, 11, 8))
    k = rng.standard_normal((2, 2, 13, 8))
    v = rng.standard_normal((2, 2, 13, 8))
    for shape in [(13,), (11, 13), (1, 13), (4, 1, 1), (2, 1, 11, 13), (2, 4, 11, 13), (1, 4, 11, 1)]:
        bias = rng.standard_normal(shape)
        mask = rng.random(shape) < 0.6
        check_multihead(backend, "local_attention", "float64", q, k, v, window=(4, 2), bias=bias, mask=mask)


# -- NaN, infinities, empty rows ---------------------------------------------
def nan_cases() -> list:
    """Builders that plant non-finite values in (q, k, v) and return the op's keyword arguments."""

    def v_nan_beyond_length(q, k, v):
        v[:, :, 10:] = np.nan
        v[0, 0, 12, 0] = np.inf
        return {"kv_lengths": [10, 9]}

    def v_nan_outside_window(q, k, v):
        v[:, :, 0, :] = np.nan  # only queries that reach key 0 see it
        v[:, :, 1, 1] = -np.inf
        return {"window": (2, 0)}

    def k_and_bias_nan_masked(q, k, v):
        k[:, :, 3] = np.nan
        mask = np.ones((14, 14), dtype=bool)
        mask[:, 3] = False
        bias = np.zeros((14, 14))
        bias[:, 3] = np.nan
        bias[5, :] = -np.inf  # row 5: every allowed score -inf -> out 0, lse -inf
        return {"mask": mask, "bias": bias, "window": (None, None)}

    def q_nan_row(q, k, v):
        q[0, 1, 4] = np.nan
        q[1, 0, 0, 0] = np.inf
        return {"window": (3, 3), "q_lengths": [14, 6]}

    def inf_value_tiny_weight(q, k, v):
        v[0, 0, 7, 2] = np.inf  # allowed: 0 * inf would be NaN if its weight underflowed
        bias = np.zeros((14, 14))
        bias[:, 7] = -200.0
        return {"bias": bias, "window": (4, 4)}

    def first_keys_masked_then_very_negative_scores(q, k, v):
        mask = np.ones((14, 14), dtype=bool)
        mask[:, :9] = False  # the first key pieces hold nothing allowed
        return {"mask": mask, "bias": np.full((14, 14), -150.0)}

    def all_masked(q, k, v):
        return {"mask": np.zeros((2, 1, 14, 14), dtype=bool), "window": 3}

    return [
        v_nan_beyond_length,
        v_nan_outside_window,
        k_and_bias_nan_masked,
        q_nan_row,
        inf_value_tiny_weight,
        first_keys_masked_then_very_negative_scores,
        all_masked,
    ]


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("build", nan_cases(), ids=lambda f: f.__name__)
def test_non_finite_inputs_reach_exactly_the_reference_outputs(build, dtype):
    rng = np.random.default_rng(11)
    q = rng.standard_normal((2, 2, 14, 4))
    k = rng.standard_normal((2, 2, 14, 4))
    v = rng.standard_normal((2, 2, 14, 4))
    kwargs = {"window": (None, None), **build(q, k, v)}
    dt = numpy_dtype(dtype)
    kwargs = {n: (a.astype(dt) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a) for n, a in kwargs.items()}
    check_multihead(TINY, "local_attention", dtype, q.astype(dt), k.astype(dt), v.astype(dt), **kwargs)


def test_empty_rows_are_zero_with_lse_minus_inf():
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((1, 1, 6, 4)), rng.standard_normal((1, 1, 6, 4)), rng.standard_normal((1, 1, 6, 4))
    out, lse = TINY.local_attention(q, k, v, window=(0, 0), kv_lengths=[3], align="top_left", return_lse=True)
    assert np.all(out[0, 0, 3:] == 0) and np.all(lse[0, 0, 3:] == -np.inf)
    assert np.all(np.isfinite(lse[0, 0, :3]))


# -- errors -----------------------------------------------------------------
def invalid_calls():
    f = np.zeros((1, 2, 3, 4))
    k1 = np.zeros((1, 1, 5, 4))
    calls = [
        ("global_attention", (f[0], f, f), {}),
        ("global_attention", (f, np.zeros((1, 2, 3, 5)), f), {}),
        ("global_attention", (f, np.zeros((1, 3, 3, 4)), np.zeros((1, 3, 3, 4))), {}),
        ("global_attention", (f, f, np.zeros((1, 2, 4, 4))), {}),
        ("global_attention", (f.astype(np.int32), f, f), {}),
        ("global_attention", (f, f.astype(np.float32), f), {}),
        ("global_attention", (f, f, f), {"causal": 1}),
        ("global_attention", (f, f, f), {"scale": 0.0}),
        ("global_attention", (f, f, f), {"softcap": -1.0}),
        ("global_attention", (f, f, f), {"align": "center"}),
        ("global_attention", (f, f, f), {"mask": np.ones((3, 3), dtype=np.int8)}),
        ("global_attention", (f, f, f), {"mask": np.ones((4, 3), dtype=bool)}),
        ("global_attention", (f, f, f), {"bias": np.ones((2, 2, 3, 3))}),
        ("global_attention", (f, f, f), {"kv_lengths": [4]}),
        ("global_attention", (f, f, f), {"kv_lengths": [1.5]}),
        ("global_attention", (f, f, f), {"q_lengths": [1, 2]}),
        ("global_attention", (f, f, f), {"return_lse": "yes"}),
        ("local_attention", (f, k1, k1), {"window": -2}),
        ("local_attention", (f, k1, k1), {"window": (1, 2, 3)}),
        ("local_attention", (f, k1, k1), {"window": (1.0, 2)}),
        ("chunked_attention", (f, k1, k1), {"chunk_size": 0}),
        ("chunked_attention", (f, k1, k1), {"chunk_size": 2, "causal": None}),
        ("additive_attention", (np.zeros((2, 5, 3)), np.zeros((4, 6)), np.zeros(6), np.zeros(6)), {}),
        ("additive_attention", (np.zeros((2, 5, 3)), np.zeros((3, 6)), np.zeros(6), np.zeros(6)), {"center": 1}),
        (
            "additive_attention",
            (np.zeros((2, 5, 3)), np.zeros((3, 6)), np.zeros(6), np.zeros(6), True),
            {},
        ),
        (
            "additive_attention",
            (np.zeros((2, 5, 3)), np.zeros((3, 6)), np.zeros(6), np.zeros(6)),
            {"window": 1, "center": [1, 5]},
        ),
        ("luong_attention", (np.zeros((2, 3, 4)), np.zeros((2, 5, 4))), {"score": "general"}),
        ("luong_attention", (np.zeros((2, 3, 4)), np.zeros((2, 5, 4))), {"mode": "local-m"}),
        ("luong_attention", (np.zeros((2, 3, 4)), np.zeros((2, 5, 4))), {"mode": "local"}),
        ("luong_attention", (np.zeros((2, 3, 4)), np.zeros((2, 5, 4))), {"source_lengths": [1, 6]}),
        ("luong_attention", (np.zeros((2, 3, 4)), np.zeros((3, 5, 4))), {}),
    ]
    return calls


@pytest.mark.parametrize("op, args, kwargs", invalid_calls())
def test_rejects_what_the_reference_rejects(op, args, kwargs):
    with pytest.raises(Exception) as expected:
        getattr(reference, op)(*args, **kwargs)
    with pytest.raises(type(expected.value)) as got:
        getattr(TINY, op)(*args, **kwargs)
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)


# -- pooling ops --------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_additive_attention_matches_reference(dtype):
    rng = np.random.default_rng([1, DTYPE_NAMES.index(dtype)])
    dt = numpy_dtype(dtype)
    for seed in range(25):
        B, L, Din, Dh = int(rng.integers(1, 4)), int(rng.integers(1, 20)), int(rng.integers(1, 6)), 5
        x = rng.standard_normal((B, L, Din)).astype(dt)
        w_in, b_in, w_out = (rng.standard_normal(s).astype(dt) for s in ((Din, Dh), (Dh,), (Dh,)))
        kwargs = {}
        if rng.random() < 0.5:
            kwargs["mask"] = rng.random((B, L)) < 0.6
        if rng.random() < 0.6:
            kwargs["window"] = [2, (1, 3), (None, 0), 0][seed % 4]
            if rng.random() < 0.5:
                kwargs["center"] = rng.integers(0, L, size=B)
        b_out = float(rng.standard_normal()) if rng.random() < 0.5 else None
        got = TINY.additive_attention(x, w_in, b_in, w_out, b_out, **kwargs)
        ref = reference.additive_attention(x, w_in, b_in, w_out, b_out, **kwargs)
        naive = reference.additive_attention(x, w_in, b_in, w_out, b_out, precision=dtype, **kwargs)
        for name, g, r, n, scale in zip(("context", "weights"), got, ref, naive, (finite_max(x), 1.0), strict=True):
            assert g.dtype == dt, name
            assert_conforms(g, r, n, dtype, scale, f"case {seed} {name}")


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("mode", ["global", "local-m", "local-p"])
@pytest.mark.parametrize("score", ["dot", "general", "concat"])
def test_luong_attention_matches_reference(score, mode, dtype):
    rng = np.random.default_rng([2, DTYPE_NAMES.index(dtype), len(mode), len(score)])
    dt = numpy_dtype(dtype)
    for seed in range(6):
        B, T, S, d = int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.integers(1, 12)), 4
        kwargs = {"score": score, "mode": mode}
        arrays = {"h_t": rng.standard_normal((B, T, d)), "h_s": rng.standard_normal((B, S, d))}
        if score == "general":
            arrays["w_a"] = rng.standard_normal((d, d)) / 2
        if score == "concat":
            arrays["w_a"], arrays["v_a"] = rng.standard_normal((2 * d, 3)), rng.standard_normal(3)
        if mode != "global":
            kwargs["half_width"] = int(rng.integers(1, 4))
        if mode == "local-p":
            arrays["w_p"], arrays["v_p"] = rng.standard_normal((d, 3)), rng.standard_normal(3)
        if rng.random() < 0.5:
            kwargs["source_lengths"] = rng.integers(0, S + 1, size=B)
        arrays = {n: a.astype(dt) for n, a in arrays.items()}
        got = TINY.luong_attention(**arrays, **kwargs)
        ref = reference.luong_attention(**arrays, **kwargs)
        naive = reference.luong_attention(**arrays, precision=dtype, **kwargs)
        for name, g, r, n, scale in zip(
            ("context", "weights"), got, ref, naive, (finite_max(arrays["h_s"]), 1.0), strict=True
        ):
            assert g.dtype == dt, name
            assert_conforms(g, r, n, dtype, scale, f"case {seed} {name}")


def test_pooling_non_finite_values_do_not_leak():
    x = np.arange(24, dtype=np.float64).reshape(2, 4, 3) / 10
    x[0, 3, 1] = np.nan  # masked out below
    x[1, 0, 0] = np.inf  # allowed: reaches the context
    w_in, b_in, w_out = np.ones((3, 2)) / 4, np.zeros(2), np.ones(2)
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    got = TINY.additive_attention(x, w_in, b_in, w_out, mask=mask)
    ref = reference.additive_attention(x, w_in, b_in, w_out, mask=mask)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-15)
    assert np.isfinite(got[0][0]).all() and np.isinf(got[0][1, 0])


# -- block planning, memory, plumbing ------------------------------------------
def planned_work(op_pattern: Pattern, L: int, **args) -> int:
    q = np.zeros((1, 2, L, 8), dtype=np.float32)
    parsed = check_attention(q, q, q, **args)
    return sum(t.cost for t in plan.plan(parsed, op_pattern, BlockConfig()))


def test_plan_skips_masked_blocks():
    L = 2048
    full = planned_work(Pattern.full(), L)
    assert full == 2 * L * L
    assert planned_work(Pattern.full(causal=True), L) < 0.55 * full
    band = planned_work(Pattern.window(100, 20), L)
    assert band <= 2 * L * (100 + 20 + 128)  # O(Lq x window): rows x (window + block rows)
    assert planned_work(Pattern.chunk(256), L) <= 2 * L * 256 + 2 * L * 128
    assert planned_work(Pattern.window(100, 20), L, kv_lengths=[0]) == 0


def test_local_attention_never_allocates_a_dense_score_or_mask_array():
    L = 8192
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, L, 8)).astype(np.float32) for _ in range(3))
    mask_bytes = L * L  # one bool Lq x Lk array
    for op, kwargs in [("local_attention", {"window": (16, 16)}), ("chunked_attention", {"chunk_size": 64})]:
        tracemalloc.start()
        out = getattr(TWO_THREADS, op)(q, k, v, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert out.dtype == np.float32
        assert peak < mask_bytes / 16, f"{op}: peak {peak} bytes"


def test_global_attention_memory_is_bounded_by_blocks():
    L = 4096
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, L, 8)).astype(np.float32) for _ in range(3))
    tracemalloc.start()
    TWO_THREADS.global_attention(q, k, v, causal=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    scores_bytes = 2 * L * L * 4  # the float32 scores of both heads
    assert peak < scores_bytes / 8, f"peak {peak} bytes"


def test_plugin_registers_a_valid_numpy_backend():
    (backend,) = attnref_backends()
    assert backend_problems(backend) == []
    assert backend.name == "numpy" and backend.unavailable_reason is None
    assert {*MULTIHEAD, "additive_attention", "luong_attention"} <= backend.ops <= set(OPS)
    assert {op for op in OPS if op.endswith("_vjp")} <= backend.ops  # listed once the registry knows them
    assert backend.dtypes == frozenset(DTYPE_NAMES)
    assert "numpy" in backend.version
    a = np.ones((2, 3), dtype=ml_dtypes.bfloat16)
    assert backend.to_numpy(backend.asarray(a)).dtype == a.dtype


def test_listing_and_building_the_backend_touch_no_native_library():
    _blas._controls.cache_clear()
    _gemm.private_blas.cache_clear()
    attnref_backends()
    NumpyBackend(threads=2).global_attention(*(np.ones((1, 1, 4, 4)),) * 3)  # too small for workers
    assert _blas._controls.cache_info().currsize == 0
    assert _gemm.private_blas.cache_info().currsize == 0


def test_calls_leave_the_blas_thread_count_alone(monkeypatch):
    monkeypatch.delenv(backend_module.HOLD_BLAS_ENV, raising=False)
    before = _blas.blas_threads()
    q = np.ones((1, 2, 1024, 8), dtype=np.float32)  # large enough to run on the workers
    for backend in (TWO_THREADS, DEFAULT):
        seen = []
        monkeypatch.setattr(forward, "_run_task", recording(seen))
        backend.global_attention(q, q, q)
        assert seen and set(seen) == {before}
    assert _blas.blas_threads() == before


def recording(seen: list):
    """A stand-in task runner that records BLAS's thread count while the tasks run."""
    real = forward._run_task

    def run(ctx, task, scratch, key_block):
        seen.append(_blas.blas_threads())
        real(ctx, task, scratch, key_block)

    return run


def test_hold_blas_is_an_opt_in_that_restores_the_count(monkeypatch):
    if _blas.blas_threads() is None:
        pytest.skip("NumPy has no bundled OpenBLAS here")
    monkeypatch.setattr(backend_module, "private_blas", lambda: None)  # hold_blas applies only without it
    before = _blas.blas_threads()
    q = np.ones((1, 2, 1024, 8), dtype=np.float32)
    seen: list = []
    monkeypatch.setattr(forward, "_run_task", recording(seen))
    NumpyBackend(threads=2, hold_blas=True).global_attention(q, q, q)
    assert seen and set(seen) == {1}
    assert _blas.blas_threads() == before
    seen.clear()
    monkeypatch.setenv(backend_module.HOLD_BLAS_ENV, "1")
    NumpyBackend(threads=2).global_attention(q, q, q)
    assert set(seen) == {1} and _blas.blas_threads() == before
    with _blas.holding_blas():  # nested holds: the outer one restores
        NumpyBackend(threads=2, hold_blas=True).global_attention(q, q, q)
        assert _blas.blas_threads() == 1
    assert _blas.blas_threads() == before


@pytest.mark.parametrize("blas, workers", [(1, True), (2, False), (None, False)])
def test_without_the_private_blas_default_threads_follow_the_blas_setting(monkeypatch, blas, workers):
    """Workers only while NumPy's BLAS runs on one thread (else they would oversubscribe the cores)."""
    monkeypatch.delenv(backend_module.HOLD_BLAS_ENV, raising=False)
    monkeypatch.setattr(backend_module, "private_blas", lambda: None)
    monkeypatch.setattr(backend_module, "blas_threads", lambda: blas)
    monkeypatch.setattr(backend_module, "usable_cores", lambda: 4)
    q = np.zeros((1, 2, 1024, 8), dtype=np.float32)
    args = check_attention(q, q, q)
    assert DEFAULT.block_config(args).threads == (4 if workers else 1)
    assert NumpyBackend(threads=3).block_config(args).threads == 3
    assert NumpyBackend(hold_blas=True).block_config(args).threads == 4


@pytest.mark.parametrize("blas", [1, 2, None])
def test_with_the_private_blas_workers_run_on_every_core_whatever_numpys_blas(monkeypatch, blas):
    if _gemm.private_blas() is None:
        pytest.skip("the scipy-openblas32 wheel is not installed")
    monkeypatch.delenv(backend_module.HOLD_BLAS_ENV, raising=False)
    monkeypatch.setattr(backend_module, "blas_threads", lambda: blas)
    monkeypatch.setattr(backend_module, "usable_cores", lambda: 4)
    q = np.zeros((1, 2, 1024, 8), dtype=np.float32)
    config = DEFAULT.block_config(check_attention(q, q, q))
    assert config.threads == 4 and config.matmul == _gemm.private_blas().matmul
    small = np.zeros((1, 1, 4, 4), dtype=np.float32)  # on the calling thread: NumPy's own matmul
    assert DEFAULT.block_config(check_attention(small, small, small)).matmul is None


def test_the_workers_products_run_on_the_private_blas_at_one_thread(monkeypatch):
    blas = _gemm.private_blas()
    if blas is None:
        pytest.skip("the scipy-openblas32 wheel is not installed")
    calls = []
    real = blas.matmul
    monkeypatch.setattr(blas, "matmul", lambda *a, **kw: calls.append(blas.threads()) or real(*a, **kw))
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 1024, 16)).astype(np.float32) for _ in range(3))
    before = _blas.blas_threads()
    out = TWO_THREADS.local_attention(q, k, v, window=(64, 64))
    assert calls and set(calls) == {1}
    assert _blas.blas_threads() == before  # NumPy's BLAS untouched
    monkeypatch.setattr(backend_module, "private_blas", lambda: None)
    np.testing.assert_allclose(out, TWO_THREADS.local_attention(q, k, v, window=(64, 64)), rtol=1e-5, atol=1e-6)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("attnref-blocked")]


def test_worker_threads_end_with_the_call_even_when_a_task_fails(monkeypatch):
    q = np.ones((1, 2, 1024, 8), dtype=np.float32)
    TWO_THREADS.local_attention(q, q, q, window=(16, 16))
    assert worker_threads() == []
    real, calls = forward._run_task, []

    def failing(ctx, task, scratch, key_block):
        calls.append(task)
        if len(calls) == 3:
            raise RuntimeError("task failed")
        real(ctx, task, scratch, key_block)

    monkeypatch.setattr(forward, "_run_task", failing)
    tasks = len(plan.plan(check_attention(q, q, q), Pattern.window(16, 16), TWO_THREADS.block_config(
        check_attention(q, q, q))))  # fmt: skip
    with pytest.raises(RuntimeError, match="task failed"):
        TWO_THREADS.local_attention(q, q, q, window=(16, 16))
    assert worker_threads() == []
    assert len(calls) < tasks  # the other worker stopped taking tasks


def test_results_do_not_depend_on_threads_or_blocks():
    rng = np.random.default_rng(9)
    q, k, v = (rng.standard_normal((2, 4, 70, 8)).astype(np.float32) for _ in range(3))
    one = NumpyBackend(threads=1).local_attention(q, k, v, window=(9, 3))
    many = NumpyBackend(threads=3, block=BlockConfig(score_elements=300, max_rows=7, tile=5)).local_attention(
        q, k, v, window=(9, 3)
    )
    np.testing.assert_allclose(one, many, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize(
    "op, kwargs",
    [
        ("local_attention", {"window": (4, 1)}),
        ("chunked_attention", {"chunk_size": 5}),
        ("chunked_attention", {"chunk_size": 5, "causal": True, "align": "top_left"}),
        ("global_attention", {"causal": True, "kv_lengths": [29, 17]}),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pattern_masks_are_reused_a_period_apart(monkeypatch, op, kwargs, dtype):
    """Blocks at the same place in the pattern's period share one mask (``Inputs.disallowed``):
    fewer masks are drawn than blocks need, and the answer is the one drawn block by block.
    Lq != Lk puts the blocks at every phase of the chunks."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 2, 23, 4)).astype(dtype)
    k, v = (rng.standard_normal((2, 2, 29, 4)).astype(dtype) for _ in range(2))
    backend = NumpyBackend(threads=2, block=BlockConfig(score_elements=64, max_rows=3, tile=2, key_block=4))
    draws = []
    draw = blocks.Inputs._draw_disallowed
    monkeypatch.setattr(blocks.Inputs, "_draw_disallowed", lambda self, *a: draws.append(a) or draw(self, *a))
    cached = getattr(backend, op)(q, k, v, return_lse=True, **kwargs)
    reused = len(draws)
    monkeypatch.setattr(blocks, "MASK_CACHE_ENTRIES", 0)
    draws.clear()
    drawn = getattr(backend, op)(q, k, v, return_lse=True, **kwargs)
    assert 0 < reused < len(draws)
    for a, b in zip(cached, drawn, strict=True):
        np.testing.assert_array_equal(a, b)
    check_multihead(backend, op, dtype, q, k, v, **kwargs)


def test_strided_and_broadcast_inputs():
    """(B, L, H, D) tensors viewed as (B, H, L, D), and a broadcast view as k/v: same results as contiguous copies."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 40, 4, 8)).astype(np.float32).transpose(0, 2, 1, 3)
    k = rng.standard_normal((2, 50, 2, 8)).astype(np.float32).transpose(0, 2, 1, 3)
    v = np.broadcast_to(rng.standard_normal((1, 2, 50, 8)).astype(np.float32), (2, 2, 50, 8))
    check_multihead(TINY, "local_attention", "float32", q, k, v, window=(6, 2))
    got = DEFAULT.global_attention(q, k, v, causal=True)
    same = DEFAULT.global_attention(*(np.ascontiguousarray(a) for a in (q, k, v)), causal=True)
    np.testing.assert_array_equal(got, same)


# -- inputs as users pass them ---------------------------------------------------
@pytest.mark.parametrize("backend", [TINY, DEFAULT], ids=["tiny", "default"])
@pytest.mark.parametrize("op, kwargs", [("global_attention", {}), ("local_attention", {"window": (3, 0)})])
def test_float32_average_near_the_float32_maximum_is_finite(backend, op, kwargs):
    """A weighted average of 3e38 values is 3e38: summing the numerators before dividing overflowed."""
    rng = np.random.default_rng(6)
    q, k = (rng.standard_normal((1, 2, 40, 8)).astype(np.float32) for _ in range(2))
    v = (3e38 * rng.uniform(0.9, 1.0, (1, 2, 40, 4))).astype(np.float32)
    v[0, 1, ::3] *= -1
    out = getattr(backend, op)(q, k, v, **kwargs)
    assert np.isfinite(out).all() and np.abs(out).max() > 1e38
    check_multihead(backend, op, "float32", q, k, v, **kwargs)


def test_torch_tensors_are_taken_as_data():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal((1, 2, 5, 4)).astype(np.float32) for _ in range(3)]
    expected = TINY.local_attention(*arrays, window=(1, 1), kv_lengths=[4])
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]  # .numpy() refuses these
    got = TINY.local_attention(*tensors, window=(1, 1), kv_lengths=torch.tensor([4]))
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, expected)
    halves = [torch.tensor(a).to(torch.bfloat16) for a in arrays]  # NumPy has no bfloat16
    got = TINY.global_attention(*halves)
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got, TINY.global_attention(*(a.astype(ml_dtypes.bfloat16) for a in arrays)))


@pytest.mark.parametrize(
    "argument, value, error",
    [
        ("q", "meta", ValueError),
        ("kv_lengths", "meta", ValueError),
        ("mask", "meta", ValueError),
        ("q", "sparse", TypeError),
    ],
)
def test_torch_tensors_without_values_name_the_argument(argument, value, error):
    torch = pytest.importorskip("torch")
    call = {n: torch.zeros((1, 2, 5, 4)) for n in ("q", "k", "v")}
    call.update(kv_lengths=torch.tensor([5]), mask=torch.ones((5, 5), dtype=torch.bool))
    tensor = call[argument]
    call[argument] = tensor.to("meta") if value == "meta" else tensor.to_sparse()
    with pytest.raises(error, match=f"^{argument}:"):
        TINY.global_attention(call.pop("q"), call.pop("k"), call.pop("v"), **call)


# -- sinks and packed sequences (contract sections 7 and 8) -------------------------
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("op", MULTIHEAD)
def test_sinks_match_reference(op, dtype):
    rng = np.random.default_rng([5, MULTIHEAD.index(op), DTYPE_NAMES.index(dtype)])
    for seed in range(15):
        q, k, v, kwargs = random_case(rng, op, dtype)
        sinks = 2 * rng.standard_normal(q.shape[1])
        if seed % 5 == 0:
            sinks[0] = -np.inf  # no sink for that head
        kwargs["sinks"] = sinks.astype(np.float32 if seed % 2 else np.float64)
        try:
            check_multihead(TINY, op, dtype, q, k, v, **kwargs)
        except AssertionError as exc:
            raise AssertionError(f"case {seed}: {exc}") from None


def packed_case(rng, lengths_q, lengths_k, heads=(4, 2), dtype=np.float64):
    cu_q, cu_k = np.concatenate([[0], np.cumsum(lengths_q)]), np.concatenate([[0], np.cumsum(lengths_k)])
    q = rng.standard_normal((cu_q[-1], heads[0], 8)).astype(dtype)
    k = rng.standard_normal((cu_k[-1], heads[1], 8)).astype(dtype)
    v = rng.standard_normal((cu_k[-1], heads[1], 4)).astype(dtype)
    return q, k, v, {"cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "op, kwargs",
    [
        ("global_attention", {"causal": True}),
        ("local_attention", {"window": (3, 1), "align": "top_left"}),
        ("chunked_attention", {"chunk_size": 4, "sinks": np.array([0.5, -np.inf, 1.0, -2.0])}),
    ],
)
def test_packed_sequences_match_reference(op, kwargs, dtype):
    """Empty sequences (no rows, no keys) included; lse and the VJP too."""
    rng = np.random.default_rng(17)
    q, k, v, packed = packed_case(rng, [5, 0, 9, 3, 12], [7, 2, 9, 0, 20], dtype=numpy_dtype(dtype))
    check_multihead(TINY, op, dtype, q, k, v, **kwargs, **packed)
    dout, dlse = rng.standard_normal((q.shape[0], 4, 4)), rng.standard_normal((q.shape[0], 4))
    got = getattr(TINY, f"{op}_vjp")(q, k, v, dout, dlse=dlse, **kwargs, **packed)
    ref = getattr(reference, f"{op}_vjp")(q, k, v, dout, dlse=dlse, **kwargs, **packed)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        np.testing.assert_allclose(
            g, r, rtol=1e-9 if dtype == "float64" else 2e-4, atol=1e-9 if dtype == "float64" else 2e-4
        )


# -- paged KV cache, merged states (contract sections 9 and 10) --------------------
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"causal": True}, {"window": (3, 0), "softcap": 2.0}, {"window": 2, "sinks": np.array([0.3, -1.0, 2.0, 0.0])}],
)
def test_paged_attention_matches_reference(kwargs, dtype):
    """Shared blocks (prefix caching), unused table entries of any value, an empty sequence."""
    rng = np.random.default_rng(31)
    dt = numpy_dtype(dtype)
    k_cache, v_cache = rng.standard_normal((10, 4, 2, 8)).astype(dt), rng.standard_normal((10, 4, 2, 6)).astype(dt)
    k_cache[9] = np.nan  # a block no sequence uses: must never be read
    q = rng.standard_normal((3, 4, 3, 8)).astype(dt)
    table = np.array([[2, 5, 7, -1], [2, 0, 1, 3], [-1, -1, -1, -1]])
    lengths = np.array([10, 16, 0])
    check_multihead(
        TINY, "paged_attention", dtype, q, k_cache, v_cache, block_table=table, cache_seqlens=lengths, **kwargs
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_merge_attention_states_matches_reference(dtype):
    rng = np.random.default_rng(32)
    dt = numpy_dtype(dtype)
    outs = rng.standard_normal((3, 2, 5, 4)).astype(dt)
    lses = (3 * rng.standard_normal((3, 2, 5))).astype(dt)
    lses[1, 0, 0] = -np.inf
    outs[1, 0, 0] = np.nan  # weight exactly 0: must not leak
    lses[:, 1, 1] = -np.inf  # every part empty: 0 and -inf
    lses[2, 1, 2] = np.nan  # poisons its position
    got = TINY.merge_attention_states(outs, lses)
    ref = reference.merge_attention_states(outs, lses)
    naive = reference.merge_attention_states(outs, lses, precision=dtype)
    assert got[0].dtype == dt and got[1].dtype == dt
    assert_conforms(got[0], ref[0], naive[0], dtype, finite_max(outs), "out")
    assert_conforms(got[1], ref[1], naive[1], dtype, max(1.0, finite_max(ref[1])), "lse")
    assert np.isfinite(got[0][0, 0]).all() and np.all(got[0][1, 1] == 0) and np.isnan(got[1][1, 2])


def test_the_block_plan_is_cached_for_plain_patterns_only():
    plan._sequence_plan.cache_clear()
    q = np.zeros((2, 2, 300, 8), dtype=np.float32)
    args = check_attention(q, q, q)
    config = BlockConfig(score_elements=1 << 12, threads=2)
    first = plan.plan(args, Pattern.window(16, 16), config)
    info = plan._sequence_plan.cache_info()
    assert (info.currsize, info.hits) == (1, 1)  # both batches share one sequence plan
    assert plan.plan(args, Pattern.window(16, 16), config) == first

    class Delegating:  # a pattern-like object that is not a plain Pattern (as a packed batch's is)
        def __init__(self, pattern):
            self.pattern = pattern

        def __getattr__(self, name):
            return getattr(self.pattern, name)

    assert plan.plan(args, Delegating(Pattern.window(16, 16)), config) == first
    assert plan._sequence_plan.cache_info().currsize == 1


# -- paged decoding, streamed chunk by chunk (attnref_blocked.decode) ------------------
def paged_case(rng, dt, lengths=(37, 21, 0), q_len=1, block=4, heads=(4, 2)):
    """Caches whose blocks sit in a shuffled order, the table's unused entries -1, head size 8."""
    used = [-(-n // block) for n in lengths]
    order = rng.permutation(sum(used) + 2)  # two blocks no sequence uses
    table = np.full((len(lengths), max(used)), -1)
    for b, start in enumerate(np.cumsum([0, *used[:-1]])):
        table[b, : used[b]] = order[start : start + used[b]]
    shape = (len(order), block, heads[1])
    k_cache, v_cache = rng.standard_normal((*shape, 8)).astype(dt), rng.standard_normal((*shape, 5)).astype(dt)
    k_cache[order[-2:]] = v_cache[order[-2:]] = np.nan  # never read
    q = rng.standard_normal((len(lengths), heads[0], q_len, 8)).astype(dt)
    return q, k_cache, v_cache, {"block_table": table, "cache_seqlens": np.array(lengths)}


def cache_slot(options, b, t):
    """``(block, offset)`` of key ``t`` of sequence ``b``."""
    return options["block_table"][b, t // 4], t % 4


@pytest.mark.parametrize("backend", [TINY, DEFAULT], ids=["tiny", "default"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_paged_non_finite_values_match_reference(backend, dtype):
    """A NaN or inf value or key reaches exactly the rows that may see it: through a weight of 0
    only where allowed, never from outside a window (the streamed kernel hands such a sequence
    to the exact dense kernel)."""
    rng = np.random.default_rng(40)
    q, k_cache, v_cache, options = paged_case(rng, numpy_dtype(dtype), q_len=3)
    v_cache[cache_slot(options, 0, 2)] = np.nan  # outside the window of every row of sequence 0
    v_cache[cache_slot(options, 0, 30)][0] = np.inf  # inside: inf in kv head 0's rows
    k_cache[cache_slot(options, 1, 1)] = np.nan  # outside the window: never a score
    v_cache[cache_slot(options, 1, 20)][1] = -np.inf
    q[0, 1, 0] = -1e30  # kv head 0 scores: exp underflows to exactly 0, times inf: NaN as the reference
    for kwargs in ({"window": (6, 0)}, {"window": (9, 0), "causal": True, "softcap": 3.0}):
        check_multihead(backend, "paged_attention", dtype, q, k_cache, v_cache, **options, **kwargs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("direction", [1, -1])
def test_paged_online_softmax_rescales(dtype, direction):
    """Scores that grow (or shrink) by far more than exp's range along the cache: each 4-key chunk
    moves the running maximum, and the earlier chunks' sums must be rescaled, not lost or overflowed."""
    rng = np.random.default_rng(41)
    dt = numpy_dtype(dtype)
    q, k_cache, v_cache, options = paged_case(rng, dt, lengths=(37, 9))
    for b, n in enumerate(options["cache_seqlens"]):
        for t in range(n):
            block, offset = cache_slot(options, b, t)
            k_cache[block, offset] *= dt.type(1 + direction * 0.5 * t)
    q *= dt.type(30)
    check_multihead(TINY, "paged_attention", dtype, q, k_cache, v_cache, **options, sinks=np.array([1.0, 0, -2, 5]))


def test_paged_decoding_streams_without_a_dense_copy():
    """Finite decoding never calls the dense kernel (nor builds a sequence's key array); a non-finite
    value sends exactly its sequence there."""
    from attnref.validation import check_paged
    from attnref_blocked import paged

    rng = np.random.default_rng(42)
    q, k_cache, v_cache, options = paged_case(rng, np.float32)
    args = check_paged(q, k_cache, v_cache, **options, causal=False, window=None, scale=None, softcap=None,
                       sinks=None, align="bottom_right", return_lse=True)  # fmt: skip
    calls = []

    def kernel(q, k, v, one):
        calls.append(one.kv_len)
        return reference.global_attention(q, k, v, return_lse=True)

    config = BlockConfig(key_block=8, threads=2)
    out, _ = paged.paged_attention(np, q, k_cache, v_cache, args, kernel, config)
    assert calls == []
    np.testing.assert_allclose(out, reference.paged_attention(q, k_cache, v_cache, **options), atol=1e-5)
    v_cache[cache_slot(options, 1, 3)] = np.nan
    paged.paged_attention(np, q, k_cache, v_cache, args, kernel, config)
    assert calls == [21]


def test_paged_decoding_memory_is_bounded_by_chunks():
    """One long sequence, most of the cache: decoding copies chunks of it into small buffers,
    never the sequence's keys whole (the former gather-then-dense path did, and more)."""
    rng = np.random.default_rng(43)
    q, k_cache, v_cache, options = paged_case(rng, np.float32, lengths=(8000, 5), block=16, heads=(8, 2))
    cache_bytes = k_cache.nbytes + v_cache.nbytes
    tracemalloc.start()
    TWO_THREADS.paged_attention(q, k_cache, v_cache, **options)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < cache_bytes / 4, f"peak {peak} of a {cache_bytes}-byte cache"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_paged_many_query_rows_take_the_dense_kernel(dtype):
    """30 query rows per sequence: a score chunk too large for the streamed kernel's budget, so each
    sequence's gathered keys go through the blocked dense kernel (row blocks, causal alignment)."""
    rng = np.random.default_rng(44)
    q, k_cache, v_cache, options = paged_case(rng, numpy_dtype(dtype), lengths=(37, 30, 0), q_len=30)
    assert q.shape[1] * q.shape[2] * 4 > TINY.block.score_elements
    check_multihead(TINY, "paged_attention", dtype, q, k_cache, v_cache, **options, causal=True)
