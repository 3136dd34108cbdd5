"""The runner: statuses, output checks, error cases, whole runs and the JSON report."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from planted import ToyBackend, toy_registry

from attnref.conformance.cases import Case, named_cases
from attnref.conformance.runner import ReferenceCache, Target, resolve_targets, run_case, run_suite
from attnref.errors import BackendNotFoundError


def _case(op: str, case_id: str) -> Case:
    from attnref.conformance.cases import error_cases

    return next(c for c in named_cases(op) + error_cases(op) if c.id == case_id)


def test_unsupported_ops_and_dtypes_are_reported_not_failed() -> None:
    toy = ToyBackend(ops=frozenset({"global_attention"}), dtypes=frozenset({"float32"}))
    assert run_case(toy, _case("local_attention", "basic"), "float32").status == "unsupported"
    result = run_case(toy, _case("global_attention", "basic"), "float16")
    assert result.status == "unsupported" and "float16" in result.detail
    assert run_case(toy, _case("global_attention", "basic"), "float32").status == "pass"


class _Raising(ToyBackend):
    def global_attention(self, q: Any, k: Any, v: Any, **options: Any) -> Any:
        if options.get("softcap") is not None:
            raise RuntimeError("softcap is not implemented on this device")
        return super().global_attention(q, k, v, **options)


def test_a_raising_op_is_an_error_and_the_run_goes_on() -> None:
    cases = [_case("global_attention", i) for i in ("basic", "softcap", "bias")]
    report = run_suite([Target("raising", _Raising())], cases, ["float32"])
    statuses = {r.case: r for r in report.backends["raising"].results}
    assert statuses["basic"].status == statuses["bias"].status == "pass"
    error = statuses["softcap"]
    assert error.status == "error" and error.err is None
    assert error.detail == "RuntimeError: softcap is not implemented on this device"
    assert "RuntimeError" in error.trace and not report.ok


class _Wrong(ToyBackend):
    """Returns well-computed answers in the wrong container, shape or dtype."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def global_attention(self, q: Any, k: Any, v: Any, **options: Any) -> Any:
        out = super().global_attention(q, k, v, **options)
        first, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if self.how == "shape":
            first = first[..., :-1]
        elif self.how == "dtype":
            first = first.astype(np.float64)
        elif self.how == "tuple":
            return (first,)
        elif self.how == "lse-float64":
            rest = tuple(r.astype(np.float64) for r in rest)
        elif self.how == "lse-float16":
            rest = tuple(r.astype(np.float16) for r in rest)
        return (first, *rest) if rest else first


@pytest.mark.parametrize(
    ("how", "case_id", "status", "words"),
    [
        ("shape", "basic", "fail", "out: shape"),
        ("dtype", "basic", "fail", "out: dtype float64, expected float32"),
        ("tuple", "out-only", "fail", "expected the array out alone"),
        ("lse-float64", "basic", "pass", None),  # a more precise lse is fine (FlashAttention returns float32)
        ("lse-float16", "basic", "fail", "lse: dtype float16"),
    ],
)
def test_returned_arrays_are_checked(how: str, case_id: str, status: str, words: str | None) -> None:
    result = run_case(_Wrong(how), _case("global_attention", case_id), "float32")
    assert result.status == status
    if words:
        assert words in result.detail


class _ToNumpyFails(ToyBackend):
    def to_numpy(self, array: Any) -> Any:
        raise OSError("device lost")


def test_a_failing_to_numpy_is_an_error() -> None:
    result = run_case(_ToNumpyFails(), _case("global_attention", "basic"), "float64")
    assert result.status == "error" and "device lost" in result.detail


class _WrongErrors(ToyBackend):
    def local_attention(self, q: Any, k: Any, v: Any, *, window: Any, **options: Any) -> Any:
        if window == -2:
            raise TypeError("window must be a tuple")  # the reference raises ValueError
        if window == "2":
            raise IndexError("deep inside")
        return super().local_attention(q, k, v, window=window, **options)


def test_error_cases_need_the_reference_error_class() -> None:
    backend = _WrongErrors()
    passed = run_case(backend, _case("local_attention", "error-window-side-negative"), "float64")
    assert passed.status == "pass"  # the toy validates with attnref's own checks
    wrong = run_case(backend, _case("local_attention", "error-window-negative"), "float64")
    assert wrong.status == "fail" and "TypeError: window must be a tuple" in wrong.detail
    assert "the reference raises ValueError" in wrong.detail
    deep = run_case(backend, _case("local_attention", "error-window-str"), "float64")
    assert deep.status == "fail" and "IndexError" in deep.detail and "TypeError" in deep.detail


def test_options_reach_the_backend_as_native_arrays() -> None:
    seen: list[Any] = []

    class Native(ToyBackend):
        def asarray(self, array: Any) -> Any:
            seen.append(array.dtype)
            return super().asarray(array)

    run_case(Native(), _case("global_attention", "mask"), "bfloat16")
    assert {str(d) for d in seen} >= {"bfloat16", "bool"}


