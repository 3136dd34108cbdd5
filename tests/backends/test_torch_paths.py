"""The torch backend's dispatch: which path runs when, that the CUDA choice reads no
value (no device synchronisation), and the fallbacks for older torch versions."""

from __future__ import annotations

import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attnref import reference as R  # noqa: E402
from attnref.validation import check_attention  # noqa: E402
from attnref_torch import TorchBackend, _banded, _blocked, _flex, _numerics, _ops, _plan, _sdpa  # noqa: E402


@pytest.fixture
def cpu():
    return TorchBackend(device="cpu")


def _qkv(rng, B=2, Hq=4, Hkv=2, Lq=13, Lk=17, D=8, dtype=np.float32):
    return [
        torch.from_numpy(rng.standard_normal(shape).astype(dtype))
        for shape in ((B, Hq, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D))
    ]


@pytest.fixture
def spy(monkeypatch):
    """Records the path each multi-head call takes."""
    taken = []
    for module, name in ((_ops, "sdpa_attention"), (_ops, "banded_attention"), (_ops, "blocked_attention")):
        real = getattr(module, name)

        def wrapper(*a, _real=real, _name=name, **kw):
            taken.append(_name.split("_")[0])
            return _real(*a, **kw)

        monkeypatch.setattr(module, name, wrapper)
    return taken


def test_sdpa_when_every_row_sees_every_key_and_nothing_else_is_asked(cpu, spy):
    q, k, v = _qkv(np.random.default_rng(0))
    cpu.global_attention(q, k, v)
    cpu.global_attention(q, k, v, bias=torch.zeros(()))
    cpu.local_attention(q, k, v, window=(None, None))
    cpu.chunked_attention(q, k, v, chunk_size=1000)
    k[0, 0, 0, 0] = float("nan")  # the values never decide
    cpu.global_attention(q, k, v)
    assert spy == ["sdpa"] * 5


def test_banded_on_the_cpu_for_finite_scores_without_softcap(cpu, spy):
    q, k, v = _qkv(np.random.default_rng(1))
    cpu.local_attention(q, k, v, window=(3, 2))
    cpu.chunked_attention(q, k, v, chunk_size=4, causal=True)
    cpu.global_attention(q, k, v, causal=True)
    cpu.global_attention(q, k, v, kv_lengths=[3, 17])
    v[0, 0, 5, 1] = float("inf")  # non-finite values are put back, not a reason to leave the path
    cpu.local_attention(q, k, v, window=2)
    assert spy == ["banded"] * 5


def test_banded_gives_the_lse_and_gradients_through_the_flash_kernel_on_the_cpu(cpu, spy):
    q, k, v = _qkv(np.random.default_rng(9), dtype=np.float64)
    sinks = torch.linspace(-1.0, 1.0, 4, dtype=torch.float64)
    out, lse = cpu.local_attention(q, k, v, window=(3, 2), return_lse=True)
    expected = R.local_attention(q.numpy(), k.numpy(), v.numpy(), window=(3, 2), return_lse=True)
    np.testing.assert_allclose(out.numpy(), expected[0], atol=1e-12)
    np.testing.assert_allclose(lse.numpy(), expected[1], atol=1e-12)
    cpu.global_attention(q, k, v, return_lse=True)  # every key seen: SDPA has no lse, banded has
    cpu.global_attention(q, k, v, causal=True, sinks=sinks)
    cpu.local_attention(q.clone().requires_grad_(), k, v, window=2)
    cpu.global_attention(q, k, v.clone().requires_grad_(), mask=torch.ones(13, 17, dtype=torch.bool))
    cpu.local_attention(q, k, v, window=2, bias=torch.zeros(13, 17, dtype=torch.float64), sinks=sinks.requires_grad_())
    assert spy == ["banded"] * 6


def test_blocked_for_softcap_non_finite_scores_and_what_the_flash_kernel_lacks(cpu, spy):
    q, k, v = _qkv(np.random.default_rng(2))
    cpu.local_attention(q, k, v, window=2, softcap=3.0)
    cpu.local_attention(q, k, v, window=2, bias=torch.zeros(13, 17, requires_grad=True))  # no dbias in the kernel
    cpu.local_attention(q, k, v[..., :5], window=2, return_lse=True)  # the kernel wants one head size
    v_nan = v.clone()
    v_nan[0, 0, 0, 0] = float("nan")
    cpu.local_attention(q.clone().requires_grad_(), k, v_nan, window=2)  # with a gradient v must be finite
    k[1, 1, 4, 0] = float("nan")
    cpu.local_attention(q, k, v, window=2)
    cpu.local_attention(q, k, v, window=2, return_lse=True)
    v[1, 0, 0, 0] = float("nan")
    cpu.local_attention(q, k, v, window=2, mask=torch.ones(13, 17, dtype=torch.bool))  # with a mask v must be finite
    assert spy == ["blocked"] * 7


