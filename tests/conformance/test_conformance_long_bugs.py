"""Bugs that only the long tier catches (issue 10 item 7): a blocked kernel with 32-bit flat indices or float32
positions passes the whole default catalogue and fails its long case; the same kernel without the bug passes.

The long cases take tens of seconds (their reference runs are O(L x window)), so they run in float32 only.
"""

from __future__ import annotations

import pytest
from planted import LONG_BUGS, LongToyBackend

from attnref.conformance.cases import catalogue
from attnref.conformance.long import long_cases
from attnref.conformance.runner import ReferenceCache, Target, run_case, run_suite

_CACHE = ReferenceCache()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LONG_BUGS))
def test_only_the_long_tier_catches_it(name: str) -> None:
    _, op, case_id = LONG_BUGS[name]
    (case,) = [c for c in long_cases(op) if c.id == case_id]
    assert run_case(LongToyBackend(), case, "float32", _CACHE).status == "pass"
    caught = run_case(LongToyBackend({name}), case, "float32", _CACHE)
    assert caught.status == "fail", caught.detail
    default = run_suite([Target("long-toy", LongToyBackend({name}))], catalogue([op], examples=8), ["float32"])
    missed = [r for r in default.backends["long-toy"].results if r.status in ("fail", "error")]
    assert not missed, [(r.case, r.detail) for r in missed]
