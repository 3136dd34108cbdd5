"""The baselines: what a user reaches for today to compute the same multi-head cases.

``baseline-sdpa``
    ``torch.nn.functional.scaled_dot_product_attention``: no mask for global,
    ``is_causal=True`` for causal, a dense ``(L, L)`` boolean mask built once
    from the pattern for local and chunked attention.
``baseline-flex``
    ``torch.compile(flex_attention)`` with a ``BlockMask`` for local and chunked
    attention. The block mask is built directly from the pattern's block plan
    (:meth:`~attnref.patterns.Pattern.plan_blocks`) with
    ``BlockMask.from_kv_blocks``: ``create_block_mask`` evaluates the mask on the
    whole ``L x L`` grid (11.5 GiB and 25 s at L=32768 on this machine). The
    compilation happens in the benchmark's set-up and is never timed; it is
    cached per process and, by torch, on disk.
``baseline-naive``
    NumPy: the full score matrix, the dense mask applied with ``copyto``, an
    in-place softmax, two matmuls. Only where the ``(B, H, L, L)`` scores fit
    in :data:`NAIVE_MAX_SCORE_BYTES`.

All of them take the case's pattern from :class:`attnref.patterns.Pattern`,
the rule the ops use, so they compute exactly the op's pattern (the smoke run
checks them against the reference). :func:`prepare_forward_backward` is the
same SDPA and FlexAttention calls under ``torch.autograd``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .common import FLEX, NAIVE, SDPA, MultiheadCase, Prepared, torch

__all__ = [
    "prepare",
    "prepare_forward_backward",
    "flex_block_mask",
    "torch_device",
    "torch_tensor",
    "torch_to_numpy",
    "torch_finish",
    "NAIVE_MAX_SCORE_BYTES",
    "FLEX_BLOCK",
]

#: The naive baseline runs only where its score matrix takes at most this many bytes.
NAIVE_MAX_SCORE_BYTES = 2 * 2**30
#: FlexAttention's default block size (queries and keys).
FLEX_BLOCK = 128


def prepare(impl: str, case: MultiheadCase, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> Prepared:
    """A baseline ready to run ``case`` on these inputs (``NotImplementedError`` where it cannot)."""
    if impl == NAIVE:
        return _naive(case, q, k, v)
    if torch is None:
        raise NotImplementedError("torch is not installed")
    if impl == SDPA:
        return _sdpa(case, q, k, v)
    if impl == FLEX:
        return _flex(case, q, k, v)
    raise ValueError(f"impl: expected one of the baselines, got {impl!r}")


# -- NumPy ---------------------------------------------------------------------------------------


def _naive(case: MultiheadCase, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> Prepared:
    if q.dtype not in (np.float32, np.float64):
        raise NotImplementedError(f"the naive NumPy baseline runs float32 and float64, not {q.dtype}")
    batch, heads, length, dim = q.shape
    if batch * heads * length * length * q.itemsize > NAIVE_MAX_SCORE_BYTES:
        raise NotImplementedError(f"the naive baseline's scores would exceed {NAIVE_MAX_SCORE_BYTES} bytes")
    scale = q.dtype.type(1 / math.sqrt(dim))
    # The disallowed keys; broadcast over batch and heads. None for global attention.
    blocked = None if case.pattern.kind == "global" else ~case.pattern.dense(length, length)
    k_t = np.swapaxes(k, -1, -2)

    def run() -> np.ndarray:
        s = q @ k_t
        s *= scale
        if blocked is not None:
            np.copyto(s, -np.inf, where=blocked)
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        return s @ v

    return Prepared(run, np.asarray, aux_nbytes=0 if blocked is None else blocked.nbytes)


# -- PyTorch -------------------------------------------------------------------------------------


def torch_device() -> Any:
    """The device the torch backend defaults to (same rule), so baselines and backend compare on one device."""
    name = os.environ.get("ATTNREF_TORCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def torch_tensor(array: np.ndarray, device: Any) -> Any:
    if array.dtype.name == "bfloat16":  # torch cannot read ml_dtypes' bfloat16
        return torch.from_numpy(array.astype(np.float32)).to(device=device, dtype=torch.bfloat16)
    return torch.from_numpy(array).to(device)


def torch_to_numpy(out: Any) -> np.ndarray:
    return out.to(torch.float64).cpu().numpy()


def torch_finish(device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sdpa_options(case: MultiheadCase, length: int, device: Any) -> tuple[dict[str, Any], int]:
    """SDPA's keyword arguments for the case's pattern, and the bytes of the dense mask it keeps (if any)."""
    if case.pattern.kind == "global":
        return {}, 0
    if case.pattern.kind == "causal":
        return {"is_causal": True}, 0
    mask = torch.from_numpy(case.pattern.dense(length, length)).to(device)
    return {"attn_mask": mask}, mask.numel() * mask.element_size()


def _sdpa(case: MultiheadCase, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> Prepared:
    device = torch_device()
    tq, tk, tv = (torch_tensor(a, device) for a in (q, k, v))
    kwargs, aux = _sdpa_options(case, q.shape[-2], device)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run() -> Any:
        out = sdpa(tq, tk, tv, **kwargs)
        torch_finish(device)
        return out

    return Prepared(run, torch_to_numpy, aux_nbytes=aux)


_compiled_flex: Any = None


def flex_block_mask(pattern: Any, length: int, device: Any, block: int = FLEX_BLOCK) -> Any:
    """A FlexAttention ``BlockMask`` of ``pattern`` for ``length`` queries and keys.

    The plan is :meth:`Pattern.plan_blocks` on FlexAttention's grid of
    ``block x block`` cells: per query block, the key cells that meet the
    range some query may see; a cell that every query of the block may see
    wholly is "full" (computed without evaluating the mask), the others are
    "partial" (masked element by element with :meth:`Pattern.allows`). Memory
    and time are ``O((L / block)^2)`` integers at most, never ``O(L^2)``.
    """
    from torch.nn.attention.flex_attention import BlockMask

    n = -(-length // block)
    counts = {"partial": np.zeros(n, np.int32), "full": np.zeros(n, np.int32)}
    indices = {"partial": np.zeros((n, n), np.int32), "full": np.zeros((n, n), np.int32)}
    plan = pattern.plan_blocks(length, length, block_rows=block, key_tile=block, grid=True)
    for qb, query_block in enumerate(plan):  # one block per `block` rows, in order (no merging)
        for tile in query_block.tiles:
            kind = "full" if tile.full else "partial"
            indices[kind][qb, counts[kind][qb]] = tile.start // block
            counts[kind][qb] += 1

    def tensor(a: np.ndarray) -> Any:
        return torch.from_numpy(a)[None, None].to(device)  # (B=1, H=1, ...): broadcast over batch and heads

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return pattern.allows(q_idx, kv_idx)  # Lq == Lk: the aligned position is the query index

    return BlockMask.from_kv_blocks(
        tensor(counts["partial"]), tensor(indices["partial"]), tensor(counts["full"]), tensor(indices["full"]),
        BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(length, length),
    )  # fmt: skip


def _compiled_flex_attention() -> Any:
    """``torch.compile(flex_attention)``, made once per process (``NotImplementedError`` where it is missing)."""
    global _compiled_flex
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as exc:
        raise NotImplementedError(f"FlexAttention is not available: {exc}") from exc
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def _flex_mask(case: MultiheadCase, length: int, device: Any) -> tuple[Any, int]:
    if case.pattern.kind in ("global", "causal"):
        raise NotImplementedError("the FlexAttention baseline is for local and chunked patterns (SDPA: global)")
    block_mask = flex_block_mask(case.pattern, length, device)
    aux = sum(t.numel() * t.element_size() for t in block_mask.as_tuple() if isinstance(t, torch.Tensor))
    return block_mask, aux


def _flex(case: MultiheadCase, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> Prepared:
    device = torch_device()
    tq, tk, tv = (torch_tensor(a, device) for a in (q, k, v))
    block_mask, aux = _flex_mask(case, q.shape[-2], device)
    flex = _compiled_flex_attention()

    def run() -> Any:
        out = flex(tq, tk, tv, block_mask=block_mask)
        torch_finish(device)
        return out

    try:
        run()  # compiles (from torch's on-disk cache after the first time); never timed
    except Exception as exc:  # no C++ compiler, unsupported platform, ...: a skip, with the reason
        raise NotImplementedError(f"FlexAttention does not compile here: {exc!r}") from exc
    return Prepared(run, torch_to_numpy, aux_nbytes=aux)


# -- forward+backward through torch.autograd ----------------------------------------------------------


def prepare_forward_backward(
    impl: str, case: MultiheadCase, q: np.ndarray, k: np.ndarray, v: np.ndarray, dout: np.ndarray
) -> Prepared:
    """``impl``'s forward and backward under ``torch.autograd``: a run returns ``(dq, dk, dv)``.

    The call is what a training step does: the forward with inputs that
    require gradients, then ``torch.autograd.grad`` of the output with the
    upstream ``dout``. SDPA uses the same mask as its forward baseline;
    FlexAttention the same block mask (torch 2.13 has no CPU backward for it:
    there the set-up raises ``NotImplementedError`` with torch's reason). The
    prepared ``to_numpy`` gives ``dq, dk, dv`` flattened and concatenated.
    """
    if torch is None:
        raise NotImplementedError("torch is not installed")
    device = torch_device()
    leaves = [torch_tensor(a, device).requires_grad_(True) for a in (q, k, v)]
    upstream = torch_tensor(dout, device)
    if impl == SDPA:
        options, aux = _sdpa_options(case, q.shape[-2], device)
        forward = torch.nn.functional.scaled_dot_product_attention
    elif impl == FLEX:
        block_mask, aux = _flex_mask(case, q.shape[-2], device)
        options, forward = {"block_mask": block_mask}, _compiled_flex_attention()
    else:
        raise NotImplementedError(f"{impl} has no forward+backward baseline")

    def run() -> Any:
        grads = torch.autograd.grad(forward(*leaves, **options), leaves, upstream)
        torch_finish(device)
        return grads

    if impl == FLEX:
        try:
            run()  # compiles forward and backward; never timed
        except Exception as exc:  # torch 2.13 on the CPU: no FlexAttention backward
            raise NotImplementedError(f"FlexAttention forward+backward does not run here: {exc!r}") from exc
    return Prepared(run, lambda grads: np.concatenate([torch_to_numpy(g).ravel() for g in grads]), aux_nbytes=aux)
