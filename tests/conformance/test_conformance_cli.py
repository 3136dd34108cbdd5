"""``attnref conform``: exit status, the readable report and the JSON file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from planted import ToyBackend, toy_registry

from attnref import cli as attnref_cli
from attnref import registry as registry_module
from attnref.conformance import cli


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells at the terminal's width


class _Away(ToyBackend):
    unavailable_reason = "no GPU here"


def _run(argv: list[str], *backends: Any) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv), registry=toy_registry(*backends))


QUICK = ["--op", "global_attention", "--dtype", "float32", "--examples", "2"]


def test_a_conforming_backend_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(QUICK, ToyBackend()) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "global_attention" in out and "pass" in out
    assert "PASS" in out and "worst failing" not in out


def test_a_buggy_backend_exits_1_and_shows_its_worst_cases(capsys: pytest.CaptureFixture[str]) -> None:
    code = _run([*QUICK, "--worst", "3"], ToyBackend(), ToyBackend({"mask-inverted"}, name="buggy"))
    assert code == 1
    out = capsys.readouterr().out
    assert "worst failing cases in float32 (3 of" in out
    assert "global_attention/mask" in out and "FAIL" in out


def test_unavailable_backends_are_reported_not_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "report.json"
    assert _run([*QUICK, "--json", str(path)], ToyBackend(), _Away(name="gpu")) == 0
    assert "gpu: unavailable" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["backends"]["gpu"] == {
        "available": False,
        "reason": "no GPU here",
        "summary": {"pass": 0, "fail": 0, "error": 0, "unsupported": 0, "xfailed": 0},
        "unsupported_features": {},
        "cases": [],
    }
    toy = data["backends"]["toy"]
    assert toy["summary"]["pass"] == len(toy["cases"]) > 50
    assert {c["dtype"] for c in toy["cases"]} == {"float32"} and {c["op"] for c in toy["cases"]} == {"global_attention"}


def test_selection_and_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    partial = ToyBackend(name="partial", ops=frozenset({"global_attention"}), dtypes=frozenset({"float64"}))
    argv = ["--backend", "partial", "--op", "global_attention", "--op", "luong_attention", "--dtype", "float64",
            "--dtype", "bfloat16", "--examples", "1", "--json", str(path)]  # fmt: skip
    assert _run(argv, ToyBackend(), partial) == 0
    data = json.loads(path.read_text())
    assert list(data["backends"]) == ["partial"]
    summary = data["backends"]["partial"]["summary"]
    assert summary["fail"] == summary["error"] == 0 and summary["pass"] > 0 and summary["unsupported"] > summary["pass"]


def test_an_unknown_backend_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--backend", "nope"], ToyBackend()) == 2
    assert "nope" in capsys.readouterr().err


def test_an_unwritable_json_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([*QUICK, "--examples", "0", "--json", str(tmp_path / "missing" / "r.json")], ToyBackend()) == 2
    assert "cannot write the JSON report" in capsys.readouterr().err


def test_no_backend_at_all_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([]) == 1
    assert "no attnref backend" in capsys.readouterr().err


def test_the_attnref_command_reaches_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(registry_module, "_default", toy_registry(ToyBackend({"lse-log2"}, name="buggy")))
    assert attnref_cli.main(["conform", "--op", "chunked_attention", "--dtype", "float64", "--examples", "0"]) == 1
    out = capsys.readouterr().out
    assert "worst failing cases in float64 (10 of" in out and "lse: max error" in out


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["conform", "--dtype", "float8"], ["conform", "--op", "flash"], ["conform", "--examples", "-1"]):
        with pytest.raises(SystemExit) as info:
            attnref_cli.main(argv)
        assert info.value.code == 2