def test_without_the_cpu_flash_ops_the_lse_and_gradients_take_the_blocked_path(cpu, spy, monkeypatch):
    """torch before 2.2 has no ``_scaled_dot_product_flash_attention_for_cpu``: forced here."""
    monkeypatch.setattr(_sdpa, "HAS_FLASH_CPU", False)
    q, k, v = _qkv(np.random.default_rng(10))
    cpu.local_attention(q, k, v, window=2)
    cpu.local_attention(q, k, v, window=2, return_lse=True)
    cpu.local_attention(q.clone().requires_grad_(), k, v, window=2)
    cpu.global_attention(q, k, v, sinks=torch.zeros(4))
    assert spy == ["banded", "blocked", "blocked", "blocked"]


def test_a_non_finite_upstream_gradient_takes_the_blocked_backward(cpu, monkeypatch):
    """The kernel's backward multiplies ``dout`` by weights 0 too: a NaN there would reach
    keys its row cannot see, so that backward is the blocked path's."""
    calls = []
    real = _banded.blocked_backward
    monkeypatch.setattr(_banded, "blocked_backward", lambda *a: calls.append(1) or real(*a))
    q, k, v = _qkv(np.random.default_rng(11), dtype=np.float64)
    dout = torch.from_numpy(np.random.default_rng(12).standard_normal((2, 4, 13, 8)))
    cpu.local_attention_vjp(q, k, v, dout, window=2)
    assert calls == []
    dout[0, 1, 5, 0] = float("nan")
    dq, dk, dv = cpu.local_attention_vjp(q, k, v, dout, window=2)
    assert calls == [1]
    expected = R.local_attention_vjp(q.numpy(), k.numpy(), v.numpy(), dout.numpy(), window=2)
    for g, e in zip((dq, dk, dv), expected, strict=True):
        np.testing.assert_array_equal(np.isnan(g.numpy()), np.isnan(e))


def test_off_the_cpu_the_banded_path_is_never_asked(monkeypatch, spy, cpu):
    monkeypatch.setattr(_numerics, "reads_values_on", lambda device: False)  # as on CUDA
    q, k, v = _qkv(np.random.default_rng(3))
    cpu.local_attention(q, k, v, window=2)
    assert spy == ["blocked"]


def test_flex_applies_only_on_cuda_when_switched_on_and_without_gradient():
    q = torch.zeros(1, 1, 4096, 64)
    args = check_attention(q, q, q)
    assert not _flex.flex_applies(q, args, bias=None, mask=None, requires_grad=False)  # a CPU tensor
    meta_cuda = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    assert _flex.flex_applies(meta_cuda, args, bias=None, mask=None, requires_grad=False)
    assert not _flex.flex_applies(meta_cuda, args, bias=None, mask=None, requires_grad=True)
    assert not _flex.flex_applies(meta_cuda, args, bias=q, mask=None, requires_grad=False)


# -- no host synchronisation ---------------------------------------------------------------
HOST_READS = ("item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def no_host_reads(monkeypatch):
    """Every way of reading a tensor's values on the host raises (on CUDA each one is a device
    synchronisation), and the path choice behaves as off the CPU."""
    monkeypatch.setattr(_numerics, "reads_values_on", lambda device: False)

    def forbid(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"host read of a tensor: Tensor.{name}")

        return read

    def install():
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, forbid(name))

    return install


OPS = [
    ("global_attention", {}),
    ("global_attention", {"causal": True}),
    ("global_attention", {"return_lse": True}),
    ("local_attention", {"window": (3, 0)}),
    ("local_attention", {"window": (2, 5), "softcap": 2.0, "return_lse": True}),
    ("chunked_attention", {"chunk_size": 4}),
    ("chunked_attention", {"chunk_size": 4, "causal": True, "return_lse": True}),
]


@pytest.mark.parametrize(("op", "options"), OPS)
def test_default_paths_read_no_value_on_the_host(cpu, no_host_reads, op, options):
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng)
    v[0, 1, 3, 2] = float("nan")
    bias = torch.from_numpy(rng.standard_normal((13, 17)).astype(np.float32))
    expected = getattr(R, op)(q.numpy(), k.numpy(), v.numpy(), bias=bias.numpy(), **options)
    no_host_reads()
    got = getattr(cpu, op)(q, k, v, bias=bias, **options)
    torch.Tensor.numpy = _numpy  # restore the one read the comparison needs
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected if isinstance(expected, tuple) else (expected,), strict=True):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-4, atol=1e-5)


