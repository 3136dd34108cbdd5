"""The gradient cases: the catalogue of the ``*_vjp`` ops (contract section 6).

A gradient case is a multi-head case plus the upstream gradients: ``dout``
(the output's shape) and, in the cases that say so, ``dlse`` (the lse's
shape). The backend returns ``(dq, dk, dv)``, then ``dbias`` when a bias is
given; each is judged by the pass rule with factor 3 (``GRADIENT_FACTOR``).

The named cases are the places where backward kernels go wrong: GQA/MQA (the
gradients of a kv head sum over its query group), softcap (its chain rule),
broadcast biases (``dbias`` summed over the broadcast axes), ``dlse`` given and
not, fully-masked rows and padding rows (no gradient, ``dout`` never read, even
a NaN one), windows at both ends of the sequence, ``Lq != Lk`` in both
alignments, chunks, NaN and inf behind a rule, long rows and memory layouts;
sinks (``dsinks``, contract section 7: finite, ``-inf`` = no sink, a row with
no key but a sink, GQA, padding rows) and packed sequences (contract section 8:
an empty sequence, ``Lq != Lk`` per sequence in both alignments, a window or
chunk that would cross a sequence boundary), and both together.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from attnref.conformance.cases import (
    GRADIENT_OF,
    TYPICAL_PATTERN,
    Case,
    Dims,
    Extra,
    _bias,
    _full,
    _mask_with_empty_rows,
    _mha,
    _multihead_errors,
    _nan_beyond_lengths,
    _sinks,
    _specials,
    _varlen,
)
from attnref.conformance.randomness import case_rng

__all__ = ["gradient_cases", "gradient_error_cases", "with_upstream"]


def with_upstream(case: Case, *, dlse: bool = False, nan_dout_rows: tuple[int, slice] | None = None) -> Case:
    """``case`` (a forward multi-head case) as a case of its gradient op, with seeded ``dout`` (and ``dlse``).

    ``nan_dout_rows = (b, rows)`` puts NaN into those rows of ``dout``: rows that
    must never be read (padding or fully-masked rows).
    """
    op = f"{case.op}_vjp"
    rng = case_rng(f"{op}/{case.id}/upstream")
    q, v = case.inputs["q"], case.inputs["v"]
    inputs = dict(case.inputs)
    inputs["dout"] = rng.standard_normal((*q.shape[:-1], v.shape[-1]))  # dense (B, Hq, Lq, Dv), packed (Tq, Hq, Dv)
    if nan_dout_rows is not None:
        inputs["dout"][nan_dout_rows[0], :, nan_dout_rows[1]] = np.nan
    if dlse:
        inputs["dlse"] = rng.standard_normal(q.shape[:-1])
    options = {name: value for name, value in case.options.items() if name != "return_lse"}
    return replace(case, op=op, inputs=inputs, options=options)


def _grad(op: str, case_id: str, note: str, dims: Dims | None = None, *, dlse: bool = False,
          nan_dout_rows: tuple[int, slice] | None = None, extra: Extra | None = None, magnitude: float = 1.0,
          **options: Any) -> Case:  # fmt: skip
    forward = _mha(GRADIENT_OF[op], case_id, note, dims, magnitude=magnitude, extra=extra, **options)
    return with_upstream(forward, dlse=dlse, nan_dout_rows=nan_dout_rows)


def _alignment(op: str, pattern: dict[str, Any]) -> list[Case]:
    cases = []
    for name, dims in (("lq-lt-lk", Dims(Lq=3, Lk=8)), ("lq-gt-lk", Dims(Lq=8, Lk=3))):
        for align in ("bottom_right", "top_left"):
            cases.append(_grad(op, f"{name}-{align.replace('_', '-')}", f"Lq={dims.Lq}, Lk={dims.Lk}, align={align}",
                               dims, **pattern, align=align))  # fmt: skip
    return cases


def _pattern_cases(op: str) -> list[Case]:
    """Cases of the op's own pattern: windows at both ends, chunks."""
    if op == "local_attention_vjp":
        return [
            _grad(op, "window-left-edge", "window (3, 0): rows at the start see fewer keys", Dims(Lq=8, Lk=8),
                  window=(3, 0)),
            _grad(op, "window-right-edge", "window (0, 3): rows at the end see fewer keys", Dims(Lq=8, Lk=8),
                  window=(0, 3)),
            _grad(op, "window-0", "window 0: the diagonal only", Dims(Lq=6, Lk=6), window=0),
            _grad(op, "window-asym-lq-lt-lk", "window (2, 1), Lq < Lk", Dims(Lq=4, Lk=9), window=(2, 1)),
            _grad(op, "window-long", "window (40, 10) over 150 keys", Dims(B=1, Hq=2, Hkv=1, Lq=150, Lk=150, D=16),
                  window=(40, 10)),
        ]  # fmt: skip
    if op == "chunked_attention_vjp":
        return [
            _grad(op, "chunk-not-dividing", "chunk 3 of length 7", Dims(Lq=7, Lk=7), chunk_size=3),
            _grad(op, "chunk-causal", "causal chunks of 3", Dims(Lq=7, Lk=7), chunk_size=3, causal=True),
            _grad(op, "chunk-1", "chunks of one key", Dims(Lq=5, Lk=5), chunk_size=1),
            _grad(op, "chunk-long", "chunks of 64 over 150 keys, causal", Dims(B=1, Hq=2, Hkv=1, Lq=150, Lk=150, D=16),
                  chunk_size=64, causal=True),
        ]  # fmt: skip
    return [
        _grad(op, "full", "no pattern"),
        _grad(op, "decode", "one query against 9 keys, causal", Dims(Lq=1, Lk=9), causal=True),
        _grad(op, "long", "150 queries and keys, causal", Dims(B=1, Hq=2, Hkv=1, Lq=150, Lk=150, D=16), causal=True),
        _grad(
            op,
            "long-queries",
            "4096 queries on 3 keys: dk, dv sum 4096 rows (a 16-bit running sum drifts)",
            Dims(B=1, Hq=1, Hkv=1, Lq=4096, Lk=3, D=8, Dv=4),
            magnitude=0.05,
        ),
    ]


