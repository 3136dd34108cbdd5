"""Masking selects in the reference VJPs (contract section 6).

A NaN or inf that no allowed score reaches (behind ``kv_lengths``, a mask, a
window, a chunk, causality, in a padding or fully masked row) changes no
gradient at all; a NaN that an allowed score does reach shows up in exactly the
gradient entries whose formula uses it. The expected NaN pattern is derived
from the brute-force allowed grid (``bruteforce.allowed_grid``), which imports
none of attnref's rules.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from bruteforce import allowed_grid

from attnref import reference as ref

NAN, INF = float("nan"), float("inf")
B, HQ, HKV, LQ, LK, D, DV = 2, 4, 2, 5, 7, 3, 2
GROUP = HQ // HKV

VJPS = {
    "global_attention": ref.global_attention_vjp,
    "local_attention": ref.local_attention_vjp,
    "chunked_attention": ref.chunked_attention_vjp,
}


def _inputs(seed: int, lq: int = LQ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "q": rng.standard_normal((B, HQ, lq, D)),
        "k": rng.standard_normal((B, HKV, LK, D)),
        "v": rng.standard_normal((B, HKV, LK, DV)),
        "dout": rng.standard_normal((B, HQ, lq, DV)),
        "dlse": rng.standard_normal((B, HQ, lq)),
    }


def _grads(op: str, arrays: dict[str, np.ndarray], kwargs: dict[str, Any]) -> tuple[np.ndarray, ...]:
    a = arrays
    return VJPS[op](a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"], **kwargs)


def _masked_key_column(j: int) -> np.ndarray:
    mask = np.ones((B, 1, 1, LK), dtype=bool)
    mask[0, :, :, j] = False  # key j of batch 0 hidden from every query head
    return mask


def _masked_row(b: int, h: int, i: int) -> np.ndarray:
    mask = np.ones((B, HQ, LQ, LK), dtype=bool)
    mask[b, h, i] = False
    return mask


def _full_bias(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, HQ, LQ, LK))


# (op, kwargs, poisoned array, index, poison value): the poisoned entry is hidden from every
# allowed score, so the gradients must equal those of the same call with a finite value there.
HIDDEN = {
    "k-nan-behind-kv_lengths": ("global_attention", {"kv_lengths": [4, 7]}, "k", (0, 0, 4, 0), NAN),
    "k-inf-behind-kv_lengths": ("global_attention", {"kv_lengths": [4, 7]}, "k", (0, 1, 5, 2), INF),
    "k-nan-behind-kv_lengths-softcap": (
        "global_attention", {"kv_lengths": [4, 7], "softcap": 2.0}, "k", (0, 0, 6, 1), NAN,
    ),
    "v-nan-behind-kv_lengths": ("global_attention", {"kv_lengths": [7, 3]}, "v", (1, 1, 3, 0), NAN),
    "v-inf-behind-kv_lengths": ("global_attention", {"kv_lengths": [7, 3]}, "v", (1, 0, 6, 1), -INF),
    "k-nan-behind-mask": ("global_attention", {"mask": _masked_key_column(2)}, "k", (0, 1, 2, 0), NAN),
    "k-nan-behind-mask-softcap": (
        "global_attention", {"mask": _masked_key_column(3), "softcap": 0.5}, "k", (0, 0, 3, 1), NAN,
    ),
    "v-nan-behind-mask": ("global_attention", {"mask": _masked_key_column(2)}, "v", (0, 0, 2, 1), NAN),
    "k-nan-behind-causal": ("global_attention", {"causal": True, "align": "top_left"}, "k", (1, 0, 6, 0), NAN),
    "v-nan-behind-causal": ("global_attention", {"causal": True, "align": "top_left"}, "v", (1, 0, 5, 0), NAN),
    "k-nan-behind-window": ("local_attention", {"window": (1, 0), "align": "top_left"}, "k", (0, 0, 6, 2), NAN),
    "v-inf-behind-window": ("local_attention", {"window": (1, 0), "align": "top_left"}, "v", (0, 1, 5, 0), INF),
    "k-nan-before-window": ("local_attention", {"window": (0, 2)}, "k", (1, 1, 1, 0), NAN),
    "k-nan-behind-window-softcap": (
        "local_attention", {"window": (1, 0), "align": "top_left", "softcap": 1.0}, "k", (0, 0, 6, 2), NAN,
    ),
    "k-nan-behind-chunk": ("chunked_attention", {"chunk_size": 3, "align": "top_left"}, "k", (0, 1, 6, 1), NAN),
    "v-nan-behind-chunk": ("chunked_attention", {"chunk_size": 3, "align": "top_left"}, "v", (1, 0, 6, 0), NAN),
    "k-nan-behind-chunk-bottom_right": ("chunked_attention", {"chunk_size": 2}, "k", (0, 0, 1, 0), NAN),
    "bias-nan-behind-mask": (
        "global_attention", {"mask": _masked_row(0, 1, 2), "bias": _full_bias(5)}, "bias", (0, 1, 2, 3), NAN,
    ),
    "bias-inf-behind-kv_lengths": (
        "global_attention", {"kv_lengths": [5, 7], "bias": _full_bias(6)}, "bias", (0, 2, 1, 6), INF,
    ),
    "q-nan-in-padding-row": ("global_attention", {"q_lengths": [3, 5]}, "q", (0, 1, 4, 0), NAN),
    "q-nan-in-masked-row": ("global_attention", {"mask": _masked_row(1, 3, 0)}, "q", (1, 3, 0, 2), NAN),
    "dout-nan-in-padding-row": ("global_attention", {"q_lengths": [3, 5]}, "dout", (0, 2, 3, 1), NAN),
    "dout-nan-in-masked-row": ("global_attention", {"mask": _masked_row(1, 3, 0)}, "dout", (1, 3, 0, 0), NAN),
    "dout-inf-in-masked-row": (
        "local_attention", {"window": 1, "mask": _masked_row(0, 0, 4)}, "dout", (0, 0, 4, 1), INF,
    ),
    "dlse-nan-in-padding-row": ("chunked_attention", {"chunk_size": 2, "q_lengths": [0, 2]}, "dlse", (0, 1, 0), NAN),
    "dlse-nan-in-masked-row": ("global_attention", {"mask": _masked_row(1, 0, 4)}, "dlse", (1, 0, 4), NAN),
    "dout-nan-in-empty-causal-row": (
        "global_attention", {"causal": True, "kv_lengths": [7, 2], "q_lengths": [5, 5]}, "dout", (1, 0, 0, 0), NAN,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HIDDEN))
def test_a_hidden_nan_or_inf_changes_no_gradient(name: str) -> None:
    op, kwargs, target, index, poison = HIDDEN[name]
    arrays = _inputs(sorted(HIDDEN).index(name))
    clean = _grads(op, arrays, kwargs)
    arrays = {**arrays}
    kwargs = {**kwargs}
    if target == "bias":
        kwargs["bias"] = kwargs["bias"].copy()
        kwargs["bias"][index] = poison
    else:
        arrays[target] = arrays[target].copy()
        arrays[target][index] = poison
    poisoned = _grads(op, arrays, kwargs)
    assert len(poisoned) == len(clean)
    for got, want in zip(poisoned, clean, strict=True):
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, want)


def test_the_issue_example_kv_lengths_hides_a_nan_key() -> None:
    # Issue 14's report: NaN dq in every row; the forward was finite.
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, 1, 6, 4)) for _ in range(4))
    k[0, 0, 4] = NAN
    dq, dk, dv = ref.global_attention_vjp(q, k, v, dout, kv_lengths=[4])
    assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()
    assert not dk[0, 0, 4:].any() and not dv[0, 0, 4:].any()


def test_fully_masked_and_padding_rows_get_zero_gradients_and_their_dout_is_never_read() -> None:
    arrays = _inputs(11)
    mask = _masked_row(0, 1, 2)
    arrays["dout"][0, 1, 2] = NAN
    arrays["dlse"][0, 1, 2] = NAN
    arrays["dout"][1, :, 4] = NAN  # padding rows of batch 1
    arrays["dlse"][1, :, 4] = INF
    arrays["q"][1, :, 4] = NAN
    dq, dk, dv = _grads("global_attention", arrays, {"mask": mask, "q_lengths": [5, 4]})
    assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()
    assert not dq[0, 1, 2].any() and not dq[1, :, 4].any()


# -- the NaN that an allowed score reaches, and where it must show up --------------
def _reach(
    grid: np.ndarray, rows: list[tuple[int, int, int]], *, dv: bool, columns: Any = slice(None)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where NaN must be when the whole ``dS`` of each of ``rows`` is NaN.

    ``dq`` of the row; ``dk`` (and ``dv`` when ``dv``, only its ``columns``) of
    every key the row may see, in the row's batch and kv head.
    """
    dq = np.zeros((grid.shape[0], grid.shape[1], grid.shape[2], D), dtype=bool)
    dk = np.zeros((grid.shape[0], HKV, LK, D), dtype=bool)
    dvm = np.zeros((grid.shape[0], HKV, LK, DV), dtype=bool)
    for b, h, i in rows:
        if not grid[b, h, i].any():
            continue
        dq[b, h, i] = True
        dk[b, h // GROUP, grid[b, h, i]] = True
        if dv:
            dvm[b, h // GROUP, np.flatnonzero(grid[b, h, i])[:, None], columns] = True
    return dq, dk, dvm


def _assert_nan_exactly(grads: tuple[np.ndarray, ...], expected: tuple[np.ndarray, ...]) -> None:
    for name, got, want in zip(("dq", "dk", "dv"), grads, expected, strict=True):
        assert want.any() or name == "dv"
        np.testing.assert_array_equal(np.isnan(got), want, err_msg=name)


OPTIONS = {
    "global_attention": {"causal": True, "kv_lengths": [6, 7], "align": "top_left"},
    "local_attention": {"window": (2, 1), "q_lengths": [5, 4]},
    "chunked_attention": {"chunk_size": 3, "causal": True, "softcap": 1.5},
}


@pytest.mark.parametrize("op", list(OPTIONS))
def test_a_nan_dout_entry_reaches_only_the_keys_its_row_sees(op: str) -> None:
    arrays = _inputs(21)
    b, h, i, c = 0, 3, 3, 1
    arrays["dout"][b, h, i, c] = NAN
    grads = _grads(op, arrays, OPTIONS[op])
    grid = allowed_grid(op, (B, HQ, LQ, LK), **OPTIONS[op])
    _assert_nan_exactly(grads, _reach(grid, [(b, h, i)], dv=True, columns=c))


@pytest.mark.parametrize("op", list(OPTIONS))
def test_a_nan_allowed_value_reaches_the_rows_that_see_it(op: str) -> None:
    arrays = _inputs(22)
    b, hk, j = 1, 0, 3
    arrays["v"][b, hk, j, 0] = NAN
    grads = _grads(op, arrays, OPTIONS[op])
    grid = allowed_grid(op, (B, HQ, LQ, LK), **OPTIONS[op])
    rows = [(b, h, i) for h in range(hk * GROUP, (hk + 1) * GROUP) for i in range(LQ) if grid[b, h, i, j]]
    assert rows
    # out_i (so delta_i, so all of dS_i) is NaN; dv = P^T dout never reads v
    _assert_nan_exactly(grads, _reach(grid, rows, dv=False))


@pytest.mark.parametrize("op", list(OPTIONS))
def test_a_nan_allowed_key_reaches_the_rows_that_see_it(op: str) -> None:
    arrays = _inputs(23)
    b, hk, j = 0, 1, 2
    arrays["k"][b, hk, j, 2] = NAN
    grads = _grads(op, arrays, OPTIONS[op])
    grid = allowed_grid(op, (B, HQ, LQ, LK), **OPTIONS[op])
    rows = [(b, h, i) for h in range(hk * GROUP, (hk + 1) * GROUP) for i in range(LQ) if grid[b, h, i, j]]
    assert rows
    # the rows' scores, so their weights, are NaN: dv of their keys too
    _assert_nan_exactly(grads, _reach(grid, rows, dv=True))


def test_a_nan_query_reaches_its_row_and_the_keys_it_sees() -> None:
    arrays = _inputs(24)
    arrays["q"][1, 2, 4, 0] = NAN
    kwargs = {"window": (1, 1), "kv_lengths": [7, 6]}
    grads = _grads("local_attention", arrays, kwargs)
    grid = allowed_grid("local_attention", (B, HQ, LQ, LK), **kwargs)
    _assert_nan_exactly(grads, _reach(grid, [(1, 2, 4)], dv=True))


def test_a_nan_dlse_reaches_its_row() -> None:
    arrays = _inputs(25)
    arrays["dlse"][0, 0, 1] = NAN
    grads = _grads("global_attention", arrays, {})
    grid = allowed_grid("global_attention", (B, HQ, LQ, LK))
    _assert_nan_exactly(grads, _reach(grid, [(0, 0, 1)], dv=False))


def test_an_allowed_nan_value_reaches_its_row_even_where_its_weight_underflows() -> None:
    arrays = _inputs(26)
    bias = np.zeros((B, HQ, LQ, LK))
    bias[0, 1, 2, 5] = -1e4  # allowed, but exp(-1e4) is 0 in float64
    arrays["v"][0, 0, 5, 1] = NAN
    weights = ref.global_attention(arrays["q"], arrays["k"], arrays["v"], bias=bias, return_weights=True)[1]
    assert weights[0, 1, 2, 5] == 0.0
    dq, _, _, dbias = _grads("global_attention", arrays, {"bias": bias})
    assert np.isnan(dq[0, 1, 2]).all()
    assert np.isnan(dbias[0, 1, 2]).all() and np.isnan(dbias[0, 0]).all()
    assert np.isfinite(dq[1]).all() and np.isfinite(dq[0, 2:]).all()


def test_a_nan_bias_reaches_exactly_its_row() -> None:
    arrays = _inputs(27)
    bias = _full_bias(27)
    bias[1, 2, 0, 4] = NAN
    dq, dk, dv, dbias = _grads("global_attention", arrays, {"bias": bias})
    grid = allowed_grid("global_attention", (B, HQ, LQ, LK))
    _assert_nan_exactly((dq, dk, dv), _reach(grid, [(1, 2, 0)], dv=True))
    expected = np.zeros(bias.shape, dtype=bool)
    expected[1, 2, 0] = True
    np.testing.assert_array_equal(np.isnan(dbias), expected)