_numpy = torch.Tensor.numpy


@pytest.mark.parametrize(("op", "options"), [o for o in OPS if "return_lse" not in o[1]])
def test_the_backward_reads_no_value_on_the_host(cpu, no_host_reads, op, options):
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng)
    dout = torch.from_numpy(rng.standard_normal((2, 4, 13, 8)).astype(np.float32))
    dlse = torch.from_numpy(rng.standard_normal((2, 4, 13)).astype(np.float32))
    no_host_reads()
    grads = getattr(cpu, op + "_vjp")(q, k, v, dout, dlse=dlse, **options)
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]


def test_pooling_reads_no_value_on_the_host(cpu, no_host_reads):
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.standard_normal((2, 9, 4)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal(3).astype(np.float32))
    x[0, 2, 1] = float("nan")
    no_host_reads()
    cpu.additive_attention(x, w, b, b, window=2)
    cpu.luong_attention(x, x, mode="local-m", half_width=1)


# -- older torch --------------------------------------------------------------------------
def test_without_enable_gqa_the_kv_heads_are_repeated(cpu, monkeypatch):
    """torch before 2.5 has no ``enable_gqa=``: forced here, the SDPA and banded paths repeat
    the kv heads instead, and agree with the reference."""
    monkeypatch.setattr(_sdpa, "HAS_ENABLE_GQA", False)
    real = torch.nn.functional.scaled_dot_product_attention

    def old_sdpa(q, k, v, **kwargs):
        assert "enable_gqa" not in kwargs and q.shape[1] == k.shape[1]
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", old_sdpa)
    q, k, v = _qkv(np.random.default_rng(7), dtype=np.float64)
    for op, options in (("global_attention", {}), ("local_attention", {"window": 3})):
        expected = getattr(R, op)(q.numpy(), k.numpy(), v.numpy(), **options)
        np.testing.assert_allclose(getattr(cpu, op)(q, k, v, **options).numpy(), expected, atol=1e-12)


def test_without_aux_request_flex_is_asked_for_its_lse_the_older_way(monkeypatch):
    flex_module = pytest.importorskip("torch.nn.attention.flex_attention")
    monkeypatch.delattr(flex_module, "AuxRequest", raising=False)
    seen = {}

    def old_flex(q, k, v, **kwargs):
        seen.update(kwargs)
        return q, q[..., 0]

    q = torch.ones(1, 1, 4, 2)
    out, _ = _flex._with_lse(old_flex, q, q, q, scale=1.0)
    assert seen == {"return_lse": True, "scale": 1.0} and out is q


def test_blocked_and_banded_agree_on_a_long_window(cpu, monkeypatch):
    q, k, v = _qkv(np.random.default_rng(8), B=1, Hq=2, Hkv=1, Lq=700, Lk=700, D=16, dtype=np.float64)
    banded = cpu.local_attention(q, k, v, window=(70, 3))
    monkeypatch.setattr(_ops, "banded_applies", lambda *a, **kw: False)
    blocked = cpu.local_attention(q, k, v, window=(70, 3))
    np.testing.assert_allclose(banded.numpy(), blocked.numpy(), atol=1e-12)
    assert _blocked.CPU_STEP_ELEMENTS > 0


def test_without_flex_attention_the_flex_path_is_never_asked(monkeypatch):
    """torch before 2.5 has no FlexAttention: with the switch on, a CUDA call stays on the
    other paths."""
    monkeypatch.setattr(_flex, "available", lambda: False)
    meta_cuda = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    q = torch.zeros(1, 1, 4096, 64)
    assert not _flex.flex_applies(meta_cuda, check_attention(q, q, q), bias=None, mask=None, requires_grad=False)


def test_every_op_has_the_reference_s_signature():
    """Contract section 4: each op a method with the reference's name and signature, minus
    ``precision``/``return_weights`` (the VJPs too, so that they are listed in ``ops``)."""
    import inspect

    backend = TorchBackend(device="cpu")
    for op in sorted(backend.ops):
        expected = [p for p in inspect.signature(getattr(R, op)).parameters if p not in ("precision", "return_weights")]
        assert list(inspect.signature(getattr(backend, op)).parameters) == expected, op


