"""The installed plugins: built-ins register through the entry-point group like a third party."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest

import attnref
from attnref import hookspecs
from attnref.registry import Registry

BUILT_INS = {"numpy": "attnref_numpy.plugin", "torch": "attnref_torch.plugin", "cupy": "attnref_cupy.plugin"}


def test_built_ins_are_entry_points_of_the_group():
    found = {ep.name: ep for ep in metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)}
    for name, module in BUILT_INS.items():
        assert found[name].value == module
        assert found[name].dist is not None and found[name].dist.name == "attnref"


@pytest.mark.parametrize("module", sorted(BUILT_INS.values()))
def test_built_in_plugin_modules_are_attnref_prefixed_packages(module):
    package = module.split(".")[0]
    assert package.startswith("attnref_")
    assert importlib.util.find_spec(package) is not None


def test_no_top_level_backends_package_outside_the_repo(tmp_path):
    # From another directory the repo root is not on sys.path: only what is installed is importable.
    code = "import importlib.util as u; print(u.find_spec('backends'), u.find_spec('attnref_numpy') is not None)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["None", "True"]


def test_installed_registry_sees_every_built_in():
    statuses = Registry(environ={}).statuses()
    plugins = {s.plugin: s for s in statuses}
    for name, module in BUILT_INS.items():
        assert plugins[name].origin == f"attnref {attnref.__version__}: {module}"
        rows = [s for s in statuses if s.plugin == name]
        assert all(s.state != "failed" for s in rows), rows


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A fake installed distribution with a working and a broken plugin, on ``sys.path``."""
    dist = tmp_path / "attnref_thirdparty-3.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: attnref-thirdparty\nVersion: 3.1\n")
    (dist / "entry_points.txt").write_text(
        "[attnref.backends]\nthirdparty = attnref_thirdparty_ok\nthirdparty_broken = attnref_thirdparty_broken\n"
    )
    (tmp_path / "attnref_thirdparty_ok.py").write_text(
        textwrap.dedent("""
            import attnref
            import numpy as np

            class Backend:
                name = "thirdparty"
                version = "3.1"
                ops = frozenset()
                dtypes = frozenset({"float64"})
                unavailable_reason = None
                asarray = to_numpy = staticmethod(np.asarray)

            @attnref.hookimpl
            def attnref_backends():
                return [Backend()]
        """)
    )
    (tmp_path / "attnref_thirdparty_broken.py").write_text("raise ImportError('thirdparty dependency missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("attnref_thirdparty_ok", "attnref_thirdparty_broken"):
        sys.modules.pop(module, None)


def test_third_party_plugins_load_beside_the_built_ins(third_party):
    reg = Registry(environ={})
    rows = {s.plugin: s for s in reg.statuses()}
    assert rows["thirdparty"].state == "available"
    assert rows["thirdparty"].origin == "attnref-thirdparty 3.1: attnref_thirdparty_ok"
    assert rows["thirdparty_broken"].state == "failed"
    assert rows["thirdparty_broken"].detail == "ImportError: thirdparty dependency missing"
    assert rows["thirdparty_broken"].version == "3.1"
    assert "thirdparty" in reg.names()
    assert set(BUILT_INS) <= set(rows)
    off = Registry(environ={"ATTNREF_PLUGINS": "thirdparty"})
    assert {s.plugin for s in off.statuses() if s.state != "disabled"} == {"thirdparty"}
