"""The asv suite's own arithmetic and baselines, checked without asv.

The smoke run (``ATTNREF_BENCH_SMOKE=1 asv run --quick``) checks every
implementation against the reference where the reference has the feature;
these tests check what the smoke run cannot: the flop count behind
``track_fraction_of_matmul``, the generated paged and packed inputs, the
sinks baseline against the contract's formula written out here, and the
report's verdicts.
"""

from __future__ import annotations

import importlib
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ASV_DIR = Path(__file__).resolve().parents[1] / "asv_bench"


@pytest.fixture(scope="module")
def bench():
    """The suite's modules, imported as asv imports them (the package ``benchmarks`` under ``asv_bench/``)."""
    sys.path.insert(0, str(ASV_DIR))
    try:
        yield {
            name: importlib.import_module(f"benchmarks.{name}")
            for name in ("common", "bench_paged", "bench_varlen", "bench_sinks")
        }
    finally:
        sys.path.remove(str(ASV_DIR))


@pytest.mark.parametrize("length", [1, 300, 1024, 1537])
def test_allowed_pairs_counts_the_dense_pattern(bench, length):
    common = bench["common"]
    for name, case in common.MULTIHEAD_CASES.items():
        expected = int(np.count_nonzero(case.pattern.dense(length, length)))
        assert common.allowed_pairs(case.pattern, length, rows=128) == expected, name


