"""The cases of ``paged_attention`` and ``merge_attention_states`` (contract sections 9 and 10).

``paged_attention`` cases read keys through a block table: blocks out of order,
shared between sequences (prefix caching), unused table entries of ``-1``, an
empty sequence, a full table, windows, ``causal``, softcap, sinks and both
alignments. ``merge_attention_states`` cases merge partial results: the parts of
a real key split (computed by the reference, so the merge must equal attention
over the whole), huge lses (the max shift), parts that saw no key (``-inf``
lse with NaN outputs that must not leak), positions where every part is empty,
and NaN or ``+inf`` lses. Seeded random cases of both ops draw their sizes and
options from the version-proof stream of :mod:`attnref.conformance.randomness`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from attnref.conformance.cases import Case, _broken
from attnref.conformance.randomness import CaseRandom, case_rng

__all__ = ["STATE_OPS", "state_cases", "state_error_cases", "random_state_case"]

STATE_OPS: tuple[str, ...] = ("paged_attention", "merge_attention_states")

PAGED = "paged_attention"
MERGE = "merge_attention_states"


def _table(rng: CaseRandom, seqlens: list[int], block_size: int, max_blocks: int, num_blocks: int,
           shared: int = 0) -> np.ndarray:  # fmt: skip
    """A block table: each sequence's used blocks drawn without repetition (the first ``shared``
    blocks the same for every sequence: a cached prefix); unused entries ``-1``."""
    order = np.argsort(rng.random(num_blocks))
    table = np.full((len(seqlens), max_blocks), -1, dtype=np.int64)
    prefix, rest = order[:shared], list(order[shared:])
    for b, length in enumerate(seqlens):
        used = -(-length // block_size)
        own = [rest.pop() if rest else int(order[-1]) for _ in range(max(0, used - shared))]
        table[b, :used] = np.concatenate([prefix[: min(shared, used)], np.array(own, dtype=np.int64)])[:used]
    return table


def _paged_options(case_id: str, seqlens: tuple[int, ...], block_size: int, max_blocks: int, num_blocks: int,
                   shared: int = 0, **options: Any) -> dict[str, Any]:  # fmt: skip
    """The options of a paged case: its block table (from its own stream), lengths and the rest."""
    table = _table(case_rng(f"{PAGED}/{case_id}/table"), list(seqlens), block_size, max_blocks, num_blocks, shared)
    return {"block_table": table, "cache_seqlens": np.array(seqlens, dtype=np.int64), "return_lse": True, **options}


def _paged(case_id: str, note: str, *, seqlens: tuple[int, ...] = (9, 17), Lq: int = 1, Hq: int = 4, Hkv: int = 2,
           D: int = 8, Dv: int = 6, block_size: int = 4, max_blocks: int = 5, num_blocks: int = 12, shared: int = 0,
           sinks: bool = False, magnitude: float = 1.0, **options: Any) -> Case:  # fmt: skip
    rng = case_rng(f"{PAGED}/{case_id}")
    inputs = {
        "q": rng.standard_normal((len(seqlens), Hq, Lq, D)) * magnitude,
        "k_cache": rng.standard_normal((num_blocks, block_size, Hkv, D)) * magnitude,
        "v_cache": rng.standard_normal((num_blocks, block_size, Hkv, Dv)),
    }
    if sinks:
        inputs["sinks"] = rng.standard_normal(Hq)
    options = _paged_options(case_id, seqlens, block_size, max_blocks, num_blocks, shared, **options)
    return Case(PAGED, case_id, inputs, options, note=note)


def _paged_cases() -> list[Case]:
    # fmt: off
    return [
        _paged("basic", "decoding through a block table with blocks out of order, unused entries -1"),
        _paged("out-only", "return_lse=False returns out alone", return_lse=False),
        _paged("lq-gt-1", "3 queries per sequence, bottom-right aligned", Lq=3),
        _paged("lq-gt-1-top-left", "3 queries per sequence, top-left", Lq=3, align="top_left", causal=True),
        _paged("causal", "3 queries, causal", Lq=3, causal=True),
        _paged("window", "window (5, 0) over the cached keys", Lq=3, window=(5, 0)),
        _paged("window-causal", "window (4, 2) narrowed by causal", Lq=3, window=(4, 2), causal=True),
        _paged("shared-prefix", "two sequences sharing their first two blocks (prefix caching)", shared=2),
        _paged("seqlens-0", "an empty sequence: out 0, lse -inf", seqlens=(0, 13)),
        _paged("full-table", "cache_seqlens = max_blocks * block_size", seqlens=(20, 7)),
        _paged("partial-block", "lengths ending inside a block", seqlens=(5, 18), Lq=2),
        _paged("mqa", "8 query heads on 1 kv head", Hq=8, Hkv=1),
        _paged("softcap", "softcap on large scores", magnitude=2.0, softcap=3.0),
        _paged("scale", "an explicit scale", scale=0.4),
        _paged("sinks", "a learned sink per head: unscaled, in the lse", sinks=True, Lq=2, scale=0.5),
        _paged("sinks-empty", "sinks with an empty sequence: out 0, lse = sink", sinks=True, seqlens=(0, 11)),
        _paged("sinks-softcap", "sinks are never softcapped", sinks=True, magnitude=2.0, softcap=0.8),
        _paged("long", "3 sequences of up to 300 keys in blocks of 16", seqlens=(300, 1, 129), Lq=4, block_size=16,
               max_blocks=19, num_blocks=40, causal=True),
    ]
    # fmt: on


def _merge(case_id: str, note: str, *, parts: int = 3, shape: tuple[int, ...] = (2, 3, 5), Dv: int = 4,
           spread: float = 2.0, edit: Any = None) -> Case:  # fmt: skip
    rng = case_rng(f"{MERGE}/{case_id}")
    outs = rng.standard_normal((parts, *shape, Dv))
    lses = rng.standard_normal((parts, *shape)) * spread
    if edit is not None:
        edit(outs, lses)
    return Case(MERGE, case_id, {"outs": outs, "lses": lses}, {}, note=note)


def _split(case_id: str, note: str, parts: int) -> Case:
    """The parts of attention over a random split of 24 keys into ``parts`` disjoint sets."""
    from attnref.reference import global_attention

    rng = case_rng(f"{MERGE}/{case_id}")
    q, k, v = rng.standard_normal((2, 3, 4, 8)), rng.standard_normal((2, 3, 24, 8)), rng.standard_normal((2, 3, 24, 5))
    owner = rng.integers(0, parts, size=24)
    outs, lses = [], []
    for n in range(parts):
        out, lse = global_attention(q, k, v, mask=np.broadcast_to(owner == n, (4, 24)), return_lse=True)
        outs.append(out)
        lses.append(lse)
    return Case(MERGE, case_id, {"outs": np.stack(outs), "lses": np.stack(lses)}, {}, note=note)


def _set(index: tuple, out_value: float | None, lse_value: float):
    def edit(outs: np.ndarray, lses: np.ndarray) -> None:
        lses[index] = lse_value
        if out_value is not None:
            outs[index] = out_value

    return edit


def _merge_cases() -> list[Case]:
    # fmt: off
    return [
        _merge("basic", "three parts"),
        _merge("one-part", "N = 1: the part itself", parts=1),
        _merge("many-parts", "eight parts", parts=8),
        _merge("flat", "no batch axes: (N, Dv) and (N,)", shape=()),
        _merge("large-lse", "lses near 1000: exp overflows without the max shift", spread=1.0,
               edit=lambda o, s: s.__iadd__(1000.0)),
        _merge("very-negative-lse", "lses near -1000: exp underflows without the max shift",
               edit=lambda o, s: s.__isub__(1000.0)),
        _merge("neg-inf-part", "a part that saw no key (lse -inf) and NaN outputs: weight exactly 0",
               edit=_set((1, 0), np.nan, -np.inf)),
        _merge("all-neg-inf", "every part empty at some positions: out 0, lse -inf",
               edit=_set((slice(None), 1, 2), np.nan, -np.inf)),
        _merge("nan-lse", "a NaN lse poisons its position", edit=_set((0, 0, 1, 3), None, np.nan)),
        _merge("inf-lse", "a +inf lse makes its position NaN", edit=_set((2, 1, 0, 0), None, np.inf)),
        _split("split-2", "attention over a random 2-way key split: the merge equals the whole", 2),
        _split("split-5", "a 5-way key split, some parts empty for some rows", 5),
        _merge("two-parts", "two parts", parts=2),
        _merge("wide-spread", "lses 30 apart: one part dominates", spread=30.0),
        _merge("dv-1", "value size 1", Dv=1),
    ]
    # fmt: on


def state_cases(op: str) -> list[Case]:
    """The named (non-error) cases of ``paged_attention`` or ``merge_attention_states``."""
    return _paged_cases() if op == PAGED else _merge_cases()


def state_error_cases(op: str) -> list[Case]:
    """Invalid inputs: each must raise the reference's error class with a message naming the argument."""
    if op == PAGED:
        base = _paged("error-base", "", Lq=2)
        table = base.options["block_table"]
        out_of_range = table.copy()
        out_of_range[0, 0] = 12  # a used entry past num_blocks
        negative = table.copy()
        negative[1, 1] = -1  # a used entry of -1
        # fmt: off
        return [
            _broken(base, "block-table-out-of-range", "a used table entry = num_blocks", block_table=out_of_range),
            _broken(base, "block-table-negative", "a used table entry -1", block_table=negative),
            _broken(base, "block-table-float", "a float block table", block_table=table.astype(np.float64)),
            _broken(base, "cache-seqlens-too-long", "cache_seqlens beyond max_blocks * block_size",
                    cache_seqlens=np.array([21, 3])),
            _broken(base, "cache-seqlens-shape", "three lengths for two sequences", cache_seqlens=np.array([1, 2, 3])),
            _broken(base, "v-cache-blocks", "v_cache with fewer blocks than k_cache",
                    inputs={"v_cache": base.inputs["v_cache"][:5]}),
            _broken(base, "q-rank", "q with 3 dimensions", inputs={"q": base.inputs["q"][0]}),
            _broken(base, "sinks-shape", "sinks of the wrong length", inputs={"sinks": np.ones(3)}),
        ]
        # fmt: on
    base = _merge("error-base", "")
    outs, lses = base.inputs["outs"], base.inputs["lses"]
    # fmt: off
    return [
        _broken(base, "no-part", "N = 0", inputs={"outs": outs[:0], "lses": lses[:0]}),
        _broken(base, "lses-shape", "lses of another shape", inputs={"lses": lses[:, :, :2]}),
        _broken(base, "parts-mismatch", "fewer lses than outs", inputs={"lses": lses[:2]}),
        _broken(base, "int-outs", "integer outs", inputs={"outs": np.ones(outs.shape, np.int64)}),
        _broken(base, "int-lses", "integer lses", inputs={"lses": np.ones(lses.shape, np.int64)}),
        _broken(base, "dv-axis-missing", "outs without the Dv axis", inputs={"outs": outs[..., 0]}),
        _broken(base, "batch-mismatch", "lses with another batch than outs", inputs={"lses": lses[:, :1]}),
        _broken(base, "complex-outs", "complex outs", inputs={"outs": outs.astype(np.complex128)}),
    ]
    # fmt: on


