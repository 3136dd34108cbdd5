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
THROUGHPUT = {
    "global": "bench_global.GlobalAttentionThroughput.track_fraction_of_matmul",
    "local": "bench_local.LocalAttentionThroughput.track_fraction_of_matmul",
    "chunked": "bench_chunked.ChunkedAttentionThroughput.track_fraction_of_matmul",
}
FB_TIME = "bench_backward.ForwardBackward.time_forward_backward"
FB_MEMORY = "bench_backward.ForwardBackwardMemory.track_extra_memory"
FB_RATIO = "bench_backward.BackwardOverForward.track_backward_over_forward"
VARLEN_TIME, VARLEN_MEMORY = "bench_varlen.Varlen.time_varlen", "bench_varlen.VarlenMemory.track_extra_memory"
PAGED_TIME = "bench_paged.PagedDecode.time_paged_decode"
PAGED_MEMORY = "bench_paged.PagedDecodeMemory.track_extra_memory"
PAGED_CACHE = "bench_paged.PagedCacheSize.track_cache_size"
SINKS_TIME, SINKS_MEMORY = "bench_sinks.Sinks.time_sinks", "bench_sinks.SinksMemory.track_extra_memory"
SINKS_RATIO = "bench_sinks.SinksOverhead.track_sinks_over_plain"
OVER_SDPA = "bench_global.GlobalAttentionOverSdpa.track_time_over_sdpa"
SDPA, FLEX, NAIVE = "baseline-sdpa", "baseline-flex", "baseline-naive"
PADDED, LOOP = "baseline-sdpa-padded", "baseline-sdpa-loop"
GATHER, GATHERED = "baseline-sdpa-gather", "baseline-sdpa-gathered"
DENSE_SINKS = "baseline-dense-sinks"
# The headline cases of the newer suites (their `case` parameter).
FB_WINDOW, FB_GLOBAL = "window(256, 256), L=16384", "global, L=4096"
VARLEN_CASE, PAGED_CASE = "16 x 64..4096", "B=16 Hq=32 Hkv=8 1k..32k"
SINKS_CASES = ("causal, L=4096", "window(255, 0), L=16384")


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


def _memory_ratio(impl: str, baseline: str, size: int, pattern: str) -> Callable[[Figures], float]:
    return lambda f: _m(f, impl, size, pattern) / _m(f, baseline, size, pattern)


def _ratio(key: str, a: tuple[object, ...], b: tuple[object, ...]) -> Callable[[Figures], float]:
    """``figure(key, *a) / figure(key, *b)``: two figures of one benchmark in the same run."""
    return lambda f: f.get(key, *a) / f.get(key, *b)


def _fraction(impl: str, pattern: str, size: int = 16384) -> Callable[[Figures], float]:
    return lambda f: f.get(THROUGHPUT[FAMILY[pattern]], impl, size, pattern)


