"""Unusual inputs to the torch backend, each once a bug: answered as the reference
answers them, or refused with an attnref error naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attnref import reference as R  # noqa: E402
from attnref.errors import AttnrefError  # noqa: E402
from attnref_torch import TorchBackend  # noqa: E402


@pytest.fixture
def cpu():
    return TorchBackend(device="cpu")


def _arrays(rng, B=2, Hq=2, Hkv=1, Lq=6, Lk=7, D=4):
    return [rng.standard_normal(s) for s in ((B, Hq, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D))]


@pytest.mark.parametrize(("op", "options"), [("global_attention", {}), ("local_attention", {"window": 2})])
def test_a_0d_bias_tensor_is_a_scalar_bias(cpu, op, options):
    """It raised IndexError on the SDPA path."""
    q, k, v = _arrays(np.random.default_rng(0))
    expected = getattr(R, op)(q, k, v, bias=np.array(0.75), **options)
    got = getattr(cpu, op)(*map(torch.from_numpy, (q, k, v)), bias=torch.tensor(0.75, dtype=torch.float64), **options)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


def test_a_0d_bias_gets_a_0d_gradient(cpu):
    q, k, v = (torch.from_numpy(a) for a in _arrays(np.random.default_rng(1)))
    dout = torch.ones(2, 2, 6, 4, dtype=torch.float64)
    *_, dbias = cpu.local_attention_vjp(q, k, v, dout, window=1, bias=torch.tensor(0.5, dtype=torch.float64))
    assert dbias.shape == ()


@pytest.mark.parametrize("argument", ["q", "k", "v", "bias", "mask"])
@pytest.mark.parametrize("kind", ["sparse", "meta"])
def test_sparse_and_meta_tensors_are_refused_naming_the_argument(cpu, argument, kind):
    """They crashed with torch's own error."""
    rng = np.random.default_rng(2)
    named = dict(zip("qkv", (torch.from_numpy(a) for a in _arrays(rng)), strict=True))
    named["bias"] = torch.zeros(6, 7, dtype=torch.float64)
    named["mask"] = torch.ones(6, 7, dtype=torch.bool)
    bad = named[argument]
    named[argument] = bad.to_sparse() if kind == "sparse" else bad.to("meta")
    expected = TypeError if kind == "sparse" else ValueError
    with pytest.raises(expected) as caught:
        cpu.local_attention(named.pop("q"), named.pop("k"), named.pop("v"), window=1, **named)
    assert isinstance(caught.value, AttnrefError) and str(caught.value).startswith(f"{argument}: ")


@pytest.mark.parametrize("kind", ["sparse", "meta"])
def test_sparse_and_meta_upstream_gradients_are_refused_naming_dout(cpu, kind):
    q, k, v = (torch.from_numpy(a) for a in _arrays(np.random.default_rng(3)))
    dout = torch.ones(2, 2, 6, 4, dtype=torch.float64)
    dout = dout.to_sparse() if kind == "sparse" else dout.to("meta")
    with pytest.raises(AttnrefError, match="dout"):
        cpu.global_attention_vjp(q, k, v, dout)


@pytest.mark.parametrize("dout", ["text", np.ones((2, 2, 6, 4), dtype=np.complex128), np.ones((2, 2, 6, 3))])
def test_upstream_gradients_are_validated_like_q(cpu, dout):
    q, k, v = (torch.from_numpy(a) for a in _arrays(np.random.default_rng(4)))
    expected = ValueError if isinstance(dout, np.ndarray) and dout.dtype.kind == "f" else TypeError
    with pytest.raises(expected, match="dout"):
        cpu.global_attention_vjp(q, k, v, dout)


@pytest.mark.parametrize("value", [3.0, 1, [1.0, 2.0]])
def test_a_python_scalar_q_raises_the_reference_s_error_class(cpu, value):
    k, v = (torch.from_numpy(a) for a in _arrays(np.random.default_rng(5))[1:])
    with pytest.raises(Exception) as ref_error:
        R.global_attention(value, k.numpy(), v.numpy())
    with pytest.raises(Exception) as got_error:
        cpu.global_attention(value, k, v)
    assert type(got_error.value) is type(ref_error.value)
    assert str(got_error.value).startswith("q: ")


@pytest.mark.parametrize("where", ["w_p", "h_t"])
def test_luong_local_p_with_a_nan_position_is_nan_not_zero(cpu, where):
    """A NaN in ``w_p`` or in a row of ``h_t`` makes ``p_t`` NaN: the window is undefined and
    the NaN must reach the outputs (it gave 0)."""
    rng = np.random.default_rng(6)
    h_t, h_s = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    w_p, v_p = rng.standard_normal((4, 3)), rng.standard_normal(3)
    if where == "w_p":
        w_p[1, 2] = np.nan
    else:
        h_t[1, 2, 0] = np.nan
    options = {"mode": "local-p", "half_width": 1, "source_lengths": [5, 4]}
    expected = R.luong_attention(h_t, h_s, w_p=w_p, v_p=v_p, **options)
    t = {n: torch.from_numpy(a) for n, a in {"h_t": h_t, "h_s": h_s, "w_p": w_p, "v_p": v_p}.items()}
    got = cpu.luong_attention(**t, **options)
    assert np.isnan(expected[0]).any()
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(np.isnan(g.numpy()), np.isnan(e))
        np.testing.assert_allclose(g.numpy(), e, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_merge_attention_states_selects_away_empty_parts(cpu, dtype):
    """Contract section 10: a part with lse -inf has weight exactly 0 (a NaN in its outs does
    not leak); all parts -inf: output 0, lse -inf; a NaN or +inf lse: NaN."""
    rng = np.random.default_rng(7)
    outs, lses = rng.standard_normal((3, 2, 4, 5)).astype(dtype), rng.standard_normal((3, 2, 4)).astype(dtype)
    lses[1, 0, 0], outs[1, 0, 0] = -np.inf, np.nan
    lses[:, 1, 1] = -np.inf
    lses[2, 1, 2] = np.inf
    lses[0, 0, 3] = np.nan
    expected = R.merge_attention_states(outs, lses)
    got = cpu.merge_attention_states(torch.from_numpy(outs), torch.from_numpy(lses))
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.from_numpy(outs).dtype
        np.testing.assert_array_equal(np.isnan(g.numpy()), np.isnan(e))
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    assert (got[0][1, 1] == 0).all() and got[1][1, 1] == -np.inf and torch.isfinite(got[0][0, 0]).all()
