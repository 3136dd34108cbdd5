"""The backend registry: pluggy behind ``list_backends()`` and ``get_backend()``.

Plugins are the entry points of the group ``attnref.backends``. They are
loaded lazily, on the first question asked, once. Each one is loaded and asked
for its backends inside its own ``try``: a plugin that fails to import, whose
hook raises, or that returns a malformed backend becomes a reported status
(``attnref backends`` shows it) and never stops the others. pluggy's own
``load_setuptools_entrypoints`` would abort on the first broken plugin, so the
registry walks the entry points itself.

Two environment variables switch plugins off, by entry-point name:

``ATTNREF_DISABLE_PLUGINS``
    Comma-separated names to skip (``*`` skips all).
``ATTNREF_PLUGINS``
    If set, a comma-separated allow-list: only these load.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from attnref import hookspecs
from attnref.backend import backend_problems
from attnref.errors import BackendError, BackendNotFoundError, BackendUnavailableError

__all__ = [
    "PluginSource",
    "BackendStatus",
    "Registry",
    "default_registry",
    "list_backends",
    "get_backend",
    "backend_statuses",
]

DISABLE_VARIABLE = "ATTNREF_DISABLE_PLUGINS"
ALLOW_VARIABLE = "ATTNREF_PLUGINS"


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin comes from: a name, a description and a loader."""

    name: str
    origin: str
    load: Callable[[], Any]


@dataclass(frozen=True)
class BackendStatus:
    """What became of one plugin or one backend it returned.

    ``state`` is ``"available"`` (usable), ``"unavailable"`` (registered, but
    its runtime is missing: ``detail`` says why), ``"failed"`` (the plugin or
    backend is broken: ``detail`` holds the error) or ``"disabled"`` (switched
    off by an environment variable).
    """

    plugin: str
    origin: str
    state: str
    backend: str | None = None
    detail: str | None = None
    version: str | None = None
    ops: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()


def _entry_point_sources() -> list[PluginSource]:
    seen: set[tuple[str, str]] = set()
    sources = []
    for ep in metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        dist = f"{ep.dist.name} {ep.dist.version}: " if ep.dist is not None else ""
        sources.append(PluginSource(ep.name, f"{dist}{ep.value}", ep.load))
    return sorted(sources, key=lambda s: s.name)


def _names(value: str | None) -> set[str]:
    return {n.strip() for n in (value or "").split(",") if n.strip()}


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


@dataclass
class _Loaded:
    statuses: list[BackendStatus] = field(default_factory=list)
    backends: dict[str, tuple[Any, PluginSource]] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # backend name -> error


