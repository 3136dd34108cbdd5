"""Global attention, plain and causal (fp32, B=1, H=8, D=64).

Throughput of a run of ``t`` seconds: ``4 * B * H * L**2 * D / t`` flop/s for
plain attention (two matmuls of ``2 * L**2 * D`` per head), half that of
useful work for causal; compare with ``bench_matmul``.
"""

from .common import (
    NAIVE,
    REFERENCE,
    SDPA,
    _MemorySuite,
    _ThroughputSuite,
    _TimeSuite,
    best_alternately,
    check_smoke,
    grid,
    prepare,
    registered_backends,
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


class GlobalAttentionThroughput(_ThroughputSuite):
    """Global attention's useful throughput as a fraction of the machine's fp32 matmul throughput.

    Useful work: ``4 * B * H * L**2 * D`` flops. The machine's matmul: the faster
    of NumPy's and torch's ``(N, N) @ (N, N)`` (N=4096), timed alternately with
    the attention call in one process (see ``common.fraction_of_matmul``).
    """

    params = ([*registered_backends(), SDPA, NAIVE], grid(smoke=[512], default=[4096], full=[4096]), ["global"])
    param_names = ("impl", "L", "pattern")


class GlobalAttentionOverSdpa:
    """A backend's time over SDPA's on the same inputs, alternately in one process (best of 5).

    For global attention a backend may call SDPA itself (the torch backend does): this ratio is
    then its own cost around the kernel, which two ``time_`` figures taken in separate processes
    (10-20% apart on a shared machine for the same kernel) cannot resolve.
    """

    params = (registered_backends(), grid(smoke=[512], default=[4096], full=[4096]), ["global"])
    param_names = ("impl", "L", "pattern")
    timeout = 600.0

    def setup(self, impl: str, size: int, case: str) -> None:
        self.backend, self.sdpa = prepare(impl, case, size), prepare(SDPA, case, size)
        check_smoke(self.backend, impl, case, size)

    def track_time_over_sdpa(self, impl: str, size: int, case: str) -> float:
        warm_up(self.backend)
        warm_up(self.sdpa)
        best = best_alternately({"backend": self.backend.run, "sdpa": self.sdpa.run}, 5)
        return best["backend"] / best["sdpa"]

    track_time_over_sdpa.unit = "ratio"  # type: ignore[attr-defined]
