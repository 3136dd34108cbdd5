"""A small NumPy backend built like a real kernel, with bugs that can be planted.

:class:`ToyBackend` works the way a fused kernel does: scores in float32 for
16-bit inputs (float64 for float64), an online softmax over blocks of keys,
a float32 lse for 16-bit inputs, GQA by indexing rather than repeating, and
masks applied by selection. Without bugs it must pass the whole conformance
catalogue in every dtype; that is the evidence that the tolerance accepts an
honest kernel. Each entry of :data:`BUGS` switches on one classic mistake,
and the suite must catch every one of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

import attnref
from attnref.backend import OPS
from attnref.dtypes import DTYPE_NAMES
from attnref.patterns import Pattern
from attnref.registry import PluginSource, Registry
from attnref.validation import (
    check_additive,
    check_attention,
    check_luong,
    check_merge,
    check_paged,
    check_upstream_gradient,
    check_window,
    chunk_pattern,
    full_pattern,
    host_integers,
)

# Known gap (reported to the reference's owners): the reference's precision="bfloat16" run sums the softmax
# denominator sequentially in bfloat16 (ml_dtypes has no pairwise sum), so on a long flat row its own error is
# about 15 and the bfloat16 bound is too loose to see "fp16-denominator"; float16 sums pairwise and catches it.

#: Keys per block of the online softmax: small blocks for short rows (so partial and
#: single-key blocks happen), kernel-sized ones for long rows.
SHORT_KEY_BLOCK, LONG_KEY_BLOCK = 4, 128


@dataclass(frozen=True)
class Bug:
    """A planted bug: what it is, a case that must catch it, and the dtypes that case catches it in.

    ``caught_in`` is asserted exactly by the detection-matrix test: a bug of the
    logic is caught in every dtype; a precision bug only where it changes the
    arithmetic (``fp32-in-fp16`` only in float32).
    """

    description: str
    op: str
    dtype: str
    catches: str  # the case id (within ``op``) that must fail or error
    caught_in: tuple[str, ...] = DTYPE_NAMES


BUGS: dict[str, Bug] = {
    "window-off-by-one": Bug("window left side one too wide (left + 1)", "local_attention", "float64", "window-asym"),
    "window-right-ignored": Bug("right side of the window ignored", "local_attention", "float64", "window-int"),
    "alignment-ignored": Bug(
        "bottom_right treated as top_left", "global_attention", "float64", "lq-lt-lk-bottom-right"
    ),
    "chunk-alignment-ignored": Bug(
        "chunks built from i, not the aligned p", "chunked_attention", "float64", "lq-lt-lk-bottom-right"
    ),
    "lengths-offset-static": Bug(
        "offset Lk - Lq ignores per-batch lengths", "global_attention", "float64", "q-kv-lengths"
    ),
    "nan-empty-rows": Bug("fully-masked rows divide 0 by 0 (NaN)", "global_attention", "float64", "mask"),
    "neg-inf-scores-nan": Bug(
        "rows whose allowed scores are all -inf give NaN", "local_attention", "float64", "bias-neg-inf"
    ),
    "fp32-in-fp16": Bug("float32 inputs computed in float16", "global_attention", "float32", "basic", ("float32",)),
    "fp16-in-bf16": Bug("float16 inputs computed in bfloat16", "global_attention", "float16", "basic", ("float16",)),
    "gqa-modulo": Bug("kv head h % Hkv instead of h // group", "global_attention", "float64", "gqa"),
    "softcap-after-bias": Bug("softcap applied after the bias", "local_attention", "float64", "softcap-bias"),
    "softcap-no-divide": Bug(
        "softcap * tanh(s) without dividing s by softcap", "global_attention", "float64", "softcap"
    ),
    "scale-ignored": Bug("explicit scale ignored (always 1/sqrt(D))", "chunked_attention", "float64", "tiny-scale"),
    "scale-no-sqrt": Bug("default scale 1/D instead of 1/sqrt(D)", "global_attention", "float64", "basic"),
    "kv-lengths-ignored": Bug("kv_lengths ignored", "local_attention", "float64", "kv-lengths"),
    "q-padding-computed": Bug("rows past q_lengths computed, not zeroed", "global_attention", "float64", "q-lengths"),
    "lse-log2": Bug("lse in base 2", "global_attention", "float64", "basic"),
    "no-max-shift": Bug("softmax without subtracting the running max", "global_attention", "float64", "large-logits"),
    "chunk-off-by-one": Bug("chunk index of (p + 1) // c", "chunked_attention", "float64", "chunk-not-dividing"),
    "chunk-causal-ignored": Bug("causal ignored in chunked attention", "chunked_attention", "float64", "chunk-causal"),
    "mask-inverted": Bug("mask True = masked out", "global_attention", "float64", "mask"),
    "nan-leak": Bug(
        "P @ V multiplies disallowed NaN/inf values by 0", "global_attention", "float64", "nan-beyond-lengths"
    ),
    "accepts-bad-window": Bug(
        "negative window sides read as unbounded", "local_attention", "float64", "error-window-side-negative"
    ),
    "kv-lengths-unchecked": Bug(
        "kv_lengths not range-checked", "global_attention", "float64", "error-kv-lengths-too-long"
    ),
    "dtype-upcast": Bug(
        "16-bit inputs return a float32 out", "local_attention", "float16", "basic", ("float16", "bfloat16")
    ),
    "lse-always": Bug("returns (out, lse) even when return_lse=False", "global_attention", "float64", "out-only"),
    "additive-centre": Bug(
        "default centre (L - 1) // 2 instead of L // 2", "additive_attention", "float64", "window-even-length"
    ),
    "additive-mask-window": Bug("mask dropped when a window is given", "additive_attention", "float64", "window-mask"),
    "luong-renormalised": Bug("local-p renormalised after the Gaussian", "luong_attention", "float64", "local-p-dot"),
    "luong-no-clamp": Bug("local-m p_t = t without min(t, S_b - 1)", "luong_attention", "float64", "local-m-t-gt-s"),
    "luong-full-length": Bug("local-p p_t from S, not S_b", "luong_attention", "float64", "local-p-source-lengths"),
    "luong-sigma": Bug("local-p sigma = D instead of D / 2", "luong_attention", "float64", "local-p-general"),
    "luong-general-transposed": Bug(
        "general score with w_a transposed", "luong_attention", "float64", "global-general"
    ),
    "additive-first-centre": Bug(
        "the first batch's centre used for every batch", "additive_attention", "float64", "window-center-per-batch"
    ),
    "empty-lse-zero": Bug("lse 0 instead of -inf for padding rows", "global_attention", "float64", "q-lengths"),
    "lse-missing-max": Bug("lse without the max added back", "chunked_attention", "float64", "basic"),
    "nan-squashed": Bug("NaN scores treated as masked", "local_attention", "float64", "nan-q"),
    "mask-before-softcap": Bug(
        "mask applied as -inf before the softcap, which makes it -softcap",
        "global_attention",
        "float64",
        "softcap-mask",
    ),
    "mask-head0": Bug("head 0's mask used for every head", "local_attention", "float64", "mask-per-head"),
    "lengths-list-unsupported": Bug(
        "kv_lengths given as a list raise", "chunked_attention", "float64", "kv-lengths-list"
    ),
    "keys-capped-1024": Bug("keys past 1024 ignored (a fixed maximum length)", "local_attention", "float64", "long-kv"),
    "accepts-mixed-dtypes": Bug(
        "k and v cast to q's dtype instead of rejected", "chunked_attention", "float16", "error-mixed-dtype"
    ),
    "tail-block-dropped": Bug("the last, partial key block skipped", "global_attention", "float64", "basic"),
    "mutates-input": Bug("q scaled in place", "local_attention", "float64", "basic"),
    "luong-concat-order": Bug("concat score as concat(h_s, h_t)", "luong_attention", "float64", "global-concat"),
    # the classic bugs of issue 10 item 9
    "scale-after-softcap": Bug(
        "scale applied after the softcap: scale * softcap * tanh(q.k / softcap)",
        "global_attention",
        "float64",
        "softcap",
    ),
    "bias-head0": Bug("head 0's bias broadcast to every head", "local_attention", "float64", "bias-broadcast-heads"),
    "fp16-denominator": Bug(
        "softmax denominator summed key by key in the 16-bit input dtype",
        "global_attention",
        "float16",
        "long-flat",
        ("float16",),  # known gap: see below
    ),
    "d-dv-confusion": Bug("default scale 1/sqrt(Dv) instead of 1/sqrt(D)", "chunked_attention", "float64", "dv-ne-d"),
    # non-finite values hidden by a rule (issue 10 item 10)
    "mask-added-not-selected": Bug(
        "masking adds -inf to the scores instead of selecting (NaN + -inf = NaN leaks from a hidden key)",
        "local_attention",
        "float64",
        "hidden-nan-k-inf-v-pattern",
    ),
    # gradients (issue 14 item 3): each caught by a named gradient case
    "vjp-dq-no-scale": Bug("dq without the softmax scale", "global_attention_vjp", "float64", "basic"),
    "vjp-gqa-not-summed": Bug(
        "dk, dv of a kv head from the last query head of its group, not summed",
        "local_attention_vjp",
        "float64",
        "gqa",
    ),
    "vjp-dlse-ignored": Bug("dlse ignored", "chunked_attention_vjp", "float64", "dlse"),
    "vjp-softcap-chain-dropped": Bug(
        "the softcap's 1 - tanh^2 dropped from the chain rule", "global_attention_vjp", "float64", "softcap"
    ),
    "vjp-dk-dv-swapped": Bug("returns (dq, dv, dk)", "local_attention_vjp", "float64", "basic"),
    "vjp-dbias-not-summed": Bug(
        "dbias of a broadcast bias taken from the first batch and head, not summed",
        "global_attention_vjp",
        "float64",
        "bias-broadcast-rows",
    ),
    "vjp-window-off-by-one": Bug(
        "the window's left side one wider in the backward pass only",
        "local_attention_vjp",
        "float64",
        "window-left-edge",
    ),
    "vjp-nan-masked-rows": Bug(
        "fully-masked rows give 0/0 = NaN gradients", "chunked_attention_vjp", "float64", "mask"
    ),
    "vjp-16bit-accumulation": Bug(
        "dk, dv summed over query rows in a running 16-bit sum",
        "global_attention_vjp",
        "float16",
        "long-queries",
        ("float16", "bfloat16"),
    ),
    "vjp-alignment": Bug(
        "bottom_right treated as top_left in the backward pass",
        "local_attention_vjp",
        "float64",
        "lq-lt-lk-bottom-right",
    ),
    "vjp-dout-of-padding-read": Bug(
        "padding rows read their dout (0 * NaN reaches dv)", "global_attention_vjp", "float64", "q-lengths"
    ),
    # gradients of sinks and packed sequences (issue 11)
    "vjp-sink-not-in-lse": Bug(
        "the backward's lse without the sink: P renormalised over the keys",
        "global_attention_vjp",
        "float64",
        "sinks",
    ),
    "vjp-dsinks-not-summed": Bug(
        "dsinks from the last row of the last batch, not summed over rows", "local_attention_vjp", "float64", "sinks"
    ),
    "vjp-dsinks-empty-rows-skipped": Bug(
        "rows with no allowed key add nothing to dsinks (their dlse is lost)",
        "chunked_attention_vjp",
        "float64",
        "sinks-empty-rows",
    ),
    "vjp-neg-inf-sink-nan": Bug(
        "dsinks terms exp(sink - lse) not selected: exp(-inf - -inf) = NaN on rows with no key",
        "global_attention_vjp",
        "float64",
        "sinks-neg-inf",
    ),
    "vjp-sink-of-kv-head": Bug(
        "the backward reads the sink of index h // group, not of query head h",
        "local_attention_vjp",
        "float64",
        "sinks-gqa",
    ),
    "vjp-varlen-keys-leak": Bug(
        "a packed sequence's rows also see the next sequence's first key (its gradient leaks into the neighbour)",
        "local_attention_vjp",
        "float64",
        "varlen-crossing",
    ),
    "vjp-varlen-alignment-packed": Bug(
        "bottom-right alignment over the packed totals in the backward pass, not per sequence",
        "global_attention_vjp",
        "float64",
        "varlen-lq-ne-lk-bottom-right",
    ),
    "vjp-varlen-stops-at-empty": Bug(
        "the backward stops at the first sequence with no queries", "chunked_attention_vjp", "float64", "varlen-empty"
    ),
    "vjp-varlen-dsinks-last-sequence": Bug(
        "dsinks of the last sequence only, not summed over the sequences",
        "global_attention_vjp",
        "float64",
        "varlen-sinks",
    ),
    # sinks, paged KV caches, merged states (issue 11 item 4)
    "sink-scaled": Bug("the sink logit multiplied by the softmax scale", "global_attention", "float64", "sinks"),
    "lse-without-sink": Bug("lse returned without the sink's term", "local_attention", "float64", "sinks"),
    "paged-table-modulo": Bug(
        "key t read from table column t % max_blocks, slot t // max_blocks", "paged_attention", "float64", "basic"
    ),
    "paged-seqlens-ignored": Bug(
        "every slot of the table read, cache_seqlens ignored", "paged_attention", "float64", "partial-block"
    ),
    "paged-sink-softcapped": Bug("the sink softcapped like a score", "paged_attention", "float64", "sinks-softcap"),
    "merge-no-max-shift": Bug("exp(lses) without the max shift", "merge_attention_states", "float64", "large-lse"),
    "merge-neg-inf-leak": Bug(
        "a part with lse -inf multiplied by its weight 0 (NaN outs leak)",
        "merge_attention_states",
        "float64",
        "neg-inf-part",
    ),
    "merge-empty-nan": Bug("every part empty: 0 / 0 = NaN output", "merge_attention_states", "float64", "all-neg-inf"),
    "varlen-offset-off-by-one": Bug(
        "sequence b's keys read from cu_seqlens_k[b] + 1", "chunked_attention", "float64", "varlen"
    ),
    "varlen-alignment-packed": Bug(
        "bottom-right alignment taken over the packed totals, not per sequence",
        "global_attention",
        "float64",
        "varlen",
    ),
    # memory layouts (issue 10 item 5)
    "strides-ignored": Bug(
        "reads memory in storage order as if C-contiguous (ignores strides)",
        "global_attention",
        "float64",
        "layout-transposed",
    ),
    "unit-stride-assumed": Bug("assumes an innermost stride of 1", "local_attention", "float64", "layout-sliced"),
    # errors (issue 10 item 2)
    "error-unnamed": Bug(
        "never validates: NumPy's 'operands could not be broadcast' for every invalid input",
        "chunked_attention",
        "float64",
        "error-head-dim-mismatch",
    ),
}


def _work_dtype(dtype: np.dtype, bugs: frozenset[str]) -> np.dtype:
    if dtype == np.float64:
        return np.dtype(np.float64)
    if dtype == np.float32:
        return np.dtype(np.float16 if "fp32-in-fp16" in bugs else np.float32)
    if dtype == np.float16 and "fp16-in-bf16" in bugs:
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(np.float32)


class ToyBackend:
    """A NumPy backend computing like a fused kernel; ``bugs`` switches on planted bugs."""

    version = "0.0"
    unavailable_reason = None

    def __init__(
        self,
        bugs: frozenset[str] | set[str] = frozenset(),
        name: str = "toy",
        ops: frozenset[str] = frozenset(OPS),
        dtypes: frozenset[str] = frozenset(DTYPE_NAMES),
        lacks: frozenset[str] = frozenset(),
    ):
        unknown = set(bugs) - set(BUGS)
        if unknown:
            raise ValueError(f"unknown bugs {sorted(unknown)}")
        self.bugs = frozenset(bugs)
        self.name = name
        self.ops = ops
        self.dtypes = dtypes
        self.lacks = frozenset(lacks)  # keywords it declines with UnsupportedError, as a FlashAttention wrapper

    def asarray(self, array: Any) -> np.ndarray:
        return np.array(array)  # a copy, as a device transfer would be

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    # -- multi-head ops --------------------------------------------------
    def global_attention(self, q: Any, k: Any, v: Any, *, causal: Any = False, **options: Any) -> Any:
        return self._multihead(q, k, v, lambda: full_pattern(causal), **options)

    def local_attention(self, q: Any, k: Any, v: Any, *, window: Any, **options: Any) -> Any:
        def pattern() -> Pattern:
            if "accepts-bad-window" in self.bugs and isinstance(window, (tuple, list)) and len(window) == 2:
                left, right = (None if side is not None and side < 0 else side for side in window)
            else:
                left, right = check_window(window)
            if "window-off-by-one" in self.bugs and left is not None:
                left += 1
            if "window-right-ignored" in self.bugs:
                right = None
            return Pattern.window(left, right)

        return self._multihead(q, k, v, pattern, **options)

    def chunked_attention(self, q: Any, k: Any, v: Any, *, chunk_size: Any, causal: Any = False, **options: Any):
        def pattern() -> Pattern:
            p = chunk_pattern(chunk_size, causal)
            return Pattern.chunk(p.chunk_size, p.causal and "chunk-causal-ignored" not in self.bugs)

        return self._multihead(q, k, v, pattern, chunk=True, **options)

    def _allows(self, pattern: Pattern, p: np.ndarray, j: np.ndarray, chunk: bool) -> np.ndarray:
        if chunk and "chunk-off-by-one" in self.bugs:
            same = (j // pattern.chunk_size) == ((p + 1) // pattern.chunk_size)
            return (same & (j <= p)) if pattern.causal else same
        return np.asarray(pattern.allows(p, j))

    def _offsets(self, a: Any, chunk: bool) -> np.ndarray:
        if "alignment-ignored" in self.bugs or (chunk and "chunk-alignment-ignored" in self.bugs):
            return np.zeros(a.batch, dtype=np.int64)
        if "lengths-offset-static" in self.bugs:
            return np.full(a.batch, a.kv_len - a.q_len if a.align == "bottom_right" else 0)
        return a.offsets()

    def _multihead(
        self,
        q: Any,
        k: Any,
        v: Any,
        make_pattern: Callable[[], Pattern],
        *,
        scale: Any = None,
        softcap: Any = None,
        bias: Any = None,
        mask: Any = None,
        kv_lengths: Any = None,
        q_lengths: Any = None,
        align: Any = "bottom_right",
        return_lse: Any = False,
        sinks: Any = None,
        cu_seqlens_q: Any = None,
        cu_seqlens_k: Any = None,
        chunk: bool = False,
    ) -> Any:
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            return self._varlen(q, k, v, make_pattern, cu_seqlens_q, cu_seqlens_k, scale=scale, softcap=softcap,
                                bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths, align=align,
                                return_lse=return_lse, sinks=sinks, chunk=chunk)  # fmt: skip
        given = {"bias": bias, "softcap": softcap, "mask": mask, "kv_lengths": kv_lengths, "q_lengths": q_lengths}
        for feature in sorted(self.lacks):
            if given.get(feature) is not None:
                raise attnref.UnsupportedError(feature, "this toy kernel has no such input")
        q, k, v = (self._layout_bugs(x) for x in (q, k, v))
        if "lengths-list-unsupported" in self.bugs and isinstance(kv_lengths, list):
            raise AttributeError("'list' object has no attribute 'astype'")
        unchecked = "kv-lengths-unchecked" in self.bugs
        if "accepts-mixed-dtypes" in self.bugs:
            k, v = (np.asarray(x).astype(q.dtype) for x in (k, v))
        try:
            a = check_attention(
                q,
                k,
                v,
                scale=scale,
                softcap=softcap,
                bias=bias,
                mask=mask,
                kv_lengths=None if unchecked else kv_lengths,
                q_lengths=q_lengths,
                align=align,
                return_lse=return_lse,
                sinks=sinks,
            )
        except ValueError as exc:
            if "error-unnamed" in self.bugs:
                raise ValueError("operands could not be broadcast together") from exc
            raise
        pattern = make_pattern()
        kv_len = host_integers("kv_lengths", kv_lengths) if unchecked and kv_lengths is not None else a.kv_lengths
        if "kv-lengths-ignored" in self.bugs:
            kv_len = None
        work = _work_dtype(q.dtype, self.bugs)
        if "mutates-input" in self.bugs:
            q *= q.dtype.type(a.scale)  # "saves a copy"
        qc, kc, vc = (np.asarray(x).astype(work) for x in (q, k, v))
        if "d-dv-confusion" in self.bugs and scale is None:
            s_scale = 1.0 / math.sqrt(a.value_dim)
        elif "scale-ignored" in self.bugs or ("scale-no-sqrt" in self.bugs and scale is None):
            s_scale = 1.0 / (a.head_dim if "scale-no-sqrt" in self.bugs else math.sqrt(a.head_dim))
        else:
            s_scale = a.scale
        bias_full = None if bias is None else np.broadcast_to(np.asarray(bias), a.scores_shape).astype(work)
        mask_full = None if mask is None else np.broadcast_to(np.asarray(mask), a.scores_shape)
        lse_dtype = q.dtype if q.dtype.itemsize > 2 else np.dtype(np.float32)
        out = np.zeros((a.batch, a.q_heads, a.q_len, a.value_dim), dtype=q.dtype)
        lse = np.zeros((a.batch, a.q_heads, a.q_len), dtype=lse_dtype)
        offsets = self._offsets(a, chunk)
        i = np.arange(a.q_len)[:, None]
        j = np.arange(a.kv_len)[None, :]
        for b in range(a.batch):
            allowed = self._allows(pattern, i + offsets[b], j, chunk)
            if kv_len is not None:
                allowed = allowed & (j < kv_len[b])
            if "keys-capped-1024" in self.bugs:
                allowed = allowed & (j < 1024)
            if a.q_lengths is not None and "q-padding-computed" not in self.bugs:
                allowed = allowed & (i < a.q_lengths[b])
            for h in range(a.q_heads):
                kvh = h % a.kv_heads if "gqa-modulo" in self.bugs else h // a.group
                ok = allowed
                if mask_full is not None:
                    head_mask = mask_full[b, 0 if "mask-head0" in self.bugs else h]
                    ok = ok & (~head_mask if "mask-inverted" in self.bugs else head_mask)
                bias_h = None if bias_full is None else bias_full[b, 0 if "bias-head0" in self.bugs else h]
                s = self._scores(qc[b, h], kc[b, kvh], s_scale, softcap, bias_h)
                if "nan-squashed" in self.bugs:
                    ok = ok & ~np.isnan(s)
                if "mask-before-softcap" in self.bugs and softcap is not None:
                    s = self._scores(qc[b, h], kc[b, kvh], s_scale, None, None)
                    s = np.where(ok, s, -np.inf)
                    s = softcap * np.tanh(s / softcap)
                    if bias_full is not None:
                        s = s + bias_full[b, h]
                    ok = allowed
                sink = None
                if a.sinks is not None:
                    value = a.sinks[h] * (s_scale if "sink-scaled" in self.bugs else 1.0)
                    if "paged-sink-softcapped" in self.bugs and softcap is not None:
                        value = softcap * np.tanh(value / softcap)
                    padding = np.zeros(a.q_len, bool) if a.q_lengths is None else np.arange(a.q_len) >= a.q_lengths[b]
                    sink = np.where(padding, -np.inf, value)  # padding rows stay outside the sequence
                o, l_ = self._online_softmax(s, ok, vc[b, kvh], work, q.dtype, sink)
                out[b, h] = o.astype(q.dtype)
                lse[b, h] = l_.astype(lse_dtype)
        if "dtype-upcast" in self.bugs and q.dtype.itemsize == 2:
            out = out.astype(np.float32)
        if "lse-log2" in self.bugs:
            lse = (lse / np.log(2)).astype(lse_dtype)
        return (out, lse) if return_lse or "lse-always" in self.bugs else out

    def _layout_bugs(self, x: Any) -> Any:
        """The planted layout bugs: memory read as if it were C-contiguous, or with unit innermost stride."""
        x = np.asarray(x)
        if "strides-ignored" in self.bugs:
            return x.ravel(order="K").reshape(x.shape)
        if "unit-stride-assumed" in self.bugs and x.ndim:
            strides = (*x.strides[:-1], x.itemsize)
            return np.lib.stride_tricks.as_strided(x, x.shape, strides, writeable=False).copy()
        return x

    def _varlen(self, q: Any, k: Any, v: Any, make_pattern: Callable[[], Pattern], cu_q: Any, cu_k: Any,
                **options: Any) -> Any:  # fmt: skip
        """Packed sequences: the dense op on each sequence alone."""
        return_lse = options.pop("return_lse")
        chunk = options.pop("chunk")
        a = check_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, return_lse=return_lse, **options)
        cq, ck = a.cu_seqlens_q, a.cu_seqlens_k
        Tq, Hq = q.shape[0], q.shape[1]
        dense = {name: options[name] for name in ("scale", "softcap", "align", "sinks")}
        if "varlen-alignment-packed" in self.bugs:  # one packed sequence, block-diagonal, positions over the totals
            seq_q = np.searchsorted(cq, np.arange(Tq), side="right")
            seq_k = np.searchsorted(ck, np.arange(k.shape[0]), side="right")
            mask = seq_q[:, None] == seq_k[None, :]
            qd, kd, vd = (x.transpose(1, 0, 2)[None] for x in (q, k, v))
            out, lse = self._multihead(qd, kd, vd, make_pattern, mask=mask, return_lse=True, chunk=chunk, **dense)
            out, lse = out[0].transpose(1, 0, 2), lse[0].T
            return (out, lse) if return_lse else out
        out = np.zeros((Tq, Hq, v.shape[2]), dtype=q.dtype)
        lse = np.full((Tq, Hq), -np.inf, dtype=q.dtype if q.dtype.itemsize > 2 else np.float32)
        shift = 1 if "varlen-offset-off-by-one" in self.bugs else 0
        for b in range(len(cq) - 1):
            rows = slice(int(cq[b]), int(cq[b + 1]))
            keys = slice(min(int(ck[b]) + shift, k.shape[0]), min(int(ck[b + 1]) + shift, k.shape[0]))
            if rows.stop == rows.start:
                continue
            if keys.stop == keys.start:  # queries with no key: out 0, lse = the sink (or -inf)
                if a.sinks is not None:
                    lse[rows] = a.sinks.astype(lse.dtype)
                continue
            o, l_ = self._multihead(q[rows].transpose(1, 0, 2)[None], k[keys].transpose(1, 0, 2)[None],
                                    v[keys].transpose(1, 0, 2)[None], make_pattern, return_lse=True, chunk=chunk,
                                    **dense)  # fmt: skip
            out[rows], lse[rows] = o[0].transpose(1, 0, 2), l_[0].T
        return (out, lse) if return_lse else out

    def _scores(self, q: np.ndarray, k: np.ndarray, scale: float, softcap: Any, bias: Any) -> np.ndarray:
        work = q.dtype
        if "scale-after-softcap" in self.bugs and softcap is not None:
            c = work.type(softcap)
            s = c * np.tanh((q @ k.T) / c) * work.type(scale)
            return (s if bias is None else s + bias).astype(work)
        s = (q @ k.T) * work.type(scale)
        if bias is not None and "softcap-after-bias" in self.bugs:
            s = s + bias
            bias = None
        if softcap is not None:
            c = work.type(softcap)
            s = c * np.tanh(s) if "softcap-no-divide" in self.bugs else c * np.tanh(s / c)
        if bias is not None:
            s = s + bias
        return s.astype(work)

    def _online_softmax(self, s: np.ndarray, ok: np.ndarray, v: np.ndarray, work: np.dtype, io: np.dtype,
                        sink: np.ndarray | None = None):  # fmt: skip
        """Flash-style: one pass over key blocks, rescaling the running sums (``io``: the input dtype).
        A sink logit per row starts the running max and sum: a key with no value."""
        denominator = io if "fp16-denominator" in self.bugs and io.itemsize == 2 else work
        rows = s.shape[0]
        block = SHORT_KEY_BLOCK if s.shape[1] <= 32 else LONG_KEY_BLOCK
        starts = list(range(0, s.shape[1], block))
        if "tail-block-dropped" in self.bugs and s.shape[1] % block:
            starts = starts[:-1]
        m = np.full(rows, -np.inf, dtype=work)
        total = np.zeros(rows, dtype=denominator)
        if sink is not None:
            m = sink.astype(work)
            total = np.where(sink == -np.inf, 0, 1).astype(denominator)  # exp(sink - sink), or no sink
        acc = np.zeros((rows, v.shape[1]), dtype=work)
        seen = np.zeros(rows, dtype=bool)
        with np.errstate(all="ignore"):
            for start in starts:
                blk = slice(start, start + block)
                okb = ok[:, blk]
                if "mask-added-not-selected" in self.bugs:
                    sb = s[:, blk] + np.where(okb, work.type(0), work.type(-np.inf))
                else:
                    sb = np.where(okb, s[:, blk], work.type(-np.inf))
                m_new = np.maximum(m, sb.max(axis=1))
                seen |= okb.any(axis=1)
                if "neg-inf-scores-nan" in self.bugs:
                    m_safe = np.where(seen, m_new, work.type(0))
                else:
                    m_safe = np.where(m_new == -np.inf, work.type(0), m_new)
                if "no-max-shift" in self.bugs:
                    m_safe = np.zeros_like(m_safe)
                p = np.where(okb, np.exp(sb - m_safe[:, None]), work.type(0)).astype(work)
                corr = np.exp(m - m_safe).astype(work)
                if "no-max-shift" in self.bugs:
                    corr = np.ones_like(corr)
                if denominator == work:
                    total = (total * corr + p.sum(axis=1)).astype(work)
                else:  # a running 16-bit sum, one key at a time
                    terms = np.concatenate([(total * corr)[:, None], p], axis=1).astype(denominator)
                    total = np.cumsum(terms, axis=1, dtype=denominator)[:, -1]
                if "nan-leak" in self.bugs:
                    contrib = p @ v[blk]
                else:
                    contrib = np.where(okb[:, :, None], p[:, :, None] * v[None, blk], work.type(0)).sum(axis=1)
                acc = (acc * corr[:, None] + contrib).astype(work)
                m = m_new
            m_safe = np.where(m == -np.inf, work.type(0), m)
            if "neg-inf-scores-nan" in self.bugs:
                m_safe = np.where(seen, m, work.type(0))
            if "no-max-shift" in self.bugs:
                m_safe = np.zeros_like(m_safe)
            empty = total == 0
            if "nan-empty-rows" in self.bugs:
                out = acc / total[:, None]
                empty = empty & ~ok.any(axis=1)
                out = np.where(empty[:, None], np.nan, out)
            else:
                out = np.where(empty[:, None], work.type(0), acc / np.where(empty, 1, total)[:, None])
            lse = np.where(empty, -np.inf, m_safe + np.log(np.where(empty, 1, total)))
            if "lse-without-sink" in self.bugs and sink is not None:
                lse = m_safe + np.log(total - np.exp(sink - m_safe))
            if "empty-lse-zero" in self.bugs:
                lse = np.where(empty, 0.0, lse)
            if "lse-missing-max" in self.bugs:
                lse = lse - m_safe
        return out, lse

    # -- paged KV cache and merged states ---------------------------------
    def paged_attention(self, q: Any, k_cache: Any, v_cache: Any, *, block_table: Any, cache_seqlens: Any,
                        causal: Any = False, window: Any = None, scale: Any = None, softcap: Any = None,
                        sinks: Any = None, align: Any = "bottom_right", return_lse: Any = False) -> Any:  # fmt: skip
        """Gather each sequence's keys through the table, then dense attention with ``kv_lengths``."""
        pa = check_paged(q, k_cache, v_cache, block_table=block_table, cache_seqlens=cache_seqlens, causal=causal,
                         window=window, scale=scale, softcap=softcap, sinks=sinks, align=align,
                         return_lse=return_lse)  # fmt: skip
        max_blocks = pa.block_table.shape[1]
        t = np.arange(max_blocks * pa.block_size)
        columns, slots = t // pa.block_size, t % pa.block_size
        if "paged-table-modulo" in self.bugs:
            columns, slots = t % max_blocks, t // max_blocks
        blocks = np.maximum(pa.block_table[:, columns], 0)  # unused entries (-1) lie past every length
        k = np.moveaxis(np.asarray(k_cache)[blocks, slots], 2, 1)  # (B, Hkv, slots, D)
        v = np.moveaxis(np.asarray(v_cache)[blocks, slots], 2, 1)
        lengths = None if "paged-seqlens-ignored" in self.bugs else pa.cache_seqlens
        return self._multihead(q, k, v, lambda: pa.pattern, scale=scale, softcap=softcap, sinks=sinks,
                               kv_lengths=lengths, align=align, return_lse=return_lse)  # fmt: skip

    def merge_attention_states(self, outs: Any, lses: Any) -> tuple[np.ndarray, np.ndarray]:
        """The max-shifted merge, parts with lse -inf selected away."""
        check_merge(outs, lses)
        outs, lses = np.asarray(outs), np.asarray(lses)
        work = np.float64 if outs.dtype == np.float64 else np.float32
        o, lse_n = outs.astype(work), lses.astype(work)
        with np.errstate(all="ignore"):
            m = lse_n.max(axis=0)
            m = np.where(m == -np.inf, 0, m)
            if "merge-no-max-shift" in self.bugs:
                m = np.zeros_like(m)
            w = np.exp(lse_n - m)
            if "merge-neg-inf-leak" in self.bugs:
                weighted = (w[..., None] * o).sum(axis=0)
            else:
                weighted = np.where((lse_n > -np.inf)[..., None], w[..., None] * o, 0).sum(axis=0)
            total = w.sum(axis=0)
            empty = total == 0
            if "merge-empty-nan" in self.bugs:
                out = weighted / total[..., None]
            else:
                out = np.where(empty[..., None], 0, weighted / np.where(empty, 1, total)[..., None])
            lse = np.where(empty, -np.inf, m + np.log(np.where(empty, 1, total)))
        return out.astype(outs.dtype), lse.astype(lses.dtype)

    # -- gradients -------------------------------------------------------
    def global_attention_vjp(self, q: Any, k: Any, v: Any, dout: Any, *, dlse: Any = None, causal: Any = False,
                             **options: Any) -> Any:  # fmt: skip
        return self._vjp(q, k, v, dout, dlse, lambda: full_pattern(causal), **options)

    def local_attention_vjp(self, q: Any, k: Any, v: Any, dout: Any, *, window: Any, dlse: Any = None,
                            **options: Any) -> Any:  # fmt: skip
        def pattern() -> Pattern:
            left, right = check_window(window)
            if "vjp-window-off-by-one" in self.bugs and left is not None:
                left += 1
            return Pattern.window(left, right)

        return self._vjp(q, k, v, dout, dlse, pattern, **options)

    def chunked_attention_vjp(self, q: Any, k: Any, v: Any, dout: Any, *, chunk_size: Any, causal: Any = False,
                              dlse: Any = None, **options: Any) -> Any:  # fmt: skip
        return self._vjp(q, k, v, dout, dlse, lambda: chunk_pattern(chunk_size, causal), **options)

    def _vjp(self, q: Any, k: Any, v: Any, dout: Any, dlse: Any, make_pattern: Callable[[], Pattern], *,
             scale: Any = None, softcap: Any = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None,
             q_lengths: Any = None, align: Any = "bottom_right", sinks: Any = None, cu_seqlens_q: Any = None,
             cu_seqlens_k: Any = None) -> Any:  # fmt: skip
        """The backward pass of FlashAttention-2, one (batch, head) at a time: P recomputed (the sink in
        the lse), then ``dS = P * (dP - rowsum(dout * out) + dlse)``, every product selected on the
        allowed keys, and ``dsinks_h = sum_i exp(sink_h - lse_i) (dlse_i - rowsum(dout * out)_i)``."""
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            return self._varlen_vjp(q, k, v, dout, dlse, make_pattern, cu_seqlens_q, cu_seqlens_k, scale=scale,
                                    softcap=softcap, align=align, sinks=sinks)  # fmt: skip
        a = check_attention(q, k, v, scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths,
                            q_lengths=q_lengths, align=align, sinks=sinks)  # fmt: skip
        check_upstream_gradient("dout", dout, (a.batch, a.q_heads, a.q_len, a.value_dim))
        if dlse is not None:
            check_upstream_gradient("dlse", dlse, (a.batch, a.q_heads, a.q_len))
        pattern = make_pattern()
        io = np.asarray(q).dtype
        work = _work_dtype(io, frozenset())
        qc, kc, vc, doc = (np.asarray(x).astype(work) for x in (q, k, v, dout))
        gl = None if dlse is None or "vjp-dlse-ignored" in self.bugs else np.asarray(dlse).astype(work)
        bias_full = None if bias is None else np.broadcast_to(np.asarray(bias), a.scores_shape).astype(work)
        mask_full = None if mask is None else np.broadcast_to(np.asarray(mask), a.scores_shape)
        dq = np.zeros(qc.shape, work)
        dk, dv = np.zeros(kc.shape, work), np.zeros(vc.shape, work)
        dbias = None if bias is None else np.zeros(a.scores_shape, work)
        dsinks = None if a.sinks is None else np.zeros(a.q_heads, work)
        offsets = np.zeros(a.batch, np.int64) if "vjp-alignment" in self.bugs else a.offsets()
        i, j = np.arange(a.q_len)[:, None], np.arange(a.kv_len)[None, :]
        with np.errstate(all="ignore"):
            for b in range(a.batch):
                allowed = np.asarray(pattern.allows(i + offsets[b], j))
                if a.kv_lengths is not None:
                    allowed = allowed & (j < a.kv_lengths[b])
                if a.q_lengths is not None:
                    allowed = allowed & (i < a.q_lengths[b])
                for h in range(a.q_heads):
                    kvh = h // a.group
                    ok = allowed if mask_full is None else allowed & mask_full[b, h]
                    raw = (qc[b, h] @ kc[b, kvh].T) * work.type(a.scale)
                    t = None if softcap is None else np.tanh(raw / work.type(softcap))
                    s = raw if t is None else work.type(softcap) * t
                    if bias_full is not None:
                        s = s + bias_full[b, h]
                    masked = np.where(ok, s, -np.inf)
                    sink = self._vjp_sink(a, b, h, work)  # (Lq, 1); -inf: no sink
                    m = np.maximum(masked.max(axis=1, keepdims=True), sink)
                    m = np.where(m == -np.inf, 0, m)
                    e = np.where(ok, np.exp(masked - m), 0)
                    e_sink = np.where(sink == -np.inf, 0, np.exp(sink - m))
                    total = e.sum(axis=1, keepdims=True)
                    if "vjp-sink-not-in-lse" not in self.bugs:
                        total = total + e_sink
                    empty = total == 0
                    P = np.where(ok & ~empty, e / np.where(empty, 1, total), 0).astype(work)
                    out = np.where(ok[:, :, None], P[:, :, None] * vc[b, kvh][None], 0).sum(axis=1)
                    do = np.where(ok.any(axis=1)[:, None], doc[b, h], 0)  # a row with no key never reads its dout
                    dP = np.where(ok, np.where(ok[:, :, None], do[:, None, :] * vc[b, kvh][None], 0).sum(axis=2), 0)
                    rows = (do * out).sum(axis=1, keepdims=True)
                    g = 0 if gl is None else gl[b, h][:, None]
                    dS = np.where(ok, P * (dP - rows + g), 0).astype(work)
                    if dbias is not None:
                        dbias[b, h] = dS
                    if dsinks is not None:
                        lse = m + np.log(total)  # -inf for a row with no key and no sink
                        dsinks[h] = self._dsinks_row_terms(dsinks[h], sink, lse, ok, g - rows)
                    ds = dS if t is None or "vjp-softcap-chain-dropped" in self.bugs else dS * (1 - t * t)
                    dq_scale = work.type(1 if "vjp-dq-no-scale" in self.bugs else a.scale)
                    dq[b, h] = dq_scale * np.where(ok[:, :, None], ds[:, :, None] * kc[b, kvh][None], 0).sum(axis=1)
                    if "vjp-nan-masked-rows" in self.bugs:
                        dq[b, h] += 0 * (e / total).sum(axis=1, keepdims=True)  # 0 / 0 in a row with no key
                    dk_terms = work.type(a.scale) * np.where(ok[:, :, None], ds[:, :, None] * qc[b, h][:, None], 0)
                    dv_terms = np.where(ok[:, :, None], P[:, :, None] * do[:, None, :], 0)
                    if "vjp-16bit-accumulation" in self.bugs and io.itemsize == 2:  # a running 16-bit sum over rows
                        dk_h, dv_h = (np.cumsum(t.astype(io), axis=0, dtype=io)[-1] for t in (dk_terms, dv_terms))
                    else:  # pairwise sums over the rows (a BLAS-like accuracy), selection kept
                        dk_h, dv_h = (np.ascontiguousarray(np.moveaxis(t, 0, -1)).sum(-1) for t in (dk_terms, dv_terms))
                    if "vjp-dout-of-padding-read" in self.bugs:
                        dv_h = P.T @ doc[b, h]  # a plain product: 0 * NaN from a padding row's dout
                    if "vjp-gqa-not-summed" in self.bugs:
                        dk[b, kvh], dv[b, kvh] = dk_h, dv_h
                    else:
                        dk[b, kvh] += dk_h
                        dv[b, kvh] += dv_h
        grads = [dq.astype(io), dk.astype(io), dv.astype(io)]
        if "vjp-dk-dv-swapped" in self.bugs:
            grads[1], grads[2] = grads[2], grads[1]
        if bias is not None:
            grads.append(self._reduce_bias(dbias, np.shape(bias)).astype(np.asarray(bias).dtype))
        if dsinks is not None:
            grads.append(dsinks.astype(np.asarray(sinks).dtype))
        return tuple(grads)

    def _vjp_sink(self, a: Any, b: int, h: int, work: np.dtype) -> np.ndarray:
        """The sink logit of each row of head ``h``, ``(Lq, 1)``: ``-inf`` without sinks and on padding rows."""
        sink = np.full((a.q_len, 1), -np.inf, dtype=work)
        if a.sinks is not None:
            sink[:] = a.sinks[h // a.group if "vjp-sink-of-kv-head" in self.bugs else h]
            if a.q_lengths is not None:
                sink[a.q_lengths[b] :] = -np.inf  # padding rows stay outside the sequence
        return sink

    def _dsinks_row_terms(self, acc: Any, sink: np.ndarray, lse: np.ndarray, ok: np.ndarray,
                          upstream: np.ndarray) -> Any:  # fmt: skip
        """``acc`` plus ``sum_i exp(sink_i - lse_i) * upstream_i`` of one (batch, head), ``upstream_i =
        dlse_i - dout_i . out_i``; a ``-inf`` sink selected away (never ``exp(-inf - -inf)``)."""
        terms = np.exp(sink - lse) * upstream
        if "vjp-neg-inf-sink-nan" not in self.bugs:
            terms = np.where(sink == -np.inf, 0, terms)
        if "vjp-dsinks-empty-rows-skipped" in self.bugs:
            terms = np.where(ok.any(axis=1, keepdims=True), terms, 0)
        if "vjp-dsinks-not-summed" in self.bugs:
            return terms[-1, 0]  # the last row's term only
        return acc + terms.sum()

    def _varlen_vjp(self, q: Any, k: Any, v: Any, dout: Any, dlse: Any, make_pattern: Callable[[], Pattern],
                    cu_q: Any, cu_k: Any, **options: Any) -> Any:  # fmt: skip
        """Packed sequences: the dense VJP of each sequence alone, written into packed gradients;
        ``dsinks`` sums over the sequences."""
        a = check_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **options)
        check_upstream_gradient("dout", dout, (a.q_len, a.q_heads, a.value_dim))
        if dlse is not None:
            check_upstream_gradient("dlse", dlse, (a.q_len, a.q_heads))
        q, k, v, dout = (np.asarray(x) for x in (q, k, v, dout))
        gl = np.zeros((a.q_len, a.q_heads)) if dlse is None else np.asarray(dlse)
        cq, ck = a.cu_seqlens_q, a.cu_seqlens_k

        def dense(x: np.ndarray) -> np.ndarray:  # (T, H, n) -> (1, H, T, n)
            return x.transpose(1, 0, 2)[None]

        if "vjp-varlen-alignment-packed" in self.bugs:  # one sequence, block-diagonal, positions over the totals
            seq_q = np.searchsorted(cq, np.arange(a.q_len), side="right")
            seq_k = np.searchsorted(ck, np.arange(a.kv_len), side="right")
            grads = self._vjp(dense(q), dense(k), dense(v), dense(dout), gl.T[None], make_pattern,
                              mask=seq_q[:, None] == seq_k[None, :], **options)  # fmt: skip
            return tuple(g[0].transpose(1, 0, 2) for g in grads[:3]) + tuple(grads[3:])
        dq, dk, dv = np.zeros(q.shape, q.dtype), np.zeros(k.shape, k.dtype), np.zeros(v.shape, v.dtype)
        dsinks = None if a.sinks is None else np.zeros(a.q_heads)
        overrun = 1 if "vjp-varlen-keys-leak" in self.bugs else 0
        for b in range(a.batch):
            rows = slice(int(cq[b]), int(cq[b + 1]))
            keys = slice(int(ck[b]), min(int(ck[b + 1]) + overrun, a.kv_len))
            if rows.stop == rows.start:
                if "vjp-varlen-stops-at-empty" in self.bugs:
                    break
                continue
            if keys.stop == keys.start:  # queries with no key: no dq, dk, dv; each row adds its dlse to dsinks
                if dsinks is not None:
                    dsinks += np.where(a.sinks == -np.inf, 0, gl[rows].sum(axis=0))
                continue
            grads = self._vjp(dense(q[rows]), dense(k[keys]), dense(v[keys]), dense(dout[rows]), gl[rows].T[None],
                              make_pattern, **options)  # fmt: skip
            dq[rows] = grads[0][0].transpose(1, 0, 2)
            dk[keys] += grads[1][0].transpose(1, 0, 2)
            dv[keys] += grads[2][0].transpose(1, 0, 2)
            if dsinks is not None:
                dsinks = grads[3] if "vjp-varlen-dsinks-last-sequence" in self.bugs else dsinks + grads[3]
        if dsinks is None:
            return dq, dk, dv
        return dq, dk, dv, np.asarray(dsinks).astype(np.asarray(options["sinks"]).dtype)

    def _reduce_bias(self, dbias: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """``dbias`` summed over the axes the bias was broadcast along, in the bias's own shape."""
        lead = dbias.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(lead + n for n, size in enumerate(shape) if size == 1)
        if "vjp-dbias-not-summed" in self.bugs:
            return dbias[(0,) * lead].reshape(dbias.shape[lead:])[tuple(slice(0, n) for n in shape)]
        return dbias.sum(axis=axes, keepdims=True).reshape(shape)

    # -- pooling ops -----------------------------------------------------
    def additive_attention(
        self,
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
        a = check_additive(x, w_in, b_in, w_out, b_out, mask=mask, window=window, center=center)
        work = _work_dtype(x.dtype, self.bugs)
        xc = np.asarray(x).astype(work)
        e = np.tanh(xc @ np.asarray(w_in).astype(work) + np.asarray(b_in).astype(work)) @ np.asarray(w_out).astype(work)
        if b_out is not None:
            e = e + work.type(float(np.asarray(b_out, dtype=np.float64).reshape(())))
        allowed = np.ones((a.batch, a.length), dtype=bool)
        if mask is not None and not ("additive-mask-window" in self.bugs and window is not None):
            allowed = allowed & np.asarray(mask)
        if a.window is not None:
            centres = a.centers
            if "additive-centre" in self.bugs and center is None:
                centres = np.full(a.batch, (a.length - 1) // 2)
            if "additive-first-centre" in self.bugs:
                centres = np.full(a.batch, centres[0])
            allowed = allowed & np.asarray(Pattern.window(*a.window).allows(centres[:, None], np.arange(a.length)))
        weights = _softmax(e, allowed, work)
        context = np.where(allowed[:, :, None], weights[:, :, None] * xc, work.type(0)).sum(axis=1)
        return context.astype(x.dtype), weights.astype(x.dtype)

    def luong_attention(
        self,
        h_t: Any,
        h_s: Any,
        *,
        score: Any = "dot",
        w_a: Any = None,
        v_a: Any = None,
        mode: Any = "global",
        half_width: Any = None,
        w_p: Any = None,
        v_p: Any = None,
        source_lengths: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        a = check_luong(
            h_t,
            h_s,
            score=score,
            w_a=w_a,
            v_a=v_a,
            mode=mode,
            half_width=half_width,
            w_p=w_p,
            v_p=v_p,
            source_lengths=source_lengths,
        )
        work = _work_dtype(h_t.dtype, self.bugs)
        ht, hs = np.asarray(h_t).astype(work), np.asarray(h_s).astype(work)
        scores = self._luong_scores(a.score, ht, hs, w_a, v_a, work)
        s = np.arange(a.source_len)[None, None, :]
        S_b = a.source_lengths[:, None, None]
        allowed = np.broadcast_to(s < S_b, scores.shape)
        p_t = None
        if a.mode == "local-m":
            t = np.arange(a.target_len)[None, :, None]
            p_t = t + 0 * S_b if "luong-no-clamp" in self.bugs else np.minimum(t, S_b - 1)
        elif a.mode == "local-p":
            gate = np.tanh(ht @ np.asarray(w_p).astype(work)) @ np.asarray(v_p).astype(work)
            length = a.source_len if "luong-full-length" in self.bugs else S_b
            with np.errstate(over="ignore"):
                p_t = (length / (1 + np.exp(-gate[..., None]))).astype(work)
        if p_t is not None:
            allowed = allowed & (np.abs(s - p_t) <= a.half_width)
        weights = _softmax(scores, allowed, work)
        if a.mode == "local-p":
            sigma = a.half_width if "luong-sigma" in self.bugs else a.half_width / 2
            weights = np.where(allowed, weights * np.exp(-((s - p_t) ** 2) / (2 * sigma**2)), 0).astype(work)
            if "luong-renormalised" in self.bugs:
                total = weights.sum(axis=-1, keepdims=True)
                weights = np.where(total > 0, weights / np.where(total > 0, total, 1), 0).astype(work)
        context = np.where(allowed[..., None], weights[..., None] * hs[:, None], work.type(0)).sum(axis=2)
        return context.astype(h_t.dtype), weights.astype(h_t.dtype)

    def _luong_scores(self, score: str, ht: np.ndarray, hs: np.ndarray, w_a: Any, v_a: Any, work: np.dtype):
        if score == "dot":
            return ht @ np.swapaxes(hs, 1, 2)
        wa = np.asarray(w_a).astype(work)
        if score == "general":
            return ht @ (wa.T if "luong-general-transposed" in self.bugs else wa) @ np.swapaxes(hs, 1, 2)
        d = ht.shape[-1]
        first, second = (wa[d:], wa[:d]) if "luong-concat-order" in self.bugs else (wa[:d], wa[d:])
        hidden = np.tanh((ht @ first)[:, :, None, :] + (hs @ second)[:, None, :, :])
        return hidden @ np.asarray(v_a).astype(work)


def _softmax(e: np.ndarray, allowed: np.ndarray, work: np.dtype) -> np.ndarray:
    """Softmax over the allowed entries of the last axis; an empty row is all 0."""
    with np.errstate(all="ignore"):
        masked = np.where(allowed, e, -np.inf)
        m = masked.max(axis=-1, keepdims=True)
        m = np.where(m == -np.inf, 0, m)
        p = np.where(allowed, np.exp(masked - m), 0)
        total = p.sum(axis=-1, keepdims=True)
        return np.where(total > 0, p / np.where(total > 0, total, 1), 0).astype(work)


#: Bugs of :class:`LongToyBackend` that only the long tier can catch: (description, op, case id).
LONG_BUGS: dict[str, tuple[str, str, str]] = {
    "index-int32": (
        "keys addressed by a 32-bit flat score index row * Lk + j: rows past 2**31 / Lk read key 0 onwards",
        "local_attention",
        "long-window-2p16",
    ),
    "positions-float32": (
        "aligned positions p held in float32: beyond 2**24 they round to a multiple of 2 or 4",
        "local_attention",
        "long-decode-2p25",
    ),
}


class LongToyBackend:
    """A blocked kernel for long sequences: query blocks of 2048 rows, each scoring only the key range its
    pattern allows (:meth:`Pattern.key_range`), in float32 (16-bit inputs) or the input dtype. It takes the
    pattern options, ``scale`` and ``align`` and declines the rest with :class:`attnref.UnsupportedError`.
    ``bugs`` switches on the :data:`LONG_BUGS`."""

    version = "0.0"
    unavailable_reason = None
    ops = frozenset({"global_attention", "local_attention", "chunked_attention"})
    dtypes = frozenset(DTYPE_NAMES)
    BLOCK = 2048

    def __init__(self, bugs: frozenset[str] | set[str] = frozenset(), name: str = "long-toy") -> None:
        self.bugs, self.name = frozenset(bugs), name

    def asarray(self, array: Any) -> np.ndarray:
        return np.array(array)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def global_attention(self, q: Any, k: Any, v: Any, *, causal: Any = False, **options: Any) -> Any:
        return self._attend(q, k, v, full_pattern(causal), **options)

    def local_attention(self, q: Any, k: Any, v: Any, *, window: Any, **options: Any) -> Any:
        return self._attend(q, k, v, Pattern.window(*check_window(window)), **options)

    def chunked_attention(self, q: Any, k: Any, v: Any, *, chunk_size: Any, causal: Any = False, **options: Any):
        return self._attend(q, k, v, chunk_pattern(chunk_size, causal), **options)

    def _attend(self, q: Any, k: Any, v: Any, pattern: Pattern, *, scale: Any = None, align: Any = "bottom_right",
                return_lse: Any = False, **others: Any) -> Any:  # fmt: skip
        for name, value in others.items():
            if value is not None:
                raise attnref.UnsupportedError(name, "the long toy kernel takes patterns only")
        a = check_attention(q, k, v, scale=scale, align=align, return_lse=return_lse)
        work = _work_dtype(q.dtype, frozenset())
        out = np.zeros((a.batch, a.q_heads, a.q_len, a.value_dim), dtype=q.dtype)
        lse = np.full((a.batch, a.q_heads, a.q_len), -np.inf, dtype=work)
        offset = int(a.offsets()[0])
        for b in range(a.batch):
            for h in range(a.q_heads):
                qh, kh, vh = q[b, h], k[b, h // a.group], v[b, h // a.group]
                for first in range(0, a.q_len, self.BLOCK):
                    rows = slice(first, min(first + self.BLOCK, a.q_len))
                    lo, hi = pattern.key_range(first + offset, rows.stop - 1 + offset, a.kv_len)
                    if lo >= hi:
                        continue
                    if "index-int32" in self.bugs and first * a.kv_len + lo > 2**31 - 1:
                        lo, hi = 0, hi - lo  # the wrapped 32-bit flat index, clamped: the wrong keys
                    p = np.arange(rows.start, rows.stop)[:, None] + offset
                    if "positions-float32" in self.bugs:
                        p = p.astype(np.float32)
                    ok = np.asarray(pattern.allows(p, np.arange(lo, hi)[None, :]))
                    with np.errstate(all="ignore"):
                        s = (qh[rows].astype(work) @ kh[lo:hi].astype(work).T) * work.type(a.scale)
                        s = np.where(ok, s, -np.inf)
                        m = s.max(axis=1, keepdims=True)
                        m = np.where(m == -np.inf, 0, m)
                        e = np.where(ok, np.exp(s - m), 0).astype(work)
                        total = e.sum(axis=1, keepdims=True)
                        empty = total == 0
                        vb = vh[lo:hi].astype(work)
                        o = e @ np.where(np.isfinite(vb), vb, 0)  # a hidden NaN value must not leak through e = 0
                        special = ~np.isfinite(vb).all(axis=1)
                        hit = (ok[:, special]).any(axis=1)
                        if hit.any():  # rows that see a non-finite value: the selected sum, exactly
                            o[hit] = np.where(ok[hit][:, :, None], e[hit][:, :, None] * vb[None], 0).sum(axis=1)
                        o = o / np.where(empty, 1, total)
                        out[b, h, rows] = np.where(empty, 0, o).astype(q.dtype)
                        lse[b, h, rows] = np.where(empty, -np.inf, m + np.log(np.where(empty, 1, total)))[:, 0]
        return (out, lse) if return_lse else out


class RoundedScoresBackend:
    """A legitimate float16 kernel in the manner of ONNX Runtime: the scores computed exactly and rounded
    once to float16, everything after that exact. Not a planted bug: the tolerance must accept it, nearly
    tied logits included (its sensitivity term moves the scores by one float16 rounding)."""

    name = "rounded-scores"
    version = "0.0"
    unavailable_reason = None
    ops = frozenset({"global_attention"})
    dtypes = frozenset({"float16"})

    def asarray(self, array: Any) -> np.ndarray:
        return np.array(array)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def global_attention(self, q: Any, k: Any, v: Any, *, causal: Any = False, return_lse: Any = False,
                         **options: Any) -> Any:  # fmt: skip
        import attnref.reference

        a = check_attention(q, k, v, return_lse=return_lse, **options)
        scale = a.scale
        group = a.q_heads // a.kv_heads
        s = scale * np.einsum("bhid,bhjd->bhij", q.astype(np.float64), np.repeat(k.astype(np.float64), group, 1))
        if options.get("softcap") is not None:
            s = options["softcap"] * np.tanh(s / options["softcap"])
        s16 = s.astype(np.float16).astype(np.float64)  # the one rounding
        # exact math on the rounded scores: the reference with q = identity rows picks them up as a bias
        bias = s16 if options.get("bias") is None else s16 + np.asarray(options["bias"], np.float64)
        rest = {name: value for name, value in options.items() if name not in ("bias", "softcap", "scale")}
        out, lse = attnref.reference.global_attention(
            np.zeros(q.shape),
            np.zeros(k.shape),
            v.astype(np.float64),
            bias=bias,
            causal=causal,
            return_lse=True,
            **rest,
        )
        out = out.astype(q.dtype)
        return (out, lse.astype(np.float32)) if return_lse else out


class _Plugin:
    def __init__(self, backends: list[Any]):
        self.backends = backends

    @attnref.hookimpl
    def attnref_backends(self) -> list[Any]:
        return self.backends


def toy_registry(*backends: Any) -> Registry:
    """A registry of exactly ``backends`` (installed plugins never leak in)."""
    return Registry(sources=[PluginSource("toys", "tests.conformance.planted", lambda: _Plugin(list(backends)))])
