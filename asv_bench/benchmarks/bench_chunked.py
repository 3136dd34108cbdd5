"""Chunked attention with chunks of 1024 keys, plain and causal (Llama 4's chunked layers).

fp32, B=1, H=8, D=64. Useful work per run: ``4 * B * H * D * n`` flops, ``n``
the number of allowed (query, key) pairs (``1024 * L`` plain, about half causal).
"""

from .common import BASELINES, FLEX, REFERENCE, _MemorySuite, _ThroughputSuite, _TimeSuite, grid, registered_backends

IMPLS = [*registered_backends(), REFERENCE, *BASELINES]
# The default grid holds the headline size (16384) and a size the reference runs at.
SIZES = grid(smoke=[1536], default=[1024, 16384], full=[1024, 4096, 16384, 32768])
PATTERNS = ["chunk(1024)", "chunk(1024, causal)"]


class ChunkedAttention(_TimeSuite):
    """Time of ``chunked_attention(q, k, v, chunk_size=1024, causal=...)``."""

    params = (IMPLS, SIZES, PATTERNS)
    param_names = ("impl", "L", "pattern")

    def time_chunked_attention(self, impl: str, size: int, case: str) -> None:
        self.prepared.run()


class ChunkedAttentionMemory(_MemorySuite):
    """Peak memory of ``chunked_attention`` (see ``common._MemorySuite``)."""

    params = (IMPLS, SIZES, PATTERNS)
    param_names = ("impl", "L", "pattern")

    def peakmem_chunked_attention(self, impl: str, size: int, case: str) -> None:
        self.prepared.run()


class ChunkedAttentionThroughput(_ThroughputSuite):
    """Useful throughput of chunked attention over the machine's fp32 matmul throughput (issue 15).

    Useful work: ``4 * B * H * D`` flops per allowed (query, key) pair. The
    machine's matmul: the faster of NumPy's and torch's fp32 GEMM (N=4096),
    timed alternately with the attention call in one process (see
    ``common.fraction_of_matmul``). At the headline size only; the dense-mask
    SDPA baseline, a few percent by construction, is left out.
    """

    params = ([*registered_backends(), FLEX], grid(smoke=[1536], default=[16384], full=[16384]), PATTERNS)
    param_names = ("impl", "L", "pattern")
