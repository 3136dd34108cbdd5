"""The torch backend's streamed paged attention (:mod:`attnref_torch._paged`): chunks of cache
blocks read into a reused buffer. When it is taken, that its answer (and lse) is the reference's,
through partial chunks, windows, softcap and non-finite values in slots no row may see; that it
never builds more than a chunk of keys; and that what it cannot take goes the general way."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attnref import reference as R  # noqa: E402
from attnref_torch import TorchBackend, _paged, _sequences  # noqa: E402

BLOCK, HKV, D, DV = 4, 2, 8, 6


@pytest.fixture(scope="module")
def cpu():
    return TorchBackend(device="cpu")


@pytest.fixture
def streamed(monkeypatch):
    """Chunks of 3 blocks (so that sequences take several, the last one partial); the
    sequences that went through the streamed path, as their ``(lo, hi)`` key ranges."""
    monkeypatch.setattr(_paged, "CHUNK_BYTES", 3 * BLOCK * HKV * D * 8)  # float64: 3 blocks
    calls = []
    original = _sequences.streamed_attention

    def counted(q, k_cache, v_cache, blocks, keys, one):
        calls.append(keys)
        return original(q, k_cache, v_cache, blocks, keys, one)

    monkeypatch.setattr(_sequences, "streamed_attention", counted)
    return calls


def _inputs(lengths, q_len=1, Hq=4, seed=0):
    rng = np.random.default_rng(seed)
    used = [-(-n // BLOCK) for n in lengths]
    num_blocks = sum(used) + 3
    order = rng.permutation(num_blocks)
    table = np.full((len(lengths), max(used) + 1), -1)
    at = 0
    for b, n in enumerate(used):
        table[b, :n] = order[at : at + n]
        at += n
    k_cache = rng.standard_normal((num_blocks, BLOCK, HKV, D))
    v_cache = rng.standard_normal((num_blocks, BLOCK, HKV, DV))
    k_cache[order[at:]], v_cache[order[at:]] = np.nan, np.nan  # blocks no sequence uses
    q = rng.standard_normal((len(lengths), Hq, q_len, D))
    return q, k_cache, v_cache, {"block_table": table, "cache_seqlens": np.array(lengths)}


def _t(a):
    return torch.from_numpy(np.asarray(a))


def _check(cpu, q, k_cache, v_cache, paging, dtype=torch.float64, atol=1e-12, **options):
    out, lse = cpu.paged_attention(
        _t(q).to(dtype), _t(k_cache).to(dtype), _t(v_cache).to(dtype), return_lse=True, **paging, **options
    )
    ref_out, ref_lse = R.paged_attention(q, k_cache, v_cache, return_lse=True, **paging, **options)
    assert out.dtype == lse.dtype == dtype
    np.testing.assert_allclose(out.double().numpy(), ref_out, atol=atol, rtol=atol)
    np.testing.assert_allclose(lse.double().numpy(), ref_lse, atol=atol, rtol=atol)  # -inf rows equal too
    return out.double().numpy()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"causal": True},
        {"window": (5, 0)},  # starts inside a block, after the first chunk
        {"window": (9, 2), "causal": True},
        {"softcap": 1.5, "scale": 0.7},
        {"sinks": np.array([0.5, -1.0, np.inf, 2.0])},
    ],
)
def test_decode_streams_and_equals_the_reference(cpu, streamed, options):
    lengths = [30, 1, 0, 12, 13, 25]
    q, k_cache, v_cache, paging = _inputs(lengths)
    out = _check(cpu, q, k_cache, v_cache, paging, **options)
    assert np.isfinite(out).all() or "sinks" in options
    window = options.get("window", (None, None))
    expected = [(0 if window[0] is None else max(0, n - 1 - window[0]), n) for n in lengths if n]
    assert streamed == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_other_dtypes(cpu, streamed, dtype):
    q, k_cache, v_cache, paging = _inputs([30, 7])
    q, k_cache, v_cache = (torch.from_numpy(x).to(dtype).double().numpy() for x in (q, k_cache, v_cache))
    _check(cpu, q, k_cache, v_cache, paging, dtype=dtype, atol={torch.float32: 1e-5}.get(dtype, 1e-2))
    assert len(streamed) == 2


def test_slots_no_row_sees_stay_out(cpu, streamed):
    """NaN and infinities in the slots of a used block past the sequence's end, before the
    window's start, and in blocks no sequence uses, reach no row."""
    q, k_cache, v_cache, paging = _inputs([30, 13])
    table = paging["block_table"]
    for cache in (k_cache, v_cache):
        cache[table[0, 7], 2:] = np.nan  # positions 30, 31 of sequence 0
        cache[table[1, 3], 1:] = np.inf  # positions 13..15 of sequence 1
        cache[table[0, 4], :2] = -np.inf  # positions 16, 17: before a window of 11 ending at 29
    out = _check(cpu, q, k_cache, v_cache, paging, window=(11, 0))
    assert np.isfinite(out).all()
    assert streamed == [(18, 30), (1, 13)]


def test_non_finite_values_of_seen_keys(cpu, streamed):
    """A NaN key makes the row NaN; an infinite value is multiplied as the reference does; keys
    whose scores are all ``-inf`` give 0 and lse ``-inf``."""
    q, k_cache, v_cache, paging = _inputs([9, 10, 11])
    table = paging["block_table"]
    k_cache[table[0, 1], 0, 0] = np.nan
    v_cache[table[1, 2], 1, 1] = np.inf
    q[2] = 0.0
    q[2, :, :, 0] = 1.0
    k_cache[table[2, :3], :, :, 0] = -np.inf
    out = _check(cpu, q, k_cache, v_cache, paging)
    assert np.isnan(out[0, :2]).all() and not np.isnan(out[0, 2:]).any()
    assert (out[2] == 0).all()


def test_what_does_not_stream(cpu, streamed):
    """Rows that see different keys (causal prefill), and gradients, take the general path."""
    q, k_cache, v_cache, paging = _inputs([30, 12], q_len=3)
    _check(cpu, q, k_cache, v_cache, paging, causal=True)
    assert streamed == []
    _check(cpu, q, k_cache, v_cache, paging)  # every row sees every key: streamed
    assert streamed == [(0, 30), (0, 12)]
    streamed.clear()
    leaf = _t(q).requires_grad_(True)
    out = cpu.paged_attention(leaf, _t(k_cache), _t(v_cache), **paging)
    out.sum().backward()
    assert streamed == [] and leaf.grad is not None


def test_never_more_than_a_chunk_of_keys(cpu, streamed):
    """Every tensor the call creates is a chunk of 3 blocks or smaller (the scores, ``Hq x
    length`` rounded up to whole chunks, aside): no copy of a sequence's keys, let alone of the cache."""
    from torch.utils._python_dispatch import TorchDispatchMode

    sizes, scores = [], 4 * 17 * 3 * BLOCK  # 200 keys: 50 blocks, 17 chunks

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for t in result if isinstance(result, (tuple, list)) else (result,):
                if isinstance(t, torch.Tensor) and t.numel() != scores:
                    sizes.append(t.numel())
            return result

    q, k_cache, v_cache, paging = _inputs([200])
    args = [_t(x) for x in (q, k_cache, v_cache)]
    with Sizes():
        cpu.paged_attention(*args, **paging)
    assert streamed == [(0, 200)]
    assert max(sizes) <= 3 * BLOCK * HKV * D
