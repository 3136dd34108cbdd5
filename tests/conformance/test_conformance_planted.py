"""Every planted bug is caught by the suite, by the case it names, in exactly the dtypes it names."""

from __future__ import annotations

import pytest
from planted import BUGS, ToyBackend

from attnref.backend import OPS
from attnref.conformance.cases import catalogue
from attnref.conformance.runner import ReferenceCache, Target, run_case, run_suite
from attnref.dtypes import DTYPE_NAMES

_CACHE = ReferenceCache()  # the reference runs are shared by every planted backend


def test_there_are_many_classes_of_bug() -> None:
    assert len(BUGS) >= 30
    assert len({bug.op for bug in BUGS.values()}) == len(OPS)
    assert sum(bug.op.endswith("_vjp") for bug in BUGS.values()) >= 10


@pytest.mark.parametrize("name", sorted(BUGS))
def test_the_suite_catches_the_planted_bug(name: str) -> None:
    bug = BUGS[name]
    cases = catalogue([bug.op], examples=4, seed=0)
    report = run_suite([Target(name, ToyBackend({name}))], cases, [bug.dtype], cache=_CACHE)
    assert not report.ok, f"the suite missed the bug {name!r}: {bug.description}"
    caught = {r.case: r for r in report.backends[name].results if r.status in ("fail", "error")}
    assert bug.catches in caught, f"{bug.catches!r} did not catch {name!r}; these did: {sorted(caught)}"
    assert caught[bug.catches].detail


@pytest.mark.parametrize("name", sorted(BUGS))
def test_detection_matrix_bug_by_dtype(name: str) -> None:
    """The bug's case catches it in exactly the dtypes the bug lists (and the clean backend passes it there)."""
    bug = BUGS[name]
    (case,) = [c for c in catalogue([bug.op], examples=0) if c.id == bug.catches]
    caught = {d for d in DTYPE_NAMES if run_case(ToyBackend({name}), case, d, _CACHE).status in ("fail", "error")}
    assert caught == set(bug.caught_in), f"{name}: caught in {sorted(caught)}, listed {sorted(bug.caught_in)}"
    clean = {d: run_case(ToyBackend(), case, d, _CACHE) for d in DTYPE_NAMES}
    assert all(r.status == "pass" for r in clean.values()), {d: r.detail for d, r in clean.items()}


def test_the_same_backend_without_bugs_passes_those_catalogues() -> None:
    for op, dtype in sorted({(bug.op, bug.dtype) for bug in BUGS.values()}):
        report = run_suite([Target("toy", ToyBackend())], catalogue([op], 4, 0), [dtype], cache=_CACHE)
        assert report.ok, [(r.key, r.detail) for r in report.backends["toy"].results if r.status != "pass"]
