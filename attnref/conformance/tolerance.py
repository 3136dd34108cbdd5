"""The pass rule of the conformance suite, in one place.

A backend's answer is judged against two runs of the reference on the same
inputs, *after* those inputs were rounded to the dtype under test (so the
rounding of the inputs is never counted as the backend's error):

``ref64``
    the float64 reference, the exact answer rounded once;
``naive``
    the reference run with ``precision=`` the dtype under test: the same
    naive algorithm with every intermediate rounded to that dtype.

The rule (after FlashAttention's and PyTorch's own tests): an output array
passes iff ::

    max|out - ref64| <= 2 * max|naive - ref64| + atol

The bound has two parts besides the naive run's error, both independent of
the backend::

    allowed = 2 * max|naive - ref64| + atol(dtype, scale) + SENSITIVITY_FACTOR * sensitivity

``atol(dtype, scale) = (ROUNDING_ULPS * eps(dtype) + ACCUMULATION_ULPS * eps(acc)) * scale``
is the fixed floor:

* ``ROUNDING_ULPS * eps(dtype)``: the result is rounded once to the dtype;
* ``ACCUMULATION_ULPS * eps(acc)``: a correct kernel sums in another order
  than the reference (an online softmax over key blocks, a BLAS product) in
  the dtype it accumulates in, ``acc``: float32 for float16 and bfloat16, as
  in every real 16-bit kernel and in the naive run; the dtype itself
  otherwise;
* ``scale``: the largest finite magnitude among the array's reference values
  and the values it is a weighted average of (``v`` for ``out``, ``x`` for the
  additive context, ``h_s`` for the Luong context: an average of values of
  size 1 can be 0.001 by cancellation while its rounding errors stay of the
  size of the values); ``lse`` and ``weights`` use their own values; every
  gradient of a VJP op uses the size of the terms the backward pass adds up
  (bounded from the inputs: ``dout``, ``dlse``, ``q``, ``k``, ``v`` and the
  scale; see ``runner._gradient_scale``) and of the gradients themselves. An array
  whose scale is 0 (a row that must be exactly zero, and nothing else) must be
  exactly zero.

``sensitivity`` is how much the exact answer moves when its inputs *and its
scores* move by one rounding of the dtype under test: ``max|ref64(moved) -
ref64|``, where every floating input is multiplied by ``1 + u * r`` and every
score ``s_ij`` of a multi-head op gets ``u * r_ij * |s_ij|`` added (through the
bias; ``|s_ij|`` after the softcap, before the bias), ``u = eps(dtype) / 2``
the unit roundoff and ``r`` fixed random signs. It depends on the case and the
dtype, never on the backend. A correct kernel is, to first order, the exact
answer for inputs and scores that rounding moved by a few ``u`` (backward
stability), so this term is what its honest rounding can cost where the
answer is ill-conditioned: nearly tied or large logits in float16 (a backend
that rounds the scores once to float16 and then computes exactly, as ONNX
Runtime does, is right there, even where the naive run happens to be lucky),
a Luong local-p centre ``p_t`` that scales with the source length. Where the
answer is well-conditioned it is about ``u * scale`` and changes little.
``SENSITIVITY_FACTOR`` is the documented constant ``c`` of the contract.
Where a dense score perturbation cannot be passed (packed sequences, paged
caches, merged states, and cases of more than ``2**24`` scores, the long tier,
where a dense bias would make the reference ``O(Lq x Lk)``), the inputs alone
move: moving ``q`` and ``k`` by one rounding moves each score by about as much
as its own rounding does.

In float64 the naive run *is* the reference, so the last two terms are the
whole bound there; for the 16-bit dtypes the naive run's error dominates.

The rule applies to every array an op returns: ``out`` and ``lse`` of the
multi-head ops, ``context`` and ``weights`` of the pooling ops, and every
gradient of the VJP ops, where the naive factor is ``GRADIENT_FACTOR = 3``
(as in FlashAttention's backward tests) instead of 2.

Non-finite values (contract section 5), position by position:

* where ``ref64`` is non-finite (the lse ``-inf`` of an empty row, a NaN the
  inputs propagate, an ``inf`` value that reaches the output) the backend
  gives the same value: NaN for NaN, the same-signed infinity for an
  infinity;
* where the naive run is non-finite *and differs from* ``ref64`` (it
  overflowed where ``ref64`` is finite, or gave ``0 * inf = NaN`` after a
  weight underflowed where ``ref64`` is ``inf``), the backend may give any
  non-finite value, or (where ``ref64`` is finite) a finite one within the
  bound: a kernel in that dtype may overflow exactly where the naive
  same-precision algorithm does, and nowhere else;
* anywhere else a NaN or infinity is a failure whatever the bound.

Those naive non-finite entries do not widen the bound.

Nothing here depends on the backend: there is no per-backend loosening, and the
floor's constants are never raised to make a backend pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from attnref.dtypes import is_low_precision, numpy_dtype

__all__ = [
    "NAIVE_FACTOR",
    "GRADIENT_FACTOR",
    "ROUNDING_ULPS",
    "ACCUMULATION_ULPS",
    "eps",
    "accumulation_dtype",
    "unit_roundoff",
    "atol",
    "SENSITIVITY_FACTOR",
    "sensitivity",
    "largest",
    "Verdict",
    "judge",
]

#: The backend may be this many times as far from ``ref64`` as the naive run.
NAIVE_FACTOR = 2.0
#: The same factor for gradients (the VJP ops), as in FlashAttention's backward tests.
GRADIENT_FACTOR = 3.0
#: Floor, first part: the result's rounding, in units of the dtype's epsilon.
ROUNDING_ULPS = 1.0
#: Floor, second part: reordered accumulation, in units of the accumulation dtype's epsilon.
ACCUMULATION_ULPS = 4.0
#: ``c``: how many times its measured sensitivity to one rounding of its inputs and scores an answer may be off.
SENSITIVITY_FACTOR = 2.0


def eps(dtype: str) -> float:
    """Machine epsilon of the dtype named ``dtype`` (``2**-7`` for bfloat16, ``2**-52`` for float64)."""
    return float(ml_dtypes.finfo(numpy_dtype(dtype)).eps)


def unit_roundoff(dtype: str) -> float:
    """``eps(dtype) / 2``: the largest relative error of one rounding to the dtype."""
    return eps(dtype) / 2


def accumulation_dtype(dtype: str) -> str:
    """The dtype sums are taken in: float32 for the 16-bit dtypes, else ``dtype`` itself."""
    return "float32" if is_low_precision(dtype) else dtype


def atol(dtype: str, scale: float) -> float:
    """The fixed floor of the rule for an array of the given ``scale``.

    ``(ROUNDING_ULPS * eps(dtype) + ACCUMULATION_ULPS * eps(accumulation_dtype(dtype))) * scale``.
    """
    return (ROUNDING_ULPS * eps(dtype) + ACCUMULATION_ULPS * eps(accumulation_dtype(dtype))) * scale


def sensitivity(ref: np.ndarray, moved: np.ndarray) -> float:
    """``max|moved - ref|`` over the entries finite in both (0 for none).

    ``moved`` is the reference's answer for inputs and scores moved by one
    rounding of the dtype under test (see the module docstring).
    """
    ref, moved = np.asarray(ref, dtype=np.float64), np.asarray(moved, dtype=np.float64)
    both = np.isfinite(ref) & np.isfinite(moved)
    return float(np.abs(moved[both] - ref[both]).max()) if both.any() else 0.0


def largest(values: np.ndarray | None) -> float:
    """The largest finite magnitude in ``values`` (0 for none)."""
    if values is None:
        return 0.0
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(np.abs(finite).max()) if finite.size else 0.0


@dataclass(frozen=True)
class Verdict:
    """How one returned array compares with the reference.

    Attributes
    ----------
    ok : bool
        Whether it passes the rule.
    err : float
        ``max|out - ref64|`` over the finite entries of ``ref64``; ``inf``
        when a non-finite entry does not match.
    allowed : float
        The bound ``factor * max|naive - ref64| + atol + SENSITIVITY_FACTOR * sensitivity``
        (``factor`` 2, or 3 for gradients).
    detail : str or None
        Where and how it failed (``None`` when it passed).
    """

    ok: bool
    err: float
    allowed: float
    detail: str | None = None

    @property
    def ratio(self) -> float:
        """``err / allowed``: above 1 fails (``inf`` for a non-finite mismatch)."""
        if self.err == 0:
            return 0.0
        return math.inf if self.allowed == 0 else self.err / self.allowed


def _where(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def _same_special(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where ``a`` and ``b`` hold the same non-finite value (both NaN, or the same infinity)."""
    return (np.isnan(a) & np.isnan(b)) | (~np.isfinite(a) & (a == b))


