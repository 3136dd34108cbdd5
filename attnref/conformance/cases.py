"""The case catalogue: named edge cases with stable ids, for every op.

A :class:`Case` is an op name, an id, the floating inputs (float64 NumPy
arrays, rounded to the dtype under test before anything runs) and the other
arguments (options, masks, lengths). Every case builds its arrays from a
seed derived from its own key, so a case is the same whatever else is in the
catalogue, on every machine and in every pytest-xdist worker.

The named cases cover every op, option and interaction the contract defines:
``Lq < Lk`` and ``Lq > Lk`` in both alignments; windows of 0, asymmetric,
one-side unbounded, wider than the sequence; chunk sizes of 1, not dividing
the length, longer than it; GQA and MQA; softcap with and without bias; bias
of full and broadcast shapes, ``-inf`` bias rows; bool masks with fully-masked
rows; ``kv_lengths`` with 0 and full lengths (native, NumPy and list form),
``q_lengths``, both with per-batch alignment; ``Dv != D``; length 1; batch 1;
overflow bait (logits in the thousands: the answer must still be finite);
a tiny ``scale``; ``return_lse`` on and off; a bias in another dtype than
``q``; NaN propagation (a NaN reaches the outputs whose formula uses it and
never leaks from a disallowed key); long rows that cross the block sizes of
real kernels (200 queries, 1100 keys, lengths ending inside a block); and
every mode and score of the two pooling ops. Error cases (ids starting with
``error-``) hold inputs the reference rejects, mixed dtypes included: the
backend must raise the same error class. Seeded random cases come from
:mod:`attnref.conformance.strategies`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from attnref.backend import OPS
from attnref.conformance.randomness import CaseRandom, case_rng

__all__ = [
    "MULTIHEAD_OPS",
    "GRADIENT_OF",
    "POOLING_OPS",
    "POSITIONAL",
    "DEFAULT_EXAMPLES",
    "Case",
    "Host",
    "case_rng",
    "named_cases",
    "error_cases",
    "catalogue",
]

MULTIHEAD_OPS: tuple[str, ...] = ("global_attention", "local_attention", "chunked_attention")
#: Each gradient op and the forward op it differentiates.
GRADIENT_OF: dict[str, str] = {f"{op}_vjp": op for op in MULTIHEAD_OPS}
POOLING_OPS: tuple[str, ...] = ("additive_attention", "luong_attention")
#: The arguments each op takes by position (the rest go by keyword).
POSITIONAL: dict[str, tuple[str, ...]] = {
    "global_attention": ("q", "k", "v"),
    "local_attention": ("q", "k", "v"),
    "chunked_attention": ("q", "k", "v"),
    "additive_attention": ("x", "w_in", "b_in", "w_out"),
    "luong_attention": ("h_t", "h_s"),
    **{op: ("q", "k", "v", "dout") for op in GRADIENT_OF},
    "paged_attention": ("q", "k_cache", "v_cache"),
    "merge_attention_states": ("outs", "lses"),
}
#: Random cases per op in a default run (``--examples``).
DEFAULT_EXAMPLES = 8


@dataclass(frozen=True)
class Host:
    """An option value handed to the backend as it is, not through ``asarray``.

    Options that are NumPy arrays (masks, lengths) reach a backend as its
    native arrays; wrapping one in ``Host`` passes the NumPy array itself, to
    check that integer lengths are accepted in NumPy form on every backend.
    """

    value: np.ndarray


@dataclass(frozen=True, eq=False)
class Case:
    """One conformance case.

    Attributes
    ----------
    op : str
        The op's name (one of :data:`attnref.backend.OPS`).
    id : str
        Stable id, unique within the op (``"window-asym"``, ``"error-chunk-zero"``).
    inputs : dict of str to ndarray
        The floating inputs, float64; rounded to the dtype under test first.
    options : dict
        Everything else, passed unchanged except that NumPy arrays become the
        backend's native arrays (see :class:`Host`).
    expect_error : bool
        The reference rejects these inputs; the backend must raise the same
        error class.
    note : str
        What the case is about.
    other_dtype : tuple of str
        Inputs rounded to another dtype than the one under test (float32, or
        float64 when float32 is under test): the mixed-dtype error cases.
    layouts : dict of str to str
        Inputs handed over in a memory layout of :mod:`attnref.conformance.layouts`.
    names : tuple of str
        For an error case, arguments an error message may name besides the one
        the reference names (both ``k`` and ``v`` are wrong in ``mixed-dtype``).
    """

    op: str
    id: str
    inputs: dict[str, np.ndarray]
    options: dict[str, Any] = field(default_factory=dict)
    expect_error: bool = False
    note: str = ""
    other_dtype: tuple[str, ...] = ()
    layouts: dict[str, str] = field(default_factory=dict)
    names: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``"op/id"``."""
        return f"{self.op}/{self.id}"

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the arrays the op returns for this case, in order."""
        if self.op in POOLING_OPS:
            return ("context", "weights")
        if self.op == "merge_attention_states":
            return ("out", "lse")
        if self.op in GRADIENT_OF:
            return ("dq", "dk", "dv", *(("dbias",) if "bias" in self.inputs else ()),
                    *(("dsinks",) if "sinks" in self.inputs else ()))  # fmt: skip
        return ("out", "lse") if self.options.get("return_lse") is True else ("out",)

    def exact(self, name: str) -> bool:
        """Whether the output ``name`` must have exactly its expected dtype (else: it or a more precise one)."""
        return name in ("out", "context", "dq", "dk", "dv", "dbias", "dsinks")

    def output_dtype(self, name: str, dtype: str) -> str:
        """The dtype the output ``name`` has when ``dtype`` is under test (a gradient has its input's)."""
        source = {"dbias": "bias", "dsinks": "sinks"}.get(name)
        if source in self.other_dtype:
            return "float64" if dtype == "float32" else "float32"
        return dtype

    def parameters(self) -> dict[str, Any]:
        """Everything that defines the case, as JSON values: input shapes, options, layouts."""
        return {
            "inputs": {name: list(np.shape(a)) for name, a in self.inputs.items()},
            "options": {name: _json_value(value) for name, value in self.options.items()},
            **({"layouts": dict(self.layouts)} if self.layouts else {}),
            **({"other_dtype": list(self.other_dtype)} if self.other_dtype else {}),
        }

    @property
    def terms(self) -> dict[str, str]:
        """For each output that is a weighted average of an input, that input's name."""
        values = {"paged_attention": "v_cache", "merge_attention_states": "outs"}.get(self.op, "v")
        return {"out": values, "context": "h_s" if self.op == "luong_attention" else "x", "dv": "dout"}

    def arguments(self, inputs: dict[str, Any], convert: Callable[[np.ndarray], Any]) -> tuple[tuple, dict]:
        """Positional and keyword arguments of the call.

        ``inputs`` are the (rounded, possibly converted) floating inputs;
        ``convert`` is applied to every NumPy option (a mask, lengths).
        """
        values = dict(inputs)
        for name, value in self.options.items():
            if isinstance(value, Host):
                values[name] = value.value
            elif isinstance(value, np.ndarray):
                values[name] = convert(value)
            else:
                values[name] = value
        positional = tuple(values.pop(name) for name in POSITIONAL[self.op] if name in values)
        return positional, values


def _json_value(value: Any) -> Any:
    """An option as a JSON value: small arrays as lists, large ones by shape and dtype."""
    if isinstance(value, Host):
        return {"numpy": _json_value(value.value)}
    if isinstance(value, np.ndarray):
        if value.size <= 64:
            return value.tolist()
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- multi-head ops ----------------------------------------------------------
@dataclass(frozen=True)
class Dims:
    """Sizes of a multi-head case."""

    B: int = 2
    Hq: int = 2
    Hkv: int = 2
    Lq: int = 6
    Lk: int = 6
    D: int = 8
    Dv: int = 8


Extra = Callable[[CaseRandom, Dims], dict[str, Any]]

#: The pattern each multi-head op uses in the cases shared by all three.
TYPICAL_PATTERN: dict[str, dict[str, Any]] = {
    "global_attention": {"causal": True},
    "local_attention": {"window": (2, 1)},
    "chunked_attention": {"chunk_size": 4},
}


def _mha(
    op: str, case_id: str, note: str, dims: Dims | None = None, *, magnitude: float = 1.0, extra: Extra | None = None,
    **options: Any,
) -> Case:  # fmt: skip
    """A multi-head case with normal ``q, k, v`` (times ``magnitude`` for q and k)."""
    d = dims or Dims()
    rng = case_rng(f"{op}/{case_id}")
    inputs = {
        "q": rng.standard_normal((d.B, d.Hq, d.Lq, d.D)) * magnitude,
        "k": rng.standard_normal((d.B, d.Hkv, d.Lk, d.D)) * magnitude,
        "v": rng.standard_normal((d.B, d.Hkv, d.Lk, d.Dv)),
    }
    if extra is not None:
        for name, value in extra(rng, d).items():
            (inputs if name in ("q", "k", "v", "bias", "sinks") else options)[name] = value
    options.setdefault("return_lse", True)
    return Case(op, case_id, inputs, options, note=note)


def _bias(shape: Callable[[Dims], tuple[int, ...]], magnitude: float = 1.0) -> Extra:
    return lambda rng, d: {"bias": rng.standard_normal(shape(d)) * magnitude}


def _mask(shape: Callable[[Dims], tuple[int, ...]]) -> Extra:
    return lambda rng, d: {"mask": rng.random(shape(d)) < 0.5}


def _full(d: Dims) -> tuple[int, ...]:
    return (d.B, d.Hq, d.Lq, d.Lk)


def _mask_with_empty_rows(rng: CaseRandom, d: Dims) -> dict[str, Any]:
    mask = rng.random((d.B, 1, d.Lq, d.Lk)) < 0.6
    mask[0, 0, 1] = False  # a fully-masked row in batch 0
    mask[d.B - 1, 0, d.Lq - 1] = False  # and the last row of the last batch
    mask[0, 0, 0] = True
    return {"mask": mask}


def _neg_inf_bias(rng: CaseRandom, d: Dims) -> dict[str, Any]:
    bias = rng.standard_normal((d.B, d.Hq, d.Lq, d.Lk))
    bias[0, 0, 0] = -np.inf  # every key of a row: the row behaves as empty
    bias[d.B - 1, d.Hq - 1, :, 0] = -np.inf  # one key for every row of one head
    return {"bias": bias}


def _very_negative_bias(rng: CaseRandom, d: Dims) -> dict[str, Any]:
    return {"bias": np.full((1,), -1000.0)}  # every score near -1000: exp underflows without the max shift


def _nearly_tied(rng: CaseRandom, d: Dims) -> dict[str, Any]:
    """Scores ``10 + delta`` with ``|delta| < 0.01``: float16 rounds them (spacing 2**-7) to a few ties."""
    scale = 1.0 / np.sqrt(d.D)
    q = np.zeros((d.B, d.Hq, d.Lq, d.D))
    q[..., 0] = 2.0 + 0.01 * rng.standard_normal((d.B, d.Hq, d.Lq))
    k = 0.01 * rng.standard_normal((d.B, d.Hkv, d.Lk, d.D))
    k[..., 0] = (10.0 + 0.005 * rng.standard_normal((d.B, d.Hkv, d.Lk))) / (2.0 * scale)
    return {"q": q, "k": k}


def _nan_query(rng: CaseRandom, d: Dims) -> dict[str, Any]:
    q = rng.standard_normal((d.B, d.Hq, d.Lq, d.D))
    q[0, 1, 2, 3] = np.nan  # exactly row (0, 1, 2) of out and lse becomes NaN
    return {"q": q}


def _nan_beyond_lengths(rng: CaseRandom, d: Dims) -> dict[str, Any]:
    k = rng.standard_normal((d.B, d.Hkv, d.Lk, d.D))
    v = rng.standard_normal((d.B, d.Hkv, d.Lk, d.Dv))
    k[0, :, d.Lk - 1] = np.nan  # beyond kv_lengths[0]: must not leak
    v[0, :, d.Lk - 2, 1] = np.nan
    v[1, 0, d.Lk - 1] = np.inf
    return {"k": k, "v": v, "kv_lengths": np.array([d.Lk - 2, d.Lk - 1])}


def _shared_multihead(op: str) -> list[Case]:
    """Cases every multi-head op runs with its typical pattern."""
    p = TYPICAL_PATTERN[op]
    long_kv = Dims(Lq=4, Lk=9)
    lengths = Dims(Lq=5, Lk=8)
    # fmt: off
    return [
        _mha(op, "basic", "the typical pattern, lse returned", **p),
        _mha(op, "out-only", "return_lse=False returns out alone", **p, return_lse=False),
        _mha(op, "gqa", "4 query heads on 2 kv heads: head h reads kv head h // 2", Dims(Hq=4, Hkv=2), **p),
        _mha(op, "mqa", "6 query heads on 1 kv head", Dims(Hq=6, Hkv=1), **p),
        _mha(op, "gqa-3", "6 query heads on 2 kv heads: h % Hkv != h // group", Dims(Hq=6, Hkv=2), **p),
        _mha(op, "softcap", "softcap bounds large scores", magnitude=2.0, **p, softcap=2.0),
        _mha(op, "softcap-bias", "softcap applies before the bias", magnitude=2.0, extra=_bias(_full, 3.0), **p,
             softcap=2.5),
        _mha(op, "bias", "a float bias of the full shape", extra=_bias(_full), **p),
        _mha(op, "bias-broadcast-rows", "bias (Lq, Lk) broadcast over batch and heads",
             extra=_bias(lambda d: (d.Lq, d.Lk)), **p),
        _mha(op, "bias-broadcast-heads", "bias (1, Hq, 1, Lk)", Dims(Hq=4, Hkv=2),
             extra=_bias(lambda d: (1, d.Hq, 1, d.Lk)), **p),
        replace(_mha(op, "bias-other-dtype", "a float bias in another dtype than q (allowed, as by the reference)",
                     extra=_bias(_full), **p), other_dtype=("bias",)),
        _mha(op, "bias-neg-inf", "a row whose every score is -inf behaves as empty: out 0, lse -inf",
             extra=_neg_inf_bias, **p),
        _mha(op, "mask", "bool mask (B, 1, Lq, Lk) with fully-masked rows: out 0, lse -inf",
             extra=_mask_with_empty_rows, **p),
        _mha(op, "mask-per-head", "a different mask for every head", Dims(Hq=4, Hkv=2), extra=_mask(_full), **p),
        _mha(op, "mask-broadcast", "bool mask (Lq, Lk), True = may attend", extra=_mask(lambda d: (d.Lq, d.Lk)), **p),
        _mha(op, "softcap-mask", "softcap never revives a masked key", magnitude=2.0, extra=_mask_with_empty_rows,
             **p, softcap=1.5),
        _mha(op, "kv-lengths", "kv_lengths 0 and full", **p, kv_lengths=np.array([0, 6])),
        _mha(op, "kv-lengths-partial", "kv_lengths shorter than Lk, bottom-right aligned per batch", long_kv, **p,
             kv_lengths=np.array([5, 7])),
        _mha(op, "kv-lengths-list", "kv_lengths as a list of ints", long_kv, **p, kv_lengths=[3, 9]),
        _mha(op, "kv-lengths-numpy", "kv_lengths as a NumPy array on any backend", long_kv, **p,
             kv_lengths=Host(np.array([6, 2]))),
        _mha(op, "q-lengths", "rows past q_lengths are padding: out 0, lse -inf", **p, q_lengths=np.array([6, 2])),
        _mha(op, "q-kv-lengths", "both lengths: offset = kv_lengths[b] - q_lengths[b]", lengths, **p,
             kv_lengths=np.array([8, 4]), q_lengths=np.array([3, 5])),
        _mha(op, "q-kv-lengths-top-left", "both lengths, top-left alignment", lengths, **p,
             kv_lengths=np.array([8, 4]), q_lengths=np.array([3, 5]), align="top_left"),
        _mha(op, "dv-ne-d", "value size 3, head size 8", Dims(Dv=3), **p),
        _mha(op, "dv-gt-d", "value size 9, head size 2", Dims(D=2, Dv=9), **p),
        _mha(op, "l1", "one query, one key", Dims(Lq=1, Lk=1), **p),
        _mha(op, "batch1", "batch of one", Dims(B=1, Hq=3, Hkv=1), **p),
        _mha(op, "batch3-lengths", "batch of three with lengths", Dims(B=3, Lq=5, Lk=7), **p,
             kv_lengths=np.array([7, 1, 4]), q_lengths=np.array([5, 5, 2])),
        _mha(op, "large-logits", "logits in the thousands (overflow bait): the answer is finite", magnitude=20.0, **p),
        _mha(op, "large-logits-negative", "all logits near -1000: no underflow to an empty row",
             extra=_very_negative_bias, **p),
        _mha(op, "large-logits-softcap", "huge logits capped", magnitude=20.0, **p, softcap=30.0),
        _mha(op, "tiny-scale", "scale 1e-3: nearly uniform weights", **p, scale=1e-3),
        _mha(op, "scale", "an explicit scale", magnitude=1.5, **p, scale=0.8),
        _mha(op, "nan-q", "a NaN in q reaches exactly its row", extra=_nan_query, **p),
        _mha(op, "nan-beyond-lengths", "NaN and inf in k, v past kv_lengths never leak", Dims(Lq=6, Lk=8),
             extra=_nan_beyond_lengths, **p),
        *_sink_cases(op),
        *_varlen_cases(op),
        *_long_cases(op),
        *_layout_cases(op),
        *_hidden_nonfinite_cases(op),
    ]
    # fmt: on


def _varlen(op: str, case_id: str, note: str, cu_q: list[int], cu_k: list[int], *, Hq: int = 4, Hkv: int = 2,
            D: int = 8, Dv: int = 6, sinks: bool = False, **options: Any) -> Case:  # fmt: skip
    """A packed variable-length case (contract section 8): ``q (Tq, Hq, D)``, offsets ``cu_q``, ``cu_k``."""
    rng = case_rng(f"{op}/{case_id}")
    inputs = {
        "q": rng.standard_normal((cu_q[-1], Hq, D)),
        "k": rng.standard_normal((cu_k[-1], Hkv, D)),
        "v": rng.standard_normal((cu_k[-1], Hkv, Dv)),
    }
    if sinks:
        inputs["sinks"] = rng.standard_normal(Hq)
    options = {"cu_seqlens_q": np.array(cu_q, dtype=np.int64), "cu_seqlens_k": np.array(cu_k, dtype=np.int64),
               "return_lse": True, **options}  # fmt: skip
    return Case(op, case_id, inputs, options, note=note)


def _varlen_cases(op: str) -> list[Case]:
    """Packed sequences: each is the dense op on its own rows and keys, aligned per sequence."""
    p = TYPICAL_PATTERN[op]
    # fmt: off
    return [
        _varlen(op, "varlen", "3 packed sequences of 3, 0 and 5 queries on 4, 5 and 3 keys", [0, 3, 3, 8],
                [0, 4, 9, 12], **p),
        _varlen(op, "varlen-top-left", "packed sequences, top-left alignment", [0, 5, 7, 8], [0, 2, 9, 12],
                align="top_left", **p),
        _varlen(op, "varlen-empty-keys", "a sequence with queries and no keys: out 0, lse -inf", [0, 2, 6], [0, 0, 7],
                **p),
        _varlen(op, "varlen-sinks", "packed sequences with sinks", [0, 4, 9], [0, 6, 9], sinks=True, **p),
        _varlen(op, "varlen-mqa", "packed sequences, 6 query heads on 1 kv head", [0, 7, 9, 16], [0, 3, 13, 20],
                Hq=6, Hkv=1, **p),
        _varlen(op, "varlen-long", "4 packed sequences of up to 150 tokens", [0, 150, 151, 260, 300],
                [0, 150, 180, 289, 429], Hq=2, Hkv=1, D=16, **p),
    ]
    # fmt: on


def _varlen_errors(op: str) -> list[Case]:
    base = _varlen(op, "error-varlen-base", "", [0, 3, 5], [0, 4, 6], **TYPICAL_PATTERN[op])
    # fmt: off
    return [
        _broken(base, "varlen-only-q", "cu_seqlens_q without cu_seqlens_k", cu_seqlens_k=None),
        _broken(base, "varlen-not-from-0", "offsets starting at 1", cu_seqlens_q=np.array([1, 3, 5])),
        _broken(base, "varlen-decreasing", "decreasing offsets", cu_seqlens_k=np.array([0, 7, 6])),
        _broken(base, "varlen-wrong-total", "offsets not ending at the packed length",
                cu_seqlens_k=np.array([0, 4, 5])),
        _broken(base, "varlen-with-kv-lengths", "kv_lengths with packed sequences", kv_lengths=np.array([1, 1])),
    ]
    # fmt: on


def _sinks(values: tuple[float, ...] | None = None) -> Extra:
    def extra(rng: CaseRandom, d: Dims) -> dict[str, Any]:
        sinks = rng.standard_normal(d.Hq) * 2.0
        if values is not None:
            sinks[: len(values)] = values
        return {"sinks": sinks}

    return extra


def _sink_cases(op: str) -> list[Case]:
    """Learned sinks (contract section 7): a virtual key with no value, never scaled, capped or masked."""
    p = TYPICAL_PATTERN[op]
    # fmt: off
    return [
        _mha(op, "sinks", "one sink logit per head, scale 0.5: unscaled, in the lse", extra=_sinks(), scale=0.5, **p),
        _mha(op, "sinks-softcap", "sinks are never softcapped", magnitude=2.0, extra=_sinks(), softcap=0.7, **p),
        _mha(op, "sinks-empty-rows", "rows with no allowed key: out 0, lse = the sink",
             extra=lambda rng, d: {**_mask_with_empty_rows(rng, d), **_sinks()(rng, d)}, **p),
        _mha(op, "sinks-padding-rows", "padding rows stay out: out 0, lse -inf, sink or not", extra=_sinks(),
             q_lengths=np.array([6, 3]), **p),
        _mha(op, "sinks-neg-inf", "a -inf sink is no sink", extra=_sinks((-np.inf,)), **p),
        replace(_mha(op, "sinks-other-dtype", "sinks in another floating dtype than q", extra=_sinks(), **p),
                other_dtype=("sinks",)),
    ]
    # fmt: on


#: For each multi-head op, a key its typical pattern shows to some rows of a 6 x 6 case and hides from others.
PATTERN_HIDDEN_KEY: dict[str, int] = {"global_attention": 3, "local_attention": 4, "chunked_attention": 5}
#: Where the two special values go: (value in k, value in v).
SPECIALS: dict[str, tuple[float, float]] = {"nan-k-inf-v": (np.nan, np.inf), "inf-k-nan-v": (np.inf, np.nan)}


def _specials(variant: str, batch: int | slice, key: int, q_rows: slice | None = None) -> Extra:
    """Put the variant's special values into ``k`` and ``v`` at ``key`` of ``batch`` (and NaN into
    the ``q`` rows ``q_rows``, the padding rows)."""
    in_k, in_v = SPECIALS[variant]

    def extra(rng: CaseRandom, d: Dims) -> dict[str, Any]:
        q = rng.standard_normal((d.B, d.Hq, d.Lq, d.D))
        k = rng.standard_normal((d.B, d.Hkv, d.Lk, d.D))
        v = rng.standard_normal((d.B, d.Hkv, d.Lk, d.Dv))
        k[batch, :, key, 1] = in_k
        v[batch, :, key, 0] = in_v
        if q_rows is not None:
            q[0, :, q_rows] = np.nan
        return {"q": q, "k": k, "v": v}

    return extra


def _hidden_mask(rng: CaseRandom, d: Dims) -> dict[str, Any]:
    mask = np.ones((d.B, 1, d.Lq, d.Lk), dtype=bool)
    mask[0, :, :, 1] = False  # key 1 hidden from every row of batch 0
    mask[1, :, :3, 1] = False  # and from the first rows of batch 1
    return {"mask": mask}


def _hidden_nonfinite_cases(op: str) -> list[Case]:
    """NaN and inf in ``k`` and ``v`` behind every kind of rule: the rows that cannot see them stay
    finite (masking selects; a library that multiplies by a 0/1 mask leaks NaN into every row)."""
    p = TYPICAL_PATTERN[op]
    cases = []
    for variant in SPECIALS:
        mask = _specials(variant, slice(None), 1)
        # fmt: off
        cases += [
            _mha(op, f"hidden-{variant}-pattern", f"{variant} at a key the pattern shows to some rows only",
                 extra=_specials(variant, slice(None), PATTERN_HIDDEN_KEY[op]), **p),
            _mha(op, f"hidden-{variant}-mask", f"{variant} at a key mask=False hides (all rows of batch 0)",
                 extra=lambda rng, d, mask=mask: {**mask(rng, d), **_hidden_mask(rng, d)}, **p),
            _mha(op, f"hidden-{variant}-lengths", f"{variant} past kv_lengths[0]", extra=_specials(variant, 0, 5), **p,
                 kv_lengths=np.array([4, 6])),
            _mha(op, f"hidden-{variant}-padding", f"{variant} past kv_lengths[0], NaN in the padding rows of q", **p,
                 extra=_specials(variant, 0, 5, q_rows=slice(4, None)), kv_lengths=np.array([5, 6]),
                 q_lengths=np.array([4, 6])),
        ]
        # fmt: on
    if op == "local_attention":
        cases += [
            _mha(op, f"hidden-{v}-window-{side}", f"{v} beyond the {side} side of a window", Dims(Lq=8, Lk=8),
                 extra=_specials(v, slice(None), key), window=window)
            for v in SPECIALS
            for side, key, window in (("left", 1, (1, 0)), ("right", 6, (0, 1)))
        ]  # fmt: skip
    if op == "chunked_attention":
        cases += [
            _mha(op, f"hidden-{v}-chunk-causal", f"{v} in a later chunk and later in the same chunk",
                 Dims(Lq=8, Lk=8), extra=_specials(v, slice(None), 6), chunk_size=4, causal=True)
            for v in SPECIALS
        ]  # fmt: skip
    return cases


#: Sizes of the layout cases: every axis a different size, so a swapped stride cannot go unnoticed.
LAYOUT_DIMS = Dims(B=2, Hq=4, Hkv=2, Lq=7, Lk=9, D=8, Dv=6)


def _same_batches(*names: str) -> Extra:
    """Make the named inputs equal across the batch (what a broadcast, stride-0 input holds)."""

    def extra(rng: CaseRandom, d: Dims) -> dict[str, Any]:
        shapes = {"k": (d.Hkv, d.Lk, d.D), "v": (d.Hkv, d.Lk, d.Dv), "bias": (d.Hq, d.Lq, d.Lk)}
        return {name: np.broadcast_to(rng.standard_normal(shapes[name]), (d.B, *shapes[name])).copy()
                for name in names}  # fmt: skip

    return extra


def _layout_cases(op: str) -> list[Case]:
    """The same values in the memory layouts of :mod:`attnref.conformance.layouts`."""
    p = TYPICAL_PATTERN[op]
    qkv = ("q", "k", "v")
    d = LAYOUT_DIMS
    # fmt: off
    cases = [
        (_mha(op, "layout-transposed", "q, k, v as (B, L, H, D) arrays viewed as (B, H, L, D)", d, **p),
         dict.fromkeys(qkv, "transposed")),
        (_mha(op, "layout-sliced", "q, k, v with an innermost stride of 2 (a slice of a fused buffer)", d, **p),
         dict.fromkeys(qkv, "sliced")),
        (_mha(op, "layout-negative-strides", "k and v read backwards along the sequence", d, **p),
         dict.fromkeys(("k", "v"), "negative-strides")),
        (_mha(op, "layout-broadcast-kv", "k, v and a bias broadcast over the batch (stride 0)", d,
              extra=_same_batches("k", "v", "bias"), **p),
         dict.fromkeys(("k", "v", "bias"), "broadcast")),
        (_mha(op, "layout-readonly", "read-only q, k, v and bias", d, extra=_bias(_full), **p),
         dict.fromkeys((*qkv, "bias"), "readonly")),
        (_mha(op, "layout-fortran", "Fortran-ordered q, k, v and bias", d, extra=_bias(_full), **p),
         dict.fromkeys((*qkv, "bias"), "fortran")),
        (_mha(op, "layout-mixed", "q transposed, k Fortran-ordered, v sliced, bias broadcast", d,
              extra=_same_batches("bias"), **p),
         {"q": "transposed", "k": "fortran", "v": "sliced", "bias": "broadcast"}),
    ]
    # fmt: on
    return [replace(case, layouts=layouts) for case, layouts in cases]


#: Long cases of each multi-head op: several query blocks (fast kernels use 64 to 128 rows), more
#: than 1024 keys, windows and chunks that cross block edges, lengths ending inside a block.
LONG_PATTERNS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "global_attention": ({"causal": True}, {"causal": True}),
    "local_attention": ({"window": (70, 30)}, {"window": (300, 0)}),
    "chunked_attention": ({"chunk_size": 128, "causal": True}, {"chunk_size": 256}),
}


