"""Brute-force loop implementations of the attnref ops, and random case generators.

Written from the contract (``CONTRACT.md`` sections 2 and 3) alone: nothing here
imports attnref's pattern, validation or numerics code, so comparing these loops
with the vectorised reference is an independent check. Every rule is restated
here, one query (or one target step) at a time, in plain Python floats.

Not fast: meant for shapes of a handful of elements per axis.
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "MULTIHEAD_OPS",
    "key_allowed",
    "attention_bruteforce",
    "allowed_grid",
    "additive_bruteforce",
    "luong_bruteforce",
    "packed_bruteforce",
    "paged_bruteforce",
    "merge_bruteforce",
    "random_attention_case",
    "random_additive_case",
    "random_luong_case",
]

MULTIHEAD_OPS = ("global_attention", "local_attention", "chunked_attention")

INPUT_DTYPES = (np.float64, np.float32, np.float16, ml_dtypes.bfloat16)

NAN = float("nan")
NEG_INF = float("-inf")


# -- the rules, restated ----------------------------------------------------
def _side(side: int | None) -> int | None:
    """A window side: ``None`` and ``-1`` both mean unbounded."""
    return None if side is None or side == -1 else side


def window_sides(window: Any) -> tuple[int | None, int | None]:
    """``(left, right)`` of a window given as an int ``w`` (``(w, w)``) or a pair."""
    if isinstance(window, (int, np.integer)):
        return int(window), int(window)
    return _side(window[0]), _side(window[1])


def key_allowed(op: str, options: dict[str, Any], p: int, j: int) -> bool:
    """The op's pattern: may aligned position ``p`` see key ``j``?"""
    if op == "global_attention":
        return not options.get("causal", False) or j <= p
    if op == "local_attention":
        left, right = window_sides(options["window"])
        return (left is None or j >= p - left) and (right is None or j <= p + right)
    if op == "chunked_attention":
        c = options["chunk_size"]
        # Floor division: a negative p lies in a chunk that holds no key.
        same_chunk = math.floor(j / c) == math.floor(p / c)
        return same_chunk and (not options.get("causal", False) or j <= p)
    raise ValueError(f"unknown op {op!r}")


def _softmax(scores: dict[int, float], sink: float = NEG_INF) -> tuple[dict[int, float], float]:
    """Softmax over the allowed keys (dict key -> score) and a sink; returns (weights, lse).

    The sink is one more logit with no value (``-inf``: no sink):
    ``lse = log(exp(sink) + sum exp(s))``, ``P_j = exp(s_j - lse)``. No key, or
    every score ``-inf``: no weight, lse = the sink. A NaN score or sink (or a
    ``+inf`` one, whose ``exp(s - max)`` is ``inf - inf``) makes the row NaN.
    """
    values = [*scores.values(), sink]
    m = NAN if any(math.isnan(x) for x in values) else max(values)
    if math.isnan(m) or m == math.inf:
        return dict.fromkeys(scores, NAN), NAN
    if m == NEG_INF:
        return dict.fromkeys(scores, 0.0), NEG_INF
    e = {j: math.exp(s - m) for j, s in scores.items()}
    total = math.fsum([*e.values(), math.exp(sink - m)])
    return {j: x / total for j, x in e.items()}, m + math.log(total)


def _length(lengths: Any, b: int, default: int) -> int:
    return default if lengths is None else int(np.asarray(lengths)[b])


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def allowed_grid(
    op: str,
    shape: tuple[int, int, int, int],
    *,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: str = "bottom_right",
    **options: Any,
) -> np.ndarray:
    """Boolean ``(B, Hq, Lq, Lk)``: is key ``j`` allowed for query ``(b, h, i)``?"""
    B, Hq, Lq, Lk = shape
    full_mask = None if mask is None else np.broadcast_to(np.asarray(mask), shape)
    grid = np.zeros(shape, dtype=bool)
    for b in range(B):
        Lk_b, Lq_b = _length(kv_lengths, b, Lk), _length(q_lengths, b, Lq)
        offset = Lk_b - Lq_b if align == "bottom_right" else 0
        for h in range(Hq):
            for i in range(Lq_b):
                for j in range(Lk_b):
                    masked_out = full_mask is not None and not full_mask[b, h, i, j]
                    grid[b, h, i, j] = not masked_out and key_allowed(op, options, i + offset, j)
    return grid


