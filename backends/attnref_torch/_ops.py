"""The torch backend's ops (imports torch; loaded on the backend's first use).

Each op validates with :mod:`attnref.validation` (the reference's checks, so
the same errors), then checks what only tensors can get wrong (not a tensor,
mixed devices, a sparse or meta tensor), then picks a path from shapes, dtypes
and options (on CUDA never from the values: no device synchronisation):

* :mod:`attnref_torch._sdpa` when every row may see every key and SDPA's
  result is attnref's by construction (global attention without mask,
  lengths, softcap, lse or gradient);
* :mod:`attnref_torch._flex` (compiled FlexAttention) on CUDA when switched on
  and applicable;
* :mod:`attnref_torch._banded` (SDPA over key bands) on the CPU without
  softcap, lse or gradient, when the scores are finite (a host read that waits
  for no device on the CPU);
* else :mod:`attnref_torch._blocked`, which handles every case, with its own
  backward pass;
* the pooling ops: :mod:`attnref_torch._pooling`.

Packed sequences (``cu_seqlens_q/k``) and the paged KV cache run each sequence
alone through that choice (:mod:`attnref_torch._sequences`); sinks join the
chosen path's ``(out, lse)`` afterwards, in the compute dtype, with their own
backward (:mod:`attnref_torch._sinks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch

from attnref.dtypes import DTYPE_NAMES, name_of_array, numpy_dtype
from attnref.errors import invalid_type, invalid_value
from attnref.patterns import Pattern
from attnref.validation import (
    AttentionArgs,
    check_attention,
    check_merge,
    check_paged,
    chunk_pattern,
    full_pattern,
    window_pattern,
)
from attnref_torch import _flex, _pooling
from attnref_torch._banded import banded_applies, banded_attention
from attnref_torch._blocked import blocked_attention
from attnref_torch._numerics import compute_dtype
from attnref_torch._sdpa import sdpa_applies, sdpa_attention
from attnref_torch._sequences import by_paged_sequence, by_sequence
from attnref_torch._sinks import row_sinks, with_sinks

__all__ = [
    "resolve_device",
    "from_numpy",
    "to_numpy",
    "as_tensors",
    "global_attention",
    "local_attention",
    "chunked_attention",
    "paged_attention",
    "attention_vjp",
    "merge_attention_states",
    "additive_attention",
    "luong_attention",
]


# -- devices and conversion ----------------------------------------------------
def resolve_device(device: Any) -> torch.device:
    """``torch.device(device)``, or CUDA when available and the CPU otherwise for ``None``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def from_numpy(array: Any, device: torch.device) -> torch.Tensor:
    """A copy of a NumPy array (or scalar) as a tensor on ``device``, dtype kept.

    bfloat16 (``ml_dtypes.bfloat16``) travels as its 16 bits (an ``int16``
    view), so the conversion is exact.
    """
    array = np.asarray(array)
    if array.dtype == numpy_dtype("bfloat16"):
        bits = torch.from_numpy(np.ascontiguousarray(array).view(np.int16).copy())
        return bits.view(torch.bfloat16).to(device)
    return torch.from_numpy(np.array(array, copy=True)).to(device)


def to_numpy(tensor: Any) -> np.ndarray:
    """A tensor as a NumPy array on the host (bfloat16 as ``ml_dtypes.bfloat16``), dtype kept."""
    if not isinstance(tensor, torch.Tensor):
        return np.asarray(tensor)
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(numpy_dtype("bfloat16"))
    return tensor.numpy()


def as_tensors(named: dict[str, Any], *, first: str) -> dict[str, Any]:
    """Check the array arguments: tensors, all on the device of ``named[first]``.

    ``named[first]`` must be a tensor. The others may be ``None``, a tensor, or
    a NumPy array (copied to that device); a Python scalar is passed through
    unchanged.

    Raises
    ------
    InvalidTypeError
        ``named[first]`` (or another array argument) is not a tensor or NumPy array.
    InvalidArgumentError
        A tensor lives on another device than ``named[first]``.
    """
    lead = named[first]
    if not isinstance(lead, torch.Tensor):
        raise invalid_type(first, type(lead).__name__, "a torch.Tensor")
    _dense(first, lead)
    device = lead.device
    result = {}
    for argument, value in named.items():
        if isinstance(value, np.ndarray):
            value = from_numpy(value, device)
        elif value is not None and not isinstance(value, (torch.Tensor, int, float)):
            raise invalid_type(argument, type(value).__name__, "a torch.Tensor")
        if isinstance(value, torch.Tensor):
            _dense(argument, value)
            if value.device != device:
                raise invalid_value(
                    argument, f"a tensor on {value.device}", f"a tensor on {device}, the device of {first}"
                )
        result[argument] = value
    return result


