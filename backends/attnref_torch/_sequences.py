"""Packed variable-length sequences and paged KV caches (contract sections 8 and 9):
each sequence alone through the dense paths.

Packed: sequence ``b`` is rows ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` of
``q (Tq, Hq, D)`` and ``cu_seqlens_k[b]:cu_seqlens_k[b + 1]`` of ``k``/``v``;
its ``(1, H, L_b, D)`` view (no copy, no padding to the longest sequence) runs
through the dense op with its own lengths and alignment, and the results are
written into one ``(Tq, Hq, ...)`` output. Autograd carries the gradients
through the views and the copies. A causal sequence aligned at its first row
goes straight to SDPA's ``is_causal`` when the inputs are finite and no lse,
softcap or gradient is asked for (:func:`by_sequence`): the dense op's general
paths cost 3.5x one SDPA call per sequence on issue 11's case (16 causal
sequences of 64..4096 tokens, H=8, D=64, fp32), as they pay for what only
non-finite inputs need.

Paged: a sequence whose query rows all see the same keys (a decoding step)
streams them from the cache in chunks of blocks (:mod:`attnref_torch._paged`);
any other sequence, or any with a gradient, gathers the
``ceil(cache_seqlens[b] / block_size)`` blocks its ``block_table`` row uses
(the rest of the row is never read), which is then dense attention over those
keys. At most one sequence's keys exist at a time; nothing the size of the
whole cache is ever built.

A sequence without keys gives output 0 and lse ``-inf`` (a sink joins
afterwards, :mod:`attnref_torch._sinks`); one without rows adds nothing.

The offsets, ``block_table`` and ``cache_seqlens`` are host data by contract
(validation holds NumPy copies of them): the Python loops read them and wait for
no device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from attnref.patterns import Pattern
from attnref.validation import AttentionArgs, PagedArgs
from attnref_torch._numerics import known_finite
from attnref_torch._paged import key_range, streamed_attention
from attnref_torch._sdpa import HAS_ENABLE_GQA

__all__ = ["by_sequence", "by_paged_sequence"]

NEG_INF = float("-inf")


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``(L, H, C)`` rows as a ``(1, H, L, C)`` view."""
    return x.transpose(0, 1)[None]


