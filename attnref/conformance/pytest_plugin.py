"""pytest plugin of the conformance suite: the catalogue as pytest tests.

Installed with attnref (entry point ``pytest11``), so it is loaded in every
pytest run of an environment that has attnref; it does nothing unless
``--attnref-backend`` is given, and imports nothing heavy until then. Run::

    pytest --pyargs attnref.conformance --attnref-backend NAME [-n auto]

Options:

``--attnref-backend NAME``
    The backend to check (required; without it every conformance test skips).
``--attnref-dtype NAME``, ``--attnref-op NAME``
    Restrict the dtypes or ops (repeatable; default all).
``--attnref-examples N``, ``--attnref-seed S``, ``--attnref-long``, ``--attnref-strict``
    Random cases per op and their seed, the long-context tier, unsupported
    tests as failures: as ``attnref conform``. pytest's own ``-k`` filters.
``--attnref-xfails FILE``
    Expected failures, the same file as ``attnref conform --xfail``. One entry a
    line: a glob pattern over the test ids ``op/case/dtype``
    (``global_attention/nan-*/float16``), optionally preceded by ``skip`` to
    skip instead of xfail, optionally followed by ``# reason``. Entries
    matching no test of the catalogue, and entries whose tests all passed, are
    reported as stale with a warning.

Each test is one ``op/case/dtype``; an op or dtype the backend does not declare,
or an :class:`attnref.UnsupportedError` it raises, is skipped as unsupported. A
backend that is unknown, failed to load or is unavailable here is a usage error
(exit status 4), never a green run of skipped tests. Parametrization depends only on the options, so every pytest-xdist
worker collects the same tests.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["read_xfails", "conformance_params", "check"]

_SETTINGS = pytest.StashKey["_Settings"]()
_NO_BACKEND = "no --attnref-backend given (run: pytest --pyargs attnref.conformance --attnref-backend NAME)"


def read_xfails(path: Path) -> list[Any]:
    """Parse an xfail file (see :mod:`attnref.conformance.selection`); a malformed line is a usage error."""
    from attnref.conformance.selection import read_xfails as parse

    try:
        return parse(path)
    except ValueError as exc:
        raise pytest.UsageError(f"--attnref-xfails {exc}") from exc


@dataclass
class _Settings:
    backend_name: str
    dtypes: list[str]
    ops: list[str]
    examples: int
    seed: int
    xfails_path: Path | None
    long: bool = False
    strict: bool = False
    xfails: list[Any] = field(default_factory=list)
    backend: Any = None
    cache: Any = None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnref", "attnref conformance suite (pytest --pyargs attnref.conformance)")
    group.addoption("--attnref-backend", metavar="NAME", help="backend to check; without it the suite skips")
    group.addoption("--attnref-dtype", action="append", metavar="NAME", help="dtype to check (repeatable)")
    group.addoption("--attnref-op", action="append", metavar="NAME", help="op to check (repeatable)")
    group.addoption("--attnref-examples", type=int, metavar="N", help="seeded random cases per op")
    group.addoption("--attnref-seed", type=int, default=0, metavar="S", help="seed of the random cases (default 0)")
    group.addoption("--attnref-long", action="store_true", help="add the long-context tier (as attnref conform --long)")
    group.addoption("--attnref-strict", action="store_true", help="fail unsupported tests instead of skipping them")
    group.addoption("--attnref-xfails", metavar="FILE", help="file of expected failures: '[skip] PATTERN [# reason]'")


def _choose(given: list[str] | None, known: tuple[str, ...], option: str) -> list[str]:
    unknown = sorted(set(given or ()) - set(known))
    if unknown:
        raise pytest.UsageError(f"{option}: unknown {', '.join(unknown)}; expected one of {', '.join(known)}")
    return [name for name in known if given is None or name in given]


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("attnref_backend", None)
    if not name:
        return
    from attnref.backend import OPS
    from attnref.conformance.cases import DEFAULT_EXAMPLES
    from attnref.conformance.runner import ReferenceCache, resolve_targets
    from attnref.dtypes import DTYPE_NAMES
    from attnref.errors import BackendNotFoundError

    examples = config.getoption("attnref_examples")
    path = config.getoption("attnref_xfails")
    settings = _Settings(
        backend_name=name,
        dtypes=_choose(config.getoption("attnref_dtype"), DTYPE_NAMES, "--attnref-dtype"),
        ops=_choose(config.getoption("attnref_op"), OPS, "--attnref-op"),
        examples=DEFAULT_EXAMPLES if examples is None else max(0, examples),
        seed=config.getoption("attnref_seed"),
        xfails_path=None if path is None else Path(path),
        long=bool(config.getoption("attnref_long")),
        strict=bool(config.getoption("attnref_strict")),
        cache=ReferenceCache(),
    )
    if settings.xfails_path is not None:
        if not settings.xfails_path.is_file():
            raise pytest.UsageError(f"--attnref-xfails: no such file {settings.xfails_path}")
        settings.xfails = read_xfails(settings.xfails_path)
    try:
        (target,) = resolve_targets([name])
    except BackendNotFoundError as exc:
        raise pytest.UsageError(f"--attnref-backend: {exc}") from exc
    if target.backend is None:  # a backend asked for by name that cannot run is an error, never a green run
        raise pytest.UsageError(f"--attnref-backend: backend {name!r} cannot run here: {target.reason}")
    settings.backend = target.backend
    config.stash[_SETTINGS] = settings
    if settings.xfails:
        config.pluginmanager.register(_XfailTracker(settings), "attnref-xfail-tracker")


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash.get(_SETTINGS, None)
    if settings is None:
        return []
    b = settings.backend
    state = f"backend {b.name} {b.version} (ops: {', '.join(sorted(b.ops))}; dtypes: {', '.join(sorted(b.dtypes))})"
    xfails = "none" if settings.xfails_path is None else f"{settings.xfails_path} ({len(settings.xfails)} entries)"
    return [
        f"attnref conformance: {state}",
        f"attnref settings: dtypes={','.join(settings.dtypes)} ops={','.join(settings.ops)} "
        f"examples={settings.examples} seed={settings.seed} xfails={xfails}",
    ]


def conformance_params(config: pytest.Config) -> list[Any]:
    """The parameters of the conformance test: one ``(case, dtype)`` per test, id ``op/case/dtype``."""
    settings = config.stash.get(_SETTINGS, None)
    if settings is None:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=_NO_BACKEND), id="no-backend")]
    from attnref.conformance.cases import catalogue

    cases = catalogue(settings.ops, settings.examples, settings.seed, long=settings.long)
    params = []
    for case in cases:
        for dtype in settings.dtypes:
            key = f"{case.key}/{dtype}"
            params.append(pytest.param(case, dtype, marks=_marks(settings, key), id=key))
    _warn_unmatched(settings, cases)
    return params


def _marks(settings: _Settings, key: str) -> list[Any]:
    for entry in settings.xfails:
        if entry.matches(key):
            entry.matched += 1
            if entry.skip:
                return [pytest.mark.skip(reason=f"attnref-xfails: {entry.reason}")]
            return [pytest.mark.xfail(reason=f"attnref-xfails: {entry.reason}", strict=False)]
    return []


def _warn_unmatched(settings: _Settings, cases: list[Any]) -> None:
    """Warn about entries matching no test of the whole catalogue (every op and dtype)."""
    from attnref.backend import OPS
    from attnref.conformance.cases import catalogue
    from attnref.dtypes import DTYPE_NAMES

    unmatched = [e for e in settings.xfails if not e.matched]
    if not unmatched:
        return
    full = cases if len(settings.ops) == len(OPS) else catalogue(None, settings.examples, settings.seed)
    keys = [f"{c.key}/{d}" for c in full for d in DTYPE_NAMES]
    for entry in unmatched:
        if not any(entry.matches(k) for k in keys):
            warnings.warn(
                f"stale --attnref-xfails entry {settings.xfails_path}:{entry.line}: "
                f"{entry.pattern!r} matches no test of the catalogue",
                pytest.PytestWarning,
                stacklevel=2,
            )


_ID = re.compile(r"\[(?P<key>[^\[\]]+/[^\[\]]+/[^\[\]]+)\]$")


class _XfailTracker:
    """Counts, per xfail entry, the tests that failed as expected and those that passed, and
    warns at the end about entries whose tests all passed (on the xdist controller, which
    receives every worker's reports)."""

    def __init__(self, settings: _Settings):
        self.settings = settings

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        match = _ID.search(report.nodeid)
        if report.when != "call" or not hasattr(report, "wasxfail") or match is None:
            return
        for entry in self.settings.xfails:
            if not entry.skip and entry.matches(match.group("key")):
                if report.passed:
                    entry.xpassed += 1
                else:
                    entry.xfailed += 1
                return

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if hasattr(config, "workerinput"):  # an xdist worker sees only its share of the tests
            return
        for entry in self.settings.xfails:
            if not entry.skip and entry.xpassed and not entry.xfailed:
                message = (
                    f"stale --attnref-xfails entry {self.settings.xfails_path}:{entry.line}: every test of "
                    f"{entry.pattern!r} passed ({entry.xpassed}); remove the entry"
                )
                config.issue_config_time_warning(pytest.PytestWarning(message), stacklevel=2)


def check(config: pytest.Config, case: Any, dtype: str | None) -> None:
    """Run one conformance test: pass, or skip/fail with the reason."""
    settings = config.stash.get(_SETTINGS, None)
    if settings is None or case is None:
        pytest.skip(_NO_BACKEND)
    from attnref.conformance.runner import run_case

    result = run_case(settings.backend, case, dtype, settings.cache)
    if result.status == "unsupported" and not settings.strict:
        pytest.skip(f"unsupported: {result.detail}")
    if result.status == "pass":
        return
    lines = [f"{result.key}: {result.status}", f"case: {case.note}" if case.note else "", result.detail or ""]
    if result.status == "fail" and result.err is not None:
        lines.append(f"err {result.err:.3g}, allowed {result.allowed:.3g}")
    if result.trace:
        lines += ["backend traceback:", result.trace]
    pytest.fail("\n".join(line for line in lines if line), pytrace=False)
