"""Random numbers that no dependency upgrade can change: the inputs behind every case id.

A case id (with its seed) must name the same inputs on every machine and under
every version of NumPy (contract section 5). NumPy promises a fixed bit stream
for its bit generators (``PCG64`` seeded through ``SeedSequence``), but not for
the distributions of ``Generator`` (``standard_normal``, ``integers``, ...),
whose algorithms may change between releases, nor for the last bit of
``np.log``/``np.cos`` across CPUs. So :class:`CaseRandom` reads raw 64-bit words
from ``PCG64`` and builds every value with exact or correctly rounded IEEE
arithmetic only:

* ``random``: uniform on ``[0, 1)``, the top 53 bits of a word times ``2**-53``
  (exact);
* ``standard_normal``: the Irwin-Hall sum of four uniforms, centred and scaled
  to unit variance, ``(u1 + u2 + u3 + u4 - 2) * sqrt(3)`` (bell-shaped on
  ``[-2 sqrt 3, 2 sqrt 3]``; sums and ``sqrt`` are correctly rounded);
* ``integers(low, high)``: ``low + floor(u * (high - low))``.

The test ``tests/conformance/test_conformance_ids.py`` pins a few case ids to
the hashes of their inputs.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["CaseRandom", "case_rng", "seed_of"]

_SQRT3 = math.sqrt(3.0)


def seed_of(key: str) -> int:
    """The 32-bit seed of the text ``key`` (its CRC-32)."""
    return zlib.crc32(key.encode())


class CaseRandom:
    """A version-proof random stream seeded by a list of integers.

    It offers the few methods of :class:`numpy.random.Generator` the catalogue
    uses, with the same names and argument order.
    """

    def __init__(self, seed: int | Sequence[int]) -> None:
        self._bits = np.random.PCG64(np.random.SeedSequence(seed))

    def _uniform(self, count: int) -> np.ndarray:
        raw = np.asarray(self._bits.random_raw(count), dtype=np.uint64)
        return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def random(self, size: int | tuple[int, ...] = ()) -> Any:
        """Uniform floats on ``[0, 1)`` of shape ``size`` (a Python float for ``()``)."""
        shape = (size,) if isinstance(size, int) else tuple(size)
        values = self._uniform(math.prod(shape)).reshape(shape)
        return float(values) if shape == () else values

    def standard_normal(self, size: int | tuple[int, ...] = ()) -> Any:
        """Bell-shaped floats of mean 0 and variance 1 (Irwin-Hall, four terms) of shape ``size``."""
        shape = (size,) if isinstance(size, int) else tuple(size)
        u = self._uniform(4 * math.prod(shape)).reshape((4, *shape))
        values = (((u[0] + u[1]) + (u[2] + u[3])) - 2.0) * _SQRT3
        return float(values) if shape == () else values

    def integers(self, low: int, high: int | None = None, size: int | tuple[int, ...] | None = None) -> Any:
        """Integers on ``[low, high)`` (``[0, low)`` when ``high`` is omitted); an int when ``size`` is None."""
        low, high = (0, low) if high is None else (low, high)
        if high <= low:
            raise ValueError(f"integers: expected low < high, got {low}, {high}")
        count = 1 if size is None else math.prod((size,) if isinstance(size, int) else size)
        values = low + np.floor(self._uniform(count) * (high - low)).astype(np.int64)
        return int(values[0]) if size is None else values.reshape(size)

    def choice(self, options: Sequence[Any], size: int | tuple[int, ...] | None = None) -> Any:
        """Elements of ``options`` drawn uniformly (one when ``size`` is None, else an array)."""
        index = self.integers(0, len(options), size)
        if size is None:
            return options[index]
        return np.asarray(options)[index]

    def boolean(self, p_true: float = 0.5) -> bool:
        """True with probability ``p_true``."""
        return self.random() < p_true


def case_rng(key: str | int, *more: int) -> CaseRandom:
    """The random stream of the case called ``key`` (a text key, or integers), with more integers mixed in."""
    first = seed_of(key) if isinstance(key, str) else int(key)
    return CaseRandom([first, *(int(m) for m in more)])
