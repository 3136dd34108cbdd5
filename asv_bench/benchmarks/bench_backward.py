"""Forward+backward of the multi-head ops (issue 14): ``dq, dk, dv`` for one upstream gradient ``dout``.

fp32, B=1, H=8, D=64; global attention at L = 1024 and 4096, window (256, 256)
at L = 1024 and 16384. One timed call is what a training step pays for the
attention layer:

* a backend: its ``*_attention_vjp`` op (contract section 6). It takes ``q, k,
  v, dout`` and no saved state, so it runs the forward work its backward needs
  (the blocked backward recomputes the probabilities from the log-sum-exp) and
  then the backward;
* ``reference``: the float64 reference VJP, at L = 1024 only;
* ``baseline-sdpa``: ``torch.autograd`` through SDPA (no mask for global
  attention, the dense boolean mask for the window), what users write today;
* ``baseline-flex``: ``torch.autograd`` through compiled FlexAttention. torch
  2.13 has no CPU backward for it (``NotImplementedError``; with inputs that
  require gradients even its forward refuses), so on the CPU it is recorded as
  skipped with torch's reason; on a GPU it runs.

``track_backward_over_forward`` is a backend's backward time over its own
forward time, ``(t(vjp) - t(forward)) / t(forward)``, both timed alternately
in one process (best of 3): the backward does 2.5x the forward's flops
(FlashAttention-2's five products against two).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import attnref.reference

from .common import (
    FLEX,
    MULTIHEAD_CASES,
    REFERENCE,
    SDPA,
    SMOKE,
    Prepared,
    _MemorySuite,
    _TimeSuite,
    backend_object,
    best_alternately,
    grid,
    implements,
    multihead_inputs,
    prepare,
    registered_backends,
    warm_up,
)

IMPLS = [*registered_backends(), REFERENCE, SDPA, FLEX]
#: case name -> (pattern name of ``common.MULTIHEAD_CASES``, L)
CASES: dict[str, tuple[str, int]] = dict(
    grid(
        smoke=[("global, L=256", ("global", 256)), ("window(256, 256), L=1536", ("window(256, 256)", 1536))],
        default=[
            ("global, L=1024", ("global", 1024)),
            ("global, L=4096", ("global", 4096)),
            ("window(256, 256), L=1024", ("window(256, 256)", 1024)),
            ("window(256, 256), L=16384", ("window(256, 256)", 16384)),
        ],
        full=[
            ("global, L=1024", ("global", 1024)),
            ("global, L=4096", ("global", 4096)),
            ("window(256, 256), L=1024", ("window(256, 256)", 1024)),
            ("window(256, 256), L=4096", ("window(256, 256)", 4096)),
            ("window(256, 256), L=16384", ("window(256, 256)", 16384)),
        ],
    )
)
#: The float64 reference VJP runs only up to this L.
REFERENCE_MAX = 1536


def inputs(pattern: str, size: int) -> tuple[np.ndarray, ...]:
    """``q, k, v`` as the forward benchmarks get them, and ``dout`` (standard normal, fp32)."""
    q, k, v = multihead_inputs(size, "float32")
    dout = np.random.default_rng(size + 1).standard_normal(q.shape, dtype=np.float32)
    return q, k, v, dout


def _backend(impl: str, pattern: str, size: int) -> Prepared:
    case = MULTIHEAD_CASES[pattern]
    backend = backend_object(impl)
    op = f"{case.op}_vjp"
    if not implements(backend, op):
        raise NotImplementedError(f"backend {impl!r} does not implement {op}")
    if impl == REFERENCE and size > REFERENCE_MAX:
        raise NotImplementedError(f"the float64 reference VJP runs only up to L={REFERENCE_MAX}")
    native = [backend.asarray(a) for a in inputs(pattern, size)]
    vjp = getattr(backend, op)

    def run() -> Any:
        grads = vjp(*native, **case.kwargs)
        backend.to_numpy(grads[0][(0,) * (grads[0].ndim - 1)][:1])  # waits for an asynchronous device
        return grads

    return Prepared(run, lambda grads: np.concatenate([np.asarray(backend.to_numpy(g)).ravel() for g in grads[:3]]))


_PREPARED: dict[tuple[str, str], Prepared] = {}


def prepare_forward_backward(impl: str, case: str) -> Prepared:
    """``impl``'s forward+backward of ``case`` (cached per process); ``NotImplementedError`` where it cannot run."""
    if (impl, case) not in _PREPARED:
        pattern, size = CASES[case]
        if impl in (SDPA, FLEX):
            from .baselines import prepare_forward_backward as baseline

            _PREPARED[impl, case] = baseline(impl, MULTIHEAD_CASES[pattern], *inputs(pattern, size))
        else:
            _PREPARED[impl, case] = _backend(impl, pattern, size)
    return _PREPARED[impl, case]


def check_gradients(prepared: Prepared, impl: str, case: str) -> None:
    """In the smoke run, fail loudly if ``dq, dk, dv`` differ from the float64 reference VJP's."""
    if not SMOKE:
        return
    pattern, size = CASES[case]
    spec = MULTIHEAD_CASES[pattern]
    expected = getattr(attnref.reference, f"{spec.op}_vjp")(*inputs(pattern, size), **spec.kwargs)
    expected = np.concatenate([g.ravel() for g in expected])
    got = prepared.to_numpy(prepared.run()).astype(np.float64)
    error = float(np.max(np.abs(got - expected)))
    # fp32 gradients are ~1e-6 relative off; a dropped scale or a swapped gradient is O(1) off
    if not error <= 1e-3 * max(1.0, float(np.max(np.abs(expected)))):
        raise AssertionError(f"{impl} forward+backward on {case}: max |grad - reference| = {error:.3g}")


class ForwardBackward(_TimeSuite):
    """Time of one forward+backward (see the module's docstring)."""

    params = (IMPLS, list(CASES))
    param_names = ("impl", "case")

    def prepared_for(self, impl: str, *params: Any) -> Prepared:
        (case,) = params
        prepared = prepare_forward_backward(impl, case)
        check_gradients(prepared, impl, case)
        return prepared

    def time_forward_backward(self, impl: str, case: str) -> None:
        self.prepared.run()


class ForwardBackwardMemory(_MemorySuite):
    """Peak memory of one forward+backward (see ``common._MemorySuite``); warmed up on the smallest case."""

    params = (IMPLS, list(CASES))
    param_names = ("impl", "case")

    def prepared_for(self, impl: str, *params: Any) -> Prepared:
        return prepare_forward_backward(impl, params[0])

    def warm_up_small(self, impl: str, *params: Any) -> None:
        if impl != FLEX:
            prepare_forward_backward(impl, min(CASES, key=lambda c: CASES[c][1])).run()

    def peakmem_forward_backward(self, impl: str, case: str) -> None:
        self.prepared.run()


class BackwardOverForward:
    """A backend's backward time over its own forward time, both timed alternately in one process."""

    params = (registered_backends(), list(CASES))
    param_names = ("impl", "case")
    timeout = 600.0

    def setup(self, impl: str, case: str) -> None:
        pattern, size = CASES[case]
        self.forward_backward = prepare_forward_backward(impl, case)
        self.forward = prepare(impl, pattern, size)

    def track_backward_over_forward(self, impl: str, case: str) -> float:
        warm_up(self.forward)
        warm_up(self.forward_backward)
        best = best_alternately({"forward": self.forward.run, "both": self.forward_backward.run}, 3)
        return (best["both"] - best["forward"]) / best["forward"]

    track_backward_over_forward.unit = "ratio"  # type: ignore[attr-defined]
