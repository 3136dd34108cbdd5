"""``attnref.validation``: the argument parsing every backend shares (sinks, varlen, paged, merge).

Each malformed input is an error of the documented class whose message starts
with the offending argument's name (contract sections 1, 7 to 10).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from attnref import InvalidArgumentError, InvalidTypeError
from attnref.patterns import Pattern
from attnref.validation import check_attention, check_merge, check_paged, host_array, host_integers

V = InvalidArgumentError
T = InvalidTypeError

# Dense: B = 2, Hq = 4, Hkv = 2, Lq = 3, Lk = 5, D = 4, Dv = 3.
Q, K, VV = np.zeros((2, 4, 3, 4)), np.zeros((2, 2, 5, 4)), np.zeros((2, 2, 5, 3))
# Packed: 3 sequences, q rows 0:2, 2:2, 2:6 (Tq = 6), keys 0:3, 3:7, 7:7 (Tk = 7).
PQ, PK, PV = np.zeros((6, 4, 4)), np.zeros((7, 2, 4)), np.zeros((7, 2, 3))
CU_Q, CU_K = np.array([0, 2, 2, 6]), np.array([0, 3, 7, 7])
# Paged: B = 2, 5 blocks of 4 slots, a table of 3 entries per sequence.
CACHE_K, CACHE_V = np.zeros((5, 4, 2, 4)), np.zeros((5, 4, 2, 3))
TABLE, SEQLENS = np.array([[4, 0, -1], [1, 2, 3]]), np.array([5, 12])


def dense(**changes: Any) -> Callable[[], Any]:
    return lambda: check_attention(**{"q": Q, "k": K, "v": VV, **changes})


def packed(**changes: Any) -> Callable[[], Any]:
    args = {"q": PQ, "k": PK, "v": PV, "cu_seqlens_q": CU_Q, "cu_seqlens_k": CU_K, **changes}
    return lambda: check_attention(**args)


def paged(**changes: Any) -> Callable[[], Any]:
    args = {"q": Q, "k_cache": CACHE_K, "v_cache": CACHE_V, "block_table": TABLE, "cache_seqlens": SEQLENS}
    return lambda: check_paged(**{**args, **changes})


def merge(outs: Any = None, lses: Any = None) -> Callable[[], Any]:
    outs = np.zeros((3, 2, 5, 4)) if outs is None else outs
    lses = np.zeros((3, 2, 5)) if lses is None else lses
    return lambda: check_merge(outs, lses)


CASES = [
    # -- sinks (section 7)
    pytest.param(dense(sinks=np.zeros(2)), V, "sinks", id="sinks-per-kv-head"),
    pytest.param(dense(sinks=np.zeros((1, 4))), V, "sinks", id="sinks-2d"),
    pytest.param(dense(sinks=np.zeros(4, dtype=np.int64)), T, "sinks", id="sinks-integer"),
    pytest.param(dense(sinks=np.zeros(4, dtype=bool)), T, "sinks", id="sinks-bool"),
    pytest.param(dense(sinks=[0.0] * 4), T, "sinks", id="sinks-list"),
    pytest.param(packed(sinks=np.zeros(3)), V, "sinks", id="packed-sinks-wrong-heads"),
    # -- packed sequences (section 8)
    pytest.param(dense(cu_seqlens_q=CU_Q), V, "cu_seqlens_k", id="only-cu-q"),
    pytest.param(dense(cu_seqlens_k=CU_K), V, "cu_seqlens_q", id="only-cu-k"),
    pytest.param(packed(cu_seqlens_q=np.array([1, 2, 2, 6])), V, "cu_seqlens_q", id="cu-q-not-from-0"),
    pytest.param(packed(cu_seqlens_k=np.array([0, 4, 3, 7])), V, "cu_seqlens_k", id="cu-k-decreasing"),
    pytest.param(packed(cu_seqlens_q=np.array([0, 2, 2, 5])), V, "cu_seqlens_q", id="cu-q-short-of-total"),
    pytest.param(packed(cu_seqlens_k=np.array([0, 3, 7, 8])), V, "cu_seqlens_k", id="cu-k-past-total"),
    pytest.param(packed(cu_seqlens_q=np.array([0, 6])), V, "cu_seqlens_k", id="cu-lengths-differ"),
    pytest.param(packed(cu_seqlens_q=np.array([6])), V, "cu_seqlens_q", id="cu-q-no-sequence"),
    pytest.param(packed(cu_seqlens_q=np.array([[0, 2, 2, 6]])), V, "cu_seqlens_q", id="cu-q-2d"),
    pytest.param(packed(cu_seqlens_k=np.array([0.0, 3, 7, 7])), T, "cu_seqlens_k", id="cu-k-float"),
    pytest.param(packed(cu_seqlens_q=np.array([False, True])), T, "cu_seqlens_q", id="cu-q-bool"),
    pytest.param(packed(bias=np.zeros(1)), V, "bias", id="packed-with-bias"),
    pytest.param(packed(mask=np.ones(1, dtype=bool)), V, "mask", id="packed-with-mask"),
    pytest.param(packed(kv_lengths=[1, 1, 1]), V, "kv_lengths", id="packed-with-kv-lengths"),
    pytest.param(packed(q_lengths=[1, 1, 1]), V, "q_lengths", id="packed-with-q-lengths"),
    pytest.param(packed(q=Q), V, "q", id="packed-q-rank-4"),
    pytest.param(packed(k=PK[None]), V, "k", id="packed-k-rank-4"),
    pytest.param(packed(v=PV[:6]), V, "v", id="packed-v-length"),
    pytest.param(packed(k=np.zeros((7, 3, 4)), v=np.zeros((7, 3, 3))), V, "k", id="packed-head-ratio"),
    pytest.param(packed(q=PQ[:, :, :0]), V, "q", id="packed-q-no-features"),
    pytest.param(packed(k=PK.astype(np.float32)), T, "k", id="packed-mixed-dtypes"),
    # -- paged KV cache (section 9)
    pytest.param(paged(block_table=np.array([[4, 5, -1], [1, 2, 3]])), V, "block_table", id="table-entry-past-end"),
    pytest.param(paged(block_table=np.array([[-1, 0, -1], [1, 2, 3]])), V, "block_table", id="table-negative-used"),
    pytest.param(paged(block_table=TABLE[:1]), V, "block_table", id="table-rows"),
    pytest.param(paged(block_table=TABLE[0]), V, "block_table", id="table-1d"),
    pytest.param(paged(block_table=TABLE.astype(float)), T, "block_table", id="table-float"),
    pytest.param(paged(cache_seqlens=np.array([5, 13])), V, "cache_seqlens", id="seqlens-past-capacity"),
    pytest.param(paged(cache_seqlens=np.array([-1, 3])), V, "cache_seqlens", id="seqlens-negative"),
    pytest.param(paged(cache_seqlens=np.array([5])), V, "cache_seqlens", id="seqlens-shape"),
    pytest.param(paged(cache_seqlens=None), V, "cache_seqlens", id="seqlens-missing"),
    pytest.param(paged(cache_seqlens=np.array([5.0, 3.0])), T, "cache_seqlens", id="seqlens-float"),
    pytest.param(paged(v_cache=CACHE_V[:4]), V, "v_cache", id="v-cache-blocks"),
    pytest.param(paged(v_cache=np.zeros((5, 4, 1, 3))), V, "v_cache", id="v-cache-heads"),
    pytest.param(paged(k_cache=np.zeros((5, 4, 3, 4)), v_cache=np.zeros((5, 4, 3, 3))), V, "k_cache", id="ratio"),
    pytest.param(paged(k_cache=np.zeros((5, 4, 2, 2))), V, "k_cache", id="k-cache-head-size"),
    pytest.param(paged(k_cache=CACHE_K[0]), V, "k_cache", id="k-cache-rank"),
    pytest.param(paged(q=Q.astype(np.float32)), T, "k_cache", id="paged-mixed-dtypes"),
    pytest.param(paged(sinks=np.zeros(2)), V, "sinks", id="paged-sinks"),
    pytest.param(paged(window=(-2, 0)), V, "window[0]", id="paged-window"),
    pytest.param(paged(causal=1), T, "causal", id="paged-causal"),
    pytest.param(paged(align="left"), V, "align", id="paged-align"),
    pytest.param(paged(scale=0.0), V, "scale", id="paged-scale"),
    # -- merging states (section 10)
    pytest.param(merge(np.zeros((0, 2, 4)), np.zeros((0, 2))), V, "outs", id="merge-no-part"),
    pytest.param(merge(np.zeros(3), np.zeros(3)), V, "outs", id="merge-outs-1d"),
    pytest.param(merge(lses=np.zeros((3, 2, 4))), V, "lses", id="merge-lses-shape"),
    pytest.param(merge(lses=np.zeros((2, 2, 5))), V, "lses", id="merge-parts-differ"),
    pytest.param(merge(outs=np.zeros((3, 2, 5, 4), dtype=np.int32)), T, "outs", id="merge-outs-int"),
    pytest.param(merge(lses=np.zeros((3, 2, 5), dtype=np.complex64)), T, "lses", id="merge-lses-complex"),
    pytest.param(merge(lses=[[0.0]]), T, "lses", id="merge-lses-list"),
]


@pytest.mark.parametrize(("call", "error", "argument"), CASES)
def test_invalid_input_raises(call: Callable[[], Any], error: type[Exception], argument: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert str(info.value).startswith(f"{argument}:"), str(info.value)


def test_sinks_are_a_float64_host_copy() -> None:
    for dtype in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64):
        sinks = np.array([0.5, -np.inf, np.nan, 3.0], dtype=dtype)
        args = check_attention(Q, K, VV, sinks=sinks)  # the sinks' dtype is independent of q's
        assert args.sinks.dtype == np.float64
        np.testing.assert_array_equal(args.sinks, sinks.astype(np.float64))
    assert check_attention(Q, K, VV).sinks is None


def test_packed_arguments() -> None:
    args = check_attention(PQ, PK, PV, cu_seqlens_q=list(CU_Q), cu_seqlens_k=CU_K.astype(np.int32), align="top_left")
    assert args.packed and (args.batch, args.q_len, args.kv_len) == (3, 6, 7)
    assert (args.q_heads, args.kv_heads, args.head_dim, args.value_dim, args.group) == (4, 2, 4, 3, 2)
    assert args.cu_seqlens_q.dtype == args.cu_seqlens_k.dtype == np.int64
    np.testing.assert_array_equal(args.q_lens(), [2, 0, 4])
    np.testing.assert_array_equal(args.kv_lens(), [3, 4, 0])
    np.testing.assert_array_equal(args.offsets(), [0, 0, 0])
    bottom = check_attention(PQ, PK, PV, cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K)
    np.testing.assert_array_equal(bottom.offsets(), [1, 4, -4])  # per sequence, never over the packed totals
    assert not check_attention(Q, K, VV).packed


def test_packed_sequences_may_all_be_empty() -> None:
    args = check_attention(PQ[:0], PK[:0], PV[:0], cu_seqlens_q=[0, 0], cu_seqlens_k=[0, 0])
    assert (args.batch, args.q_len, args.kv_len) == (1, 0, 0)


def test_dense_lengths_and_offsets() -> None:
    args = check_attention(Q, K, VV, kv_lengths=[5, 2], q_lengths=np.array([1, 3], dtype=np.uint8))
    np.testing.assert_array_equal(args.q_lens(), [1, 3])
    np.testing.assert_array_equal(args.kv_lens(), [5, 2])
    np.testing.assert_array_equal(args.offsets(), [4, -1])
    np.testing.assert_array_equal(check_attention(Q, K, VV).offsets(), [2, 2])


def test_paged_arguments() -> None:
    args = check_paged(Q, CACHE_K, CACHE_V, block_table=TABLE, cache_seqlens=SEQLENS, window=(2, 1), causal=True)
    assert args.pattern == Pattern.window(2, 0)  # causal narrows the right side to 0
    assert (args.num_blocks, args.block_size) == (5, 4)
    a = args.attention
    assert (a.batch, a.q_heads, a.kv_heads, a.q_len, a.kv_len, a.head_dim, a.value_dim) == (2, 4, 2, 3, 12, 4, 3)
    np.testing.assert_array_equal(a.kv_lengths, SEQLENS)
    np.testing.assert_array_equal(args.used_blocks(), [2, 3])
    blocks, slots = args.key_slots(0)
    np.testing.assert_array_equal(blocks, [4, 4, 4, 4, 0])  # the -1 entry past the last used block is never read
    np.testing.assert_array_equal(slots, [0, 1, 2, 3, 0])
    patterns = {
        (None, False): Pattern.full(),
        (None, True): Pattern.full(causal=True),
        ((3, None), False): Pattern.window(3, None),
        (-1, True): Pattern.window(None, 0),
    }
    for (window, causal), expected in patterns.items():
        got = check_paged(Q, CACHE_K, CACHE_V, block_table=TABLE, cache_seqlens=SEQLENS, window=window, causal=causal)
        assert got.pattern == expected


def test_paged_tables_may_share_blocks_and_hold_anything_past_the_end() -> None:
    table = np.array([[2, 2, 10**9], [2, -7, -7]])
    args = check_paged(Q, CACHE_K, CACHE_V, block_table=table, cache_seqlens=[8, 0])
    np.testing.assert_array_equal(args.used_blocks(), [2, 0])


def test_merge_arguments() -> None:
    args = check_merge(np.zeros((3, 2, 5, 4), dtype=np.float16), np.zeros((3, 2, 5), dtype=np.float32))
    assert (args.parts, args.shape, args.value_dim) == (3, (2, 5), 4)
    assert check_merge(np.zeros((1, 4)), np.zeros(1)).shape == ()


# -- arrays from other libraries (issue 9 item 7) -----------------------------------
def test_torch_tensors_that_require_grad_or_are_bfloat16_come_to_the_host() -> None:
    torch = pytest.importorskip("torch")
    sinks = torch.tensor([0.5, 1.0, -2.0, 3.0], requires_grad=True)
    np.testing.assert_array_equal(check_attention(Q, K, VV, sinks=sinks).sinks, [0.5, 1.0, -2.0, 3.0])
    bf16 = torch.tensor([1.5, -3.0], dtype=torch.bfloat16, requires_grad=True)
    host = host_array("x", bf16)
    assert host.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(host.astype(np.float64), [1.5, -3.0])
    lengths = check_attention(Q, K, VV, kv_lengths=torch.tensor([5, 1], dtype=torch.int32)).kv_lengths
    np.testing.assert_array_equal(lengths, [5, 1])


def test_torch_meta_and_sparse_tensors_name_the_argument() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidArgumentError, match=r"^kv_lengths:"):
        check_attention(Q, K, VV, kv_lengths=torch.tensor([5, 1], device="meta"))
    with pytest.raises(InvalidArgumentError, match=r"^cu_seqlens_q:"):
        packed(cu_seqlens_q=torch.tensor(CU_Q, device="meta"))()
    with pytest.raises(InvalidArgumentError, match=r"^q:"):
        check_attention(torch.zeros(2, 4, 3, 4, device="meta"), K, VV)
    with pytest.raises(InvalidTypeError, match=r"^bias:"):
        check_attention(Q, K, VV, bias=torch.zeros(2, 4, 3, 5).to_sparse())
    with pytest.raises(InvalidTypeError, match=r"^cache_seqlens:"):
        paged(cache_seqlens=torch.tensor([5, 12]).to_sparse())()


def test_host_integers_rejects_what_is_not_an_integer_array() -> None:
    with pytest.raises(InvalidTypeError, match=r"^n:"):
        host_integers("n", [1.5, 2])
    with pytest.raises(InvalidTypeError, match=r"^n:"):
        host_integers("n", [[1], [2, 3]])
    with pytest.raises(InvalidArgumentError, match=r"^n:"):
        host_integers("n", np.array([2**64 - 1], dtype=np.uint64))
    np.testing.assert_array_equal(host_integers("n", (np.int8(3), 4)), [3, 4])


def test_reference_ops_take_torch_tensors_that_require_grad() -> None:
    """Issue 9 item 7 (reference side): the values are copied, never an error without the argument's name."""
    torch = pytest.importorskip("torch")
    from attnref.reference import global_attention, merge_attention_states, paged_attention

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in ((1, 2, 3, 4), (1, 1, 5, 4), (1, 1, 5, 2))]
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    lengths = torch.tensor([4])
    np.testing.assert_array_equal(
        global_attention(*tensors, kv_lengths=lengths, sinks=torch.zeros(2, requires_grad=True)),
        global_attention(*arrays, kv_lengths=[4], sinks=np.zeros(2)),
    )
    bf16 = [t.detach().to(torch.bfloat16) for t in tensors]
    assert global_attention(*bf16).dtype == np.float64
    out, lse = merge_attention_states(torch.ones(2, 3, 1, requires_grad=True), torch.zeros(2, 3))
    np.testing.assert_allclose(lse, np.log(2.0))
    np.testing.assert_array_equal(out, 1.0)
    cache = torch.zeros(2, 2, 1, 4, dtype=torch.float64, requires_grad=True)
    paged_attention(tensors[0], cache, cache, block_table=torch.tensor([[1, 0]]), cache_seqlens=torch.tensor([3]))
    with pytest.raises(InvalidArgumentError, match=r"^kv_lengths:"):
        global_attention(*arrays, kv_lengths=torch.tensor([4], device="meta"))
    with pytest.raises(InvalidArgumentError, match=r"^q:"):
        global_attention(torch.zeros(1, 2, 3, 4, device="meta"), *arrays[1:])


