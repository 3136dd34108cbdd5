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

from attnref.dtypes import DTYPE_NAMES, name_of_array, numpy_dtype
from attnref.errors import invalid_type, invalid_value
from attnref.patterns import ALIGNMENTS, Pattern, align_offset

__all__ = [
    "AttentionArgs",
    "PagedArgs",
    "MergeArgs",
    "AdditiveArgs",
    "LuongArgs",
    "LUONG_SCORES",
    "LUONG_MODES",
    "check_attention",
    "check_paged",
    "check_merge",
    "check_additive",
    "check_luong",
    "full_pattern",
    "window_pattern",
    "chunk_pattern",
    "check_window",
    "check_flag",
    "host_integers",
    "host_array",
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
def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _check_storage(argument: str, array: Any) -> None:
    """Reject a torch tensor that holds no values (meta device) or is not dense (sparse)."""
    if not _is_torch(array):
        return
    if getattr(array, "is_meta", False):
        raise invalid_value(argument, "a tensor on the meta device (it holds no values)", "an array with values")
    layout = str(getattr(array, "layout", "torch.strided"))
    if layout != "torch.strided":
        raise invalid_type(argument, f"a tensor with layout {layout}", "a dense (strided) array")


def host_array(argument: str, value: Any) -> np.ndarray:
    """``value`` as a NumPy array on the host, dtype kept (bfloat16 as :data:`ml_dtypes.bfloat16`).

    Accepts NumPy arrays and scalars, sequences, CuPy arrays and torch tensors
    (also ones that require grad or live on a GPU: their values are copied).
    A meta-device or sparse tensor is an error naming ``argument``.
    """
    if _is_torch(value):
        _check_storage(argument, value)
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # NumPy has no bfloat16 of its own: same bits, ml_dtypes' type
            return tensor.view(_torch_int16(tensor)).numpy().view(numpy_dtype("bfloat16"))
        return tensor.numpy()
    if hasattr(value, "get") and hasattr(value, "__cuda_array_interface__"):  # CuPy
        return value.get()
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise invalid_type(argument, type(value).__name__, "an array") from exc


def _torch_int16(tensor: Any) -> Any:
    import torch  # only reached with a torch tensor in hand

    return torch.int16


def _shape(argument: str, array: Any) -> tuple[int, ...]:
    shape = getattr(array, "shape", None)
    if shape is None or not hasattr(array, "dtype"):
        raise invalid_type(argument, type(array).__name__, "an array")
    _check_storage(argument, array)
    return tuple(int(n) for n in shape)


def _float_array(argument: str, array: Any, ndim: int | None = None, *, empty_first: bool = False) -> tuple[int, ...]:
    """Shape of a floating array; with ``ndim``, exactly that many dimensions, each >= 1
    (the first may be 0 with ``empty_first``: the packed token axis of varlen inputs)."""
    shape = _shape(argument, array)
    name = name_of_array(array)
    if name not in DTYPE_NAMES:
        raise invalid_type(argument, f"dtype {name}", "a floating dtype: " + ", ".join(DTYPE_NAMES))
    if ndim is not None and len(shape) != ndim:
        raise invalid_value(argument, f"{len(shape)} dimensions {shape}", f"{ndim} dimensions")
    if ndim is not None and 0 in shape[1 if empty_first else 0 :]:
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
    NumPy ``int64`` array; floats and bools are a TypeError, a meta-device or
    sparse tensor an error naming ``argument``."""
    array = host_array(argument, value)
    if array.dtype.kind not in "iu":
        raise invalid_type(argument, f"dtype {array.dtype}", "integers")
    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise invalid_value(argument, f"values up to {array.max()}", "integers that fit int64")
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


def _sinks(value: Any, heads: int) -> np.ndarray | None:
    """``sinks``: ``(Hq,)`` of any floating dtype, as a float64 host copy (exact)."""
    if value is None:
        return None
    shape = _float_array("sinks", value)
    if shape != (heads,):
        raise invalid_value("sinks", f"shape {shape}", f"shape ({heads},), one logit per query head")
    return host_array("sinks", value).astype(np.float64)


def _cu_seqlens(argument: str, value: Any, total: int) -> np.ndarray:
    """Offsets of packed sequences: int ``(B + 1,)``, ``B >= 1``, from 0, non-decreasing, to ``total``."""
    offsets = host_integers(argument, value)
    if offsets.ndim != 1 or offsets.shape[0] < 2:
        raise invalid_value(argument, f"shape {offsets.shape}", "shape (B + 1,) with B >= 1 sequences")
    if offsets[0] != 0:
        raise invalid_value(argument, f"first offset {int(offsets[0])}", "0")
    steps = np.diff(offsets)
    if (steps < 0).any():
        at = int(np.argmax(steps < 0))
        given = f"offsets {int(offsets[at])} then {int(offsets[at + 1])}"
        raise invalid_value(argument, given, "non-decreasing offsets")
    if offsets[-1] != total:
        raise invalid_value(argument, f"last offset {int(offsets[-1])}", f"{total}, the number of packed rows")
    return offsets


# -- transformer-style ops --------------------------------------------------
@dataclass(frozen=True)
class AttentionArgs:
    """Validated arguments of a multi-head attention op (sizes and options).

    Dense inputs: ``q (B, Hq, Lq, D)``, ``k (B, Hkv, Lk, D)``, ``v (B, Hkv, Lk, Dv)``.
    Packed inputs (:attr:`packed`, contract section 8): ``q (Tq, Hq, D)``,
    ``k (Tk, Hkv, D)``, ``v (Tk, Hkv, Dv)``; ``batch`` is the number of
    sequences ``B``, ``q_len``/``kv_len`` are the totals ``Tq``/``Tk``, and
    sequence ``b`` is rows ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` of ``q`` and
    ``cu_seqlens_k[b]:cu_seqlens_k[b + 1]`` of ``k``/``v``.

    Attributes
    ----------
    kv_lengths, q_lengths : ndarray or None
        The dense ops' lengths, int64 of shape ``(B,)`` (never with packed inputs).
    sinks : ndarray or None
        The sink logits, a float64 host copy of shape ``(Hq,)`` (contract section 7).
    cu_seqlens_q, cu_seqlens_k : ndarray or None
        The packed sequences' offsets, int64 of shape ``(B + 1,)``.
    """

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
    sinks: np.ndarray | None = None
    cu_seqlens_q: np.ndarray | None = None
    cu_seqlens_k: np.ndarray | None = None

    @property
    def packed(self) -> bool:
        """Packed variable-length sequences (``cu_seqlens_q``/``cu_seqlens_k`` given)."""
        return self.cu_seqlens_q is not None

    @property
    def group(self) -> int:
        """Query heads per kv head: query head ``h`` reads kv head ``h // group``."""
        return self.q_heads // self.kv_heads

    @property
    def scores_shape(self) -> tuple[int, int, int, int]:
        """``(B, Hq, Lq, Lk)``, the shape ``bias`` and ``mask`` broadcast to (dense inputs)."""
        return (self.batch, self.q_heads, self.q_len, self.kv_len)

    def q_lens(self) -> np.ndarray:
        """Query rows of each sequence, ``int64 (B,)``: ``Lq_b`` (``q_lengths`` or ``Lq``), or the packed lengths."""
        if self.cu_seqlens_q is not None:
            return np.diff(self.cu_seqlens_q)
        return self.q_lengths if self.q_lengths is not None else np.full(self.batch, self.q_len, dtype=np.int64)

    def kv_lens(self) -> np.ndarray:
        """Keys of each sequence, ``int64 (B,)``: ``Lk_b`` (``kv_lengths`` or ``Lk``), or the packed lengths."""
        if self.cu_seqlens_k is not None:
            return np.diff(self.cu_seqlens_k)
        return self.kv_lengths if self.kv_lengths is not None else np.full(self.batch, self.kv_len, dtype=np.int64)

    def offsets(self) -> np.ndarray:
        """Per-sequence alignment offset, ``int64 (B,)``: ``Lk_b - Lq_b`` or 0 (see ``align``)."""
        return np.asarray(align_offset(self.align, self.q_lens(), self.kv_lens()), dtype=np.int64)

    def allowed(self, pattern: Pattern, mask: Any = None) -> np.ndarray:
        """The call's allowed keys as one dense boolean array (contract section 2, rule 4).

        Key ``j`` is allowed for query row ``i`` of batch ``b`` iff ``pattern``
        allows it at the aligned position ``p = i + offsets()[b]``, ``j < Lk_b``
        (``kv_lengths``), ``i < Lq_b`` (``q_lengths``: a padding row sees no key)
        and ``mask`` (the call's bool mask, as a NumPy array) is True there. For a
        backend that hands the rule to a library as a dense mask; it costs
        ``O(B Lq Lk)`` memory (``O(B Hq Lq Lk)`` with a per-head mask).

        Parameters
        ----------
        pattern : Pattern
            The op's pattern (:func:`full_pattern`, :func:`window_pattern`, :func:`chunk_pattern`).
        mask : bool ndarray, optional
            Broadcastable to ``(B, Hq, Lq, Lk)``, as :func:`check_attention` accepted it.

        Returns
        -------
        ndarray of bool, ``(B, 1, Lq, Lk)``
            Or ``(B, Hq, Lq, Lk)`` when ``mask`` varies over the heads.

        Raises
        ------
        InvalidArgumentError
            For packed inputs (``cu_seqlens_q``): there the rule holds per sequence; cut them first.
        """
        if self.packed:
            raise invalid_value("cu_seqlens_q", "offsets", "None: the dense allowed keys are of dense inputs")
        i = np.arange(self.q_len)[None, :, None]
        j = np.arange(self.kv_len)[None, None, :]
        ok = np.asarray(pattern.allows(i + self.offsets()[:, None, None], j))
        ok = ok & (j < self.kv_lens()[:, None, None]) & (i < self.q_lens()[:, None, None])
        ok = ok[:, None]  # (B, 1, Lq, Lk)
        return ok if mask is None else ok & np.asarray(mask)


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
    sinks: Any = None,
    cu_seqlens_q: Any = None,
    cu_seqlens_k: Any = None,
) -> AttentionArgs:
    """Validate the common arguments of the three multi-head ops (contract sections 1, 2, 7, 8).

    Looks at the shapes and dtypes of ``q``, ``k``, ``v``, ``bias``, ``mask``
    (any array library) and copies the small arrays (lengths, offsets, sinks)
    to the host.

    Raises
    ------
    InvalidTypeError
        Not an array, a non-floating or mixed dtype, a non-bool mask, non-integer
        lengths or offsets, integer sinks.
    InvalidArgumentError
        Wrong rank or sizes, head count not divisible, lengths or offsets out of
        range, one offset array without the other, packed inputs combined with
        ``bias``/``mask``/``kv_lengths``/``q_lengths``, etc.
    """
    if (cu_seqlens_q is None) != (cu_seqlens_k is None):
        missing = "cu_seqlens_k" if cu_seqlens_k is None else "cu_seqlens_q"
        raise invalid_value(missing, "None", "an offsets array: cu_seqlens_q and cu_seqlens_k are given together")
    if cu_seqlens_q is not None:
        return _check_packed(
            q, k, v, scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths,
            q_lengths=q_lengths, align=align, return_lse=return_lse, sinks=sinks,
            cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip
    B, Hq, Lq, D = _float_array("q", q, 4)
    Bk, Hkv, Lk, Dk = _float_array("k", k, 4)
    Bv, Hv, Lv, Dv = _float_array("v", v, 4)
    _same_dtype({"q": q, "k": k, "v": v})
    if Bk != B or Bv != B:
        raise invalid_value("k" if Bk != B else "v", f"batch {Bk if Bk != B else Bv}", f"batch {B} (as q)")
    _check_heads_and_sizes(Hq, Hkv, Hv, D, Dk, Lk, Lv)
    target = (B, Hq, Lq, Lk)
    if bias is not None:
        _broadcastable("bias", _float_array("bias", bias), target, "(B, Hq, Lq, Lk)")
    if mask is not None:
        shape = _shape("mask", mask)
        if name_of_array(mask) != "bool":
            raise invalid_type("mask", f"dtype {name_of_array(mask)}", "bool (True = may attend)")
        _broadcastable("mask", shape, target, "(B, Hq, Lq, Lk)")
    check_flag("return_lse", return_lse)
    return _attention_args(
        (B, Hq, Hkv, Lq, Lk, D, Dv), scale=scale, softcap=softcap, align=align, sinks=sinks,
        kv_lengths=_lengths("kv_lengths", kv_lengths, B, Lk), q_lengths=_lengths("q_lengths", q_lengths, B, Lq),
    )  # fmt: skip


def _attention_args(
    sizes: tuple[int, int, int, int, int, int, int],
    *,
    scale: Any,
    softcap: Any,
    align: Any,
    sinks: Any,
    kv_lengths: np.ndarray | None = None,
    q_lengths: np.ndarray | None = None,
    **offsets: np.ndarray,
) -> AttentionArgs:
    """:class:`AttentionArgs` of ``sizes = (B, Hq, Hkv, Lq, Lk, D, Dv)``, checking the options every
    multi-head op (dense, packed, paged) takes alike: ``scale``, ``softcap``, ``align``, ``sinks``."""
    B, Hq, Hkv, Lq, Lk, D, Dv = sizes
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
        kv_lengths=kv_lengths,
        q_lengths=q_lengths,
        sinks=_sinks(sinks, Hq),
        **offsets,
    )


def _check_heads(Hq: int, Hkv: int, Hv: int, D: int, Dk: int, *, k: str = "k", v: str = "v") -> None:
    """The head checks of every multi-head op: ``v`` has ``k``'s heads, which divide ``q``'s, and
    ``k`` has ``q``'s head size."""
    if Hv != Hkv:
        raise invalid_value(v, f"{Hv} heads", f"{Hkv} heads (as {k})")
    if Hq % Hkv:
        raise invalid_value(k, f"{Hkv} heads", f"a divisor of q's {Hq} heads")
    if Dk != D:
        raise invalid_value(k, f"head size {Dk}", f"head size {D} (as q)")


def _check_heads_and_sizes(Hq: int, Hkv: int, Hv: int, D: int, Dk: int, Lk: int, Lv: int) -> None:
    """The checks shared by dense and packed inputs: kv heads, head sizes, key counts."""
    _check_heads(Hq, Hkv, Hv, D, Dk)
    if Lv != Lk:
        raise invalid_value("v", f"length {Lv}", f"length {Lk} (as k)")


def _check_packed(
    q: Any,
    k: Any,
    v: Any,
    *,
    scale: Any,
    softcap: Any,
    bias: Any,
    mask: Any,
    kv_lengths: Any,
    q_lengths: Any,
    align: Any,
    return_lse: Any,
    sinks: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
) -> AttentionArgs:
    """:func:`check_attention` for packed variable-length sequences (contract section 8)."""
    for argument, value in (("bias", bias), ("mask", mask), ("kv_lengths", kv_lengths), ("q_lengths", q_lengths)):
        if value is not None:
            raise invalid_value(argument, "an array", "None with packed sequences (cu_seqlens_q/cu_seqlens_k)")
    Tq, Hq, D = _float_array("q", q, 3, empty_first=True)
    Tk, Hkv, Dk = _float_array("k", k, 3, empty_first=True)
    Tv, Hv, Dv = _float_array("v", v, 3, empty_first=True)
    _same_dtype({"q": q, "k": k, "v": v})
    _check_heads_and_sizes(Hq, Hkv, Hv, D, Dk, Tk, Tv)
    offsets_q = _cu_seqlens("cu_seqlens_q", cu_seqlens_q, Tq)
    offsets_k = _cu_seqlens("cu_seqlens_k", cu_seqlens_k, Tk)
    if offsets_k.shape != offsets_q.shape:
        expected = f"shape {offsets_q.shape}, as cu_seqlens_q (the same sequences)"
        raise invalid_value("cu_seqlens_k", f"shape {offsets_k.shape}", expected)
    check_flag("return_lse", return_lse)
    return _attention_args(
        (offsets_q.shape[0] - 1, Hq, Hkv, Tq, Tk, D, Dv), scale=scale, softcap=softcap, align=align, sinks=sinks,
        cu_seqlens_q=offsets_q, cu_seqlens_k=offsets_k,
    )  # fmt: skip


# -- paged KV cache ---------------------------------------------------------
@dataclass(frozen=True)
class PagedArgs:
    """Validated arguments of ``paged_attention`` (contract section 9).

    Attributes
    ----------
    attention : AttentionArgs
        The op seen as dense attention over each sequence's gathered keys:
        ``kv_len = max_blocks * block_size`` key slots, ``kv_lengths =
        cache_seqlens``.
    cache_seqlens : ndarray
        Keys of each sequence, int64 of shape ``(B,)``.
    pattern : Pattern
        ``window`` with ``causal`` narrowing its right side to 0; global (or
        causal) attention when ``window`` is None.
    block_table : ndarray
        Host copy, int64 of shape ``(B, max_blocks)``; only the entries of
        :meth:`used_blocks` are meaningful.
    num_blocks, block_size : int
        Of the caches.
    """

    attention: AttentionArgs
    pattern: Pattern
    block_table: np.ndarray
    cache_seqlens: np.ndarray
    num_blocks: int
    block_size: int

    def used_blocks(self) -> np.ndarray:
        """Table entries each sequence reads, ``ceil(cache_seqlens / block_size)``, ``int64 (B,)``."""
        return -(-self.cache_seqlens // self.block_size)

    def key_slots(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """``(blocks, offsets)`` of sequence ``b``'s keys ``t = 0..cache_seqlens[b]-1``:
        key ``t`` is ``cache[blocks[t], offsets[t]]``."""
        t = np.arange(int(self.cache_seqlens[b]))
        return self.block_table[b, t // self.block_size], t % self.block_size


def check_paged(
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
) -> PagedArgs:
    """Validate the arguments of ``paged_attention`` (contract section 9).

    Raises
    ------
    InvalidTypeError
        Non-floating or mixed dtypes, non-integer ``block_table`` or ``cache_seqlens``.
    InvalidArgumentError
        Wrong ranks or sizes; a used ``block_table`` entry outside
        ``[0, num_blocks)``; ``cache_seqlens`` beyond ``max_blocks * block_size``.
    """
    B, Hq, Lq, D = _float_array("q", q, 4)
    num_blocks, block_size, Hkv, Dk = _float_array("k_cache", k_cache, 4)
    nv, bv, Hv, Dv = _float_array("v_cache", v_cache, 4)
    _same_dtype({"q": q, "k_cache": k_cache, "v_cache": v_cache})
    if (nv, bv) != (num_blocks, block_size):
        raise invalid_value("v_cache", f"{nv} blocks of {bv}", f"{num_blocks} blocks of {block_size} (as k_cache)")
    _check_heads(Hq, Hkv, Hv, D, Dk, k="k_cache", v="v_cache")
    table = host_integers("block_table", block_table)
    if table.ndim != 2 or table.shape[0] != B:
        raise invalid_value("block_table", f"shape {table.shape}", f"shape ({B}, max_blocks), one row per sequence")
    capacity = table.shape[1] * block_size
    seqlens = _lengths("cache_seqlens", cache_seqlens, B, capacity)
    if seqlens is None:
        raise invalid_value("cache_seqlens", "None", f"an int array of shape ({B},)")
    used = np.arange(table.shape[1])[None, :] < -(-seqlens // block_size)[:, None]
    bad = used & ((table < 0) | (table >= num_blocks))
    if bad.any():
        b, n = (int(x) for x in np.argwhere(bad)[0])
        raise invalid_value(
            "block_table", f"entry [{b}, {n}] = {int(table[b, n])}", f"block indices in [0, {num_blocks}) where used"
        )
    causal = check_flag("causal", causal)
    if window is None:
        pattern = Pattern.full(causal)
    else:
        left, right = check_window(window)
        pattern = Pattern.window(left, 0 if causal else right)
    check_flag("return_lse", return_lse)
    attention = _attention_args(
        (B, Hq, Hkv, Lq, capacity, D, Dv), scale=scale, softcap=softcap, align=align, sinks=sinks,
        kv_lengths=seqlens,
    )  # fmt: skip
    return PagedArgs(
        attention=attention, pattern=pattern, block_table=table, cache_seqlens=seqlens,
        num_blocks=num_blocks, block_size=block_size,
    )  # fmt: skip


# -- merging partial states -------------------------------------------------
@dataclass(frozen=True)
class MergeArgs:
    """Validated arguments of ``merge_attention_states`` (contract section 10)."""

    parts: int  # N
    shape: tuple[int, ...]  # the positions: lses.shape[1:]
    value_dim: int


def check_merge(outs: Any, lses: Any) -> MergeArgs:
    """Validate ``outs (N, ..., Dv)`` and ``lses (N, ...)`` (each any floating dtype), ``N >= 1``."""
    out_shape = _float_array("outs", outs)
    lse_shape = _float_array("lses", lses)
    if len(out_shape) < 2:
        raise invalid_value("outs", f"shape {out_shape}", "shape (N, ..., Dv): at least 2 dimensions")
    if out_shape[0] < 1:
        raise invalid_value("outs", f"shape {out_shape}", "N >= 1 partial states along the first axis")
    if lse_shape != out_shape[:-1]:
        raise invalid_value("lses", f"shape {lse_shape}", f"shape {out_shape[:-1]}, the shape of outs without Dv")
    return MergeArgs(parts=out_shape[0], shape=out_shape[1:-1], value_dim=out_shape[-1])


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