def test_allowed_pairs_of_the_headline_window(bench):
    # issue 15: window (256, 256) at L=16384 is 17.2 GFLOP at B=1, H=8, D=64
    common = bench["common"]
    pairs = common.allowed_pairs(common.MULTIHEAD_CASES["window(256, 256)"].pattern, 16384)
    assert pairs == 16384 * 513 - 2 * (256 * 257 // 2)
    assert 4 * 8 * 64 * pairs == pytest.approx(17.2e9, rel=0.01)


def test_paged_inputs_use_every_block_once(bench):
    paged = bench["bench_paged"]
    case = paged.PagedCase(5, 4, 2, 1, 70, block=16)
    a = case.inputs()
    seqlens, table = a["cache_seqlens"], a["block_table"]
    np.testing.assert_array_equal(seqlens, case.seqlens())
    used = [table[b, : -(-n // 16)] for b, n in enumerate(seqlens)]
    assert sorted(np.concatenate(used).tolist()) == list(range(len(a["k_cache"])))
    for b, n in enumerate(seqlens):
        assert (table[b, -(-n // 16) :] == -1).all()  # entries past the last used block are never valid
    assert case.cache_bytes() == a["k_cache"].nbytes + a["v_cache"].nbytes


def test_paged_gathered_keys_follow_the_table(bench):
    paged = bench["bench_paged"]
    a = paged.PagedCase(3, 4, 2, 17, 40, block=16).inputs()
    keys = paged._gathered(a["k_cache"], a["block_table"], a["cache_seqlens"], 1)
    assert keys.shape == (a["cache_seqlens"][1], 2, 64)
    t = 20
    np.testing.assert_array_equal(keys[t], a["k_cache"][a["block_table"][1, t // 16], t % 16])


def test_varlen_offsets(bench):
    case = bench["bench_varlen"].VarlenCase(16, 64, 4096, 2)
    q, k, v, cu = case.inputs()
    lengths = np.diff(cu)
    np.testing.assert_array_equal(lengths, case.lengths())
    assert cu[0] == 0 and cu[-1] == len(q) == len(k) == len(v)
    assert lengths.min() >= 64 and lengths.max() <= 4096


@pytest.mark.parametrize("impl", ["baseline-sdpa-padded", "baseline-sdpa-loop"])
def test_varlen_baselines_attend_within_each_sequence(bench, impl):
    pytest.importorskip("torch")
    varlen = bench["bench_varlen"]
    case = varlen.VarlenCase(3, 5, 40, 2)
    q, k, v, cu = case.inputs()
    out = varlen.prepare_varlen(impl, case)
    got = out.to_numpy(out.run())
    for s, e in itertools.pairwise(cu.tolist()):
        scores = np.einsum("ihd,jhd->hij", q[s:e], k[s:e]).astype(np.float64) / 8.0
        scores[:, ~np.tri(e - s, dtype=bool)] = -np.inf  # causal: key j > query i is disallowed
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        np.testing.assert_allclose(got[s:e], np.einsum("hij,jhd->ihd", weights, v[s:e]), atol=1e-5)


@pytest.mark.parametrize("sinks", [True, False])
def test_dense_sinks_baseline_is_the_contract_formula(bench, sinks):
    pytest.importorskip("torch")
    module = bench["bench_sinks"]
    pattern = bench["common"].MULTIHEAD_CASES["window(255, 0)"].pattern
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 300, 64), dtype=np.float32) for _ in range(3))
    logits = np.array([0.5, -2.0], dtype=np.float32)
    prepared = module._dense(pattern, q, k, v, logits if sinks else None)
    got = prepared.to_numpy(prepared.run())
    # contract section 7: lse = log(exp(sink) + sum_allowed exp(s)), out = sum_allowed exp(s - lse) v
    s = np.einsum("bhid,bhjd->bhij", q, k).astype(np.float64) / 8.0
    s[:, :, ~pattern.dense(300, 300)] = -np.inf
    sink = logits.astype(np.float64)[None, :, None] if sinks else np.full((1, 2, 1), -np.inf)
    lse = np.logaddexp(sink, np.log(np.exp(s).sum(-1)))
    np.testing.assert_allclose(got, np.exp(s - lse[..., None]) @ v, atol=1e-5)


def test_report_verdicts():
    pytest.importorskip("asv")
    sys.path.insert(0, str(ASV_DIR))
    try:
        report = importlib.import_module("report")
    finally:
        sys.path.remove(str(ASV_DIR))

    def target(value, at_least):
        return report.Target("x", lambda f: value, 2.0, at_least)

    assert target(3.0, True).row(None).endswith("| met |")
    assert target(1.0, True).row(None).endswith("| **missed** |")
    assert target(1.0, False).row(None).endswith("| met |")
    assert target(3.0, False).row(None).endswith("| **missed** |")
    assert target(math.nan, True).row(None).endswith("| not measured |")


@pytest.mark.parametrize("length", [300, 512])
def test_flex_block_mask_covers_the_pattern(bench, length):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch.nn.attention.flex_attention")
    baselines = importlib.import_module("benchmarks.baselines")
    block = 64
    for name, case in bench["common"].MULTIHEAD_CASES.items():
        dense = case.pattern.dense(length, length)
        mask = baselines.flex_block_mask(case.pattern, length, torch.device("cpu"), block=block)
        listed = np.zeros((-(-length // block),) * 2, dtype=int)  # 0: skipped, 1: partial, 2: full
        for kind, counts, indices in (
            (1, mask.kv_num_blocks, mask.kv_indices),
            (2, mask.full_kv_num_blocks, mask.full_kv_indices),
        ):
            for qb, n in enumerate(counts[0, 0].tolist()):
                listed[qb, indices[0, 0, qb, :n].numpy()] = kind
        # every allowed pair lies in a listed cell; a full cell is wholly allowed
        i, j = np.nonzero(dense)
        assert (listed[i // block, j // block] > 0).all(), name
        for qb, kb in zip(*np.nonzero(listed == 2), strict=True):
            assert dense[qb * block : (qb + 1) * block, kb * block : (kb + 1) * block].all(), name


def test_the_report_reads_the_default_grid(bench):
    """The report looks figures up by the suites' case names: a renamed case must not turn a target into n/a."""
    pytest.importorskip("asv")
    sys.path.insert(0, str(ASV_DIR))
    try:
        report = importlib.import_module("report")
        backward = importlib.import_module("benchmarks.bench_backward")
    finally:
        sys.path.remove(str(ASV_DIR))
    assert not bench["common"].SMOKE
    assert {report.FB_WINDOW, report.FB_GLOBAL} <= set(backward.CASES)
    assert report.VARLEN_CASE in bench["bench_varlen"].CASES
    assert report.PAGED_CASE in bench["bench_paged"].CASES
    assert set(report.SINKS_CASES) <= set(bench["bench_sinks"].CASES)
    assert set(report.FAMILY) == set(bench["common"].MULTIHEAD_CASES)


@pytest.mark.parametrize("case", ["chunk(1024)", "window(255, 0)", "global"])
def test_the_floor_makes_exactly_the_backends_products(monkeypatch, case):
    """``asv_bench/floor.py`` bounds what the NumPy backend can reach by its products and exps alone:
    it must replay the backend's own plan, product for product (same shapes, same count)."""
    from attnref_numpy import backend as numpy_backend

    sys.path.insert(0, str(ASV_DIR))
    try:
        floor = importlib.import_module("floor")
    finally:
        sys.path.remove(str(ASV_DIR))
    products: list[tuple] = []

    class Counting:
        def matmul(self, a, b, out=None):
            products.append((a.shape, b.shape))
            return np.matmul(a, b, out=out)

    monkeypatch.setattr(numpy_backend, "private_blas", lambda: Counting())
    length = 2048
    run = floor.floor_call(case, length)
    run()
    replayed = sorted(products)
    products.clear()
    q, k, v = floor.multihead_inputs(length, "float32")
    spec = floor.MULTIHEAD_CASES[case]
    getattr(numpy_backend.NumpyBackend(), spec.op)(q, k, v, **spec.kwargs)
    assert replayed and replayed == sorted(products)
