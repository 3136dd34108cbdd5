"""The backend registry: pluggy behind ``list_backends()`` and ``get_backend()``.

Plugins are the entry points of the group ``attnref.backends``. They are
loaded lazily, on the first question asked, once. Each one is loaded and asked
for its backends inside its own ``try``: a plugin that fails to import, whose
hook raises or returns something that is not an iterable of backends, or that
returns a malformed backend becomes a reported status (``attnref backends``
shows it) and never stops the others. pluggy's own
``load_setuptools_entrypoints`` would abort on the first broken plugin, so the
registry walks the entry points itself.

A backend name provided twice (by two plugins, or twice by one) is an error
naming every source: neither copy is used, since silently picking one would
make results depend on installation order.

Two environment variables switch plugins off, by entry-point name:

``ATTNREF_DISABLE_PLUGINS``
    Comma-separated names to skip (``*`` skips all).
``ATTNREF_PLUGINS``
    If set, a comma-separated allow-list: only these load (``*`` allows all;
    an empty value allows none).
"""

from __future__ import annotations

import os
import threading
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
    "STATES",
    "Registry",
    "default_registry",
    "list_backends",
    "get_backend",
    "backend_statuses",
]

DISABLE_VARIABLE = "ATTNREF_DISABLE_PLUGINS"
ALLOW_VARIABLE = "ATTNREF_PLUGINS"

#: Every value of :attr:`BackendStatus.state`.
STATES: tuple[str, ...] = ("available", "unavailable", "loaded", "failed", "disabled")


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin comes from.

    Attributes
    ----------
    name : str
        The plugin's name (the entry-point name); the environment switches
        match it.
    origin : str
        A description for messages (distribution and ``module:object``).
    load : callable
        Returns the plugin object (a module or any object with a hook
        implementation); called once, inside the registry's ``try``.
    version : str or None
        The version of the distribution that provides the plugin, if known.
    """

    name: str
    origin: str
    load: Callable[[], Any]
    version: str | None = None


@dataclass(frozen=True)
class BackendStatus:
    """What became of one plugin or one backend it returned.

    ``state`` is one of :data:`STATES`:

    ``"available"``
        The backend is usable.
    ``"unavailable"``
        Registered, but its runtime is missing: ``detail`` says why.
    ``"loaded"``
        The plugin loaded but provided no backend (``backend`` is ``None``).
    ``"failed"``
        The plugin or backend is broken: ``detail`` holds the error.
    ``"disabled"``
        Switched off by an environment variable (``detail`` says which).

    ``version`` is the backend's version, or, on a row without a backend, the
    plugin distribution's version when known.
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
        dist = ep.dist
        origin = f"{dist.name} {dist.version}: {ep.value}" if dist is not None else ep.value
        sources.append(PluginSource(ep.name, origin, ep.load, dist.version if dist is not None else None))
    return sorted(sources, key=lambda s: s.name)


def _names(value: str | None) -> set[str]:
    return {n.strip() for n in (value or "").split(",") if n.strip()}


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _plugin_status(source: PluginSource, state: str, detail: str | None = None) -> BackendStatus:
    return BackendStatus(source.name, source.origin, state, detail=detail, version=source.version)


@dataclass(frozen=True)
class _Provided:
    """A well-formed backend and what it declared when it was registered."""

    backend: Any
    source: PluginSource
    version: str
    ops: tuple[str, ...]
    dtypes: tuple[str, ...]

    def status(self, state: str, detail: str | None) -> BackendStatus:
        return BackendStatus(
            self.source.name, self.source.origin, state, backend=self.backend.name, detail=detail,
            version=self.version, ops=self.ops, dtypes=self.dtypes,
        )  # fmt: skip


@dataclass
class _Loaded:
    fixed: list[BackendStatus] = field(default_factory=list)  # rows whose state cannot change any more
    backends: dict[str, _Provided] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # backend name -> why get() cannot return it
    switched_off: list[str] = field(default_factory=list)  # plugin names


