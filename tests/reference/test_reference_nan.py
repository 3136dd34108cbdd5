"""NaN in an input reaches exactly the outputs whose formula touches it.

Each test puts one NaN (or inf) into an otherwise clean problem, works out from
the allowed-key grid (restated in ``bruteforce.allowed_grid``) which outputs
must become NaN, and checks that exactly those are NaN and every other output
is unchanged. Never an exception.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from bruteforce import allowed_grid

from attnref.reference import (
    additive_attention,
    chunked_attention,
    global_attention,
    local_attention,
    luong_attention,
)

pytestmark = pytest.mark.filterwarnings("error")  # non-finite input is data: no warning, no exception

# B = 2, Hq = 4, Hkv = 2 (group 2), Lq = 5, Lk = 6, D = 3, Dv = 2.
SHAPE = (2, 4, 5, 6)
GROUP = 2
OPS = {
    "global-causal": (global_attention, "global_attention", {"causal": True}),
    "window": (local_attention, "local_attention", {"window": (1, 1)}),
    "chunk": (chunked_attention, "chunked_attention", {"chunk_size": 3}),
}
COMMON: dict[str, Any] = {"kv_lengths": [6, 4], "q_lengths": [5, 4]}


def problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    B, Hq, Lq, Lk = SHAPE
    q = rng.standard_normal((B, Hq, Lq, 3))
    k = rng.standard_normal((B, Hq // GROUP, Lk, 3))
    v = rng.standard_normal((B, Hq // GROUP, Lk, 2))
    mask = rng.random(SHAPE) < 0.8
    return q, k, v, dict(COMMON, mask=mask)


def run(name: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, ...]:
    op, _, extra = OPS[name]
    return op(q, k, v, return_lse=True, return_weights=True, **extra, **kwargs)


def grid(name: str, **kwargs: Any) -> np.ndarray:
    _, op_name, extra = OPS[name]
    return allowed_grid(op_name, SHAPE, **kwargs, **extra)


def check(actual: np.ndarray, clean: np.ndarray, expected_nan: np.ndarray) -> None:
    """NaN exactly at ``expected_nan``; elsewhere the clean result."""
    expected_nan = np.broadcast_to(expected_nan, actual.shape)
    np.testing.assert_array_equal(np.isnan(actual), expected_nan)
    np.testing.assert_allclose(actual[~expected_nan], clean[~expected_nan], rtol=1e-13, atol=0)


def check_rows(outputs: tuple[np.ndarray, ...], clean: tuple[np.ndarray, ...], rows: np.ndarray, allowed: np.ndarray):  # type: ignore[no-untyped-def]
    """Rows ``rows (B, Hq, Lq)`` are NaN: out row, lse, and weights at their allowed keys."""
    out, lse, weights = outputs
    check(out, clean[0], rows[..., None])
    check(lse, clean[1], rows)
    check(weights, clean[2], rows[..., None] & allowed)


@pytest.mark.parametrize("name", OPS)
def test_nan_in_one_query(name: str) -> None:
    q, k, v, kwargs = problem()
    allowed = grid(name, **kwargs)
    clean = run(name, q, k, v, **kwargs)
    for b, h, i in [(0, 1, 3), (1, 2, 0), (1, 3, 4)]:  # (1, 3, 4) is a padding row: stays 0
        bad = q.copy()
        bad[b, h, i, 1] = np.nan
        rows = np.zeros(SHAPE[:3], dtype=bool)
        rows[b, h, i] = allowed[b, h, i].any()
        check_rows(run(name, bad, k, v, **kwargs), clean, rows, allowed)
    assert not clean[0][1, 3, 4].any() and np.isneginf(clean[1][1, 3, 4])


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("j", range(SHAPE[3]))
def test_nan_in_one_key(name: str, j: int) -> None:
    # Key j of kv head 1 is allowed for some rows and not others (j >= 4 is past kv_lengths[1]).
    q, k, v, kwargs = problem()
    allowed = grid(name, **kwargs)
    clean = run(name, q, k, v, **kwargs)
    bad = k.copy()
    bad[1, 1, j, 0] = np.nan
    rows = np.zeros(SHAPE[:3], dtype=bool)
    heads = slice(1 * GROUP, 2 * GROUP)  # query heads 2 and 3 read kv head 1
    rows[1, heads] = allowed[1, heads, :, j]
    check_rows(run(name, q, bad, v, **kwargs), clean, rows, allowed)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("j", range(SHAPE[3]))
def test_nan_in_one_value(name: str, j: int) -> None:
    q, k, v, kwargs = problem()
    allowed = grid(name, **kwargs)
    clean = run(name, q, k, v, **kwargs)
    bad = v.copy()
    bad[0, 0, j, 1] = np.nan
    out, lse, weights = run(name, q, k, bad, **kwargs)
    expected = np.zeros(out.shape, dtype=bool)
    expected[0, :GROUP, :, 1] = allowed[0, :GROUP, :, j]  # only value component 1 of rows that see key j
    check(out, clean[0], expected)
    np.testing.assert_array_equal(lse, clean[1])
    np.testing.assert_array_equal(weights, clean[2])


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_at_disallowed_keys_never_leaks(name: str, value: float) -> None:
    q, k, v, kwargs = problem()
    allowed = grid(name, **kwargs)
    clean = run(name, q, k, v, **kwargs)
    # Keys 4 and 5 of batch 1 are past kv_lengths[1] = 4: nobody sees them.
    bad_k, bad_v = k.copy(), v.copy()
    bad_k[1, :, 4:] = value
    bad_v[1, :, 4:] = value
    bias = np.where(allowed, 0.5, value)  # non-finite bias exactly at every disallowed position
    for outputs, reference in [
        (run(name, q, bad_k, bad_v, **kwargs), clean),
        (run(name, q, k, v, bias=bias, **kwargs), run(name, q, k, v, bias=np.full(SHAPE, 0.5), **kwargs)),
    ]:
        for actual, expected in zip(outputs, reference, strict=True):
            np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("name", OPS)
def test_nan_bias_at_an_allowed_position(name: str) -> None:
    q, k, v, kwargs = problem()
    allowed = grid(name, **kwargs)
    clean = run(name, q, k, v, bias=np.zeros(SHAPE), **kwargs)
    b, h, i, j = (int(n) for n in np.argwhere(allowed)[7])
    bias = np.zeros(SHAPE)
    bias[b, h, i, j] = np.nan
    rows = np.zeros(SHAPE[:3], dtype=bool)
    rows[b, h, i] = True
    check_rows(run(name, q, k, v, bias=bias, **kwargs), clean, rows, allowed)


# -- attention pooling --------------------------------------------------------------
def pooling_problem() -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 3))
    return x, (rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal(4))


@pytest.mark.parametrize("position", range(7))
def test_additive_nan_in_x(position: int) -> None:
    # Batch 0: window (1, 2) around 3 -> {2, 3, 4, 5}, minus masked position 4 -> {2, 3, 5}.
    x, params = pooling_problem()
    mask = np.ones((2, 7), dtype=bool)
    mask[0, 4] = False
    kwargs = {"mask": mask, "window": (1, 2), "center": [3, 1]}
    clean_context, clean_weights = additive_attention(x, *params, **kwargs)
    bad = x.copy()
    bad[0, position, 2] = np.nan
    context, weights = additive_attention(bad, *params, **kwargs)
    touched = position in (2, 3, 5)
    allowed = clean_weights > 0
    check(context, clean_context, np.array([[touched], [False]]))
    check(weights, clean_weights, allowed & np.array([[touched], [False]]))


def test_additive_nan_in_parameters() -> None:
    x, (w_in, b_in, w_out) = pooling_problem()
    mask = np.ones((2, 7), dtype=bool)
    mask[1] = False  # batch 1 has no allowed position: stays 0
    clean_context, clean_weights = additive_attention(x, w_in, b_in, w_out, mask=mask)
    bad = w_out.copy()
    bad[0] = np.nan
    context, weights = additive_attention(x, w_in, b_in, bad, mask=mask)
    check(context, clean_context, np.array([[True], [False]]))
    check(weights, clean_weights, mask)
    context, _ = additive_attention(x, w_in, b_in, w_out, float("nan"), mask=mask)
    check(context, clean_context, np.array([[True], [False]]))


@pytest.mark.parametrize("mode", ["global", "local-m", "local-p"])
@pytest.mark.parametrize("s", range(6))
def test_luong_nan_in_one_source_position(mode: str, s: int) -> None:
    rng = np.random.default_rng(2)
    h_t, h_s = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 6, 3))
    kwargs: dict[str, Any] = {"mode": mode, "source_lengths": [6, 4], "score": "concat"}
    kwargs.update(w_a=rng.standard_normal((6, 2)), v_a=rng.standard_normal(2))
    if mode != "global":
        kwargs.update(half_width=1, w_p=rng.standard_normal((3, 2)), v_p=rng.standard_normal(2))
    if mode == "local-m":
        kwargs.update(w_p=None, v_p=None)
    clean_context, clean_weights = luong_attention(h_t, h_s, **kwargs)
    bad = h_s.copy()
    bad[1, s, 0] = np.nan
    context, weights = luong_attention(h_t, bad, **kwargs)
    allowed = clean_weights > 0  # every allowed weight is > 0 here (no -inf scores)
    rows = np.zeros((2, 4), dtype=bool)
    rows[1] = allowed[1, :, s]  # batch 1 steps whose window holds s (s >= 4 is past source_lengths)
    check(context, clean_context, rows[..., None])
    check(weights, clean_weights, rows[..., None] & allowed)


@pytest.mark.parametrize("where", ["h_t", "w_p", "v_p"])
def test_luong_local_p_nan_position_is_not_hidden(where: str) -> None:
    """A NaN in what p_t is computed from leaves the window undefined: NaN, not zeros."""
    rng = np.random.default_rng(3)
    arrays = {"h_t": rng.standard_normal((2, 3, 2)), "w_p": rng.standard_normal((2, 2)), "v_p": rng.standard_normal(2)}
    h_s = rng.standard_normal((2, 5, 2))
    lengths = np.array([5, 0])  # batch 1 has no source position at all: stays 0
    clean_context, clean_weights = luong_attention(
        arrays["h_t"], h_s, mode="local-p", half_width=1, w_p=arrays["w_p"], v_p=arrays["v_p"],
        source_lengths=lengths,
    )  # fmt: skip
    bad = {name: a.copy() for name, a in arrays.items()}
    if where == "h_t":
        bad["h_t"][0, 1, 0] = np.nan
        rows = np.array([[False, True, False], [False, False, False]])
    else:
        bad[where][0] = np.nan
        rows = np.array([[True, True, True], [False, False, False]])
    context, weights = luong_attention(
        bad["h_t"], h_s, mode="local-p", half_width=1, w_p=bad["w_p"], v_p=bad["v_p"], source_lengths=lengths
    )
    check(context, clean_context, rows[..., None])
    check(weights, clean_weights, rows[..., None] & (np.arange(5) < lengths[:, None, None]))