def _long_cases(op: str) -> list[Case]:
    square, long_kv = LONG_PATTERNS[op]
    # fmt: off
    return [
        _mha(op, "long", "200 queries and keys: several query blocks", Dims(B=1, Hq=2, Hkv=1, Lq=200, Lk=200, D=16),
             **square),
        _mha(op, "long-lengths", "long rows with q and kv lengths ending inside blocks",
             Dims(B=2, Hq=1, Hkv=1, Lq=200, Lk=200, D=16, Dv=4), **square, q_lengths=np.array([200, 129]),
             kv_lengths=np.array([157, 200])),
        _mha(op, "long-kv", "9 queries on 1100 keys (past 1024), kv lengths",
             Dims(B=2, Hq=2, Hkv=1, Lq=9, Lk=1100, D=16, Dv=4), **long_kv, kv_lengths=np.array([1100, 613])),
    ]
    # fmt: on


def _alignment_cases(op: str, pattern: dict[str, Any], tag: str = "") -> list[Case]:
    """``Lq < Lk`` and ``Lq > Lk`` in both alignments."""
    cases = []
    for name, dims in (("lq-lt-lk", Dims(Lq=3, Lk=8)), ("lq-gt-lk", Dims(Lq=8, Lk=3))):
        for align in ("bottom_right", "top_left"):
            case_id = f"{name}{tag}-{align.replace('_', '-')}"
            cases.append(_mha(op, case_id, f"Lq={dims.Lq}, Lk={dims.Lk}, align={align}", dims, **pattern, align=align))
    return cases