FORWARD_TARGETS = [
    # NumPy backend (issue 3).
    Target("numpy, global L=4096: speed-up over naive NumPy", _speedup(NAIVE, "numpy", 4096, "global"), 2, True),
    Target(
        "numpy, global L=4096: useful throughput / the machine's fp32 GEMM throughput",
        lambda f: f.get(THROUGHPUT["global"], "numpy", 4096, "global"),
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
    Target(
        "torch, global L=4096: time / direct SDPA's (alternately in one process)",
        lambda f: f.get(OVER_SDPA, "torch", 4096, "global"),
        1.1,
        False,
    ),
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


# Issue 14: the backward pass.
BACKWARD_TARGETS = [
    Target(
        "numpy, window (256, 256) L=16384, forward+backward: speed-up over dense-mask SDPA's",
        _ratio(FB_TIME, (SDPA, FB_WINDOW), ("numpy", FB_WINDOW)),
        15,
        True,
    ),
    Target(
        "numpy, window (256, 256) L=16384: backward time / its own forward time",
        lambda f: f.get(FB_RATIO, "numpy", FB_WINDOW),
        3,
        False,
    ),
    Target(
        "numpy, window (256, 256) L=16384, forward+backward: extra memory / dense-mask SDPA's",
        _ratio(FB_MEMORY, ("numpy", FB_WINDOW), (SDPA, FB_WINDOW)),
        0.1,
        False,
    ),
    Target(
        "torch, window (256, 256) L=16384: forward+backward time / its own forward time",
        lambda f: f.get(FB_RATIO, "torch", FB_WINDOW) + 1,
        4,
        False,
    ),
    Target(
        "numpy, global L=4096, forward+backward: time / SDPA's",
        _ratio(FB_TIME, ("numpy", FB_GLOBAL), (SDPA, FB_GLOBAL)),
        1.5,
        False,
    ),
]

# Issue 11: sinks, packed sequences, paged caches.
VARIANT_TARGETS = [
    *(
        Target(
            f"{impl}, varlen 16 x 64..4096 causal: speed-up over padding + SDPA",
            _ratio(VARLEN_TIME, (PADDED, VARLEN_CASE), (impl, VARLEN_CASE)),
            2,
            True,
        )
        for impl in ("numpy", "torch")
    ),
    *(
        Target(
            f"{impl}, varlen 16 x 64..4096 causal: extra memory / padding + SDPA's",
            _ratio(VARLEN_MEMORY, (impl, VARLEN_CASE), (PADDED, VARLEN_CASE)),
            1 / 4,
            False,
            "1/4",
        )
        for impl in ("numpy", "torch")
    ),
    *(
        Target(
            f"{impl}, paged decode B=16 1k..32k: time / SDPA's on already-gathered keys",
            _ratio(PAGED_TIME, (impl, PAGED_CASE), (GATHERED, PAGED_CASE)),
            1.2,
            False,
        )
        for impl in ("numpy", "torch")
    ),
    *(
        Target(
            f"{impl}, paged decode B=16 1k..32k: extra memory / the cache's size (a dense copy is 1)",
            lambda f, impl=impl: f.get(PAGED_MEMORY, impl, PAGED_CASE) / f.get(PAGED_CACHE, PAGED_CASE),
            1,
            False,
        )
        for impl in ("numpy", "torch")
    ),
    *(
        Target(
            f"{impl}, {case}: time with sinks / without",
            lambda f, impl=impl, case=case: f.get(SINKS_RATIO, impl, case),
            1.05,
            False,
        )
        for impl in ("numpy", "torch")
        for case in SINKS_CASES
    ),
]

# Issue 15: local attention at half the matmul peak.
PEAK_TARGETS = [
    *(
        Target(
            f"numpy, {pattern} L=16384: useful throughput / the machine's fp32 GEMM throughput",
            _fraction("numpy", pattern),
            0.5,
            True,
        )
        for pattern in ("window(256, 256)", "window(255, 0)", "chunk(1024)")
    ),
    *(
        Target(
            f"{impl}, {pattern} L=16384: speed-up over compiled Flex",
            _speedup(FLEX, impl, 16384, pattern),
            1.2,
            True,
        )
        for impl in ("numpy", "torch")
        for pattern in ("window(256, 256)", "window(255, 0)", "chunk(1024)")
    ),
    *(
        Target(
            f"numpy, {pattern} L=1024: speed-up over compiled Flex",
            _speedup(FLEX, "numpy", 1024, pattern),
            1,
            True,
        )
        for pattern in ("window(256, 256)", "window(255, 0)", "chunk(1024)")
    ),
]

TARGETS = {
    "forward (issues 3 and 5)": FORWARD_TARGETS,
    "backward (issue 14)": BACKWARD_TARGETS,
    "sinks, packed sequences, paged caches (issue 11)": VARIANT_TARGETS,
    "the matmul peak (issue 15)": PEAK_TARGETS,
}


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
        "## Targets (fp32; ratios within this run)",
    ]
    for title, targets in TARGETS.items():
        lines += ["", f"{title[0].upper()}{title[1:]}:", "", "| ratio | target | measured | |", "|---|---|---|---|"]
        lines += [t.row(f) for t in targets]
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
        fraction = f.get(THROUGHPUT["global"], impl, 4096, "global")
        if not (math.isnan(gf) and math.isnan(fraction)):
            rows.append([impl, "–" if math.isnan(gf) else f"{gf:.0f}", _fmt_ratio(fraction)])
    lines += _table(["impl", "GF/s", "fraction of GEMM"], rows)
    backends = _values(f, OVER_SDPA, 0)
    if backends:
        ratios = ", ".join(f"{b} {_fmt_ratio(f.get(OVER_SDPA, b, 4096, 'global'))}" for b in backends)
        lines += ["", f"A backend's time over SDPA's, global L=4096, alternately in one process (best of 5): {ratios}."]
    lines += _local_fractions(f)
    lines += _backward(f)
    lines += _variants(f)
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


def _values(f: Figures, key: str, axis: int) -> list[object]:
    """The values of parameter ``axis`` of benchmark ``key`` in this run (empty if it did not run)."""
    params = f.params(key)
    return [ast.literal_eval(p) for p in params[axis]] if params else []


def _present(f: Figures, key: str, impls: Iterable[str], *rests: tuple[object, ...]) -> list[str]:
    """The implementations with at least one figure of ``key`` among the parameter tails ``rests``."""
    return [i for i in impls if any(not math.isnan(f.get(key, i, *r)) for r in rests)]


def _local_fractions(f: Figures) -> list[str]:
    rows, impls = [], []
    for family in ("local", "chunked"):
        key = THROUGHPUT[family]
        family_impls, sizes, patterns = (_values(f, key, a) for a in range(3))
        impls += [i for i in family_impls if i not in impls]
        rows += [(key, size, p) for size in sizes for p in patterns]
    impls = [i for i in impls if any(not math.isnan(f.get(k, i, s, p)) for k, s, p in rows)]
    if not impls:
        return []
    return [
        "",
        "## Local and chunked attention: useful throughput / the machine's fp32 GEMM throughput",
        "",
        "4·B·H·D flops per allowed (query, key) pair, over the faster library's fp32 GEMM (4096³), timed "
        "alternately in one process, best of 3 each:",
        "",
        *_table(
            ["pattern", "L", *impls], [[p, str(s), *(_fmt_ratio(f.get(k, i, s, p)) for i in impls)] for k, s, p in rows]
        ),
    ]


def _backward(f: Figures) -> list[str]:
    cases = _values(f, FB_TIME, 1)
    if not cases:
        return []
    impls = _present(f, FB_TIME, _values(f, FB_TIME, 0), *((c,) for c in cases))
    lines = ["", "## Forward+backward: time per call (ms, median)", ""]
    lines += _table(["case", *impls], [[c, *(_fmt_ms(f.get(FB_TIME, i, c)) for i in impls)] for c in cases])
    lines += ["", "Speed-up over `torch.autograd` through SDPA (its time / theirs):", ""]
    rows = [[c, *(_fmt_ratio(f.get(FB_TIME, SDPA, c) / f.get(FB_TIME, i, c)) for i in impls)] for c in cases]
    lines += _table(["case", *impls], rows)
    lines += ["", "Extra memory per call (MiB):", ""]
    lines += _table(["case", *impls], [[c, *(_fmt_mib(f.get(FB_MEMORY, i, c)) for i in impls)] for c in cases])
    backends = _values(f, FB_RATIO, 0)
    if backends:
        lines += [
            "",
            "A backend's backward time over its own forward time, alternately in one process (best of 3):",
            "",
        ]
        lines += _table(
            ["case", *backends], [[c, *(_fmt_ratio(f.get(FB_RATIO, b, c)) for b in backends)] for c in cases]
        )
    return lines


def _variants(f: Figures) -> list[str]:
    lines: list[str] = []
    for title, time_key, memory_key in (
        ("Packed variable-length batch, causal (H=8, D=64)", VARLEN_TIME, VARLEN_MEMORY),
        ("Paged KV cache decoding (Hq=32, Hkv=8, D=64, blocks of 16)", PAGED_TIME, PAGED_MEMORY),
    ):
        cases = _values(f, time_key, 1)
        if not cases:
            continue
        impls = _present(f, time_key, _values(f, time_key, 0), *((c,) for c in cases))
        rows = []
        for c in cases:
            rows.append([c, "time (ms)", *(_fmt_ms(f.get(time_key, i, c)) for i in impls)])
            rows.append([c, "extra memory (MiB)", *(_fmt_mib(f.get(memory_key, i, c)) for i in impls)])
        lines += ["", f"## {title}", "", *_table(["case", "", *impls], rows)]
        if time_key == PAGED_TIME:
            sizes = ", ".join(f"{c}: {_fmt_mib(f.get(PAGED_CACHE, c))} MiB" for c in cases)
            lines += ["", f"The cache (keys and values, exactly the used blocks): {sizes}."]
    cases = _values(f, SINKS_TIME, 1)
    if cases:
        impls = _present(f, SINKS_TIME, _values(f, SINKS_TIME, 0), *((c, s) for c in cases for s in (True, False)))
        rows = []
        for c in cases:
            for sinks in (True, False):
                cells = [_fmt_ms(f.get(SINKS_TIME, i, c, sinks)) for i in impls]
                rows.append([c, "with sinks" if sinks else "without", *cells])
        lines += ["", "## Attention sinks: time per call (ms, median)", "", *_table(["case", "", *impls], rows)]
        backends = _values(f, SINKS_RATIO, 0)
        if backends:
            lines += ["", "Time with sinks over time without, alternately in one process (best of 5):", ""]
            rows = [[c, *(_fmt_ratio(f.get(SINKS_RATIO, b, c)) for b in backends)] for c in cases]
            lines += _table(["case", *backends], rows)
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
