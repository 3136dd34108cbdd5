"""The torch backend's fast path for packed causal sequences (SDPA's ``is_causal`` per
sequence): when it is taken, that its answer is the reference's, and that the inputs it cannot
take exactly (non-finite values, lse, softcap, gradients, misaligned sequences) go elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attnref import reference as R  # noqa: E402
from attnref.patterns import Pattern  # noqa: E402
from attnref.validation import check_attention  # noqa: E402
from attnref_torch import TorchBackend, _sequences  # noqa: E402


@pytest.fixture(scope="module")
def cpu():
    return TorchBackend(device="cpu")


@pytest.fixture
def causal_calls(monkeypatch):
    """The number of sequences that went through the ``is_causal`` path."""
    calls = []
    original = _sequences._causal_sdpa

    def counted(*args, **kwargs):
        calls.append(args[0].shape[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(_sequences, "_causal_sdpa", counted)
    return calls


def _packed(lengths_q, lengths_k, Hq=4, Hkv=2, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    cu_q, cu_k = np.concatenate([[0], np.cumsum(lengths_q)]), np.concatenate([[0], np.cumsum(lengths_k)])
    q, k = rng.standard_normal((cu_q[-1], Hq, 8)), rng.standard_normal((cu_k[-1], Hkv, 8))
    v = rng.standard_normal((cu_k[-1], Hkv, 6))
    return [x.astype(dtype) for x in (q, k, v)], {"cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k}


def _t(a):
    return torch.from_numpy(np.asarray(a))


@pytest.mark.parametrize(
    ("op", "options"),
    [
        ("global_attention", {"causal": True}),
        ("local_attention", {"window": (None, 0)}),
        ("local_attention", {"window": (40, 0)}),  # wider than every sequence: causal
        ("chunked_attention", {"chunk_size": 64, "causal": True}),
    ],
)
def test_causal_packed_sequences_take_sdpa_and_equal_the_reference(cpu, causal_calls, op, options):
    lengths = [5, 0, 17, 1, 30]
    (q, k, v), packed = _packed(lengths, lengths)
    out = getattr(cpu, op)(_t(q), _t(k), _t(v), **options, **packed)
    np.testing.assert_allclose(out.numpy(), getattr(R, op)(q, k, v, **options, **packed), atol=1e-12)
    assert sorted(causal_calls) == [1, 5, 17, 30]


def test_float32_and_mqa(cpu, causal_calls):
    lengths = [9, 33, 2]
    (q, k, v), packed = _packed(lengths, lengths, Hq=6, Hkv=1, dtype=np.float32)
    out = cpu.global_attention(_t(q), _t(k), _t(v), causal=True, **packed)
    ref = R.global_attention(q, k, v, causal=True, **packed)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-6)
    assert len(causal_calls) == 3


def test_alignment_decides_per_sequence(cpu, causal_calls):
    """Top-left alignment is SDPA's for any lengths; bottom-right only where a sequence has as
    many queries as keys."""
    (q, k, v), packed = _packed([4, 6, 3], [4, 9, 2])
    for align, taken in (("top_left", [3, 4, 6]), ("bottom_right", [4])):
        causal_calls.clear()
        out = cpu.global_attention(_t(q), _t(k), _t(v), causal=True, align=align, **packed)
        ref = R.global_attention(q, k, v, causal=True, align=align, **packed)
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
        assert sorted(causal_calls) == taken, align


@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_a_non_finite_input_goes_the_general_way(cpu, causal_calls, where):
    """A NaN at the last key of a sequence is masked for every row but the last: it reaches
    that row only, whichever input holds it (SDPA would add a mask to a NaN score, and multiply a
    0 weight by a NaN value)."""
    lengths = [6, 5]
    (q, k, v), packed = _packed(lengths, lengths)
    {"q": q, "k": k, "v": v}[where][5, 1] = np.nan
    out = cpu.global_attention(_t(q), _t(k), _t(v), causal=True, **packed)
    ref = R.global_attention(q, k, v, causal=True, **packed)
    np.testing.assert_array_equal(np.isnan(out.numpy()), np.isnan(ref))
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    assert causal_calls == []


@pytest.mark.parametrize("option", [{"return_lse": True}, {"softcap": 3.0}, {"window": (2, 0)}, {"window": (None, 1)}])
def test_what_is_causal_sdpa_takes_not(cpu, causal_calls, option):
    lengths = [7, 4]
    (q, k, v), packed = _packed(lengths, lengths)
    options = {"window": (None, 0), **option, **packed}
    out = cpu.local_attention(_t(q), _t(k), _t(v), **options)
    ref = R.local_attention(q, k, v, **options)
    got, expected = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    for g, r in zip(got, expected, strict=True):
        np.testing.assert_allclose(g.numpy(), r, atol=1e-12)
    assert causal_calls == []


def test_gradients_go_the_general_way(cpu, causal_calls):
    lengths = [7, 4]
    (q, k, v), packed = _packed(lengths, lengths)
    dout = np.random.default_rng(1).standard_normal((11, 4, 6))
    got = cpu.global_attention_vjp(_t(q), _t(k), _t(v), _t(dout), causal=True, **packed)
    ref = R.global_attention_vjp(q, k, v, dout, causal=True, **packed)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g.numpy(), r, atol=1e-12)
    assert causal_calls == []


@pytest.mark.parametrize(
    ("pattern", "q_len", "kv_len", "align", "expected"),
    [
        (Pattern.full(causal=True), 5, 5, "bottom_right", True),
        (Pattern.full(causal=True), 3, 5, "bottom_right", False),
        (Pattern.full(causal=True), 3, 5, "top_left", True),
        (Pattern.full(causal=True), 7, 5, "top_left", True),
        (Pattern.full(causal=False), 5, 5, "bottom_right", False),
        (Pattern.full(causal=False), 1, 1, "bottom_right", True),
        (Pattern.window(None, 0), 5, 5, "bottom_right", True),
        (Pattern.window(4, 0), 5, 5, "bottom_right", True),
        (Pattern.window(3, 0), 5, 5, "bottom_right", False),
        (Pattern.window(None, 1), 5, 5, "bottom_right", False),
        (Pattern.chunk(5, causal=True), 5, 5, "bottom_right", True),
        (Pattern.chunk(4, causal=True), 5, 5, "bottom_right", False),
        (Pattern.chunk(8, causal=False), 5, 5, "bottom_right", False),
    ],
)
def test_is_causal_on(pattern, q_len, kv_len, align, expected):
    q, k = np.zeros((1, 1, q_len, 2)), np.zeros((1, 1, kv_len, 2))
    args = check_attention(q, k, k, align=align)
    assert _sequences.is_causal_on(pattern, args) is expected
