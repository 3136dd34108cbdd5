"""Packed sequences in the shared blocked code: one block-diagonal pattern, one plan, one kernel call.

:class:`attnref_blocked.packed.SequencePattern` is checked against the
definition (each sequence's own picture, :meth:`Pattern.dense`, on the
diagonal; nothing elsewhere), its plan against that picture, and the forward
against the float64 reference run on each sequence alone.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attnref import reference
from attnref.patterns import Pattern
from attnref.validation import check_attention
from attnref_blocked import BlockConfig, packed
from attnref_numpy.backend import NumpyBackend

PATTERNS = [Pattern.full(), Pattern.full(causal=True), Pattern.window(2, 1), Pattern.window(None, 0),
            Pattern.chunk(3), Pattern.chunk(4, causal=True)]  # fmt: skip
LENGTHS = [([5, 0, 9, 3, 1], [7, 2, 9, 0, 1]), ([4], [4]), ([0, 6, 0], [3, 2, 0]), ([1, 1, 12], [12, 1, 1])]


def offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def packed_args(lengths_q, lengths_k, align="bottom_right", heads=(2, 1)):
    cu_q, cu_k = offsets(lengths_q), offsets(lengths_k)
    q = np.zeros((cu_q[-1], heads[0], 4))
    k = np.zeros((cu_k[-1], heads[1], 4))
    return check_attention(q, k, k, align=align, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)


def expected_picture(pattern: Pattern, lengths_q, lengths_k, align: str) -> np.ndarray:
    """The definition: each sequence's own picture on the diagonal, False elsewhere."""
    picture = np.zeros((sum(lengths_q), sum(lengths_k)), dtype=bool)
    for (q0, q1), (k0, k1) in zip(
        itertools.pairwise(offsets(lengths_q)), itertools.pairwise(offsets(lengths_k)), strict=True
    ):
        picture[q0:q1, k0:k1] = pattern.dense(q1 - q0, k1 - k0, align)
    return picture


@pytest.mark.parametrize("align", ["bottom_right", "top_left"])
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
def test_sequence_pattern_is_block_diagonal(pattern, lengths, align):
    args = packed_args(*lengths, align=align)
    seq = packed.SequencePattern(np, pattern, args)
    rows, keys = np.arange(args.q_len)[:, None] + seq.base, np.arange(args.kv_len)[None, :]
    picture = expected_picture(pattern, *lengths, align)
    assert np.array_equal(seq.allows(rows, keys), picture)


@pytest.mark.parametrize("align", ["bottom_right", "top_left"])
@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
def test_sequence_plan_covers_exactly_the_allowed_pairs(pattern, lengths, align):
    """Blocks stay inside one sequence, every allowed pair lies in its block's key range, and a tile
    marked full is full."""
    args = packed_args(*lengths, align=align)
    seq = packed.SequencePattern(np, pattern, args)
    picture = expected_picture(pattern, *lengths, align)
    cu_q, cu_k = offsets(lengths[0]), offsets(lengths[1])
    covered = np.zeros_like(picture)
    planned_rows = []
    for block in seq.plan_blocks(args.q_len, args.kv_len, offset=seq.base, block_rows=2, key_tile=2):
        b = int(np.searchsorted(cu_q, block.start, side="right")) - 1
        assert cu_q[b] <= block.start < block.stop <= cu_q[b + 1], "a block straddles two sequences"
        planned_rows.extend(range(block.start, block.stop))
        if block.empty:
            continue
        assert cu_k[b] <= block.key_start < block.key_stop <= cu_k[b + 1], "keys from another sequence"
        covered[block.start : block.stop, block.key_start : block.key_stop] = True
        for tile in block.tiles:
            if tile.full:
                assert picture[block.start : block.stop, tile.start : tile.stop].all()
    assert planned_rows == list(range(args.q_len))
    assert not (picture & ~covered).any(), "an allowed pair outside every block"


def test_sequence_plan_rejects_another_call():
    args = packed_args([3, 2], [3, 2])
    with pytest.raises(ValueError, match="packed sequences"):
        packed.SequencePattern(np, Pattern.full(), args).plan_blocks(4, 5, offset=0)


