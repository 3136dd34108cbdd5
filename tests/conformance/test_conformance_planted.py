"""Every planted bug is caught by the suite, and names the case that should catch it."""

from __future__ import annotations

import pytest
from planted import BUGS, ToyBackend

from attnref.conformance.cases import catalogue
from attnref.conformance.runner import ReferenceCache, Target, run_suite

_CACHE = ReferenceCache()  # the reference runs are shared by every planted backend


def test_there_are_many_classes_of_bug() -> None:
    assert len(BUGS) >= 30
    assert len({bug.op for bug in BUGS.values()}) == 5


@pytest.mark.parametrize("name", sorted(BUGS))
def test_the_suite_catches_the_planted_bug(name: str) -> None:
    bug = BUGS[name]
    cases = catalogue([bug.op], examples=4, seed=0)
    report = run_suite([Target(name, ToyBackend({name}))], cases, [bug.dtype], cache=_CACHE)
    assert not report.ok, f"the suite missed the bug {name!r}: {bug.description}"
    caught = {r.case: r for r in report.backends[name].results if r.status in ("fail", "error")}
    assert bug.catches in caught, f"{bug.catches!r} did not catch {name!r}; these did: {sorted(caught)}"
    assert caught[bug.catches].detail


def test_the_same_backend_without_bugs_passes_those_catalogues() -> None:
    for op, dtype in sorted({(bug.op, bug.dtype) for bug in BUGS.values()}):
        report = run_suite([Target("toy", ToyBackend())], catalogue([op], 4, 0), [dtype], cache=_CACHE)
        assert report.ok, [(r.key, r.detail) for r in report.backends["toy"].results if r.status != "pass"]
