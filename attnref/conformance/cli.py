"""``attnref conform``: run the conformance suite and show a readable report.

::

    attnref conform [--backend NAME]... [--dtype NAME]... [--op NAME]...
                    [--json PATH] [--examples N] [--seed S] [--worst N]

Every installed backend by default. While it runs, a progress bar; then a
matrix (backend x op x dtype: pass / fail / error / unsupported counts),
the unavailable backends with their reasons, and the worst failing cases
with their ids, errors and allowed errors. The exit status is 0 only when
nothing failed or errored (1 otherwise; 2 for an unknown backend or a
JSON path that cannot be written).
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
        help="backend to check (repeatable; default: every installed backend)",
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
        "--worst", type=_count, default=10, metavar="N", help="how many failing cases to show (default 10)"
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


def _worst(report: Any, limit: int) -> Any:
    """The worst failing cases, one row per (backend, op, case) with every dtype it fails in."""
    from rich.table import Table

    groups: dict[tuple[str, str, str], list[Any]] = {}
    for name, entry in report.backends.items():
        for r in entry.results:
            if r.status in ("fail", "error"):
                groups.setdefault((name, r.op, r.case), []).append(r)
    rows = []
    for (name, op, case), results in groups.items():
        worst = max(results, key=lambda r: r.ratio)
        rows.append((-worst.ratio, name, f"{op}/{case}", ", ".join(r.dtype for r in results), worst))
    rows.sort(key=lambda row: row[:3])
    table = Table(title=f"worst failing cases ({min(limit, len(rows))} of {len(rows)})")
    for column in ("backend", "op/case", "dtypes", "status", "err", "allowed", "detail (worst dtype)"):
        table.add_column(column, overflow="fold")
    for _, name, case, dtypes, r in rows[:limit]:
        status = f"[{_COLOURS[r.status]}]{r.status}[/]"
        table.add_row(name, case, dtypes, status, _number(r.err), _number(r.allowed), r.detail or "")
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


def run(args: argparse.Namespace, registry: Any = None) -> int:
    """Run ``attnref conform`` with parsed ``args``; returns the exit status.

    ``registry`` (default: the installed plugins) is for tests.
    """
    from rich.console import Console

    from attnref.conformance.cases import catalogue
    from attnref.conformance.runner import resolve_targets, run_suite
    from attnref.errors import BackendNotFoundError
    from attnref.registry import default_registry

    out, err = Console(), Console(stderr=True)
    registry = registry if registry is not None else default_registry()
    for status in registry.statuses():
        if status.state == "failed":
            err.print(f"[yellow]warning:[/] plugin {status.plugin!r} failed to load: {status.detail}")
    try:
        targets = resolve_targets(args.backend, registry)
    except BackendNotFoundError as exc:
        err.print(f"[red]attnref conform:[/] {exc}")
        return 2
    if not targets:
        err.print("[red]attnref conform:[/] no attnref backend is installed (see `attnref backends`)")
        return 1
    ops = list(dict.fromkeys(args.op or OPS))
    dtypes = [d for d in DTYPE_NAMES if d in set(args.dtype or DTYPE_NAMES)]
    cases = catalogue(ops, args.examples, args.seed)
    out.print(
        f"attnref conform: {len(cases)} cases ({args.examples} random per op, seed {args.seed}) x "
        f"{len(dtypes)} dtypes on {', '.join(t.name for t in targets)}"
    )
    with _progress(err) as progress, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a backend's numerical warnings would tear the progress bar
        tasks = {t.name: progress.add_task(t.name, total=len(cases) * len(dtypes)) for t in targets if t.available}
        report = run_suite(targets, cases, dtypes, on_result=lambda name, _: progress.advance(tasks[name]))
    for name, entry in report.backends.items():
        if entry.available:
            out.print(f"{name}: version {entry.version}")
    out.print(_matrix(report, ops, dtypes))
    for name, entry in report.backends.items():
        if not entry.available:
            out.print(f"[yellow]{name}: unavailable[/] ({entry.reason}); not run")
    if not report.ok:
        out.print(_worst(report, args.worst))
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report.as_json(), indent=1, allow_nan=False) + "\n")
        except OSError as exc:
            err.print(f"[red]attnref conform:[/] cannot write the JSON report: {exc}")
            return 2
        out.print(f"JSON report written to {args.json}")
    totals = {s: sum(e.summary()[s] for e in report.backends.values()) for s in ("pass", "fail", "error")}
    verdict = "[green]PASS[/]" if report.ok else "[red]FAIL[/]"
    out.print(f"{verdict}: {totals['pass']} passed, {totals['fail']} failed, {totals['error']} errored")
    return 0 if report.ok else 1
