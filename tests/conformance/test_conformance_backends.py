"""Honest backends pass the whole default catalogue in every dtype.

Two of them, sharing the reference runs: the toy kernel of ``planted.py``
(blocked online softmax, float32 accumulation for 16-bit inputs: evidence that
the tolerance accepts an honest kernel) and the built-in NumPy backend as
installed.
"""

from __future__ import annotations

from planted import ToyBackend

from attnref.conformance.cases import DEFAULT_EXAMPLES, catalogue
from attnref.conformance.runner import Target, resolve_targets, run_suite
from attnref.conformance.selection import XfailEntry
from attnref.dtypes import DTYPE_NAMES
from attnref.registry import Registry

#: Known gaps of built-in backends, written down as xfail entries (an entry that goes stale fails the test).
KNOWN_GAPS: dict[str, list[XfailEntry]] = {}


def test_honest_backends_pass_every_case_in_every_dtype() -> None:
    targets = [Target("toy", ToyBackend())]
    registry = Registry()  # the installed entry points, not the process-wide one other tests may swap
    numpy_registered = "numpy" in registry.names(include_unavailable=True)
    if numpy_registered:
        targets += resolve_targets(["numpy"], registry)
    for target in targets:
        assert target.available, target.reason
        ops = sorted(target.backend.ops)
        gaps = KNOWN_GAPS.get(target.name, [])
        report = run_suite([target], catalogue(ops, examples=DEFAULT_EXAMPLES, seed=0), DTYPE_NAMES, xfails=gaps)
        name, entry = target.name, report.backends[target.name]
        bad = [(r.key, r.status, r.detail) for r in entry.results if r.status != "pass" and r.xfail is None]
        assert not bad, name
        assert all(gap.xfailed and not gap.xpassed for gap in gaps), "stale KNOWN_GAPS entry: remove it"
        assert {r.dtype for r in entry.results} == set(DTYPE_NAMES) and len(entry.results) > 1000
        assert {r.op for r in entry.results} == set(ops)
    assert numpy_registered, "the built-in numpy backend is not registered in this environment"
