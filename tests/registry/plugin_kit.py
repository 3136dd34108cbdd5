"""Fixture plugins and backends for the registry tests.

Every test builds its own :class:`attnref.registry.Registry` from explicit
:class:`PluginSource` objects made here, so installed plugins never leak in.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

import attnref
from attnref import reference
from attnref.registry import PluginSource, Registry


class FakeBackend:
    """A well-formed backend; keyword arguments override its declarations."""

    version = "1.0"

    def __init__(
        self,
        name: str = "good",
        *,
        ops: Iterable[str] = ("global_attention",),
        dtypes: Iterable[str] = ("float32", "float64"),
        reason: str | None = None,
        version: str = "1.0",
    ):
        self.name = name
        self.ops = frozenset(ops)
        self.dtypes = frozenset(dtypes)
        self.unavailable_reason = reason
        self.version = version

    def asarray(self, array: Any) -> Any:
        return np.asarray(array)

    def to_numpy(self, array: Any) -> Any:
        return np.asarray(array)

    def global_attention(self, q: Any, k: Any, v: Any, **options: Any) -> Any:
        return reference.global_attention(q, k, v, **options)

    def local_attention(self, q: Any, k: Any, v: Any, **options: Any) -> Any:
        return reference.local_attention(q, k, v, **options)


class Plugin:
    """A plugin object whose hook returns ``backends`` (or calls it, if callable)."""

    def __init__(self, backends: Iterable[Any] | Callable[[], Any] = ()):
        self._backends = backends

    @attnref.hookimpl
    def attnref_backends(self) -> Any:
        return self._backends() if callable(self._backends) else list(self._backends)


class CountingLoader:
    """A loader that returns ``plugin`` and counts how often it was called."""

    def __init__(self, plugin: Any):
        self.plugin = plugin
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.plugin


def source(name: str, plugin: Any) -> PluginSource:
    """A source whose loader returns ``plugin`` (a loader itself if it is a CountingLoader)."""
    load = plugin if isinstance(plugin, CountingLoader) else (lambda: plugin)
    return PluginSource(name, f"test:{name}", load)


def good_source(name: str = "good", **declarations: Any) -> PluginSource:
    """A plugin ``name`` providing one well-formed backend of the same name."""
    return source(name, Plugin([FakeBackend(name, **declarations)]))


def module_source(tmp_path: Path, name: str, code: str) -> PluginSource:
    """A source that imports a module file written from ``code`` (not kept in ``sys.modules``)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))

    def load() -> Any:
        spec = importlib.util.spec_from_file_location(f"attnref_test_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return PluginSource(name, f"file:{path}", load)


def registry(*sources: PluginSource, environ: dict[str, str] | None = None) -> Registry:
    """A fresh registry of exactly ``sources``, with no environment switch unless given."""
    return Registry(sources, environ={} if environ is None else environ)


def status_of(reg: Registry, plugin: str, backend: str | None = None) -> attnref.registry.BackendStatus:
    """The single status row of ``plugin`` (and ``backend``)."""
    rows = [s for s in reg.statuses() if s.plugin == plugin and (backend is None or s.backend == backend)]
    assert len(rows) == 1, rows
    return rows[0]


def assert_good_still_works(reg: Registry, name: str = "good", plugin: str | None = None) -> None:
    """The well-formed backend ``name`` (of plugin ``name`` by default) is listed, returned, usable, available."""
    assert name in reg.names()
    backend = reg.get(name)
    assert backend.name == name
    q = np.ones((1, 1, 2, 4))
    np.testing.assert_array_equal(backend.global_attention(q, q, q), reference.global_attention(q, q, q))
    assert status_of(reg, plugin or name, name).state == "available"
