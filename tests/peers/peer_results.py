"""Summarize an ``attnref conform --json`` report into the tables of ``docs/peers.md``.

Usage (after ``make peers``)::

    .venv/bin/attnref conform --backend jax --backend onnxruntime --json peers.json
    .venv/bin/python tests/peers/peer_results.py peers.json

For each backend: one row per op, one column per dtype, each cell the counts
``pass / fail / error / unsupported``; then every case that did not pass or was
unsupported, grouped by case id with the dtypes and the report's detail. An
``error`` whose detail is an :class:`attnref.UnsupportedError` is counted as
*unsupported* (with its feature), as the contract's section 5 asks, whatever
the version of the runner that wrote the report.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from typing import Any

DTYPES = ("bfloat16", "float16", "float32", "float64")
UNSUPPORTED = re.compile(r"UnsupportedError: unsupported feature '(?P<feature>[^']+)'")


def status_of(case: dict[str, Any]) -> tuple[str, str | None]:
    """The case's status, and the feature when a backend declared it unsupported."""
    match = UNSUPPORTED.search(case.get("detail") or "")
    if case["status"] == "error" and match:
        return "unsupported", match.group("feature")
    return case["status"], None


def backend_tables(name: str, entry: dict[str, Any]) -> str:
    """The markdown of one backend: the count table, unsupported features, and the cases that did not pass."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    features: Counter = Counter()
    problems: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    for case in entry["cases"]:
        status, feature = status_of(case)
        counts[(case["op"], case["dtype"])][status] += 1
        if feature:
            features[feature] += 1
        if status in ("fail", "error"):
            detail = re.sub(r"\d+ such entries|the only one", "...", case["detail"] or "")
            problems[(case["op"], case["case"], status, detail)].append(case["dtype"])
    ops = sorted({op for op, _ in counts})
    lines = [f"| `{name}` | " + " | ".join(DTYPES) + " |", "|---|" + "---|" * len(DTYPES)]
    for op in ops:
        cells = []
        for dtype in DTYPES:
            c = counts.get((op, dtype), Counter())
            cells.append(f"{c['pass']} / {c['fail']} / {c['error']} / {c['unsupported']}")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    out = ["\n".join(lines), ""]
    if features:
        listed = ", ".join(f"`{f}` ({n})" for f, n in sorted(features.items()))
        out += [f"Declared unsupported (cases, all dtypes): {listed}.", ""]
    if problems:
        out += ["| op | case | status | dtypes | detail |", "|---|---|---|---|---|"]
        for (op, case, status, detail), dtypes in sorted(problems.items()):
            shown = detail.replace("|", "\\|")
            out.append(f"| {op} | `{case}` | {status} | {', '.join(sorted(dtypes))} | {shown} |")
        out.append("")
    return "\n".join(out)


def main(path: str) -> None:
    report = json.loads(open(path, encoding="utf-8").read())
    for name, entry in report["backends"].items():
        print(f"## {name}\n")
        print(backend_tables(name, entry))


if __name__ == "__main__":
    main(sys.argv[1])
