"""The worked examples of the feature pages (sinks, packed sequences, paged KV, merged states) run and hold.

Each page shows one ``python`` block; it is executed here and the numbers its
comments state are checked.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def run_example(page: str) -> dict[str, Any]:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), flags=re.S)
    example = [b for b in blocks if "import numpy" in b]
    assert len(example) == 1, f"{page}: expected one worked example"
    namespace: dict[str, Any] = {}
    exec(compile(example[0], page, "exec"), namespace)  # the page's own code, as a reader would run it
    return namespace


def test_sinks_example() -> None:
    ns = run_example("spec/sinks.md")
    assert ns["lse"].item() == pytest.approx(math.log(4), rel=1e-15)
    assert ns["out"].item() == pytest.approx(0.25, rel=1e-15)


def test_varlen_example() -> None:
    ns = run_example("spec/varlen.md")
    np.testing.assert_allclose(ns["out"][:, 0, 0], [1.0, 3.0, 3.5], rtol=1e-15)


def test_paged_example() -> None:
    ns = run_example("ops/paged_attention.md")
    np.testing.assert_allclose(ns["out"][:, 0, 0, 0], [41 / 3, 20.0], rtol=1e-15)
    assert f"{41 / 3:.2f}" in (DOCS / "ops/paged_attention.md").read_text(encoding="utf-8")


def test_merge_example() -> None:
    ns = run_example("ops/merge_attention_states.md")
    np.testing.assert_allclose(ns["out"], [[4.0]], rtol=1e-15)
    np.testing.assert_allclose(ns["lse"], [math.log(4)], rtol=1e-15)


@pytest.mark.parametrize("page", ["spec/sinks.md", "spec/varlen.md", "ops/paged_attention.md",
                                  "ops/merge_attention_states.md"])  # fmt: skip
def test_feature_pages_are_in_the_toctree_and_show_a_picture(page: str) -> None:
    assert page.removesuffix(".md") in (DOCS / "index.md").read_text(encoding="utf-8")
    assert "/_generated/patterns/" in (DOCS / page).read_text(encoding="utf-8")
