"""Shared pieces of the attnref asv suite: the grid, the implementations under test, inputs, probes.

Implementations (the ``impl`` parameter of every benchmark)
-----------------------------------------------------------
* every backend the registry knows (available or not: an unavailable one is
  recorded as skipped), found at import with the registry's public API;
* ``"reference"``: :mod:`attnref.reference` (float64, small sizes only);
* the baselines of :mod:`.baselines`: ``"baseline-sdpa"`` (PyTorch
  ``scaled_dot_product_attention``, a dense boolean mask for local and chunked
  patterns), ``"baseline-flex"`` (compiled FlexAttention with a block mask,
  local and chunked patterns only) and ``"baseline-naive"`` (NumPy, full score
  matrix, dense mask, in-place softmax).

Grid switches (environment variables, read at import)
-----------------------------------------------------
``ATTNREF_BENCH_SMOKE=1``
    Tiny sizes, for the CI smoke run (``asv run --quick``); every set-up also
    checks the implementation's output against the float64 reference, so the
    smoke run proves the baselines compute the same thing as the backends.
``ATTNREF_BENCH_FULL=1``
    Adds the big sizes (``L`` up to 32768). Ignored when the smoke switch is on.
"""

from __future__ import annotations

import ctypes
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import attnref
import attnref.reference
from attnref.dtypes import DTYPE_NAMES, numpy_dtype
from attnref.patterns import Pattern
from attnref.registry import default_registry

try:  # imported here so that asv's forkserver imports it once, not in every benchmark process
    import torch
except ImportError:  # the suite still runs the NumPy backend and baseline without torch
    torch = None

__all__ = [
    "SMOKE",
    "FULL",
    "grid",
    "REFERENCE",
    "SDPA",
    "FLEX",
    "NAIVE",
    "REFERENCE_PRECISION",
    "BASELINES",
    "registered_backends",
    "MultiheadCase",
    "MULTIHEAD_CASES",
    "PoolingCase",
    "POOLING_CASES",
    "Prepared",
    "prepare",
    "best_alternately",
    "warm_up",
    "repeat_for",
    "MemoryProbe",
    "reference_output",
    "max_abs_error",
    "check_smoke",
    "assert_matches",
    "backend_object",
    "backend_prepared",
    "warm_up_or_skip",
    "implements",
    "GEMM_N",
    "gemm_calls",
    "fraction_of_matmul",
    "allowed_pairs",
]