# -- multi-head attention ---------------------------------------------------
def attention_bruteforce(
    op: str,
    q: Any,
    k: Any,
    v: Any,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: str = "bottom_right",
    sinks: Any = None,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(out, lse, weights)`` of a multi-head op, one query at a time.

    ``options`` are the op's pattern arguments (``causal``, ``window``,
    ``chunk_size``). Inputs of any floating dtype are read as float64. A sink
    applies to the rows of the sequence (``i < Lq_b``), not to padding rows.
    """
    q, k, v = _f64(q), _f64(k), _f64(v)
    B, Hq, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    full_bias = None if bias is None else np.broadcast_to(_f64(bias), (B, Hq, Lq, Lk))
    grid = allowed_grid(
        op, (B, Hq, Lq, Lk), mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, **options
    )
    out = np.zeros((B, Hq, Lq, Dv))
    lse = np.full((B, Hq, Lq), NEG_INF)
    weights = np.zeros((B, Hq, Lq, Lk))
    for b in range(B):
        for h in range(Hq):
            g = h // group  # query head h reads kv head h // (Hq // Hkv)
            for i in range(Lq):
                inside = i < _length(q_lengths, b, Lq)
                sink = float(_f64(sinks)[h]) if sinks is not None and inside else NEG_INF
                scores = {}
                for j in np.flatnonzero(grid[b, h, i]).tolist():
                    s = scale * math.fsum(float(q[b, h, i, d]) * float(k[b, g, j, d]) for d in range(D))
                    if softcap is not None:
                        s = softcap * math.tanh(s / softcap)
                    if full_bias is not None:
                        s += float(full_bias[b, h, i, j])
                    scores[j] = s
                P, lse[b, h, i] = _softmax(scores, sink)
                for j, p_ij in P.items():
                    weights[b, h, i, j] = p_ij
                for c in range(Dv):
                    out[b, h, i, c] = sum(p_ij * float(v[b, g, j, c]) for j, p_ij in P.items())
    return out, lse, weights


def packed_bruteforce(
    op: str, q: Any, k: Any, v: Any, *, cu_seqlens_q: Any, cu_seqlens_k: Any, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``(out (Tq, Hq, Dv), lse (Tq, Hq))`` of packed sequences: each one alone, densely, in a loop."""
    q, k, v = _f64(q), _f64(k), _f64(v)
    cq, ck = [int(x) for x in cu_seqlens_q], [int(x) for x in cu_seqlens_k]
    out = np.zeros((q.shape[0], q.shape[1], v.shape[2]))
    lse = np.full(q.shape[:2], NEG_INF)
    for b in range(len(cq) - 1):
        if cq[b + 1] == cq[b]:
            continue
        qb = np.stack([q[t] for t in range(cq[b], cq[b + 1])], axis=1)[None]  # (1, Hq, Lq_b, D)
        keys = range(ck[b], ck[b + 1])
        kb = np.stack([k[t] for t in keys], axis=1)[None] if keys else np.zeros((1, k.shape[1], 0, k.shape[2]))
        vb = np.stack([v[t] for t in keys], axis=1)[None] if keys else np.zeros((1, v.shape[1], 0, v.shape[2]))
        o, lse_b, _ = attention_bruteforce(op, qb, kb, vb, **kwargs)
        for n, t in enumerate(range(cq[b], cq[b + 1])):
            out[t], lse[t] = o[0, :, n], lse_b[0, :, n]
    return out, lse


