"""The torch backend against the float64 reference (CPU always, CUDA when present).

Pass rule, as the contract's (kept local; the official suite is attnref.conformance):
``max|out - ref64| <= 2 * max|naive - ref64| + atol``, ``naive`` the reference
run with ``precision=`` the dtype and ``atol = 4 * eps(dtype) * scale``, the
scale being the largest magnitude of the reference output and the values.
Non-finite entries (NaN, ``-inf`` lse) must sit exactly where the reference's do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
import zlib

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import attnref  # noqa: E402
from attnref import reference as R  # noqa: E402
from attnref.dtypes import DTYPE_NAMES, numpy_dtype  # noqa: E402
from attnref.errors import InvalidArgumentError, InvalidTypeError  # noqa: E402
from attnref_torch import TorchBackend, _banded, _blocked, _flex, _ops, _plan, _sdpa  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def backend(request):
    return TorchBackend(device=request.param)


@pytest.fixture
def cpu():
    return TorchBackend(device="cpu")


@pytest.fixture(params=["auto", "blocked"])
def path(request, monkeypatch):
    """The default dispatch, or every multi-head op forced through the blocked code."""
    if request.param == "blocked":
        monkeypatch.setattr(_ops, "sdpa_applies", lambda *a, **kw: False)
        monkeypatch.setattr(_ops, "banded_applies", lambda *a, **kw: False)
    return request.param


@pytest.fixture
def small_blocks(monkeypatch):
    """Query blocks of 8 rows, key tiles of 4 and a few blocks per step, so that small
    cases cross many boundaries."""
    monkeypatch.setattr(_plan, "BLOCK_ROWS", 8)
    monkeypatch.setattr(_plan, "CUDA_BLOCK_ROWS", 8)
    monkeypatch.setattr(_plan, "KEY_TILE", 4)
    monkeypatch.setattr(_blocked, "CPU_STEP_ELEMENTS", 3000)  # a few blocks per batched step
    monkeypatch.setattr(_blocked, "CUDA_STEP_ELEMENTS", 3000)
    monkeypatch.setattr(_banded, "STEP_MASK_ELEMENTS", 1000)


def _seed(*parts) -> int:
    """A deterministic seed from a case's name (``hash`` of a str changes between runs)."""
    return zlib.crc32(repr(parts).encode())


# -- comparison ------------------------------------------------------------------
def _f64(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def assert_conforms(got, ref, naive, dtype: str, scale: float, what: str = "out") -> None:
    """The pass rule, with non-finite entries required at the reference's positions."""
    got, ref, naive = _f64(got), _f64(ref), _f64(naive)
    assert got.shape == ref.shape, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"{what}: NaN positions")
    infinite = np.isinf(ref)
    np.testing.assert_array_equal(got[infinite], ref[infinite], err_msg=f"{what}: infinities")
    finite = np.isfinite(ref)
    assert np.isfinite(got[finite]).all(), f"{what}: non-finite where the reference is finite"
    if not finite.any():
        return
    err = np.abs(got[finite] - ref[finite]).max()
    with np.errstate(invalid="ignore"):  # the naive run may overflow where float64 does not
        naive_err = np.nan_to_num(np.abs(naive[finite] - ref[finite]), nan=np.inf).max()
    atol = 4 * float(ml_dtypes.finfo(numpy_dtype(dtype)).eps) * max(scale, 1e-30)
    assert err <= 2 * naive_err + atol, f"{what} ({dtype}): err {err:.3g} > 2 * {naive_err:.3g} + {atol:.3g}"


