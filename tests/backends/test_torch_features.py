"""The torch backend's sinks, packed sequences and paged KV cache (contract sections 7 to 9)
against the float64 reference: the conformance catalogue's cases of these features at every
dtype (the official pass rule), and the edge cases their gradients must keep exactly."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attnref import reference as R  # noqa: E402
from attnref.conformance.cases import catalogue  # noqa: E402
from attnref.conformance.runner import ReferenceCache, run_case  # noqa: E402
from attnref.dtypes import DTYPE_NAMES  # noqa: E402
from attnref.errors import InvalidArgumentError, InvalidTypeError  # noqa: E402
from attnref_torch import TorchBackend  # noqa: E402

MULTIHEAD = ("global_attention", "local_attention", "chunked_attention")
PATTERNS = {
    "global_attention": {"causal": True},
    "local_attention": {"window": (2, 1)},
    "chunked_attention": {"chunk_size": 3},
}
OPS = (*MULTIHEAD, *(op + "_vjp" for op in MULTIHEAD), "paged_attention")
CACHE = ReferenceCache()


def _feature_cases() -> list:
    """The catalogue's cases that use sinks, packed sequences or the paged cache (2 random per op)."""
    cases = catalogue(OPS, examples=2)
    return [c for c in cases if c.op == "paged_attention" or "sinks" in c.inputs or "cu_seqlens_q" in c.options]


FEATURE_CASES = _feature_cases()


@pytest.fixture(scope="module")
def cpu():
    return TorchBackend(device="cpu")


def test_the_catalogue_has_cases_of_every_feature():
    """(The catalogue has no VJP case with sinks or packed sequences: the tests below check those.)"""
    for op in MULTIHEAD:
        assert any(c.op == op and "sinks" in c.inputs for c in FEATURE_CASES), op
        assert any(c.op == op and "cu_seqlens_q" in c.options for c in FEATURE_CASES), op
    assert sum(c.op == "paged_attention" for c in FEATURE_CASES) > 10


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_conformance_cases_of_sinks_packed_and_paged_pass(cpu, dtype):
    failed = []
    for case in FEATURE_CASES:
        result = run_case(cpu, case, dtype, CACHE)
        if result.status != "pass":
            failed.append(f"{case.key}: {result.status} {result.detail or ''}")
    assert not failed, "\n".join(failed)


def _t(a):
    return None if a is None else torch.from_numpy(np.asarray(a))


def _vjp_inputs(seed: int, B=2, Hq=4, Hkv=2, Lq=6, Lk=7):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((B, Hq, Lq, 5)), rng.standard_normal((B, Hkv, Lk, 5))
    v = rng.standard_normal((B, Hkv, Lk, 3))
    return rng, q, k, v, rng.standard_normal((B, Hq, Lq, 3)), rng.standard_normal((B, Hq, Lq))


@pytest.mark.parametrize("op", MULTIHEAD)
def test_sink_gradients_match_the_reference_and_never_read_dout_where_the_contract_says(cpu, op):
    """A -inf sink, a row with no key (kv_lengths 0), padding rows: their NaN dout (and the
    padding rows' NaN dlse) reach no gradient; dsinks has the sinks' dtype."""
    _, q, k, v, dout, dlse = _vjp_inputs(1)
    sinks = np.array([0.5, -np.inf, 1.5, -2.0], dtype=np.float32)
    options = {**PATTERNS[op], "kv_lengths": [0, 7], "q_lengths": [6, 4], "sinks": sinks}
    dout[0] = np.nan  # batch 0 sees no key
    dout[1, :, 4:] = np.nan  # padding rows
    dlse[1, :, 4:] = np.nan
    got = getattr(cpu, op + "_vjp")(_t(q), _t(k), _t(v), _t(dout), dlse=_t(dlse), **options)
    ref = getattr(R, op + "_vjp")(q, k, v, dout, dlse=dlse, **options)
    assert len(got) == 4 and got[3].dtype == torch.float32
    for name, g, r in zip(("dq", "dk", "dv", "dsinks"), got, ref, strict=True):
        assert np.isfinite(g.numpy()).all(), name
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-5 if name == "dsinks" else 1e-12, atol=1e-6, err_msg=name)
    assert got[3][1] == 0  # no sink, no gradient


