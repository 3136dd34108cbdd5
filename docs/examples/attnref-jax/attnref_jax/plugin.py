"""The ``jax`` backend: attnref's multi-head ops on ``jax.nn.dot_product_attention``.

What it takes to wrap a real library whose conventions differ from attnref's:

* **Layout.** JAX wants ``(B, L, H, D)``; attnref passes ``(B, H, L, D)``. The
  backend swaps axes on the way in and out (a view, no copy).
* **Alignment.** JAX's ``is_causal`` and ``local_window_size`` are top-left
  (query ``i`` sits on key ``i``), and its ``key_value_seq_lengths`` only pad:
  they add no per-batch offset. The backend uses JAX's own arguments only when
  every batch's alignment offset is 0 and the window is bounded on both sides;
  otherwise it hands JAX the pattern as a boolean mask, the call's allowed keys
  (:meth:`attnref.validation.AttentionArgs.allowed`).
* **Rows with no allowed key.** JAX fills masked logits with a large finite
  negative number, so such a row returns the mean of ``V`` and an lse near
  ``-2.4e38``. attnref defines them as ``out = 0`` and ``lse = -inf``; the
  backend selects those values for exactly those rows.
* **What JAX lacks** is declared, never faked: logit soft-capping, a value head
  size other than the query's, sink logits and packed sequences raise
  :class:`attnref.UnsupportedError`. The real mismatches that remain (a NaN in a
  value hidden by the pattern leaks, because JAX multiplies by the zero weights;
  a row whose allowed keys all carry a ``-inf`` bias gets a finite lse; the
  softmax runs in float32 for float64 inputs) are listed in ``xfails.txt``.

``float64`` needs JAX's 64-bit mode; the backend turns it on only around its own
calls (``jax.enable_x64``), never for the whole process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

import numpy as np

import attnref
from attnref.patterns import Pattern
from attnref.validation import AttentionArgs, check_attention, chunk_pattern, full_pattern, window_pattern
from attnref_jax import __version__

__all__ = ["JaxBackend", "attnref_backends"]


class JaxBackend:
    """attnref's global, local and chunked attention computed by ``jax.nn.dot_product_attention``."""

    name = "jax"
    ops = frozenset({"global_attention", "local_attention", "chunked_attention"})
    dtypes = frozenset({"bfloat16", "float16", "float32", "float64"})

    @property
    def version(self) -> str:
        """This package's version and JAX's (read from the metadata: JAX is not imported)."""
        try:
            return f"{__version__} (jax {importlib.metadata.version('jax')})"
        except importlib.metadata.PackageNotFoundError:
            return __version__

    @property
    def unavailable_reason(self) -> str | None:
        """``None`` when JAX is installed (checked without importing it)."""
        return None if importlib.util.find_spec("jax") is not None else "jax is not installed (pip install jax)"

    def asarray(self, array: Any) -> Any:
        """A JAX array on the default device, dtype kept (float64 included)."""
        import jax

        with jax.enable_x64(np.asarray(array).dtype == np.float64):
            return jax.numpy.asarray(array)

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
    """Validate with attnref, translate the pattern, call JAX, give empty rows attnref's values."""
    import jax
    import jax.numpy as jnp

    args = check_attention(
        q, k, v, scale=scale, softcap=softcap, bias=bias, mask=mask,
        kv_lengths=kv_lengths, q_lengths=q_lengths, align=align, return_lse=return_lse,
        sinks=sinks, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
    )  # fmt: skip
    _decline_what_jax_lacks(args)
    allowed = args.allowed(pattern, mask)  # (B, 1 or Hq, Lq, Lk): attnref's rule, lengths and mask
    native = _native_pattern(args, pattern)
    with jax.enable_x64(q.dtype == jnp.float64):
        out, lse = jax.nn.dot_product_attention(
            jnp.swapaxes(q, 1, 2),  # (B, H, L, D) -> JAX's (B, L, H, D)
            jnp.swapaxes(k, 1, 2),
            jnp.swapaxes(v, 1, 2),
            bias=None if bias is None else _four_dims(jnp.asarray(bias, dtype=q.dtype)),
            mask=None if native is not None and mask is None else jnp.asarray(allowed),
            scale=args.scale,
            query_seq_lengths=_lengths(args.q_lengths),
            key_value_seq_lengths=_lengths(args.kv_lengths),
            return_residual=True,
            **(native or {}),
        )
        empty = jnp.asarray(~allowed.any(axis=-1))  # (B, Hq or 1, Lq): rows with no allowed key
        out = jnp.where(empty[..., None], 0, jnp.swapaxes(out, 1, 2)).astype(q.dtype)
        if not return_lse:
            return out
        lse = jnp.where(empty, -jnp.inf, jnp.swapaxes(lse, 1, 2))  # JAX's residual is (B, Lq, Hq)
        return out, lse.astype(jnp.promote_types(lse.dtype, q.dtype))


def _decline_what_jax_lacks(args: AttentionArgs) -> None:
    """Raise :class:`attnref.UnsupportedError` for a valid input that JAX has no argument for."""
    if args.softcap is not None:
        raise attnref.UnsupportedError("softcap", "jax.nn.dot_product_attention has no logit soft-capping")
    if args.value_dim != args.head_dim:
        raise attnref.UnsupportedError("value_dim", "jax.nn.dot_product_attention needs v's head size equal to q's")
    if args.sinks is not None:
        raise attnref.UnsupportedError("sinks", "jax.nn.dot_product_attention has no sink logits")
    if args.packed:
        raise attnref.UnsupportedError("cu_seqlens_q", "jax.nn.dot_product_attention takes no packed sequences")


def _native_pattern(args: AttentionArgs, pattern: Pattern) -> dict[str, Any] | None:
    """JAX's own keyword arguments for ``pattern``, or ``None`` when JAX cannot say it.

    JAX aligns top-left, so its arguments mean attnref's pattern only when every
    batch's offset is 0; it has no spelling for an unbounded window side (its
    ``-1`` allows nothing) and no chunks.
    """
    if np.any(args.offsets() != 0):
        return None
    if pattern.kind == "global":
        return {}
    if pattern.kind == "causal":
        return {"is_causal": True}
    if pattern.kind == "window" and pattern.left is not None and pattern.right is not None:
        reach = max(args.q_len, args.kv_len)  # a side past the sequence acts as unbounded: keep it small
        return {"local_window_size": (min(pattern.left, reach), min(pattern.right, reach))}
    return None


def _four_dims(array: Any) -> Any:
    """``array`` with leading axes of size 1 up to rank 4 (JAX wants a 4-D bias)."""
    return array.reshape((1,) * (4 - array.ndim) + tuple(array.shape))


def _lengths(lengths: np.ndarray | None) -> Any:
    import jax.numpy as jnp

    return None if lengths is None else jnp.asarray(lengths, dtype=jnp.int32)


@attnref.hookimpl
def attnref_backends():
    """The backends this plugin provides: one, named ``jax``."""
    return [JaxBackend()]
