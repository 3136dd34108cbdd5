"""The torch backend's masked softmax, weighted sum and non-finite bookkeeping, written once.

The rules (contract sections 1, 2 and 6): masking selects, it never
multiplies; a row with no allowed key, or whose allowed scores are all
``-inf``, has probabilities 0, output 0 and lse ``-inf``; NaN reaches exactly
the outputs whose formula uses it.

Nothing here reads a tensor's values on the host: the fast paths never ask
whether an input holds a NaN or an infinity (on CUDA that question costs a
device synchronisation per call). Instead a product ``P @ x`` is taken with the
non-finite entries of ``x`` set to 0 (so a 0 weight of a disallowed key cannot
turn into NaN), and the non-finite entries are then put back where an allowed
key carries them, from *counts*: for each output entry, how many allowed keys
hold a NaN, a ``+inf`` or a ``-inf`` in that column. With a pattern the allowed
keys of a row form one range, and the counts come from prefix sums
(:func:`range_counts`, O(L x D)); with a user mask they come from one product
of the mask with indicator columns (:func:`mask_counts`). :func:`put_back`
turns counts into the reference's values: NaN where a NaN is counted or both
infinities, else the counted infinity, else the finite sum.

Known gap (written down, not hidden): an infinite value at an allowed key
whose weight is exactly 0 (its score is ``-inf``) gives that infinity here;
the reference multiplies ``0 * inf`` and gives NaN.
"""

from __future__ import annotations

import torch

__all__ = [
    "reads_values_on",
    "known_finite",
    "compute_dtype",
    "softmax_rows",
    "masked_softmax",
    "weighted_sum",
    "finite_part",
    "nonfinite_codes",
    "range_counts",
    "mask_counts",
    "put_back",
    "nan_where_counted",
]

#: Bits per class (NaN, +inf, -inf) in one packed int64 count (see :func:`nonfinite_codes`).
FIELD_BITS = 21
_FIELD = (1 << FIELD_BITS) - 1


def reads_values_on(device: torch.device) -> bool:
    """Whether the code may read values on the host for ``device``: only on the CPU, where a
    read waits for no device (elsewhere it is a synchronisation, so nothing reads)."""
    return device.type == "cpu"


