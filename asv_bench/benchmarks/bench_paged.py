"""Paged KV cache decoding (issue 11, contract section 9): one new query token per sequence against its cache.

The case: B=16 sequences, Hq=32 query heads, Hkv=8 kv heads (GQA), D=64, fp32,
Lq=1, cache lengths drawn uniformly from 1024..32768 (seed 0), blocks of 16
positions. The cache holds exactly the used blocks, in a random order (as an
allocator's free list leaves them), and ``block_table`` entries past a
sequence's last block are -1. Implementations:

* a backend: ``paged_attention(q, k_cache, v_cache, block_table=...,
  cache_seqlens=...)``;
* ``reference``: the float64 reference (small cases only);
* ``baseline-sdpa-gather``: what users reach for on the CPU: per sequence,
  gather its blocks in table order (``k_cache[table]``, one copy of whole
  blocks), view them as ``(1, Hkv, L, D)`` and call SDPA on that strided view
  (the fastest of the forms tried: an ``index_select`` over a head-major view
  or a contiguous copy cost 2-4x more). The ``Hq // Hkv`` query heads that
  share a kv head are folded into SDPA's query axis (exact for one query
  token; no copy of K/V per query head);
* ``baseline-sdpa-gathered``: the same SDPA calls on keys and values that were
  gathered in the set-up into contiguous ``(1, Hkv, L, D)`` tensors, the cost
  of attention alone: paging is free when the backend is as fast as this.

``track_cache_size`` is the size of the cache (MiB, keys and values): a
backend's extra memory far below it shows that no dense copy of the cache was
made.
"""

from __future__ import annotations

import functools
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

GATHER, GATHERED = "baseline-sdpa-gather", "baseline-sdpa-gathered"
IMPLS = [*registered_backends(), REFERENCE, GATHER, GATHERED]


