"""Packed variable-length sequences and paged KV caches (contract sections 8 and 9):
each sequence alone through the dense paths.

Packed: sequence ``b`` is rows ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` of
``q (Tq, Hq, D)`` and ``cu_seqlens_k[b]:cu_seqlens_k[b + 1]`` of ``k``/``v``;
its ``(1, H, L_b, D)`` view (no copy, no padding to the longest sequence) runs
through the dense op with its own lengths and alignment, and the results are
concatenated back into ``(Tq, Hq, ...)``. Autograd carries the gradients
through the views and the concatenation.

Paged: sequence ``b`` gathers the ``ceil(cache_seqlens[b] / block_size)``
blocks its ``block_table`` row uses (the rest of the row is never read), which
is then dense attention over those keys. One sequence's keys exist at a time;
nothing the size of the whole cache is ever built.

A sequence without keys gives output 0 and lse ``-inf`` (a sink joins
afterwards, :mod:`attnref_torch._sinks`); one without rows adds nothing.

Known gap (speed): the gather is a copy of each sequence's keys and values,
about as much memory traffic as the attention that reads them: decode with
B=16, Hq=32, Hkv=8, D=64, block 16, cache lengths 1k..8k took 1.95x the time of
SDPA run per sequence on keys gathered beforehand (fp32, loaded 2-core CPU;
issue 11's target is 1.2x). Reading the blocks in place needs a kernel that
takes a block table, which torch's CPU SDPA does not.

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
    """``(out, lse)`` of one dense call (``lse`` None unless asked for); no key: 0 and ``-inf``."""
    if one.kv_len == 0:
        shape = (1, one.q_heads, one.q_len)
        return q.new_zeros((*shape, one.value_dim)), q.new_full(shape, NEG_INF) if return_lse else None
    result = kernel(q, k, v, one, return_lse=return_lse)
    return result if return_lse else (result, None)


def _joined(outs: list, lses: list, empty_out: tuple[int, ...], like: torch.Tensor, return_lse: bool) -> Any:
    """The pieces concatenated along axis 0 (``empty_out``'s shape when there is none)."""
    if not outs:
        out = like.new_zeros(empty_out)
        return (out, like.new_zeros(empty_out[:-1])) if return_lse else out
    out = torch.cat(outs)
    return (out, torch.cat(lses)) if return_lse else out


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
) -> Any:
    """``out (B, Hq, Lq, Dv)`` (and ``lse (B, Hq, Lq)``): ``kernel`` per sequence on the
    keys and values of the cache blocks it uses, gathered for that sequence alone (and cast to
    ``q``'s dtype, which the caller may have raised: the cache itself is never copied)."""
    a = paged.attention
    table = torch.as_tensor(paged.block_table, device=q.device)  # validation's host copy, uploaded once
    used = paged.used_blocks().tolist()
    outs, lses = [], []
    for b, length in enumerate(paged.cache_seqlens.tolist()):
        blocks = table[b, : used[b]]  # entries past the last used block are never read
        k = k_cache.index_select(0, blocks).flatten(0, 1)[:length].to(q.dtype)  # (length, Hkv, D), q's dtype
        v = v_cache.index_select(0, blocks).flatten(0, 1)[:length].to(q.dtype)
        one = replace(a, batch=1, kv_len=length, kv_lengths=None, sinks=None)
        out, lse = _run(kernel, q[b : b + 1], _dense(k), _dense(v), one, return_lse)
        outs.append(out)
        lses.append(lse)
    return _joined(outs, lses, (0, a.q_heads, a.q_len, a.value_dim), q, return_lse)
