"""The floor of the NumPy backend's forward on one case: its own products and exps, and nothing else.

Run from ``asv_bench/`` (``docs/benchmarks.md`` reads its output)::

    ../.venv/bin/python floor.py --pattern "chunk(1024)" --length 16384
    ../.venv/bin/python floor.py --pattern global --length 4096 --baseline baseline-naive

The NumPy backend's float32 forward is, per task of its plan, two matrix
products per key piece (the scores ``k @ q.T`` and ``[v, 1].T @ exp(s)``) and
one ``exp`` over the score block; the rest (masks, the softmax's
bookkeeping, copies, the interpreter) is overhead around them. This script
replays the backend's own plan (:func:`attnref_blocked.plan.plan` with the
backend's :class:`~attnref_blocked.plan.BlockConfig`, the same worker threads
and the same private BLAS) doing only those products and exps, and times it
alternately with the backend and a baseline in one process (best of
``--rounds``). ``baseline / floor`` is the most any kernel that does this
work with these products and NumPy's ``exp`` could reach against the
baseline on this machine; ``backend / floor`` is the overhead the backend
adds. The fp32 GEMMs of the matmul-peak targets (``common.gemm_calls``) are
timed in the same rounds, so the floor's useful throughput over the GEMM's
is the highest fraction of the peak such a kernel could reach.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchmarks.common import (  # noqa: E402
    BATCH,
    GEMM_N,
    HEAD_DIM,
    HEADS,
    MULTIHEAD_CASES,
    SDPA,
    allowed_pairs,
    best_alternately,
    gemm_calls,
    multihead_inputs,
    prepare,
)

from attnref.validation import check_attention  # noqa: E402
from attnref_blocked.forward import _Scratch  # noqa: E402  (replayed as the backend uses it)
from attnref_blocked.plan import key_pieces, plan  # noqa: E402
from attnref_blocked.threads import run_tasks  # noqa: E402
from attnref_numpy.backend import NumpyBackend  # noqa: E402


def floor_call(case_name: str, length: int):
    """A callable doing only the products and exps of the NumPy backend's plan for the case."""
    case = MULTIHEAD_CASES[case_name]
    q, k, v = multihead_inputs(length, "float32")
    args = check_attention(q, k, v)
    config = NumpyBackend().block_config(args)
    matmul = config.matmul or np.matmul
    tasks = plan(args, case.pattern, config)
    g = args.group
    q = q * np.float32(args.scale)  # the backend folds the scale into each query block
    extended = np.concatenate([v, np.ones((*v.shape[:3], 1), dtype=v.dtype)], axis=-1)

    def task_work(task, scratch) -> None:
        (h0, h1), (r0, r1) = task.heads, task.rows
        qb = q[task.batch, h0 * g : h1 * g, r0:r1].reshape(h1 - h0, g * (r1 - r0), -1)
        for j0, j1 in key_pieces(task, config.key_block):
            out = scratch.scores((h1 - h0, j1 - j0, qb.shape[1]))  # the backend's own per-worker score buffer
            s = matmul(k[task.batch, h0:h1, j0:j1], qb.swapaxes(-1, -2), out=out)
            np.exp(s, out=s)
            matmul(extended[task.batch, h0:h1, j0:j1].swapaxes(-1, -2), s)

    return lambda: run_tasks(np, tasks, task_work, lambda: _Scratch(np, np.dtype(np.float32)), config.threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="chunk(1024)", choices=sorted(MULTIHEAD_CASES))
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--baseline", default=SDPA)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    calls = {
        "floor": floor_call(options.pattern, options.length),
        "numpy": prepare("numpy", options.pattern, options.length).run,
        options.baseline: prepare(options.baseline, options.pattern, options.length).run,
        **{f"gemm {GEMM_N}^3, {name}": call for name, call in gemm_calls().items()},
    }
    for call in calls.values():  # warm-up
        call()
    best = best_alternately(calls, options.rounds)
    floor, backend, baseline = best["floor"], best["numpy"], best[options.baseline]
    gemm = max(2 * GEMM_N**3 / seconds for name, seconds in best.items() if name.startswith("gemm"))
    useful = 4 * BATCH * HEADS * HEAD_DIM * allowed_pairs(MULTIHEAD_CASES[options.pattern].pattern, options.length)
    shape = f"B={BATCH}, H={HEADS}, D={HEAD_DIM}"
    print(f"{options.pattern}, L={options.length}, fp32, {shape} (best of {options.rounds}, alternately):")
    for name, seconds in best.items():
        print(f"  {name:<22} {seconds * 1e3:9.1f} ms")
    print(f"  numpy / floor          {backend / floor:9.2f}   (the backend's overhead around its products and exps)")
    print(f"  {options.baseline} / numpy {baseline / backend:6.2f}")
    print(f"  {options.baseline} / floor {baseline / floor:6.2f}   (the most these products and exps can reach)")
    print(
        f"  fraction of the GEMM peak ({gemm / 1e9:.0f} GF/s): numpy {useful / backend / gemm:.2f}, "
        f"floor {useful / floor / gemm:.2f} (the most these products and exps can reach)"
    )


if __name__ == "__main__":
    main()
