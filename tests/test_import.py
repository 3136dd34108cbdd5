"""``import attnref`` and asking for the backends pull in neither torch nor cupy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "cupy")


def _imported(code: str, modules: tuple[str, ...] = HEAVY) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter and say which of ``modules`` it left in ``sys.modules``."""
    probe = f"import json, sys\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import attnref",
        "import attnref; attnref.list_backends(); attnref.backend_statuses()",
        "import attnref.reference, attnref.validation, attnref.patterns, attnref.registry",
    ],
)
def test_heavy_libraries_are_not_imported(code):
    assert _imported(code) == dict.fromkeys(HEAVY, False)


def test_the_probe_sees_an_import():
    # Guards the test above against passing vacuously.
    assert _imported("import attnref, numpy, email", ("numpy", "email", "attnref")) == {
        "numpy": True,
        "email": True,
        "attnref": True,
    }