def known_finite(*tensors: torch.Tensor | None) -> bool:
    """True only when every element is finite *and* that may be read here
    (:func:`reads_values_on`): then the non-finite bookkeeping can be skipped.
    One host read for all (their sums are finite only if every term is)."""
    present = [t for t in tensors if t is not None]
    if not present or not reads_values_on(present[0].device):
        return False
    sums = [t.sum(dtype=compute_dtype(t.dtype)).to(torch.float64) for t in present]
    return bool(torch.stack(sums).isfinite().all())


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the 16-bit dtypes (accumulate as real kernels do), else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# -- softmax ------------------------------------------------------------------------
def softmax_rows(s: torch.Tensor, *, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over the last axis of scores whose disallowed entries are already ``-inf``.
    Returns ``(P, lse, mz)``: ``lse`` of shape ``s.shape[:-1]``, and ``mz`` the shift and
    the sum, ``(..., 2)``, from which a backward pass recomputes exactly this ``P``.

    ``m = max_j s_ij`` (0 where the row is all ``-inf``), ``P_ij = exp(s_ij - m) / Z_i``,
    ``lse_i = m + log Z_i``. A row of ``-inf`` only (no allowed key, or every
    allowed score ``-inf``) gets ``P = 0`` and ``lse = log 0 = -inf``; a NaN or
    ``+inf`` score makes its row NaN (``inf - inf``), as the reference's.
    ``inplace=True`` overwrites ``s`` with ``P`` (no autograd); otherwise it is
    differentiable (the shift ``m`` is a constant: the result does not depend on it).
    """
    m = s.amax(-1, keepdim=True).detach()
    dead = m == float("-inf")
    m = m.masked_fill(dead, 0)
    e = s.sub_(m).exp_() if inplace else (s - m).exp()
    z = e.sum(-1, keepdim=True)
    lse = (m + z.log())[..., 0]
    z = z.masked_fill(dead, 1)
    return (e.div_(z) if inplace else e / z), lse, torch.cat([m, z], -1)


def masked_softmax(s: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax of ``s`` over the allowed entries of its last axis (differentiable).

    Disallowed entries become ``-inf`` by selection, then :func:`softmax_rows`.
    Rows with no allowed key give 0.
    """
    return softmax_rows(torch.where(allowed, s, float("-inf")))[0]


# -- the weighted sum -----------------------------------------------------------------
def finite_part(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every NaN and infinity set to 0."""
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def weighted_sum(P: torch.Tensor, allowed: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out_i = sum_{j allowed} P_ij v_j`` over the last two axes, for any ``allowed``.

    ``P @ finite_part(v)``, then the non-finite values of allowed keys put back
    (:func:`mask_counts`, :func:`put_back`). Differentiable.
    """
    return put_back(P @ finite_part(v), mask_counts(allowed, v))


# -- counting non-finite entries ----------------------------------------------------
def nonfinite_codes(x: torch.Tensor) -> torch.Tensor:
    """int64 ``isnan + (isposinf << 21) + (isneginf << 42)``: three counts in one sum.

    Sums of codes over up to ``2**21 - 1`` entries keep the three counts apart.
    """
    nan = torch.isnan(x).to(torch.int64)
    pos = torch.isposinf(x).to(torch.int64) << FIELD_BITS
    neg = torch.isneginf(x).to(torch.int64) << (2 * FIELD_BITS)
    return nan + pos + neg


def range_counts(codes: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Packed counts of ``codes[..., lo_r:hi_r, :]`` for every range ``r``.

    ``codes`` is ``(B, H, L, C)``; ``lo``/``hi`` are int64 ``(B or 1, R)`` with
    ``0 <= lo <= hi <= L`` (an empty range counts nothing). Returns
    ``(B, H, R, C)``. The ranges' lengths must stay below ``2**21``.
    """
    if codes.shape[-2] >= _FIELD:
        raise NotImplementedError("non-finite counts over 2**21 or more positions")  # never reached below 2**21
    B, H, _, C = codes.shape
    cum = torch.nn.functional.pad(codes.cumsum(-2), (0, 0, 1, 0))  # (B, H, L + 1, C), cum[r] = sum of codes[:r]
    R = lo.shape[-1]

    def at(index: torch.Tensor) -> torch.Tensor:
        return cum.gather(-2, index.reshape(index.shape[0], 1, R, 1).expand(B, H, R, C))

    return at(hi) - at(lo)


def mask_counts(allowed: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Packed counts over the allowed keys of each row: ``allowed (..., R, L)`` times
    the NaN / ``+inf`` / ``-inf`` indicator columns of ``v (..., L, C)``."""
    C = v.shape[-1]
    dt = torch.float32 if v.dtype != torch.float64 else torch.float64  # counts < 2**24: exact
    indicators = torch.cat([torch.isnan(v), torch.isposinf(v), torch.isneginf(v)], -1).to(dt)
    counts = (allowed.to(dt) @ indicators).to(torch.int64).clamp_(max=_FIELD)
    nan, pos, neg = counts[..., :C], counts[..., C : 2 * C], counts[..., 2 * C :]
    return nan + (pos << FIELD_BITS) + (neg << (2 * FIELD_BITS))


def put_back(out: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``out`` (a sum over finite parts) with the counted non-finite terms restored.

    NaN where ``out`` is NaN, a NaN is counted, or both infinities are; else
    ``+inf``/``-inf`` where that infinity is counted; else ``out``. (Weights are
    non-negative, so an infinity keeps its sign.)
    """
    nan = ((counts & _FIELD) != 0) | torch.isnan(out)
    pos = ((counts >> FIELD_BITS) & _FIELD) != 0
    neg = (counts >> (2 * FIELD_BITS)) != 0
    result = torch.where(pos, float("inf"), torch.where(neg, float("-inf"), out))
    return torch.where(nan | (pos & neg), float("nan"), result).to(out.dtype)


def nan_where_counted(out: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``out`` with NaN wherever any non-finite entry is counted."""
    return torch.where(counts != 0, float("nan"), out).to(out.dtype)