def _global_cases() -> list[Case]:
    op = "global_attention"
    # fmt: off
    return [
        _mha(op, "full", "no pattern: every key"),
        _mha(op, "full-lq-ne-lk", "no pattern, Lq != Lk", Dims(Lq=3, Lk=7)),
        _mha(op, "full-kv-lengths", "no pattern with kv_lengths", Dims(Lq=3, Lk=7), kv_lengths=np.array([7, 2])),
        _mha(op, "decode", "one query against a KV cache, causal", Dims(Lq=1, Lk=9), causal=True),
        _mha(op, "nearly-tied", "scores near 10 within a float16 rounding of each other: ill-conditioned in 16 bits",
             Dims(B=1, Hq=2, Hkv=1, Lq=4, Lk=24, D=8, Dv=4), extra=_nearly_tied),
        _mha(op, "long-flat", "4096 keys of nearly equal weight: a 16-bit running sum of the weights stalls",
             Dims(B=1, Hq=1, Hkv=1, Lq=2, Lk=4096, D=8, Dv=4), magnitude=0.05),
        *_alignment_cases(op, {"causal": True}),
        *_shared_multihead(op),
    ]
    # fmt: on


def _local_cases() -> list[Case]:
    op = "local_attention"
    windows = {
        "window-0": 0,
        "window-int": 2,
        "window-asym": (3, 1),
        "window-right-only": (0, 2),
        "window-left-unbounded": (None, 1),
        "window-right-unbounded": (2, None),
        "window-minus-one": (-1, 0),
        "window-int-minus-one": -1,
        "window-both-unbounded": (None, None),
        "window-wider": (50, 50),
        "window-causal-sliding": (3, 0),
    }
    cases = [_mha(op, case_id, f"window={w!r}", Dims(Lq=7, Lk=7), window=w) for case_id, w in windows.items()]
    # fmt: off
    return [
        *cases,
        _mha(op, "window-0-lq-gt-lk", "window 0, Lq > Lk: rows before the keys are empty", Dims(Lq=7, Lk=4),
             window=0),
        _mha(op, "window-asym-lq-lt-lk", "asymmetric window, Lq < Lk", Dims(Lq=3, Lk=9), window=(1, 2)),
        _mha(op, "window-wide-right-top-left", "right-heavy window, top-left", Dims(Lq=5, Lk=9), window=(0, 3),
             align="top_left"),
        *_alignment_cases(op, {"window": (2, 1)}),
        *_shared_multihead(op),
    ]
    # fmt: on


