"""Likely causes: what the pattern of a backend's failures points to, where it is clear.

Each rule looks at which tests failed and which passed, by their ids
(``op/case/dtype``), and names a cause only when the pattern is unambiguous:

* every ``bottom-right`` case fails and every ``top-left`` one passes: the
  alignment offset ``Lk - Lq`` (bottom-right alignment);
* every failure is a case of one family (``lengths``, ``gqa``/``mqa``,
  ``softcap``, ``bias``, ``mask``, NaN/inf, ``layout-``, ``error-``,
  ``window``, ``chunk``, ``long``, ``decode``, gradients of one kind): that
  family's feature;
* every failure is in a 16-bit dtype (or in one dtype): precision.

The causes are hints for a human, never part of the verdict.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["FAMILIES", "likely_causes"]

#: A case family: a regular expression over case ids, and what it points to when only it fails.
FAMILIES: tuple[tuple[str, str], ...] = (
    (r"lengths", "lengths: kv_lengths / q_lengths (per-batch offsets, padding rows)"),
    (r"gqa|mqa", "GQA/MQA: the kv head of query head h is h // (Hq // Hkv)"),
    (r"softcap", "softcap: softcap * tanh(scale * q.k / softcap), before bias and mask"),
    (r"bias", "bias: added after the softcap, broadcast over every axis of size 1"),
    (r"mask", "mask: True = may attend, per head and broadcast"),
    (r"nan|inf|nonfinite", "non-finite values: masking must select, never multiply (NaN * 0 leaks)"),
    (r"^layout-", "memory layouts: strides, views, broadcast (stride-0) and read-only inputs"),
    (r"^error-", "input validation: the reference's error class and a message naming the argument"),
    (r"window", "windows: p - left <= j <= p + right, None/-1 unbounded"),
    (r"chunk", "chunks: j // chunk_size == p // chunk_size"),
    (r"long", "long sequences: many blocks, index arithmetic, positions"),
    (r"decode", "decoding: few queries against a long KV cache"),
    (r"sink", "sinks: a virtual key with no value, unscaled, in the lse"),
    (r"varlen", "packed variable-length sequences: per-sequence offsets and alignment"),
    (r"paged|block-table", "paged KV cache: block_table lookup"),
    (r"merge", "merging partial states: the max shift and -inf parts"),
)


def _case(result: Any) -> str:
    return result.case


def likely_causes(results: Sequence[Any]) -> list[str]:
    """The likely causes of the failures among ``results`` (each with ``case``, ``dtype``, ``status``)."""
    failed = [r for r in results if r.status in ("fail", "error") and getattr(r, "xfail", None) is None]
    if not failed:
        return []
    causes = []
    failing_cases = {(r.op, r.case) for r in failed}
    bottom = {(r.op, r.case) for r in results if "bottom-right" in r.case and r.status != "unsupported"}
    top = {(r.op, r.case) for r in results if "top-left" in r.case and r.status != "unsupported"}
    if bottom and bottom <= failing_cases and not (top & failing_cases):
        causes.append("alignment: every bottom-right case fails and every top-left one passes (offset Lk - Lq)")
    for pattern, cause in FAMILIES:
        if all(re.search(pattern, case) for _, case in failing_cases):
            causes.append(f"only {pattern!r} cases fail: {cause}")
    dtypes = {r.dtype for r in failed}
    if len({r.dtype for r in results}) == len(dtypes):
        pass  # every dtype run fails: no hint
    elif dtypes <= {"float16", "bfloat16"}:
        causes.append(f"only 16-bit dtypes fail ({', '.join(sorted(dtypes))}): accumulation or softmax precision")
    elif len(dtypes) == 1:
        causes.append(f"only {dtypes.pop()} fails")
    return causes
