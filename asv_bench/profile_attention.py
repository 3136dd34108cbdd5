"""Where the time of one multi-head call goes: matmuls, exp, reductions, copies, interpreter (``docs/profile.md``).

Linux only; needs ``perf``. Run from ``asv_bench/``::

    ../.venv/bin/python profile_attention.py --impl numpy --length 16384
    ../.venv/bin/python profile_attention.py --impl torch --length 1024 --pattern "window(256, 256)"

The script starts itself in a child process that prepares the case (fp32,
B=1, H=8, D=64, the inputs of the asv suite), warms it up and then calls the
op in a loop; once the loop runs, ``perf record`` samples every thread of that
child for ``--seconds`` (CPU-clock sampling, so each sample is CPU time of
the process, whatever other processes do). The samples are sorted into
categories by the shared library and symbol they fall in (:data:`CATEGORIES`;
the first matching rule wins), and printed as fractions of the process's CPU
time, with the top symbols for a reader to check the sorting. Fractions are
comparable between runs on a loaded machine where absolute times are not.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
#: perf's sampling rate (CPU-clock samples per second of CPU time).
SAMPLING_HZ = 999

BLAS = r"openblas|mkl_|gemm|gemv|dnnl|brgemm"
#: (category, regular expression on the shared library or None, on the symbol or None); the first rule whose
#: given expressions all match wins. The names are those of NumPy 2.4 (ufunc loops), OpenBLAS 0.3, glibc,
#: Linux, and torch 2.13's CPU build (MKL, ATen kernels, GNU OpenMP).
CATEGORIES: list[tuple[str, str | None, str | None]] = [
    # OpenBLAS's worker threads spin while they wait for work, and the caller spins in exec_blas while it waits
    # for them: CPU time, but no arithmetic
    ("waiting: BLAS threads spinning and handing off work", "openblas", r"blas_thread_server|exec_blas|yield"),
    ("matmul: packing operands (BLAS's own copies)", None, rf"(?=.*({BLAS}))(?=.*(copy|mscale|beta))"),
    ("matmul: kernels", None, BLAS),
    ("matmul: kernels", "openblas", None),
    ("torch's flash-attention loop (its fused max, exp, sum, rescale)", None, r"flash_attention"),
    ("softmax kernel (torch: max, exp and sum fused)", None, r"softmax"),
    ("exp", None, r"simd_exp|Sleef_exp|expf|(^|_|::)exp(_|<|\b)"),
    ("max and sum reductions", None, r"maximum|_max|max_|reduce|pairwise_sum|sum_of_products|inner_sum|sum_kernel"),
    ("waiting: OpenMP spin barriers (torch)", "libgomp", None),
    ("waiting: sleeping threads, locks", None, r"futex|sched_yield|pthread_|lll_lock|finish_task_switch|schedule"),
    ("Python's garbage collector", "python", r"gc_collect|visit_|subtract_refs|move_unreachable|update_refs"),
    ("elementwise: masks", None, r"masked|where"),
    (
        "copies: casts, contiguous copies, memcpy",
        None,
        r"memcpy|memmove|copy|cast|_strided_to|assign|contiguous|clone|index_select|index_copy|gather|take|transfer",
    ),
    ("interpreter and array dispatch (Python overhead)", "python", None),
    (
        "memory: page faults, malloc, free, zeroing",
        None,
        r"memset|clear_page|page_fault|handle_mm_fault|malloc|_free|free_|mmap|munmap|madvise|zap_|alloc|folio|lru|"
        r"rmqueue|pte|charge|unmap|mm_",
    ),
    (
        "elementwise: scale, subtract, divide, add, compare",
        None,
        r"multiply|subtract|divide|_add|add_|less|greater|equal|logical|isfinite|minimum|sqrt|log|tanh|binary|unary|"
        r"callback_fn|vectorized_loop|cpu_kernel",
    ),
    ("interpreter and array dispatch (Python overhead)", r"_multiarray_umath|libtorch_python|libc10", None),
    ("interpreter and array dispatch (Python overhead)", None, r"^Py|_Py|c10::|at::_ops|torch::|Dispatcher"),
]


def categorize(dso: str, symbol: str) -> str:
    """The category of a sample in ``symbol`` of shared library ``dso`` (see :data:`CATEGORIES`)."""
    for name, dso_rule, symbol_rule in CATEGORIES:
        if (dso_rule is None or re.search(dso_rule, dso)) and (symbol_rule is None or re.search(symbol_rule, symbol)):
            return name
    return "kernel (other)" if "kernel" in dso else "other"


# -- the child: run the op in a loop --------------------------------------------------------------


def _child(impl: str, pattern: str, length: int, seconds: float) -> None:
    sys.path.insert(0, HERE)
    from benchmarks.common import prepare, warm_up

    prepared = prepare(impl, pattern, length)
    warm_up(prepared)
    calls, start = 0, time.perf_counter()
    print("ready", flush=True)
    while time.perf_counter() - start < seconds:
        prepared.run()
        calls += 1
    print(f"{calls} {time.perf_counter() - start}", flush=True)


# -- the parent: sample the child ---------------------------------------------------------------


def _perf_report(data: str) -> list[tuple[int, str, str]]:
    """``(samples, library, symbol)`` of every symbol that was sampled, most samples first."""
    out = subprocess.run(
        ["perf", "report", "-i", data, "--stdio", "--no-children", "-n", "--sort", "dso,sym"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        match = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[.\]\s+(.*)$", line)
        if match:
            rows.append((int(match.group(1)), match.group(2), match.group(3).strip()))
    return sorted(rows, key=lambda r: -r[0])


def profile(impl: str, pattern: str, length: int, seconds: float, top: int) -> str:
    """Sample one implementation on one case; the report as Markdown."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", "--impl", impl, "--pattern", pattern, "--length", str(length),
         "--seconds", str(seconds + 1)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the child did not start: {line!r}")
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "perf.data")
            subprocess.run(
                ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(SAMPLING_HZ), "-p", str(child.pid), "-o", data,
                 "--", "sleep", str(seconds)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            calls, elapsed = child.stdout.readline().split()
            rows = _perf_report(data)
    finally:
        child.kill()
        child.wait()
    per_call = float(elapsed) / int(calls)
    samples = sum(r[0] for r in rows)
    totals: dict[str, int] = defaultdict(int)
    for n, dso, symbol in rows:
        totals[categorize(dso, symbol)] += n
    lines = [
        f"### {impl}, {pattern}, L={length}",
        "",
        f"{int(calls)} calls, {per_call * 1e3:.1f} ms each while sampled; the process used "
        f"{samples / SAMPLING_HZ / seconds:.2f} of the {os.cpu_count()} CPUs; load average {load:.1f} "
        "when sampling began. Fractions of the process's CPU time:",
        "",
        "| where | fraction |",
        "|---|---|",
    ]
    for name, n in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {n / samples:.1%} |")
    lines += ["", "Top symbols:", "", "| % | library | symbol | category |", "|---|---|---|---|"]
    for n, dso, symbol in rows[:top]:
        lines.append(f"| {n / samples:.1%} | {dso} | `{symbol[:70]}` | {categorize(dso, symbol)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default="numpy")
    parser.add_argument("--pattern", default="window(256, 256)")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.impl, args.pattern, args.length, args.seconds)
        return 0
    sys.stdout.write(profile(args.impl, args.pattern, args.length, args.seconds, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