class Registry:
    """A set of plugins and the backends they provide.

    Nothing is loaded until the first question (:meth:`names`, :meth:`get`,
    :meth:`statuses`); then every plugin is loaded once. Availability
    (``unavailable_reason``) is asked of a backend each time it matters.

    Parameters
    ----------
    sources : iterable of PluginSource, optional
        The plugins; default: the installed entry points of ``attnref.backends``.
    environ : mapping, optional
        Where to read the switches; default ``os.environ`` (read at load time).
    """

    def __init__(self, sources: Iterable[PluginSource] | None = None, environ: Mapping[str, str] | None = None):
        self._sources = None if sources is None else list(sources)
        self._environ = os.environ if environ is None else environ
        self._loaded: _Loaded | None = None
        self._loading = False
        self._lock = threading.RLock()
        #: The pluggy manager holding every plugin that registered.
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.plugin_manager.add_hookspecs(hookspecs)

    # -- loading --------------------------------------------------------
    def _load(self) -> _Loaded:
        with self._lock:  # another thread waits for the one load; the same thread re-entering is caught below
            if self._loaded is not None:
                return self._loaded
            if self._loading:
                raise BackendError(
                    "the registry was asked for backends while its plugins were loading; "
                    "a plugin must not query the registry at import or in attnref_backends()"
                )
            self._loading = True
            try:
                self._loaded = self._load_all()
            finally:
                self._loading = False
            return self._loaded

    def _load_all(self) -> _Loaded:
        loaded = _Loaded()
        sources = _entry_point_sources() if self._sources is None else self._sources
        providers: dict[str, list[_Provided]] = {}
        origins: dict[str, str] = {}
        for source in sources:
            off = self._switched_off(source.name)
            if off is not None:
                loaded.fixed.append(_plugin_status(source, "disabled", off))
                loaded.switched_off.append(source.name)
                continue
            if source.name in origins:
                detail = f"duplicate plugin name {source.name!r}: also provided by {origins[source.name]}"
                loaded.fixed.append(_plugin_status(source, "failed", detail))
                continue
            origins[source.name] = source.origin
            try:
                objects = self._call_plugin(source)
            except (Exception, SystemExit) as exc:  # a broken plugin is reported, never fatal
                loaded.fixed.append(_plugin_status(source, "failed", _error_text(exc)))
                continue
            if not objects:
                loaded.fixed.append(_plugin_status(source, "loaded", "provides no backend"))
            for obj in objects:
                provided = _check(obj, source, loaded)
                if provided is not None:
                    providers.setdefault(provided.backend.name, []).append(provided)
        for name, found in providers.items():
            if len(found) == 1:
                loaded.backends[name] = found[0]
                loaded.broken.pop(name, None)  # a malformed namesake elsewhere does not hide a good backend
                continue
            where = " and by ".join(f"plugin {p.source.name!r} ({p.source.origin})" for p in found)
            loaded.broken[name] = f"duplicate backend name {name!r}: provided by {where}"
            loaded.fixed += [p.status("failed", loaded.broken[name]) for p in found]
        return loaded

    def _switched_off(self, name: str) -> str | None:
        """Why the environment switches off plugin ``name``, or None."""
        disabled = _names(self._environ.get(DISABLE_VARIABLE))
        if "*" in disabled or name in disabled:
            return f"switched off by {DISABLE_VARIABLE}"
        if ALLOW_VARIABLE in self._environ:
            allowed = _names(self._environ[ALLOW_VARIABLE])
            if "*" not in allowed and name not in allowed:
                return f"not listed in {ALLOW_VARIABLE}"
        return None

    def _call_plugin(self, source: PluginSource) -> list[Any]:
        """Load ``source``, register it with pluggy and return what its hook returns."""
        pm = self.plugin_manager
        plugin = source.load()
        if plugin is None:
            raise BackendError("the entry point loaded None, not a plugin")
        pm.register(plugin, name=source.name)
        try:
            return _call_hook(pm, plugin, source.name)
        except BaseException:
            pm.unregister(plugin=plugin)  # a failed plugin keeps no hook in the manager
            raise

    # -- questions ------------------------------------------------------
    def statuses(self) -> list[BackendStatus]:
        """Every plugin and backend with its state, sorted by plugin, then backend name."""
        loaded = self._load()
        result = list(loaded.fixed)
        for provided in loaded.backends.values():
            state, detail = _availability(provided.backend)
            result.append(provided.status(state, detail))
        return sorted(result, key=lambda s: (s.plugin, s.backend or "", s.origin))

    def names(self, include_unavailable: bool = False) -> list[str]:
        """Names of the backends that loaded and are available (or, optionally, unavailable)."""
        wanted = ("available", "unavailable") if include_unavailable else ("available",)
        return sorted(n for n, p in self._load().backends.items() if _availability(p.backend)[0] in wanted)

    def get(self, name: str) -> Any:
        """The backend called ``name``.

        Raises
        ------
        BackendNotFoundError
            No loaded backend has that name (the message lists the known ones
            and any plugins switched off).
        BackendUnavailableError
            It loaded but cannot run here (the message says why).
        BackendError
            Two plugins provide that name, the backend is malformed, or its
            ``unavailable_reason`` raised.
        """
        loaded = self._load()
        if name not in loaded.backends:
            if name in loaded.broken:
                raise BackendError(loaded.broken[name])
            known = ", ".join(self.names(include_unavailable=True)) or "none"
            message = f"backend: no backend named {name!r}; registered: {known}"
            if loaded.switched_off:
                message += f"; plugins switched off: {', '.join(sorted(loaded.switched_off))}"
            raise BackendNotFoundError(message)
        obj = loaded.backends[name].backend
        state, detail = _availability(obj)
        if state == "unavailable":
            raise BackendUnavailableError(f"backend {name!r} is unavailable: {detail}")
        if state == "failed":
            raise BackendError(f"backend {name!r} is broken: {detail}")
        return obj


