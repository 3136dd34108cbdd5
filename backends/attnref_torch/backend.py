"""The torch backend object: attnref's ops on ``torch.Tensor``, on any device.

This module does not import torch: ``import attnref`` and ``attnref backends``
must stay free of it. torch is imported by the first call that needs it
(:meth:`TorchBackend.asarray`, an op, ...), through :mod:`attnref_torch._ops`.

Device rules
------------
* Ops run on the device of their inputs and return tensors there. ``q``, ``k``,
  ``v`` (and ``bias``, ``mask`` when they are tensors) must share one device.
* :meth:`TorchBackend.asarray` puts NumPy arrays on the backend's default
  device: the ``device`` given to the constructor, else the environment
  variable ``ATTNREF_TORCH_DEVICE``, else ``"cuda"`` when CUDA is available,
  else ``"cpu"``.
"""

from __future__ import annotations

import importlib.util
import os
from importlib import metadata
from typing import Any

import attnref
from attnref.backend import FORWARD_OPS, GRADIENT_OPS
from attnref.dtypes import DTYPE_NAMES

__all__ = ["DEVICE_VARIABLE", "FLEX_VARIABLE", "TorchBackend"]

#: Environment variable naming the default device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
DEVICE_VARIABLE = "ATTNREF_TORCH_DEVICE"
#: Environment variable switching the CUDA FlexAttention path on (``"1"``) or off (``"0"``, the default).
FLEX_VARIABLE = "ATTNREF_TORCH_FLEX"


def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "not installed"


def _ops_module() -> Any:
    """The torch-importing implementation (imported on first use)."""
    from attnref_torch import _ops

    return _ops