def _sink_cases(op: str) -> list[Case]:
    """Sinks (contract section 7): ``dsinks_h = sum_{b, i} exp(sinks_h - lse_i) (dlse_i - dout_i . out_i)``."""
    p = TYPICAL_PATTERN[GRADIENT_OF[op]]
    empty_rows = _mask_with_empty_rows
    # fmt: off
    return [
        _grad(op, "sinks", "finite sinks, scale 0.5: the sink is unscaled, in the lse, dsinks summed over rows",
              extra=_sinks(), scale=0.5, dlse=True, **p),
        _grad(op, "sinks-empty-rows", "rows with no key but a sink: lse = sink, dsinks gets their dlse, "
              "their NaN dout never read", extra=lambda rng, d: {**empty_rows(rng, d), **_sinks()(rng, d)},
              nan_dout_rows=(0, slice(1, 2)), dlse=True, **p),
        _grad(op, "sinks-neg-inf", "a -inf sink is no sink (its dsinks is 0, not exp(-inf - -inf)), also on "
              "rows with no key", extra=lambda rng, d: {**empty_rows(rng, d), **_sinks((-np.inf,))(rng, d)},
              dlse=True, **p),
        _grad(op, "sinks-gqa", "6 query heads on 2 kv heads: sink h is query head h's, dsinks per query head",
              Dims(Hq=6, Hkv=2), extra=_sinks(), dlse=True, **p),
        _grad(op, "sinks-padding-rows", "padding rows add nothing to dsinks, their NaN dout never read",
              extra=_sinks(), q_lengths=np.array([6, 3]), nan_dout_rows=(1, slice(3, None)), dlse=True, **p),
        _grad(op, "sinks-softcap", "the sink is never softcapped, in the backward pass either", magnitude=2.0,
              extra=_sinks(), softcap=0.7, **p),
    ]
    # fmt: on


#: For each gradient op, a pattern that reaches past a short sequence's ends: in packed coordinates
#: it would cross into the neighbouring sequences (a window of 4 each side, chunks of 4 that
#: sequences of 3, 5 and 6 tokens do not line up with).
CROSSING_PATTERN: dict[str, dict[str, Any]] = {
    "global_attention_vjp": {"causal": False},
    "local_attention_vjp": {"window": (4, 4)},
    "chunked_attention_vjp": {"chunk_size": 4},
}


