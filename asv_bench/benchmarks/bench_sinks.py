"""Attention sinks (issue 11, contract section 7): one learned logit per query head, a virtual key with no value.

Cases, fp32, B=1, H=8, D=64 (gpt-oss puts sinks on causal layers, full and
sliding-window): causal attention at L=4096 and the causal window (255, 0) at
L=16384, each with sinks (standard normal, seed 0) and without. Implementations:

* a backend: the op with ``sinks=`` and the same op without;
* ``reference``: the float64 reference (small sizes only);
* ``baseline-dense-sinks``: the formulation of gpt-oss's reference code, in
  torch: the dense scores, the pattern's mask, a column of sink logits
  concatenated onto them, the softmax, the column dropped, the product with
  ``v`` (without sinks: the same without the column). Only where the
  ``(B, H, L, L)`` scores fit in 2 GiB (L=4096 here).

``track_sinks_over_plain`` is a backend's time with sinks over its time
without, timed alternately in one process (best of 5): the issue's target is
at most 1.05.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import attnref.reference

from .common import (
    HEADS,
    MULTIHEAD_CASES,
    REFERENCE,
    REFERENCE_MAX,
    SMOKE,
    Prepared,
    _MemorySuite,
    _TimeSuite,
    backend_prepared,
    best_alternately,
    grid,
    multihead_inputs,
    registered_backends,
    torch,
    warm_up,
    warm_up_or_skip,
)

DENSE = "baseline-dense-sinks"
IMPLS = [*registered_backends(), REFERENCE, DENSE]
#: case name -> (pattern name of ``common.MULTIHEAD_CASES``, L)
CASES: dict[str, tuple[str, int]] = dict(
    grid(
        smoke=[("causal, L=256", ("causal", 256)), ("window(255, 0), L=1536", ("window(255, 0)", 1536))],
        default=[("causal, L=4096", ("causal", 4096)), ("window(255, 0), L=16384", ("window(255, 0)", 16384))],
        full=[("causal, L=4096", ("causal", 4096)), ("window(255, 0), L=16384", ("window(255, 0)", 16384))],
    )
)
#: The dense baseline runs only where its fp32 scores take at most this many bytes.
DENSE_MAX_SCORE_BYTES = 2 * 2**30


def sink_logits(heads: int = HEADS) -> np.ndarray:
    """``(heads,)`` standard normal fp32 sink logits."""
    return np.random.default_rng(0).standard_normal(heads, dtype=np.float32)


_PREPARED: dict[tuple[str, str, bool], Prepared] = {}


def prepare_sinks(impl: str, case: str, sinks: bool) -> Prepared:
    """``impl`` ready to run ``case`` with or without sinks (cached per process)."""
    if (impl, case, sinks) not in _PREPARED:
        pattern, size = CASES[case]
        spec = MULTIHEAD_CASES[pattern]
        q, k, v = multihead_inputs(size, "float32")
        if impl == DENSE:
            prepared = _dense(spec.pattern, q, k, v, sink_logits() if sinks else None)
        else:
            if impl == REFERENCE and size > REFERENCE_MAX[spec.op]:
                raise NotImplementedError(f"the float64 reference runs {spec.op} only up to L={REFERENCE_MAX[spec.op]}")
            kwargs = {**spec.kwargs, **({"sinks": sink_logits()} if sinks else {})}
            prepared = backend_prepared(impl, spec.op, (q, k, v), kwargs)
        warm_up_or_skip(prepared, impl, "sinks")
        _PREPARED[impl, case, sinks] = prepared
    return _PREPARED[impl, case, sinks]


def check_sinks(prepared: Prepared, impl: str, case: str, sinks: bool) -> None:
    """In the smoke run, compare with the float64 reference."""
    if not SMOKE:
        return
    pattern, size = CASES[case]
    spec = MULTIHEAD_CASES[pattern]
    kwargs = {**spec.kwargs, **({"sinks": sink_logits()} if sinks else {})}
    try:
        expected = getattr(attnref.reference, spec.op)(*multihead_inputs(size, "float32"), **kwargs)
    except TypeError as exc:  # a reference older than contract section 7: nothing to check against
        if "unexpected keyword argument" not in str(exc):
            raise
        raise NotImplementedError(f"the reference has no sinks to check {impl} against: {exc}") from exc
    error = float(np.max(np.abs(prepared.to_numpy(prepared.run()) - expected)))
    if not error <= 1e-3:
        raise AssertionError(f"{impl} on {case} (sinks={sinks}): max |out - reference| = {error:.3g}")


def _dense(pattern: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, sinks: np.ndarray | None) -> Prepared:
    if torch is None:
        raise NotImplementedError("torch is not installed")
    batch, heads, length, dim = q.shape
    if batch * heads * length * length * 4 > DENSE_MAX_SCORE_BYTES:
        raise NotImplementedError(f"the dense scores would exceed {DENSE_MAX_SCORE_BYTES} bytes")
    from .baselines import torch_device, torch_finish, torch_tensor, torch_to_numpy

    device = torch_device()
    tq, tk, tv = (torch_tensor(a, device) for a in (q, k, v))
    blocked = torch.from_numpy(~pattern.dense(length, length)).to(device)
    column = None if sinks is None else torch_tensor(sinks, device).view(1, heads, 1, 1).expand(batch, heads, length, 1)
    scale = 1 / math.sqrt(dim)

    def run() -> Any:
        scores = torch.matmul(tq, tk.transpose(-1, -2)).mul_(scale).masked_fill_(blocked, -math.inf)
        if column is not None:
            scores = torch.cat([scores, column], dim=-1)
        weights = torch.softmax(scores, dim=-1)
        if column is not None:
            weights = weights[..., :-1]
        out = torch.matmul(weights, tv)
        torch_finish(device)
        return out

    return Prepared(run, torch_to_numpy, aux_nbytes=blocked.numel() * blocked.element_size())


class Sinks(_TimeSuite):
    """Time of an op with and without sinks (see the module's docstring)."""

    params = (IMPLS, list(CASES), [True, False])
    param_names = ("impl", "case", "sinks")

    def prepared_for(self, impl: str, *params: Any) -> Prepared:
        case, sinks = params
        prepared = prepare_sinks(impl, case, sinks)
        check_sinks(prepared, impl, case, sinks)
        return prepared

    def time_sinks(self, impl: str, case: str, sinks: bool) -> None:
        self.prepared.run()


class SinksMemory(_MemorySuite):
    """Peak memory of an op with and without sinks (see ``common._MemorySuite``)."""

    params = (IMPLS, list(CASES), [True, False])
    param_names = ("impl", "case", "sinks")

    def prepared_for(self, impl: str, *params: Any) -> Prepared:
        return prepare_sinks(impl, *params)

    def warm_up_small(self, impl: str, *params: Any) -> None:
        smallest = min(CASES, key=lambda c: CASES[c][1])
        prepare_sinks(impl, smallest, params[1]).run()

    def peakmem_sinks(self, impl: str, case: str, sinks: bool) -> None:
        self.prepared.run()


class SinksOverhead:
    """A backend's time with sinks over its time without, alternately in one process (best of 5)."""

    params = (registered_backends(), list(CASES))
    param_names = ("impl", "case")
    timeout = 600.0

    def setup(self, impl: str, case: str) -> None:
        self.with_sinks, self.plain = prepare_sinks(impl, case, True), prepare_sinks(impl, case, False)

    def track_sinks_over_plain(self, impl: str, case: str) -> float:
        warm_up(self.with_sinks)
        warm_up(self.plain)
        best = best_alternately({"with": self.with_sinks.run, "plain": self.plain.run}, 5)
        return best["with"] / best["plain"]

    track_sinks_over_plain.unit = "ratio"  # type: ignore[attr-defined]