def random_state_case(op: str, seed: int, index: int) -> Case:
    """The seeded random case ``random-s<seed>-<index>`` of a state op."""
    rng = case_rng(op, seed, index)
    case_id = f"random-s{seed}-{index:03d}"
    if op == MERGE:
        parts, Dv = rng.integers(1, 5), rng.integers(1, 7)
        shape = tuple(rng.integers(1, 4) for _ in range(rng.integers(0, 4)))
        spread = rng.choice([0.5, 3.0, 30.0])
        case = _merge(case_id, "", parts=parts, shape=shape, Dv=Dv, spread=spread)
        note = f"parts={parts}, shape={shape}, Dv={Dv}, spread={spread}"
        return replace(case, note=note)
    block_size = rng.choice([1, 2, 4, 8])
    max_blocks = rng.integers(1, 6)
    B = rng.integers(1, 4)
    seqlens = tuple(rng.integers(0, max_blocks * block_size + 1) for _ in range(B))
    kv_heads, group = rng.integers(1, 3), rng.integers(1, 4)
    options: dict[str, Any] = {"align": rng.choice(["bottom_right", "top_left"]), "causal": rng.boolean()}
    if rng.boolean():
        options["window"] = (rng.integers(0, 9), rng.integers(0, 9))
    if rng.boolean(0.3):
        options["softcap"] = round(0.5 + 10 * rng.random(), 4)
    sinks = rng.boolean(0.3)
    num_blocks = max(1, B * max_blocks + rng.integers(0, 4))
    case = _paged(case_id, "", seqlens=seqlens, Lq=rng.integers(1, 5), Hq=kv_heads * group, Hkv=kv_heads,
                  D=rng.integers(1, 9), Dv=rng.integers(1, 9), block_size=block_size, max_blocks=max_blocks,
                  num_blocks=num_blocks, sinks=sinks, **options)  # fmt: skip
    note = f"seqlens={list(seqlens)}, block_size={block_size}, max_blocks={max_blocks}, sinks={sinks}, " + ", ".join(
        f"{k}={v!r}" for k, v in options.items()
    )
    return replace(case, note=note)