def _packed(op: str, case_id: str, note: str, cu_q: list[int], cu_k: list[int], *, dlse: bool = True,
            **options: Any) -> Case:  # fmt: skip
    """A packed case (contract section 8) of the gradient op, with ``dout`` and ``dlse``."""
    return with_upstream(_varlen(GRADIENT_OF[op], case_id, note, cu_q, cu_k, **options), dlse=dlse)


def _varlen_cases(op: str) -> list[Case]:
    """Packed sequences: each sequence's gradients are the dense VJP of that sequence alone."""
    p = TYPICAL_PATTERN[GRADIENT_OF[op]]
    # fmt: off
    return [
        _packed(op, "varlen", "3 sequences of 3, 0 and 5 queries on 4, 5 and 3 keys: the empty one's keys get "
                "no gradient", [0, 3, 3, 8], [0, 4, 9, 12], **p),
        _packed(op, "varlen-empty", "an empty sequence first, then queries with no keys, then both",
                [0, 0, 2, 6], [0, 3, 3, 9], **p),
        _packed(op, "varlen-lq-ne-lk-bottom-right", "Lq < Lk and Lq > Lk per sequence, bottom-right per sequence",
                [0, 2, 8, 11], [0, 6, 9, 16], **p),
        _packed(op, "varlen-lq-ne-lk-top-left", "Lq < Lk and Lq > Lk per sequence, top-left",
                [0, 2, 8, 11], [0, 6, 9, 16], align="top_left", **p),
        _packed(op, "varlen-crossing", "a pattern that reaches past each sequence's ends: nothing crosses into "
                "the neighbours", [0, 3, 8, 14], [0, 3, 8, 14], **CROSSING_PATTERN[op]),
        _packed(op, "varlen-mqa", "6 query heads on 1 kv head", [0, 7, 9, 16], [0, 3, 13, 20], Hq=6, Hkv=1, **p),
        _packed(op, "varlen-sinks", "sinks and packed sequences: dsinks sums over every sequence, a sequence "
                "with no keys adds its dlse", [0, 4, 7, 12], [0, 6, 6, 11], sinks=True, **p),
        _packed(op, "varlen-sinks-gqa", "sinks, 6 query heads on 2 kv heads, Lq != Lk, top-left",
                [0, 5, 6, 9], [0, 2, 9, 13], Hq=6, Hkv=2, sinks=True, align="top_left", **p),
        _packed(op, "varlen-long", "4 packed sequences of up to 150 tokens, with sinks",
                [0, 150, 151, 260, 300], [0, 150, 180, 289, 429], Hq=2, Hkv=1, D=16, sinks=True, **p),
    ]
    # fmt: on


