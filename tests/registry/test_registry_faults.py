"""A broken plugin or backend is reported in ``statuses()`` and never stops the others."""

from __future__ import annotations

from typing import Any

import pytest
from plugin_kit import (
    FakeBackend,
    Plugin,
    assert_good_still_works,
    good_source,
    module_source,
    registry,
    source,
    status_of,
)

import attnref
from attnref.errors import BackendError, BackendNotFoundError, BackendUnavailableError
from attnref.registry import PluginSource


def test_plugin_that_raises_at_import_is_reported(tmp_path):
    broken = module_source(tmp_path, "broken", 'raise RuntimeError("boom at import")\n')
    reg = registry(broken, good_source())
    row = status_of(reg, "broken")
    assert (row.state, row.backend) == ("failed", None)
    assert row.detail == "RuntimeError: boom at import"
    assert row.origin == broken.origin
    assert_good_still_works(reg)


def test_plugin_that_exits_at_import_is_reported(tmp_path):
    reg = registry(module_source(tmp_path, "quitter", "import sys\nsys.exit(3)\n"), good_source())
    assert status_of(reg, "quitter").state == "failed"
    assert "SystemExit: 3" in status_of(reg, "quitter").detail
    assert_good_still_works(reg)


def test_module_plugin_that_works(tmp_path):
    code = """
        import attnref
        from plugin_kit import FakeBackend

        @attnref.hookimpl
        def attnref_backends():
            return [FakeBackend("from_module")]
    """
    reg = registry(module_source(tmp_path, "mod", code))
    assert reg.names() == ["from_module"]


def test_hook_that_raises_is_reported_and_unregistered():
    def explode() -> Any:
        raise ValueError("hook failed")

    reg = registry(source("explodes", Plugin(explode)), good_source())
    row = status_of(reg, "explodes")
    assert (row.state, row.detail) == ("failed", "ValueError: hook failed")
    assert not reg.plugin_manager.has_plugin("explodes")
    assert reg.plugin_manager.has_plugin("good")
    assert_good_still_works(reg)


def test_hook_that_raises_while_iterating_is_reported():
    def backends() -> Any:
        yield FakeBackend("half")
        raise KeyError("second backend")

    reg = registry(source("gen", Plugin(backends)), good_source())
    assert status_of(reg, "gen").state == "failed"
    assert "KeyError" in status_of(reg, "gen").detail
    assert "half" not in reg.names(include_unavailable=True)  # all or nothing per plugin
    assert_good_still_works(reg)


@pytest.mark.parametrize(
    "returned",
    [None, FakeBackend("single"), "numpy", {"name": FakeBackend("in_a_dict")}, 3],
    ids=["None", "bare-backend", "str", "dict", "int"],
)
def test_hook_returning_no_iterable_of_backends_is_reported(returned):
    reg = registry(source("odd", Plugin(lambda: returned)), good_source())
    row = status_of(reg, "odd")
    assert row.state == "failed"
    assert "must return an iterable of backend objects" in row.detail
    assert type(returned).__name__ in row.detail
    assert_good_still_works(reg)


class _NoName(FakeBackend):
    name = None

    def __init__(self) -> None:
        super().__init__()
        del self.name


class _RaisingOps(FakeBackend):
    @property
    def ops(self) -> Any:
        raise RuntimeError("ops probe")

    @ops.setter
    def ops(self, value: Any) -> None:
        pass


def _without(attribute: str) -> FakeBackend:
    backend = FakeBackend("bad")
    delattr(backend, attribute)
    return backend


def _with(attribute: str, value: Any) -> FakeBackend:
    backend = FakeBackend("bad")
    setattr(backend, attribute, value)
    return backend


class _NoToNumpy(FakeBackend):
    to_numpy = None


class _Hostile:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} here")


