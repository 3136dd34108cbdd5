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


# -- the verdict: never a false PASS ------------------------------------------
def test_a_named_backend_that_cannot_run_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([*QUICK, "--backend", "gpu"], ToyBackend(), _Away(name="gpu")) == 1
    out = capsys.readouterr().out
    assert "PASS" not in out and "FAIL" in out and "'gpu' was asked for but cannot run: no GPU here" in out


def test_a_named_backend_that_cannot_run_fails_even_beside_a_passing_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([*QUICK, "--backend", "toy", "--backend", "gpu"], ToyBackend(), _Away(name="gpu")) == 1


def test_a_run_in_which_no_case_ran_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([*QUICK, "-k", "no-such-case"], ToyBackend()) == 1
    assert "no case ran" in capsys.readouterr().out
    only_gpu = _run(QUICK, _Away(name="gpu"))  # nothing available, nothing named: still not a PASS
    assert only_gpu == 1


def test_unsupported_features_are_reported_per_feature_and_strict_fails_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "report.json"
    flash = ToyBackend(name="flash", lacks=frozenset({"bias", "softcap"}))
    assert _run([*QUICK, "--json", str(path)], flash) == 0
    out = capsys.readouterr().out
    assert "flash: unsupported: bias (" in out and "softcap (" in out
    data = json.loads(path.read_text())["backends"]["flash"]
    assert set(data["unsupported_features"]) == {"bias", "softcap"}
    bias = next(c for c in data["cases"] if c["case"] == "bias")
    assert bias["status"] == "unsupported" and bias["feature"] == "bias" and "bias" in bias["detail"]
    assert _run([*QUICK, "--strict"], flash) == 1
    assert "unsupported (--strict): bias, softcap" in capsys.readouterr().out


def test_k_selects_tests_by_id(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    assert _run([*QUICK, "-k", "mask and not softcap", "--json", str(path)], ToyBackend()) == 0
    cases = {c["case"] for c in json.loads(path.read_text())["backends"]["toy"]["cases"]}
    assert cases and all("mask" in c and "softcap" not in c for c in cases)


@pytest.mark.parametrize("expression", ["mask and", "(mask", "and mask", "mask mask"])
def test_a_malformed_k_is_a_usage_error(expression: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([*QUICK, "-k", expression], ToyBackend()) == 2
    assert "-k" in capsys.readouterr().err


def test_an_xfail_file_turns_known_failures_green_and_warns_when_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buggy = ToyBackend({"mask-inverted"}, name="buggy")
    assert _run([*QUICK, "--backend", "buggy"], buggy) == 1
    xfails = tmp_path / "xfails.txt"
    xfails.write_text(
        "global_attention/*mask*/float32   # mask convention inverted\n"
        "global_attention/sinks-empty-rows/float32   # its empty rows come from a mask\n"
        "skip global_attention/random-*/*\n"
        "global_attention/basic/float32   # passes: stale\n"
        "luong_attention/nothing/*\n"
    )
    capsys.readouterr()
    assert _run([*QUICK, "--backend", "buggy", "--xfail", str(xfails)], buggy) == 0
    captured = capsys.readouterr()
    assert "PASS" in captured.out and "expected by --xfail" in captured.out
    assert "buggy: 2 tests skipped by the xfail file" in captured.out
    assert f"stale xfail entry {xfails}:4: every test of 'global_attention/basic/float32' passed" in captured.err
    assert f"stale xfail entry {xfails}:5: 'luong_attention/nothing/*' matches no test run" in captured.err
    xfails.write_text("two patterns here\n")
    assert _run([*QUICK, "--xfail", str(xfails)], buggy) == 2


def test_shards_split_the_catalogue(tmp_path: Path) -> None:
    seen = []
    for k in (1, 2, 3):
        path = tmp_path / f"shard{k}.json"
        assert _run([*QUICK, "--shard", f"{k}/3", "--json", str(path)], ToyBackend()) == 0
        seen.append({c["case"] for c in json.loads(path.read_text())["backends"]["toy"]["cases"]})
    whole = tmp_path / "whole.json"
    assert _run([*QUICK, "--json", str(whole)], ToyBackend()) == 0
    everything = {c["case"] for c in json.loads(whole.read_text())["backends"]["toy"]["cases"]}
    assert set.union(*seen) == everything and sum(map(len, seen)) == len(everything)
    assert _run([*QUICK, "--shard", "4/3"], ToyBackend()) == 2


def test_a_case_can_be_saved_and_reproduced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from attnref.reference import global_attention

    path = tmp_path / "case.npz"
    argv = ["--case", "global_attention/q-kv-lengths", "--dtype", "float16", "--save", str(path)]
    assert _run(argv, ToyBackend()) == 0
    saved = np.load(path)
    assert "q-kv-lengths" in str(saved["description"])
    assert "kv_lengths" in json.loads(str(saved["parameters"]))["options"]
    q, k, v = (saved[f"float16/input/{n}"] for n in "qkv")
    assert q.dtype == np.float16
    out, lse = global_attention(q, k, v, causal=True, return_lse=True, kv_lengths=saved["float16/option/kv_lengths"],
                                q_lengths=saved["float16/option/q_lengths"])  # fmt: skip
    np.testing.assert_array_equal(out, saved["float16/ref64/out"])
    np.testing.assert_array_equal(lse, saved["float16/ref64/lse"])
    assert "float16/naive/out" in saved
    assert _run(["--case", "global_attention/nope"], ToyBackend()) == 2
    assert _run(["--save", str(path)], ToyBackend()) == 2  # --save needs --case


def test_worst_cases_are_listed_per_dtype_non_finite_first(capsys: pytest.CaptureFixture[str]) -> None:
    buggy = ToyBackend({"nan-empty-rows", "fp16-in-bf16"}, name="buggy")
    argv = ["--op", "global_attention", "--dtype", "float16", "--dtype", "float64", "--examples", "0",
            "-k", "mask or basic"]  # fmt: skip
    assert _run(argv, buggy) == 1
    out = capsys.readouterr().out
    assert "worst failing cases in float16" in out and "worst failing cases in float64" in out
    float16 = out.split("worst failing cases in float16")[1].split("worst failing cases in float64")[0]
    rows = [line for line in float16.splitlines() if "global_attention/" in line]
    assert "inf" in rows[0] or "nan" in rows[0]  # the non-finite mismatch before the merely large error
    assert any("global_attention/basic" in row for row in rows)


def test_likely_causes_name_alignment(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--op", "global_attention", "--dtype", "float64", "--examples", "0", "-k", "lq- or basic"]
    assert _run(argv, ToyBackend({"alignment-ignored"}, name="buggy")) == 1
    assert "likely cause: alignment" in capsys.readouterr().out


def test_without_a_terminal_tables_are_full_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out, err = cli._consoles()
    assert out.width == err.width == 10_000  # pytest's captured stdout is not a terminal
