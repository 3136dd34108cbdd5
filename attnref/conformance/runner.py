"""Run conformance cases on backends and collect the results.

The runner reaches a backend only through the registry and the backend's
``asarray``/``to_numpy`` adapters and op methods; it never imports a backend's
array library. For one case on one backend and dtype it:

1. says ``unsupported`` when the backend does not declare the op or the dtype;
2. rounds the case's floating inputs to the dtype;
3. for an error case, asks the reference which error class it raises and
   checks that the backend raises the same (``ValueError`` or ``TypeError``);
4. otherwise runs the reference on the rounded inputs three times (float64;
   ``precision=`` the dtype; float64 on inputs moved by one rounding: see
   :mod:`attnref.conformance.tolerance`), runs the backend, checks that it left
   its inputs alone and what it returned (how many arrays, their shapes and
   dtypes), and applies the pass rule to every array.

A backend op that raises on a valid case gets ``error`` with the exception's
text, and the run goes on.
"""

from __future__ import annotations

import math
import re
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attnref.conformance.cases import GRADIENT_OF, MULTIHEAD_OPS, Case, Host
from attnref.conformance.layouts import native_layout
from attnref.conformance.randomness import case_rng
from attnref.conformance.selection import XfailEntry, find_xfail
from attnref.conformance.tolerance import GRADIENT_FACTOR, NAIVE_FACTOR, Verdict, judge, largest, unit_roundoff
from attnref.dtypes import DTYPE_NAMES, numpy_dtype
from attnref.errors import BackendError, BackendNotFoundError, BackendUnavailableError, UnsupportedError

__all__ = [
    "STATUSES",
    "Result",
    "Target",
    "BackendReport",
    "Report",
    "ReferenceCache",
    "rounded_inputs",
    "names_argument",
    "run_case",
    "save_case",
    "resolve_targets",
    "run_suite",
]

STATUSES: tuple[str, ...] = ("pass", "fail", "error", "unsupported")


@dataclass
class Result:
    """The outcome of one case on one backend and dtype.

    ``err`` and ``allowed`` are the worst returned array's error and bound
    (``None`` for error cases, errors and unsupported cases; ``err`` is
    ``inf`` when a NaN or infinity does not match). ``feature`` names what an
    ``unsupported`` result lacks (the op, the dtype, or the feature of an
    :class:`attnref.UnsupportedError`). ``description`` and ``parameters``
    describe the case, so that a failure can be reproduced from the JSON
    alone; ``xfail`` is the reason of the xfail entry the test matched.
    ``trace`` holds the traceback of an ``error`` (not part of the JSON report).
    """

    op: str
    case: str
    dtype: str
    status: str
    err: float | None = None
    allowed: float | None = None
    detail: str | None = None
    trace: str | None = None
    feature: str | None = None
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    xfail: str | None = None

    @property
    def key(self) -> str:
        """``"op/case/dtype"``: the id used by pytest and the xfail files."""
        return f"{self.op}/{self.case}/{self.dtype}"

    @property
    def ratio(self) -> float:
        """How far past its bound the worst array is (``err / allowed``)."""
        if self.err is None or self.allowed is None:
            return math.inf if self.status == "error" else 0.0
        if self.err == 0:
            return 0.0
        return math.inf if self.allowed == 0 else self.err / self.allowed

    def as_json(self) -> dict[str, Any]:
        """The entry of the JSON report (non-finite errors become ``null``)."""

        def number(x: float | None) -> float | None:
            return x if x is not None and math.isfinite(x) else None

        return {
            "op": self.op,
            "case": self.case,
            "dtype": self.dtype,
            "status": self.status,
            "err": number(self.err),
            "allowed": number(self.allowed),
            "detail": self.detail,
            "feature": self.feature,
            "xfail": self.xfail,
            "description": self.description,
            "parameters": self.parameters,
        }

    @property
    def counts_as_failure(self) -> bool:
        """A fail or error that no xfail entry expected."""
        return self.status in ("fail", "error") and self.xfail is None