@dataclass(frozen=True)
class PagedCase:
    """Decoding ``batch`` sequences with cache lengths drawn from ``shortest..longest`` (seed 0)."""

    batch: int
    q_heads: int
    kv_heads: int
    shortest: int
    longest: int
    block: int = 16

    def seqlens(self) -> np.ndarray:
        return np.random.default_rng(0).integers(self.shortest, self.longest + 1, size=self.batch)

    def cache_bytes(self) -> int:
        """Bytes of ``k_cache`` and ``v_cache`` (fp32): exactly the used blocks."""
        return 2 * int((-(-self.seqlens() // self.block)).sum()) * self.block * self.kv_heads * HEAD_DIM * 4

    def inputs(self) -> dict[str, np.ndarray]:
        """``q (B, Hq, 1, D)``, the caches ``(num_blocks, block, Hkv, D)``, ``block_table``, ``cache_seqlens``."""
        rng = np.random.default_rng(0)
        seqlens = rng.integers(self.shortest, self.longest + 1, size=self.batch)  # = self.seqlens()
        blocks = -(-seqlens // self.block)
        order = rng.permutation(int(blocks.sum())).astype(np.int32)
        table = np.full((self.batch, int(blocks.max())), -1, dtype=np.int32)
        starts = np.concatenate([[0], np.cumsum(blocks)])
        for b in range(self.batch):
            table[b, : blocks[b]] = order[starts[b] : starts[b + 1]]
        cache_shape = (len(order), self.block, self.kv_heads, HEAD_DIM)
        return {
            "q": rng.standard_normal((self.batch, self.q_heads, 1, HEAD_DIM), dtype=np.float32),
            "k_cache": rng.standard_normal(cache_shape, dtype=np.float32),
            "v_cache": rng.standard_normal(cache_shape, dtype=np.float32),
            "block_table": table,
            "cache_seqlens": seqlens.astype(np.int32),
        }


CASES = dict(
    grid(
        smoke=[("B=3 Hq=4 Hkv=2 20..200", PagedCase(3, 4, 2, 20, 200))],
        default=[("B=16 Hq=32 Hkv=8 1k..32k", PagedCase(16, 32, 8, 1024, 32768))],
        full=[("B=16 Hq=32 Hkv=8 1k..32k", PagedCase(16, 32, 8, 1024, 32768))],
    )
)
WARM_UP_CASE = PagedCase(2, 4, 2, 20, 40)
#: The float64 reference runs only up to this many cached positions in all.
REFERENCE_MAX_POSITIONS = 8192


@functools.cache  # per process; a NotImplementedError is raised again each time, never cached
def prepare_paged(impl: str, case: PagedCase) -> Prepared:
    """``impl`` ready to decode ``case`` (``NotImplementedError`` where it cannot)."""
    arrays = case.inputs()
    if impl in (GATHER, GATHERED):
        prepared = _sdpa(impl, **arrays)
    else:
        if impl == REFERENCE and arrays["cache_seqlens"].sum() > REFERENCE_MAX_POSITIONS:
            raise NotImplementedError(f"the float64 reference runs only up to {REFERENCE_MAX_POSITIONS} positions")
        q, k_cache, v_cache = arrays.pop("q"), arrays.pop("k_cache"), arrays.pop("v_cache")
        prepared = backend_prepared(impl, "paged_attention", (q, k_cache, v_cache), arrays)
    warm_up_or_skip(prepared, impl, "paged_attention")
    return prepared


def _gathered(k_cache: np.ndarray, table: np.ndarray, seqlens: np.ndarray, b: int) -> np.ndarray:
    """Sequence ``b``'s keys (or values) as ``(L_b, Hkv, D)``: the contract's definition, position by position."""
    t = np.arange(seqlens[b])
    return k_cache[table[b, t // k_cache.shape[1]], t % k_cache.shape[1]]


def check_paged(prepared: Prepared, impl: str, case: PagedCase) -> None:
    """In the smoke run, compare with the reference's global attention on each sequence's gathered keys."""
    if not SMOKE:
        return
    a = case.inputs()
    expected = np.concatenate(
        [
            attnref.reference.global_attention(
                a["q"][b : b + 1],
                *(
                    np.swapaxes(_gathered(c, a["block_table"], a["cache_seqlens"], b), 0, 1)[None]
                    for c in (a["k_cache"], a["v_cache"])
                ),
            )
            for b in range(case.batch)
        ]
    )
    assert_matches(prepared, expected, f"{impl} on paged {case}")


def _sdpa(
    impl: str,
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    block_table: np.ndarray,
    cache_seqlens: np.ndarray,
) -> Prepared:
    if torch is None:
        raise NotImplementedError("torch is not installed")
    from .baselines import torch_device, torch_finish, torch_tensor, torch_to_numpy

    device = torch_device()
    batch, q_heads, _, dim = q.shape
    kv_heads, block = k_cache.shape[2], k_cache.shape[1]
    # (B, Hq, 1, D) -> per sequence (1, Hkv, group, D): the query heads of a kv head on SDPA's query axis
    tq = torch_tensor(q, device).reshape(batch, kv_heads, q_heads // kv_heads, dim)
    tk, tv = torch_tensor(k_cache, device), torch_tensor(v_cache, device)
    lengths = cache_seqlens.tolist()
    tables = [
        torch.from_numpy(block_table[b, : -(-n // block)].astype(np.int64)).to(device) for b, n in enumerate(lengths)
    ]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def gather(cache: Any, b: int) -> Any:
        # whole blocks copied in table order (one copy), seen as (1, Hkv, L_b, D): SDPA reads the strided view
        return cache[tables[b]].view(-1, kv_heads, dim)[: lengths[b]].transpose(0, 1)[None]

    def run_on(keys: Any, values: Any) -> Any:
        out = torch.cat([sdpa(tq[b : b + 1], keys(b), values(b)) for b in range(batch)])
        torch_finish(device)
        return out.reshape(batch, q_heads, 1, dim)

    if impl == GATHERED:  # gathered in the set-up, contiguous: SDPA's best case
        keys = [gather(tk, b).contiguous() for b in range(batch)]
        values = [gather(tv, b).contiguous() for b in range(batch)]
        return Prepared(lambda: run_on(keys.__getitem__, values.__getitem__), torch_to_numpy)
    return Prepared(lambda: run_on(lambda b: gather(tk, b), lambda b: gather(tv, b)), torch_to_numpy)


class PagedDecode(_CaseTimeSuite, impls=IMPLS, cases=CASES, prepare=prepare_paged, check=check_paged):
    """Time of one decoding step over a paged KV cache (see the module's docstring)."""

    def time_paged_decode(self, impl: str, case: str) -> None:
        self.prepared.run()


class PagedDecodeMemory(_CaseMemorySuite, impls=IMPLS, cases=CASES, prepare=prepare_paged, warm_up_case=WARM_UP_CASE):
    """Peak memory of one decoding step (see ``common._MemorySuite``), and the cache's own size."""

    def peakmem_paged_decode(self, impl: str, case: str) -> None:
        self.prepared.run()


class PagedCacheSize:
    """The size of the case's KV cache (keys and values), to read the extra memory against."""

    params = (list(CASES),)
    param_names = ("case",)

    def track_cache_size(self, case: str) -> float:
        return CASES[case].cache_bytes() / 2**20

    track_cache_size.unit = "MiB"  # type: ignore[attr-defined]