def test_resolve_targets_reports_unavailable_and_rejects_unknown_names() -> None:
    class Away(ToyBackend):
        unavailable_reason = "no GPU here"

    registry = toy_registry(ToyBackend(), Away(name="gpu"))
    targets = {t.name: t for t in resolve_targets(None, registry)}
    assert targets["toy"].available and not targets["gpu"].available
    assert targets["gpu"].reason == "no GPU here"
    assert [t.name for t in resolve_targets(["gpu"], registry)] == ["gpu"]
    with pytest.raises(BackendNotFoundError, match="nope"):
        resolve_targets(["nope"], registry)


def test_json_report_has_the_contract_format() -> None:
    cases = [_case("global_attention", "basic"), _case("global_attention", "error-scale-zero")]
    targets = [Target("toy", ToyBackend(dtypes=frozenset({"float32"}))), Target("gpu", reason="no GPU")]
    report = run_suite(targets, cases, ["float16", "float32"], cache=ReferenceCache())
    data = json.loads(json.dumps(report.as_json(), allow_nan=False))
    assert set(data) == {"attnref", "backends"} and isinstance(data["attnref"], str)
    toy, gpu = data["backends"]["toy"], data["backends"]["gpu"]
    assert set(toy) == {"available", "reason", "summary", "unsupported_features", "cases"}
    assert toy["available"] is True and toy["reason"] is None
    assert toy["summary"] == {"pass": 2, "fail": 0, "error": 0, "unsupported": 2, "xfailed": 0}
    assert toy["unsupported_features"] == {"float16": 2}
    assert gpu == {
        "available": False,
        "reason": "no GPU",
        "summary": dict.fromkeys(toy["summary"], 0),
        "unsupported_features": {},
        "cases": [],
    }
    for entry in toy["cases"]:
        assert set(entry) == {"op", "case", "dtype", "status", "err", "allowed", "detail", "feature", "xfail",
                              "description", "parameters"}  # fmt: skip
        assert entry["description"]
        if entry["status"] != "unsupported":  # a case not run does not build its inputs
            assert entry["parameters"]["inputs"]["q"] in ([2, 2, 6, 8], [2, 2, 4, 3])
    value = next(e for e in toy["cases"] if e["case"] == "basic" and e["dtype"] == "float32")
    assert isinstance(value["err"], float) and value["err"] <= value["allowed"] and value["detail"] is None
    error = next(e for e in toy["cases"] if e["case"] == "error-scale-zero" and e["dtype"] == "float32")
    assert error["status"] == "pass" and error["err"] is None and error["allowed"] is None


def test_non_finite_errors_become_null_in_json() -> None:
    toy = ToyBackend({"nan-empty-rows"})
    result = run_case(toy, _case("global_attention", "mask"), "float64")
    assert result.status == "fail" and result.err == float("inf")
    entry = result.as_json()
    assert entry["err"] is None and "nan where the reference has 0" in entry["detail"]


def test_the_cache_shares_reference_runs_between_backends() -> None:
    cache = ReferenceCache()
    case = _case("global_attention", "basic")
    run_case(ToyBackend(), case, "float16", cache)
    calls: list[int] = []
    cache.get((case.key, "float16"), lambda: calls.append(1))
    assert calls == []  # computed once, by the first backend


def test_the_gradient_floor_is_sized_by_the_terms_a_backward_pass_adds() -> None:
    """The bound behind the gradient floor's scale holds: no row's ``|dq|``/``|dk|``/``|dv|`` terms add up to more.

    A float64 ``dq`` of 26 that is the sum of terms of 100 carries rounding errors of 100's size (found on
    ``chunked_attention_vjp/random-s0-000``, where an honest backend's ``dq`` was 8 ulps off).
    """
    from attnref.conformance.runner import _gradient_scale
    from attnref.reference import global_attention

    rng = np.random.default_rng(7)
    q, k, v = (3 * rng.standard_normal((1, 2, 5, 4)) for _ in range(3))
    dout, dlse = rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((1, 2, 5))
    scale = 0.9
    case = Case("global_attention_vjp", "t", {"q": q, "k": k, "v": v, "dout": dout, "dlse": dlse}, {"scale": scale})
    out, _, P = global_attention(q, k, v, scale=scale, return_lse=True, return_weights=True)
    dP = dout @ np.swapaxes(v, -1, -2)
    dS = P * (dP - (dout * out).sum(-1, keepdims=True) + dlse[..., None])
    dq_terms = scale * (np.abs(dS) @ np.abs(k)).max()  # sum_j |scale * dS_ij * k_jd|
    dk_terms = scale * (np.abs(np.swapaxes(dS, -1, -2)) @ np.abs(q)).max()
    dv_terms = (np.abs(np.swapaxes(P, -1, -2)) @ np.abs(dout)).max()
    bound = _gradient_scale(case, case.inputs, (np.zeros(1),)).max()
    assert bound >= max(dq_terms, dk_terms, dv_terms)