class TorchBackend:
    """attnref's ops on PyTorch tensors (CPU and CUDA).

    Parameters
    ----------
    device : str or torch.device, optional
        Where :meth:`asarray` puts arrays. Default: ``$ATTNREF_TORCH_DEVICE``,
        else CUDA when available, else the CPU.
    flex : bool, optional
        Let large local and chunked problems on CUDA run through a compiled
        ``torch.nn.attention.flex_attention`` (exact semantics are kept: the
        blocked code handles every case FlexAttention cannot). Default:
        ``$ATTNREF_TORCH_FLEX == "1"``, else off, so that the default path never
        compiles.
    """

    name = "torch"
    ops = frozenset((*FORWARD_OPS, *GRADIENT_OPS, "merge_attention_states"))  # paged_attention: not yet
    dtypes = frozenset(DTYPE_NAMES)

    def __init__(self, device: Any = None, flex: bool | None = None):
        self._device = device
        self._flex = flex
        self.version = f"{attnref.__version__} (torch {_torch_version()})"

    # -- availability and conversion --------------------------------------
    @property
    def unavailable_reason(self) -> str | None:
        """``None`` when torch can be imported; checked without importing it."""
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        return None

    @property
    def device(self) -> Any:
        """The default device (a ``torch.device``); imports torch."""
        return _ops_module().resolve_device(self._device or os.environ.get(DEVICE_VARIABLE) or None)

    @property
    def flex(self) -> bool:
        """Whether large CUDA problems may use compiled FlexAttention."""
        if self._flex is not None:
            return bool(self._flex)
        return os.environ.get(FLEX_VARIABLE, "0") == "1"

    def asarray(self, array: Any) -> Any:
        """A NumPy array (any dtype, bfloat16 from ml_dtypes too) as a tensor on :attr:`device`, dtype kept."""
        return _ops_module().from_numpy(array, self.device)

    def to_numpy(self, array: Any) -> Any:
        """A tensor back as a NumPy array (bfloat16 as ``ml_dtypes.bfloat16``), dtype kept."""
        return _ops_module().to_numpy(array)

    # -- multi-head ops ---------------------------------------------------
    def global_attention(
        self,
        q: Any,
        k: Any,
        v: Any,
        *,
        causal: bool = False,
        scale: float | None = None,
        softcap: float | None = None,
        bias: Any = None,
        mask: Any = None,
        kv_lengths: Any = None,
        q_lengths: Any = None,
        align: str = "bottom_right",
        return_lse: bool = False,
        sinks: Any = None,
        cu_seqlens_q: Any = None,
        cu_seqlens_k: Any = None,
    ) -> Any:
        """:func:`attnref.reference.global_attention` on tensors (SDPA where exact, else blocked)."""
        return _ops_module().global_attention(
            q, k, v, causal=causal, scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
            sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip

    def local_attention(
        self,
        q: Any,
        k: Any,
        v: Any,
        *,
        window: Any,
        scale: float | None = None,
        softcap: float | None = None,
        bias: Any = None,
        mask: Any = None,
        kv_lengths: Any = None,
        q_lengths: Any = None,
        align: str = "bottom_right",
        return_lse: bool = False,
        sinks: Any = None,
        cu_seqlens_q: Any = None,
        cu_seqlens_k: Any = None,
    ) -> Any:
        """:func:`attnref.reference.local_attention` on tensors, in O(L x window)."""
        return _ops_module().local_attention(
            q, k, v, window=window, scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
            sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, flex=self.flex,
        )  # fmt: skip

    def chunked_attention(
        self,
        q: Any,
        k: Any,
        v: Any,
        *,
        chunk_size: int,
        causal: bool = False,
        scale: float | None = None,
        softcap: float | None = None,
        bias: Any = None,
        mask: Any = None,
        kv_lengths: Any = None,
        q_lengths: Any = None,
        align: str = "bottom_right",
        return_lse: bool = False,
        sinks: Any = None,
        cu_seqlens_q: Any = None,
        cu_seqlens_k: Any = None,
    ) -> Any:
        """:func:`attnref.reference.chunked_attention` on tensors, in O(L x chunk_size)."""
        return _ops_module().chunked_attention(
            q, k, v, chunk_size=chunk_size, causal=causal, scale=scale, softcap=softcap, bias=bias,
            mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
            sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
            flex=self.flex,
        )  # fmt: skip

    # -- gradients (the blocked path's own backward) ----------------------------
    def global_attention_vjp(
        self,
        q: Any,
        k: Any,
        v: Any,
        dout: Any,
        *,
        dlse: Any = None,
        causal: bool = False,
        scale: float | None = None,
        softcap: float | None = None,
        bias: Any = None,
        mask: Any = None,
        kv_lengths: Any = None,
        q_lengths: Any = None,
        align: str = "bottom_right",
        sinks: Any = None,
        cu_seqlens_q: Any = None,
        cu_seqlens_k: Any = None,
    ) -> tuple[Any, ...]:
        """:func:`attnref.reference.global_attention_vjp` on tensors: ``(dq, dk, dv[, dbias])``."""
        return _ops_module().attention_vjp(
            self.global_attention, q, k, v, dout, dlse=dlse, causal=causal,
            scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths, align=align,
            sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip

    def local_attention_vjp(
        self,
        q: Any,
        k: Any,
        v: Any,
        dout: Any,
        *,
        window: Any,
        dlse: Any = None,
        scale: float | None = None,
        softcap: float | None = None,
        bias: Any = None,
        mask: Any = None,
        kv_lengths: Any = None,
        q_lengths: Any = None,
        align: str = "bottom_right",
        sinks: Any = None,
        cu_seqlens_q: Any = None,
        cu_seqlens_k: Any = None,
    ) -> tuple[Any, ...]:
        """:func:`attnref.reference.local_attention_vjp` on tensors: ``(dq, dk, dv[, dbias])``."""
        return _ops_module().attention_vjp(
            self.local_attention, q, k, v, dout, dlse=dlse, window=window,
            scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths, align=align,
            sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip

    def chunked_attention_vjp(
        self,
        q: Any,
        k: Any,
        v: Any,
        dout: Any,
        *,
        chunk_size: int,
        causal: bool = False,
        dlse: Any = None,
        scale: float | None = None,
        softcap: float | None = None,
        bias: Any = None,
        mask: Any = None,
        kv_lengths: Any = None,
        q_lengths: Any = None,
        align: str = "bottom_right",
        sinks: Any = None,
        cu_seqlens_q: Any = None,
        cu_seqlens_k: Any = None,
    ) -> tuple[Any, ...]:
        """:func:`attnref.reference.chunked_attention_vjp` on tensors: ``(dq, dk, dv[, dbias])``."""
        return _ops_module().attention_vjp(
            self.chunked_attention, q, k, v, dout, dlse=dlse, chunk_size=chunk_size, causal=causal,
            scale=scale, softcap=softcap, bias=bias, mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths, align=align,
            sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip

    # -- merged partial states (contract section 10) -----------------------
    def merge_attention_states(self, outs: Any, lses: Any) -> tuple[Any, Any]:
        """:func:`attnref.reference.merge_attention_states` on tensors: ``(out, lse)``."""
        return _ops_module().merge_attention_states(outs, lses)

    # -- attention pooling ------------------------------------------------
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
    ) -> Any:
        """:func:`attnref.reference.additive_attention` on tensors."""
        return _ops_module().additive_attention(x, w_in, b_in, w_out, b_out, mask=mask, window=window, center=center)

    def luong_attention(
        self,
        h_t: Any,
        h_s: Any,
        *,
        score: str = "dot",
        w_a: Any = None,
        v_a: Any = None,
        mode: str = "global",
        half_width: int | None = None,
        w_p: Any = None,
        v_p: Any = None,
        source_lengths: Any = None,
    ) -> Any:
        """:func:`attnref.reference.luong_attention` on tensors."""
        return _ops_module().luong_attention(
            h_t, h_s, score=score, w_a=w_a, v_a=v_a, mode=mode, half_width=half_width,
            w_p=w_p, v_p=v_p, source_lengths=source_lengths,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"TorchBackend(device={self._device!r}, flex={self._flex!r})"
