"""Summarize an ``attnref conform --json`` report into the tables of ``docs/peers.md``.

Usage (after ``make peers``; one report per dtype, or one for all)::

    .venv/bin/attnref conform --backend jax --backend onnxruntime --dtype float32 --json float32.json
    .venv/bin/python tests/peers/peer_results.py bfloat16.json float16.json float32.json float64.json

For each backend: one row per op it implements (an op it does not implement
is left out), one column per dtype, each cell the counts
``pass / fail / error / unsupported``; then every case that did not pass or was
unsupported, grouped by case id with the dtypes and the report's detail (cases whose finite
answer is merely outside the bound are counted per op and dtype, with the
largest error). An
``error`` whose detail is an :class:`attnref.UnsupportedError` is counted as
*unsupported* (with its feature), as the contract's section 5 asks: a runner
older than the contract's verdict reported it as an error.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from typing import Any

DTYPES = ("bfloat16", "float16", "float32", "float64")
OUTSIDE_BOUND = re.compile(r"(?P<array>\w+): max error (?P<err>\S+) at .* > allowed")
UNSUPPORTED = re.compile(r"UnsupportedError: unsupported feature '(?P<feature>[^']+)'")


def status_of(case: dict[str, Any]) -> tuple[str, str | None]:
    """The case's status, and the feature when a backend declared it unsupported."""
    match = UNSUPPORTED.search(case.get("detail") or "")
    if case["status"] in ("error", "unsupported") and match:
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
            detail = case["detail"] or ""
            bound = OUTSIDE_BOUND.match(detail)
            if bound:  # finite but too far: one line per op and dtype, with the largest error
                key = (case["op"], "", status, f"outside the bound ({bound.group('array')})")
                problems[key].append(f"{case['dtype']}:{case['case']}:{bound.group('err')}")
            else:  # a non-finite mismatch, a wrong error, an exception: one line per case
                detail = re.sub(r"\d+ such entries|the only one", "...", detail)
                problems[(case["op"], case["case"], status, detail)].append(case["dtype"])
    undeclared = {c["op"] for c in entry["cases"] if (c.get("detail") or "").startswith("backend does not implement")}
    ops = sorted({op for op, _ in counts} - undeclared)
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
        for (op, case, status, detail), found in sorted(problems.items()):
            if case:
                shown = detail.replace("|", "\\|")
                out.append(f"| {op} | `{case}` | {status} | {', '.join(sorted(found))} | {shown} |")
                continue
            dtypes = sorted({f.split(":")[0] for f in found})
            worst = max(float(f.split(":")[2]) for f in found)
            shown = f"{detail}, largest error {worst:.3g}"
            out.append(f"| {op} | {len(found)} cases | {status} | {', '.join(dtypes)} | {shown} |")
        out.append("")
    return "\n".join(out)


def merged(paths: list[str]) -> dict[str, dict[str, Any]]:
    """The backends of several reports (e.g. one per dtype), their cases put together."""
    backends: dict[str, dict[str, Any]] = {}
    for path in paths:
        with open(path, encoding="utf-8") as file:
            for name, entry in json.load(file)["backends"].items():
                backends.setdefault(name, {"cases": []})["cases"] += entry["cases"]
    return backends


def main(paths: list[str]) -> None:
    for name, entry in merged(paths).items():
        print(f"### {name}\n")
        print(backend_tables(name, entry))


if __name__ == "__main__":
    main(sys.argv[1:])
