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

from attnref.backend import OPS
from attnref.patterns import Pattern
from attnref.validation import (
    AttentionArgs,
    check_attention,
    check_merge,
    check_paged,
    check_upstream_gradient,
    chunk_pattern,
    full_pattern,
    host_array,
    window_pattern,
)
from attnref_blocked import packed, paged, pooling
from attnref_blocked.backward import attend_vjp
from attnref_blocked.forward import attend
from attnref_blocked.plan import BlockConfig

__all__ = ["ArrayBackend", "native"]


def native(xp: Any, argument: str, value: Any) -> Any:
    """``value`` as an array of ``xp`` (None stays None).

    A PyTorch tensor is taken as data (:func:`attnref.validation.host_array`:
    detached if it requires grad, copied from its device; a meta-device or
    sparse tensor is an error naming ``argument``).
    """
    if value is None:
        return None
    if type(value).__module__.startswith("torch"):
        value = host_array(argument, value)
    return xp.asarray(value)


def _upstream(xp: Any, argument: str, value: Any, shape: tuple[int, ...]) -> Any:
    """An upstream gradient (``dout``, ``dlse``), checked as the reference checks it."""
    array = native(xp, argument, value)
    check_upstream_gradient(argument, array, shape)
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
        q_lengths: Any = None, align: str = "bottom_right", return_lse: bool = False, sinks: Any = None,
        cu_seqlens_q: Any = None, cu_seqlens_k: Any = None,
    ) -> Any:  # fmt: skip
        """Global attention (see :func:`attnref.reference.global_attention`)."""
        return self._forward(
            q, k, v, full_pattern(causal), scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse, sinks=sinks,
            cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip

    def local_attention(
        self, q: Any, k: Any, v: Any, *, window: Any, scale: float | None = None,
        softcap: float | None = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None,
        q_lengths: Any = None, align: str = "bottom_right", return_lse: bool = False, sinks: Any = None,
        cu_seqlens_q: Any = None, cu_seqlens_k: Any = None,
    ) -> Any:  # fmt: skip
        """Sliding-window attention (see :func:`attnref.reference.local_attention`)."""
        return self._forward(
            q, k, v, window_pattern(window), scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse, sinks=sinks,
            cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip

    def chunked_attention(
        self, q: Any, k: Any, v: Any, *, chunk_size: int, causal: bool = False, scale: float | None = None,
        softcap: float | None = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None,
        q_lengths: Any = None, align: str = "bottom_right", return_lse: bool = False, sinks: Any = None,
        cu_seqlens_q: Any = None, cu_seqlens_k: Any = None,
    ) -> Any:  # fmt: skip
        """Chunked attention (see :func:`attnref.reference.chunked_attention`)."""
        return self._forward(
            q, k, v, chunk_pattern(chunk_size, causal), scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse, sinks=sinks,
            cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip

    # -- their gradients -----------------------------------------------------
    def global_attention_vjp(
        self, q: Any, k: Any, v: Any, dout: Any, *, dlse: Any = None, causal: Any = False, scale: Any = None,
        softcap: Any = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None, q_lengths: Any = None,
        align: Any = "bottom_right", sinks: Any = None, cu_seqlens_q: Any = None, cu_seqlens_k: Any = None,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Gradients of global attention (see :func:`attnref.reference.global_attention_vjp`)."""
        return self._backward(
            q, k, v, dout, full_pattern(causal), dlse=dlse, scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, sinks=sinks, cu_seqlens_q=cu_seqlens_q,
            cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip

    def local_attention_vjp(
        self, q: Any, k: Any, v: Any, dout: Any, *, window: Any, dlse: Any = None, scale: Any = None,
        softcap: Any = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None, q_lengths: Any = None,
        align: Any = "bottom_right", sinks: Any = None, cu_seqlens_q: Any = None, cu_seqlens_k: Any = None,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Gradients of sliding-window attention (see :func:`attnref.reference.local_attention_vjp`)."""
        return self._backward(
            q, k, v, dout, window_pattern(window), dlse=dlse, scale=scale, softcap=softcap, bias=bias, mask=mask,
            kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, sinks=sinks, cu_seqlens_q=cu_seqlens_q,
            cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip

    def chunked_attention_vjp(
        self, q: Any, k: Any, v: Any, dout: Any, *, chunk_size: Any, causal: Any = False, dlse: Any = None,
        scale: Any = None, softcap: Any = None, bias: Any = None, mask: Any = None, kv_lengths: Any = None,
        q_lengths: Any = None, align: Any = "bottom_right", sinks: Any = None, cu_seqlens_q: Any = None,
        cu_seqlens_k: Any = None,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Gradients of chunked attention (see :func:`attnref.reference.chunked_attention_vjp`)."""
        return self._backward(
            q, k, v, dout, chunk_pattern(chunk_size, causal), dlse=dlse, scale=scale, softcap=softcap, bias=bias,
            mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, sinks=sinks,
            cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        )  # fmt: skip

    # -- the shared steps ----------------------------------------------------
    def _validate(self, q: Any, k: Any, v: Any, bias: Any, mask: Any, **options: Any) -> tuple:
        """Native arrays and the parsed arguments (as the reference parses them)."""
        xp = self.namespace()
        named = {"q": q, "k": k, "v": v, "bias": bias, "mask": mask}
        q, k, v, bias, mask = (native(xp, name, a) for name, a in named.items())
        args = check_attention(q, k, v, bias=bias, mask=mask, **options)
        return xp, q, k, v, bias, mask, args

    def _forward(
        self, q: Any, k: Any, v: Any, pattern: Pattern, *, bias: Any, mask: Any, return_lse: Any, sinks: Any,
        **options: Any,
    ) -> Any:  # fmt: skip
        xp, q, k, v, bias, mask, args = self._validate(
            q, k, v, bias, mask, return_lse=return_lse, sinks=sinks, **options
        )  # fmt: skip
        config = self.block_config(args)

        def kernel(q: Any, k: Any, v: Any, args: AttentionArgs, pattern: Pattern) -> tuple[Any, Any]:
            return attend(xp, q, k, v, pattern, args, bias=bias, mask=mask, return_lse=True, config=config)

        out, lse = self._run(lambda: packed.by_sequence(xp, q, k, v, args, kernel, pattern), config)
        return (out, lse) if return_lse else out

    def _backward(
        self, q: Any, k: Any, v: Any, dout: Any, pattern: Pattern, *, dlse: Any, bias: Any, mask: Any,
        sinks: Any, **options: Any,
    ) -> tuple[Any, ...]:  # fmt: skip
        xp, q, k, v, bias, mask, args = self._validate(q, k, v, bias, mask, sinks=sinks, **options)
        rows = (*q.shape[:-1],)
        dout = _upstream(xp, "dout", dout, (*rows, args.value_dim))
        dlse = None if dlse is None else _upstream(xp, "dlse", dlse, rows)
        sinks = native(xp, "sinks", sinks)
        config = self.block_config(args)

        def kernel(q: Any, k: Any, v: Any, dout: Any, dlse: Any, args: AttentionArgs) -> tuple[Any, ...]:
            return attend_vjp(
                xp, q, k, v, dout, pattern, args, dlse=dlse, bias=bias, mask=mask, sinks=sinks, config=config
            )

        return self._run(lambda: packed.vjp_by_sequence(xp, q, k, v, dout, dlse, sinks, args, kernel), config)

    # -- paged KV cache, merged states -------------------------------------------
    def paged_attention(
        self, q: Any, k_cache: Any, v_cache: Any, *, block_table: Any, cache_seqlens: Any, causal: bool = False,
        window: Any = None, scale: float | None = None, softcap: float | None = None, sinks: Any = None,
        align: str = "bottom_right", return_lse: bool = False,
    ) -> Any:  # fmt: skip
        """Attention over a paged KV cache (see :func:`attnref.reference.paged_attention`)."""
        xp = self.namespace()
        named = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "sinks": sinks}
        q, k_cache, v_cache, sinks = (native(xp, name, a) for name, a in named.items())
        paged_args = check_paged(
            q, k_cache, v_cache, block_table=block_table, cache_seqlens=cache_seqlens, causal=causal,
            window=window, scale=scale, softcap=softcap, sinks=sinks, align=align, return_lse=return_lse,
        )  # fmt: skip
        config = self.block_config(paged_args.attention)

        def kernel(q: Any, k: Any, v: Any, args: AttentionArgs) -> tuple[Any, Any]:
            return attend(xp, q, k, v, paged_args.pattern, args, bias=None, mask=None, return_lse=True, config=config)

        out, lse = self._run(lambda: paged.paged_attention(xp, q, k_cache, v_cache, paged_args, kernel, config), config)
        return (out, lse) if return_lse else out

    def merge_attention_states(self, outs: Any, lses: Any) -> tuple[Any, Any]:
        """Merge partial attention states (see :func:`attnref.reference.merge_attention_states`)."""
        xp = self.namespace()
        outs, lses = native(xp, "outs", outs), native(xp, "lses", lses)
        return paged.merge_states(xp, outs, lses, check_merge(outs, lses))

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
            w_p=w_p, v_p=v_p, source_lengths=source_lengths,
        )  # fmt: skip
