"""Argument checks shared by the reference and every backend.

One module, so that every backend rejects exactly the inputs the reference
rejects, with the same error class and message. The checks look only at
``shape`` and ``dtype`` (any array library) and, for integer lengths and
centres, at their values (copied to the host).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnref.dtypes import DTYPE_NAMES, name_of_array
from attnref.errors import invalid_type, invalid_value
from attnref.patterns import ALIGNMENTS, Pattern, align_offset

__all__ = [
    "AttentionArgs",
    "AdditiveArgs",
    "LuongArgs",
    "LUONG_SCORES",
    "LUONG_MODES",
    "check_attention",
    "check_additive",
    "check_luong",
    "full_pattern",
    "window_pattern",
    "chunk_pattern",
    "check_window",
    "check_flag",
    "host_integers",
]

LUONG_SCORES: tuple[str, ...] = ("dot", "general", "concat")
LUONG_MODES: tuple[str, ...] = ("global", "local-m", "local-p")


# -- scalars ----------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _int(argument: str, value: Any, *, minimum: int) -> int:
    if not _is_int(value):
        raise invalid_type(argument, repr(value), f"an integer >= {minimum}")
    if value < minimum:
        raise invalid_value(argument, repr(value), f"an integer >= {minimum}")
    return int(value)


def check_flag(argument: str, value: Any) -> bool:
    """A plain ``bool`` (NumPy's ``bool_`` too); anything else is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise invalid_type(argument, repr(value), "True or False")
    return bool(value)


def _positive_real(argument: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise invalid_type(argument, repr(value), "None or a finite real number > 0")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise invalid_value(argument, repr(value), "None or a finite real number > 0")
    return float(value)


def _choice(argument: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise invalid_value(argument, repr(value), "one of " + ", ".join(repr(c) for c in choices))
    return value


def check_window(window: Any, argument: str = "window") -> tuple[int | None, int | None]:
    """Normalise a window to ``(left, right)``.

    An int ``w`` means ``(w, w)`` (so ``-1`` is unbounded on both sides); each
    side of a pair is a non-negative int or ``None``/``-1`` (unbounded, the
    FlashAttention/ONNX spelling).
    """
    if _is_int(window):
        side = _window_side(argument, window)  # -1 means (None, None), as FlashAttention's (-1, -1)
        return side, side
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise invalid_type(argument, repr(window), "an integer >= 0 or a pair (left, right) of integers >= 0 or None")
    return _window_side(f"{argument}[0]", window[0]), _window_side(f"{argument}[1]", window[1])


def _window_side(argument: str, side: Any) -> int | None:
    if side is None or (_is_int(side) and side == -1):
        return None
    if not _is_int(side):
        raise invalid_type(argument, repr(side), "an integer >= 0, or None/-1 for unbounded")
    if side < 0:
        raise invalid_value(argument, repr(side), "an integer >= 0, or None/-1 for unbounded")
    return int(side)


# -- patterns ---------------------------------------------------------------
def full_pattern(causal: Any) -> Pattern:
    """The pattern of ``global_attention`` (checks ``causal``)."""
    return Pattern.full(check_flag("causal", causal))


def window_pattern(window: Any) -> Pattern:
    """The pattern of ``local_attention`` (checks ``window``)."""
    return Pattern.window(*check_window(window))


def chunk_pattern(chunk_size: Any, causal: Any) -> Pattern:
    """The pattern of ``chunked_attention`` (checks ``chunk_size`` and ``causal``)."""
    return Pattern.chunk(_int("chunk_size", chunk_size, minimum=1), check_flag("causal", causal))


# -- arrays -----------------------------------------------------------------
def _shape(argument: str, array: Any) -> tuple[int, ...]:
    shape = getattr(array, "shape", None)
    if shape is None or not hasattr(array, "dtype"):
        raise invalid_type(argument, type(array).__name__, "an array")
    return tuple(int(n) for n in shape)


def _float_array(argument: str, array: Any, ndim: int | None = None) -> tuple[int, ...]:
    shape = _shape(argument, array)
    name = name_of_array(array)
    if name not in DTYPE_NAMES:
        raise invalid_type(argument, f"dtype {name}", "a floating dtype: " + ", ".join(DTYPE_NAMES))
    if ndim is not None and len(shape) != ndim:
        raise invalid_value(argument, f"{len(shape)} dimensions {shape}", f"{ndim} dimensions")
    if ndim is not None and 0 in shape:
        raise invalid_value(argument, f"shape {shape}", "every dimension >= 1")
    return shape


def _same_dtype(named: dict[str, Any]) -> None:
    names = {arg: name_of_array(a) for arg, a in named.items() if a is not None}
    first_arg, first = next(iter(names.items()))
    for arg, name in names.items():
        if name != first:
            raise invalid_type(arg, f"dtype {name}", f"the dtype of {first_arg} ({first})")


def _broadcastable(argument: str, shape: tuple[int, ...], target: tuple[int, ...], names: str) -> None:
    ok = len(shape) <= len(target) and all(n in (1, t) for n, t in zip(reversed(shape), reversed(target), strict=False))
    if not ok:
        raise invalid_value(argument, f"shape {shape}", f"a shape broadcastable to {names} = {target}")


def host_integers(argument: str, value: Any) -> np.ndarray:
    """Copy an integer array (NumPy, PyTorch, CuPy, or a sequence of ints) to a
    NumPy ``int64`` array; floats and bools are a TypeError."""
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU
        value = value.detach().cpu().numpy()
    elif hasattr(value, "get") and hasattr(value, "__cuda_array_interface__"):  # CuPy
        value = value.get()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise invalid_type(argument, type(value).__name__, "integers") from exc
    if array.dtype.kind not in "iu":
        raise invalid_type(argument, f"dtype {array.dtype}", "integers")
    return array.astype(np.int64)


def _lengths(argument: str, value: Any, batch: int, upper: int) -> np.ndarray | None:
    if value is None:
        return None
    lengths = host_integers(argument, value)
    if lengths.shape != (batch,):
        raise invalid_value(argument, f"shape {lengths.shape}", f"shape ({batch},), one length per batch")
    if lengths.size and (lengths.min() < 0 or lengths.max() > upper):
        raise invalid_value(argument, f"values {lengths.tolist()}", f"integers in [0, {upper}]")
    return lengths


# -- transformer-style ops --------------------------------------------------
@dataclass(frozen=True)
class AttentionArgs:
    """Validated arguments of a multi-head attention op (sizes and options)."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    value_dim: int
    scale: float
    softcap: float | None
    align: str
    kv_lengths: np.ndarray | None
    q_lengths: np.ndarray | None

    @property
    def group(self) -> int:
        """Query heads per kv head: query head ``h`` reads kv head ``h // group``."""
        return self.q_heads // self.kv_heads

    @property
    def scores_shape(self) -> tuple[int, int, int, int]:
        """``(B, Hq, Lq, Lk)``, the shape ``bias`` and ``mask`` broadcast to."""
        return (self.batch, self.q_heads, self.q_len, self.kv_len)

    def offsets(self) -> np.ndarray:
        """Per-batch alignment offset, ``int64 (B,)``."""
        kv = self.kv_lengths if self.kv_lengths is not None else np.full(self.batch, self.kv_len)
        q = self.q_lengths if self.q_lengths is not None else np.full(self.batch, self.q_len)
        return np.asarray(align_offset(self.align, q, kv), dtype=np.int64)


def check_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    scale: Any = None,
    softcap: Any = None,
    bias: Any = None,
    mask: Any = None,
    kv_lengths: Any = None,
    q_lengths: Any = None,
    align: Any = "bottom_right",
    return_lse: Any = False,
) -> AttentionArgs:
    """Validate the common arguments of the three multi-head ops.

    Raises
    ------
    InvalidTypeError
        Not an array, a non-floating or mixed dtype, a non-bool mask, non-integer lengths.
    InvalidArgumentError
        Wrong rank or sizes, head count not divisible, lengths out of range, etc.
    """
    B, Hq, Lq, D = _float_array("q", q, 4)
    Bk, Hkv, Lk, Dk = _float_array("k", k, 4)
    Bv, Hv, Lv, Dv = _float_array("v", v, 4)
    _same_dtype({"q": q, "k": k, "v": v})
    if Bk != B or Bv != B:
        raise invalid_value("k" if Bk != B else "v", f"batch {Bk if Bk != B else Bv}", f"batch {B} (as q)")
    if Hv != Hkv:
        raise invalid_value("v", f"{Hv} heads", f"{Hkv} heads (as k)")
    if Hq % Hkv:
        raise invalid_value("k", f"{Hkv} heads", f"a divisor of q's {Hq} heads")
    if Dk != D:
        raise invalid_value("k", f"head size {Dk}", f"head size {D} (as q)")
    if Lv != Lk:
        raise invalid_value("v", f"length {Lv}", f"length {Lk} (as k)")
    target = (B, Hq, Lq, Lk)
    if bias is not None:
        _broadcastable("bias", _float_array("bias", bias), target, "(B, Hq, Lq, Lk)")
    if mask is not None:
        shape = _shape("mask", mask)
        if name_of_array(mask) != "bool":
            raise invalid_type("mask", f"dtype {name_of_array(mask)}", "bool (True = may attend)")
        _broadcastable("mask", shape, target, "(B, Hq, Lq, Lk)")
    check_flag("return_lse", return_lse)
    return AttentionArgs(
        batch=B,
        q_heads=Hq,
        kv_heads=Hkv,
        q_len=Lq,
        kv_len=Lk,
        head_dim=D,
        value_dim=Dv,
        scale=1.0 / math.sqrt(D) if scale is None else _positive_real("scale", scale),
        softcap=None if softcap is None else _positive_real("softcap", softcap),
        align=_choice("align", align, ALIGNMENTS),
        kv_lengths=_lengths("kv_lengths", kv_lengths, B, Lk),
        q_lengths=_lengths("q_lengths", q_lengths, B, Lq),
    )


# -- attention pooling ------------------------------------------------------
@dataclass(frozen=True)
class AdditiveArgs:
    """Validated arguments of ``additive_attention``."""

    batch: int
    length: int
    window: tuple[int | None, int | None] | None
    centers: np.ndarray  # int64 (B,)


def check_additive(
    x: Any, w_in: Any, b_in: Any, w_out: Any, b_out: Any, *, mask: Any, window: Any, center: Any
) -> AdditiveArgs:
    """Validate the arguments of ``additive_attention``."""
    B, L, Din = _float_array("x", x, 3)
    Din_w, Dh = _float_array("w_in", w_in, 2)
    if Din_w != Din:
        raise invalid_value("w_in", f"shape {(Din_w, Dh)}", f"shape ({Din}, Dh): x has {Din} features")
    if _float_array("b_in", b_in, 1) != (Dh,):
        raise invalid_value("b_in", f"shape {_shape('b_in', b_in)}", f"shape ({Dh},)")
    if _float_array("w_out", w_out, 1) != (Dh,):
        raise invalid_value("w_out", f"shape {_shape('w_out', w_out)}", f"shape ({Dh},)")
    if b_out is not None and not (isinstance(b_out, numbers.Real) and not isinstance(b_out, (bool, np.bool_))):
        if _float_array("b_out", b_out) not in ((), (1,)):
            raise invalid_value("b_out", f"shape {_shape('b_out', b_out)}", "a scalar")
    _same_dtype({"x": x, "w_in": w_in, "b_in": b_in, "w_out": w_out})
    if mask is not None:
        shape = _shape("mask", mask)
        if name_of_array(mask) != "bool":
            raise invalid_type("mask", f"dtype {name_of_array(mask)}", "bool (True = keep)")
        if shape != (B, L):
            raise invalid_value("mask", f"shape {shape}", f"shape ({B}, {L})")
    sides = None if window is None else check_window(window)
    if center is None:
        centers = np.full(B, L // 2, dtype=np.int64)
    else:
        if window is None:
            raise invalid_value("center", repr(center), "None when window is None (global pooling has no centre)")
        centers = host_integers("center", center)
        if centers.shape == ():
            centers = np.full(B, int(centers), dtype=np.int64)
        if centers.shape != (B,):
            raise invalid_value("center", f"shape {centers.shape}", f"an integer or shape ({B},)")
        if centers.min() < 0 or centers.max() >= L:
            raise invalid_value("center", f"values {centers.tolist()}", f"positions in [0, {L - 1}]")
    return AdditiveArgs(batch=B, length=L, window=sides, centers=centers)


@dataclass(frozen=True)
class LuongArgs:
    """Validated arguments of ``luong_attention``."""

    batch: int
    target_len: int
    source_len: int
    dim: int
    score: str
    mode: str
    half_width: int | None
    source_lengths: np.ndarray  # int64 (B,)


def check_luong(
    h_t: Any,
    h_s: Any,
    *,
    score: Any,
    w_a: Any,
    v_a: Any,
    mode: Any,
    half_width: Any,
    w_p: Any,
    v_p: Any,
    source_lengths: Any,
) -> LuongArgs:
    """Validate the arguments of ``luong_attention``."""
    B, T, d = _float_array("h_t", h_t, 3)
    Bs, S, ds = _float_array("h_s", h_s, 3)
    if Bs != B:
        raise invalid_value("h_s", f"batch {Bs}", f"batch {B} (as h_t)")
    if ds != d:
        raise invalid_value("h_s", f"{ds} features", f"{d} features (as h_t)")
    score = _choice("score", score, LUONG_SCORES)
    mode = _choice("mode", mode, LUONG_MODES)
    named = {"h_t": h_t, "h_s": h_s}
    if score == "general":
        _need("w_a", w_a, "score='general'")
        if _float_array("w_a", w_a, 2) != (d, d):
            raise invalid_value("w_a", f"shape {_shape('w_a', w_a)}", f"shape ({d}, {d}) for score='general'")
        named["w_a"] = w_a
    elif score == "concat":
        _need("w_a", w_a, "score='concat'")
        _need("v_a", v_a, "score='concat'")
        two_d, da = _float_array("w_a", w_a, 2)
        if two_d != 2 * d:
            raise invalid_value("w_a", f"shape {(two_d, da)}", f"shape ({2 * d}, da) for score='concat'")
        if _float_array("v_a", v_a, 1) != (da,):
            raise invalid_value("v_a", f"shape {_shape('v_a', v_a)}", f"shape ({da},)")
        named.update(w_a=w_a, v_a=v_a)
    half = None
    if mode != "global":
        _need("half_width", half_width, f"mode={mode!r}")
        half = _int("half_width", half_width, minimum=1 if mode == "local-p" else 0)
    if mode == "local-p":
        _need("w_p", w_p, "mode='local-p'")
        _need("v_p", v_p, "mode='local-p'")
        d_w, dp = _float_array("w_p", w_p, 2)
        if d_w != d:
            raise invalid_value("w_p", f"shape {(d_w, dp)}", f"shape ({d}, dp)")
        if _float_array("v_p", v_p, 1) != (dp,):
            raise invalid_value("v_p", f"shape {_shape('v_p', v_p)}", f"shape ({dp},)")
        named.update(w_p=w_p, v_p=v_p)
    _same_dtype(named)
    lengths = _lengths("source_lengths", source_lengths, B, S)
    return LuongArgs(
        batch=B,
        target_len=T,
        source_len=S,
        dim=d,
        score=score,
        mode=mode,
        half_width=half,
        source_lengths=np.full(B, S, dtype=np.int64) if lengths is None else lengths,
    )


def _need(argument: str, value: Any, because: str) -> None:
    if value is None:
        raise invalid_value(argument, "None", f"an array: it is required for {because}")


# -- upstream gradients of the VJPs -----------------------------------------
def check_upstream_gradient(argument: str, array: Any, shape: tuple[int, ...]) -> None:
    """Check ``dout`` or ``dlse`` of a VJP: an array of a floating dtype (any of
    the four, independent of ``q``'s) and exactly ``shape``, the shape of the
    forward result it is the gradient of.

    Raises
    ------
    InvalidTypeError
        Not an array, or not a floating dtype (complex, integer, string).
    InvalidArgumentError
        Another shape.
    """
    given = _float_array(argument, array)
    if given != shape:
        raise invalid_value(argument, f"shape {given}", f"shape {shape}, the shape of the forward op's result")