class Registry:
    """A set of plugins and the backends they provide.

    Parameters
    ----------
    sources : iterable of PluginSource, optional
        The plugins; default: the installed entry points of ``attnref.backends``.
    environ : mapping, optional
        Where to read the switches; default ``os.environ``.
    """

    def __init__(self, sources: Iterable[PluginSource] | None = None, environ: Mapping[str, str] | None = None):
        self._sources = None if sources is None else list(sources)
        self._environ = os.environ if environ is None else environ
        self._loaded: _Loaded | None = None

    # -- loading --------------------------------------------------------
    def _load(self) -> _Loaded:
        if self._loaded is not None:
            return self._loaded
        loaded = _Loaded()
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        sources = _entry_point_sources() if self._sources is None else self._sources
        disabled = _names(self._environ.get(DISABLE_VARIABLE))
        allowed = _names(self._environ.get(ALLOW_VARIABLE)) if ALLOW_VARIABLE in self._environ else None
        for source in sources:
            if "*" in disabled or source.name in disabled or (allowed is not None and source.name not in allowed):
                loaded.statuses.append(
                    BackendStatus(source.name, source.origin, "disabled", detail="switched off by environment")
                )
                continue
            try:
                pm.register(source.load(), name=source.name)
                impls = [i for i in pm.hook.attnref_backends.get_hookimpls() if i.plugin_name == source.name]
                if not impls:
                    raise BackendError("implements no attnref_backends() hook (mark it with @attnref.hookimpl)")
                objects = list(impls[0].function())
            except Exception as exc:  # a broken plugin is reported, never fatal
                if pm.has_plugin(source.name):
                    pm.unregister(name=source.name)
                loaded.statuses.append(BackendStatus(source.name, source.origin, "failed", detail=_error_text(exc)))
                continue
            for obj in objects:
                self._add(loaded, obj, source)
        self._loaded = loaded
        return loaded

    def _add(self, loaded: _Loaded, obj: Any, source: PluginSource) -> None:
        problems = backend_problems(obj)
        name = getattr(obj, "name", None)
        if problems:
            detail = "malformed backend: " + "; ".join(problems)
            loaded.statuses.append(
                BackendStatus(source.name, source.origin, "failed", backend=str(name), detail=detail)
            )
            return
        if name in loaded.backends or name in loaded.broken:
            first = loaded.backends.pop(name, (None, None))[1]
            where = f"plugin {first.name!r} ({first.origin})" if first else "an earlier plugin"
            loaded.broken[name] = (
                f"duplicate backend name {name!r}: provided by {where} and by plugin {source.name!r} ({source.origin})"
            )
            loaded.statuses.append(
                BackendStatus(source.name, source.origin, "failed", backend=name, detail=loaded.broken[name])
            )
            return
        loaded.backends[name] = (obj, source)

    # -- questions ------------------------------------------------------
    def statuses(self) -> list[BackendStatus]:
        """Every plugin and backend with its state, sorted by plugin name."""
        loaded = self._load()
        result = list(loaded.statuses)
        for name, (obj, source) in loaded.backends.items():
            reason = _reason(obj)
            result.append(
                BackendStatus(
                    source.name,
                    source.origin,
                    "available" if reason is None else "unavailable",
                    backend=name,
                    detail=reason,
                    version=obj.version,
                    ops=tuple(sorted(obj.ops)),
                    dtypes=tuple(sorted(obj.dtypes)),
                )
            )
        for name, error in loaded.broken.items():
            if not any(s.backend == name and s.detail == error for s in result):
                result.append(BackendStatus("?", "?", "failed", backend=name, detail=error))
        return sorted(result, key=lambda s: (s.plugin, s.backend or ""))

    def names(self, include_unavailable: bool = False) -> list[str]:
        """Names of the backends that loaded (and, by default, are available)."""
        loaded = self._load()
        return sorted(n for n, (obj, _) in loaded.backends.items() if include_unavailable or _reason(obj) is None)

    def get(self, name: str) -> Any:
        """The backend called ``name``.

        Raises
        ------
        BackendNotFoundError
            No loaded backend has that name (the message lists the known ones).
        BackendUnavailableError
            It loaded but cannot run here (the message says why).
        BackendError
            Two plugins provide that name.
        """
        loaded = self._load()
        if name in loaded.broken:
            raise BackendError(loaded.broken[name])
        if name not in loaded.backends:
            known = ", ".join(self.names(include_unavailable=True)) or "none"
            raise BackendNotFoundError(f"backend: no backend named {name!r}; registered: {known}")
        obj = loaded.backends[name][0]
        reason = _reason(obj)
        if reason is not None:
            raise BackendUnavailableError(f"backend {name!r} is unavailable: {reason}")
        return obj


def _reason(obj: Any) -> str | None:
    try:
        reason = obj.unavailable_reason
    except Exception as exc:  # a backend's availability probe must not break the registry
        return f"availability check raised {_error_text(exc)}"
    return None if reason is None else str(reason)


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry of installed plugins (created on first use)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def list_backends() -> list[str]:
    """Names of the installed backends that can run here."""
    return default_registry().names()


def get_backend(name: str) -> Any:
    """The installed backend called ``name`` (see :meth:`Registry.get`)."""
    return default_registry().get(name)


def backend_statuses() -> list[BackendStatus]:
    """The state of every installed plugin and backend (see :meth:`Registry.statuses`)."""
    return default_registry().statuses()
