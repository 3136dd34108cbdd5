"""Seeded random cases, drawn with hypothesis strategies capped in size.

A strategy here draws a small *configuration* (sizes, options, which
optional inputs are present, a data seed); the arrays are then built from a
NumPy generator seeded with that data seed, like the named cases. Sizes stay
small (sequence lengths up to 9, head sizes up to 8) so a few dozen examples
take well under a second on any backend.

Examples are drawn by running hypothesis' own engine (generation phase only,
no database, fixed seed) and collecting what it generates: the same seed gives
the same cases, in the same order, in every process and pytest-xdist worker
(for a given hypothesis version).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from attnref.conformance.cases import Case, case_rng

__all__ = ["MAX_LENGTH", "MAX_DIM", "configs", "draw", "random_cases"]

#: Largest sequence length of a random case.
MAX_LENGTH = 9
#: Largest feature size of a random case.
MAX_DIM = 8

_lengths = st.integers(1, MAX_LENGTH)
_dims = st.integers(1, MAX_DIM)
_window_side = st.one_of(st.none(), st.just(-1), st.integers(0, MAX_LENGTH + 1))


@st.composite
def _multihead(draw: Any, op: str) -> dict[str, Any]:
    group, kv_heads = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    c: dict[str, Any] = {
        "B": draw(st.integers(1, 2)),
        "Hq": group * kv_heads,
        "Hkv": kv_heads,
        "Lq": draw(_lengths),
        "Lk": draw(_lengths),
        "D": draw(_dims),
        "Dv": draw(_dims),
        "magnitude": draw(st.sampled_from([0.5, 1.0, 3.0])),
    }
    if op == "global_attention":
        c["causal"] = draw(st.booleans())
    elif op == "local_attention":
        c["window"] = draw(st.one_of(st.integers(0, MAX_LENGTH), st.tuples(_window_side, _window_side)))
    else:
        c["chunk_size"] = draw(st.integers(1, MAX_LENGTH + 2))
        c["causal"] = draw(st.booleans())
    c["align"] = draw(st.sampled_from(["bottom_right", "top_left"]))
    c["scale"] = draw(st.one_of(st.none(), st.floats(0.05, 2.0)))
    c["softcap"] = draw(st.one_of(st.none(), st.floats(0.5, 20.0)))
    c["bias"] = draw(st.sampled_from([None, "full", "rows", "heads"]))
    c["mask"] = draw(st.sampled_from([None, "full", "rows"]))
    c["kv_lengths"] = draw(st.one_of(st.none(), st.lists(st.integers(0, c["Lk"]), min_size=c["B"], max_size=c["B"])))
    c["q_lengths"] = draw(st.one_of(st.none(), st.lists(st.integers(0, c["Lq"]), min_size=c["B"], max_size=c["B"])))
    c["return_lse"] = draw(st.booleans())
    c["data"] = draw(st.integers(0, 2**32 - 1))
    return c


@st.composite
def _additive(draw: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"B": draw(st.integers(1, 3)), "L": draw(_lengths), "Din": draw(_dims), "Dh": draw(_dims)}
    c["window"] = draw(st.one_of(st.none(), st.integers(0, MAX_LENGTH), st.tuples(_window_side, _window_side)))
    c["center"] = None
    if c["window"] is not None:
        centres = st.lists(st.integers(0, c["L"] - 1), min_size=c["B"], max_size=c["B"])
        c["center"] = draw(st.one_of(st.none(), st.integers(0, c["L"] - 1), centres))
    c["mask"] = draw(st.booleans())
    c["b_out"] = draw(st.one_of(st.none(), st.floats(-2.0, 2.0)))
    c["magnitude"] = draw(st.sampled_from([0.5, 1.0, 4.0]))
    c["data"] = draw(st.integers(0, 2**32 - 1))
    return c


@st.composite
def _luong(draw: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"B": draw(st.integers(1, 2)), "T": draw(_lengths), "S": draw(_lengths), "d": draw(_dims)}
    c["score"] = draw(st.sampled_from(["dot", "general", "concat"]))
    c["mode"] = draw(st.sampled_from(["global", "local-m", "local-p"]))
    c["half_width"] = None if c["mode"] == "global" else draw(st.integers(int(c["mode"] == "local-p"), 5))
    c["da"], c["dp"] = draw(_dims), draw(_dims)
    lengths = st.lists(st.integers(0, c["S"]), min_size=c["B"], max_size=c["B"])
    c["source_lengths"] = draw(st.one_of(st.none(), lengths))
    c["magnitude"] = draw(st.sampled_from([0.3, 0.7, 1.5]))
    c["data"] = draw(st.integers(0, 2**32 - 1))
    return c


def configs(op: str) -> st.SearchStrategy[dict[str, Any]]:
    """The strategy of random configurations of ``op``."""
    if op == "additive_attention":
        return _additive()
    if op == "luong_attention":
        return _luong()
    return _multihead(op)


def draw(strategy: st.SearchStrategy[Any], n: int, seed: int) -> list[Any]:
    """``n`` values of ``strategy``, the same for the same ``seed``.

    Runs hypothesis' engine with only its generation phase, no example
    database and no deadline, collecting every value it generates.
    """
    found: list[Any] = []

    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=False,
        print_blob=False,
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found[:n]


def _describe(c: dict[str, Any]) -> str:
    skip = {"data", "magnitude"}
    return ", ".join(f"{k}={v!r}" for k, v in c.items() if k not in skip and v is not None and v is not False)


def _multihead_case(op: str, case_id: str, c: dict[str, Any]) -> Case:
    rng = np.random.default_rng(c["data"])
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


def _additive_case(case_id: str, c: dict[str, Any]) -> Case:
    rng = np.random.default_rng(c["data"])
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


def _luong_case(case_id: str, c: dict[str, Any]) -> Case:
    rng = np.random.default_rng(c["data"])
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


def random_cases(op: str, n: int, seed: int) -> list[Case]:
    """``n`` seeded random cases of ``op``, with ids ``random-s<seed>-<index>``.

    The seed mixes in the op's name, so each op draws its own sequence.
    """
    op_seed = (int(seed) * 1_000_003 + int(case_rng(op).integers(2**31))) % 2**32
    cases = []
    for index, c in enumerate(draw(configs(op), n, op_seed)):
        case_id = f"random-s{seed}-{index:03d}"
        if op == "additive_attention":
            cases.append(_additive_case(case_id, c))
        elif op == "luong_attention":
            cases.append(_luong_case(case_id, c))
        else:
            cases.append(_multihead_case(op, case_id, c))
    return cases