# -- AttentionArgs.allowed: the dense allowed keys a wrapping backend hands to its library ----------
@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("op", ["global_attention", "local_attention", "chunked_attention"])
def test_allowed_is_the_brute_force_grid(op: str, seed: int) -> None:
    """Pattern at the aligned position, kv_lengths, q_lengths and mask, as the loop oracle (which imports none
    of the rules) spells them; shape ``(B, 1, Lq, Lk)``, or per head with a per-head mask."""
    from bruteforce import allowed_grid, random_attention_case

    from attnref.validation import chunk_pattern, full_pattern, window_pattern

    (q, k, v), kwargs = random_attention_case(np.random.default_rng(seed), op)
    pattern = {
        "global_attention": lambda: full_pattern(kwargs.get("causal", False)),
        "local_attention": lambda: window_pattern(kwargs["window"]),
        "chunked_attention": lambda: chunk_pattern(kwargs["chunk_size"], kwargs.get("causal", False)),
    }[op]()
    options = {
        n: kwargs[n] for n in ("scale", "softcap", "bias", "mask", "kv_lengths", "q_lengths", "align") if n in kwargs
    }
    args = check_attention(q, k, v, **options)
    got = args.allowed(pattern, kwargs.get("mask"))
    assert got.dtype == bool and got.shape[0] == q.shape[0] and got.shape[2:] == (q.shape[2], k.shape[2])
    assert got.shape[1] in (1, q.shape[1])
    rules = {n: kwargs[n] for n in ("causal", "window", "chunk_size") if n in kwargs}
    expected = allowed_grid(op, args.scores_shape, mask=kwargs.get("mask"), kv_lengths=kwargs.get("kv_lengths"),
                            q_lengths=kwargs.get("q_lengths"), align=kwargs["align"], **rules)  # fmt: skip
    np.testing.assert_array_equal(np.broadcast_to(got, args.scores_shape), expected)


def test_allowed_names_the_offsets_for_packed_inputs() -> None:
    args = check_attention(PQ, PK, PV, cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K)
    with pytest.raises(V, match=r"^cu_seqlens_q"):
        args.allowed(Pattern.full(False))