MALFORMED = [
    pytest.param(_Hostile(), None, "reading 'name' raised RuntimeError: no name here", id="every-attribute-raises"),
    pytest.param(_NoName(), None, "'name' must be a non-empty str", id="missing-name"),
    pytest.param(FakeBackend(""), None, "'name' must be a non-empty str", id="empty-name"),
    pytest.param(FakeBackend("bad", ops={"global_attention", "fft"}), "bad", "'ops' must be a set", id="ops-subset"),
    pytest.param(_with("ops", ["global_attention"]), "bad", "'ops' must be a set", id="ops-list"),
    pytest.param(
        FakeBackend("bad", ops={"global_attention", "luong_attention"}),
        "bad",
        "declares op 'luong_attention' but has no method luong_attention()",
        id="op-without-method",
    ),
    pytest.param(FakeBackend("bad", dtypes={"float32", "int8"}), "bad", "'dtypes' must be a set", id="bad-dtype"),
    pytest.param(_with("dtypes", "float32"), "bad", "'dtypes' must be a set", id="dtypes-str"),
    pytest.param(FakeBackend("bad", version=1), "bad", "'version' must be a str", id="bad-version"),
    pytest.param(_NoToNumpy("bad"), "bad", "missing method to_numpy()", id="no-to_numpy"),
    pytest.param(_without("unavailable_reason"), "bad", "missing attribute 'unavailable_reason'", id="no-reason"),
    pytest.param(_RaisingOps("bad"), "bad", "reading 'ops' raised RuntimeError: ops probe", id="raising-ops"),
]


@pytest.mark.parametrize(("backend", "name", "problem"), MALFORMED)
def test_malformed_backend_is_reported_and_its_plugin_siblings_work(backend, name, problem):
    sibling = FakeBackend("sibling")
    reg = registry(source("mixed", Plugin([backend, sibling])), good_source())
    failed = [s for s in reg.statuses() if s.state == "failed"]
    assert len(failed) == 1
    assert (failed[0].plugin, failed[0].backend) == ("mixed", name)
    assert failed[0].detail.startswith("malformed backend: ")
    assert problem in failed[0].detail
    assert reg.names() == ["good", "sibling"]
    assert_good_still_works(reg)
    assert_good_still_works(reg, "sibling", plugin="mixed")
    if name is not None:  # asking for it by name says why, instead of "not found"
        with pytest.raises(BackendError, match="malformed backend") as info:
            reg.get(name)
        assert not isinstance(info.value, BackendNotFoundError)


def test_malformed_backend_does_not_hide_a_good_namesake():
    reg = registry(source("bad", Plugin([FakeBackend("x", dtypes={"int8"})])), good_source("x"))
    assert reg.get("x").dtypes == frozenset({"float32", "float64"})
    assert status_of(reg, "bad").state == "failed"


def test_plugin_without_hookimpl_is_reported():
    class NoHook:
        def attnref_backends(self) -> list[Any]:  # not marked with @attnref.hookimpl
            return [FakeBackend("never")]

    reg = registry(source("nohook", NoHook()), good_source())
    row = status_of(reg, "nohook")
    assert row.state == "failed"
    assert "implements no attnref_backends() hook" in row.detail
    assert "never" not in reg.names(include_unavailable=True)
    assert_good_still_works(reg)


def test_misspelt_hook_is_named_in_the_error():
    class Typo:
        @attnref.hookimpl
        def attnref_backend(self) -> list[Any]:
            return []

    row = status_of(registry(source("typo", Typo())), "typo")
    assert row.state == "failed"
    assert "unknown hook(s) attnref_backend" in row.detail


def test_hook_with_wrong_signature_is_reported():
    class WrongArgs:
        @attnref.hookimpl
        def attnref_backends(self, config: Any) -> list[Any]:
            return []

    reg = registry(source("wrong", WrongArgs()), good_source())
    row = status_of(reg, "wrong")
    assert row.state == "failed"
    assert "PluginValidationError" in row.detail
    assert_good_still_works(reg)


def test_entry_point_loading_none_is_reported():
    reg = registry(source("none", None), good_source())
    assert status_of(reg, "none").state == "failed"
    assert_good_still_works(reg)