def _chunked_cases() -> list[Case]:
    op = "chunked_attention"
    # fmt: off
    return [
        _mha(op, "chunk-1", "chunks of one key", Dims(Lq=7, Lk=7), chunk_size=1),
        _mha(op, "chunk-divides", "chunk 3 of length 9", Dims(Lq=9, Lk=9), chunk_size=3),
        _mha(op, "chunk-not-dividing", "chunk 3 of length 7", Dims(Lq=7, Lk=7), chunk_size=3),
        _mha(op, "chunk-longer", "chunk 16 of length 7: global", Dims(Lq=7, Lk=7), chunk_size=16),
        _mha(op, "chunk-causal", "causal chunks", Dims(Lq=7, Lk=7), chunk_size=3, causal=True),
        _mha(op, "chunk-1-causal", "causal chunks of one: the diagonal", Dims(Lq=5, Lk=5), chunk_size=1, causal=True),
        _mha(op, "chunk-longer-causal", "causal, chunk longer than the sequence", Dims(Lq=6, Lk=6), chunk_size=16,
             causal=True),
        _mha(op, "chunk-negative-positions", "Lq > Lk bottom-right: negative positions see no key", Dims(Lq=8, Lk=5),
             chunk_size=2),
        *_alignment_cases(op, {"chunk_size": 3}),
        *_alignment_cases(op, {"chunk_size": 3, "causal": True}, "-causal"),
        _mha(op, "chunk-causal-kv-lengths", "causal chunks with per-batch lengths", Dims(Lq=5, Lk=9), chunk_size=3,
             causal=True, kv_lengths=np.array([9, 6]), q_lengths=np.array([5, 4])),
        *_shared_multihead(op),
    ]
    # fmt: on


