"""Seeded random cases: small random configurations drawn from a version-proof stream.

For op ``op``, seed ``S`` and index ``n`` the case ``random-s<S>-<n>`` draws a
small *configuration* (sizes, options, which optional inputs are present) and
then its arrays from one :class:`~attnref.conformance.randomness.CaseRandom`
stream seeded with ``(crc32(op), S, n)``. A case therefore depends on nothing
but its own id: not on how many examples were asked for, not on the other
cases, not on any dependency's version (see
:mod:`attnref.conformance.randomness`). Sizes stay small (sequence lengths up
to 9, feature sizes up to 8) so a few dozen examples take well under a second
on any backend.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from attnref.conformance.cases import GRADIENT_OF, Case
from attnref.conformance.gradients import with_upstream
from attnref.conformance.randomness import CaseRandom, case_rng

__all__ = ["MAX_LENGTH", "MAX_DIM", "config", "random_case", "random_cases"]

#: Largest sequence length of a random case.
MAX_LENGTH = 9
#: Largest feature size of a random case.
MAX_DIM = 8


def _maybe(rng: CaseRandom, draw: Any, p_none: float = 0.5) -> Any:
    """``None`` with probability ``p_none``, else ``draw()``."""
    return None if rng.boolean(p_none) else draw()


def _window_side(rng: CaseRandom) -> int | None:
    kind = rng.integers(0, 4)
    return None if kind == 0 else -1 if kind == 1 else rng.integers(0, MAX_LENGTH + 2)


def _lengths(rng: CaseRandom, batch: int, longest: int) -> list[int]:
    return [rng.integers(0, longest + 1) for _ in range(batch)]


def _multihead(rng: CaseRandom, op: str) -> dict[str, Any]:
    group, kv_heads = rng.integers(1, 4), rng.integers(1, 3)
    c: dict[str, Any] = {
        "B": rng.integers(1, 3),
        "Hq": group * kv_heads,
        "Hkv": kv_heads,
        "Lq": rng.integers(1, MAX_LENGTH + 1),
        "Lk": rng.integers(1, MAX_LENGTH + 1),
        "D": rng.integers(1, MAX_DIM + 1),
        "Dv": rng.integers(1, MAX_DIM + 1),
        "magnitude": rng.choice([0.5, 1.0, 3.0]),
    }
    if op == "global_attention":
        c["causal"] = rng.boolean()
    elif op == "local_attention":
        c["window"] = rng.integers(0, MAX_LENGTH + 1) if rng.boolean(0.3) else (_window_side(rng), _window_side(rng))
    else:
        c["chunk_size"] = rng.integers(1, MAX_LENGTH + 3)
        c["causal"] = rng.boolean()
    c["align"] = rng.choice(["bottom_right", "top_left"])
    c["scale"] = _maybe(rng, lambda: round(0.05 + 1.95 * rng.random(), 4))
    c["softcap"] = _maybe(rng, lambda: round(0.5 + 19.5 * rng.random(), 4))
    c["bias"] = rng.choice([None, "full", "rows", "heads"])
    c["mask"] = rng.choice([None, "full", "rows"])
    c["kv_lengths"] = _maybe(rng, lambda: _lengths(rng, c["B"], c["Lk"]))
    c["q_lengths"] = _maybe(rng, lambda: _lengths(rng, c["B"], c["Lq"]))
    c["return_lse"] = rng.boolean()
    return c


def _additive(rng: CaseRandom) -> dict[str, Any]:
    c: dict[str, Any] = {
        "B": rng.integers(1, 4),
        "L": rng.integers(1, MAX_LENGTH + 1),
        "Din": rng.integers(1, MAX_DIM + 1),
        "Dh": rng.integers(1, MAX_DIM + 1),
    }
    kind = rng.integers(0, 3)
    c["window"] = None if kind == 0 else rng.integers(0, MAX_LENGTH + 1) if kind == 1 else (
        _window_side(rng), _window_side(rng))  # fmt: skip
    c["center"] = None
    if c["window"] is not None:
        kind = rng.integers(0, 3)
        if kind == 1:
            c["center"] = rng.integers(0, c["L"])
        elif kind == 2:
            c["center"] = [rng.integers(0, c["L"]) for _ in range(c["B"])]
    c["mask"] = rng.boolean()
    c["b_out"] = _maybe(rng, lambda: round(-2.0 + 4.0 * rng.random(), 4))
    c["magnitude"] = rng.choice([0.5, 1.0, 4.0])
    return c


def _luong(rng: CaseRandom) -> dict[str, Any]:
    c: dict[str, Any] = {
        "B": rng.integers(1, 3),
        "T": rng.integers(1, MAX_LENGTH + 1),
        "S": rng.integers(1, MAX_LENGTH + 1),
        "d": rng.integers(1, MAX_DIM + 1),
    }
    c["score"] = rng.choice(["dot", "general", "concat"])
    c["mode"] = rng.choice(["global", "local-m", "local-p"])
    c["half_width"] = None if c["mode"] == "global" else rng.integers(int(c["mode"] == "local-p"), 6)
    c["da"], c["dp"] = rng.integers(1, MAX_DIM + 1), rng.integers(1, MAX_DIM + 1)
    c["source_lengths"] = _maybe(rng, lambda: _lengths(rng, c["B"], c["S"]))
    c["magnitude"] = rng.choice([0.3, 0.7, 1.5])
    return c


def config(op: str, rng: CaseRandom) -> dict[str, Any]:
    """A random configuration of ``op`` drawn from ``rng``."""
    if op == "additive_attention":
        return _additive(rng)
    if op == "luong_attention":
        return _luong(rng)
    return _multihead(rng, op)


def _describe(c: dict[str, Any]) -> str:
    skip = {"magnitude"}
    return ", ".join(f"{k}={v!r}" for k, v in c.items() if k not in skip and v is not None and v is not False)


def _multihead_case(op: str, case_id: str, c: dict[str, Any], rng: CaseRandom) -> Case:
    B, Hq, Hkv, Lq, Lk = c["B"], c["Hq"], c["Hkv"], c["Lq"], c["Lk"]
    inputs = {
        "q": rng.standard_normal((B, Hq, Lq, c["D"])) * c["magnitude"],
        "k": rng.standard_normal((B, Hkv, Lk, c["D"])) * c["magnitude"],
        "v": rng.standard_normal((B, Hkv, Lk, c["Dv"])),
    }
    bias_shapes = {"full": (B, Hq, Lq, Lk), "rows": (Lq, Lk), "heads": (1, Hq, 1, Lk)}
    if c["bias"] is not None:
        inputs["bias"] = rng.standard_normal(bias_shapes[c["bias"]])
    options: dict[str, Any] = {name: c[name] for name in ("causal", "window", "chunk_size") if name in c}
    options.update(align=c["align"], return_lse=c["return_lse"])
    for name in ("scale", "softcap"):
        if c[name] is not None:
            options[name] = c[name]
    if c["mask"] is not None:
        options["mask"] = rng.random(bias_shapes[c["mask"]]) < 0.7
    for name in ("kv_lengths", "q_lengths"):
        if c[name] is not None:
            options[name] = np.array(c[name], dtype=np.int64)
    return Case(op, case_id, inputs, options, note=_describe(c))


def _additive_case(case_id: str, c: dict[str, Any], rng: CaseRandom) -> Case:
    inputs = {
        "x": rng.standard_normal((c["B"], c["L"], c["Din"])),
        "w_in": rng.standard_normal((c["Din"], c["Dh"])),
        "b_in": rng.standard_normal(c["Dh"]) * 0.5,
        "w_out": rng.standard_normal(c["Dh"]) * c["magnitude"],
    }
    options: dict[str, Any] = {}
    if c["window"] is not None:
        options["window"] = c["window"]
    if c["center"] is not None:
        options["center"] = np.array(c["center"], dtype=np.int64) if isinstance(c["center"], list) else c["center"]
    if c["mask"]:
        options["mask"] = rng.random((c["B"], c["L"])) < 0.7
    if c["b_out"] is not None:
        options["b_out"] = c["b_out"]
    return Case("additive_attention", case_id, inputs, options, note=_describe(c))


def _luong_case(case_id: str, c: dict[str, Any], rng: CaseRandom) -> Case:
    B, d = c["B"], c["d"]
    inputs = {
        "h_t": rng.standard_normal((B, c["T"], d)) * c["magnitude"],
        "h_s": rng.standard_normal((B, c["S"], d)) * c["magnitude"],
    }
    if c["score"] == "general":
        inputs["w_a"] = rng.standard_normal((d, d)) * 0.5
    elif c["score"] == "concat":
        inputs["w_a"] = rng.standard_normal((2 * d, c["da"])) * 0.5
        inputs["v_a"] = rng.standard_normal(c["da"])
    if c["mode"] == "local-p":
        inputs["w_p"] = rng.standard_normal((d, c["dp"]))
        inputs["v_p"] = rng.standard_normal(c["dp"])
    options: dict[str, Any] = {"score": c["score"], "mode": c["mode"]}
    if c["half_width"] is not None:
        options["half_width"] = c["half_width"]
    if c["source_lengths"] is not None:
        options["source_lengths"] = np.array(c["source_lengths"], dtype=np.int64)
    return Case("luong_attention", case_id, inputs, options, note=_describe(c))


def random_case(op: str, seed: int, index: int) -> Case:
    """The random case ``random-s<seed>-<index>`` of ``op`` (it depends on nothing else).

    A gradient op's case is its forward op's random case with the same id (a
    quarter of them with sinks added, a quarter replaced by packed sequences:
    :func:`_gradient_variant`), plus seeded ``dout`` (and, half the time, ``dlse``).
    """
    if op in ("paged_attention", "merge_attention_states"):
        from attnref.conformance.states import random_state_case

        return random_state_case(op, seed, index)
    if op in GRADIENT_OF:
        forward = _gradient_variant(op, random_case(GRADIENT_OF[op], seed, index), seed, index)
        return with_upstream(forward, dlse=case_rng(op, seed, index).boolean())
    rng = case_rng(op, seed, index)
    c = config(op, rng)
    case_id = f"random-s{seed}-{index:03d}"
    if op == "additive_attention":
        return _additive_case(case_id, c, rng)
    if op == "luong_attention":
        return _luong_case(case_id, c, rng)
    return _multihead_case(op, case_id, c, rng)


def _gradient_variant(op: str, forward: Case, seed: int, index: int) -> Case:
    """The forward case of a random gradient case: as drawn (half the time), with sinks (a quarter;
    one of them ``-inf`` now and then), or packed sequences of random lengths, empty ones included,
    with the forward's pattern, alignment, scale and softcap (a quarter; with sinks half of those).

    Drawn from a stream of its own (``op/variant``), so the forward draws stay those of the forward op.
    """
    rng = case_rng(f"{op}/variant", seed, index)
    kind = rng.choice(["dense", "dense", "sinks", "packed"])
    if kind == "dense":
        return forward
    _, Hq, _, D = forward.inputs["q"].shape
    Hkv, Dv = forward.inputs["v"].shape[1], forward.inputs["v"].shape[-1]

    def sinks() -> np.ndarray:
        values = rng.standard_normal(Hq) * 2.0
        if rng.boolean(0.25):
            values[rng.integers(0, Hq)] = -np.inf
        return values

    if kind == "sinks":
        return replace(forward, inputs={**forward.inputs, "sinks": sinks()}, note=f"{forward.note}, sinks")
    B = rng.integers(1, 4)
    cu_q = np.cumsum([0] + [rng.integers(0, MAX_LENGTH + 1) for _ in range(B)]).astype(np.int64)
    cu_k = np.cumsum([0] + [rng.integers(0, MAX_LENGTH + 1) for _ in range(B)]).astype(np.int64)
    magnitude = rng.choice([0.5, 1.0, 3.0])
    inputs = {
        "q": rng.standard_normal((int(cu_q[-1]), Hq, D)) * magnitude,
        "k": rng.standard_normal((int(cu_k[-1]), Hkv, D)) * magnitude,
        "v": rng.standard_normal((int(cu_k[-1]), Hkv, Dv)),
    }
    if rng.boolean():
        inputs["sinks"] = sinks()
    kept = ("causal", "window", "chunk_size", "align", "scale", "softcap", "return_lse")
    options = {name: value for name, value in forward.options.items() if name in kept}
    note = ", ".join(f"{name}={value!r}" for name, value in options.items() if name != "return_lse")
    note += f", cu_seqlens_q={cu_q.tolist()}, cu_seqlens_k={cu_k.tolist()}, Hq={Hq}, Hkv={Hkv}, D={D}, Dv={Dv}"
    note += ", sinks" if "sinks" in inputs else ""
    options.update(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    return replace(forward, inputs=inputs, options=options, note=note)


def random_cases(op: str, n: int, seed: int) -> list[Case]:
    """The ``n`` seeded random cases ``random-s<seed>-000`` ... of ``op``."""
    return [random_case(op, seed, index) for index in range(n)]