class ReferenceCache:
    """The reference runs of each (case, dtype) (or the error class it raises), computed once, shared by backends."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, str], Any] = {}

    def get(self, key: tuple[str, str], compute: Callable[[], Any]) -> Any:
        """The stored value of ``key``, computing it first if needed."""
        if key not in self._store:
            self._store[key] = compute()
        return self._store[key]


def _reference(op: str) -> Callable[..., Any]:
    import attnref.reference

    return getattr(attnref.reference, op)


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def rounded_inputs(case: Case, dtype: str) -> dict[str, np.ndarray]:
    """The floating inputs rounded to ``dtype`` (those in ``case.other_dtype`` to another dtype)."""
    dt = numpy_dtype(dtype)
    other = numpy_dtype("float64" if dtype == "float32" else "float32")
    with np.errstate(over="ignore"):
        return {
            name: np.asarray(a).astype(other if name in case.other_dtype else dt) for name, a in case.inputs.items()
        }


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


#: Above this many scores the sensitivity run moves the inputs only (see :mod:`attnref.conformance.tolerance`).
SCORE_MOVE_LIMIT = 2**24


def _score_magnitudes(case: Case, inputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """``|s_ij|`` of a dense multi-head case, ``(B, Hq, Lq, Lk)``, after the softcap and before the
    bias (``None`` for other ops): the size of one rounding of each score, in units of ``u``."""
    if case.op.removesuffix("_vjp") not in MULTIHEAD_OPS or "cu_seqlens_q" in case.options:
        return None
    q, k = (np.asarray(inputs[name], dtype=np.float64) for name in ("q", "k"))
    if q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] > SCORE_MOVE_LIMIT:
        return None  # a dense bias would make the reference O(Lq x Lk): the long tier moves the inputs only
    group = q.shape[1] // k.shape[1]
    scale = case.options.get("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    with np.errstate(all="ignore"):
        s = scale * np.einsum("bhid,bhjd->bhij", q, np.repeat(k, group, axis=1))
        softcap = case.options.get("softcap")
        if softcap is not None:
            s = float(softcap) * np.tanh(s / float(softcap))
    return np.nan_to_num(np.abs(s), nan=0.0, posinf=0.0)  # a NaN score is NaN however it moves


def _moved(case: Case, inputs: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The inputs in float64 with each entry, and each score, moved by one rounding of ``dtype``
    (fixed random signs): see :mod:`attnref.conformance.tolerance`."""
    rng = case_rng(f"{case.key}/moved")
    u = unit_roundoff(dtype)
    moved = {}
    for name, a in inputs.items():
        signs = rng.choice([-1.0, 1.0], size=np.shape(a))
        with np.errstate(invalid="ignore"):  # inf stays inf, NaN stays NaN
            moved[name] = np.asarray(a, dtype=np.float64) * (1.0 + u * signs)
    magnitudes = _score_magnitudes(case, inputs)
    if magnitudes is not None:
        step = u * magnitudes * rng.choice([-1.0, 1.0], size=magnitudes.shape)
        moved["bias"] = moved["bias"] + step if "bias" in moved else step
    return moved