def _packed(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_dense`: ``(1, H, L, ...)`` as ``(L, H, ...)``."""
    return x[0].transpose(0, 1)


def _run(
    kernel: Callable[..., Any], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, one: AttentionArgs, return_lse: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out, lse)`` of one dense call (``lse`` None unless asked for); no key: :func:`_no_keys`."""
    if one.kv_len == 0:
        return _no_keys(q, one, return_lse)
    result = kernel(q, k, v, one, return_lse=return_lse)
    return result if return_lse else (result, None)


def _no_keys(q: torch.Tensor, one: AttentionArgs, return_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out, lse)`` of one sequence whose rows see no key: 0 and ``-inf`` (``lse`` None unless asked for)."""
    shape = (1, one.q_heads, one.q_len)
    return q.new_zeros((*shape, one.value_dim)), q.new_full(shape, NEG_INF) if return_lse else None


def _sequences(args: AttentionArgs) -> Iterator[tuple[slice, slice, AttentionArgs]]:
    """``(rows, keys, args)`` of every packed sequence with at least one row."""
    cq, ck = args.cu_seqlens_q.tolist(), args.cu_seqlens_k.tolist()  # host copies (see the module's docstring)
    for q0, q1, k0, k1 in zip(cq[:-1], cq[1:], ck[:-1], ck[1:], strict=True):
        if q1 > q0:
            one = replace(
                args, batch=1, q_len=q1 - q0, kv_len=k1 - k0, sinks=None, cu_seqlens_q=None, cu_seqlens_k=None
            )
            yield slice(q0, q1), slice(k0, k1), one


def is_causal_on(pattern: Pattern, args: AttentionArgs) -> bool:
    """Whether ``pattern`` on this one sequence allows exactly the keys ``j <= i`` to row ``i``
    (SDPA's ``is_causal``, which aligns top-left): offset 0 and, for every row, the key range
    ``[0, i + 1)``. A single row's :meth:`~attnref.patterns.Pattern.key_range` is exact and its
    bounds move with the row, so the first and the last row decide."""
    if int(args.offsets()[0]) != 0:
        return False
    last = args.q_len - 1
    return pattern.key_range(0, 0, args.kv_len) == (0, min(1, args.kv_len)) and pattern.key_range(
        last, last, args.kv_len
    ) == (0, min(last + 1, args.kv_len))


def _causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, one: AttentionArgs) -> torch.Tensor:
    """SDPA with ``is_causal=True`` on one sequence's strided ``(1, H, L, D)`` views (no copy)."""
    if one.group > 1 and not HAS_ENABLE_GQA:
        k, v = k.repeat_interleave(one.group, 1), v.repeat_interleave(one.group, 1)
    gqa = {"enable_gqa": True} if one.group > 1 and HAS_ENABLE_GQA else {}
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=one.scale, **gqa)


def by_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    args: AttentionArgs,
    kernel: Callable[..., Any],
    *,
    return_lse: bool,
    pattern: Pattern | None = None,
    grad: bool = True,
) -> Any:
    """``out (Tq, Hq, Dv)`` (and ``lse (Tq, Hq)``) of packed sequences, each
    ``kernel(q_b, k_b, v_b, args_b, return_lse=...)`` on its own ``(1, H, L_b, D)`` views.

    A sequence on which ``pattern`` is causal attention aligned at its first
    row (:func:`is_causal_on`) runs through SDPA's ``is_causal=True`` instead,
    when no lse, softcap or gradient is asked for and ``q``, ``k``, ``v`` are
    finite (:func:`~attnref_torch._numerics.known_finite`, one host read for the
    whole packed batch, on the CPU only). Then every row has an allowed key
    (``j = 0``) and every score is finite, so SDPA's masking, whether it adds
    ``-inf`` or fills it, is attnref's selection. The dense op's general paths
    would pay per sequence for what only non-finite inputs need.
    """
    fast = pattern is not None and not (return_lse or grad) and args.softcap is None and known_finite(q, k, v)
    out = q.new_empty((int(args.cu_seqlens_q[-1]), args.q_heads, args.value_dim))  # every row is written below
    lse = q.new_empty(out.shape[:-1]) if return_lse else None
    for rows, keys, one in _sequences(args):
        qb, kb, vb = _dense(q[rows]), _dense(k[keys]), _dense(v[keys])
        if fast and one.kv_len > 0 and is_causal_on(pattern, one):
            out[rows] = _packed(_causal_sdpa(qb, kb, vb, one))
            continue
        out_b, lse_b = _run(kernel, qb, kb, vb, one, return_lse)
        out[rows] = _packed(out_b)  # autograd records the copy into the slice
        if lse is not None:
            lse[rows] = _packed(lse_b)
    return (out, lse) if return_lse else out


def by_paged_sequence(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    paged: PagedArgs,
    kernel: Callable[..., Any],
    *,
    return_lse: bool,
    grad: bool = True,
) -> Any:
    """``out (B, Hq, Lq, Dv)`` (and ``lse (B, Hq, Lq)``) of each sequence over its cache blocks.

    Without a gradient, a sequence whose rows all see the same keys streams them
    from the cache (:func:`attnref_torch._paged.streamed_attention`); otherwise
    ``kernel`` runs on the keys and values of the blocks it uses, gathered for that
    sequence alone (and cast to ``q``'s dtype, which the caller may have raised:
    the cache itself is never copied).
    """
    a = paged.attention
    table = torch.as_tensor(paged.block_table, device=q.device)  # validation's host copy, uploaded once
    used = paged.used_blocks().tolist()
    out = q.new_empty((a.batch, a.q_heads, a.q_len, a.value_dim))  # every sequence is written below
    lse = q.new_empty(out.shape[:-1]) if return_lse else None
    for b, length in enumerate(paged.cache_seqlens.tolist()):
        one = replace(a, batch=1, kv_len=length, kv_lengths=None, sinks=None)
        keys = None if grad else key_range(paged.pattern, one)
        if keys is not None and keys[0] >= keys[1]:
            out_b, lse_b = _no_keys(q, one, return_lse)
        elif keys is not None:
            out_b, lse_b = streamed_attention(q[b : b + 1], k_cache, v_cache, table[b], keys, one)
        else:
            blocks = table[b, : used[b]]  # entries past the last used block are never read
            k = k_cache.index_select(0, blocks).flatten(0, 1)[:length].to(q.dtype)  # (length, Hkv, D), q's dtype
            v = v_cache.index_select(0, blocks).flatten(0, 1)[:length].to(q.dtype)
            out_b, lse_b = _run(kernel, q[b : b + 1], _dense(k), _dense(v), one, return_lse)
        out[b] = out_b[0]  # autograd records the copy into the slice
        if lse is not None:
            lse[b] = lse_b[0]
    return (out, lse) if return_lse else out