# -- pooling ops -------------------------------------------------------------
def _additive(
    case_id: str, note: str, *, B: int = 2, L: int = 7, Din: int = 5, Dh: int = 4, magnitude: float = 1.0,
    mask: Callable[[CaseRandom], np.ndarray] | None = None, **options: Any,
) -> Case:  # fmt: skip
    op = "additive_attention"
    rng = case_rng(f"{op}/{case_id}")
    inputs = {
        "x": rng.standard_normal((B, L, Din)),
        "w_in": rng.standard_normal((Din, Dh)),
        "b_in": rng.standard_normal(Dh) * 0.5,
        "w_out": rng.standard_normal(Dh) * magnitude,
    }
    if mask is not None:
        options["mask"] = mask(rng)
    return Case(op, case_id, inputs, options, note=note)


def _empty_batch(rng: CaseRandom) -> np.ndarray:
    mask = rng.random((2, 7)) < 0.6
    mask[0] = False  # batch 0 attends nothing: context and weights 0
    mask[1, 3] = True
    return mask


def _hole_at_centre(rng: CaseRandom) -> np.ndarray:
    mask = np.ones((2, 7), dtype=bool)
    mask[0, 3] = False
    return mask


def _additive_cases() -> list[Case]:
    # fmt: off
    return [
        replace(_additive("layout-fortran", "Fortran-ordered x and w_in", window=(1, 2)),
                layouts={"x": "fortran", "w_in": "fortran"}),
        replace(_additive("layout-sliced", "x and w_in with an innermost stride of 2"),
                layouts={"x": "sliced", "w_in": "sliced"}),
        replace(_additive("layout-negative-strides", "x read backwards along the sequence", window=(1, 2)),
                layouts={"x": "negative-strides"}),
        _additive("global", "global attention pooling"),
        _additive("global-b-out", "b_out shifts every score alike", b_out=0.75),
        _additive("global-mask", "mask with a batch attending nothing", mask=_empty_batch),
        _additive("window-even-length", "default centre L // 2 = 4 of L = 8", L=8, window=(1, 1)),
        _additive("window-odd-length", "default centre L // 2 = 3 of L = 7", window=(1, 1)),
        _additive("window-asym-center", "window (2, 0) at centre 1 (clipped at 0)", window=(2, 0), center=1),
        _additive("window-center-per-batch", "one centre per batch", window=(1, 2), center=np.array([0, 6])),
        _additive("window-left-unbounded", "(None, 1) around 3", window=(None, 1), center=3),
        _additive("window-right-unbounded", "(0, -1) around 2", window=(0, -1), center=2),
        _additive("window-wider", "window wider than the sequence", window=(20, 20)),
        _additive("window-0", "only the centre", window=0),
        _additive("window-0-masked", "the only position is masked: zeros", window=0, mask=_hole_at_centre),
        _additive("window-mask", "window and mask together", window=(2, 2), mask=_empty_batch),
        _additive("l1", "a single position", L=1),
        _additive("l1-window", "a single position, window", L=1, window=(3, 3)),
        _additive("batch1", "batch of one", B=1, window=(1, 1), center=np.array([5])),
        _additive("sizes-1", "one feature, one hidden unit", Din=1, Dh=1),
        _additive("large-logits", "scores in the thousands (overflow bait)", magnitude=1000.0),
        _additive("large-logits-window", "huge scores in a window", magnitude=1000.0, window=(2, 1), center=4),
        _additive("long", "1100 positions", L=1100, Din=16, Dh=8),
        _additive("long-window", "1100 positions, a window per batch", L=1100, Din=16, Dh=8, window=(200, 300),
                  center=np.array([150, 900])),
    ]
    # fmt: on


