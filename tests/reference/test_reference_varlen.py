"""Packed variable-length sequences (contract section 8).

``cu_seqlens_q``/``cu_seqlens_k`` pack sequence ``b`` into rows
``cu[b]:cu[b+1]``; the result is the dense op on each sequence alone, with its
own lengths, alignment and sinks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from bruteforce import MULTIHEAD_OPS, packed_bruteforce, random_window

from attnref import InvalidArgumentError, reference
from attnref.reference import global_attention, local_attention

NEG_INF = -math.inf


def random_packed_case(rng: np.random.Generator, op: str) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """Random packed ``(q, k, v), kwargs``; empty sequences (on either side) are likely."""
    B, Hkv, g, D, Dv = (int(n) for n in rng.integers(1, [5, 3, 4, 5, 4]))
    lq, lk = rng.integers(0, 6, size=B), rng.integers(0, 6, size=B)
    cu_q, cu_k = np.concatenate([[0], np.cumsum(lq)]), np.concatenate([[0], np.cumsum(lk)])
    dtype = rng.choice([np.float64, np.float32, np.float16])
    q = rng.standard_normal((int(cu_q[-1]), Hkv * g, D)).astype(dtype)
    k = rng.standard_normal((int(cu_k[-1]), Hkv, D)).astype(dtype)
    v = rng.standard_normal((int(cu_k[-1]), Hkv, Dv)).astype(dtype)
    kwargs: dict[str, Any] = {
        "cu_seqlens_q": cu_q if rng.random() < 0.5 else cu_q.tolist(),
        "cu_seqlens_k": cu_k.astype(np.int32),
        "align": "bottom_right" if rng.random() < 0.5 else "top_left",
    }
    if rng.random() < 0.3:
        kwargs["softcap"] = float(rng.uniform(0.5, 3))
    if rng.random() < 0.4:
        kwargs["sinks"] = rng.standard_normal(Hkv * g)
    if op == "global_attention":
        kwargs["causal"] = bool(rng.random() < 0.5)
    elif op == "local_attention":
        kwargs["window"] = random_window(rng, 3)
    else:
        kwargs["chunk_size"] = int(rng.integers(1, 5))
        kwargs["causal"] = bool(rng.random() < 0.5)
    return (q, k, v), kwargs


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("op", MULTIHEAD_OPS)
def test_packed_matches_bruteforce(op: str, seed: int) -> None:
    rng = np.random.default_rng([50 + MULTIHEAD_OPS.index(op), seed])
    (q, k, v), kwargs = random_packed_case(rng, op)
    out, lse = getattr(reference, op)(q, k, v, return_lse=True, **kwargs)
    bf_out, bf_lse = packed_bruteforce(op, q, k, v, **kwargs)
    assert out.shape == (q.shape[0], q.shape[1], v.shape[2]) and lse.shape == q.shape[:2]
    np.testing.assert_allclose(out, bf_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lse, bf_lse, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("op", MULTIHEAD_OPS)
def test_packed_equals_each_sequence_run_densely(op: str, seed: int) -> None:
    rng = np.random.default_rng([60 + MULTIHEAD_OPS.index(op), seed])
    (q, k, v), kwargs = random_packed_case(rng, op)
    cu_q, cu_k = np.asarray(kwargs.pop("cu_seqlens_q")), kwargs.pop("cu_seqlens_k")
    precision = "float32" if seed % 2 else None  # the identity holds at any precision
    out, lse = getattr(reference, op)(
        q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, return_lse=True, precision=precision, **kwargs
    )
    for b in range(len(cu_q) - 1):
        rows, keys = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if rows.stop == rows.start or keys.stop == keys.start:
            continue  # the dense op needs at least one query and one key (see the edge tests below)
        dense = (np.swapaxes(x[s], 0, 1)[None] for x, s in ((q, rows), (k, keys), (v, keys)))
        o, lse_b = getattr(reference, op)(*dense, return_lse=True, precision=precision, **kwargs)
        np.testing.assert_array_equal(out[rows], np.swapaxes(o[0], 0, 1))
        np.testing.assert_array_equal(lse[rows], lse_b[0].T)


def test_alignment_is_per_sequence_by_hand() -> None:
    # Sequence 0: 1 query, 3 keys; sequence 1: 2 queries, 2 keys. q = k = 0 (uniform), v_j = j (packed index).
    q, k = np.zeros((3, 1, 1)), np.zeros((5, 1, 1))
    v = np.arange(5, dtype=np.float64).reshape(5, 1, 1)
    cu_q, cu_k = [0, 1, 3], [0, 3, 5]
    out, lse = global_attention(q, k, v, causal=True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, return_lse=True)
    # bottom_right: seq 0's query at p = 2 sees keys 0..2; seq 1's queries at p = 0, 1 see its key 0 / keys 0..1.
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 3.0, 3.5])
    np.testing.assert_allclose(lse[:, 0], [math.log(3), 0.0, math.log(2)])
    top = global_attention(q, k, v, causal=True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, align="top_left")
    np.testing.assert_allclose(top[:, 0, 0], [0.0, 3.0, 3.5])  # p = i within each sequence


def test_empty_sequences() -> None:
    q, k, v = np.ones((3, 2, 2)), np.ones((2, 1, 2)), np.full((2, 1, 3), 7.0)
    # seq 0: 0 queries, 2 keys; seq 1: 2 queries, 0 keys; seq 2: 1 query, 0 keys, seq 3: nothing.
    kwargs = {"cu_seqlens_q": [0, 0, 2, 3, 3], "cu_seqlens_k": [0, 2, 2, 2, 2], "return_lse": True}
    out, lse = local_attention(q, k, v, window=(None, 0), **kwargs)
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(lse, NEG_INF)
    out, lse = local_attention(q, k, v, window=(None, 0), sinks=np.array([0.5, -1.0]), **kwargs)
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(lse, np.broadcast_to([0.5, -1.0], (3, 2)))  # no key: lse = the sink
    none = global_attention(q[:0], k[:0], v[:0], cu_seqlens_q=[0, 0], cu_seqlens_k=[0, 0], return_lse=True)
    assert none[0].shape == (0, 2, 3) and none[1].shape == (0, 2)


def test_sequences_do_not_see_each_other() -> None:
    """The packed batch is block-diagonal: a NaN key or value in one sequence stays in it."""
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((6, 2, 3)), rng.standard_normal((7, 2, 3)), rng.standard_normal((7, 2, 3))
    k[4, 0, 1] = np.nan
    v[5, 1, 2] = np.inf
    out, lse = global_attention(q, k, v, cu_seqlens_q=[0, 3, 6], cu_seqlens_k=[0, 3, 7], return_lse=True)
    assert np.isfinite(out[:3]).all() and np.isfinite(lse[:3]).all()
    assert np.isnan(lse[3:, 0]).all() and np.isfinite(lse[3:, 1]).all()


@pytest.mark.parametrize(
    ("changes", "argument"),
    [
        ({"return_weights": True}, "return_weights"),
        ({"bias": np.zeros((1, 1, 3, 4))}, "bias"),
        ({"mask": np.ones((1, 1, 3, 4), bool)}, "mask"),
        ({"kv_lengths": [4]}, "kv_lengths"),
        ({"q_lengths": [3]}, "q_lengths"),
        ({"cu_seqlens_k": None}, "cu_seqlens_k"),
        ({"cu_seqlens_q": [0, 2]}, "cu_seqlens_q"),
        ({"cu_seqlens_k": [0, 5, 4]}, "cu_seqlens_k"),
    ],
)
def test_invalid_packed_input_names_the_argument(changes: dict[str, Any], argument: str) -> None:
    kwargs = {"cu_seqlens_q": [0, 1, 3], "cu_seqlens_k": [0, 2, 4], **changes}
    with pytest.raises(InvalidArgumentError, match=rf"^{argument}:"):
        global_attention(np.zeros((3, 1, 2)), np.zeros((4, 1, 2)), np.zeros((4, 1, 2)), **kwargs)
