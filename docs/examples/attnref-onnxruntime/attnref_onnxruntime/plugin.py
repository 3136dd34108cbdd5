"""The ``onnxruntime`` backend: attnref's multi-head ops as one ONNX ``Attention`` node.

Each call runs a one-node ONNX model (``Attention``, opset 23) in an
onnxruntime CPU session; sessions are cached by what makes the graph differ
(dtype, attributes, mask input), so shapes may change between calls.

What it takes to wrap the ONNX op:

* **Layout.** ONNX's 4-D inputs are attnref's ``(B, H, L, D)``; GQA maps query
  head ``h`` to kv head ``h // (Hq // Hkv)`` as attnref does.
* **Alignment.** Without a KV cache, ONNX's ``is_causal`` is top-left, and
  onnxruntime fills the positions it hides (and those of a boolean mask) with the
  lowest finite float, not ``-inf``. The backend therefore never uses it: the
  pattern, the lengths and the caller's mask arrive as one additive ``attn_mask``
  built from :meth:`attnref.patterns.Pattern.allows` at the aligned positions:
  the bias (or 0) where allowed, ``-inf`` elsewhere, with the full query axis
  (onnxruntime rejects a mask that broadcasts over it). The opset-25 window
  attributes would be top-left too, and onnxruntime 1.30 rejects them.
* **Softcap** is the op's ``softcap`` attribute, applied before the mask and
  the bias as in attnref.
* **The log-sum-exp.** The op returns no lse. With ``return_lse=True`` the
  backend asks the node for its scores after softcap, bias and mask
  (``qk_matmul_output_mode=2``) and takes their log-sum-exp in NumPy, in float32
  or better. The lse is therefore only as good as onnxruntime's *scores*; its
  softmax is checked through ``out``.
* **What ONNX and onnxruntime lack** is declared, never faked: sink logits and
  packed sequences raise :class:`attnref.UnsupportedError`; onnxruntime has no
  bfloat16 kernel, so ``bfloat16`` is not among the dtypes. The real mismatch that
  remains (a NaN in a key or value hidden by the pattern or a mask leaks,
  because masking adds ``-inf`` and multiplies by zero weights) is listed in
  ``xfails.txt``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import threading
from typing import Any

import numpy as np

import attnref
from attnref.patterns import Pattern
from attnref.validation import AttentionArgs, check_attention, chunk_pattern, full_pattern, window_pattern
from attnref_onnxruntime import __version__

__all__ = ["OnnxRuntimeBackend", "attnref_backends"]

#: The ONNX opset of the ``Attention`` node (the first with the op).
OPSET = 23
#: The model's IR version: onnx 1.23 writes a newer one by default than onnxruntime 1.30 loads.
IR_VERSION = 10


class OnnxRuntimeBackend:
    """attnref's global, local and chunked attention computed by onnxruntime's ``Attention`` kernel."""

    name = "onnxruntime"
    ops = frozenset({"global_attention", "local_attention", "chunked_attention"})
    dtypes = frozenset({"float16", "float32", "float64"})  # onnxruntime has no bfloat16 Attention kernel

    @property
    def version(self) -> str:
        """This package's version and onnxruntime's (read from the metadata, nothing imported)."""
        try:
            return f"{__version__} (onnxruntime {importlib.metadata.version('onnxruntime')})"
        except importlib.metadata.PackageNotFoundError:
            return __version__

    @property
    def unavailable_reason(self) -> str | None:
        """``None`` when onnx and onnxruntime are installed (checked without importing them)."""
        missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
        return f"not installed: {', '.join(missing)} (pip install onnx onnxruntime)" if missing else None

    def asarray(self, array: Any) -> np.ndarray:
        """onnxruntime takes and returns NumPy arrays: the native array is the array itself."""
        return np.asarray(array)

    def to_numpy(self, array: Any) -> np.ndarray:
        """A NumPy array, dtype kept."""
        return np.asarray(array)

    def global_attention(self, q, k, v, *, causal=False, **options):
        return _attend(q, k, v, full_pattern(causal), **options)

    def local_attention(self, q, k, v, *, window, **options):
        return _attend(q, k, v, window_pattern(window), **options)

    def chunked_attention(self, q, k, v, *, chunk_size, causal=False, **options):
        return _attend(q, k, v, chunk_pattern(chunk_size, causal), **options)


def _attend(
    q,
    k,
    v,
    pattern: Pattern,
    *,
    scale=None,
    softcap=None,
    bias=None,
    mask=None,
    kv_lengths=None,
    q_lengths=None,
    align="bottom_right",
    return_lse=False,
    sinks=None,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
):
    """Validate with attnref, hand the pattern to the node as an additive mask, run it."""
    args = check_attention(
        q, k, v, scale=scale, softcap=softcap, bias=bias, mask=mask,
        kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
        sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
    )  # fmt: skip
    _decline_what_onnx_lacks(args)
    feeds = {"Q": q, "K": k, "V": v}
    if pattern.kind != "global" or bias is not None or mask is not None or _has_lengths(args):
        # Additive, never boolean or is_causal: onnxruntime fills those with the lowest finite float,
        # which would give a row with no allowed key a finite lse; -inf keeps it -inf. The bias is
        # selected where allowed, so a NaN bias at a hidden key stays out.
        added = np.zeros((), dtype=q.dtype) if bias is None else np.asarray(bias, dtype=q.dtype)
        feeds["M"] = np.where(args.allowed(pattern, mask), added, q.dtype.type(-np.inf))
    session = _session(q.dtype.str, "M" in feeds, args.scale, args.softcap, bool(return_lse))
    if not return_lse:
        (out,) = session.run(None, feeds)
        return out
    out, scores = session.run(None, feeds)
    return out, _logsumexp(scores.astype(np.promote_types(scores.dtype, np.float32)))


def _logsumexp(scores: np.ndarray) -> np.ndarray:
    """``log sum exp`` over the last axis; a row of ``-inf`` gives ``-inf``, a NaN gives NaN."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        top = scores.max(axis=-1, keepdims=True)
        top = np.where(np.isneginf(top), 0, top)  # an all -inf row: no shift, so the sum is 0 and the log -inf
        return (top + np.log(np.exp(scores - top).sum(axis=-1, keepdims=True)))[..., 0]


