"""The torch backend's backward (the blocked path's own, and the banded path's through the
CPU flash-attention kernel) against the reference VJPs and
the contract's rule that masking selects in the backward too (section 6)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attnref import reference as R  # noqa: E402
from attnref_torch import TorchBackend, _numerics, _plan, _sdpa  # noqa: E402

CASES = {
    "global": ("global_attention", {}),
    "causal": ("global_attention", {"causal": True}),
    "window": ("local_attention", {"window": (2, 1)}),
    "window-softcap": ("local_attention", {"window": (3, 0), "softcap": 1.5}),
    "chunk": ("chunked_attention", {"chunk_size": 4}),
    "lengths": ("local_attention", {"window": 2, "kv_lengths": [9, 3], "q_lengths": [11, 6]}),
}


@pytest.fixture(params=["values read (cpu)", "nothing read (as on cuda)"])
def backend(request, monkeypatch):
    """Small blocks; the non-finite bookkeeping both skipped where values may be read and
    always run (as on CUDA)."""
    monkeypatch.setattr(_plan, "BLOCK_ROWS", 4)
    monkeypatch.setattr(_plan, "KEY_TILE", 3)
    if request.param.startswith("nothing"):
        monkeypatch.setattr(_numerics, "reads_values_on", lambda device: False)
    return TorchBackend(device="cpu")


def _inputs(seed, B=2, Hq=4, Hkv=2, Lq=11, Lk=12, D=5):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(s) for s in ((B, Hq, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D)))
    return q, k, v, rng.standard_normal((B, Hq, Lq, D)), rng.standard_normal((B, Hq, Lq))


def _vjp(backend, op, q, k, v, dout, dlse, **options):
    t = [torch.from_numpy(np.array(a)) for a in (q, k, v, dout, dlse)]
    return [g.numpy() for g in getattr(backend, op + "_vjp")(*t[:4], dlse=t[4], **options)]


@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_reference_vjp(backend, case):
    op, options = CASES[case]
    q, k, v, dout, dlse = _inputs(1)
    bias = np.random.default_rng(2).standard_normal((2, 1, 11, 12))
    expected = getattr(R, op + "_vjp")(q, k, v, dout, dlse=dlse, bias=bias, **options)
    got = _vjp(backend, op, q, k, v, dout, dlse, bias=torch.from_numpy(bias), **options)
    for name, g, e in zip(("dq", "dk", "dv", "dbias"), got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("gqa", ["enable_gqa", "heads repeated (torch < 2.5)"])
@pytest.mark.parametrize("case", [c for c in CASES if "softcap" not in c])
def test_the_banded_backward_matches_the_reference_vjp(backend, case, gqa, monkeypatch):
    """Without a bias that needs a gradient the banded path's backward runs on the CPU
    (the kernel's backward per step, ``dlse`` as its extra column, overlapping bands summed)."""
    monkeypatch.setattr(_sdpa, "HAS_ENABLE_GQA", gqa == "enable_gqa")
    op, options = CASES[case]
    q, k, v, dout, dlse = _inputs(7)
    mask = np.random.default_rng(8).random((2, 1, 11, 12)) < 0.8
    mask[0, 0, 3] = False  # a row with no allowed key
    for extra in ({}, {"mask": mask}):
        expected = getattr(R, op + "_vjp")(q, k, v, dout, dlse=dlse, **options, **extra)
        got = _vjp(backend, op, q, k, v, dout, dlse, **options, **{n: torch.from_numpy(m) for n, m in extra.items()})
        for name, g, e in zip(("dq", "dk", "dv"), got, expected, strict=True):
            np.testing.assert_allclose(g, e, atol=1e-12, err_msg=name)


def test_the_banded_backward_with_sinks_matches_the_reference_vjp(backend):
    q, k, v, dout, dlse = _inputs(9)
    sinks = np.array([0.5, -1.0, 2.0, -np.inf])
    expected = R.local_attention_vjp(q, k, v, dout, dlse=dlse, window=(3, 1), sinks=sinks)
    t = [torch.from_numpy(a) for a in (q, k, v, dout, dlse)]
    got = backend.local_attention_vjp(*t[:4], dlse=t[4], window=(3, 1), sinks=torch.from_numpy(sinks))
    for name, g, e in zip(("dq", "dk", "dv", "dsinks"), got, expected, strict=True):
        np.testing.assert_allclose(g.numpy(), e, atol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    ("case", "name", "index"),
    [
        ("window", "v", (0, 1, 11, 2)),  # key 11: outside the windows of rows 0..7
        ("window", "k", (1, 0, 0, 0)),
        ("chunk", "v", (0, 0, 9, 1)),
        ("lengths", "v", (1, 1, 5, 3)),  # behind kv_lengths
        ("lengths", "k", (1, 0, 4, 4)),
        ("causal", "v", (0, 0, 11, 0)),
    ],
)
def test_a_nan_no_allowed_score_reaches_changes_no_gradient_it_is_not_used_in(backend, case, name, index):
    """A NaN in a key or value hidden from some rows reaches only the gradients whose formula
    uses it (it made dq NaN in every row): the gradients equal those with the entry at 0,
    except exactly where the reference puts NaN."""
    op, options = CASES[case]
    q, k, v, dout, dlse = _inputs(3)
    arrays = {"q": q, "k": k, "v": v}
    clean = _vjp(backend, op, q, k, v, dout, dlse, **options)
    arrays[name] = arrays[name].copy()
    arrays[name][index] = np.nan
    got = _vjp(backend, op, *arrays.values(), dout, dlse, **options)
    expected = getattr(R, op + "_vjp")(*arrays.values(), dout, dlse=dlse, **options)
    for what, g, c, e in zip(("dq", "dk", "dv"), got, clean, expected, strict=True):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg=f"{what}: NaN positions")
        np.testing.assert_allclose(g[~np.isnan(e)], c[~np.isnan(e)], atol=1e-12, err_msg=what)
    assert not np.isnan(got[0]).all()