def _switch(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


SMOKE = _switch("ATTNREF_BENCH_SMOKE")
FULL = _switch("ATTNREF_BENCH_FULL") and not SMOKE


def grid(smoke: Sequence[Any], default: Sequence[Any], full: Sequence[Any]) -> list[Any]:
    """The values of a size parameter under the active switch."""
    return list(smoke if SMOKE else full if FULL else default)


REFERENCE = "reference"
SDPA = "baseline-sdpa"
FLEX = "baseline-flex"
NAIVE = "baseline-naive"
#: Accuracy only: the reference's naive algorithm run in the input's own dtype
#: (``precision=dtype``), the yardstick of the conformance tolerance.
REFERENCE_PRECISION = "reference-precision"
BASELINES = (SDPA, FLEX, NAIVE)

# Heads, head size and batch of the multi-head benchmarks (the headline shape; 2 heads in the smoke run).
HEADS, HEAD_DIM, BATCH = (2 if SMOKE else 8), 64, 1


def registered_backends() -> list[str]:
    """Names of every backend the registry loaded, available here or not.

    Unavailable ones stay in the grid (their set-up raises ``NotImplementedError``
    and asv records a skip), so result tables have the same shape on every machine.
    """
    return default_registry().names(include_unavailable=True)


# -- what is benchmarked ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiheadCase:
    """One call of a multi-head op: the op, its keyword arguments and its pattern."""

    op: str
    kwargs: dict[str, Any]
    pattern: Pattern


def _multihead_cases() -> dict[str, MultiheadCase]:
    # The baselines compute the pattern from the public Pattern class, the rule the ops themselves use.
    return {
        "global": MultiheadCase("global_attention", {}, Pattern.full(False)),
        "causal": MultiheadCase("global_attention", {"causal": True}, Pattern.full(True)),
        "window(256, 256)": MultiheadCase("local_attention", {"window": (256, 256)}, Pattern.window(256, 256)),
        "window(255, 0)": MultiheadCase("local_attention", {"window": (255, 0)}, Pattern.window(255, 0)),
        "chunk(1024)": MultiheadCase("chunked_attention", {"chunk_size": 1024}, Pattern.chunk(1024, False)),
        "chunk(1024, causal)": MultiheadCase(
            "chunked_attention", {"chunk_size": 1024, "causal": True}, Pattern.chunk(1024, True)
        ),
    }


MULTIHEAD_CASES = _multihead_cases()


@dataclass(frozen=True)
class PoolingCase:
    """One call of a pooling op; ``size`` is ``L`` (additive) or ``S`` (Luong)."""

    op: str
    kwargs: dict[str, Any]


POOLING_CASES = {
    "additive": PoolingCase("additive_attention", {}),
    "additive window(64, 64)": PoolingCase("additive_attention", {"window": (64, 64)}),
    "luong global dot": PoolingCase("luong_attention", {"score": "dot", "mode": "global"}),
    "luong local-m general": PoolingCase("luong_attention", {"score": "general", "mode": "local-m", "half_width": 16}),
    "luong local-p concat": PoolingCase("luong_attention", {"score": "concat", "mode": "local-p", "half_width": 16}),
}

# Pooling shapes: batch, model width, hidden width, target steps (Luong).
POOL_BATCH, POOL_DIM, POOL_HIDDEN, LUONG_TARGETS = 8, 128, 128, 64

# The float64 reference is slow: it runs only up to these sizes.
REFERENCE_MAX = {"global_attention": 2048, "local_attention": 2048, "chunked_attention": 2048}
REFERENCE_MAX.update(additive_attention=16384, luong_attention=512)


# -- inputs ------------------------------------------------------------------------------------


def multihead_inputs(length: int, dtype: str, heads: int = HEADS) -> tuple[np.ndarray, ...]:
    """``q, k, v`` of shape ``(1, heads, length, 64)``, standard normal, in ``dtype``."""
    rng = np.random.default_rng(length)
    shape = (BATCH, heads, length, HEAD_DIM)
    return tuple(rng.standard_normal(shape, dtype=np.float32).astype(numpy_dtype(dtype)) for _ in range(3))


def pooling_inputs(case: PoolingCase, size: int, dtype: str) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """Positional and keyword array arguments of a pooling case at ``size``, in ``dtype``."""
    rng = np.random.default_rng(size)
    dt = numpy_dtype(dtype)

    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(dt)

    d, h = POOL_DIM, POOL_HIDDEN
    if case.op == "additive_attention":
        x = normal(POOL_BATCH, size, d)
        return (x, normal(d, h, scale=d**-0.5), normal(h, scale=0.1), normal(h, scale=h**-0.5)), {}
    # Luong: states scaled so that a dot score has unit variance.
    h_t, h_s = normal(POOL_BATCH, LUONG_TARGETS, d, scale=d**-0.25), normal(POOL_BATCH, size, d, scale=d**-0.25)
    arrays: dict[str, Any] = {}
    if case.kwargs["score"] == "general":
        arrays["w_a"] = normal(d, d, scale=d**-0.5)
    elif case.kwargs["score"] == "concat":
        arrays["w_a"], arrays["v_a"] = normal(2 * d, h, scale=(2 * d) ** -0.5), normal(h, scale=h**-0.5)
    if case.kwargs["mode"] == "local-p":
        arrays["w_p"], arrays["v_p"] = normal(d, h, scale=d**-0.5), normal(h, scale=h**-0.5)
    return (h_t, h_s), arrays


# -- implementations ------------------------------------------------------------------------------


@dataclass
class Prepared:
    """An implementation ready to run one case.

    Attributes
    ----------
    run : callable
        Computes the case once and returns the output (finished: on an
        asynchronous device the call waits for the result).
    to_numpy : callable
        The output's first array as a NumPy array.
    aux_nbytes : int
        Bytes of helper data the approach keeps alive between calls and that is
        built before the timed call (a dense mask, a block mask); counted in the
        extra memory, since a user of that approach holds it too.
    """

    run: Callable[[], Any]
    to_numpy: Callable[[Any], np.ndarray]
    aux_nbytes: int = 0
    first_call_s: float | None = field(default=None)


class _Reference:
    """:mod:`attnref.reference` behind the backend protocol (float64 results).

    Every public function of :mod:`attnref.reference` is an op here, the VJPs
    and any op newer than the registry's :data:`~attnref.backend.OPS` included.
    """

    name = REFERENCE
    version = attnref.__version__
    dtypes = frozenset(DTYPE_NAMES)
    unavailable_reason = None

    def __init__(self, precision: Any = None):
        self._precision = precision
        self.ops = frozenset(attnref.reference.__all__)
        for op in self.ops:
            setattr(self, op, self._op(getattr(attnref.reference, op)))

    def _op(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._precision is not None:  # only then: not every reference op takes precision= yet
                kwargs["precision"] = self._precision
            return func(*args, **kwargs)

        return call

    @staticmethod
    def asarray(array: Any) -> np.ndarray:
        return np.asarray(array)

    @staticmethod
    def to_numpy(array: Any) -> np.ndarray:
        return np.asarray(array)


def implements(backend: Any, op: str) -> bool:
    """Whether ``backend`` offers ``op``: listed in its ``ops``, or a method of that name.

    A backend may offer an op it does not list yet (an op newer than the
    registry's :data:`~attnref.backend.OPS`, or one whose signature still lags
    the reference's, as the torch backend's VJPs do while they lack
    ``sinks=``); the suite times it on the cases it can run.
    """
    return op in backend.ops or callable(getattr(backend, op, None))


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def backend_object(impl: str, dtype: str = "float32") -> Any:
    """The backend (or the reference) called ``impl``; ``NotImplementedError`` (an asv skip) where unavailable."""
    if impl == REFERENCE:
        return _Reference()
    if impl == REFERENCE_PRECISION:
        return _Reference(precision=numpy_dtype(dtype))
    try:
        return attnref.get_backend(impl)
    except attnref.BackendError as exc:  # unavailable here: asv records a skip
        raise NotImplementedError(str(exc)) from exc


def backend_prepared(
    impl: str, op: str, args: Sequence[Any], kwargs: dict[str, Any], dtype: str = "float32"
) -> Prepared:
    """``impl``'s ``op`` on ``args`` (NumPy arrays, converted once with the backend's ``asarray``) and ``kwargs``.

    NumPy arrays among ``kwargs`` are converted too; ``NotImplementedError``
    (an asv skip) where the backend is unavailable or lacks the op or dtype.
    """
    backend = backend_object(impl, dtype)
    if not implements(backend, op):
        raise NotImplementedError(f"backend {impl!r} does not implement {op}")
    if dtype not in backend.dtypes:
        raise NotImplementedError(f"backend {impl!r} does not support {dtype}")
    native = [backend.asarray(a) for a in args]
    native_kwargs = {k: backend.asarray(a) if isinstance(a, np.ndarray) else a for k, a in kwargs.items()}
    method = getattr(backend, op)

    def run() -> Any:
        out = method(*native, **native_kwargs)
        first = _first(out)
        # Pull one element to the host: on an asynchronous device (CUDA) this waits for the result.
        backend.to_numpy(first[(0,) * (first.ndim - 1)][:1])
        return out

    return Prepared(run, lambda out: np.asarray(backend.to_numpy(_first(out))))


_PREPARED: dict[tuple[Any, ...], Prepared] = {}


def prepare(impl: str, case_name: str, size: int, dtype: str = "float32", *, heads: int = HEADS) -> Prepared:
    """An implementation ready to run a case (cached per process: asv re-runs set-up before every sample).

    Raises
    ------
    NotImplementedError
        The implementation cannot run this case here (backend unavailable, op or
        dtype not implemented, size too large for the float64 reference or for
        the naive baseline's dense score matrix): asv records a skip.
    """
    key = (impl, case_name, size, dtype, heads)
    if key not in _PREPARED:
        _PREPARED[key] = _prepare(impl, case_name, size, dtype, heads)
    return _PREPARED[key]


def _prepare(impl: str, case_name: str, size: int, dtype: str, heads: int) -> Prepared:
    if case_name in POOLING_CASES:
        case = POOLING_CASES[case_name]
        if impl in BASELINES:
            raise NotImplementedError("the baselines cover the multi-head ops only")
        _check_reference_size(impl, case.op, size)
        args, arrays = pooling_inputs(case, size, dtype)
        return backend_prepared(impl, case.op, args, {**case.kwargs, **arrays}, dtype)
    case = MULTIHEAD_CASES[case_name]
    _check_reference_size(impl, case.op, size)
    q, k, v = multihead_inputs(size, dtype, heads)
    if impl in BASELINES:
        from . import baselines

        return baselines.prepare(impl, case, q, k, v)
    return backend_prepared(impl, case.op, (q, k, v), case.kwargs, dtype)


def _check_reference_size(impl: str, op: str, size: int) -> None:
    if impl in (REFERENCE, REFERENCE_PRECISION) and size > REFERENCE_MAX[op]:
        raise NotImplementedError(f"the float64 reference runs {op} only up to size {REFERENCE_MAX[op]}")


def warm_up_or_skip(prepared: Prepared, impl: str, feature: str) -> float:
    """:func:`warm_up`, with a backend that lacks ``feature`` recorded as a skip (``NotImplementedError``).

    A backend declines a feature with :class:`attnref.UnsupportedError`; one
    written before the feature existed rejects its keyword argument with a
    ``TypeError`` ("unexpected keyword argument").
    """
    try:
        return warm_up(prepared)
    except attnref.UnsupportedError as exc:
        raise NotImplementedError(f"{impl} does not support {feature}: {exc}") from exc
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise NotImplementedError(f"{impl} does not support {feature}: {exc}") from exc


def warm_up(prepared: Prepared) -> float:
    """Run once (first-call costs: compilation, thread pools, page faults) and return the seconds it took."""
    if prepared.first_call_s is None:
        start = time.perf_counter()
        prepared.run()
        prepared.first_call_s = time.perf_counter() - start
    return prepared.first_call_s


def repeat_for(seconds_per_call: float) -> tuple[int, int, float]:
    """asv's ``repeat`` = (min samples, max samples, max seconds) for a call of this length.

    Calls under a second take 3 to 10 samples within about 3 s; calls of 1-2 s
    take 3; longer ones (the dense-mask baselines at L=16384 take 4-5 s) take 2,
    and calls over 10 s (dense-mask SDPA forward+backward at L=16384: about
    25 s) one, which keeps the default grid within minutes.
    """
    if seconds_per_call >= 10.0:
        return (1, 1, 0.0)
    if seconds_per_call >= 2.0:
        return (2, 2, 0.0)
    if seconds_per_call >= 1.0:
        return (3, 3, 0.0)
    return (3, 10, 3.0)


# -- accuracy -----------------------------------------------------------------------------------

_REFERENCE_OUT: dict[tuple[Any, ...], np.ndarray] = {}


def reference_output(case_name: str, size: int, dtype: str, *, heads: int = HEADS) -> np.ndarray:
    """The float64 reference's output for the same (rounded) inputs the implementations get."""
    key = (case_name, size, dtype, heads)
    if key not in _REFERENCE_OUT:
        if case_name in POOLING_CASES:
            case = POOLING_CASES[case_name]
            args, arrays = pooling_inputs(case, size, dtype)
            out = getattr(attnref.reference, case.op)(*args, **case.kwargs, **arrays)
        else:
            case = MULTIHEAD_CASES[case_name]
            out = getattr(attnref.reference, case.op)(*multihead_inputs(size, dtype, heads), **case.kwargs)
        _REFERENCE_OUT[key] = np.asarray(_first(out), dtype=np.float64)
    return _REFERENCE_OUT[key]


def max_abs_error(prepared: Prepared, expected: np.ndarray) -> float:
    """``max |out - expected|`` of one run (NaN anywhere makes it NaN)."""
    out = prepared.to_numpy(prepared.run()).astype(np.float64)
    if out.shape != expected.shape:
        raise AssertionError(f"output shape {out.shape}, expected {expected.shape}")
    return float(np.max(np.abs(out - expected)))


def check_smoke(prepared: Prepared, impl: str, case_name: str, size: int, dtype: str = "float32") -> None:
    """In the smoke run, fail loudly if an implementation computes something else than the reference."""
    if SMOKE:
        assert_matches(prepared, reference_output(case_name, size, dtype), f"{impl} on {case_name} at size {size}")


def assert_matches(prepared: Prepared, expected: np.ndarray, what: str) -> None:
    """The smoke run's check of one implementation on one case (``what``) against the reference's ``expected``."""
    error = max_abs_error(prepared, expected)
    if not error <= 1e-3:  # fp32 attention is ~1e-6 off; a wrong pattern is ~1e-1 off
        raise AssertionError(f"{what}: max |out - reference| = {error:.3g}")


# -- memory -------------------------------------------------------------------------------------


class MemoryProbe:
    """The extra peak resident memory of one call, on Linux.

    glibc keeps freed blocks for reuse; the probe first makes it hand large
    blocks back to the kernel at once (``mallopt``), so that the peak resident
    set size measures live data, then resets the kernel's high-water mark
    (``/proc/self/clear_refs``) right before the call.

    :meth:`extra_peak_bytes` raises ``NotImplementedError`` where the kernel
    offers no such reset (not Linux): asv records a skip.
    """

    _STATUS = "/proc/self/status"

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            return  # not glibc: extra_peak_bytes() still works where /proc does, less exactly
        m_trim_threshold, m_mmap_threshold = -1, -3
        # Fixed thresholds also switch off glibc's dynamic raising of them after large frees.
        libc.mallopt(m_mmap_threshold, 128 * 1024)
        libc.mallopt(m_trim_threshold, 128 * 1024)

    def _kib(self, field_name: str) -> int:
        with open(self._STATUS) as f:
            match = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.MULTILINE)
        assert match is not None, f"{field_name} missing from {self._STATUS}"
        return int(match.group(1))

    def extra_peak_bytes(self, func: Callable[[], Any]) -> int:
        """Peak resident bytes during ``func()`` above those resident before it."""
        if not os.path.exists("/proc/self/clear_refs"):
            raise NotImplementedError("the peak-memory probe needs Linux's /proc/self/clear_refs")
        before = self._kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident set size to the current one
        except OSError as exc:
            raise NotImplementedError(f"cannot reset the peak RSS: {exc}") from exc
        out = func()
        peak = self._kib("VmHWM")
        del out
        return max(peak - before, 0) * 1024


# -- the two kinds of benchmark class ---------------------------------------------------------------
# Underscore names: asv does not collect them, only the subclasses in the bench_* modules.


class _TimeSuite:
    """Set-up of the ``time_`` classes: prepare, check (smoke run), warm up, size the sample count.

    Parameters are ``(impl, *rest)``; :meth:`prepared_for` turns them into a
    :class:`Prepared` (by default a multi-head or pooling case, ``rest = (size,
    case)``; the newer suites override it).
    """

    rounds = 1  # one process per parameter set; samples are taken in it
    timeout = 600.0  # a FlexAttention compile plus three dense-mask calls at L=32768 (full grid)

    def prepared_for(self, impl: str, *params: Any) -> Prepared:
        size, case = params
        prepared = prepare(impl, case, size)
        check_smoke(prepared, impl, case, size)
        return prepared

    def setup(self, impl: str, *params: Any) -> None:
        self.prepared = self.prepared_for(impl, *params)
        # The first call happened here, so asv's own warm-up is not needed (for the
        # dense-mask baselines at L=16384 it would cost several seconds a sample).
        self.repeat = repeat_for(warm_up(self.prepared))
        self.warmup_time = 0.0


class _MemorySuite:
    """Set-up of the memory classes: glibc told to return freed memory, a small warm-up call, then prepare.

    ``peakmem_*`` (asv's peak RSS of the whole process) includes the interpreter
    and imports (see ``bench_baseline.peakmem_empty``), the inputs, and for
    ``baseline-flex`` the compilation. ``track_extra_memory`` is the peak
    resident memory during one call above that before it (MiB), plus the helper
    data the approach keeps between calls (dense mask, block mask): the figure
    to compare between implementations.

    The warm-up (:meth:`warm_up_small`) runs the same case at a small size, so
    that one-time costs of a library's first call (thread pools, BLAS buffers:
    4 to 15 MiB for torch) are not counted as the op's; ``baseline-flex`` is
    warm already, its set-up ran a full call to compile.
    """

    timeout = 600.0
    warm_up_size = 128

    def prepared_for(self, impl: str, *params: Any) -> Prepared:
        size, case = params
        return prepare(impl, case, size)

    def warm_up_small(self, impl: str, *params: Any) -> None:
        if impl != FLEX:
            prepare(impl, params[1], self.warm_up_size).run()

    def setup(self, impl: str, *params: Any) -> None:
        self.probe = MemoryProbe()
        self.warm_up_small(impl, *params)
        self.prepared = self.prepared_for(impl, *params)

    def track_extra_memory(self, impl: str, *params: Any) -> float:
        extra = self.probe.extra_peak_bytes(self.prepared.run) + self.prepared.aux_nbytes
        return extra / 2**20

    track_extra_memory.unit = "MiB"  # type: ignore[attr-defined]


class _CaseTimeSuite(_TimeSuite):
    """A ``time_`` suite over ``(impl, case)``: the ``impls`` by the named ``cases`` of one module.

    A subclass names them in its class statement, ``class Varlen(_CaseTimeSuite, impls=IMPLS,
    cases=CASES, prepare=prepare_varlen, check=check_varlen)``, and adds its ``time_`` method:
    ``prepare(impl, case)`` makes the :class:`Prepared` (``NotImplementedError`` to skip) and
    ``check(prepared, impl, case)`` compares it with the reference in the smoke run.
    """

    def __init_subclass__(
        cls, *, impls: list[str], cases: dict[str, Any], prepare: Callable[..., Prepared],
        check: Callable[..., None], **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init_subclass__(**kwargs)
        cls.params = (impls, list(cases))
        cls.param_names = ("impl", "case")
        cls.cases, cls.prepare, cls.check = cases, staticmethod(prepare), staticmethod(check)

    def prepared_for(self, impl: str, *params: Any) -> Prepared:
        case = self.cases[params[0]]
        prepared = self.prepare(impl, case)
        self.check(prepared, impl, case)
        return prepared


class _CaseMemorySuite(_MemorySuite):
    """The memory suite of the same ``(impl, case)`` grid (see :class:`_CaseTimeSuite`); its warm-up
    runs ``warm_up_case``, a small case of the same kind."""

    def __init_subclass__(
        cls, *, impls: list[str], cases: dict[str, Any], prepare: Callable[..., Prepared], warm_up_case: Any,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init_subclass__(**kwargs)
        cls.params = (impls, list(cases))
        cls.param_names = ("impl", "case")
        cls.cases, cls.prepare, cls.warm_up_case = cases, staticmethod(prepare), warm_up_case

    def prepared_for(self, impl: str, *params: Any) -> Prepared:
        return self.prepare(impl, self.cases[params[0]])

    def warm_up_small(self, impl: str, *params: Any) -> None:
        self.prepare(impl, self.warm_up_case).run()


# -- distance to the machine's matmul peak ------------------------------------------------------------

#: Size of the square fp32 GEMM that stands for the machine's matmul peak.
GEMM_N = grid(smoke=[512], default=[4096], full=[4096])[0]


def gemm_calls() -> dict[str, Callable[[], Any]]:
    """fp32 ``(N, N) @ (N, N)`` calls of the libraries present (NumPy, and torch on the CPU)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32) for _ in range(2))
    calls: dict[str, Callable[[], Any]] = {"numpy": lambda: a @ b}
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        calls["torch"] = lambda: ta @ tb
    return calls


def _seconds(func: Callable[[], Any]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def best_alternately(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """The best seconds of each call, the calls timed in turn ``rounds`` times in one process
    (after a warm-up call each), so that load from other processes hits them alike: the way a
    ratio of two calls is measured here."""
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            best[name] = min(best[name], _seconds(call))
    return best


def fraction_of_matmul(prepared: Prepared, useful_flops: float, rounds: int = 3) -> float:
    """Useful throughput of ``prepared`` over the faster library's fp32 GEMM throughput.

    The attention call and the GEMMs alternate in one process, ``rounds``
    rounds, best time of each, so that load from other processes hits both
    alike. CPU only (the GEMMs run on the host).
    """
    warm_up(prepared)
    best = best_alternately({**gemm_calls(), "attention": prepared.run}, rounds)
    attention = useful_flops / best.pop("attention")
    matmul = max(2 * GEMM_N**3 / t for t in best.values())
    return attention / matmul


def allowed_pairs(pattern: Pattern, length: int, rows: int = 512) -> int:
    """The number of allowed (query, key) pairs of ``pattern`` with ``length`` queries and keys.

    ``4 * B * H * D`` times this is the useful work of one call, in flops (two
    products of ``2 * D`` flops per pair); counted with :meth:`Pattern.allows`
    over the key range of each query block of :meth:`Pattern.plan_blocks`,
    never an ``L x L`` array.
    """
    total = 0
    for block in pattern.plan_blocks(length, length, block_rows=rows):
        if not block.empty:
            p = np.arange(block.start, block.stop)[:, None]
            j = np.arange(block.key_start, block.key_stop)[None, :]
            total += int(np.count_nonzero(pattern.allows(p, j)))
    return total


class _ThroughputSuite:
    """``track_fraction_of_matmul`` of a multi-head case: ``(impl, L, pattern)``."""

    timeout = 600.0

    def setup(self, impl: str, size: int, case: str) -> None:
        self.prepared = prepare(impl, case, size)
        self.useful_flops = 4 * BATCH * HEADS * HEAD_DIM * allowed_pairs(MULTIHEAD_CASES[case].pattern, size)

    def track_fraction_of_matmul(self, impl: str, size: int, case: str) -> float:
        return fraction_of_matmul(self.prepared, self.useful_flops)

    track_fraction_of_matmul.unit = "fraction"  # type: ignore[attr-defined]