def _sum_to_shape(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` summed over the axes that broadcasting a ``shape`` array to its shape added or stretched."""
    lead = array.ndim - len(shape)
    stretched = (lead + n for n, size in enumerate(shape) if size == 1 and array.shape[lead + n] != 1)
    axes = tuple(range(lead)) + tuple(stretched)
    return np.asarray(array).sum(axis=axes, keepdims=True).reshape(shape)


def _outputs_by_name(case: Case, values: Any, bias_added: bool) -> dict[str, Any]:
    """The moved run's outputs by name. Its bias carries the score perturbation in the full scores'
    shape, so its ``dbias`` is summed back to the case's bias shape (the chain rule of the broadcast)."""
    names = list(case.outputs)
    if bias_added and "dbias" not in names and case.op.endswith("_vjp"):
        names.insert(3, "dbias")
    outputs = dict(zip(names, _as_tuple(values), strict=True))
    if "dbias" in outputs and "bias" in case.inputs:
        outputs["dbias"] = _sum_to_shape(outputs["dbias"], np.shape(case.inputs["bias"]))
    return outputs


def _reference_runs(case: Case, inputs: dict[str, np.ndarray], dtype: str) -> tuple[tuple, tuple, tuple]:
    """``(ref64, naive, moved)``: the reference in float64, at ``precision=dtype``, and in
    float64 on inputs and scores moved by one rounding (see :mod:`attnref.conformance.tolerance`)."""
    fn = _reference(case.op)
    args, kwargs = case.arguments(inputs, lambda a: a)
    moved_inputs = _moved(case, inputs, dtype)
    moved_args, moved_kwargs = case.arguments(moved_inputs, lambda a: a)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = _as_tuple(fn(*args, **kwargs))
        naive = _as_tuple(fn(*args, **kwargs, precision=dtype))
        moved = _outputs_by_name(case, fn(*moved_args, **moved_kwargs), "bias" not in inputs and "bias" in moved_inputs)
    return ref, naive, tuple(moved[name] for name in case.outputs)


def _reference_error(case: Case, inputs: dict[str, np.ndarray]) -> tuple[type[BaseException], str] | None:
    """The class of the reference's error on these inputs and the argument its message names."""
    fn = _reference(case.op)
    args, kwargs = case.arguments(inputs, lambda a: a)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            fn(*args, **kwargs)
    except Exception as exc:
        return type(exc), str(exc).partition(": expected")[0]
    return None


def _error_class(cls: type[BaseException]) -> type[BaseException]:
    """The built-in class a backend's error must belong to."""
    for base in (ValueError, TypeError):
        if issubclass(cls, base):
            return base
    return cls


def names_argument(message: str, argument: str) -> bool:
    """Whether ``message`` names ``argument`` as a word (``q`` in ``"q: expected..."``, not in ``"seq"``)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(argument)}(?![A-Za-z0-9_])", message) is not None


def _native_inputs(backend: Any, case: Case, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: native_layout(backend, a, case.layouts.get(name)) for name, a in inputs.items()}


def _call_backend(backend: Any, case: Case, inputs: dict[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """The op's return value, and the native inputs it was given."""
    native = _native_inputs(backend, case, inputs)
    args, kwargs = case.arguments(native, backend.asarray)
    return getattr(backend, case.op)(*args, **kwargs), native


def _modified_input(backend: Any, inputs: dict[str, np.ndarray], native: dict[str, Any]) -> str | None:
    """The name of an input the op changed in place (``None`` if it changed none)."""
    for name, before in inputs.items():
        after = np.asarray(backend.to_numpy(native[name]))
        if after.shape != before.shape or not np.array_equal(after, before, equal_nan=True):
            return name
    return None


def _unsupported(result: Result, exc: UnsupportedError) -> Result:
    return _with(result, "unsupported", feature=exc.feature, detail=_exception_text(exc))


def _run_error_case(backend: Any, case: Case, dtype: str, inputs: dict[str, np.ndarray], cache: ReferenceCache):
    base = _result(case, dtype)
    expected = cache.get((case.key, dtype), lambda: _reference_error(case, inputs))
    if expected is None:
        return _with(base, "error", detail="catalogue problem: the reference accepts this error case")
    want, argument = _error_class(expected[0]), expected[1]
    names = (argument, *case.names)
    try:
        _call_backend(backend, case, inputs)
    except UnsupportedError as exc:
        return _unsupported(base, exc)
    except Exception as exc:
        if not isinstance(exc, want):
            return _with(base, "fail", detail=f"raised {_exception_text(exc)}; the reference raises {want.__name__}")
        if not any(names_argument(str(exc), name) for name in names):
            return _with(
                base, "fail", detail=f"raised {_exception_text(exc)}: the message must name {' or '.join(names)}"
            )
        return base
    return _with(base, "fail", detail=f"accepted invalid input ({case.note}); the reference raises {want.__name__}")


def _with(result: Result, status: str, **changes: Any) -> Result:
    result.status = status
    for name, value in changes.items():
        setattr(result, name, value)
    return result


def _result(case: Case, dtype: str, status: str = "pass", **changes: Any) -> Result:
    return Result(case.op, case.id, dtype, status, description=case.note, parameters=case.parameters(), **changes)


def _check_array(name: str, array: Any, ref: np.ndarray, dtype: str, exact_dtype: bool) -> str | None:
    """Why ``array`` does not have the shape and dtype it should (``None`` if it does)."""
    if not isinstance(array, np.ndarray):
        return f"{name}: to_numpy returned {type(array).__name__}, not a NumPy array"
    if array.shape != ref.shape:
        return f"{name}: shape {array.shape}, expected {ref.shape}"
    got = str(array.dtype)
    if exact_dtype and got != dtype:
        return f"{name}: dtype {got}, expected {dtype} (the input dtype)"
    if not exact_dtype and (got not in DTYPE_NAMES or DTYPE_NAMES.index(got) < DTYPE_NAMES.index(dtype)):
        return f"{name}: dtype {got}, expected {dtype} or a more precise floating dtype"
    return None


def _run_value_case(backend: Any, case: Case, dtype: str, inputs: dict[str, np.ndarray], cache: ReferenceCache):
    base = _result(case, dtype)
    ref, naive, moved = cache.get((case.key, dtype), lambda: _reference_runs(case, inputs, dtype))
    try:
        returned, native = _call_backend(backend, case, inputs)
    except UnsupportedError as exc:
        return _unsupported(base, exc)
    except Exception as exc:
        return _with(base, "error", detail=_exception_text(exc), trace=traceback.format_exc(limit=-8))
    changed = _modified_input(backend, inputs, native)
    if changed is not None:
        return _with(base, "fail", detail=f"the op modified its input {changed} in place")
    names = case.outputs
    if len(names) == 1 and isinstance(returned, (tuple, list)):
        return _with(base, "fail", detail=f"returned a {type(returned).__name__}; expected the array {names[0]} alone")
    if len(names) > 1 and not (isinstance(returned, (tuple, list)) and len(returned) == len(names)):
        return _with(base, "fail", detail=f"returned {type(returned).__name__}; expected ({', '.join(names)})")
    try:
        arrays = [backend.to_numpy(a) for a in _as_tuple(returned)]
    except Exception as exc:
        return _with(base, "error", detail=f"to_numpy: {_exception_text(exc)}", trace=traceback.format_exc(limit=-8))
    factor = GRADIENT_FACTOR if case.op.endswith("_vjp") else NAIVE_FACTOR
    gradient_scale = _gradient_scale(case, inputs, ref)
    verdicts: list[Verdict] = []
    for index, (name, got) in enumerate(zip(names, arrays, strict=True)):
        problem = _check_array(name, got, ref[index], case.output_dtype(name, dtype), exact_dtype=case.exact(name))
        if problem is not None:
            return _with(base, "fail", detail=problem)
        terms = gradient_scale if gradient_scale is not None else inputs.get(case.terms.get(name, ""))
        verdicts.append(judge(name, got, ref[index], naive[index], dtype, terms, moved[index], factor))
    worst = max(verdicts, key=lambda v: (not v.ok, v.ratio))
    status = "pass" if all(v.ok for v in verdicts) else "fail"
    return _with(base, status, err=worst.err, allowed=worst.allowed, detail=None if worst.ok else worst.detail)


def _gradient_scale(case: Case, inputs: dict[str, np.ndarray], ref: tuple) -> np.ndarray | None:
    """The floor's scale of every gradient of a VJP case: the size of the terms a backward pass adds up.

    One backward pass accumulates every gradient from the same ``dS = P * (dP - delta + dlse)`` and
    ``dout``, and it rounds at the size of the terms it adds, not of their sum: as ``out``'s floor is
    sized by the values ``v`` it averages, a ``dq`` of 26 can be the sum of terms of 100 and carry
    rounding errors of 100's size. With ``sum_j P_ij <= 1`` and
    ``|dS_ij| <= P_ij * (|dout_i . v_j| + |dout_i . out_i| + |dlse_i|)``, the terms of one row add up to
    at most ``T = max_i (2 * ||dout_i||_1 * max|v| + |dlse_i|)``; those of ``dq_i = scale * sum_j dS_ij k_j``
    and ``dk_j = scale * sum_i dS_ij q_i`` to ``|scale| * T * max|k|`` and ``|scale| * T * max|q|`` (a
    softcap's slope is at most 1), those of ``dv_j = sum_i P_ij dout_i`` to ``max|dout|``. The scale is
    the largest of these and of the gradients themselves (a small ``dk`` can be the difference of large
    terms). It is computed from the inputs alone, in ``O(size of the inputs)``: no dense ``P`` is
    formed, so the long tier can use it. ``None`` for forward ops.
    """
    if case.op not in GRADIENT_OF:
        return None
    dout, dlse = inputs.get("dout"), inputs.get("dlse")
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    with np.errstate(invalid="ignore", over="ignore"):
        dout_rows = None if dout is None else np.abs(np.asarray(dout, dtype=np.float64)).sum(axis=-1)
    row_terms = 2 * largest(dout_rows) * largest(v) + largest(dlse)
    scale = case.options.get("scale")
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else abs(float(scale))
    score_terms = scale * row_terms * max(largest(q), largest(k))
    return np.array([max(largest(r) for r in ref), largest(dout), row_terms, score_terms])


def run_case(backend: Any, case: Case, dtype: str, cache: ReferenceCache | None = None) -> Result:
    """Run one case on ``backend`` in ``dtype`` and judge it.

    Parameters
    ----------
    backend : Backend
        Any object following :class:`attnref.backend.Backend`.
    case : Case
    dtype : str
        One of :data:`attnref.dtypes.DTYPE_NAMES`.
    cache : ReferenceCache, optional
        Shares the reference runs between backends.
    """
    # Not run: no parameters (they would build a long case's arrays for nothing).
    if case.op not in backend.ops:
        detail = f"backend does not implement {case.op}"
        return Result(case.op, case.id, dtype, "unsupported", feature=case.op, detail=detail, description=case.note)
    if dtype not in backend.dtypes:
        detail = f"backend does not support {dtype}"
        return Result(case.op, case.id, dtype, "unsupported", feature=dtype, detail=detail, description=case.note)
    cache = cache if cache is not None else ReferenceCache()
    inputs = rounded_inputs(case, dtype)
    try:
        if case.expect_error:
            return _run_error_case(backend, case, dtype, inputs, cache)
        return _run_value_case(backend, case, dtype, inputs, cache)
    except Exception as exc:  # asarray or the harness itself: reported, the run goes on
        return _result(case, dtype, "error", detail=_exception_text(exc), trace=traceback.format_exc())


def save_case(case: Case, dtypes: Sequence[str], path: Any) -> None:
    """Write ``case`` to the ``.npz`` file ``path``: for every dtype its rounded inputs and the
    reference's outputs (``ref64``, and ``naive`` at that precision), with its description.

    Keys: ``description``, ``parameters`` (JSON text), ``<dtype>/input/<name>``, ``<dtype>/option/<name>``
    (array options), ``<dtype>/ref64/<output>`` and ``<dtype>/naive/<output>``; for an error case
    ``<dtype>/error`` holds the reference's error class and message.
    """
    import json

    arrays: dict[str, np.ndarray] = {
        "description": np.array(f"{case.key}: {case.note}"),
        "parameters": np.array(json.dumps(case.parameters())),
    }
    for dtype in dtypes:
        inputs = rounded_inputs(case, dtype)
        for name, a in inputs.items():
            arrays[f"{dtype}/input/{name}"] = a
        for name, value in case.options.items():
            value = value.value if isinstance(value, Host) else value
            if isinstance(value, np.ndarray):
                arrays[f"{dtype}/option/{name}"] = value
        if case.expect_error:
            cls, argument = _reference_error(case, inputs) or (type(None), "")
            arrays[f"{dtype}/error"] = np.array(f"{cls.__name__} naming {argument}")
            continue
        ref, naive, _ = _reference_runs(case, inputs, dtype)
        for name, r, n in zip(case.outputs, ref, naive, strict=True):
            arrays[f"{dtype}/ref64/{name}"] = np.asarray(r)
            arrays[f"{dtype}/naive/{name}"] = np.asarray(n).astype(np.float64)
    with open(path, "wb") as file:
        np.savez_compressed(file, **arrays)


# -- whole runs --------------------------------------------------------------
@dataclass
class Target:
    """A backend selected for a run: its object, or why it cannot run.

    ``named`` is True when the user asked for it by name (``--backend``): then
    not being able to run it is an error, not a note.
    """

    name: str
    backend: Any = None
    reason: str | None = None
    named: bool = False

    @property
    def available(self) -> bool:
        """Whether the backend can run here."""
        return self.backend is not None


def resolve_targets(names: Sequence[str] | None = None, registry: Any = None) -> list[Target]:
    """The backends to run: ``names``, or every registered one.

    A backend that is unavailable or failed to load becomes a target with a
    ``reason``; an unknown name raises
    :class:`~attnref.errors.BackendNotFoundError`.
    """
    from attnref.registry import default_registry

    registry = registry if registry is not None else default_registry()
    chosen = list(dict.fromkeys(names)) if names else registry.names(include_unavailable=True)
    targets = []
    for name in chosen:
        try:
            targets.append(Target(name, backend=registry.get(name), named=bool(names)))
        except BackendNotFoundError:
            raise
        except BackendUnavailableError:
            reasons = {s.backend: s.detail for s in registry.statuses() if s.state == "unavailable"}
            targets.append(Target(name, reason=reasons.get(name) or "unavailable", named=bool(names)))
        except BackendError as exc:  # e.g. two plugins claim the name: reported, not run
            targets.append(Target(name, reason=str(exc), named=bool(names)))
    return targets


@dataclass
class BackendReport:
    """The results of one backend (empty, with a reason, when it is unavailable)."""

    name: str
    available: bool
    reason: str | None = None
    version: str | None = None
    results: list[Result] = field(default_factory=list)
    named: bool = False
    skipped: int = 0  # tests an xfail file's ``skip`` entries left out

    def summary(self) -> dict[str, int]:
        """Counts by status (the contract's four), plus ``xfailed``: failures an xfail entry expected."""
        counts = dict.fromkeys(STATUSES, 0)
        for r in self.results:
            counts[r.status] += 1
        counts["xfailed"] = sum(r.status in ("fail", "error") and r.xfail is not None for r in self.results)
        return counts

    def unsupported_features(self) -> dict[str, int]:
        """How many tests each missing feature (op, dtype or ``UnsupportedError`` feature) made unsupported."""
        counts: dict[str, int] = {}
        for r in self.results:
            if r.status == "unsupported":
                counts[r.feature or "?"] = counts.get(r.feature or "?", 0) + 1
        return dict(sorted(counts.items()))

    def as_json(self) -> dict[str, Any]:
        """The backend's entry in the JSON report."""
        return {
            "available": self.available,
            "reason": self.reason,
            "summary": self.summary(),
            "unsupported_features": self.unsupported_features(),
            "cases": [r.as_json() for r in self.results],
        }


@dataclass
class Report:
    """The results of a whole run; ``strict`` makes ``unsupported`` a failure."""

    backends: dict[str, BackendReport] = field(default_factory=dict)
    strict: bool = False

    def problems(self) -> list[str]:
        """Why the run is not a PASS, one line each (empty when it is)."""
        lines = []
        for name, entry in self.backends.items():
            if not entry.available and entry.named:
                lines.append(f"backend {name!r} was asked for but cannot run: {entry.reason}")
            failed = sum(r.counts_as_failure for r in entry.results)
            if failed:
                lines.append(f"backend {name!r}: {failed} tests failed or errored")
            unsupported = entry.summary()["unsupported"]
            if self.strict and unsupported:
                features = ", ".join(entry.unsupported_features())
                lines.append(f"backend {name!r}: {unsupported} tests unsupported (--strict): {features}")
        ran = sum(r.status != "unsupported" for entry in self.backends.values() for r in entry.results)
        if ran == 0:
            lines.append("no case ran (no available backend, or every selected test was unsupported or filtered out)")
        return lines

    @property
    def ok(self) -> bool:
        """True when every named backend ran, some case ran, and nothing failed or errored."""
        return not self.problems()

    def as_json(self) -> dict[str, Any]:
        """The JSON report of the contract (section 5)."""
        from attnref import __version__

        return {"attnref": __version__, "backends": {n: b.as_json() for n, b in self.backends.items()}}


def run_suite(
    targets: Iterable[Target],
    cases: Sequence[Case],
    dtypes: Sequence[str] = DTYPE_NAMES,
    *,
    cache: ReferenceCache | None = None,
    on_result: Callable[[str, Result], None] | None = None,
    xfails: Sequence[XfailEntry] = (),
    select: Callable[[str], bool] | None = None,
    strict: bool = False,
) -> Report:
    """Run every case in every dtype on every available target.

    ``select(test_id)`` keeps a test (``-k``); an xfail entry marks the
    failures it expects (``skip`` entries are not run). ``on_result(backend_name,
    result)`` is called after each case (for a progress bar). Unavailable
    targets are reported with their reason.
    """
    cache = cache if cache is not None else ReferenceCache()
    report = Report(strict=strict)
    tests = [(case, dtype) for case in cases for dtype in dtypes if select is None or select(f"{case.key}/{dtype}")]
    for target in targets:
        if not target.available:
            report.backends[target.name] = BackendReport(target.name, False, reason=target.reason, named=target.named)
            continue
        version = str(getattr(target.backend, "version", ""))
        entry = report.backends[target.name] = BackendReport(target.name, True, version=version, named=target.named)
        for case, dtype in tests:
            expected = find_xfail(xfails, f"{case.key}/{dtype}")
            if expected is not None and expected.skip:
                expected.matched += 1
                entry.skipped += 1
                continue
            result = run_case(target.backend, case, dtype, cache)
            if expected is not None:
                expected.matched += 1
                if result.status in ("fail", "error"):
                    result.xfail = expected.reason
                    expected.xfailed += 1
                elif result.status == "pass":
                    expected.xpassed += 1
            entry.results.append(result)
            if on_result is not None:
                on_result(target.name, result)
    return report