def _luong(
    case_id: str, note: str, *, score: str = "dot", mode: str = "global", B: int = 2, T: int = 5, S: int = 7,
    d: int = 6, da: int = 4, dp: int = 3, magnitude: float = 0.6, gate: float = 1.0, **options: Any,
) -> Case:  # fmt: skip
    op = "luong_attention"
    rng = case_rng(f"{op}/{case_id}")
    inputs = {"h_t": rng.standard_normal((B, T, d)) * magnitude, "h_s": rng.standard_normal((B, S, d)) * magnitude}
    if score == "general":
        inputs["w_a"] = rng.standard_normal((d, d)) * 0.5
    elif score == "concat":
        inputs["w_a"] = rng.standard_normal((2 * d, da)) * 0.5
        inputs["v_a"] = rng.standard_normal(da)
    if mode == "local-p":
        inputs["w_p"] = rng.standard_normal((d, dp))
        inputs["v_p"] = rng.standard_normal(dp) * gate
    options.update(score=score, mode=mode)
    return Case(op, case_id, inputs, options, note=note)


def _luong_cases() -> list[Case]:
    cases = []
    for score in ("dot", "general", "concat"):
        cases += [
            _luong(f"global-{score}", f"global, {score} score", score=score),
            _luong(f"local-m-{score}", f"local-m, {score} score", score=score, mode="local-m", half_width=1),
            _luong(f"local-p-{score}", f"local-p, {score} score", score=score, mode="local-p", half_width=2),
        ]
    lengths = np.array([7, 3])
    # fmt: off
    return [
        *cases,
        replace(_luong("layout-fortran", "Fortran-ordered h_t and h_s", score="general"),
                layouts={"h_t": "fortran", "h_s": "fortran", "w_a": "fortran"}),
        replace(_luong("layout-sliced", "h_s with an innermost stride of 2", mode="local-m", half_width=2),
                layouts={"h_t": "sliced", "h_s": "sliced"}),
        replace(_luong("layout-negative-strides", "h_s read backwards", mode="local-p", half_width=2),
                layouts={"h_s": "negative-strides"}),
        _luong("global-source-lengths", "source_lengths 7 and 3", source_lengths=lengths),
        _luong("global-source-lengths-0", "an empty source: zeros", source_lengths=np.array([0, 5])),
        _luong("global-source-lengths-list", "source_lengths as a list", source_lengths=[2, 7]),
        _luong("local-m-t-gt-s", "T > S_b: p_t = min(t, S_b - 1)", mode="local-m", half_width=1, T=8, S=5,
               source_lengths=np.array([5, 2])),
        _luong("local-m-half-width-0", "D = 0: one source position", mode="local-m", half_width=0),
        _luong("local-m-wide", "D wider than the source", mode="local-m", half_width=10, score="general"),
        _luong("local-m-source-lengths-0", "an empty source in local-m", mode="local-m", half_width=1,
               source_lengths=np.array([0, 4])),
        _luong("local-p-source-lengths", "p_t = S_b * sigmoid(...) with S_b per batch", mode="local-p", half_width=2,
               source_lengths=lengths),
        _luong("local-p-half-width-1", "D = 1, sigma = 0.5", mode="local-p", half_width=1, score="concat"),
        _luong("local-p-wide", "D = 5 on S = 7", mode="local-p", half_width=5, score="general"),
        _luong("local-p-saturated", "a saturated gate puts p_t at 0 or S_b", mode="local-p", half_width=2,
               gate=30.0),
        _luong("t1-s1", "one target step, one source position", T=1, S=1),
        _luong("t1-local-p", "one target step, local-p", T=1, mode="local-p", half_width=2),
        _luong("batch1", "batch of one", B=1, mode="local-m", half_width=2, score="concat"),
        _luong("large-logits", "dot scores in the thousands (overflow bait)", magnitude=15.0),
        _luong("large-logits-local-p", "huge scores, local-p", magnitude=15.0, mode="local-p", half_width=3),
        _luong("long-global", "1100 source positions", T=12, S=1100, d=16, magnitude=0.3,
               source_lengths=np.array([1100, 700])),
        _luong("long-local-m", "local-m over 1100 positions", T=12, S=1100, d=16, magnitude=0.3, mode="local-m",
               half_width=100, score="general"),
        _luong("long-local-p", "local-p over 1100 positions", T=12, S=1100, d=16, magnitude=0.3, mode="local-p",
               half_width=50, score="concat", source_lengths=np.array([1100, 700])),
    ]
    # fmt: on


