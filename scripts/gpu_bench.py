"""GPU subset of the benchmarks: the torch backend against PyTorch's own kernels.

Usage::

    python scripts/gpu_bench.py --out bench.json [--budget SECONDS] [--device cuda] [--small]

For each case (B=1, H=8, D=64): the backend's op (default path), the backend
with its opt-in FlexAttention path (``flex=True``), SDPA with a dense boolean
mask of the pattern (where it fits), SDPA directly (global attention), and
compiled FlexAttention with a block mask built from the pattern's per-block key
ranges. Medians of timed repetitions after warm-up (CUDA events on a GPU),
compile time excluded and reported separately, peak memory per method.

Results are written to ``--out`` after every case, so a run cut short by its
time budget (or a timeout) still leaves what it measured. Cases are ordered by
importance; those that would start after ``--budget`` seconds are skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnref.patterns import Pattern
from attnref_torch import TorchBackend, _flex

CASES: list[tuple[str, str, dict, Pattern, int, str]] = [
    # (name, op, options, pattern, L, dtype)
    ("global", "global_attention", {}, Pattern.full(), 4096, "bfloat16"),
    ("window(256,256)", "local_attention", {"window": (256, 256)}, Pattern.window(256, 256), 16384, "bfloat16"),
    ("window(255,0)", "local_attention", {"window": (255, 0)}, Pattern.window(255, 0), 16384, "bfloat16"),
    ("chunk(1024)", "chunked_attention", {"chunk_size": 1024}, Pattern.chunk(1024), 16384, "bfloat16"),
    ("window(256,256)", "local_attention", {"window": (256, 256)}, Pattern.window(256, 256), 65536, "bfloat16"),
    ("global", "global_attention", {}, Pattern.full(), 16384, "bfloat16"),
    ("window(256,256)", "local_attention", {"window": (256, 256)}, Pattern.window(256, 256), 16384, "float32"),
    ("chunk(1024)", "chunked_attention", {"chunk_size": 1024}, Pattern.chunk(1024), 65536, "bfloat16"),
    ("global", "global_attention", {}, Pattern.full(), 4096, "float32"),
]
SMALL = {4096: 512, 16384: 1024, 65536: 2048}  # --small: sizes for a CPU dry run
DENSE_MASK_MAX = 1 << 28  # largest dense mask (elements) SDPA gets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(f, device: torch.device, min_reps: int = 3, max_reps: int = 20, min_seconds: float = 0.3) -> float:
    """Median seconds of ``f()`` after one warm-up call."""
    f()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - start < min_seconds):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            f()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak(f, device: torch.device) -> float | None:
    """Peak device memory (MiB) allocated during ``f()`` beyond what was allocated before."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    f()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _methods(
    op: str, options: dict, pattern: Pattern, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[dict[str, Any], dict[str, float]]:
    """The methods to time for one case, and compile times (seconds) of the compiled ones."""
    device, L = q.device, q.shape[2]
    ours = TorchBackend(device=device)
    methods: dict[str, Any] = {"attnref": lambda: getattr(ours, op)(q, k, v, **options)}
    compile_s: dict[str, float] = {}
    if pattern.kind == "global":
        methods["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v)
        return methods, compile_s
    if L * L <= DENSE_MASK_MAX:
        dense = torch.as_tensor(pattern.dense(L, L), device=device)
        methods["sdpa-dense-mask"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    if device.type == "cuda":
        block_mask = _flex.block_mask(pattern, L, L, 0, device)
        compiled = _flex._compiled()
        t0 = time.perf_counter()
        compiled(q, k, v, block_mask=block_mask)
        _sync(device)
        compile_s["flex"] = time.perf_counter() - t0
        methods["flex"] = lambda: compiled(q, k, v, block_mask=block_mask)
        with_flex = TorchBackend(device=device, flex=True)
        methods["attnref-flex"] = lambda: getattr(with_flex, op)(q, k, v, **options)
    return methods, compile_s


def run_case(case: tuple, device: torch.device, small: bool) -> dict:
    name, op, options, pattern, L, dtype = case
    L = SMALL[L] if small else L
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, 8, L, 64, generator=g).to(device=device, dtype=getattr(torch, dtype)) for _ in range(3))
    row: dict[str, Any] = {"case": name, "L": L, "dtype": dtype, "device": str(device)}
    with torch.no_grad():
        methods, compile_s = _methods(op, options, pattern, q, k, v)
        row["compile_s"] = compile_s
        reference = methods["attnref"]().float()
        for method, f in methods.items():
            try:
                row[f"{method}_ms"] = _time(f, device) * 1e3
                row[f"{method}_peak_mib"] = _peak(f, device)
                row[f"{method}_max_abs_diff_vs_attnref"] = float((f().float() - reference).abs().max())
            except Exception as exc:  # one failing method must not hide the others
                row[f"{method}_error"] = f"{type(exc).__name__}: {exc}"
    for method in methods:
        if method != "attnref" and f"{method}_ms" in row and "attnref_ms" in row:
            row[f"speedup_vs_{method}"] = row[f"{method}_ms"] / row["attnref_ms"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=150.0, help="start no case after this many seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="small sizes (a dry run on the CPU)")
    a = parser.parse_args()
    device = torch.device(a.device)
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cases": [],
        "skipped": [],
    }
    start = time.perf_counter()
    for case in CASES:
        label = f"{case[0]} L={case[4]} {case[5]}"
        if time.perf_counter() - start > a.budget:
            report["skipped"].append(label)
            continue
        print(f"# {label}", file=sys.stderr, flush=True)
        torch._dynamo.reset()  # each case compiles afresh: dynamo's recompile limit never comes into play
        _flex.reset()
        try:
            row = run_case(case, device, a.small)
        except Exception as exc:
            row = {"case": label, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report["cases"].append(row)
        print(json.dumps(row), flush=True)
        a.out.write_text(json.dumps(report, indent=1))
    report["seconds"] = time.perf_counter() - start
    a.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
