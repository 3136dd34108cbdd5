"""The conformance catalogue as pytest tests, for any installed backend.

Run it with the options of :mod:`attnref.conformance.pytest_plugin`::

    pytest --pyargs attnref.conformance --attnref-backend NAME [-n auto]

Without ``--attnref-backend`` every test here skips, so a plain ``pytest``
that happens to collect this module is unaffected.
"""

from __future__ import annotations

from typing import Any

import pytest

from attnref.conformance.pytest_plugin import check, conformance_params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if {"attnref_case", "attnref_dtype"} <= set(metafunc.fixturenames):
        metafunc.parametrize(("attnref_case", "attnref_dtype"), conformance_params(metafunc.config))


def test_conformance(request: pytest.FixtureRequest, attnref_case: Any, attnref_dtype: str | None) -> None:
    """One case of the catalogue in one dtype on the selected backend."""
    check(request.config, attnref_case, attnref_dtype)