_NAMED: dict[str, Callable[[], list[Case]]] = {
    "global_attention": _global_cases,
    "local_attention": _local_cases,
    "chunked_attention": _chunked_cases,
    "additive_attention": _additive_cases,
    "luong_attention": _luong_cases,
}


def named_cases(op: str) -> list[Case]:
    """The named (non-error) edge cases of ``op``."""
    if op in GRADIENT_OF:
        from attnref.conformance.gradients import gradient_cases

        return gradient_cases(op)
    if op in ("paged_attention", "merge_attention_states"):
        from attnref.conformance.states import state_cases

        return state_cases(op)
    return _NAMED[op]()


# -- error cases -------------------------------------------------------------
def _broken(base: Case, case_id: str, note: str, *, inputs: dict[str, Any] | None = None,
            other_dtype: tuple[str, ...] = (), **options: Any) -> Case:  # fmt: skip
    """``base`` with some inputs or options replaced.

    A replaced input that is not a float array (integer q, say) moves to the
    options, so that it is not rounded to the dtype under test.
    """
    new_inputs = dict(base.inputs)
    new_options = dict(base.options)
    for name, value in (inputs or {}).items():
        new_inputs.pop(name, None)
        if isinstance(value, np.ndarray) and value.dtype.kind != "f":
            new_options[name] = value
        else:
            new_inputs[name] = value
    new_options.update(options)
    return replace(base, id=f"error-{case_id}", inputs=new_inputs, options=new_options, expect_error=True, note=note,
                   other_dtype=other_dtype)  # fmt: skip


def _multihead_errors(op: str) -> list[Case]:
    base = _mha(op, "error-base", "", Dims(B=2, Hq=2, Hkv=1, Lq=4, Lk=5, D=3, Dv=2), **TYPICAL_PATTERN[op])
    rng = case_rng(f"{op}/errors")
    q, k, v = base.inputs["q"], base.inputs["k"], base.inputs["v"]
    ints = {
        "q": np.ones((2, 2, 4, 3), np.int32),
        "k": np.ones((2, 1, 5, 3), np.int32),
        "v": np.ones((2, 1, 5, 2), np.int32),
    }
    three_heads = {"q": rng.standard_normal((2, 3, 4, 3)), "k": rng.standard_normal((2, 2, 5, 3)),
                   "v": rng.standard_normal((2, 2, 5, 2))}  # fmt: skip
    # fmt: off
    cases = [
        _broken(base, "q-rank", "q with 3 dimensions", inputs={"q": q[0]}),
        _broken(base, "heads-not-divisible", "3 query heads on 2 kv heads", inputs=three_heads),
        _broken(base, "kv-length-mismatch", "v shorter than k", inputs={"v": v[:, :, :4]}),
        _broken(base, "head-dim-mismatch", "k head size 2, q head size 3", inputs={"k": k[..., :2]}),
        _broken(base, "batch-mismatch", "k batch 1, q batch 2", inputs={"k": k[:1]}),
        _broken(base, "kv-heads-mismatch", "v with another head count than k",
                inputs={"v": rng.standard_normal((2, 2, 5, 2))}),
        _broken(base, "empty-dim", "a query length of 0", inputs={"q": q[:, :, :0]}),
        _broken(base, "int-dtype", "integer q, k, v", inputs=ints),
        _broken(base, "mixed-dtype", "k and v in another dtype than q", other_dtype=("k", "v")),
        _broken(base, "mask-dtype", "a float mask", mask=np.ones((4, 5))),
        _broken(base, "mask-shape", "mask (4, 3) not broadcastable to (B, Hq, Lq, Lk)", mask=np.ones((4, 3), bool)),
        _broken(base, "bias-shape", "bias (3,) not broadcastable", inputs={"bias": np.ones(3)}),
        _broken(base, "kv-lengths-too-long", "kv_lengths above Lk", kv_lengths=np.array([6, 2])),
        _broken(base, "kv-lengths-negative", "a negative kv length", kv_lengths=np.array([-1, 2])),
        _broken(base, "kv-lengths-shape", "three kv lengths for batch 2", kv_lengths=np.array([1, 2, 3])),
        _broken(base, "kv-lengths-float", "float kv lengths", kv_lengths=np.array([1.0, 2.0])),
        _broken(base, "q-lengths-too-long", "q_lengths above Lq", q_lengths=np.array([5, 1])),
        _broken(base, "scale-zero", "scale 0", scale=0.0),
        _broken(base, "scale-nan", "scale NaN", scale=float("nan")),
        _broken(base, "scale-str", "scale given as a string", scale="0.5"),
        _broken(base, "softcap-negative", "softcap -1", softcap=-1.0),
        _broken(base, "align-unknown", "align 'center'", align="center"),
        _broken(base, "return-lse-not-bool", "return_lse='yes'", return_lse="yes"),
    ]
    if op == "global_attention":
        cases += [_broken(base, "causal-not-bool", "causal=1", causal=1)]
    elif op == "local_attention":
        cases += [
            _broken(base, "window-negative", "window=-2", window=-2),
            _broken(base, "window-side-negative", "window=(3, -2)", window=(3, -2)),
            _broken(base, "window-str", "window='2'", window="2"),
            _broken(base, "window-triple", "window=(1, 2, 3)", window=(1, 2, 3)),
            _broken(base, "window-float", "window=(1.5, 0)", window=(1.5, 0)),
        ]
    else:
        cases += [
            _broken(base, "chunk-zero", "chunk_size=0", chunk_size=0),
            _broken(base, "chunk-negative", "chunk_size=-3", chunk_size=-3),
            _broken(base, "chunk-float", "chunk_size=2.0", chunk_size=2.0),
            _broken(base, "causal-not-bool", "causal='no'", causal="no"),
        ]
    # fmt: on
    return cases


