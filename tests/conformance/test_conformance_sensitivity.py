"""The sensitivity term moves inputs and scores by one rounding of the dtype under test (issue 10 item 10).

A float16 kernel that rounds the scores once to float16 and then computes exactly (ONNX Runtime does) is
right; on ``global_attention/random-s0-1218`` (nearly tied logits) its answer is further from float64 than
twice the naive run's, which happens to be lucky there. The old term (inputs moved by one *float32*
rounding, factor 8) failed it; the rule of contract section 5 passes it, and every planted bug is still
caught (``test_conformance_planted.py``).
"""

from __future__ import annotations

import pytest
from planted import RoundedScoresBackend

import attnref.conformance.runner as runner
from attnref.conformance import tolerance
from attnref.conformance.cases import catalogue
from attnref.conformance.strategies import random_case

LUCKY_NAIVE = random_case("global_attention", 0, 1218)


def test_rounded_scores_pass_where_the_naive_run_is_lucky() -> None:
    result = runner.run_case(RoundedScoresBackend(), LUCKY_NAIVE, "float16")
    assert result.status == "pass", result.detail


def test_the_old_sensitivity_term_failed_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "unit_roundoff", lambda dtype: tolerance.eps("float32"))
    monkeypatch.setattr(runner, "_score_magnitudes", lambda case, inputs: None)
    monkeypatch.setattr(tolerance, "SENSITIVITY_FACTOR", 8.0)
    assert runner.run_case(RoundedScoresBackend(), LUCKY_NAIVE, "float16").status == "fail"


def test_rounded_scores_pass_the_nearly_tied_case_and_random_cases() -> None:
    (tied,) = [c for c in catalogue(["global_attention"], examples=0) if c.id == "nearly-tied"]
    cases = [tied, *(random_case("global_attention", 7, i) for i in range(60))]
    results = [runner.run_case(RoundedScoresBackend(), c, "float16") for c in cases]
    assert all(r.status == "pass" for r in results), [(r.case, r.detail) for r in results if r.status != "pass"]


def test_the_score_move_is_one_rounding_of_each_score() -> None:
    (case,) = [c for c in catalogue(["global_attention"], examples=0) if c.id == "basic"]
    inputs = runner.rounded_inputs(case, "float16")
    moved = runner._moved(case, inputs, "float16")
    magnitudes = runner._score_magnitudes(case, inputs)
    step = abs(moved["bias"])
    assert step.shape == magnitudes.shape
    assert abs(step - tolerance.unit_roundoff("float16") * magnitudes).max() < 1e-12