def _decline_what_onnx_lacks(args: AttentionArgs) -> None:
    """Raise :class:`attnref.UnsupportedError` for a valid input the ONNX op (opset 23) has no input for."""
    if args.sinks is not None:
        raise attnref.UnsupportedError("sinks", "the ONNX Attention op has no sink logits")
    if args.packed:
        raise attnref.UnsupportedError("cu_seqlens_q", "the ONNX Attention op takes no packed sequences")


def _has_lengths(args: AttentionArgs) -> bool:
    return args.kv_lengths is not None or args.q_lengths is not None


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=64)
def _session_unlocked(dtype: str, has_mask: bool, scale: float, softcap: float | None, scores: bool) -> Any:
    import onnxruntime
    from onnx import TensorProto, helper

    elem = {"<f2": TensorProto.FLOAT16, "<f4": TensorProto.FLOAT, "<f8": TensorProto.DOUBLE}[dtype]
    names = ["Q", "K", "V"] + (["M"] if has_mask else [])
    inputs = [helper.make_tensor_value_info(n, elem, None) for n in names]
    attributes: dict[str, Any] = {"scale": scale}
    if softcap is not None:
        attributes["softcap"] = softcap
    outputs = ["Y"]
    if scores:  # the fourth output: the scores after softcap, bias and mask
        attributes["qk_matmul_output_mode"] = 2
        outputs += ["", "", "S"]
    node = helper.make_node("Attention", names, outputs, **attributes)
    declared = [helper.make_tensor_value_info(n, elem, None) for n in outputs if n]
    graph = helper.make_graph([node], "attnref", inputs, declared)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors surface as exceptions; keep the console quiet
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _session(dtype: str, has_mask: bool, scale: float, softcap: float | None, scores: bool) -> Any:
    """A cached session for one graph (at most 64 kept; built under a lock, run without one)."""
    with _LOCK:
        return _session_unlocked(dtype, has_mask, scale, softcap, scores)


@attnref.hookimpl
def attnref_backends():
    """The backends this plugin provides: one, named ``onnxruntime``."""
    return [OnnxRuntimeBackend()]