def per_sequence_reference(q, k, v, cu_q, cu_k, **kwargs):
    """The contract's definition: the reference on each sequence alone, concatenated."""
    outs, lses = [], []
    for (q0, q1), (k0, k1) in zip(itertools.pairwise(cu_q), itertools.pairwise(cu_k), strict=True):
        if k1 == k0:  # no key (or no row): output 0, lse -inf
            outs.append(np.zeros((q1 - q0, *q.shape[1:])))
            lses.append(np.full((q1 - q0, q.shape[1]), -np.inf))
            continue
        one = (np.swapaxes(a, 0, 1)[None] for a in (q[q0:q1], k[k0:k1], v[k0:k1]))
        out, lse = reference.global_attention(*one, return_lse=True, **kwargs)
        outs.append(np.swapaxes(out[0], 0, 1))
        lses.append(np.swapaxes(lse[0], 0, 1))
    return np.concatenate(outs), np.concatenate(lses)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_short_sequences_run_as_one_kernel_call(dtype, monkeypatch):
    """Forty sequences of 0 to 9 tokens on three workers: one call of the dense kernel, the result
    of each sequence alone, and a NaN value or key of one sequence reaching no other sequence."""
    rng = np.random.default_rng(50)
    lengths = [int(n) for n in rng.integers(0, 10, size=40)]
    lengths[3] = 7
    cu = offsets(lengths)
    q, k, v = (rng.standard_normal((cu[-1], 4, 8)).astype(dtype) for _ in range(3))
    v[cu[3] + 2, 1] = np.nan
    k[cu[3] + 5, 0] = np.inf
    calls = []
    attend = packed_kernel_counter(monkeypatch, calls)
    backend = NumpyBackend(threads=3, block=BlockConfig(score_elements=64, max_rows=4, tile=2, key_block=4))
    out, lse = backend.global_attention(q, k, v, causal=True, return_lse=True, cu_seqlens_q=cu, cu_seqlens_k=cu)
    assert calls == [1], attend
    ref_out, ref_lse = per_sequence_reference(q, k, v, cu, cu, causal=True)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ref_out, atol=tolerance, rtol=0)
    np.testing.assert_allclose(lse, ref_lse, atol=tolerance, rtol=0)
    others = np.r_[0 : cu[3], cu[4] : cu[-1]]
    assert np.isfinite(out[others]).all() and np.isnan(out[cu[3] + 2 : cu[4], 1]).all()


def packed_kernel_counter(monkeypatch, calls: list) -> object:
    """Count the dense kernel's calls (and their batch sizes) made by the packed forward."""
    original = packed.by_sequence

    def counting(xp, q, k, v, args, kernel, pattern):
        def counted(*arguments):
            calls.append(arguments[3].batch)
            return kernel(*arguments)

        return original(xp, q, k, v, args, counted, pattern)

    monkeypatch.setattr(packed, "by_sequence", counting)
    return original


def test_a_packed_batch_s_keys_are_read_in_place(monkeypatch):
    """The packed ``(T, H, D)`` keys reach the kernel as a strided view, never copied (a copy the
    size of ``k`` was a third of a packed call's extra memory); the result is unchanged."""
    from attnref_blocked import blocks

    seen = []
    real = blocks.Inputs.__init__

    def spy(self, xp, q, k, *rest, **kw):
        real(self, xp, q, k, *rest, **kw)
        seen.append(np.shares_memory(self.k, k))

    monkeypatch.setattr(blocks.Inputs, "__init__", spy)
    rng = np.random.default_rng(51)
    cu = offsets([5, 0, 9, 3])
    q, k, v = (rng.standard_normal((cu[-1], 4, 8)).astype(np.float32) for _ in range(3))
    out = NumpyBackend(threads=1).global_attention(q, k, v, causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu)
    assert seen == [True]
    ref_out, _ = per_sequence_reference(q, k, v, cu, cu, causal=True)
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=0)
