"""The op methods of a backend built on a NumPy-like namespace, written once.

:class:`ArrayBackend` validates each call with :mod:`attnref.validation` (so
it rejects exactly what the reference rejects, with the same errors), then runs
the blocked forward (:mod:`attnref_blocked.forward`), the blocked backward
(:mod:`attnref_blocked.backward`) or the pooling code
(:mod:`attnref_blocked.pooling`). ``attnref_numpy`` binds ``xp = numpy`` and
threads; ``attnref_cupy`` binds ``xp = cupy``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from attnref.backend import OPS
from attnref.dtypes import DTYPE_NAMES, name_of_array
from attnref.errors import invalid_type, invalid_value
from attnref.patterns import Pattern
from attnref.validation import AttentionArgs, check_attention, chunk_pattern, full_pattern, window_pattern
from attnref_blocked import pooling
from attnref_blocked.backward import attend_vjp
from attnref_blocked.forward import attend
from attnref_blocked.plan import BlockConfig

__all__ = ["ArrayBackend", "native"]


def native(xp: Any, argument: str, value: Any) -> Any:
    """``value`` as an array of ``xp`` (None stays None).

    A PyTorch tensor is taken as data: detached if it requires grad (the
    gradient of a NumPy or CuPy computation is not tracked) and copied from its
    device when ``xp`` cannot read it there. A tensor without data (the meta
    device) or a sparse one is an error naming ``argument``.
    """
    if value is None:
        return None
    if hasattr(value, "detach") and hasattr(value, "device"):  # a torch tensor, without importing torch
        value = _tensor_data(xp, argument, value)
    return xp.asarray(value)


def _tensor_data(xp: Any, argument: str, tensor: Any) -> Any:
    if tensor.device.type == "meta":
        raise invalid_value(argument, "a tensor on the meta device (it holds no values)", "an array with values")
    if str(tensor.layout) != "torch.strided":
        raise invalid_type(argument, f"a {tensor.layout} tensor", "a dense (strided) array")
    tensor = tensor.detach()
    if xp is not np and tensor.device.type == "cuda":
        return tensor  # CuPy reads it in place (__cuda_array_interface__)
    tensor = tensor.cpu()
    if str(tensor.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: reinterpret the bits
        import ml_dtypes

        return tensor.view(dtype=_int16(tensor)).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _int16(tensor: Any) -> Any:
    """torch.int16, found through the tensor's module (torch is never imported here)."""
    import sys

    return sys.modules[type(tensor).__module__.split(".")[0]].int16


def _upstream(xp: Any, argument: str, value: Any, shape: tuple[int, ...]) -> Any:
    """An upstream gradient (``dout``, ``dlse``): a floating array of exactly ``shape``."""
    array = native(xp, argument, value)
    name = name_of_array(array)
    if name not in DTYPE_NAMES:
        raise invalid_type(argument, f"dtype {name}", "a floating dtype: " + ", ".join(DTYPE_NAMES))
    if tuple(array.shape) != shape:
        raise invalid_value(argument, f"shape {tuple(array.shape)}", f"shape {shape}, the shape of the forward output")
    return array


