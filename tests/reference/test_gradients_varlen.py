"""VJPs of packed variable-length sequences (contract section 8).

The packed VJP is the dense VJP of each sequence alone, its gradients written
into arrays shaped like the packed inputs; ``dsinks`` sums over the sequences.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_gradients_finite_differences import numeric_grad

from attnref import reference as ref

HQ, HKV, D, DV = 4, 2, 3, 2

OPS = {
    "global-causal": (ref.global_attention_vjp, {"causal": True}),
    "global-top_left-softcap": (ref.global_attention_vjp, {"causal": True, "align": "top_left", "softcap": 1.5}),
    "local": (ref.local_attention_vjp, {"window": (2, 0)}),
    "local-top_left-scale": (ref.local_attention_vjp, {"window": (1, 2), "align": "top_left", "scale": 0.8}),
    "chunked": (ref.chunked_attention_vjp, {"chunk_size": 3, "causal": True}),
}

# (query lengths, key lengths) per sequence; empty sequences on either side included
LENGTHS = {
    "three": ([3, 5, 2], [4, 5, 6]),
    "empty-queries": ([0, 4, 3], [5, 3, 0]),
    "one": ([6], [6]),
}


def _packed(seed: int, q_lens: list[int], k_lens: list[int]) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    Tq, Tk = sum(q_lens), sum(k_lens)
    return {
        "q": rng.standard_normal((Tq, HQ, D)),
        "k": rng.standard_normal((Tk, HKV, D)),
        "v": rng.standard_normal((Tk, HKV, DV)),
        "dout": rng.standard_normal((Tq, HQ, DV)),
        "dlse": rng.standard_normal((Tq, HQ)),
        "sinks": rng.standard_normal(HQ),
        "cu_seqlens_q": np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32),
        "cu_seqlens_k": np.concatenate([[0], np.cumsum(k_lens)]).tolist(),
    }


def _dense(x: np.ndarray) -> np.ndarray:
    """One packed sequence ``(L, H, n)`` as a dense batch of one, ``(1, H, L, n)``."""
    return np.swapaxes(x, 0, 1)[None]


@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("sinks", [False, True], ids=["no-sinks", "sinks"])
def test_packed_gradients_are_the_dense_gradients_of_each_sequence(op: str, lengths: str, sinks: bool) -> None:
    vjp, options = OPS[op]
    q_lens, k_lens = LENGTHS[lengths]
    a = _packed(sorted(OPS).index(op), q_lens, k_lens)
    extra = {"sinks": a["sinks"]} if sinks else {}
    grads = vjp(
        a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"],
        cu_seqlens_q=a["cu_seqlens_q"], cu_seqlens_k=a["cu_seqlens_k"], **extra, **options,
    )  # fmt: skip
    assert len(grads) == 3 + sinks
    for grad, leaf in zip(grads, (a["q"], a["k"], a["v"]), strict=False):
        assert grad.shape == leaf.shape and grad.dtype == np.float64
    dsinks = np.zeros(HQ)
    cq, ck = a["cu_seqlens_q"], a["cu_seqlens_k"]
    for b in range(len(q_lens)):
        rq, rk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        if q_lens[b] == 0:  # no query: its keys get no gradient
            assert not grads[1][rk].any() and not grads[2][rk].any()
            continue
        if k_lens[b] == 0:  # no key: zero dq; with a sink every row adds its dlse
            assert not grads[0][rq].any()
            dsinks += a["dlse"][rq].sum(axis=0)
            continue
        dense = vjp(
            _dense(a["q"][rq]), _dense(a["k"][rk]), _dense(a["v"][rk]), _dense(a["dout"][rq]),
            dlse=_dense(a["dlse"][rq][..., None])[..., 0], **extra, **options,
        )  # fmt: skip
        for grad, rows, want in zip(grads[:3], (rq, rk, rk), dense[:3], strict=True):
            np.testing.assert_allclose(_dense(grad[rows]), want, rtol=1e-13, atol=1e-15)
        if sinks:
            dsinks += dense[3]
    if sinks:
        np.testing.assert_allclose(grads[3], dsinks, rtol=1e-13, atol=1e-15)


def test_a_nan_in_one_sequence_stays_in_it() -> None:
    a = _packed(7, [3, 4], [4, 5])
    a["k"][5, 1, 0] = np.nan  # key 1 of sequence 1
    a["v"][0, 0, 1] = np.inf  # key 0 of sequence 0, behind the window of every row
    dq, dk, dv = ref.local_attention_vjp(
        a["q"], a["k"], a["v"], a["dout"], window=(0, 1),
        cu_seqlens_q=a["cu_seqlens_q"], cu_seqlens_k=a["cu_seqlens_k"],
    )  # fmt: skip
    assert np.isfinite(dq[:3]).all() and np.isfinite(dk[:4]).all() and np.isfinite(dv[:4]).all()
    assert np.isnan(dq[3:, 2:]).any()  # query heads 2, 3 read kv head 1


def test_packed_upstream_gradients_have_the_packed_shapes() -> None:
    a = _packed(8, [2, 3], [2, 3])
    offsets = {"cu_seqlens_q": a["cu_seqlens_q"], "cu_seqlens_k": a["cu_seqlens_k"]}
    with pytest.raises(ValueError, match="dout"):
        ref.global_attention_vjp(a["q"], a["k"], a["v"], a["dout"][None], **offsets)
    with pytest.raises(ValueError, match="dlse"):
        ref.global_attention_vjp(a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"].T, **offsets)


@pytest.mark.parametrize(
    "extra, argument",
    [
        ({"bias": np.zeros((5, 5))}, "bias"),
        ({"kv_lengths": [2, 3]}, "kv_lengths"),
        ({"cu_seqlens_k": None}, "cu_seqlens_k"),
        ({"cu_seqlens_q": [0, 2, 4]}, "cu_seqlens_q"),
    ],
)
def test_invalid_packed_arguments_name_the_argument(extra: dict[str, Any], argument: str) -> None:
    a = _packed(9, [2, 3], [2, 3])
    kwargs = {"cu_seqlens_q": a["cu_seqlens_q"], "cu_seqlens_k": a["cu_seqlens_k"], **extra}
    with pytest.raises(ValueError, match=argument):
        ref.global_attention_vjp(a["q"], a["k"], a["v"], a["dout"], **kwargs)


def test_packed_gradients_match_finite_differences_of_the_per_sequence_forward() -> None:
    q_lens, k_lens = [3, 0, 4, 2], [5, 2, 4, 0]
    a = _packed(11, q_lens, k_lens)
    options = {"window": (2, 1), "softcap": 2.0}
    cq, ck = a["cu_seqlens_q"], a["cu_seqlens_k"]
    grads = ref.local_attention_vjp(
        a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"], cu_seqlens_q=cq, cu_seqlens_k=ck, **options
    )

    def loss() -> float:  # the forward of each sequence alone; a sequence without queries or keys adds 0
        total = 0.0
        for b in range(len(q_lens)):
            rq, rk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
            if q_lens[b] and k_lens[b]:
                out, lse = ref.local_attention(
                    _dense(a["q"][rq]), _dense(a["k"][rk]), _dense(a["v"][rk]), return_lse=True, **options
                )
                lse = np.where(np.isneginf(lse), 0.0, lse)
                total += float(np.sum(out * _dense(a["dout"][rq])) + np.sum(lse[0].T * a["dlse"][rq]))
        return total

    for name, grad in zip("qkv", grads, strict=True):
        np.testing.assert_allclose(grad, numeric_grad(loss, a[name]), atol=1e-7, rtol=1e-6, err_msg=name)


def test_packed_dsinks_match_finite_differences_of_the_packed_forward() -> None:
    a = _packed(12, [3, 0, 4, 2], [5, 2, 4, 0])
    options = {"chunk_size": 2, "causal": True, "cu_seqlens_q": a["cu_seqlens_q"], "cu_seqlens_k": a["cu_seqlens_k"]}
    grads = ref.chunked_attention_vjp(a["q"], a["k"], a["v"], a["dout"], dlse=a["dlse"], sinks=a["sinks"], **options)

    def loss() -> float:
        out, lse = ref.chunked_attention(a["q"], a["k"], a["v"], sinks=a["sinks"], return_lse=True, **options)
        return float(np.sum(out * a["dout"]) + np.sum(np.where(np.isneginf(lse), 0.0, lse) * a["dlse"]))

    for name, grad in zip(("q", "k", "v", "sinks"), grads, strict=True):
        np.testing.assert_allclose(grad, numeric_grad(loss, a[name]), atol=1e-7, rtol=1e-6, err_msg=name)
