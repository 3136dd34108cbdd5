"""Numerical pieces of the torch backend that keep the reference's exact semantics.

The rules (:mod:`attnref.reference._numerics`): masking selects, it never
multiplies; a row with no allowed key, or whose allowed scores are all
``-inf``, has probabilities 0, output 0 and lse ``-inf``; NaN reaches exactly
the outputs whose formula uses it. Everything here is differentiable, and no
masked row turns into a NaN gradient: a row that would softmax ``-inf`` only
is given finite dummy scores first, and its result is selected away.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["compute_dtype", "all_finite", "finite_flags", "Finite", "masked_softmax", "row_lse", "weighted_sum"]

#: Elements of one temporary in :func:`weighted_sum`'s correction of non-finite values.
_CORRECTION_ELEMENTS = 1 << 22


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the 16-bit dtypes (accumulate as real kernels do), else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def all_finite(t: torch.Tensor | None) -> bool:
    """True only if every element of ``t`` is finite (``None`` counts as finite).

    Tests the sum, one cheap pass: a sum is finite only if every term is. A sum
    that overflows reports False, which only sends the caller to its general
    path.
    """
    return finite_flags(t)[0]


def finite_flags(*tensors: torch.Tensor | None) -> tuple[bool, ...]:
    """:func:`all_finite` of each tensor, with one device synchronisation for all."""
    sums = [t.sum(dtype=compute_dtype(t.dtype)).to(torch.float64) for t in tensors if t is not None]
    flags = iter(torch.stack(sums).isfinite().tolist() if sums else [])
    return tuple(True if t is None else bool(next(flags)) for t in tensors)


@dataclass(frozen=True)
class Finite:
    """Which inputs of a multi-head call are entirely finite (see :func:`finite_flags`)."""

    q: bool
    k: bool
    v: bool
    bias: bool

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> Finite:
        return cls(*finite_flags(q, k, v, bias))

    @property
    def scores(self) -> bool:
        """No score can be NaN or infinite before masking (overflow aside)."""
        return self.q and self.k and self.bias

    @property
    def all(self) -> bool:
        return self.scores and self.v


def row_lse(s: torch.Tensor) -> torch.Tensor:
    """``log sum exp`` over the last axis, NaN (not ``inf``) when a score is ``+inf``.

    ``torch.logsumexp`` returns ``inf`` for a row holding ``+inf``; the
    reference computes ``m + log(sum(exp(s - m)))`` with ``m = inf``, which is
    NaN, and so does this. Rows of ``-inf`` only give ``-inf``.
    """
    m = s.amax(-1, keepdim=True)
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m).detach()
    return (m + torch.log(torch.exp(s - m).sum(-1, keepdim=True)))[..., 0]


def masked_softmax(
    s: torch.Tensor, allowed: torch.Tensor, *, want_lse: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Softmax of ``s`` over the allowed entries of its last axis.

    Returns
    -------
    P : tensor, shape of ``s``
        0 at disallowed keys and in dead rows.
    lse : tensor or None
        ``s.shape[:-1]``; ``-inf`` in dead rows. ``None`` unless ``want_lse``.
    dead : bool tensor, ``s.shape[:-1] + (1,)``
        Rows with no allowed key or whose allowed scores are all ``-inf``.
    """
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
    masked = torch.where(allowed, s, neg_inf)
    dead = masked.amax(-1, keepdim=True) == float("-inf")  # NaN rows are not dead: NaN must show
    safe = torch.where(dead, torch.zeros((), dtype=s.dtype, device=s.device), masked)
    P = torch.where(dead, torch.zeros((), dtype=s.dtype, device=s.device), torch.softmax(safe, -1))
    lse = torch.where(dead[..., 0], neg_inf, row_lse(safe)) if want_lse else None
    return P, lse, dead


def weighted_sum(P: torch.Tensor, allowed: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """``out_i = sum_{j allowed} P_ij v_j`` over the last two axes.

    ``P`` is 0 at disallowed keys, so ``P @ v`` is right for finite ``v``; a
    NaN or infinity at a disallowed key would still leak (``0 * nan = nan``).
    So non-finite entries of ``v`` are zeroed for the product and their terms
    ``P_ij * v_jc`` added back only where key ``j`` is allowed, as the
    reference does. ``allowed=None`` means every key is allowed.
    """
    if allowed is None or all_finite(v):
        return torch.matmul(P, v)
    finite = torch.isfinite(v)
    zero = torch.zeros((), dtype=v.dtype, device=v.device)
    out = torch.matmul(P, torch.where(finite, v, zero))
    bad_keys = (~finite).any(-1).reshape(-1, v.shape[-2]).any(0).nonzero()[:, 0]
    lead = torch.broadcast_shapes(P.shape[:-1], allowed.shape[:-1])  # (..., rows)
    step = max(1, _CORRECTION_ELEMENTS // max(1, _numel(lead) * v.shape[-1]))
    for start in range(0, bad_keys.numel(), step):
        keys = bad_keys[start : start + step]
        v_bad = torch.where(finite, zero, v).index_select(-2, keys)  # (..., nJ, Dv): the non-finite part only
        terms = P.index_select(-1, keys)[..., None] * v_bad[..., None, :, :]  # (..., rows, nJ, Dv)
        terms = torch.where(allowed.index_select(-1, keys)[..., None], terms, zero)
        out = out + terms.sum(-2)
    return out


def _numel(shape: torch.Size | tuple[int, ...]) -> int:
    n = 1
    for size in shape:
        n *= int(size)
    return n