class ArrayBackend:
    """The op methods of a backend built on a NumPy-like namespace.

    Subclasses set ``name``, ``version``, ``dtypes`` and ``unavailable_reason``
    and implement :meth:`namespace` (the array module) and :meth:`block_config`.
    Arrays come in and go out in the subclass's native type; outputs have the
    dtype of the inputs. ``ops`` lists every method named in
    :data:`attnref.backend.OPS`.
    """

    @property
    def ops(self) -> frozenset[str]:
        return frozenset(name for name in OPS if callable(getattr(self, name, None)))

    def namespace(self) -> Any:
        """The array module (``numpy``, ``cupy``)."""
        raise NotImplementedError

    def block_config(self, args: AttentionArgs) -> BlockConfig:
        """How to cut one multi-head call into blocks (may depend on its size)."""
        return BlockConfig()

    def _run(self, kernel: Callable[[], Any], config: BlockConfig) -> Any:
        """Run one multi-head kernel call (a subclass may wrap it, e.g. in a library setting)."""
        return kernel()

    # -- multi-head ops ----------------------------------------------------
    def global_attention(
        self, q: Any, k: Any, v: Any, *, causal: bool = False, scale: float | None = None,
        softcap: float | None = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None,
        q_lengths: Any = None, align: str = "bottom_right", return_lse: bool = False,
    ) -> Any:  # fmt: skip
        """Global attention (see :func:`attnref.reference.global_attention`)."""
        return self._forward(
            q, k, v, full_pattern(causal), scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
        )  # fmt: skip

    def local_attention(
        self, q: Any, k: Any, v: Any, *, window: Any, scale: float | None = None,
        softcap: float | None = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None,
        q_lengths: Any = None, align: str = "bottom_right", return_lse: bool = False,
    ) -> Any:  # fmt: skip
        """Sliding-window attention (see :func:`attnref.reference.local_attention`)."""
        return self._forward(
            q, k, v, window_pattern(window), scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
        )  # fmt: skip

    def chunked_attention(
        self, q: Any, k: Any, v: Any, *, chunk_size: int, causal: bool = False, scale: float | None = None,
        softcap: float | None = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None,
        q_lengths: Any = None, align: str = "bottom_right", return_lse: bool = False,
    ) -> Any:  # fmt: skip
        """Chunked attention (see :func:`attnref.reference.chunked_attention`)."""
        return self._forward(
            q, k, v, chunk_pattern(chunk_size, causal), scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
        )  # fmt: skip

    # -- their gradients -----------------------------------------------------
    def global_attention_vjp(
        self, q: Any, k: Any, v: Any, dout: Any, *, dlse: Any = None, causal: bool = False,
        scale: float | None = None, softcap: float | None = None, bias: Any = None, mask: Any = None,
        kv_lengths: Any = None, q_lengths: Any = None, align: str = "bottom_right",
    ) -> tuple[Any, ...]:  # fmt: skip
        """Gradients of global attention (see :func:`attnref.reference.global_attention_vjp`)."""
        return self._backward(
            q, k, v, dout, full_pattern(causal), dlse=dlse, scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align,
        )  # fmt: skip

    def local_attention_vjp(
        self, q: Any, k: Any, v: Any, dout: Any, *, dlse: Any = None, window: Any,
        scale: float | None = None, softcap: float | None = None, bias: Any = None, mask: Any = None,
        kv_lengths: Any = None, q_lengths: Any = None, align: str = "bottom_right",
    ) -> tuple[Any, ...]:  # fmt: skip
        """Gradients of sliding-window attention (see :func:`attnref.reference.local_attention_vjp`)."""
        return self._backward(
            q, k, v, dout, window_pattern(window), dlse=dlse, scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align,
        )  # fmt: skip

    def chunked_attention_vjp(
        self, q: Any, k: Any, v: Any, dout: Any, *, dlse: Any = None, chunk_size: int, causal: bool = False,
        scale: float | None = None, softcap: float | None = None, bias: Any = None, mask: Any = None,
        kv_lengths: Any = None, q_lengths: Any = None, align: str = "bottom_right",
    ) -> tuple[Any, ...]:  # fmt: skip
        """Gradients of chunked attention (see :func:`attnref.reference.chunked_attention_vjp`)."""
        return self._backward(
            q, k, v, dout, chunk_pattern(chunk_size, causal), dlse=dlse, scale=scale, softcap=softcap, bias=bias,
            mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths, align=align,
        )  # fmt: skip

    # -- the shared steps ----------------------------------------------------
    def _validate(self, q: Any, k: Any, v: Any, bias: Any, mask: Any, lengths: dict, **options: Any) -> tuple:
        """Native arrays and the parsed arguments (host lengths converted first: a tensor
        without data is an error naming its argument)."""
        xp = self.namespace()
        named = {"q": q, "k": k, "v": v, "bias": bias, "mask": mask}
        q, k, v, bias, mask = (native(xp, name, a) for name, a in named.items())
        lengths = {name: _host_lengths(name, value) for name, value in lengths.items()}
        args = check_attention(q, k, v, bias=bias, mask=mask, **lengths, **options)
        return xp, q, k, v, bias, mask, args

    def _forward(
        self, q: Any, k: Any, v: Any, pattern: Pattern, *, bias: Any, mask: Any, kv_lengths: Any, q_lengths: Any,
        return_lse: Any, **options: Any,
    ) -> Any:  # fmt: skip
        xp, q, k, v, bias, mask, args = self._validate(
            q, k, v, bias, mask, {"kv_lengths": kv_lengths, "q_lengths": q_lengths}, return_lse=return_lse, **options
        )
        config = self.block_config(args)
        return self._run(
            lambda: attend(xp, q, k, v, pattern, args, bias=bias, mask=mask, return_lse=bool(return_lse),
                           config=config),
            config,
        )  # fmt: skip

    def _backward(
        self, q: Any, k: Any, v: Any, dout: Any, pattern: Pattern, *, dlse: Any, bias: Any, mask: Any,
        kv_lengths: Any, q_lengths: Any, **options: Any,
    ) -> tuple[Any, ...]:  # fmt: skip
        xp, q, k, v, bias, mask, args = self._validate(
            q, k, v, bias, mask, {"kv_lengths": kv_lengths, "q_lengths": q_lengths}, **options
        )
        rows = (args.batch, args.q_heads, args.q_len)
        dout = _upstream(xp, "dout", dout, (*rows, args.value_dim))
        dlse = None if dlse is None else _upstream(xp, "dlse", dlse, rows)
        config = self.block_config(args)
        return self._run(
            lambda: attend_vjp(xp, q, k, v, dout, pattern, args, dlse=dlse, bias=bias, mask=mask, config=config),
            config,
        )

    # -- pooling ops -------------------------------------------------------
    def additive_attention(
        self, x: Any, w_in: Any, b_in: Any, w_out: Any, b_out: Any = None, *, mask: Any = None,
        window: Any = None, center: Any = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        """Additive attention pooling (see :func:`attnref.reference.additive_attention`)."""
        xp = self.namespace()
        named = {"x": x, "w_in": w_in, "b_in": b_in, "w_out": w_out, "mask": mask}
        x, w_in, b_in, w_out, mask = (native(xp, name, a) for name, a in named.items())
        return pooling.additive_attention(xp, x, w_in, b_in, w_out, b_out, mask=mask, window=window, center=center)

    def luong_attention(
        self, h_t: Any, h_s: Any, *, score: str = "dot", w_a: Any = None, v_a: Any = None, mode: str = "global",
        half_width: int | None = None, w_p: Any = None, v_p: Any = None, source_lengths: Any = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        """Luong attention (see :func:`attnref.reference.luong_attention`)."""
        xp = self.namespace()
        named = {"h_t": h_t, "h_s": h_s, "w_a": w_a, "v_a": v_a, "w_p": w_p, "v_p": v_p}
        h_t, h_s, w_a, v_a, w_p, v_p = (native(xp, name, a) for name, a in named.items())
        return pooling.luong_attention(
            xp, h_t, h_s, score=score, w_a=w_a, v_a=v_a, mode=mode, half_width=half_width,
            w_p=w_p, v_p=v_p, source_lengths=_host_lengths("source_lengths", source_lengths),
        )  # fmt: skip


def _host_lengths(argument: str, value: Any) -> Any:
    """Integer lengths as given, except a PyTorch tensor, taken to the host as data first."""
    if value is not None and hasattr(value, "detach") and hasattr(value, "device"):
        return _tensor_data(np, argument, value)
    return value
