"""Every built-in backend's ops have the reference's signatures, minus ``precision`` and ``return_weights``.

The backends are built from their plugin modules directly, so the check runs
whether or not their runtime is available here (CuPy without a GPU).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

import attnref.reference
from attnref.backend import OPS

PLUGINS = ("attnref_numpy.plugin", "attnref_torch.plugin", "attnref_cupy.plugin")
REFERENCE_ONLY = ("precision", "return_weights")


def _parameters(fn: Any, drop: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``(name, kind, default)`` of each parameter: positional ones in order, keyword-only ones by name
    (their order means nothing to a caller)."""
    params = [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name not in drop]
    keyword_only = sorted((p for p in params if p[1] is inspect.Parameter.KEYWORD_ONLY), key=lambda p: p[0])
    return [p for p in params if p[1] is not inspect.Parameter.KEYWORD_ONLY] + keyword_only


def _backends() -> list[Any]:
    found = []
    for module in PLUGINS:
        plugin = importlib.import_module(module)
        found += list(plugin.attnref_backends())
    return found


@pytest.mark.parametrize("backend", _backends(), ids=lambda b: b.name)
def test_op_signatures_equal_the_reference(backend: Any) -> None:
    assert backend.ops <= set(OPS)
    for op in sorted(backend.ops):
        expected = _parameters(getattr(attnref.reference, op), REFERENCE_ONLY)
        assert _parameters(getattr(backend, op)) == expected, f"{backend.name}.{op}"


def test_the_built_in_backends_are_all_checked() -> None:
    assert sorted(b.name for b in _backends()) == ["cupy", "numpy", "torch"]