def paged_bruteforce(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    *,
    block_table: Any,
    cache_seqlens: Any,
    causal: bool = False,
    window: Any = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """``(out, lse)`` of paged attention: each sequence's keys looked up one by one, then dense attention."""
    q, k_cache, v_cache = _f64(q), _f64(k_cache), _f64(v_cache)
    table, seqlens = np.asarray(block_table), [int(x) for x in cache_seqlens]
    n = k_cache.shape[1]
    B, Hkv = q.shape[0], k_cache.shape[2]
    Lk = max(max(seqlens), 1)
    k = np.zeros((B, Hkv, Lk, k_cache.shape[3]))
    v = np.zeros((B, Hkv, Lk, v_cache.shape[3]))
    for b in range(B):
        for t in range(seqlens[b]):
            block = int(table[b, t // n])
            k[b, :, t], v[b, :, t] = k_cache[block, t % n], v_cache[block, t % n]
    if window is None:
        op, options = "global_attention", {"causal": causal}
    else:
        left, right = window_sides(window)
        op, options = "local_attention", {"window": (left, 0 if causal else right)}
    out, lse, _ = attention_bruteforce(op, q, k, v, kv_lengths=seqlens, **options, **kwargs)
    return out, lse


def merge_bruteforce(outs: Any, lses: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(out, lse)`` of merged partial states, one position at a time, in Python floats."""
    outs, lses = _f64(outs), _f64(lses)
    out = np.zeros(outs.shape[1:])
    lse = np.zeros(lses.shape[1:])
    for index in np.ndindex(*lses.shape[1:]):
        parts = [float(lses[(n, *index)]) for n in range(lses.shape[0])]
        if any(math.isnan(x) or x == math.inf for x in parts):
            out[index], lse[index] = NAN, NAN
            continue
        seen = [n for n, x in enumerate(parts) if x != NEG_INF]  # a part that saw no key has weight 0
        if not seen:
            out[index], lse[index] = 0.0, NEG_INF
            continue
        m = max(parts[n] for n in seen)
        total = math.fsum(math.exp(parts[n] - m) for n in seen)
        lse[index] = m + math.log(total)
        for c in range(outs.shape[-1]):
            out[(*index, c)] = sum(math.exp(parts[n] - lse[index]) * float(outs[(n, *index, c)]) for n in seen)
    return out, lse


# -- attention pooling ------------------------------------------------------
def additive_bruteforce(
    x: Any,
    w_in: Any,
    b_in: Any,
    w_out: Any,
    b_out: Any = None,
    *,
    mask: Any = None,
    window: Any = None,
    center: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(context, weights)`` of additive attention pooling, one position at a time."""
    x, w_in, b_in, w_out = _f64(x), _f64(w_in), _f64(b_in), _f64(w_out)
    B, L, Din = x.shape
    Dh = w_in.shape[1]
    shift = 0.0 if b_out is None else float(np.asarray(b_out, dtype=np.float64).reshape(()))
    centers = np.full(B, L // 2) if center is None else np.broadcast_to(np.asarray(center), (B,))
    context, weights = np.zeros((B, Din)), np.zeros((B, L))
    for b in range(B):
        scores = {}
        for i in range(L):
            if mask is not None and not np.asarray(mask)[b, i]:
                continue
            if window is not None:
                left, right = window_sides(window)
                c = int(centers[b])
                if (left is not None and i < c - left) or (right is not None and i > c + right):
                    continue
            hidden = [math.tanh(math.fsum(x[b, i, d] * w_in[d, a] for d in range(Din)) + b_in[a]) for a in range(Dh)]
            scores[i] = math.fsum(hidden[a] * w_out[a] for a in range(Dh)) + shift
        a, _ = _softmax(scores)
        for i, a_i in a.items():
            weights[b, i] = a_i
        for d in range(Din):
            context[b, d] = sum(a_i * x[b, i, d] for i, a_i in a.items())
    return context, weights


def _luong_score(score: str, ht: np.ndarray, hs: np.ndarray, w_a: Any, v_a: Any) -> float:
    d = ht.shape[0]
    if score == "dot":
        return math.fsum(ht[e] * hs[e] for e in range(d))
    if score == "general":
        return math.fsum(ht[e] * w_a[e, f] * hs[f] for e in range(d) for f in range(d))
    joined = np.concatenate([ht, hs])  # concat(h_t, h_s), (2d,)
    hidden = [math.tanh(math.fsum(joined[e] * w_a[e, a] for e in range(2 * d))) for a in range(w_a.shape[1])]
    return math.fsum(hidden[a] * v_a[a] for a in range(len(hidden)))


def luong_bruteforce(
    h_t: Any,
    h_s: Any,
    *,
    score: str = "dot",
    w_a: Any = None,
    v_a: Any = None,
    mode: str = "global",
    half_width: int | None = None,
    w_p: Any = None,
    v_p: Any = None,
    source_lengths: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(context, weights)`` of Luong attention, one target step at a time.

    A NaN aligned position ``p_t`` (local-p) leaves the window undefined: every
    valid source position ``s < S_b`` then gets weight NaN, so the NaN reaches
    the row's outputs instead of being hidden by a failed comparison.
    """
    h_t, h_s = _f64(h_t), _f64(h_s)
    w_a, v_a, w_p, v_p = (None if a is None else _f64(a) for a in (w_a, v_a, w_p, v_p))
    B, T, d = h_t.shape
    S = h_s.shape[1]
    context, weights = np.zeros((B, T, d)), np.zeros((B, T, S))
    for b in range(B):
        S_b = _length(source_lengths, b, S)
        for t in range(T):
            p_t = _luong_position(mode, h_t[b, t], t, S_b, w_p, v_p)
            if math.isnan(p_t):
                a = dict.fromkeys(range(S_b), NAN)
            else:
                window = [s for s in range(S_b) if mode == "global" or abs(s - p_t) <= half_width]
                a, _ = _softmax({s: _luong_score(score, h_t[b, t], h_s[b, s], w_a, v_a) for s in window})
                if mode == "local-p":
                    sigma = half_width / 2
                    a = {s: a_s * math.exp(-((s - p_t) ** 2) / (2 * sigma**2)) for s, a_s in a.items()}
            for s, a_s in a.items():
                weights[b, t, s] = a_s
            for e in range(d):
                context[b, t, e] = sum(a_s * h_s[b, s, e] for s, a_s in a.items())
    return context, weights


def _luong_position(mode: str, ht: np.ndarray, t: int, S_b: int, w_p: Any, v_p: Any) -> float:
    """``p_t``: unused (0) for global, ``min(t, S_b - 1)`` for local-m, the predicted one for local-p."""
    if mode == "global":
        return 0.0
    if mode == "local-m":
        return float(min(t, S_b - 1))
    dp = w_p.shape[1]
    hidden = [math.tanh(math.fsum(ht[e] * w_p[e, a] for e in range(ht.shape[0]))) for a in range(dp)]
    gate = math.fsum(hidden[a] * v_p[a] for a in range(dp))
    return S_b / (1.0 + math.exp(-gate))


# -- random cases -----------------------------------------------------------
def _maybe(rng: np.random.Generator, probability: float = 0.5) -> bool:
    return bool(rng.random() < probability)


def _broadcast_shape(rng: np.random.Generator, full: tuple[int, ...]) -> tuple[int, ...]:
    """A random shape that broadcasts to ``full``: some axes 1, maybe leading axes dropped."""
    shape = tuple(1 if _maybe(rng, 0.4) else n for n in full)
    return shape[int(rng.integers(0, 3)) :]


def _lengths(rng: np.random.Generator, batch: int, upper: int) -> Any:
    lengths = rng.integers(0, upper + 1, size=batch)
    return lengths.tolist() if _maybe(rng) else lengths  # a sequence of ints or an int array


def random_window(rng: np.random.Generator, reach: int) -> Any:
    """A window in any accepted spelling: an int, or a pair of ints / None / -1."""
    if _maybe(rng, 0.25):
        return int(rng.integers(0, reach + 1))

    def side() -> int | None:
        r = rng.random()
        return None if r < 0.15 else -1 if r < 0.25 else int(rng.integers(0, reach + 1))

    pair = (side(), side())
    return list(pair) if _maybe(rng, 0.2) else pair


def random_attention_case(rng: np.random.Generator, op: str) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """Random small ``(q, k, v), kwargs`` for ``op``, every option drawn at random."""
    B, Hkv, group = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 4))
    Hq = Hkv * group
    Lq, Lk, D, Dv = (int(n) for n in rng.integers(1, [8, 8, 5, 4]))
    dtype = INPUT_DTYPES[int(rng.integers(0, len(INPUT_DTYPES)))]
    q = rng.standard_normal((B, Hq, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Lk, Dv)).astype(dtype)
    kwargs: dict[str, Any] = {"align": "bottom_right" if _maybe(rng) else "top_left"}
    if _maybe(rng, 0.3):
        kwargs["scale"] = float(rng.uniform(0.1, 2.0))
    if _maybe(rng, 0.3):
        kwargs["softcap"] = float(rng.uniform(0.5, 5.0))
    full = (B, Hq, Lq, Lk)
    if _maybe(rng, 0.4):
        bias = rng.standard_normal(_broadcast_shape(rng, full))
        if _maybe(rng, 0.3):  # -inf biases: keys allowed but with zero weight
            bias[rng.random(bias.shape) < 0.3] = -np.inf
        kwargs["bias"] = bias.astype(rng.choice([np.float64, np.float32]))
    if _maybe(rng, 0.4):
        kwargs["mask"] = rng.random(_broadcast_shape(rng, full)) < 0.7
    if _maybe(rng, 0.4):
        kwargs["kv_lengths"] = _lengths(rng, B, Lk)
    if _maybe(rng, 0.3):
        kwargs["q_lengths"] = _lengths(rng, B, Lq)
    if op == "global_attention":
        kwargs["causal"] = _maybe(rng)
    elif op == "local_attention":
        kwargs["window"] = random_window(rng, 4)
    else:
        kwargs["chunk_size"] = int(rng.integers(1, 9))
        kwargs["causal"] = _maybe(rng)
    return (q, k, v), kwargs


def random_additive_case(rng: np.random.Generator) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Random small ``(x, w_in, b_in, w_out, b_out), kwargs`` for ``additive_attention``."""
    B, L, Din, Dh = (int(n) for n in rng.integers(1, [4, 9, 4, 4]))
    dtype = INPUT_DTYPES[int(rng.integers(0, len(INPUT_DTYPES)))]
    x = rng.standard_normal((B, L, Din)).astype(dtype)
    w_in = rng.standard_normal((Din, Dh)).astype(dtype)
    b_in = rng.standard_normal(Dh).astype(dtype)
    w_out = (2 * rng.standard_normal(Dh)).astype(dtype)
    b_out = None if _maybe(rng) else float(rng.standard_normal())
    kwargs: dict[str, Any] = {}
    if _maybe(rng, 0.4):
        kwargs["mask"] = rng.random((B, L)) < 0.7
    if _maybe(rng, 0.6):
        kwargs["window"] = random_window(rng, 3)
        if _maybe(rng):
            kwargs["center"] = int(rng.integers(0, L)) if _maybe(rng) else rng.integers(0, L, size=B)
    return (x, w_in, b_in, w_out, b_out), kwargs


def random_luong_case(rng: np.random.Generator) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """Random small ``(h_t, h_s), kwargs`` for ``luong_attention``, every score and mode."""
    B, T, S, d = (int(n) for n in rng.integers(1, [4, 7, 9, 4]))
    dtype = INPUT_DTYPES[int(rng.integers(0, len(INPUT_DTYPES)))]
    h_t = rng.standard_normal((B, T, d)).astype(dtype)
    h_s = rng.standard_normal((B, S, d)).astype(dtype)
    score = ("dot", "general", "concat")[int(rng.integers(0, 3))]
    mode = ("global", "local-m", "local-p")[int(rng.integers(0, 3))]
    kwargs: dict[str, Any] = {"score": score, "mode": mode}
    if score == "general":
        kwargs["w_a"] = rng.standard_normal((d, d)).astype(dtype)
    elif score == "concat":
        da = int(rng.integers(1, 4))
        kwargs["w_a"] = rng.standard_normal((2 * d, da)).astype(dtype)
        kwargs["v_a"] = rng.standard_normal(da).astype(dtype)
    if mode == "local-m":
        kwargs["half_width"] = int(rng.integers(0, 4))
    elif mode == "local-p":
        dp = int(rng.integers(1, 4))
        kwargs["half_width"] = int(rng.integers(1, 4))
        kwargs["w_p"] = rng.standard_normal((d, dp)).astype(dtype)
        kwargs["v_p"] = (2 * rng.standard_normal(dp)).astype(dtype)
    if _maybe(rng, 0.4):
        kwargs["source_lengths"] = _lengths(rng, B, S)
    return (h_t, h_s), kwargs
