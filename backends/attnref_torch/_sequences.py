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

from attnref.validation import AttentionArgs, PagedArgs

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


def by_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    args: AttentionArgs,
    kernel: Callable[..., Any],
    *,
    return_lse: bool,
) -> Any:
    """``out (Tq, Hq, Dv)`` (and ``lse (Tq, Hq)``) of packed sequences, each
    ``kernel(q_b, k_b, v_b, args_b, return_lse=...)`` on its own ``(1, H, L_b, D)`` views."""
    outs, lses = [], []
    for rows, keys, one in _sequences(args):
        out, lse = _run(kernel, _dense(q[rows]), _dense(k[keys]), _dense(v[keys]), one, return_lse)
        outs.append(_packed(out))
        lses.append(None if lse is None else _packed(lse))
    return _joined(outs, lses, (0, args.q_heads, args.value_dim), q, return_lse)


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
