"""The pytest form: ``pytest --pyargs attnref.conformance --attnref-backend NAME``.

Each test runs pytest in a subprocess from a scratch directory whose
``conftest.py`` swaps the installed backends for the toy ones, so the plugin
is exercised exactly as a backend author's CI would use it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnref.conformance.cases import catalogue

HERE = Path(__file__).resolve().parent

CONFTEST = f"""
import sys
sys.path.insert(0, {str(HERE)!r})

import attnref.registry
from planted import ToyBackend, toy_registry


class Away(ToyBackend):
    unavailable_reason = "no GPU here"


attnref.registry._default = toy_registry(
    ToyBackend(),
    ToyBackend({{"mask-inverted"}}, name="buggy"),
    ToyBackend(name="partial", ops=frozenset({{"global_attention"}}), dtypes=frozenset({{"float32"}})),
    Away(name="gpu"),
)
"""

QUICK = ["--attnref-op", "global_attention", "--attnref-dtype", "float32", "--attnref-examples", "2"]
QUICK_TESTS = len(catalogue(["global_attention"], examples=2))  # one dtype


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    return tmp_path


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "--pyargs", "attnref.conformance", "-p", "no:cacheprovider", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COLUMNS"))}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**env, "COLUMNS": "200"})


def _count(output: str, word: str) -> int:
    last = output.strip().splitlines()[-1]
    for part in last.strip("= ").split(","):
        number, _, what = part.strip().partition(" ")
        if what.startswith(word):
            return int(number)
    return 0


def test_without_a_backend_everything_skips(tmp_path: Path) -> None:
    result = _pytest(tmp_path, "-rs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "no --attnref-backend given" in result.stdout


def test_a_conforming_backend_passes_with_a_header(project: Path) -> None:
    result = _pytest(project, "--attnref-backend", "toy", *QUICK)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "attnref conformance: backend toy 0.0 (ops: additive_attention, chunked_attention" in result.stdout
    assert "attnref settings: dtypes=float32 ops=global_attention examples=2 seed=0 xfails=none" in result.stdout
    assert _count(result.stdout, "passed") == QUICK_TESTS


def test_a_buggy_backend_fails_and_names_the_cases(project: Path) -> None:
    result = _pytest(project, "--attnref-backend", "buggy", *QUICK)
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "test_conformance[global_attention/mask/float32]" in result.stdout
    assert "global_attention/mask/float32: fail" in result.stdout and "allowed" in result.stdout


def test_unsupported_ops_and_dtypes_skip(project: Path) -> None:
    args = ["--attnref-op", "global_attention", "--attnref-op", "luong_attention", "--attnref-examples", "1"]
    result = _pytest(project, "--attnref-backend", "partial", *args, "--attnref-dtype", "float32",
                     "--attnref-dtype", "float16", "-rs")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert "unsupported: backend does not support float16" in result.stdout
    assert "unsupported: backend does not implement luong_attention" in result.stdout
    assert _count(result.stdout, "passed") > 0 and _count(result.stdout, "skipped") > _count(result.stdout, "passed")


def test_an_unavailable_backend_is_a_usage_error_not_a_green_run(project: Path) -> None:
    result = _pytest(project, "--attnref-backend", "gpu", *QUICK, "-rs")
    assert result.returncode == 4
    assert "backend 'gpu' cannot run here: no GPU here" in result.stderr


def test_an_unknown_backend_is_a_usage_error(project: Path) -> None:
    result = _pytest(project, "--attnref-backend", "nope")
    assert result.returncode == 4
    assert "no backend named 'nope'" in result.stderr


def test_xfail_file_marks_tests_and_warns_about_stale_entries(project: Path) -> None:
    xfails = project / "xfails.txt"
    xfails.write_text(
        "# expected failures of the buggy backend\n"
        "global_attention/mask*/float32   # mask convention inverted\n"
        "global_attention/softcap-mask/*\n"
        "skip global_attention/random-*/float32   # too slow here\n"
        "global_attention/basic/float32   # passes: stale\n"
        "luong_attention/no-such-case/*   # matches nothing: stale\n"
    )
    result = _pytest(project, "--attnref-backend", "buggy", *QUICK, "--attnref-xfails", str(xfails))
    out = result.stdout
    assert "xfails=" in out and "(5 entries)" in out
    assert _count(out, "xfailed") >= 3 and _count(out, "xpassed") == 1 and _count(out, "skipped") == 2
    assert "xfails.txt:6: 'luong_attention/no-such-case/*' matches no test of the catalogue" in out
    assert "xfails.txt:5: every test of 'global_attention/basic/float32' passed (1); remove the entry" in out
    assert "xfails.txt:2" not in out.split("warnings summary")[-1]  # still failing: not stale
    # the mask-inverted bug also fails cases the file does not list
    assert result.returncode == (1 if _count(out, "failed") else 0)


def test_under_xdist_the_same_tests_run(project: Path) -> None:
    """xdist itself fails the run if its workers collect different tests."""
    parallel = _pytest(project, "--attnref-backend", "toy", *QUICK, "-q", "-n", "2")
    assert parallel.returncode == 0, parallel.stdout[-3000:]
    assert _count(parallel.stdout, "passed") == QUICK_TESTS


def test_the_plugin_is_cheap_to_import() -> None:
    code = (
        "import sys, attnref.conformance.pytest_plugin\n"
        "heavy = ['hypothesis', 'rich', 'torch', 'cupy', 'attnref.reference', 'attnref.conformance.cases']\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_suite_never_imports_torch_or_cupy() -> None:
    code = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from planted import ToyBackend, toy_registry
from attnref.conformance import cli, runner
from attnref.conformance.cases import catalogue
report = runner.run_suite([runner.Target("toy", ToyBackend())], catalogue(examples=2), ["float32"])
assert report.ok
print([m for m in ("torch", "cupy") if m in sys.modules])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
