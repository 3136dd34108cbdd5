"""The NumPy backend, and the op methods it shares with the CuPy backend.

:class:`ArrayBackend` holds the five op methods, written once over an array
namespace ``xp``: each validates with :mod:`attnref.validation` (so it rejects
exactly what the reference rejects, with the same errors), then runs the
blocked multi-head code (:mod:`attnref_numpy.blocked`) or the pooling code
(:mod:`attnref_numpy.pooling`). :class:`NumpyBackend` binds ``xp = numpy`` and
splits the work over threads; ``attnref_cupy`` binds ``xp = cupy``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

import attnref
from attnref.backend import FORWARD_OPS
from attnref.dtypes import DTYPE_NAMES
from attnref.patterns import Pattern
from attnref.validation import AttentionArgs, check_attention, chunk_pattern, full_pattern, window_pattern
from attnref_numpy import blocked, pooling
from attnref_numpy._blas import blas_can_be_limited

__all__ = ["ArrayBackend", "NumpyBackend", "default_threads"]


class ArrayBackend:
    """The op methods of a backend built on a NumPy-like namespace.

    Subclasses set ``name``, ``version``, ``dtypes`` and ``unavailable_reason``
    and implement :meth:`namespace` (the array module) and :meth:`block_config`.
    Arrays come in and go out in the subclass's native type; outputs have the
    dtype of the inputs.
    """

    ops: frozenset[str] = frozenset(FORWARD_OPS)  # the *_vjp ops join once their signatures equal the reference's

    def namespace(self) -> Any:
        """The array module (``numpy``, ``cupy``)."""
        raise NotImplementedError

    def block_config(self, args: AttentionArgs) -> blocked.BlockConfig:
        """How to cut one multi-head call into blocks (may depend on its size)."""
        return blocked.BlockConfig()

    # -- multi-head ops ----------------------------------------------------
    def global_attention(
        self, q: Any, k: Any, v: Any, *, causal: bool = False, scale: float | None = None,
        softcap: float | None = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None,
        q_lengths: Any = None, align: str = "bottom_right", return_lse: bool = False,
    ) -> Any:  # fmt: skip
        """Global attention (see :func:`attnref.reference.global_attention`)."""
        return self._multihead(
            q, k, v, full_pattern(causal), scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
        )  # fmt: skip

    def local_attention(
        self, q: Any, k: Any, v: Any, *, window: Any, scale: float | None = None,
        softcap: float | None = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None,
        q_lengths: Any = None, align: str = "bottom_right", return_lse: bool = False,
    ) -> Any:  # fmt: skip
        """Sliding-window attention (see :func:`attnref.reference.local_attention`)."""
        return self._multihead(
            q, k, v, window_pattern(window), scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
        )  # fmt: skip

    def chunked_attention(
        self, q: Any, k: Any, v: Any, *, chunk_size: int, causal: bool = False, scale: float | None = None,
        softcap: float | None = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None,
        q_lengths: Any = None, align: str = "bottom_right", return_lse: bool = False,
    ) -> Any:  # fmt: skip
        """Chunked attention (see :func:`attnref.reference.chunked_attention`)."""
        return self._multihead(
            q, k, v, chunk_pattern(chunk_size, causal), scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
        )  # fmt: skip

    def _multihead(
        self, q: Any, k: Any, v: Any, pattern: Pattern, *, scale: Any, softcap: Any, bias: Any, mask: Any,
        kv_lengths: Any, q_lengths: Any, align: Any, return_lse: Any,
    ) -> Any:  # fmt: skip
        xp = self.namespace()
        q, k, v = xp.asarray(q), xp.asarray(k), xp.asarray(v)
        bias = None if bias is None else xp.asarray(bias)
        mask = None if mask is None else xp.asarray(mask)
        args = check_attention(
            q, k, v, scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
        )  # fmt: skip
        return blocked.attend(
            xp, q, k, v, pattern, args, bias=bias, mask=mask, return_lse=bool(return_lse),
            config=self.block_config(args),
        )  # fmt: skip

    # -- pooling ops -------------------------------------------------------
    def additive_attention(
        self, x: Any, w_in: Any, b_in: Any, w_out: Any, b_out: Any = None, *, mask: Any = None,
        window: Any = None, center: Any = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        """Additive attention pooling (see :func:`attnref.reference.additive_attention`)."""
        return pooling.additive_attention(
            self.namespace(), x, w_in, b_in, w_out, b_out, mask=mask, window=window, center=center
        )

    def luong_attention(
        self, h_t: Any, h_s: Any, *, score: str = "dot", w_a: Any = None, v_a: Any = None, mode: str = "global",
        half_width: int | None = None, w_p: Any = None, v_p: Any = None, source_lengths: Any = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        """Luong attention (see :func:`attnref.reference.luong_attention`)."""
        return pooling.luong_attention(
            self.namespace(), h_t, h_s, score=score, w_a=w_a, v_a=v_a, mode=mode, half_width=half_width,
            w_p=w_p, v_p=v_p, source_lengths=source_lengths,
        )  # fmt: skip


def default_threads() -> int:
    """Worker threads for the NumPy backend: the usable cores (at most 8), or 1
    when NumPy's BLAS is not an OpenBLAS that can be held to one thread while
    the workers run (see :mod:`attnref_numpy._blas`)."""
    if not blas_can_be_limited():
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


class NumpyBackend(ArrayBackend):
    """attnref's ops on NumPy arrays: blocked, memory-bounded, multi-threaded.

    Parameters
    ----------
    threads : int, optional
        Worker threads for the multi-head ops (default: :func:`default_threads`).
        Calls too small to split run on the calling thread.
    block : BlockConfig, optional
        Block sizes (its ``threads`` is ignored); the default suits CPUs with
        about 1 MiB of L2 cache per core. Tests use tiny blocks.
    """

    name = "numpy"
    version = f"{attnref.__version__} (numpy {np.__version__})"
    dtypes = frozenset(DTYPE_NAMES)
    unavailable_reason = None

    def __init__(self, threads: int | None = None, block: blocked.BlockConfig | None = None) -> None:
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self.block = blocked.BlockConfig() if block is None else block

    def namespace(self) -> Any:
        return np

    def asarray(self, array: Any) -> np.ndarray:
        """A NumPy array as it is (dtype kept)."""
        return np.asarray(array)

    def to_numpy(self, array: Any) -> np.ndarray:
        """A NumPy array as it is (dtype kept)."""
        return np.asarray(array)

    def block_config(self, args: AttentionArgs) -> blocked.BlockConfig:
        work = args.batch * args.q_heads * args.q_len * args.kv_len
        threads = self.threads if work > self.block.score_elements else 1
        return dataclasses.replace(self.block, threads=threads)
