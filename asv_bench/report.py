"""Print the tables of ``docs/benchmarks.md`` from one asv results file.

Run from ``asv_bench/`` after an ``asv run`` that saved results::

    ../.venv/bin/python report.py                      # newest results of this machine
    ../.venv/bin/python report.py --commit 1a2b3c4d --machine vm

Every ratio compares figures of the same run. Times are asv's medians; the
memory figures are ``track_extra_memory`` (peak resident memory of one call
above that before it, plus the helper data an approach keeps between calls,
such as a dense mask), in MiB.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from asv.machine import Machine
from asv.results import Results, iter_results_for_machine

HERE = os.path.dirname(os.path.abspath(__file__))
HEADS, HEAD_DIM = 8, 64  # the multi-head benchmarks' shape (fp32, B=1)

TIME = {
    "global": "bench_global.GlobalAttention.time_global_attention",
    "local": "bench_local.LocalAttention.time_local_attention",
    "chunked": "bench_chunked.ChunkedAttention.time_chunked_attention",
}
MEMORY = {
    "global": "bench_global.GlobalAttentionMemory.track_extra_memory",
    "local": "bench_local.LocalAttentionMemory.track_extra_memory",
    "chunked": "bench_chunked.ChunkedAttentionMemory.track_extra_memory",
}
PEAKMEM = {
    "global": "bench_global.GlobalAttentionMemory.peakmem_global_attention",
    "local": "bench_local.LocalAttentionMemory.peakmem_local_attention",
    "chunked": "bench_chunked.ChunkedAttentionMemory.peakmem_chunked_attention",
}
FAMILY = {
    "global": "global",
    "causal": "global",
    "window(256, 256)": "local",
    "window(255, 0)": "local",
    "chunk(1024)": "chunked",
    "chunk(1024, causal)": "chunked",
}
THROUGHPUT = "bench_global.GlobalAttentionThroughput.track_fraction_of_matmul"
SDPA, FLEX, NAIVE = "baseline-sdpa", "baseline-flex", "baseline-naive"


class Figures:
    """The values of one results file, looked up by benchmark name and parameter values."""

    def __init__(self, results: Results):
        self.results = results
        self._values: dict[str, dict[tuple[str, ...], float]] = {}
        for key in results.get_all_result_keys():
            params = results.get_result_params(key)
            values = results.get_result_value(key, params)
            if not params:
                self._values[key] = {(): values[0] if isinstance(values, list) else values}
                continue
            self._values[key] = dict(zip(itertools.product(*params), values, strict=True))

    def get(self, key: str, *params: object) -> float:
        """The figure, or NaN when it is missing, skipped or failed."""
        value = self._values.get(key, {}).get(tuple(repr(p) for p in params))
        return math.nan if value is None else float(value)

    def params(self, key: str) -> list[list[str]]:
        return self.results.get_result_params(key) if key in self._values else []


def _load(results_dir: str, machine: str | None, commit: str | None) -> tuple[Figures, str]:
    machine = machine or Machine.get_unique_machine_name()
    found = [
        r for r in iter_results_for_machine(results_dir, machine) if commit is None or r.commit_hash.startswith(commit)
    ]
    if not found:
        sys.exit(f"no results for machine {machine!r}{f' and commit {commit}' if commit else ''} in {results_dir}")
    newest = max(found, key=lambda r: r.date or 0)
    return Figures(newest), machine


def _fmt_ratio(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _fmt_ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def _fmt_mib(mib: float) -> str:
    return "–" if math.isnan(mib) else f"{mib:,.1f}"


@dataclass(frozen=True)
class Target:
    """One stated target: a ratio, its bound and which way it must go."""

    label: str
    value: Callable[[Figures], float]
    bound: float
    at_least: bool
    bound_text: str = ""

    def row(self, figures: Figures) -> str:
        value = self.value(figures)
        sign = "≥" if self.at_least else "≤"
        if math.isnan(value):
            verdict = "not measured"
        else:
            verdict = "met" if (value >= self.bound if self.at_least else value <= self.bound) else "**missed**"
        return f"| {self.label} | {sign} {self.bound_text or f'{self.bound:g}'} | {_fmt_ratio(value)} | {verdict} |"


def _t(f: Figures, impl: str, size: int, pattern: str) -> float:
    return f.get(TIME[FAMILY[pattern]], impl, size, pattern)


def _m(f: Figures, impl: str, size: int, pattern: str) -> float:
    return f.get(MEMORY[FAMILY[pattern]], impl, size, pattern)


def _gflops(f: Figures, library: str) -> float:
    return f.get("bench_matmul.Matmul.track_gflops", library, 4096)


def _attention_gflops(f: Figures, impl: str, size: int) -> float:
    return 4 * HEADS * size**2 * HEAD_DIM / _t(f, impl, size, "global") / 1e9


def _speedup(baseline: str, impl: str, size: int, pattern: str) -> Callable[[Figures], float]:
    return lambda f: _t(f, baseline, size, pattern) / _t(f, impl, size, pattern)


def _time_ratio(impl: str, baseline: str, size: int, pattern: str) -> Callable[[Figures], float]:
    return lambda f: _t(f, impl, size, pattern) / _t(f, baseline, size, pattern)


def _memory_ratio(impl: str, baseline: str, size: int, pattern: str) -> Callable[[Figures], float]:
    return lambda f: _m(f, impl, size, pattern) / _m(f, baseline, size, pattern)


TARGETS = [
    # NumPy backend (issue 3).
    Target("numpy, global L=4096: speed-up over naive NumPy", _speedup(NAIVE, "numpy", 4096, "global"), 2, True),
    Target(
        "numpy, global L=4096: useful throughput / the machine's fp32 GEMM throughput",
        lambda f: f.get(THROUGHPUT, "numpy", 4096),
        1 / 3,
        True,
        "1/3",
    ),
    Target(
        "numpy, global L=4096: extra memory / naive NumPy's",
        _memory_ratio("numpy", NAIVE, 4096, "global"),
        1 / 8,
        False,
        "1/8",
    ),
    Target(
        "numpy, window (256, 256) L=16384: speed-up over dense-mask SDPA",
        _speedup(SDPA, "numpy", 16384, "window(256, 256)"),
        12,
        True,
    ),
    Target(
        "numpy, window (256, 256) L=16384: speed-up over compiled Flex",
        _speedup(FLEX, "numpy", 16384, "window(256, 256)"),
        1.2,
        True,
    ),
    Target(
        "numpy, window (256, 256) L=16384: extra memory / dense-mask SDPA's",
        _memory_ratio("numpy", SDPA, 16384, "window(256, 256)"),
        0.1,
        False,
    ),
    Target(
        "numpy, causal window (255, 0) L=16384: speed-up over dense-mask SDPA",
        _speedup(SDPA, "numpy", 16384, "window(255, 0)"),
        15,
        True,
    ),
    Target(
        "numpy, chunk 1024 L=16384: speed-up over dense-mask SDPA",
        _speedup(SDPA, "numpy", 16384, "chunk(1024)"),
        15,
        True,
    ),
    Target(
        "numpy, causal chunk 1024 L=16384: speed-up over dense-mask SDPA",
        _speedup(SDPA, "numpy", 16384, "chunk(1024, causal)"),
        15,
        True,
    ),
    # PyTorch backend (issue 5).
    Target("torch, global L=4096: time / direct SDPA's", _time_ratio("torch", SDPA, 4096, "global"), 1.1, False),
    Target(
        "torch, window (256, 256) L=16384: speed-up over compiled Flex",
        _speedup(FLEX, "torch", 16384, "window(256, 256)"),
        1.5,
        True,
    ),
    Target(
        "torch, window (256, 256) L=16384: extra memory / dense-mask SDPA's",
        _memory_ratio("torch", SDPA, 16384, "window(256, 256)"),
        0.1,
        False,
    ),
    Target(
        "torch, causal window (255, 0) L=16384: speed-up over compiled Flex",
        _speedup(FLEX, "torch", 16384, "window(255, 0)"),
        1.2,
        True,
    ),
    Target(
        "torch, chunk 1024 L=16384: speed-up over compiled Flex",
        _speedup(FLEX, "torch", 16384, "chunk(1024)"),
        1.2,
        True,
    ),
    Target(
        "torch, causal chunk 1024 L=16384: speed-up over compiled Flex",
        _speedup(FLEX, "torch", 16384, "chunk(1024, causal)"),
        1.2,
        True,
    ),
]


def _impls(f: Figures) -> list[str]:
    """The implementations of the local-attention benchmark that have at least one figure."""
    params = f.params(TIME["local"])
    if not params:
        return []
    impls = [ast.literal_eval(p) for p in params[0]]  # asv stores repr() of the values
    sizes, patterns = (ast.literal_eval(p) for p in params[1]), [ast.literal_eval(p) for p in params[2]]
    combos = [(s, p) for s in sizes for p in patterns]
    return [i for i in impls if any(not math.isnan(f.get(TIME["local"], i, s, p)) for s, p in combos)]


def _sizes(f: Figures, family: str) -> list[int]:
    params = f.params(TIME[family])
    return [int(p) for p in params[1]] if params else []


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def report(f: Figures, machine: str) -> str:
    r = f.results
    started = max(r.started_at.values(), default=0) / 1000
    when = datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Commit `{r.commit_hash[:12]}`, machine `{machine}`, environment `{r.env_name}`, run finished {when}.",
        "",
        "## Targets (fp32, B=1, H=8, D=64; ratios within this run)",
        "",
        "| ratio | target | measured | |",
        "|---|---|---|---|",
    ]
    lines += [t.row(f) for t in TARGETS]
    impls = _impls(f)
    lines += ["", "## Time per call (ms, median)", ""]
    rows = []
    for pattern, family in FAMILY.items():
        for size in _sizes(f, family):
            rows.append([pattern, str(size), *(_fmt_ms(_t(f, i, size, pattern)) for i in impls)])
    lines += _table(["pattern", "L", *impls], rows)
    lines += ["", "## Speed-up of each implementation over the dense-mask SDPA baseline (its time / theirs)", ""]
    rows = []
    for pattern, family in FAMILY.items():
        for size in _sizes(f, family):
            rows.append([pattern, str(size), *(_fmt_ratio(_speedup(SDPA, i, size, pattern)(f)) for i in impls)])
    lines += _table(["pattern", "L", *impls], rows)
    lines += ["", "## Speed-up over compiled FlexAttention (its time / theirs; local and chunked patterns)", ""]
    rows = []
    for pattern, family in FAMILY.items():
        if family == "global":
            continue
        for size in _sizes(f, family):
            rows.append([pattern, str(size), *(_fmt_ratio(_speedup(FLEX, i, size, pattern)(f)) for i in impls)])
    lines += _table(["pattern", "L", *impls], rows)
    lines += _pooling(f)
    lines += ["", "## Extra memory per call (MiB: peak above the inputs, plus masks kept between calls)", ""]
    rows = []
    for pattern, family in FAMILY.items():
        for size in _sizes(f, family):
            rows.append([pattern, str(size), *(_fmt_mib(_m(f, i, size, pattern)) for i in impls)])
    lines += _table(["pattern", "L", *impls], rows)
    empty = f.get("bench_baseline.peakmem_empty")
    lines += [
        "",
        f"asv's `peakmem_*` (whole-process peak) minus the empty benchmark's {empty / 2**20:,.0f} MiB "
        "(for `baseline-flex` it includes the compilation):",
        "",
    ]
    rows = []
    for pattern, family in FAMILY.items():
        for size in _sizes(f, family):
            cells = [f.get(PEAKMEM[family], i, size, pattern) - empty for i in impls]
            rows.append([pattern, str(size), *(_fmt_mib(c / 2**20) for c in cells)])
    lines += _table(["pattern", "L", *impls], rows)
    lines += ["", "## The machine's matmul speed (GF/s, best of 3)", ""]
    rows = []
    for library in ("numpy", "torch"):
        gemm = _gflops(f, library)
        products = f.get("bench_matmul.AttentionProducts.track_gflops", library, 4096)
        rows.append([library, f"{gemm:.0f}", f"{products:.0f}"])
    lines += _table(["library", "fp32 GEMM 4096³", "attention's two products, L=4096 (no softmax)"], rows)
    lines += [
        "",
        "Global attention, L=4096: useful GF/s (4·B·H·L²·D / median time of the time benchmark), and useful "
        "throughput as a fraction of the faster library's GEMM, both timed alternately in one process "
        "(`GlobalAttentionThroughput`, best of 3 each):",
        "",
    ]
    rows = []
    for impl in impls:
        gf = _attention_gflops(f, impl, 4096)
        fraction = f.get(THROUGHPUT, impl, 4096)
        if not (math.isnan(gf) and math.isnan(fraction)):
            rows.append([impl, "–" if math.isnan(gf) else f"{gf:.0f}", _fmt_ratio(fraction)])
    lines += _table(["impl", "GF/s", "fraction of GEMM"], rows)
    lines += _accuracy(f)
    return "\n".join(lines) + "\n"


def _pooling(f: Figures) -> list[str]:
    lines = ["", "## Attention pooling, time per call (ms, median)", ""]
    for key, size_name in (
        ("bench_pooling.AdditivePooling.time_additive_attention", "L"),
        ("bench_pooling.LuongPooling.time_luong_attention", "S"),
    ):
        params = f.params(key)
        if not params:
            continue
        impls, sizes, cases = ([ast.literal_eval(p) for p in ps] for ps in params)
        impls = [i for i in impls if any(not math.isnan(f.get(key, i, s, c)) for s in sizes for c in cases)]
        rows = [[c, str(s), *(_fmt_ms(f.get(key, i, s, c)) for i in impls)] for c in cases for s in sizes]
        lines += [*_table(["case", size_name, *impls], rows), ""]
    return lines


def _accuracy(f: Figures) -> list[str]:
    lines = ["", "## Accuracy: largest max |out - float64 reference| over the cases of each family", ""]
    for key, title in (
        ("bench_accuracy.AttentionAccuracy.track_max_abs_error", "multi-head ops (six patterns)"),
        ("bench_accuracy.PoolingAccuracy.track_max_abs_error", "pooling ops (additive, Luong)"),
    ):
        params = f.params(key)
        if not params:
            continue
        impls, dtypes, cases = ([ast.literal_eval(p) for p in ps] for ps in params)
        rows = []
        for impl in impls:
            cells = []
            for dtype in dtypes:
                errors = [f.get(key, impl, dtype, case) for case in cases]
                errors = [e for e in errors if not math.isnan(e)]
                cells.append(f"{max(errors):.1e}" if errors else "–")
            if any(c != "–" for c in cells):
                rows.append([impl, *cells])
        lines += [f"{title}:", "", *_table(["impl", *dtypes], rows), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(HERE, ".asv", "results"), help="asv results directory")
    parser.add_argument("--machine", help="machine name (default: this machine's)")
    parser.add_argument("--commit", help="commit hash or prefix (default: the newest results)")
    args = parser.parse_args(argv)
    figures, machine = _load(args.results, args.machine, args.commit)
    sys.stdout.write(report(figures, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