def test_a_nan_sink_poisons_its_head_only(cpu):
    _, q, k, v, dout, dlse = _vjp_inputs(2)
    sinks = np.array([0.0, np.nan, 1.0, -1.0])
    options = {"window": 1, "kv_lengths": [0, 7], "sinks": sinks}
    out, lse = cpu.local_attention(_t(q), _t(k), _t(v), return_lse=True, **options)
    ref_out, ref_lse = R.local_attention(q, k, v, return_lse=True, **options)
    np.testing.assert_array_equal(np.isnan(out.numpy()), np.isnan(ref_out))
    np.testing.assert_array_equal(np.isnan(lse.numpy()), np.isnan(ref_lse))
    assert np.isnan(lse.numpy()[:, 1]).all() and not np.isnan(lse.numpy()[:, [0, 2, 3]]).any()
    grads = cpu.local_attention_vjp(_t(q), _t(k), _t(v), _t(dout), dlse=_t(dlse), **options)
    ref = R.local_attention_vjp(q, k, v, dout, dlse=dlse, **options)
    for name, g, r in zip(("dq", "dk", "dv", "dsinks"), grads, ref, strict=True):
        np.testing.assert_array_equal(np.isnan(g.numpy()), np.isnan(r), err_msg=name)


def test_the_sink_join_selects_rows_without_a_key_and_overwrites_only_an_output_without_gradient():
    from attnref_torch._sinks import row_sinks, with_sinks

    lse = torch.tensor([[[0.5, float("-inf"), 1.0]]], dtype=torch.float64)  # (B=1, H=1, L=3)
    sinks = row_sinks(torch.tensor([0.25], dtype=torch.float64), tuple(lse.shape))
    out = torch.ones(1, 1, 3, 2, dtype=torch.float64)
    out[0, 0, 1] = float("nan")  # a row without a key: selected away, never multiplied
    expected = torch.exp(lse - torch.logaddexp(lse, sinks))[..., None] * torch.ones(2, dtype=torch.float64)
    expected[0, 0, 1] = 0
    joined, _ = with_sinks(out, lse, sinks)
    assert joined.data_ptr() == out.data_ptr()  # a path's fresh result: no new array
    torch.testing.assert_close(joined, expected)
    leaf = torch.ones(1, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    joined, _ = with_sinks(leaf, lse, sinks)
    assert joined.data_ptr() != leaf.data_ptr() and (leaf == 1).all()
    torch.testing.assert_close(joined.detach(), expected)


def _packed(rng, lengths_q, lengths_k, Hq=4, Hkv=2):
    cu_q, cu_k = np.concatenate([[0], np.cumsum(lengths_q)]), np.concatenate([[0], np.cumsum(lengths_k)])
    q, k = rng.standard_normal((cu_q[-1], Hq, 5)), rng.standard_normal((cu_k[-1], Hkv, 5))
    return q, k, rng.standard_normal((cu_k[-1], Hkv, 3)), {"cu_seqlens_q": cu_q, "cu_seqlens_k": list(cu_k)}


@pytest.mark.parametrize("sinks", [None, np.array([0.3, -np.inf, 1.0, -2.0])])
@pytest.mark.parametrize("op", MULTIHEAD)
def test_packed_sequences_equal_each_sequence_alone(cpu, op, sinks):
    """Empty sequences (no rows; rows but no keys) included; forward, lse and VJP."""
    rng = np.random.default_rng(3)
    q, k, v, packed = _packed(rng, [5, 0, 9, 3, 2], [7, 2, 9, 0, 11])
    options = {**PATTERNS[op], "sinks": sinks, **packed}
    out, lse = getattr(cpu, op)(_t(q), _t(k), _t(v), return_lse=True, **options)
    ref_out, ref_lse = getattr(R, op)(q, k, v, return_lse=True, **options)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-12)
    np.testing.assert_allclose(lse.numpy(), ref_lse, atol=1e-12)  # -inf rows equal too
    dout, dlse = rng.standard_normal(out.shape), rng.standard_normal(lse.shape)
    dout[12:14] = np.nan  # the sequence with rows but no keys: its dout is never read
    got = getattr(cpu, op + "_vjp")(_t(q), _t(k), _t(v), _t(dout), dlse=_t(dlse), **options)
    ref = getattr(R, op + "_vjp")(q, k, v, dout, dlse=dlse, **options)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g.numpy(), r, atol=1e-12)


def test_no_packed_rows_at_all(cpu):
    q, k, v = torch.zeros(0, 2, 4), torch.ones(3, 1, 4), torch.ones(3, 1, 2)
    out, lse = cpu.global_attention(q, k, v, cu_seqlens_q=[0, 0], cu_seqlens_k=[0, 3], return_lse=True)
    assert out.shape == (0, 2, 2) and lse.shape == (0, 2)