def test_a_nan_dout_row_reaches_only_the_keys_its_row_sees(backend):
    op, options = CASES["window"]
    q, k, v, dout, dlse = _inputs(4)
    dout[0, 1, 5] = np.nan  # row 5 of head 1 (kv head 0) sees keys 4..7 (window (2, 1), offset 1)
    dq, dk, dv = _vjp(backend, op, q, k, v, dout, dlse, **options)
    nan_keys = np.nonzero(np.isnan(dv[0, 0]).any(-1))[0].tolist()
    assert nan_keys == [4, 5, 6, 7]
    assert np.isnan(dq[0, 1, 5]).all() and np.isnan(dq).sum() == dq.shape[-1]
    assert np.nonzero(np.isnan(dk[0, 0]).any(-1))[0].tolist() == [4, 5, 6, 7] and not np.isnan(dk[1]).any()


def test_rows_with_no_allowed_key_never_read_dout(backend):
    q, k, v, dout, dlse = _inputs(5)
    dout[1, :, 8:] = np.nan  # padding rows (q_lengths[1] = 6)
    dlse[1, :, 8:] = np.nan
    dout[0, 2, 0] = np.nan  # row 0 of batch 0 sees no key: kv_lengths[0] = 0
    grads = _vjp(backend, "global_attention", q, k, v, dout, dlse, causal=True, kv_lengths=[0, 12], q_lengths=[11, 6])
    for g in grads:
        assert np.isfinite(g).all()
    assert (grads[0][0] == 0).all() and (grads[0][1, :, 6:] == 0).all()


def test_infinite_values_outside_the_window_leave_the_forward_and_backward_finite(backend):
    q, k, v, dout, dlse = _inputs(6)
    v[0, 0, 11] = np.inf
    k[0, 0, 11] = -np.inf
    op, options = CASES["window"]
    out = backend.local_attention(*(torch.from_numpy(a) for a in (q, k, v)), window=(2, 1))
    rows = np.arange(11) + 1  # bottom-right offset 1: row i sees keys i - 1 .. i + 2
    sees_11 = rows + 1 >= 11
    assert np.isfinite(out.numpy()[0, :2, ~sees_11]).all()
    grads = _vjp(backend, op, q, k, v, dout, dlse, **options)
    # rows 9 and 10 see key 11 (their scores are +-inf: NaN rows); keys 8..11 are in their windows
    assert np.isfinite(grads[0][0, :2, ~sees_11]).all() and np.isfinite(grads[2][0, 0, :8]).all()
