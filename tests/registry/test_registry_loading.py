"""Lazy loading, the environment switches, lookups and the module-level API."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from plugin_kit import CountingLoader, FakeBackend, Plugin, good_source, registry, source, status_of

import attnref
from attnref import registry as registry_module
from attnref.errors import BackendError, BackendNotFoundError, BackendUnavailableError
from attnref.registry import STATES, BackendStatus, PluginSource, Registry


def _counted(*names: str) -> tuple[list[CountingLoader], list[PluginSource]]:
    loaders = [CountingLoader(Plugin([FakeBackend(n)])) for n in names]
    return loaders, [source(n, loader) for n, loader in zip(names, loaders, strict=True)]


def test_plugins_load_lazily_and_once():
    loaders, sources = _counted("a", "b")
    reg = registry(*sources)
    assert [loader.calls for loader in loaders] == [0, 0]  # constructing loads nothing
    assert reg.names() == ["a", "b"]
    assert [loader.calls for loader in loaders] == [1, 1]
    reg.get("a")
    reg.statuses()
    reg.names(include_unavailable=True)
    with pytest.raises(BackendNotFoundError):
        reg.get("zzz")
    assert [loader.calls for loader in loaders] == [1, 1]


def test_the_hook_is_called_once():
    calls = []
    reg = registry(source("p", Plugin(lambda: calls.append(1) or [FakeBackend("p")])))
    for _ in range(3):
        reg.names()
        reg.statuses()
    assert calls == [1]


def test_a_failed_plugin_is_not_retried():
    def fail() -> Any:
        raise RuntimeError("no")

    loader = CountingLoader(Plugin(fail))
    reg = registry(source("f", loader))
    reg.statuses()
    reg.names()
    assert loader.calls == 1


def test_concurrent_first_questions_load_once():
    class SlowLoader(CountingLoader):
        def __call__(self) -> Any:
            time.sleep(0.05)  # widen the window in which a second load could start
            return super().__call__()

    loader = SlowLoader(Plugin([FakeBackend("slow")]))
    reg = registry(source("slow", loader))
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(reg.names())) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [["slow"]] * 6
    assert loader.calls == 1


@pytest.mark.parametrize(
    ("value", "off"),
    [("a", {"a"}), ("a,b", {"a", "b"}), (" b , c ,", {"b", "c"}), ("*", {"a", "b", "c"}), ("", set()), ("x", set())],
)
def test_disable_switch(value, off):
    loaders, sources = _counted("a", "b", "c")
    reg = registry(*sources, environ={"ATTNREF_DISABLE_PLUGINS": value})
    assert reg.names() == sorted({"a", "b", "c"} - off)
    for loader, status in zip(loaders, reg.statuses(), strict=True):
        disabled = status.plugin in off
        assert loader.calls == (0 if disabled else 1)  # a switched-off plugin is never imported
        assert status.state == ("disabled" if disabled else "available")
        if disabled:
            assert status.detail == "switched off by ATTNREF_DISABLE_PLUGINS"


@pytest.mark.parametrize(
    ("value", "on"),
    [("b", {"b"}), ("a, c", {"a", "c"}), ("*", {"a", "b", "c"}), ("", set()), ("zzz", set())],
)
def test_allow_list_switch(value, on):
    loaders, sources = _counted("a", "b", "c")
    reg = registry(*sources, environ={"ATTNREF_PLUGINS": value})
    assert reg.names() == sorted(on)
    for loader, status in zip(loaders, reg.statuses(), strict=True):
        assert loader.calls == (1 if status.plugin in on else 0)
        if status.plugin not in on:
            assert (status.state, status.detail) == ("disabled", "not listed in ATTNREF_PLUGINS")


def test_disable_wins_over_allow_list():
    _, sources = _counted("a", "b")
    reg = registry(*sources, environ={"ATTNREF_PLUGINS": "a,b", "ATTNREF_DISABLE_PLUGINS": "a"})
    assert reg.names() == ["b"]


def test_switches_read_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("ATTNREF_DISABLE_PLUGINS", "a")
    monkeypatch.delenv("ATTNREF_PLUGINS", raising=False)
    _, sources = _counted("a", "b")
    assert Registry(sources).names() == ["b"]


def test_a_switched_off_plugin_turns_off_a_broken_one():
    broken = PluginSource("broken", "test", lambda: 1 / 0)
    assert status_of(registry(broken), "broken").state == "failed"
    row = status_of(registry(broken, environ={"ATTNREF_DISABLE_PLUGINS": "broken"}), "broken")
    assert row.state == "disabled"


def test_unknown_backend_lists_the_known_ones():
    reg = registry(good_source("b"), good_source("a"), good_source("gpu", reason="no GPU"))
    with pytest.raises(BackendNotFoundError) as info:
        reg.get("nope")
    assert isinstance(info.value, BackendError) and isinstance(info.value, KeyError)
    assert str(info.value) == "backend: no backend named 'nope'; registered: a, b, gpu"


def test_unknown_backend_mentions_switched_off_plugins():
    reg = registry(good_source("a"), good_source("cupy"), environ={"ATTNREF_DISABLE_PLUGINS": "cupy"})
    with pytest.raises(BackendNotFoundError, match=r"registered: a; plugins switched off: cupy$"):
        reg.get("cupy")


def test_no_backend_at_all():
    with pytest.raises(BackendNotFoundError, match="registered: none"):
        registry().get("numpy")
    assert registry().names() == []
    assert registry().statuses() == []


def test_unavailable_backend():
    reg = registry(good_source("gpu", reason="CUDA driver not found"), good_source())
    with pytest.raises(BackendUnavailableError) as info:
        reg.get("gpu")
    assert isinstance(info.value, BackendError) and isinstance(info.value, RuntimeError)
    assert str(info.value) == "backend 'gpu' is unavailable: CUDA driver not found"
    row = status_of(reg, "gpu")
    assert (row.state, row.backend, row.detail) == ("unavailable", "gpu", "CUDA driver not found")
    assert reg.names() == ["good"]
    assert reg.names(include_unavailable=True) == ["good", "gpu"]


def test_availability_is_asked_lazily_and_each_time():
    class Lazy(FakeBackend):
        asked = 0

        @property
        def unavailable_reason(self) -> str | None:
            Lazy.asked += 1
            return None if Lazy.asked > 1 else "warming up"

        @unavailable_reason.setter
        def unavailable_reason(self, value: Any) -> None:
            pass

    reg = registry(source("lazy", Plugin([Lazy("lazy")])))
    assert reg.names() == []  # registering it did not ask: this first answer is "warming up"
    assert Lazy.asked == 1
    assert reg.names() == ["lazy"]


def test_plugin_with_no_backend_is_listed_as_loaded():
    reg = registry(source("empty", Plugin([])), good_source())
    row = status_of(reg, "empty")
    assert (row.state, row.backend, row.detail) == ("loaded", None, "provides no backend")
    assert reg.names() == ["good"]


def test_status_rows_carry_declarations_sorted():
    backend = FakeBackend("b", ops={"local_attention", "global_attention"}, dtypes={"float64", "float32"}, version="2")
    reg = registry(PluginSource("p", "dist 9: p.plugin", lambda: Plugin([backend]), version="9"))
    assert reg.statuses() == [
        BackendStatus(
            "p", "dist 9: p.plugin", "available", backend="b", version="2",
            ops=("global_attention", "local_attention"), dtypes=("float32", "float64"),
        )
    ]  # fmt: skip


def test_plugin_row_shows_the_distribution_version():
    reg = registry(PluginSource("p", "dist 9: p.plugin", lambda: None, version="9"))
    assert status_of(reg, "p").version == "9"


def test_statuses_are_sorted_and_states_known():
    reg = registry(
        good_source("z"),
        PluginSource("m", "test", lambda: 1 / 0),
        source("e", Plugin([])),
        good_source("a", reason="r"),
        good_source("d"),
        environ={"ATTNREF_DISABLE_PLUGINS": "d"},
    )
    rows = reg.statuses()
    assert [s.plugin for s in rows] == ["a", "d", "e", "m", "z"]
    assert [s.state for s in rows] == ["unavailable", "disabled", "loaded", "failed", "available"]
    assert {s.state for s in rows} == set(STATES)


def test_plugin_source_keeps_its_positional_form():
    def load() -> None:
        return None

    src = PluginSource("n", "o", load)
    assert (src.name, src.origin, src.load, src.version) == ("n", "o", load, None)


def test_module_functions_use_the_default_registry(monkeypatch):
    reg = registry(good_source("mine"), good_source("off", reason="nope"))
    monkeypatch.setattr(registry_module, "_default", reg)
    assert registry_module.default_registry() is reg
    assert attnref.list_backends() == ["mine", "off"]  # every backend that loaded, as the contract says
    assert attnref.list_backends(available=True) == ["mine"]
    assert attnref.get_backend("mine") is reg.get("mine")
    assert attnref.backend_statuses() == reg.statuses()
    with pytest.raises(BackendUnavailableError):
        attnref.get_backend("off")


def test_default_registry_is_created_once(monkeypatch):
    monkeypatch.setattr(registry_module, "_default", None)
    first = registry_module.default_registry()
    assert registry_module.default_registry() is first