def _nonfinite_mismatch(name: str, got: np.ndarray, ref: np.ndarray, naive: np.ndarray) -> str | None:
    """The first position breaking the non-finite rule (module docstring), described; ``None`` if none."""
    naive_overflowed = ~np.isfinite(naive) & ~_same_special(naive, ref)
    bad = np.where(np.isfinite(got), ~np.isfinite(ref), ~_same_special(got, ref) & ~naive_overflowed)
    if not bad.any():
        return None
    index = tuple(np.argwhere(bad)[0])
    count = int(bad.sum())
    entries = f"{count} such entries" if count > 1 else "the only one"
    return (
        f"{name}{_where(index)} = {got[index]:.6g} where the reference has {ref[index]:.6g}"
        f" and the naive run {naive[index]:.6g} ({entries})"
    )


def judge(
    name: str,
    got: np.ndarray,
    ref: np.ndarray,
    naive: np.ndarray,
    dtype: str,
    terms: np.ndarray | None = None,
    moved: np.ndarray | None = None,
    factor: float = NAIVE_FACTOR,
) -> Verdict:
    """Apply the pass rule to one returned array.

    Parameters
    ----------
    name : str
        What the array is (``"out"``, ``"lse"``, ...), for the message.
    got, ref, naive : ndarray
        The backend's answer, ``ref64`` and the naive run, same shape
        (any floating dtype; compared in float64).
    dtype : str
        The dtype under test.
    terms : ndarray, optional
        The values ``ref`` is a weighted average of (``v`` for ``out``); their
        largest finite magnitude also sets the scale of the floor.
    moved : ndarray, optional
        ``ref64`` for the inputs and scores moved by one rounding of the
        dtype; ``SENSITIVITY_FACTOR * sensitivity(ref, moved)`` joins the bound.
    factor : float
        The naive run's factor: ``NAIVE_FACTOR`` (2), ``GRADIENT_FACTOR`` (3)
        for gradients.
    """
    got, ref, naive = (np.asarray(a, dtype=np.float64) for a in (got, ref, naive))
    finite = np.isfinite(ref)
    floor = atol(dtype, max(largest(ref), largest(terms)))
    if moved is not None:
        floor += SENSITIVITY_FACTOR * sensitivity(ref, moved)
    both = finite & np.isfinite(naive)
    with np.errstate(over="ignore"):
        naive_err = float(np.abs(naive[both] - ref[both]).max()) if both.any() else 0.0
    allowed = factor * naive_err + floor
    mismatch = _nonfinite_mismatch(name, got, ref, naive)
    if mismatch is not None:
        return Verdict(False, math.inf, allowed, mismatch)
    compared = finite & np.isfinite(got)  # the rest passed the non-finite rule
    if not compared.any():
        return Verdict(True, 0.0, allowed)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf at matched non-finite entries
        diff = np.where(compared, np.abs(got - ref), 0.0)
    index = np.unravel_index(int(np.argmax(diff)), diff.shape)
    err = float(diff[index])
    if err <= allowed:
        return Verdict(True, err, allowed)
    detail = (
        f"{name}: max error {err:.3g} at {_where(index)} (got {got[index]:.6g}, reference {ref[index]:.6g})"
        f" > allowed {allowed:.3g} = {factor:g} x naive error {naive_err:.3g} + floor {floor:.3g}"
    )
    return Verdict(False, err, allowed, detail)