def test_causal_chunks_run_as_causal_blocks_with_the_kernel_s_own_mask(cpu, monkeypatch):
    """A causal chunk's blocks merge into one block per chunk that SDPA's ``is_causal`` draws
    (no mask array, half the products): forward, lse and backward agree with the reference,
    also where an offset breaks the alignment (those blocks keep their masks) and with a
    non-finite value (put back as before)."""
    causal_calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    real_forward, real_backward = _sdpa.flash_forward, _sdpa.flash_backward

    def sdpa(*a, is_causal=False, attn_mask=None, **kw):
        causal_calls.append(("sdpa", is_causal, attn_mask is None))
        return real_sdpa(*a, is_causal=is_causal, attn_mask=attn_mask, **kw)

    def forward(*a, is_causal=False, attn_mask=None, **kw):
        causal_calls.append(("forward", is_causal, attn_mask is None))
        return real_forward(*a, is_causal=is_causal, attn_mask=attn_mask, **kw)

    def backward(*a, is_causal=False, attn_mask=None, **kw):
        causal_calls.append(("backward", is_causal, attn_mask is None))
        return real_backward(*a, is_causal=is_causal, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(_banded.F, "scaled_dot_product_attention", sdpa)
    monkeypatch.setattr(_sdpa, "flash_forward", forward)
    monkeypatch.setattr(_sdpa, "flash_backward", backward)
    rng = np.random.default_rng(12)
    for lq, lk in [(512, 512), (500, 500), (448, 512), (450, 512)]:
        q, k, v = _qkv(rng, Lq=lq, Lk=lk, dtype=np.float64)
        v[1, 0, 300, 2] = float("nan")
        causal_calls.clear()
        out = cpu.chunked_attention(q, k, v, chunk_size=128, causal=True)
        expected = R.chunked_attention(q.numpy(), k.numpy(), v.numpy(), chunk_size=128, causal=True)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)
        # blocks of 64 rows start at chunk starts unless the offset shifts them (448: all chunks but the first)
        aligned = (lk - lq) % _plan.BLOCK_ROWS == 0
        assert ("sdpa", True, True) in causal_calls if aligned else all(not c for _, c, _ in causal_calls)
        assert all(no_mask for _, c, no_mask in causal_calls if c)
        v[1, 0, 300, 2] = 0.0
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out, lse = cpu.chunked_attention(*leaves, chunk_size=128, causal=True, return_lse=True)
        dout, dlse = rng.standard_normal(out.shape), rng.standard_normal(lse.shape)
        (out * torch.from_numpy(dout)).sum().add((lse * torch.from_numpy(dlse)).sum()).backward()
        arrays = [x.detach().numpy() for x in leaves]
        ref_out, ref_lse = R.chunked_attention(*arrays, chunk_size=128, causal=True, return_lse=True)
        grads = R.chunked_attention_vjp(*arrays, dout, chunk_size=128, causal=True, dlse=dlse)
        np.testing.assert_allclose(out.detach().numpy(), ref_out, atol=1e-12)
        np.testing.assert_allclose(lse.detach().numpy(), ref_lse, atol=1e-12)
        for leaf, grad in zip(leaves, grads[:3], strict=True):
            np.testing.assert_allclose(leaf.grad.numpy(), grad, atol=1e-11)
        kinds = {kind for kind, c, _ in causal_calls if c}
        grad_aligned = (lk - lq) % (_plan.BLOCK_ROWS * _banded.GRAD_ROWS_FACTOR) == 0  # taller blocks
        assert kinds == {*(["sdpa"] if aligned else []), *(["forward", "backward"] if grad_aligned else [])}


def test_the_banded_path_copies_v_only_when_it_holds_a_non_finite_value(cpu, monkeypatch):
    """A finite ``v`` goes to the kernel as it is (a copy the size of ``v`` was a third of the path's
    extra memory); one with a NaN is copied with it set to 0 and the NaN put back."""
    copies = []
    real = _banded.finite_part
    monkeypatch.setattr(_banded, "finite_part", lambda x: copies.append(1) or real(x))
    q, k, v = _qkv(np.random.default_rng(13), dtype=np.float64)
    for return_lse in (False, True):
        copies.clear()
        cpu.local_attention(q, k, v, window=(3, 2), return_lse=return_lse)
        assert copies == []
        v[0, 1, 4, 0] = float("nan")
        result = cpu.local_attention(q, k, v, window=(3, 2), return_lse=return_lse)
        out = result[0] if return_lse else result
        expected = R.local_attention(q.numpy(), k.numpy(), v.numpy(), window=(3, 2))
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)
        assert copies == [1]
        v[0, 1, 4, 0] = 0.5