def _additive_errors() -> list[Case]:
    base = _additive("error-base", "", B=2, L=5, Din=3, Dh=4)
    x = base.inputs["x"]
    # fmt: off
    return [
        _broken(base, "x-rank", "x with 2 dimensions", inputs={"x": x[0]}),
        _broken(base, "w-in-shape", "w_in for 4 features, x has 3", inputs={"w_in": np.ones((4, 4))}),
        _broken(base, "b-in-shape", "b_in of 3, hidden 4", inputs={"b_in": np.ones(3)}),
        _broken(base, "w-out-shape", "w_out (4, 1)", inputs={"w_out": np.ones((4, 1))}),
        _broken(base, "mask-shape", "mask (2, 4) for L = 5", mask=np.ones((2, 4), bool)),
        _broken(base, "mask-dtype", "an int mask", mask=np.ones((2, 5), np.int64)),
        _broken(base, "mixed-dtype", "w_in in another dtype than x", other_dtype=("w_in",)),
        _broken(base, "center-without-window", "a centre for global pooling", center=2),
        _broken(base, "center-out-of-range", "centre 5 for L = 5", window=(1, 1), center=5),
        _broken(base, "center-float", "a float centre", window=(1, 1), center=np.array([1.0, 2.0])),
        _broken(base, "window-negative", "window (-2, 1)", window=(-2, 1)),
    ]
    # fmt: on


def _luong_errors() -> list[Case]:
    base = _luong("error-base", "", B=2, T=3, S=4, d=3)
    rng = case_rng("luong_attention/errors")
    local_p = {"w_p": np.ones((3, 2)), "v_p": np.ones(2)}
    # fmt: off
    return [
        _broken(base, "score-unknown", "score='bilinear'", score="bilinear"),
        _broken(base, "mode-unknown", "mode='local'", mode="local"),
        _broken(base, "general-without-w-a", "score='general' needs w_a", score="general"),
        _broken(base, "general-w-a-shape", "w_a (3, 2)", score="general", inputs={"w_a": np.ones((3, 2))}),
        _broken(base, "concat-without-v-a", "score='concat' needs v_a", score="concat",
                inputs={"w_a": np.ones((6, 2))}),
        _broken(base, "local-m-without-half-width", "mode='local-m' needs half_width", mode="local-m"),
        _broken(base, "local-m-half-width-negative", "half_width -1", mode="local-m", half_width=-1),
        _broken(base, "local-p-half-width-0", "local-p needs half_width >= 1", mode="local-p", half_width=0,
                inputs=local_p),
        _broken(base, "local-p-without-w-p", "mode='local-p' needs w_p and v_p", mode="local-p", half_width=1),
        _broken(base, "local-m-half-width-float", "half_width 1.5", mode="local-m", half_width=1.5),
        _broken(base, "source-lengths-too-long", "source length 5 for S = 4", source_lengths=np.array([5, 1])),
        _broken(base, "source-lengths-float", "float source lengths", source_lengths=np.array([2.0, 1.0])),
        _broken(base, "int-dtype", "integer h_t and h_s", inputs={"h_t": np.ones((2, 3, 3), np.int64),
                                                                  "h_s": np.ones((2, 4, 3), np.int64)}),
        _broken(base, "feature-mismatch", "h_s with 4 features", inputs={"h_s": rng.standard_normal((2, 4, 4))}),
        _broken(base, "batch-mismatch", "h_s batch 1", inputs={"h_s": rng.standard_normal((1, 4, 3))}),
        _broken(base, "mixed-dtype", "h_s in another dtype than h_t", other_dtype=("h_s",)),
    ]
    # fmt: on


def error_cases(op: str) -> list[Case]:
    """The invalid-input cases of ``op`` (ids start with ``error-``)."""
    if op in MULTIHEAD_OPS:
        return _multihead_errors(op) + _varlen_errors(op)
    if op in GRADIENT_OF:
        from attnref.conformance.gradients import gradient_error_cases

        return gradient_error_cases(op)
    if op in ("paged_attention", "merge_attention_states"):
        from attnref.conformance.states import state_error_cases

        return state_error_cases(op)
    return _additive_errors() if op == "additive_attention" else _luong_errors()


# -- the whole catalogue -----------------------------------------------------
def catalogue(
    ops: Iterable[str] | None = None, examples: int = DEFAULT_EXAMPLES, seed: int = 0, *, long: bool = False
) -> list[Case]:
    """Every case of the selected ops: named, error and ``examples`` random ones per op, and with
    ``long`` the long-context tier (:mod:`attnref.conformance.long`).

    The order and the ids depend only on ``ops``, ``examples``, ``seed`` and ``long``.
    """
    selected = [op for op in OPS if ops is None or op in set(ops)]
    cases: list[Case] = []
    for op in selected:
        cases += named_cases(op) + error_cases(op)
    if examples > 0:
        from attnref.conformance.strategies import random_cases

        for op in selected:
            cases += random_cases(op, examples, seed)
    if long:
        from attnref.conformance.long import long_cases

        for op in selected:
            cases += long_cases(op)
    return cases