def _dense(argument: str, t: torch.Tensor) -> None:
    """A strided tensor with data: a sparse or meta-device tensor is an error naming ``argument``."""
    if t.layout != torch.strided:
        raise invalid_type(argument, f"a tensor of layout {t.layout}", "a dense (torch.strided) tensor")
    if t.device.type == "meta":
        raise invalid_value(argument, "a tensor on the meta device (it has no values)", "a tensor with values")


def checkable(value: Any) -> Any:
    """A Python scalar or nested sequence as a NumPy array, so that validation answers it
    as the reference (which calls ``np.asarray`` first) does; anything else unchanged."""
    if isinstance(value, (bool, int, float, complex, str, list, tuple)):
        try:
            return np.asarray(value)
        except (TypeError, ValueError):
            return value
    return value


# -- multi-head ops -------------------------------------------------------------
def _attention(
    pattern: Pattern, q: Any, k: Any, v: Any, *, flex: bool = False, **options: Any
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Validate, then run ``pattern``: packed sequences one at a time through the dense paths
    (:mod:`attnref_torch._sequences`), sinks joined to a path's ``(out, lse)`` (:mod:`attnref_torch._sinks`)."""
    q, k, v = checkable(q), checkable(k), checkable(v)
    for name in ("q", "k", "v", "bias", "mask", "sinks"):
        value = {"q": q, "k": k, "v": v}.get(name, options.get(name))
        if isinstance(value, torch.Tensor):
            _dense(name, value)
    args = check_attention(q, k, v, **options)
    named = {"q": q, "k": k, "v": v, "bias": options["bias"], "mask": options["mask"], "sinks": options["sinks"]}
    t = as_tensors(named, first="q")
    q, k, v, bias, mask, sinks = t["q"], t["k"], t["v"], t["bias"], t["mask"], t["sinks"]
    if isinstance(bias, torch.Tensor):  # (B, Hq, Lq, Lk) up to broadcasting; autograd keeps dbias's own shape
        bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
    return_lse = bool(options["return_lse"])
    grad = torch.is_grad_enabled() and any(
        isinstance(x, torch.Tensor) and x.requires_grad for x in (q, k, v, bias, sinks)
    )
    if sinks is None and not args.packed:
        return _dense_path(pattern, q, k, v, args, bias=bias, mask=mask, return_lse=return_lse, grad=grad, flex=flex)
    dtype = q.dtype
    if sinks is not None:  # the path's (out, lse) unrounded: the sink joins in the compute dtype
        dt = compute_dtype(dtype)
        q, k, v, bias, sinks = (None if x is None else x.to(dt) for x in (q, k, v, bias, sinks))
    need_lse = return_lse or sinks is not None
    kernel = partial(_dense_path, pattern, bias=bias, mask=mask, grad=grad, flex=flex)
    if args.packed:
        result = by_sequence(q, k, v, args, kernel, return_lse=need_lse, pattern=pattern, grad=grad)
    else:
        result = kernel(q, k, v, replace(args, sinks=None), return_lse=need_lse)
    return _joined_sinks(result, sinks, _padding(args, q.device), dtype, return_lse)


def _joined_sinks(result: Any, sinks: torch.Tensor | None, padding: Any, dtype: torch.dtype, return_lse: bool) -> Any:
    """A path's result with the sinks joined in (``result`` is then ``(out, lse)``), in ``dtype``."""
    if sinks is None:
        return result
    out, lse = result
    out, lse = with_sinks(out, lse, row_sinks(sinks, tuple(lse.shape), padding))
    out = out.to(dtype)
    return (out, lse.to(dtype)) if return_lse else out


def _padding(args: AttentionArgs, device: torch.device) -> torch.Tensor | None:
    """Padding rows ``i >= q_lengths[b]`` of a dense ``lse (B, Hq, Lq)`` as a ``(B, 1, Lq)`` bool
    tensor (None without ``q_lengths``); the lengths are host data, so nothing waits for the device."""
    if args.q_lengths is None:
        return None
    lengths = torch.as_tensor(args.q_lengths, device=device)
    return (torch.arange(args.q_len, device=device)[None, :] >= lengths[:, None])[:, None, :]


def _dense_path(
    pattern: Pattern,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    args: AttentionArgs,
    *,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    return_lse: bool,
    grad: bool,
    flex: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The dense op of ``pattern`` (no sinks, no packing) on the fastest exact path."""
    if sdpa_applies(pattern, args, mask=mask, return_lse=return_lse, requires_grad=grad):
        return sdpa_attention(q, k, v, args, bias=bias)
    if flex and _flex.flex_applies(q, args, bias=bias, mask=mask, requires_grad=grad):
        result = _flex.flex_attention(q, k, v, pattern, args, return_lse=return_lse)
        if result is not None:
            return result
    if banded_applies(q, k, v, args, bias=bias, mask=mask, return_lse=return_lse, requires_grad=grad):
        return banded_attention(q, k, v, pattern, args, bias=bias, mask=mask)
    return blocked_attention(q, k, v, pattern, args, bias=bias, mask=mask, return_lse=return_lse)


def global_attention(q: Any, k: Any, v: Any, *, causal: Any = False, **options: Any) -> Any:
    """:func:`attnref.reference.global_attention` on tensors."""
    return _attention(full_pattern(causal), q, k, v, **options)


def local_attention(q: Any, k: Any, v: Any, *, window: Any, flex: bool = False, **options: Any) -> Any:
    """:func:`attnref.reference.local_attention` on tensors."""
    return _attention(window_pattern(window), q, k, v, flex=flex, **options)


def chunked_attention(
    q: Any, k: Any, v: Any, *, chunk_size: Any, causal: Any = False, flex: bool = False, **options: Any
) -> Any:
    """:func:`attnref.reference.chunked_attention` on tensors."""
    return _attention(chunk_pattern(chunk_size, causal), q, k, v, flex=flex, **options)


def paged_attention(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    *,
    block_table: Any,
    cache_seqlens: Any,
    causal: Any = False,
    window: Any = None,
    scale: Any = None,
    softcap: Any = None,
    sinks: Any = None,
    align: Any = "bottom_right",
    return_lse: Any = False,
    flex: bool = False,
) -> Any:
    """:func:`attnref.reference.paged_attention` on tensors, one sequence at a time: a decoding
    step streamed from the cache blocks, anything else on its used blocks gathered for it alone
    (:func:`attnref_torch._sequences.by_paged_sequence`)."""
    q, k_cache, v_cache = checkable(q), checkable(k_cache), checkable(v_cache)
    for name, value in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("sinks", sinks)):
        if isinstance(value, torch.Tensor):
            _dense(name, value)
    paged = check_paged(
        q, k_cache, v_cache, block_table=block_table, cache_seqlens=cache_seqlens, causal=causal, window=window,
        scale=scale, softcap=softcap, sinks=sinks, align=align, return_lse=return_lse,
    )  # fmt: skip
    t = as_tensors({"q": q, "k_cache": k_cache, "v_cache": v_cache, "sinks": sinks}, first="q")
    q, k_cache, v_cache, sinks = t["q"], t["k_cache"], t["v_cache"], t["sinks"]
    return_lse = bool(return_lse)
    grad = torch.is_grad_enabled() and any(
        isinstance(x, torch.Tensor) and x.requires_grad for x in (q, k_cache, v_cache, sinks)
    )
    dtype = q.dtype
    if sinks is not None:  # as in _attention; the caches are cast by sequence, after the gather
        q, sinks = q.to(compute_dtype(dtype)), sinks.to(compute_dtype(dtype))
    kernel = partial(_dense_path, paged.pattern, bias=None, mask=None, grad=grad, flex=flex)
    result = by_paged_sequence(
        q, k_cache, v_cache, paged, kernel, return_lse=return_lse or sinks is not None, grad=grad
    )
    return _joined_sinks(result, sinks, None, dtype, return_lse)


def attention_vjp(
    op: Callable[..., Any], q: Any, k: Any, v: Any, dout: Any, *, dlse: Any = None, **kwargs: Any
) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dv)``, then ``dbias`` with a bias, then ``dsinks`` with sinks, of ``op`` at ``(q, k, v)``.

    Through the blocked path's own backward and the sinks' (autograd records
    both). The gradients have the dtypes and shapes of their inputs; ``dbias``
    has the bias's own shape (summed over the axes it broadcasts along).
    """
    names = ["q", "k", "v"] + [name for name in ("bias", "sinks") if kwargs.get(name) is not None]
    inputs = {name: checkable(value) for name, value in zip(names, (q, k, v), strict=False)}
    inputs.update({name: kwargs[name] for name in names[3:]})
    if isinstance(inputs["q"], torch.Tensor) and isinstance(inputs.get("sinks"), np.ndarray):
        inputs["sinks"] = from_numpy(inputs["sinks"], inputs["q"].device)  # a leaf for dsinks
    leaves = {name: _leaf(x) for name, x in inputs.items()}
    kwargs = {**kwargs, **{name: leaves[name] for name in names[3:]}}
    with torch.enable_grad():
        result = op(leaves["q"], leaves["k"], leaves["v"], return_lse=True, **kwargs)
        upstream = [_upstream("dout", dout, result[0])]
        if dlse is not None:
            upstream.append(_upstream("dlse", dlse, result[1]))
        grads = torch.autograd.grad(result[: len(upstream)], list(leaves.values()), upstream, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves.values(), strict=True))


def _leaf(x: Any) -> Any:
    """A floating tensor as a fresh leaf that requires grad; anything else as it is (validation answers it)."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().requires_grad_(True)
    return x


def _upstream(argument: str, value: Any, output: torch.Tensor) -> torch.Tensor:
    """An upstream gradient, validated like ``q``: a floating array of the output's shape."""
    value = checkable(value)
    if isinstance(value, np.ndarray):
        if name_of_array(value) not in DTYPE_NAMES:
            raise invalid_type(argument, f"dtype {name_of_array(value)}", "a floating dtype: " + ", ".join(DTYPE_NAMES))
        value = from_numpy(value, output.device)
    if not isinstance(value, torch.Tensor):
        raise invalid_type(argument, type(value).__name__, "a torch.Tensor")
    _dense(argument, value)
    if name_of_array(value) not in DTYPE_NAMES:
        raise invalid_type(argument, f"dtype {name_of_array(value)}", "a floating dtype: " + ", ".join(DTYPE_NAMES))
    if tuple(value.shape) != tuple(output.shape):
        raise invalid_value(
            argument, f"shape {tuple(value.shape)}", f"shape {tuple(output.shape)}, the shape of the forward output"
        )
    if value.device != output.device:
        raise invalid_value(argument, f"a tensor on {value.device}", f"a tensor on {output.device}, the device of q")
    return value.to(dtype=output.dtype)


# -- merged partial states ----------------------------------------------------------
def merge_attention_states(outs: Any, lses: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attnref.reference.merge_attention_states` on tensors.

    ``lse = m + log sum_n exp(lses[n] - m)`` with ``m = max_n lses[n]`` (0 where every
    part is ``-inf``), ``out = sum_n exp(lses[n] - lse) * outs[n]``; a part whose lse is
    ``-inf`` is selected away (a NaN in its ``outs`` cannot leak); no part: output 0,
    lse ``-inf``; a NaN or ``+inf`` lse gives NaN (``inf - inf``). Computed in float32
    for 16-bit inputs; returned in the dtypes of ``outs`` and ``lses``.
    """
    outs, lses = checkable(outs), checkable(lses)
    check_merge(outs, lses)
    t = as_tensors({"outs": outs, "lses": lses}, first="outs")
    o, lse_parts = t["outs"], t["lses"]
    dt = torch.promote_types(compute_dtype(o.dtype), compute_dtype(lse_parts.dtype))
    parts = lse_parts.to(dt)
    m = parts.amax(0)
    m = torch.where(m == float("-inf"), 0.0, m).to(dt)
    w = torch.exp(parts - m)  # 0 for -inf parts
    z = w.sum(0)
    lse = m + torch.log(z)
    weights = w / torch.where(z == 0, 1.0, z).to(dt)
    terms = torch.where((parts == float("-inf"))[..., None], 0.0, weights[..., None] * o.to(dt))
    return terms.sum(0).to(o.dtype), lse.to(lse_parts.dtype)


# -- attention pooling ------------------------------------------------------------
additive_attention = _pooling.additive_attention
luong_attention = _pooling.luong_attention