def gradient_cases(op: str) -> list[Case]:
    """The named cases of the gradient op ``op`` (``global_attention_vjp``, ...)."""
    p = TYPICAL_PATTERN[GRADIENT_OF[op]]
    # fmt: off
    cases = [
        _grad(op, "basic", "the typical pattern, no dlse", **p),
        _grad(op, "dlse", "dlse given: it joins dS = P * (dP - rowsum(dout * out) + dlse)", dlse=True, **p),
        _grad(op, "gqa", "4 query heads on 2 kv heads: dk, dv sum over the group", Dims(Hq=4, Hkv=2), **p),
        _grad(op, "mqa", "6 query heads on 1 kv head", Dims(Hq=6, Hkv=1), dlse=True, **p),
        _grad(op, "softcap", "the softcap's chain rule: 1 - tanh^2", magnitude=2.0, softcap=2.0, **p),
        _grad(op, "softcap-bias", "softcap, then a bias", magnitude=2.0, extra=_bias(_full, 2.0), softcap=2.5,
              dlse=True, **p),
        _grad(op, "bias", "a full bias: dbias = dS", extra=_bias(_full), **p),
        _grad(op, "bias-broadcast-rows", "bias (Lq, Lk): dbias sums over batch and heads",
              extra=_bias(lambda d: (d.Lq, d.Lk)), **p),
        _grad(op, "bias-broadcast-heads", "bias (1, Hq, 1, Lk): dbias sums over batch and rows", Dims(Hq=4, Hkv=2),
              extra=_bias(lambda d: (1, d.Hq, 1, d.Lk)), dlse=True, **p),
        _grad(op, "mask", "fully-masked rows: no gradient, and their NaN dout never read", extra=_mask_with_empty_rows,
              nan_dout_rows=(0, slice(1, 2)), dlse=True, **p),
        _grad(op, "q-lengths", "padding rows: no gradient, and their NaN dout never read", q_lengths=np.array([6, 3]),
              nan_dout_rows=(1, slice(3, None)), dlse=True, **p),
        _grad(op, "kv-lengths", "kv_lengths 0 and partial", Dims(Lq=4, Lk=9), kv_lengths=np.array([0, 6]), **p),
        _grad(op, "q-kv-lengths", "both lengths, offsets per batch", Dims(Lq=5, Lk=8), kv_lengths=np.array([8, 4]),
              q_lengths=np.array([3, 5]), **p),
        _grad(op, "dv-ne-d", "value size 3, head size 8", Dims(Dv=3), **p),
        _grad(op, "large-logits", "logits in the hundreds", magnitude=8.0, **p),
        _grad(op, "scale", "an explicit scale", scale=0.7, magnitude=1.5, **p),
        _grad(op, "hidden-nan-lengths", "NaN and inf in k, v past kv_lengths never reach any gradient",
              Dims(Lq=6, Lk=8), extra=_nan_beyond_lengths, **p),
        _grad(op, "hidden-nan-k-inf-v-pattern", "NaN in k, inf in v at a key the pattern shows to some rows",
              extra=_specials("nan-k-inf-v", slice(None), {"global_attention_vjp": 3, "local_attention_vjp": 4,
                                                           "chunked_attention_vjp": 5}[op]), **p),
        *_alignment(op, p),
        *_pattern_cases(op),
        *_sink_cases(op),
        *_varlen_cases(op),
    ]
    # fmt: on
    layout = _grad(
        op,
        "layout-transposed",
        "q, k, v, dout as (B, L, H, D) views",
        Dims(B=2, Hq=4, Hkv=2, Lq=7, Lk=9, D=8, Dv=6),
        **p,
    )  # fmt: skip
    return [*cases, replace(layout, layouts=dict.fromkeys(("q", "k", "v", "dout"), "transposed"))]


def gradient_error_cases(op: str) -> list[Case]:
    """Invalid inputs of the gradient op: a few of the forward's, and malformed ``dout``/``dlse``."""
    forward = {c.id: c for c in _multihead_errors(GRADIENT_OF[op])}
    kept = [forward[i] for i in ("error-q-rank", "error-heads-not-divisible", "error-mask-dtype", "error-scale-zero",
                                 "error-kv-lengths-too-long")]  # fmt: skip
    cases = [with_upstream(c) for c in kept]
    dims = Dims(B=2, Hq=2, Hkv=1, Lq=4, Lk=5, D=3, Dv=2)
    base = with_upstream(_mha(GRADIENT_OF[op], "error-base", "", dims, **TYPICAL_PATTERN[GRADIENT_OF[op]]), dlse=True)
    dout, dlse = base.inputs["dout"], base.inputs["dlse"]
    broken = {
        "error-dout-shape": ("dout with Dv + 1 features", {"dout": np.concatenate([dout, dout[..., :1]], -1)}),
        "error-dlse-shape": ("dlse missing the last row", {"dlse": dlse[..., :-1]}),
        "error-dout-int": ("an integer dout", {"dout": np.ones(dout.shape, np.int64)}),
        "error-dout-rank": ("dout without its batch axis", {"dout": dout[0]}),
    }
    for case_id, (note, change) in broken.items():
        inputs, options = dict(base.inputs), dict(base.options)
        for name, value in change.items():
            inputs.pop(name)
            (options if value.dtype.kind != "f" else inputs)[name] = value
        cases.append(replace(base, id=case_id, inputs=inputs, options=options, expect_error=True, note=note))
    return cases
