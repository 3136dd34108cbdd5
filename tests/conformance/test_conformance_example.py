"""The example outside package registers its backend and passes both forms of the suite.

``docs/examples/attnref-example-backend`` is installed into a throwaway virtual
environment, offline and without dependencies, and checked there with
``attnref conform`` and with ``pytest --pyargs attnref.conformance``.

The environment sees the running interpreter's packages (attnref, NumPy,
pytest, pip, setuptools) through a ``.pth`` file that adds this interpreter's
``site-packages`` as a site directory. That is what ``--system-site-packages``
would give from a plain interpreter; from inside a virtual environment that
flag would reach the *base* interpreter's packages instead, so the ``.pth``
does it explicitly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import venv
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "attnref-example-backend"


def _run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PIP_", "PYTHON"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", COLUMNS="200")
    return subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the example package installed; returns its python."""
    root = tmp_path_factory.mktemp("example")
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root)
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    lines = [f"import site; site.addsitedir({p!r})" for p in parents]
    (Path(purelib.stdout.strip()) / "_attnref_parent_env.pth").write_text("\n".join(lines) + "\n")
    source = shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    install = _run(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", str(source), cwd=root)
    assert install.returncode == 0, install.stdout + install.stderr
    return python


@pytest.mark.slow
def test_attnref_conform_checks_the_example_backend(example_env: Path, tmp_path: Path) -> None:
    listed = _run(example_env, "-m", "attnref", "backends", cwd=tmp_path)
    # columns as wide as the longest plugin name installed (onnxruntime with the peers extra)
    assert listed.returncode == 0 and re.search(r"│ example +│ example +│ available", listed.stdout)
    report = tmp_path / "report.json"
    result = _run(example_env, "-m", "attnref", "conform", "--backend", "example", "--examples", "3",
                  "--json", str(report), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    entry = json.loads(report.read_text())["backends"]["example"]
    assert entry["available"] is True
    summary = entry["summary"]
    assert summary["fail"] == summary["error"] == 0 and summary["pass"] > 200 and summary["unsupported"] > 0
    passed = {(c["op"], c["dtype"]) for c in entry["cases"] if c["status"] == "pass"}
    assert passed == {(op, dt) for op in ("global_attention", "local_attention") for dt in ("float32", "float64")}


@pytest.mark.slow
def test_the_pytest_form_checks_the_example_backend(example_env: Path, tmp_path: Path) -> None:
    result = _run(example_env, "-m", "pytest", "--pyargs", "attnref.conformance", "--attnref-backend", "example",
                  "--attnref-examples", "3", "-q", "-p", "no:cacheprovider", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert " passed" in last and " skipped" in last and "failed" not in last