def _call_hook(pm: pluggy.PluginManager, plugin: Any, name: str) -> list[Any]:
    impls = [i for i in pm.hook.attnref_backends.get_hookimpls() if i.plugin_name == name]
    if not impls:
        unknown = sorted(c.name for c in pm.get_hookcallers(plugin) or [] if not c.has_spec())
        hint = f"; it marks unknown hook(s) {', '.join(unknown)}" if unknown else ""
        raise BackendError(f"implements no attnref_backends() hook (mark it with @attnref.hookimpl){hint}")
    result = impls[0].function()
    if result is None or isinstance(result, (str, bytes, Mapping)) or not isinstance(result, Iterable):
        raise BackendError(
            f"attnref_backends() must return an iterable of backend objects, got {type(result).__name__}"
        )
    return list(result)


def _check(obj: Any, source: PluginSource, loaded: _Loaded) -> _Provided | None:
    """``obj`` as a registered backend, or None after recording why it is malformed."""
    problems = backend_problems(obj)
    if not problems:
        try:  # what it declares now is what `attnref backends` shows
            return _Provided(obj, source, obj.version, tuple(sorted(obj.ops)), tuple(sorted(obj.dtypes)))
        except Exception as exc:  # a property that passed the check once, then raised
            problems = [f"reading its declarations raised {_error_text(exc)}"]
    try:
        name = getattr(obj, "name", None)
    except Exception:  # already among the problems
        name = None
    name = name if isinstance(name, str) and name else None
    detail = "malformed backend: " + "; ".join(problems)
    loaded.fixed.append(BackendStatus(source.name, source.origin, "failed", backend=name, detail=detail))
    if name is not None:
        loaded.broken.setdefault(name, f"backend {name!r} from plugin {source.name!r} is {detail}")
    return None


def _availability(obj: Any) -> tuple[str, str | None]:
    """The state of a registered backend and its detail, from ``unavailable_reason``."""
    try:
        reason = obj.unavailable_reason
    except Exception as exc:  # a backend's availability probe must not break the registry
        return "failed", f"unavailable_reason raised {_error_text(exc)}"
    return ("available", None) if reason is None else ("unavailable", str(reason))


_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry of installed plugins (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def list_backends(available: bool = False) -> list[str]:
    """Names of the installed backends that loaded, sorted.

    A backend that loaded but cannot run here (its library or device is
    missing) is included; ``available=True`` keeps only those that can run.
    :func:`backend_statuses` says why one cannot.
    """
    return default_registry().names(include_unavailable=not available)


def get_backend(name: str) -> Any:
    """The installed backend called ``name`` (see :meth:`Registry.get`)."""
    return default_registry().get(name)


def backend_statuses() -> list[BackendStatus]:
    """The state of every installed plugin and backend (see :meth:`Registry.statuses`)."""
    return default_registry().statuses()
