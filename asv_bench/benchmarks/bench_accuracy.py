"""Accuracy: the largest error of each implementation against the float64 reference, per dtype.

Every implementation gets the same inputs rounded to the dtype; the reference
computes on those rounded inputs in float64, so the figure is the error of the
computation alone. ``reference-precision`` is the reference's naive algorithm
run in the dtype itself (``precision=dtype``): the conformance tolerance allows
a backend a small multiple of its error.

Sizes: multi-head ``(1, 2, 1536, 64)`` (the window and the chunks are smaller
than ``L``); additive ``x (8, 1024, 128)``; Luong ``h_s (8, 256, 128)``. The
reference outputs are computed once per run, in ``setup_cache``, and read
from files by the benchmark processes.
"""

import os

import numpy as np

from .common import (
    MULTIHEAD_CASES,
    POOLING_CASES,
    REFERENCE_PRECISION,
    SDPA,
    grid,
    max_abs_error,
    prepare,
    reference_output,
    registered_backends,
)

# The smoke run checks two dtypes: one that is exact to ~1e-7, one 16-bit.
DTYPES = grid(
    smoke=["float32", "bfloat16"],
    default=["float64", "float32", "float16", "bfloat16"],
    full=["float64", "float32", "float16", "bfloat16"],
)
HEADS = 2


def _size(case: str) -> int:
    if case in MULTIHEAD_CASES:
        return 1536
    return 1024 if case.startswith("additive") else 256


def _file(case: str, dtype: str) -> str:
    return "reference-" + "".join(c if c.isalnum() else "_" for c in f"{case}-{dtype}") + ".npy"


class _AccuracySuite:
    timeout = 300.0

    def setup_cache(self) -> str:
        # Runs once for both classes (same function, same cache key), in a directory
        # asv keeps for the run; returns it (asv passes the value to every call).
        for case in [*MULTIHEAD_CASES, *POOLING_CASES]:
            for dtype in DTYPES:
                np.save(_file(case, dtype), reference_output(case, _size(case), dtype, heads=HEADS))
        return os.getcwd()

    setup_cache.timeout = 600.0  # type: ignore[attr-defined]

    def setup(self, _cache: str, impl: str, dtype: str, case: str) -> None:
        self.prepared = prepare(impl, case, _size(case), dtype, heads=HEADS)

    def track_max_abs_error(self, cache: str, impl: str, dtype: str, case: str) -> float:
        return max_abs_error(self.prepared, np.load(os.path.join(cache, _file(case, dtype))))

    track_max_abs_error.unit = "max abs error"  # type: ignore[attr-defined]


class AttentionAccuracy(_AccuracySuite):
    """``max |out - reference|`` of one multi-head call, fp32 ``(1, 2, 1536, 64)``."""

    params = ([*registered_backends(), REFERENCE_PRECISION, SDPA], DTYPES, list(MULTIHEAD_CASES))
    param_names = ("impl", "dtype", "case")


class PoolingAccuracy(_AccuracySuite):
    """``max |context - reference|`` of one pooling call."""

    params = ([*registered_backends(), REFERENCE_PRECISION], DTYPES, list(POOLING_CASES))
    param_names = ("impl", "dtype", "case")
