"""Packed variable-length batches (issue 11, contract section 8): causal attention over sequences of mixed lengths.

The case: 16 sequences whose lengths are drawn uniformly from 64..4096 (seed
0), packed into ``q, k, v`` of shape ``(T, H, D)``, H=8, D=64, fp32, causal
attention within each sequence. Implementations:

* a backend: ``global_attention(q, k, v, causal=True, cu_seqlens_q=cu,
  cu_seqlens_k=cu)`` on the packed arrays;
* ``reference``: the same call on the float64 reference (small cases only);
* ``baseline-sdpa-padded``: what users reach for on the CPU: scatter the packed
  rows into a zero-padded ``(B, H, L_max, D)`` batch, SDPA with
  ``is_causal=True``, gather the output rows back. No extra mask is needed:
  under the causal rule a real query never reaches the padding keys behind
  its own sequence, so this is SDPA's fastest exact form here. The padding and
  unpadding are part of the timed call;
* ``baseline-sdpa-loop``: one SDPA call per sequence on its slice of the
  packed arrays (``is_causal=True``), the outputs concatenated.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

import attnref.reference

from .common import (
    HEAD_DIM,
    REFERENCE,
    SMOKE,
    Prepared,
    _CaseMemorySuite,
    _CaseTimeSuite,
    assert_matches,
    backend_prepared,
    grid,
    registered_backends,
    torch,
    warm_up_or_skip,
)

PADDED, LOOP = "baseline-sdpa-padded", "baseline-sdpa-loop"
IMPLS = [*registered_backends(), REFERENCE, PADDED, LOOP]


@dataclass(frozen=True)
class VarlenCase:
    """``sequences`` lengths drawn uniformly from ``shortest..longest`` (seed 0), ``heads`` heads of size 64."""

    sequences: int
    shortest: int
    longest: int
    heads: int

    def lengths(self) -> np.ndarray:
        return np.random.default_rng(0).integers(self.shortest, self.longest + 1, size=self.sequences)

    def inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Packed ``q, k, v`` of shape ``(T, heads, 64)``, standard normal fp32, and the offsets ``cu_seqlens``."""
        lengths = self.lengths()
        cu_seqlens = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        rng = np.random.default_rng(1)
        shape = (int(cu_seqlens[-1]), self.heads, HEAD_DIM)
        q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
        return q, k, v, cu_seqlens


CASES = dict(
    grid(
        smoke=[("4 x 16..300", VarlenCase(4, 16, 300, 2))],
        default=[("16 x 64..4096", VarlenCase(16, 64, 4096, 8))],
        full=[("16 x 64..4096", VarlenCase(16, 64, 4096, 8))],
    )
)
#: The memory suite's warm-up (first-call costs of each library, not counted).
WARM_UP_CASE = VarlenCase(2, 16, 64, 2)
#: The float64 reference runs only up to this many packed tokens.
REFERENCE_MAX_TOKENS = 4096


@functools.cache  # per process; a NotImplementedError is raised again each time, never cached
def prepare_varlen(impl: str, case: VarlenCase) -> Prepared:
    """``impl`` ready to run ``case`` (``NotImplementedError`` where it cannot)."""
    q, k, v, cu = case.inputs()
    if impl in (PADDED, LOOP):
        prepared = _sdpa(impl, q, k, v, cu)
    else:
        if impl == REFERENCE and len(q) > REFERENCE_MAX_TOKENS:
            raise NotImplementedError(f"the float64 reference runs only up to {REFERENCE_MAX_TOKENS} tokens")
        kwargs = {"causal": True, "cu_seqlens_q": cu, "cu_seqlens_k": cu}
        prepared = backend_prepared(impl, "global_attention", (q, k, v), kwargs)
    warm_up_or_skip(prepared, impl, "cu_seqlens_q/cu_seqlens_k")
    return prepared


def check_varlen(prepared: Prepared, impl: str, case: VarlenCase) -> None:
    """In the smoke run, compare with the reference run on each sequence alone (the contract's definition)."""
    if not SMOKE:
        return
    q, k, v, cu = case.inputs()

    def alone(s: int, e: int) -> np.ndarray:  # one sequence as (1, H, L, D), back to (L, H, D)
        out = attnref.reference.global_attention(*(np.swapaxes(a[s:e], 0, 1)[None] for a in (q, k, v)), causal=True)
        return np.swapaxes(out[0], 0, 1)

    expected = np.concatenate([alone(s, e) for s, e in itertools.pairwise(cu.tolist())])
    assert_matches(prepared, expected, f"{impl} on varlen {case}")


def _sdpa(impl: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, cu: np.ndarray) -> Prepared:
    if torch is None:
        raise NotImplementedError("torch is not installed")
    from .baselines import torch_device, torch_finish, torch_tensor, torch_to_numpy

    device = torch_device()
    tq, tk, tv = (torch_tensor(a, device) for a in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    bounds = list(itertools.pairwise(cu.tolist()))

    if impl == LOOP:

        def run() -> Any:
            # (L, H, D) slices seen as (1, H, L, D): SDPA takes the strided view
            parts = [sdpa(*(t[s:e].transpose(0, 1)[None] for t in (tq, tk, tv)), is_causal=True) for s, e in bounds]
            out = torch.cat([p[0].transpose(0, 1) for p in parts])
            torch_finish(device)
            return out

        return Prepared(run, torch_to_numpy)

    batch, longest = len(bounds), max(e - s for s, e in bounds)
    # row t of the packed arrays goes to row b * longest + (t - cu[b]) of the padded batch
    rows = torch.from_numpy(np.concatenate([b * longest + np.arange(e - s) for b, (s, e) in enumerate(bounds)]))
    rows = rows.to(device)

    def pad(t: Any) -> Any:
        padded = t.new_zeros((batch * longest, *t.shape[1:]))
        padded.index_copy_(0, rows, t)
        return padded.view(batch, longest, *t.shape[1:]).transpose(1, 2)  # (B, H, L_max, D)

    def run() -> Any:
        out = sdpa(pad(tq), pad(tk), pad(tv), is_causal=True)
        out = out.transpose(1, 2).reshape(batch * longest, *tq.shape[1:]).index_select(0, rows)
        torch_finish(device)
        return out

    return Prepared(run, torch_to_numpy)


class Varlen(_CaseTimeSuite, impls=IMPLS, cases=CASES, prepare=prepare_varlen, check=check_varlen):
    """Time of causal attention over a packed batch (see the module's docstring)."""

    def time_varlen(self, impl: str, case: str) -> None:
        self.prepared.run()


class VarlenMemory(_CaseMemorySuite, impls=IMPLS, cases=CASES, prepare=prepare_varlen, warm_up_case=WARM_UP_CASE):
    """Peak memory of causal attention over a packed batch (see ``common._MemorySuite``)."""

    def peakmem_varlen(self, impl: str, case: str) -> None:
        self.prepared.run()
