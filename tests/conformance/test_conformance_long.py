"""The long-context tier's catalogue: every op, windowed, chunked or decoding, past 2**31 scores, lazy."""

from __future__ import annotations

import numpy as np

from attnref.backend import OPS
from attnref.conformance.cases import GRADIENT_OF, MULTIHEAD_OPS, catalogue
from attnref.conformance.long import LONG_CASES, LazyInputs, long_cases


def test_every_op_has_long_cases_and_they_join_only_with_long() -> None:
    for op in OPS:
        cases = long_cases(op)
        assert cases, op
        assert all(c.id.startswith("long-") and c.op == op for c in cases)
    ids = {c.key for c in catalogue(examples=0, long=True)}
    assert {c.key for op in OPS for c in long_cases(op)} <= ids
    assert not any(c.id.startswith("long-decode") for c in catalogue(examples=0))


def test_every_multihead_case_is_windowed_chunked_or_decoding_and_reaches_the_limits() -> None:
    for op in MULTIHEAD_OPS:
        products = []
        for case_id, _, q_len, kv_len, options in LONG_CASES[op]:
            decoding = q_len <= 16
            assert decoding or "window" in options or "chunk_size" in options, case_id
            products.append(q_len * kv_len)
            assert 2**16 <= max(q_len, kv_len) <= 2**26
        if op != "global_attention":  # global attention is only decoding: L x L would not be O(L x window)
            assert max(products) >= 2**31, op
        assert any(kv_len == 2**20 and q_len <= 16 for _, _, q_len, kv_len, _ in LONG_CASES[op]), op


def test_gradient_long_cases_carry_upstream_gradients() -> None:
    for op in GRADIENT_OF:
        for case in long_cases(op):
            assert "return_lse" not in case.options
            assert case.outputs == ("dq", "dk", "dv")  # without building the arrays
            assert case.inputs._data is None


def test_listing_the_tier_builds_no_array() -> None:
    cases = [c for op in OPS for c in long_cases(op)]
    assert all(c.inputs._data is None for c in cases)  # LazyInputs: built on first use only
    built = []
    lazy = LazyInputs(lambda: built.append(1) or {"x": np.zeros(3)}, ("x",))
    assert list(lazy) == ["x"] and "x" in lazy and len(lazy) == 1 and not built  # names known without building
    assert lazy["x"].shape == (3,) and built == [1]
