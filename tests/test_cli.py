"""The ``attnref`` command line: ``backends`` and ``--version``."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import attnref
from attnref import cli
from attnref import registry as registry_module
from attnref.registry import STATES, PluginSource, Registry

COLUMNS = ("plugin", "backend", "status", "version", "ops", "dtypes", "detail")


class _Backend:
    def __init__(self, name: str, reason: str | None = None):
        self.name = name
        self.version = "4.5.6"
        self.ops = frozenset({"local_attention", "global_attention"})
        self.dtypes = frozenset({"float64", "bfloat16"})
        self.unavailable_reason = reason

    asarray = to_numpy = staticmethod(np.asarray)

    def global_attention(self, q: Any, k: Any, v: Any, **options: Any) -> Any:
        raise NotImplementedError  # never run by these tests

    local_attention = global_attention


class _Plugin:
    def __init__(self, *backends: Any):
        self.backends = backends

    @attnref.hookimpl
    def attnref_backends(self) -> list[Any]:
        return list(self.backends)


def _fail() -> Any:
    raise RuntimeError("plugin exploded [/bold] at import")  # looks like rich markup on purpose


@pytest.fixture(autouse=True)
def _plain_console(monkeypatch):
    """Piped output, as in CI: rich must not think it is on a terminal."""
    for name in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_plugins(monkeypatch) -> Registry:
    reg = Registry(
        [
            PluginSource("alpha", "test: alpha", lambda: _Plugin(_Backend("alpha"))),
            PluginSource("beta", "test: beta", lambda: _Plugin(_Backend("beta", reason="needs a GPU"))),
            PluginSource("broken", "test: broken", _fail),
            PluginSource("empty", "test: empty", lambda: _Plugin(), version="0.0.1"),
            PluginSource("off", "test: off", lambda: _Plugin(_Backend("off"))),
        ],
        environ={"ATTNREF_DISABLE_PLUGINS": "off"},
    )
    monkeypatch.setattr(registry_module, "_default", reg)
    return reg


def _rows(output: str) -> dict[str, dict[str, str]]:
    """The table's body rows, keyed by plugin name (one line per row when piped)."""
    lines = [line for line in output.splitlines() if line.startswith("│")]
    cells = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]
    assert all(len(row) == len(COLUMNS) for row in cells), output
    return {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in cells}


def test_backends_lists_every_plugin_with_its_state(fake_plugins, capsys):
    assert cli.main(["backends"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {"alpha", "beta", "broken", "empty", "off"}
    assert rows["alpha"] == {
        "plugin": "alpha",
        "backend": "alpha",
        "status": "available",
        "version": "4.5.6",
        "ops": "global_attention, local_attention",
        "dtypes": "bfloat16, float64",
        "detail": "",
    }
    assert (rows["beta"]["status"], rows["beta"]["detail"]) == ("unavailable", "needs a GPU")
    assert rows["beta"]["ops"] == "global_attention, local_attention"
    assert (rows["broken"]["status"], rows["broken"]["backend"]) == ("failed", "-")
    assert rows["broken"]["detail"] == "RuntimeError: plugin exploded [/bold] at import"
    assert (rows["empty"]["status"], rows["empty"]["version"]) == ("loaded", "0.0.1")
    assert rows["empty"]["detail"] == "provides no backend"
    assert (rows["off"]["status"], rows["off"]["detail"]) == ("disabled", "switched off by ATTNREF_DISABLE_PLUGINS")


def test_backends_with_no_plugin_prints_an_empty_table(monkeypatch, capsys):
    monkeypatch.setattr(registry_module, "_default", Registry([], environ={}))
    assert cli.main(["backends"]) == 0
    out = capsys.readouterr().out
    assert f"attnref {attnref.__version__} backends" in out
    assert _rows(out) == {}


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"attnref {attnref.__version__}"


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "backends" in capsys.readouterr().err


def test_console_script_points_at_main():
    scripts = metadata.entry_points(group="console_scripts")
    assert [ep.value for ep in scripts if ep.name == "attnref"] == ["attnref.cli:main"]


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR") and not k.startswith("ATTNREF")}
    return subprocess.run(
        [sys.executable, "-m", "attnref", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**base, **(env or {})},
        cwd=cwd,
    )


def test_python_m_attnref_backends_lists_the_built_ins():
    result = _run("backends")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert {"numpy", "torch", "cupy"} <= set(rows)
    for row in rows.values():
        assert row["status"] in STATES
        if row["status"] in ("available", "unavailable"):
            assert row["version"] != "-" and row["ops"] != "-" and row["dtypes"] != "-"


def test_python_m_attnref_backends_shows_a_broken_installed_plugin(tmp_path):
    dist = tmp_path / "attnref_clitest-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: attnref-clitest\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[attnref.backends]\nclitest = attnref_clitest_plugin\n")
    (tmp_path / "attnref_clitest_plugin.py").write_text("raise ImportError('clitest needs libfoo')\n")
    result = _run("backends", env={"PYTHONPATH": str(tmp_path), "ATTNREF_DISABLE_PLUGINS": "cupy"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert rows["clitest"]["status"] == "failed"
    assert rows["clitest"]["version"] == "1.0"
    assert rows["clitest"]["detail"] == "ImportError: clitest needs libfoo"
    assert rows["cupy"]["status"] == "disabled"
    assert {"numpy", "torch"} <= set(rows)


def test_python_m_attnref_version():
    result = _run("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"attnref {attnref.__version__}")
