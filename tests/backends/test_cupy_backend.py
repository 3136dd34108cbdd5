"""The CuPy backend: its plugin and availability everywhere, its numbers on a GPU.

Without CuPy or a CUDA device the backend must still import, register and say
why it is unavailable. Its code path (the NumPy backend's blocked code run
through the CuPy backend's glue) is exercised here with ``xp = numpy``; the
same comparisons run on real CuPy arrays where a GPU is present.
"""

from __future__ import annotations

import subprocess
import sys
import types

import ml_dtypes
import numpy as np
import pytest

from attnref import BackendUnavailableError, reference
from attnref.backend import OPS, backend_problems
from attnref.dtypes import numpy_dtype
from attnref_blocked import BlockConfig
from attnref_cupy import backend as cupy_backend
from attnref_cupy.backend import CupyBackend
from attnref_cupy.plugin import attnref_backends

CUPY_DTYPES = ("float16", "float32", "float64")
TINY_BLOCKS = BlockConfig(score_elements=200, max_rows=5, tile=3)


@pytest.fixture
def fresh_import():
    """Forget the cached CuPy probe before and after the test."""
    cupy_backend._import_cupy.cache_clear()
    yield
    cupy_backend._import_cupy.cache_clear()


def test_plugin_registers_a_valid_backend():
    (backend,) = attnref_backends()
    assert backend_problems(backend) == []
    assert backend.name == "cupy"
    assert {"global_attention", "additive_attention", "luong_attention"} <= backend.ops <= set(OPS)
    assert {op for op in OPS if op.endswith("_vjp")} <= backend.ops  # the shared blocked backward
    assert backend.dtypes == frozenset(CUPY_DTYPES)
    reason = backend.unavailable_reason
    assert reason is None or isinstance(reason, str)
    assert isinstance(backend.version, str)


def test_cupy_backend_imports_no_other_backend():
    """The shared code lives in attnref_blocked: the CuPy backend never imports the NumPy backend."""
    code = "import sys, attnref_cupy.plugin; print(' '.join(m.split('.')[0] for m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(run.stdout.split())
    assert "attnref_blocked" in loaded
    assert not loaded & {"attnref_numpy", "attnref_torch", "cupy", "torch"}


def test_missing_cupy_is_reported_not_raised(monkeypatch, fresh_import):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    backend = CupyBackend()
    assert backend.unavailable_reason == "cupy is not installed"
    assert "cupy not installed" in backend.version
    q = np.zeros((1, 1, 2, 4))
    with pytest.raises(BackendUnavailableError, match="cupy is not installed"):
        backend.global_attention(q, q, q)


def test_missing_device_is_reported_not_raised(monkeypatch, fresh_import):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.__version__ = "0.0-fake"
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    reason = CupyBackend().unavailable_reason
    assert reason.startswith("no CUDA device") and "cudaErrorNoDevice" in reason
    fake.cuda.runtime.getDeviceCount = lambda: 0
    cupy_backend._import_cupy.cache_clear()
    assert CupyBackend().unavailable_reason == "no CUDA device"


# -- numbers --------------------------------------------------------------------
def close_enough(got, ref64, naive, dtype: str, scale: float) -> None:
    """The contract's rule: ``max|got - ref64| <= 2 max|naive - ref64| + 4 eps scale``, NaN where ref64 has NaN."""
    got, ref64, naive = (np.asarray(a, dtype=np.float64) for a in (got, ref64, naive))
    assert np.array_equal(np.isnan(got), np.isnan(ref64))
    assert np.array_equal(np.isinf(got), np.isinf(ref64))
    finite = np.isfinite(ref64)
    if finite.any():
        with np.errstate(invalid="ignore"):
            naive_err = np.abs(naive - ref64)[finite & np.isfinite(naive)]
            err = np.abs(got - ref64)[finite].max()
        allowed = 2 * (naive_err.max() if naive_err.size else 0.0) + 4 * float(ml_dtypes.finfo(dtype).eps) * scale
        assert err <= allowed


MULTIHEAD_CASES = [
    ("global_attention", {}),
    ("global_attention", {"causal": True, "kv_lengths": [17, 0]}),
    ("local_attention", {"window": (3, 1), "align": "top_left", "softcap": 4.0}),
    ("local_attention", {"window": (None, 0), "q_lengths": [5, 11]}),
    ("chunked_attention", {"chunk_size": 4, "causal": True}),
]


def run_multihead_cases(backend, dtype: str) -> None:
    rng = np.random.default_rng(CUPY_DTYPES.index(dtype))
    dt = numpy_dtype(dtype)
    q = (3 * rng.standard_normal((2, 4, 11, 8))).astype(dt)
    k, v = (rng.standard_normal((2, 2, 17, 8)).astype(dt) for _ in range(2))
    v[1, :, 16] = np.nan  # beyond kv_lengths in one case, allowed in others
    bias = rng.standard_normal((4, 11, 17)).astype(dt)
    mask = rng.random((2, 1, 11, 17)) < 0.8
    for op, kwargs in MULTIHEAD_CASES:
        for extra in ({}, {"bias": bias, "mask": mask}):
            args = dict(kwargs, **extra)
            native = {n: backend.asarray(a) if isinstance(a, np.ndarray) else a for n, a in args.items()}
            out, lse = getattr(backend, op)(
                backend.asarray(q), backend.asarray(k), backend.asarray(v), return_lse=True, **native
            )
            out, lse = backend.to_numpy(out), backend.to_numpy(lse)
            assert out.dtype == dt and lse.dtype == dt
            ref = getattr(reference, op)(q, k, v, return_lse=True, **args)
            naive = getattr(reference, op)(q, k, v, return_lse=True, precision=dtype, **args)
            close_enough(out, ref[0], naive[0], dtype, 1.0 + np.nanmax(np.abs(v.astype(np.float64))))
            close_enough(
                lse, ref[1], naive[1], dtype, max(1.0, np.nanmax(np.abs(np.where(np.isinf(ref[1]), 0, ref[1]))))
            )


