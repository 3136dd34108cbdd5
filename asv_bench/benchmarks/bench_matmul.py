"""The machine's own matmul speed, so attention throughput can be read as a fraction of it.

``Matmul``: a square fp32 GEMM ``(N, N) @ (N, N)``, ``2 * N**3`` flops.
``AttentionProducts``: the two products of global attention alone, fp32, B=1,
H=8, D=64: ``q @ k^T`` then ``s @ v``, ``4 * H * L**2 * D`` flops, the count the
attention targets use. ``track_gflops`` is the best of three calls in GF/s.
"""

import time
from collections.abc import Callable

import numpy as np

from .common import HEAD_DIM, HEADS, grid, torch

LIBRARIES = ["numpy", "torch"]
SIZES = grid(smoke=[512], default=[4096], full=[4096])

# Operands per (benchmark, library, size), made once per process: asv re-runs set-up before every sample.
_OPERANDS: dict[tuple, list] = {}


def _operands(key: tuple, library: str, make: Callable[[np.random.Generator], list[np.ndarray]]) -> list:
    if key not in _OPERANDS:
        arrays = make(np.random.default_rng(0))
        if library == "torch":
            if torch is None:
                raise NotImplementedError("torch is not installed")
            from .baselines import torch_device

            arrays = [torch.from_numpy(a).to(torch_device()) for a in arrays]
        _OPERANDS[key] = arrays
        _finish(library, arrays[0] @ arrays[1])  # warm-up: thread pools, page faults
    return _OPERANDS[key]


def _finish(library: str, out) -> None:
    if library == "torch" and out.device.type == "cuda":
        torch.cuda.synchronize(out.device)


def _best_gflops(func: Callable[[], None], flops: float, calls: int = 3) -> float:
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


class Matmul:
    """fp32 GEMM, ``2 * N**3`` flops."""

    params = (LIBRARIES, SIZES)
    param_names = ("library", "N")
    rounds = 1
    repeat = (3, 10, 3.0)
    warmup_time = 0.0  # set-up warmed up

    def setup(self, library: str, n: int) -> None:
        def make(rng: np.random.Generator) -> list[np.ndarray]:
            return [rng.standard_normal((n, n), dtype=np.float32) for _ in range(2)]

        self.library = library
        self.a, self.b = _operands(("gemm", library, n), library, make)

    def call(self) -> None:
        _finish(self.library, self.a @ self.b)

    def time_matmul(self, library: str, n: int) -> None:
        self.call()

    def track_gflops(self, library: str, n: int) -> float:
        return _best_gflops(self.call, 2.0 * n**3)

    track_gflops.unit = "GF/s"  # type: ignore[attr-defined]


class AttentionProducts:
    """The two matmuls of global attention (no softmax), ``4 * H * L**2 * D`` flops."""

    params = (LIBRARIES, SIZES)
    param_names = ("library", "L")
    rounds = 1
    repeat = (3, 10, 3.0)
    warmup_time = 0.0

    def setup(self, library: str, length: int) -> None:
        def make(rng: np.random.Generator) -> list[np.ndarray]:
            shape = (1, HEADS, length, HEAD_DIM)
            q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
            return [q, np.ascontiguousarray(np.swapaxes(k, -1, -2)), v]

        self.library = library
        self.q, self.k_t, self.v = _operands(("products", library, length), library, make)

    def call(self) -> None:
        _finish(self.library, (self.q @ self.k_t) @ self.v)

    def time_attention_products(self, library: str, length: int) -> None:
        self.call()

    def track_gflops(self, library: str, length: int) -> float:
        return _best_gflops(self.call, 4.0 * HEADS * length**2 * HEAD_DIM)

    track_gflops.unit = "GF/s"  # type: ignore[attr-defined]