def _outputs(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def run_and_compare(backend, op: str, arrays: dict, options: dict, dtype: str, names=("out", "lse")) -> None:
    """Run ``op`` on the backend and compare every output with the reference's."""
    ref = _outputs(getattr(R, op)(**arrays, **options))
    naive = _outputs(getattr(R, op)(**arrays, **options, precision=dtype))
    native = {n: backend.asarray(a) if isinstance(a, np.ndarray) else a for n, a in arrays.items()}
    native_options = {n: backend.asarray(a) if isinstance(a, np.ndarray) else a for n, a in options.items()}
    got = _outputs(getattr(backend, op)(**native, **native_options))
    assert len(got) == len(ref)
    first = next(iter(native.values()))
    values = [np.abs(_f64(a)[np.isfinite(_f64(a))]).max(initial=0) for a in arrays.values() if a.dtype.kind == "f"]
    for g, r, n, name in zip(got, ref, naive, names, strict=False):
        assert isinstance(g, torch.Tensor) and g.device == first.device and g.dtype == first.dtype, name
        scale = max([np.abs(r[np.isfinite(r)]).max(initial=0), *values])
        assert_conforms(backend.to_numpy(g), r, n, dtype, scale, name)


# -- inputs ----------------------------------------------------------------------
def _rounded(rng, shape, dtype: str, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(numpy_dtype(dtype))


def qkv(rng, dtype, B=2, Hq=4, Hkv=2, Lq=13, Lk=17, D=8, Dv=6) -> dict:
    return {
        "q": _rounded(rng, (B, Hq, Lq, D), dtype),
        "k": _rounded(rng, (B, Hkv, Lk, D), dtype),
        "v": _rounded(rng, (B, Hkv, Lk, Dv), dtype),
    }


def _options(rng, name: str, arrays: dict) -> dict:
    """Options for a named case (arrays drawn for the case's shapes)."""
    B, Hq, Lq, _ = arrays["q"].shape
    Lk = arrays["k"].shape[2]
    dtype = arrays["q"].dtype
    extra = {
        "bias": lambda: {"bias": (rng.standard_normal((B, 1, Lq, Lk))).astype(dtype)},
        "mask": lambda: {"mask": rng.random((B, Hq, Lq, Lk)) < 0.7},
        "lengths": lambda: {"kv_lengths": [Lk - 3, 0][:B] + [Lk] * (B - 2), "q_lengths": np.array([Lq, Lq - 4][:B])},
        "lse": lambda: {"return_lse": True},
        "softcap": lambda: {"softcap": 1.5},
        "scale": lambda: {"scale": 0.7},
        "top_left": lambda: {"align": "top_left"},
    }
    options = {}
    for part in name.split("+")[1:]:
        options.update(extra[part]())
    return options


MH_CASES = {
    "global": ("global_attention", {}),
    "causal": ("global_attention", {"causal": True}),
    "window": ("local_attention", {"window": 3}),
    "causal-window": ("local_attention", {"window": (5, 0)}),
    "right-window": ("local_attention", {"window": (None, 2)}),
    "left-open": ("local_attention", {"window": (2, -1)}),
    "chunk": ("chunked_attention", {"chunk_size": 4}),
    "causal-chunk": ("chunked_attention", {"chunk_size": 5, "causal": True}),
}
VARIANTS = ["", "+lse", "+softcap+lse", "+bias+mask", "+lengths", "+lengths+lse+top_left", "+scale+mask+lse"]


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", list(MH_CASES))
def test_multihead_matches_reference(backend, path, case, variant, dtype):
    rng = np.random.default_rng(_seed(case, variant, dtype))
    op, pattern = MH_CASES[case]
    arrays = qkv(rng, dtype)
    run_and_compare(backend, op, arrays, {**pattern, **_options(rng, "x" + variant, arrays)}, dtype)


SHAPES = {
    "gqa": {"Hq": 6, "Hkv": 2},
    "mqa": {"Hq": 4, "Hkv": 1},
    "lq>lk": {"Lq": 29, "Lk": 11},
    "lq<lk": {"Lq": 5, "Lk": 37},
    "one-query": {"Lq": 1, "Lk": 23},
    "long": {"B": 1, "Hq": 2, "Hkv": 1, "Lq": 301, "Lk": 290, "D": 4, "Dv": 3},
}


@pytest.mark.parametrize("align", ["bottom_right", "top_left"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("case", list(MH_CASES))
def test_blocking_stress(backend, path, small_blocks, case, shape, align):
    """Many blocks: lengths not multiples of the block, both alignments, GQA/MQA, lse."""
    rng = np.random.default_rng(_seed(case, shape, align))
    op, pattern = MH_CASES[case]
    arrays = qkv(rng, "float64", **SHAPES[shape])
    run_and_compare(backend, op, arrays, {**pattern, "align": align, "return_lse": True}, "float64")


WIDE = {
    "window-wider-than-L": ("local_attention", {"window": (50, 70)}),
    "window-zero": ("local_attention", {"window": 0}),
    "chunk-larger-than-L": ("chunked_attention", {"chunk_size": 100}),
    "chunk-one": ("chunked_attention", {"chunk_size": 1, "causal": True}),
}


@pytest.mark.parametrize("shape", ["lq>lk", "lq<lk", "gqa"])
@pytest.mark.parametrize("case", list(WIDE))
def test_extreme_windows(backend, small_blocks, case, shape):
    rng = np.random.default_rng(7)
    op, pattern = WIDE[case]
    arrays = qkv(rng, "float32", **SHAPES[shape])
    run_and_compare(backend, op, arrays, {**pattern, "return_lse": True, "kv_lengths": [3, 0]}, "float32")


def test_kv_lengths_and_q_lengths_as_tensors_arrays_and_lists(backend, small_blocks):
    rng = np.random.default_rng(3)
    arrays = qkv(rng, "float64", B=3)
    for kv, ql in [([17, 0, 5], [13, 2, 0]), (np.array([1, 17, 9]), np.array([0, 13, 7]))]:
        for as_tensor in (False, True):
            options = {"window": (2, 1), "kv_lengths": kv, "q_lengths": ql, "return_lse": True}
            if as_tensor:
                options = {**options, "kv_lengths": torch.tensor(np.asarray(kv)), "q_lengths": torch.tensor(ql)}
            ref = R.local_attention(**arrays, **{**options, "kv_lengths": kv, "q_lengths": ql})
            got = backend.local_attention(*(backend.asarray(a) for a in arrays.values()), **options)
            for g, r in zip(got, ref, strict=True):
                assert_conforms(backend.to_numpy(g), r, r, "float64", 4.0)


# -- fully masked rows and NaN ---------------------------------------------------------
@pytest.mark.parametrize("op", ["global_attention", "local_attention", "chunked_attention"])
def test_fully_masked_rows_are_zero_with_lse_minus_inf(backend, path, small_blocks, op):
    rng = np.random.default_rng(11)
    arrays = qkv(rng, "float32", Lq=20, Lk=20)
    mask = rng.random((2, 4, 20, 20)) < 0.5
    mask[0, :, 3] = False
    mask[1, 2, 10:] = False
    bias = rng.standard_normal((2, 4, 20, 20)).astype(np.float32)
    bias[1, 0, 5] = -np.inf  # a row whose allowed scores are all -inf
    pattern = {"global_attention": {}, "local_attention": {"window": 4}, "chunked_attention": {"chunk_size": 6}}[op]
    options = {**pattern, "mask": mask, "bias": bias, "q_lengths": [17, 20], "return_lse": True}
    run_and_compare(backend, op, arrays, options, "float32")
    out, lse = getattr(backend, op)(*(backend.asarray(a) for a in arrays.values()), **{
        **options, "mask": backend.asarray(mask), "bias": backend.asarray(bias)})  # fmt: skip
    assert not out.isnan().any() and (out[0, :, 3] == 0).all() and (lse[0, :, 3] == -np.inf).all()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    ("op", "options"),
    [
        ("global_attention", {"causal": True}),
        ("global_attention", {"kv_lengths": [9, 4]}),
        ("local_attention", {"window": (2, 1)}),
        ("chunked_attention", {"chunk_size": 4}),
    ],
)
def test_nan_at_disallowed_keys_does_not_leak(backend, small_blocks, op, options, dtype):
    rng = np.random.default_rng(5)
    arrays = qkv(rng, dtype, Lq=12, Lk=12)
    for name, index in (("k", (0, 1, 10, 2)), ("v", (1, 0, 8, 1)), ("v", (0, 1, 11, 0)), ("q", (1, 3, 0, 0))):
        arrays[name][index] = np.nan
    arrays["v"][0, 0, 9, 3] = np.inf
    run_and_compare(backend, op, arrays, {**options, "return_lse": True}, dtype)


def test_nan_in_bias_at_masked_keys_does_not_leak(backend, small_blocks):
    rng = np.random.default_rng(6)
    arrays = qkv(rng, "float64", Lq=10, Lk=10)
    mask = rng.random((2, 1, 10, 10)) < 0.6
    bias = np.where(mask, rng.standard_normal(mask.shape), np.nan)
    bias[0, 0, 2, :] = -np.inf
    run_and_compare(backend, "global_attention", arrays, {"bias": bias, "mask": mask, "return_lse": True}, "float64")


# -- paths --------------------------------------------------------------------------------
def test_sdpa_path_applies_exactly_when_every_row_sees_every_key(cpu, monkeypatch):
    """SDPA runs when the pattern allows every key to every row and there is no mask, no
    lengths, no softcap, no lse and no gradient; every other call is blocked (decided from
    metadata alone, whatever the values)."""
    rng = np.random.default_rng(0)
    t = {n: cpu.asarray(a) for n, a in qkv(rng, "float32").items()}
    calls = []
    real = _sdpa.sdpa_attention
    monkeypatch.setattr("attnref_torch._ops.sdpa_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    cpu.global_attention(**t)
    cpu.global_attention(**t, bias=torch.zeros(13, 17))
    cpu.local_attention(**t, window=(None, None))
    cpu.local_attention(**t, window=(40, 40))
    cpu.global_attention(t["q"][:, :, :1], t["k"], t["v"], causal=True)  # one query row sees every key
    t["k"][0, 0, 0, 0] = float("inf")
    cpu.global_attention(**t)
    assert len(calls) == 6
    cpu.global_attention(**t, causal=True, align="top_left")
    cpu.global_attention(**t, mask=torch.ones(13, 17, dtype=torch.bool))
    cpu.global_attention(**t, kv_lengths=[17, 17])
    cpu.global_attention(**t, softcap=2.0)
    cpu.global_attention(**t, return_lse=True)
    cpu.global_attention(t["q"].requires_grad_(), t["k"], t["v"])
    assert len(calls) == 6


def test_default_path_emits_no_warning(backend, small_blocks):
    cpu = backend  # the device under test
    rng = np.random.default_rng(1)
    arrays = qkv(rng, "float16")
    t = [cpu.asarray(a) for a in arrays.values()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cpu.global_attention(*t)
        cpu.global_attention(*t, causal=True, return_lse=True, q_lengths=[3, 13])
        cpu.local_attention(*t, window=(3, 0), softcap=1.0)
        cpu.chunked_attention(*t, chunk_size=4, return_lse=True)
        cpu.chunked_attention(*t, chunk_size=4, kv_lengths=[3, 17])
        cpu.local_attention(*t, window=(2, 1), mask=cpu.asarray(rng.random((13, 17)) < 0.5))
        x = cpu.asarray(_rounded(rng, (2, 9, 4), "float32"))
        w = cpu.asarray(_rounded(rng, (4, 3), "float32"))
        b = cpu.asarray(_rounded(rng, (3,), "float32"))
        cpu.additive_attention(x, w, b, b, window=2)
        cpu.luong_attention(x, x, mode="local-m", half_width=1)


# -- errors ---------------------------------------------------------------------------------
INVALID = {
    "rank": ({"q": (2, 4, 13)}, {}),
    "heads": ({"q": (2, 3, 13, 8)}, {}),
    "head-size": ({"k": (2, 2, 17, 7)}, {}),
    "window": ({}, {"window": (-2, 1)}),
    "window-type": ({}, {"window": "wide"}),
    "kv-lengths": ({}, {"kv_lengths": [18, 3]}),
    "kv-lengths-float": ({}, {"kv_lengths": np.array([1.0, 2.0])}),
    "q-lengths-shape": ({}, {"q_lengths": [1, 2, 3]}),
    "mask-dtype": ({}, {"mask": np.ones((13, 17), dtype=np.float32)}),
    "mask-shape": ({}, {"mask": np.ones((13, 16), dtype=bool)}),
    "bias-shape": ({}, {"bias": np.ones((3, 13, 17))}),
    "align": ({}, {"align": "center"}),
    "scale": ({}, {"scale": -1.0}),
    "softcap": ({}, {"softcap": 0}),
    "return-lse": ({}, {"return_lse": "yes"}),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_input_raises_as_the_reference(cpu, case):
    shapes, options = INVALID[case]
    rng = np.random.default_rng(0)
    arrays = qkv(rng, "float32")
    arrays.update({n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()})
    options = {"window": 3, **options}
    with pytest.raises(Exception) as expected:
        R.local_attention(**arrays, **options)
    native = {n: cpu.asarray(a) if n in ("mask", "bias") else a for n, a in options.items()}
    with pytest.raises(type(expected.value)) as got:
        cpu.local_attention(**{n: cpu.asarray(a) for n, a in arrays.items()}, **native)
    assert str(got.value) == str(expected.value)


def test_mixed_dtypes_and_devices_and_non_tensors(cpu):
    rng = np.random.default_rng(0)
    q, k, v = (cpu.asarray(a) for a in qkv(rng, "float32").values())
    with pytest.raises(InvalidTypeError, match=r"^k: "):
        cpu.global_attention(q, k.double(), v)
    with pytest.raises(InvalidTypeError, match=r"^q: .*torch.Tensor"):
        cpu.global_attention(q.numpy(), k, v)
    with pytest.raises(InvalidArgumentError, match=r"^k: .*meta"):
        cpu.global_attention(q, k.to("meta"), v)
    with pytest.raises(InvalidArgumentError, match=r"^mask: .*meta"):
        cpu.global_attention(q, k, v, mask=torch.ones(13, 17, dtype=torch.bool, device="meta"))
    x = cpu.asarray(_rounded(rng, (2, 9, 4), "float32"))
    w, b = cpu.asarray(_rounded(rng, (4, 3), "float32")), cpu.asarray(_rounded(rng, (3,), "float32"))
    with pytest.raises(InvalidArgumentError, match=r"^b_in: "):
        cpu.additive_attention(x, w, b.to("meta"), b)
    with pytest.raises(InvalidTypeError, match=r"^w_in: "):
        cpu.additive_attention(x, w.double(), b, b)
    with pytest.raises(InvalidArgumentError, match=r"^h_s: "):
        cpu.luong_attention(x, x.to("meta"))


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_mixed_cpu_and_cuda_tensors():
    backend = TorchBackend(device="cuda")
    q, k, v = (backend.asarray(a) for a in qkv(np.random.default_rng(0), "float32").values())
    with pytest.raises(InvalidArgumentError, match=r"^v: .*cpu"):
        backend.local_attention(q, k, v.cpu(), window=2)
    with pytest.raises(InvalidArgumentError, match=r"^bias: .*cpu"):
        backend.global_attention(q, k, v, bias=torch.zeros(13, 17))


# -- conversion, registration, import ---------------------------------------------------------
@pytest.mark.parametrize("dtype", [*DTYPE_NAMES, "bool", "int64"])
def test_asarray_to_numpy_round_trip_is_exact(backend, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)) * 1e3
    a = (a > 0) if dtype == "bool" else a.astype(np.int64 if dtype == "int64" else numpy_dtype(dtype))
    t = backend.asarray(a)
    assert isinstance(t, torch.Tensor) and t.device.type == backend.device.type
    back = backend.to_numpy(t)
    assert back.dtype == a.dtype and np.array_equal(back.view(np.uint8), a.view(np.uint8))
    a[0, 0] = 0  # asarray copies
    assert backend.to_numpy(t)[0, 0] == back[0, 0]


def test_default_device_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATTNREF_TORCH_DEVICE", "meta")
    assert TorchBackend().device.type == "meta"
    assert TorchBackend(device="cpu").device.type == "cpu"
    monkeypatch.delenv("ATTNREF_TORCH_DEVICE")
    assert TorchBackend().device.type == ("cuda" if CUDA else "cpu")


def test_registered_and_valid():
    from attnref.backend import backend_problems

    backend = attnref.get_backend("torch")
    assert isinstance(backend, TorchBackend) and backend.unavailable_reason is None
    assert backend_problems(backend) == []
    assert backend.ops == frozenset(attnref.backend.OPS) and backend.dtypes == frozenset(DTYPE_NAMES)


def test_unavailable_without_torch(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert TorchBackend().unavailable_reason == "torch is not installed"


def test_listing_backends_does_not_import_torch():
    code = (
        "import json, sys, attnref\n"
        "names = attnref.list_backends(); statuses = attnref.backend_statuses()\n"
        "backend = attnref.get_backend('torch'); reason = backend.unavailable_reason\n"
        "print(json.dumps({'torch' : 'torch' in sys.modules, 'names': names, 'reason': reason}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"torch": False, "names": report["names"], "reason": None} and "torch" in report["names"]


# -- pooling ops -----------------------------------------------------------------------------------
def _additive(rng, dtype, B=3, L=11, Din=5, Dh=4) -> dict:
    return {
        "x": _rounded(rng, (B, L, Din), dtype),
        "w_in": _rounded(rng, (Din, Dh), dtype),
        "b_in": _rounded(rng, (Dh,), dtype),
        "w_out": _rounded(rng, (Dh,), dtype),
    }


ADDITIVE = {
    "global": lambda rng: {},
    "b_out": lambda rng: {"b_out": 0.3},
    "mask": lambda rng: {"mask": np.array([[True] * 11, [False] * 11, [True, False] * 5 + [True]])},
    "window": lambda rng: {"window": (2, 1)},
    "window-centers": lambda rng: {"window": (None, 1), "center": np.array([0, 10, 4])},
    "window-center-int": lambda rng: {"window": 3, "center": 9},
}


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("case", list(ADDITIVE))
def test_additive_matches_reference(backend, case, dtype):
    rng = np.random.default_rng(_seed(case, dtype))
    run_and_compare(
        backend, "additive_attention", _additive(rng, dtype), ADDITIVE[case](rng), dtype, ("context", "weights")
    )


def _luong(rng, dtype, B=2, T=7, S=9, d=4) -> dict:
    return {"h_t": _rounded(rng, (B, T, d), dtype), "h_s": _rounded(rng, (B, S, d), dtype)}


LUONG = {
    "dot": lambda rng, dt: {},
    "general": lambda rng, dt: {"score": "general", "w_a": _rounded(rng, (4, 4), dt)},
    "concat": lambda rng, dt: {"score": "concat", "w_a": _rounded(rng, (8, 3), dt), "v_a": _rounded(rng, (3,), dt)},
    "lengths": lambda rng, dt: {"source_lengths": [0, 6]},
    "local-m": lambda rng, dt: {"mode": "local-m", "half_width": 1, "source_lengths": np.array([4, 9])},
    "local-p": lambda rng, dt: {
        "mode": "local-p",
        "half_width": 2,
        "w_p": _rounded(rng, (4, 3), dt),
        "v_p": _rounded(rng, (3,), dt),
        "source_lengths": [9, 5],
    },
}


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("case", list(LUONG))
def test_luong_matches_reference(backend, case, dtype):
    rng = np.random.default_rng(_seed(case, dtype))
    options = LUONG[case](rng, dtype)
    run_and_compare(backend, "luong_attention", _luong(rng, dtype), options, dtype, ("context", "weights"))


def test_pooling_nan_at_disallowed_positions_does_not_leak(backend):
    rng = np.random.default_rng(2)
    arrays = _additive(rng, "float64")
    arrays["x"][0, 0, 1] = np.nan  # outside the window around 5
    run_and_compare(backend, "additive_attention", arrays, {"window": 2}, "float64", ("context", "weights"))
    arrays = _luong(rng, "float64")
    arrays["h_s"][1, 8, 0] = np.inf  # beyond source_lengths[1]
    options = {"source_lengths": [9, 5], "mode": "local-m", "half_width": 2}
    run_and_compare(backend, "luong_attention", arrays, options, "float64", ("context", "weights"))


# -- gradients ------------------------------------------------------------------------------------
def _t(rng, shape, device="cpu"):
    return torch.tensor(rng.standard_normal(shape), dtype=torch.float64, device=device, requires_grad=True)


GRAD_CASES = {
    "global": ("global_attention", {}),
    "global-gqa-lengths": ("global_attention", {"kv_lengths": [6, 0], "q_lengths": [5, 2]}),
    "causal-lse": ("global_attention", {"causal": True, "return_lse": True}),
    "local": ("local_attention", {"window": (2, 1)}),
    "local-softcap-lse": ("local_attention", {"window": (1, None), "softcap": 1.3, "return_lse": True}),
    "chunk": ("chunked_attention", {"chunk_size": 3}),
    "chunk-causal-top-left": ("chunked_attention", {"chunk_size": 4, "causal": True, "align": "top_left"}),
    "bias-mask": ("global_attention", {"bias": True, "mask": True}),
    "local-bias-mask": ("local_attention", {"window": 2, "bias": True, "mask": True}),
    "global-softcap-bias": ("global_attention", {"softcap": 2.0, "bias": True, "mask": True, "return_lse": True}),
}


def _grad_inputs(case, rng, device="cpu"):
    op, options = GRAD_CASES[case]
    q, k, v = _t(rng, (2, 2, 7, 2), device), _t(rng, (2, 1, 6, 2), device), _t(rng, (2, 1, 6, 2), device)
    options = dict(options)
    inputs = [q, k, v]
    if options.get("bias"):
        options["bias"] = _t(rng, (2, 1, 7, 6), device)
        inputs.append(options["bias"])
    if options.get("mask"):
        mask = rng.random((2, 2, 7, 6)) < 0.6
        mask[0, 1, 3] = False  # a fully masked row
        options["mask"] = torch.tensor(mask, device=device)
    return op, inputs, options


def _differentiable(backend, op, options):
    lse = options.get("return_lse", False)

    def f(q, k, v, bias=None):
        result = getattr(backend, op)(q, k, v, **{**options, **({"bias": bias} if bias is not None else {})})
        if not lse:
            return result
        out, lse_ = result  # -inf lse of empty rows would break finite differences; they are checked elsewhere
        return out, torch.where(torch.isfinite(lse_), lse_, torch.zeros_like(lse_))

    return f


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradcheck(backend, path, small_blocks, case, monkeypatch):
    monkeypatch.setattr(_plan, "BLOCK_ROWS", 3)
    monkeypatch.setattr(_plan, "CUDA_BLOCK_ROWS", 3)
    rng = np.random.default_rng(len(case))
    op, inputs, options = _grad_inputs(case, rng, backend.device)
    assert torch.autograd.gradcheck(_differentiable(backend, op, options), tuple(inputs), fast_mode=True)


@pytest.mark.parametrize("case", ["global-gqa-lengths", "bias-mask", "local-bias-mask", "global-softcap-bias"])
def test_masked_rows_have_zero_not_nan_gradients(backend, case):
    rng = np.random.default_rng(9)
    op, inputs, options = _grad_inputs(case, rng, backend.device)
    out = _outputs(getattr(backend, op)(*inputs[:3], **options))[0]
    out.square().sum().backward()
    for x in inputs:
        assert torch.isfinite(x.grad).all()
    if "mask" in options:
        assert (inputs[0].grad[0, 1, 3] == 0).all()


def test_vjp_matches_reference(backend):
    rng = np.random.default_rng(4)
    arrays = qkv(rng, "float64", Lq=9, Lk=9)
    bias = rng.standard_normal((2, 1, 9, 9))
    options = {"window": (2, 1), "bias": bias, "kv_lengths": [9, 5], "softcap": 2.0}
    dout, dlse = rng.standard_normal((2, 4, 9, 6)), rng.standard_normal((2, 4, 9))
    ref = R.local_attention_vjp(*arrays.values(), dout, dlse=dlse, **options)
    native = [backend.asarray(a) for a in (*arrays.values(), dout, dlse, bias)]
    got = backend.local_attention_vjp(*native[:4], dlse=native[4], **{**options, "bias": native[5]})
    assert len(got) == 4
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(backend.to_numpy(g), r, atol=1e-12)


POOLING_GRADS = {
    "additive-window": ("additive_attention", {"window": (1, 2), "center": np.array([2, 5])}),
    "additive-mask": ("additive_attention", {"mask": np.array([[True] * 6, [False] * 6])}),
    "luong-concat": ("luong_attention", {"score": "concat"}),
    "luong-local-p": ("luong_attention", {"mode": "local-p", "half_width": 2, "source_lengths": [6, 0]}),
}


@pytest.mark.parametrize("case", list(POOLING_GRADS))
def test_pooling_gradcheck(backend, case):
    rng = np.random.default_rng(len(case))
    op, options = POOLING_GRADS[case]
    options = {n: backend.asarray(a) if isinstance(a, np.ndarray) else a for n, a in options.items()}
    dev = backend.device
    if op == "additive_attention":
        inputs = (_t(rng, (2, 6, 3), dev), _t(rng, (3, 4), dev), _t(rng, (4,), dev), _t(rng, (4,), dev))
        f = lambda x, w, b, u: backend.additive_attention(x, w, b, u, **options)  # noqa: E731
    else:
        inputs = (_t(rng, (2, 5, 3), dev), _t(rng, (2, 6, 3), dev))
        extra = {"w_a": _t(rng, (6, 2), dev), "v_a": _t(rng, (2,), dev)} if options.get("score") == "concat" else {}
        if options.get("mode") == "local-p":
            extra = {"w_p": _t(rng, (3, 2), dev), "v_p": _t(rng, (2,), dev)}
        names = list(extra)
        inputs = inputs + tuple(extra.values())
        f = lambda ht, hs, *w: backend.luong_attention(ht, hs, **options, **dict(zip(names, w, strict=True)))  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


# -- the FlexAttention path's planning (checked on the CPU, uncompiled) ---------------------------------
@pytest.mark.parametrize(
    ("op", "options", "Lq", "Lk"),
    [
        ("local_attention", {"window": (40, 3)}, 300, 260),  # Lq > Lk: rows with no key
        ("chunked_attention", {"chunk_size": 50, "causal": True}, 260, 300),
        ("local_attention", {"window": (None, 0)}, 200, 200),
    ],
)
def test_flex_block_mask_and_mask_mod_give_the_reference(monkeypatch, op, options, Lq, Lk):
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(_flex, "_compiled", lambda: flex_attention)  # eager: slow but exact, fine when small
    monkeypatch.setattr(_flex, "_variants", set())
    arrays = qkv(np.random.default_rng(0), "float64", B=1, Hq=4, Hkv=2, Lq=Lq, Lk=Lk, D=16, Dv=16)
    t = [torch.tensor(a) for a in arrays.values()]
    pattern = (
        attnref.validation.window_pattern(options["window"])
        if "window" in options
        else attnref.validation.chunk_pattern(options["chunk_size"], options["causal"])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncompiled FlexAttention warns that it is unfused
        got = _flex.flex_attention(*t, pattern, attnref.validation.check_attention(*t), return_lse=True)
    ref = getattr(R, op)(**arrays, **options, return_lse=True)
    for g, r in zip(got, ref, strict=True):
        assert_conforms(g.numpy(), r, r, "float64", 8.0)


def test_flex_stops_at_its_variant_limit(monkeypatch):
    calls = []

    def fake(q, k, v, **kw):  # FlexAttention's answer shape: (out, aux with lse)
        calls.append(q.shape)
        return q, types.SimpleNamespace(lse=q[..., 0])

    monkeypatch.setattr(_flex, "_compiled", lambda: fake)
    monkeypatch.setattr(_flex, "_variants", set())
    pattern = attnref.validation.window_pattern(2)
    results = []
    for L in range(16, 16 + _flex.MAX_VARIANTS + 2):
        q = torch.zeros(1, 1, L, 16)
        results.append(
            _flex.flex_attention(q, q, q, pattern, attnref.validation.check_attention(q, q, q), return_lse=False)
        )
    assert [r is None for r in results] == [False] * _flex.MAX_VARIANTS + [True, True]
    q = torch.zeros(1, 1, 16, 16)  # a known variant still runs
    out = _flex.flex_attention(q, q, q, pattern, attnref.validation.check_attention(q, q, q), return_lse=False)
    assert torch.equal(out, q)
    assert len(calls) == _flex.MAX_VARIANTS + 1


def test_flex_switch(monkeypatch):
    monkeypatch.delenv("ATTNREF_TORCH_FLEX", raising=False)
    assert TorchBackend().flex is False
    monkeypatch.setenv("ATTNREF_TORCH_FLEX", "1")
    assert TorchBackend().flex is True and TorchBackend(flex=False).flex is False


def test_repeated_calls_reuse_plans_and_masks_exactly(cpu):
    rng = np.random.default_rng(8)
    arrays = qkv(rng, "float32", B=1, Lq=400, Lk=400)
    t = [cpu.asarray(a) for a in arrays.values()]
    first = cpu.local_attention(*t, window=(30, 5))
    again = cpu.local_attention(*t, window=(30, 5))
    assert torch.equal(first, again)
    other = cpu.local_attention(*t, window=(5, 30))  # same shapes, another pattern: another mask
    ref = R.local_attention(**arrays, window=(5, 30))
    assert_conforms(other.numpy(), ref, R.local_attention(**arrays, window=(5, 30), precision="float32"), "float32", 4)


# -- CUDA only ------------------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize(
    ("op", "options", "dtype", "Lq"),
    [
        ("local_attention", {"window": (256, 256), "return_lse": True}, "float16", 2048),
        ("chunked_attention", {"chunk_size": 512, "causal": True}, "bfloat16", 2304),  # Lq > Lk: rows with no key
    ],
)
def test_flex_path_on_cuda(op, options, dtype, Lq):
    backend = TorchBackend(device="cuda", flex=True)
    arrays = qkv(np.random.default_rng(0), dtype, B=1, Hq=4, Hkv=2, Lq=Lq, Lk=2048, D=64, Dv=64)
    t = {n: backend.asarray(a) for n, a in arrays.items()}
    args = attnref.validation.check_attention(t["q"], t["k"], t["v"])
    assert _flex.flex_applies(t["q"], args, bias=None, mask=None, requires_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compiling may warn; the flex path is opt-in
        run_and_compare(backend, op, arrays, options, dtype)