def run_pooling_cases(backend, dtype: str) -> None:
    rng = np.random.default_rng(10 + CUPY_DTYPES.index(dtype))
    dt = numpy_dtype(dtype)
    x, w_in, b_in, w_out = (rng.standard_normal(s).astype(dt) for s in ((2, 9, 3), (3, 4), (4,), (4,)))
    mask = rng.random((2, 9)) < 0.7
    h_t, h_s = rng.standard_normal((2, 5, 4)).astype(dt), rng.standard_normal((2, 7, 4)).astype(dt)
    w_p, v_p = rng.standard_normal((4, 3)).astype(dt), rng.standard_normal(3).astype(dt)
    calls = [
        ("additive_attention", (x, w_in, b_in, w_out, 0.5), {"mask": mask, "window": (2, 1), "center": [3, 8]}),
        ("luong_attention", (h_t, h_s), {"source_lengths": [7, 3]}),
        ("luong_attention", (h_t, h_s), {"mode": "local-p", "half_width": 2, "w_p": w_p, "v_p": v_p}),
    ]
    for op, args, kwargs in calls:
        native_args = [backend.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        native_kwargs = {n: backend.asarray(a) if isinstance(a, np.ndarray) else a for n, a in kwargs.items()}
        got = [backend.to_numpy(a) for a in getattr(backend, op)(*native_args, **native_kwargs)]
        ref = getattr(reference, op)(*args, **kwargs)
        naive = getattr(reference, op)(*args, precision=dtype, **kwargs)
        for g, r, n in zip(got, ref, naive, strict=True):
            assert g.dtype == dt
            close_enough(g, r, n, dtype, 3.0)


def run_vjp_cases(backend, dtype: str) -> None:
    """The gradients against the reference VJPs (float64: to rounding; lower dtypes: a few roundings)."""
    rng = np.random.default_rng(20 + CUPY_DTYPES.index(dtype))
    dt = numpy_dtype(dtype)
    q = rng.standard_normal((2, 4, 11, 8)).astype(dt)
    k, v = (rng.standard_normal((2, 2, 17, 8)).astype(dt) for _ in range(2))
    dout, dlse = rng.standard_normal((2, 4, 11, 8)).astype(dt), rng.standard_normal((2, 4, 11)).astype(dt)
    v[1, :, 16] = np.nan  # beyond kv_lengths: reaches no gradient
    bias = rng.standard_normal((4, 1, 17)).astype(dt)
    eps = float(ml_dtypes.finfo(dt).eps)
    for op, kwargs in [*MULTIHEAD_CASES[1:], ("local_attention", {"window": (2, 2), "bias": bias, "dlse": dlse})]:
        kwargs = {**kwargs, "kv_lengths": [17, 16]} if "kv_lengths" not in kwargs else kwargs
        native = {n: backend.asarray(a) if isinstance(a, np.ndarray) else a for n, a in kwargs.items()}
        got = getattr(backend, f"{op}_vjp")(*(backend.asarray(a) for a in (q, k, v, dout)), **native)
        ref = getattr(reference, f"{op}_vjp")(q, k, v, dout, **kwargs)
        assert len(got) == len(ref)
        for g, r in zip(got, ref, strict=True):
            g = backend.to_numpy(g)
            assert g.dtype == dt and np.isfinite(g).all()
            scale = max(1.0, float(np.abs(r).max()))
            assert np.abs(g.astype(np.float64) - r).max() <= (1e-9 if dtype == "float64" else 8 * eps) * scale


@pytest.mark.parametrize("dtype", CUPY_DTYPES)
@pytest.mark.parametrize("block", [None, TINY_BLOCKS], ids=["default-blocks", "tiny-blocks"])
def test_code_path_with_numpy_as_namespace(dtype, block):
    backend = CupyBackend(xp=np, block=block)
    assert backend.unavailable_reason is None
    run_multihead_cases(backend, dtype)
    run_pooling_cases(backend, dtype)
    run_vjp_cases(backend, dtype)


def gpu_backend(block=None) -> CupyBackend:
    backend = CupyBackend(block=block)
    if backend.unavailable_reason is not None:
        pytest.skip(f"cupy backend unavailable: {backend.unavailable_reason}")
    return backend


@pytest.mark.parametrize("dtype", CUPY_DTYPES)
@pytest.mark.parametrize("block", [None, TINY_BLOCKS], ids=["default-blocks", "tiny-blocks"])
def test_gpu_matches_reference(dtype, block):
    backend = gpu_backend(block)
    run_multihead_cases(backend, dtype)
    run_pooling_cases(backend, dtype)
    run_vjp_cases(backend, dtype)


def test_gpu_keeps_arrays_on_the_device():
    backend = gpu_backend()
    cupy = backend.namespace()
    q = backend.asarray(np.ones((1, 2, 300, 16), dtype=np.float32))
    out = backend.local_attention(q, q, q, window=(7, 7))
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(out), 1.0, rtol=1e-6)