def _paged_inputs(seed: int):
    rng = np.random.default_rng(seed)
    k_cache, v_cache = rng.standard_normal((12, 4, 2, 8)), rng.standard_normal((12, 4, 2, 6))
    k_cache[9:], v_cache[9:] = np.nan, np.nan  # blocks no sequence uses: never read
    q = rng.standard_normal((3, 4, 2, 8))
    table = np.array([[2, 5, 7, -1, 99], [2, 0, 1, 3, 4], [-1, -1, -1, -1, -1]])  # 2: shared (prefix caching)
    return q, k_cache, v_cache, {"block_table": table, "cache_seqlens": np.array([10, 17, 0])}


@pytest.mark.parametrize(
    "options", [{}, {"causal": True}, {"window": (3, 0), "softcap": 2.0}, {"window": 2, "sinks": np.ones(4)}]
)
def test_paged_attention_matches_the_reference_and_reads_only_used_blocks(cpu, options):
    q, k_cache, v_cache, paging = _paged_inputs(4)
    out, lse = cpu.paged_attention(
        _t(q), _t(k_cache), _t(v_cache), return_lse=True, **{**paging, "block_table": _t(paging["block_table"])},
        **options,
    )  # fmt: skip
    ref_out, ref_lse = R.paged_attention(q, k_cache, v_cache, return_lse=True, **paging, **options)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-12)
    np.testing.assert_allclose(lse.numpy(), ref_lse, atol=1e-12)
    assert np.isfinite(out.numpy()).all()


def test_paged_attention_never_builds_anything_the_size_of_the_cache(cpu):
    """Every tensor the call creates is smaller than one sequence's keys could be (the cache
    holds 200 blocks of 4; the sequences use 3 and 5 of them): neither a gather nor a cast of
    the whole cache."""
    from torch.utils._python_dispatch import TorchDispatchMode

    sizes = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for t in result if isinstance(result, (tuple, list)) else (result,):
                if isinstance(t, torch.Tensor):
                    sizes.append(t.numel())
            return result

    rng = np.random.default_rng(5)
    k_cache = torch.from_numpy(rng.standard_normal((200, 4, 2, 8))).half()  # 16-bit: computed in float32
    v_cache = torch.zeros(200, 4, 2, 8, dtype=torch.float16)
    q = torch.from_numpy(rng.standard_normal((2, 4, 1, 8))).half()
    table = torch.tensor([[7, 100, 3, -1, -1], [0, 1, 2, 3, 4]])
    with Sizes():
        cpu.paged_attention(q, k_cache, v_cache, block_table=table, cache_seqlens=[10, 20], sinks=torch.zeros(4))
    assert sizes and max(sizes) <= 5 * 4 * 2 * 8  # one sequence's 5 blocks at most


def test_paged_errors_are_the_validation_s(cpu):
    q, k_cache, v_cache, paging = _paged_inputs(6)
    call = {"q": _t(q), "k_cache": _t(k_cache), "v_cache": _t(v_cache), **paging}
    with pytest.raises(InvalidArgumentError, match=r"^block_table:"):
        cpu.paged_attention(**{**call, "block_table": np.array([[2, 12, 0, 0, 0], [0] * 5, [0] * 5])})
    with pytest.raises(InvalidArgumentError, match=r"^cache_seqlens:"):
        cpu.paged_attention(**{**call, "cache_seqlens": np.array([21, 0, 0])})
    with pytest.raises(InvalidTypeError, match=r"^sinks:"):
        cpu.paged_attention(**call, sinks=torch.zeros(4, dtype=torch.int32))


def test_sinks_and_offsets_errors_name_the_argument(cpu):
    rng, q, k, v, dout, _ = _vjp_inputs(7)
    with pytest.raises(InvalidArgumentError, match=r"^sinks:"):
        cpu.global_attention(_t(q), _t(k), _t(v), sinks=torch.zeros(3))
    with pytest.raises(InvalidTypeError, match=r"^sinks:"):  # an integer sink cannot become a leaf: validation answers
        cpu.local_attention_vjp(_t(q), _t(k), _t(v), _t(dout), window=2, sinks=torch.zeros(4, dtype=torch.int64))
    qp, kp, vp, packed = _packed(rng, [2, 3], [4, 1])
    with pytest.raises(InvalidArgumentError, match=r"^cu_seqlens_k:"):
        cpu.global_attention(_t(qp), _t(kp), _t(vp), cu_seqlens_q=packed["cu_seqlens_q"])
    with pytest.raises(InvalidArgumentError, match=r"^cu_seqlens_q:"):
        cpu.global_attention(_t(qp), _t(kp), _t(vp), cu_seqlens_q=[0, 3, 5, 5][:3][::-1], cu_seqlens_k=[0, 4, 5])
