"""Global attention, plain and causal (fp32, B=1, H=8, D=64).

Throughput of a run of ``t`` seconds: ``4 * B * H * L**2 * D / t`` flop/s for
plain attention (two matmuls of ``2 * L**2 * D`` per head), half that of
useful work for causal; compare with ``bench_matmul``.
"""

import time

import numpy as np

from .common import (
    HEAD_DIM,
    HEADS,
    NAIVE,
    REFERENCE,
    SDPA,
    _MemorySuite,
    _TimeSuite,
    grid,
    prepare,
    registered_backends,
    torch,
    warm_up,
)

# No FlexAttention here: for global attention the baseline is SDPA.
IMPLS = [*registered_backends(), REFERENCE, SDPA, NAIVE]
SIZES = grid(smoke=[512], default=[1024, 4096], full=[1024, 4096, 8192, 16384])
PATTERNS = ["global", "causal"]


class GlobalAttention(_TimeSuite):
    """Time of ``global_attention(q, k, v, causal=...)``."""

    params = (IMPLS, SIZES, PATTERNS)
    param_names = ("impl", "L", "pattern")

    def time_global_attention(self, impl: str, size: int, case: str) -> None:
        self.prepared.run()


class GlobalAttentionMemory(_MemorySuite):
    """Peak memory of ``global_attention`` (see ``common._MemorySuite``)."""

    params = (IMPLS, SIZES, PATTERNS)
    param_names = ("impl", "L", "pattern")

    def peakmem_global_attention(self, impl: str, size: int, case: str) -> None:
        self.prepared.run()


GEMM_N = grid(smoke=[512], default=[4096], full=[4096])[0]


def _gemms() -> dict[str, object]:
    """fp32 ``(N, N) @ (N, N)`` calls of the libraries present (NumPy, and torch on the CPU)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32) for _ in range(2))
    calls = {"numpy": lambda: a @ b}
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        calls["torch"] = lambda: ta @ tb
    return calls


def _seconds(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


class GlobalAttentionThroughput:
    """Global attention's useful throughput as a fraction of the machine's fp32 matmul throughput.

    Useful work: ``4 * B * H * L**2 * D`` flops. The machine's matmul: the faster
    of NumPy's and torch's ``(N, N) @ (N, N)`` (N=4096). The attention call and
    the matmuls alternate in one process, three rounds, best time of each, so
    that load from other processes hits both alike. CPU only (the matmuls run on
    the host).
    """

    params = ([*registered_backends(), SDPA, NAIVE], grid(smoke=[512], default=[4096], full=[4096]))
    param_names = ("impl", "L")
    timeout = 600.0

    def setup(self, impl: str, size: int) -> None:
        self.prepared = prepare(impl, "global", size)
        self.gemms = _gemms()

    def track_fraction_of_matmul(self, impl: str, size: int) -> float:
        warm_up(self.prepared)
        best: dict[str, float] = {}
        for _ in range(3):
            for name, call in [*self.gemms.items(), ("attention", self.prepared.run)]:
                best[name] = min(best.get(name, float("inf")), _seconds(call))
        attention = 4 * HEADS * size**2 * HEAD_DIM / best.pop("attention")
        matmul = max(2 * GEMM_N**3 / t for t in best.values())
        return attention / matmul

    track_fraction_of_matmul.unit = "fraction"  # type: ignore[attr-defined]