def test_unavailable_reason_that_raises_is_reported():
    class Probe(FakeBackend):
        @property
        def unavailable_reason(self) -> str | None:
            raise OSError("driver crashed")

        @unavailable_reason.setter
        def unavailable_reason(self, value: Any) -> None:
            pass

    reg = registry(source("probe", Plugin([Probe("probe")])), good_source())
    row = status_of(reg, "probe", "probe")
    assert row.state == "failed"
    assert row.detail == "unavailable_reason raised OSError: driver crashed"
    assert row.version == "1.0" and row.ops == ("global_attention",)
    assert reg.names(include_unavailable=True) == ["good"]
    with pytest.raises(BackendError, match="driver crashed") as info:
        reg.get("probe")
    assert not isinstance(info.value, BackendUnavailableError)
    assert_good_still_works(reg)


def test_duplicate_backend_name_across_plugins_names_both_sources():
    first = PluginSource("first", "dist-a 1.0: a.plugin", lambda: Plugin([FakeBackend("dup")]))
    second = PluginSource("second", "dist-b 2.0: b.plugin", lambda: Plugin([FakeBackend("dup")]))
    reg = registry(first, second, good_source())
    rows = [s for s in reg.statuses() if s.backend == "dup"]
    assert [(s.plugin, s.state) for s in rows] == [("first", "failed"), ("second", "failed")]
    for row in rows:
        for text in ("duplicate backend name 'dup'", "'first'", "dist-a 1.0: a.plugin", "'second'", "dist-b 2.0"):
            assert text in row.detail
    assert "dup" not in reg.names(include_unavailable=True)
    with pytest.raises(BackendError) as info:
        reg.get("dup")
    assert not isinstance(info.value, BackendNotFoundError)
    assert "dist-a 1.0: a.plugin" in str(info.value) and "dist-b 2.0: b.plugin" in str(info.value)
    assert_good_still_works(reg)


def test_duplicate_backend_name_three_ways_and_within_one_plugin():
    reg = registry(
        source("a", Plugin([FakeBackend("dup")])),
        source("b", Plugin([FakeBackend("dup"), FakeBackend("dup")])),
        good_source(),
    )
    with pytest.raises(BackendError) as info:
        reg.get("dup")
    message = str(info.value)
    assert message.count("plugin 'a'") == 1 and message.count("plugin 'b'") == 2
    assert len([s for s in reg.statuses() if s.backend == "dup"]) == 3
    assert_good_still_works(reg)


def test_duplicate_plugin_name_is_reported():
    first = good_source("same")
    second = PluginSource("same", "elsewhere: other.plugin", lambda: Plugin([FakeBackend("other")]))
    reg = registry(first, second)
    rows = reg.statuses()
    assert [(s.origin, s.state) for s in rows] == [("elsewhere: other.plugin", "failed"), ("test:same", "available")]
    assert "duplicate plugin name 'same': also provided by test:same" in rows[0].detail
    assert reg.names() == ["same"]


def test_plugin_querying_the_registry_while_loading_is_reported():
    holder: dict[str, Any] = {}

    def nosy() -> list[Any]:
        holder["registry"].names()
        return [FakeBackend("nosy")]

    reg = registry(source("nosy", Plugin(nosy)), good_source())
    holder["registry"] = reg
    row = status_of(reg, "nosy")
    assert row.state == "failed"
    assert "while its plugins were loading" in row.detail
    assert_good_still_works(reg)


def test_every_kind_of_failure_at_once(tmp_path):
    """All the broken plugins together: each reported, the good ones all work."""
    reg = registry(
        module_source(tmp_path, "imports_badly", "import no_such_module_attnref\n"),
        source("hook_raises", Plugin(lambda: 1 / 0)),
        source("malformed", Plugin([FakeBackend("m", dtypes={"int8"})])),
        source("nohook", object()),
        source("dup1", Plugin([FakeBackend("d")])),
        source("dup2", Plugin([FakeBackend("d")])),
        good_source("alpha"),
        good_source("omega", reason="needs a GPU"),
        good_source(),
    )
    states = {(s.plugin, s.state) for s in reg.statuses()}
    for plugin in ("imports_badly", "hook_raises", "malformed", "nohook", "dup1", "dup2"):
        assert (plugin, "failed") in states
    assert reg.names() == ["alpha", "good"]
    assert reg.names(include_unavailable=True) == ["alpha", "good", "omega"]
    assert_good_still_works(reg, "alpha")
    assert_good_still_works(reg)
