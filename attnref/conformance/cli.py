"""``attnref conform``: run the conformance suite and show a readable report.

::

    attnref conform [--backend NAME]... [--dtype NAME]... [--op NAME]...
                    [-k EXPR] [--case OP/CASE] [--save PATH] [--xfail PATH]
                    [--shard K/N] [--long] [--strict]
                    [--json PATH] [--examples N] [--seed S] [--worst N]

Every installed backend by default (unavailable ones are reported and
skipped). While it runs, a progress bar; then a matrix (backend x op x dtype:
pass / fail / error / unsupported counts), the unavailable backends with their
reasons, the unsupported features, the worst failing cases per dtype
(non-finite mismatches and errors first, then by absolute error), the likely
causes, and the verdict with its reasons. The exit status is 0 only for a PASS:
every backend named with ``--backend`` ran, some case ran, and nothing failed
or errored that an ``--xfail`` entry did not expect (nor was unsupported, with
``--strict``); 1 otherwise; 2 for a usage error (an unknown backend, a
malformed ``-k``/``--shard``/xfail file, an unknown ``--case``, a path that
cannot be written). Without a terminal the tables are printed at full width,
one line per row.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnref.backend import OPS
from attnref.conformance.cases import DEFAULT_EXAMPLES
from attnref.dtypes import DTYPE_NAMES

__all__ = ["add_arguments", "run"]

_COLOURS = {"pass": "green", "fail": "red", "error": "magenta", "unsupported": "dim"}


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``conform`` options to ``parser``."""
    parser.description = "Check backends against the float64 reference on the conformance catalogue."
    parser.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        help="backend to check (repeatable; default: every installed backend); one that cannot run is an error",
    )
    parser.add_argument(
        "--dtype",
        action="append",
        choices=DTYPE_NAMES,
        metavar="NAME",
        help=f"dtype to check (repeatable; default: all of {', '.join(DTYPE_NAMES)})",
    )
    parser.add_argument(
        "--op",
        action="append",
        choices=OPS,
        metavar="NAME",
        help=f"op to check (repeatable; default: all of {', '.join(OPS)})",
    )
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="run the tests whose op/case/dtype id matches EXPR "
                        "(pytest -k syntax: words, and, or, not, parentheses)")  # fmt: skip
    parser.add_argument("--case", metavar="OP/CASE", help="run only the case with this id (e.g. local_attention/basic)")
    save_help = "with --case: write its inputs and the reference's outputs per dtype to PATH (.npz)"
    parser.add_argument("--save", type=Path, metavar="PATH", help=save_help)
    xfail_help = "expected failures, one glob over op/case/dtype a line: '[skip] PATTERN [# reason]'"
    parser.add_argument("--xfail", type=Path, metavar="PATH", help=xfail_help)
    parser.add_argument("--shard", metavar="K/N", help="run the K-th of N disjoint parts of the catalogue (CI matrix)")
    parser.add_argument("--long", action="store_true", help="add the long-context tier (2^16..2^18 tokens, 2^20 keys)")
    parser.add_argument("--strict", action="store_true", help="fail unsupported ops, dtypes and features too")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument(
        "--examples",
        type=_count,
        default=DEFAULT_EXAMPLES,
        metavar="N",
        help=f"seeded random cases per op (default {DEFAULT_EXAMPLES})",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random cases (default 0)")
    parser.add_argument(
        "--worst", type=_count, default=10, metavar="N", help="failing cases to show per dtype (default 10)"
    )


def _cell(counts: dict[str, int]) -> str:
    if counts["unsupported"] and not any(counts[s] for s in ("pass", "fail", "error")):
        return "[dim]unsupported[/]"
    parts = [f"[{_COLOURS[s]}]{counts[s]} {s}[/]" for s in ("pass", "fail", "error", "unsupported") if counts[s]]
    return ", ".join(parts) or "-"


def _matrix(report: Any, ops: Sequence[str], dtypes: Sequence[str]) -> Any:
    from rich.table import Table

    table = Table(title="attnref conform: cases by backend, op and dtype")
    table.add_column("backend", no_wrap=True)
    table.add_column("op", no_wrap=True)
    for dtype in dtypes:
        table.add_column(dtype)
    for name, entry in report.backends.items():
        if not entry.available:
            continue
        for op in ops:
            row = []
            for dtype in dtypes:
                counts = dict.fromkeys(("pass", "fail", "error", "unsupported"), 0)
                for r in entry.results:
                    if r.op == op and r.dtype == dtype:
                        counts[r.status] += 1
                row.append(_cell(counts))
            table.add_row(name, op, *row)
    return table


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _worst_key(result: Any) -> tuple[int, float]:
    """Errors and non-finite mismatches first, then the largest absolute error."""
    err = result.err
    if result.status == "error" or err is None or err == float("inf"):
        return (0, 0.0)
    return (1, -err)


def _worst(report: Any, dtype: str, limit: int) -> Any:
    """The worst failing tests of one dtype, non-finite and large errors first."""
    from rich.table import Table
    from rich.text import Text

    rows = [(name, r) for name, entry in report.backends.items() for r in entry.results if r.counts_as_failure]
    rows = sorted((row for row in rows if row[1].dtype == dtype), key=lambda row: _worst_key(row[1]))
    table = Table(title=f"worst failing cases in {dtype} ({min(limit, len(rows))} of {len(rows)})")
    for column in ("backend", "op/case", "status", "err", "allowed", "case", "detail"):
        table.add_column(column, overflow="fold")
    for name, r in rows[:limit]:
        status = Text(r.status, style=_COLOURS[r.status])
        table.add_row(name, f"{r.op}/{r.case}", status, _number(r.err), _number(r.allowed),
                      Text(r.description), Text(r.detail or ""))  # fmt: skip
    return table


def _progress(console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _usage(err: Any, message: str) -> int:
    err.print(f"[red]attnref conform:[/] {message}", markup=True, highlight=False)
    return 2


def _consoles() -> tuple[Any, Any]:
    """Consoles for stdout and stderr; full width without a terminal, so a log keeps one line per row."""
    import os

    from rich.console import Console

    out, err = Console(), Console(stderr=True)
    for console in (out, err):
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console.width = 10_000
    return out, err


def _select_cases(args: argparse.Namespace, ops: list[str]) -> list[Any]:
    """The catalogue (long tier included with ``--long``), narrowed by ``--case`` and ``--shard``."""
    from attnref.conformance.cases import catalogue
    from attnref.conformance.selection import parse_shard, shard

    cases = catalogue(ops, args.examples, args.seed, long=args.long)
    if args.case is not None:
        cases = [case for case in cases if case.key == args.case]
        if not cases:
            raise ValueError(f"--case: no case {args.case!r} in the catalogue of {', '.join(ops)} (ids are OP/CASE)")
    if args.shard is not None:
        cases = shard(cases, *parse_shard(args.shard))
    return cases


def _report(out: Any, report: Any, ops: Sequence[str], dtypes: Sequence[str], args: argparse.Namespace) -> None:
    from attnref.conformance.causes import likely_causes

    for name, entry in report.backends.items():
        if entry.available:
            out.print(f"{name}: version {entry.version}", highlight=False)
    out.print(_matrix(report, ops, dtypes))
    for name, entry in report.backends.items():
        if not entry.available:
            colour = "red" if entry.named else "yellow"
            out.print(f"[{colour}]{name}: unavailable[/] ({entry.reason}); not run", highlight=False)
        features = entry.unsupported_features()
        if features:
            listed = ", ".join(f"{feature} ({count})" for feature, count in features.items())
            out.print(f"{name}: unsupported: {listed}", highlight=False)
        if entry.skipped:
            out.print(f"{name}: {entry.skipped} tests skipped by the xfail file", highlight=False)
    for dtype in dtypes:
        if any(r.counts_as_failure and r.dtype == dtype for e in report.backends.values() for r in e.results):
            out.print(_worst(report, dtype, args.worst))
    for name, entry in report.backends.items():
        for cause in likely_causes(entry.results):
            out.print(f"{name}: likely cause: {cause}", highlight=False)


def _stale_xfails(err: Any, entries: Sequence[Any], path: Path) -> None:
    for entry in entries:
        if not entry.matched:
            err.print(f"warning: stale xfail entry {path}:{entry.line}: {entry.pattern!r} matches no test run",
                      highlight=False, markup=False)  # fmt: skip
        elif not entry.skip and entry.xpassed and not entry.xfailed:
            err.print(f"warning: stale xfail entry {path}:{entry.line}: every test of {entry.pattern!r} passed "
                      f"({entry.xpassed}); remove the entry", highlight=False, markup=False)  # fmt: skip


def run(args: argparse.Namespace, registry: Any = None) -> int:
    """Run ``attnref conform`` with parsed ``args``; returns the exit status.

    ``registry`` (default: the installed plugins) is for tests.
    """
    from attnref.conformance.runner import resolve_targets, run_suite, save_case
    from attnref.conformance.selection import keyword_matcher, read_xfails
    from attnref.errors import BackendNotFoundError
    from attnref.registry import default_registry

    out, err = _consoles()
    registry = registry if registry is not None else default_registry()
    for status in registry.statuses():
        if status.state == "failed":
            err.print(f"[yellow]warning:[/] plugin {status.plugin!r} failed to load: {status.detail}")
    try:
        targets = resolve_targets(args.backend, registry)
    except BackendNotFoundError as exc:
        return _usage(err, str(exc))
    if not targets:
        err.print("[red]attnref conform:[/] FAIL: no attnref backend is installed (see `attnref backends`)")
        return 1
    ops = list(dict.fromkeys(args.op or OPS))
    dtypes = [d for d in DTYPE_NAMES if d in set(args.dtype or DTYPE_NAMES)]
    try:
        if args.save is not None and args.case is None:
            raise ValueError("--save: needs --case OP/CASE (the case whose inputs to write)")
        cases = _select_cases(args, ops)
        select = None if args.keyword is None else keyword_matcher(args.keyword)
        xfails = [] if args.xfail is None else read_xfails(args.xfail)
    except (ValueError, OSError) as exc:
        return _usage(err, str(exc))
    if args.save is not None:
        try:
            save_case(cases[0], dtypes, args.save)
        except OSError as exc:
            return _usage(err, f"--save: cannot write {args.save}: {exc}")
        out.print(f"case {cases[0].key} ({cases[0].note}) saved to {args.save}", highlight=False)
    out.print(
        f"attnref conform: {len(cases)} cases ({args.examples} random per op, seed {args.seed}"
        f"{', long tier' if args.long else ''}{f', shard {args.shard}' if args.shard else ''}) x "
        f"{len(dtypes)} dtypes on {', '.join(t.name for t in targets)}",
        highlight=False,
    )
    with _progress(err) as progress, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a backend's numerical warnings would tear the progress bar
        total = len(cases) * len(dtypes)
        tasks = {t.name: progress.add_task(t.name, total=total) for t in targets if t.available}
        report = run_suite(targets, cases, dtypes, on_result=lambda name, _: progress.advance(tasks[name]),
                           xfails=xfails, select=select, strict=args.strict)  # fmt: skip
    _report(out, report, ops, dtypes, args)
    if args.xfail is not None:
        _stale_xfails(err, xfails, args.xfail)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report.as_json(), indent=1, allow_nan=False) + "\n")
        except OSError as exc:
            return _usage(err, f"cannot write the JSON report: {exc}")
        out.print(f"JSON report written to {args.json}", highlight=False)
    totals = {s: sum(e.summary()[s] for e in report.backends.values()) for s in ("pass", "fail", "error", "xfailed")}
    problems = report.problems()
    verdict = "[red]FAIL[/]" if problems else "[green]PASS[/]"
    xfailed = f" ({totals['xfailed']} of them expected by --xfail)" if totals["xfailed"] else ""
    out.print(f"{verdict}: {totals['pass']} passed, {totals['fail']} failed, {totals['error']} errored{xfailed}")
    for line in problems:
        out.print(f"  {line}", highlight=False, markup=False)
    return 1 if problems else 0
