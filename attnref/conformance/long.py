"""The long-context tier (``attnref conform --long``, contract section 5).

Kernels break at lengths the default catalogue never reaches: 32-bit index
arithmetic overflows once ``Lq * Lk >= 2**31`` (a flat score index, a
``row * Lk + j`` offset), block counts leave the ranges a launch grid assumed,
decoding reads a KV cache of a million keys. Every case here is windowed,
chunked or decoding, so its work is ``O(L x window)``: the float64 reference
and its ``precision=`` runs skip the key blocks a pattern excludes (through
:meth:`attnref.patterns.Pattern.key_range`) and answer each case in seconds.

=========================  ===========================================================
case                       what it reaches
=========================  ===========================================================
``long-window-2p16``       ``L = 2**16``, causal window 64: ``Lq * Lk = 2**32``
``long-window-2p18``       ``L = 2**18``, window (127, 128): ``Lq * Lk = 2**36``
``long-chunk-2p17``        ``L = 2**17``, causal chunks of 256
``long-chunk-2p18``        ``L = 2**18``, chunks of 1024
``long-decode-2p20``       ``Lq = 4`` and ``16`` against ``2**20`` keys
``long-decode-2p25``       one query against ``2**25 + 3`` keys: positions past ``2**24`` (float32)
=========================  ===========================================================

The gradient ops get the same shapes (``L = 2**16`` and decoding against
``2**20`` keys); the pooling ops get ``2**18`` positions (additive, windowed)
and ``2**20`` source positions (Luong local-m).

The tier is opt-in: it needs a few GiB of memory and minutes, not seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from attnref.conformance.cases import GRADIENT_OF, Case, Dims, _additive, _luong, _mha
from attnref.conformance.gradients import with_upstream
from attnref.conformance.states import _merge, _paged, _paged_options

__all__ = ["LONG_CASES", "LazyInputs", "long_cases"]


class LazyInputs(Mapping):
    """A case's inputs, built on first use: the long tier's arrays take seconds and hundreds of MiB
    each, so listing the catalogue (``--shard``, ``-k``, pytest collection) must not build them."""

    def __init__(self, build: Callable[[], Mapping[str, np.ndarray]], names: tuple[str, ...]) -> None:
        self._build = build
        self._names = names  # known without building: which outputs a case has depends on them
        self._data: dict[str, np.ndarray] | None = None

    def _arrays(self) -> dict[str, np.ndarray]:
        if self._data is None:
            self._data = dict(self._build())
        return self._data

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


def _lazy(build: Callable[[], Case], case_id: str, op: str, note: str, options: dict,
          names: tuple[str, ...]) -> Case:  # fmt: skip
    """The case ``build()`` returns (with the inputs ``names``), without building its arrays until they are used."""

    def arrays() -> Mapping[str, np.ndarray]:
        built = build().inputs
        assert tuple(built) == names, (tuple(built), names)
        return built

    return Case(op, case_id, LazyInputs(arrays, names), options, note=note)  # type: ignore[arg-type]


# One head pair, small head size: the tier is about positions and indices, not FLOPs.
_SMALL = {"B": 1, "Hq": 2, "Hkv": 1, "D": 16, "Dv": 8}

#: The multi-head long cases: op -> [(id, note, Lq, Lk, options)].
LONG_CASES: dict[str, list[tuple[str, str, int, int, dict]]] = {
    "global_attention": [
        ("long-decode-2p20", "4 queries against 2**20 keys, causal (KV-cache decoding)", 4, 2**20, {"causal": True}),
        ("long-decode-16-2p20", "16 queries against 2**20 keys, causal", 16, 2**20, {"causal": True}),
    ],
    "local_attention": [
        ("long-window-2p16", "L = 2**16, causal window (63, 0): Lq * Lk = 2**32", 2**16, 2**16, {"window": (63, 0)}),
        ("long-window-2p18", "L = 2**18, window (127, 128): Lq * Lk = 2**36", 2**18, 2**18, {"window": (127, 128)}),
        ("long-decode-2p20", "8 queries against 2**20 keys, window (4095, 0)", 8, 2**20, {"window": (4095, 0)}),
        (
            "long-decode-2p25",
            "1 query against 2**25 + 3 keys, window (1001, 0): positions past 2**24",
            1,
            2**25 + 3,
            {"window": (1001, 0)},
        ),
    ],
    "chunked_attention": [
        ("long-chunk-2p17", "L = 2**17, causal chunks of 256", 2**17, 2**17, {"chunk_size": 256, "causal": True}),
        ("long-chunk-2p18", "L = 2**18, chunks of 1024", 2**18, 2**18, {"chunk_size": 1024}),
        ("long-decode-2p20", "16 queries against 2**20 keys, chunks of 8192", 16, 2**20, {"chunk_size": 8192}),
    ],
}

#: The gradient ops' long cases: the forward cases of at most 2**16 queries.
_GRADIENT_LONG = {"long-decode-2p20", "long-window-2p16", "long-decode-16-2p20"}


#: Sizes of the cases past 2**24 keys: one head of size 2, so that 2**25 keys fit in a few hundred MiB.
_HUGE = {"B": 1, "Hq": 1, "Hkv": 1, "D": 2, "Dv": 1}


def _multihead(op: str, entries: list[tuple[str, str, int, int, dict]], gradient: bool = False) -> list[Case]:
    cases = []
    for case_id, note, q_len, kv_len, options in entries:
        dims = Dims(Lq=q_len, Lk=kv_len, **(_HUGE if kv_len > 2**24 else _SMALL))

        def build(case_id: str = case_id, note: str = note, dims: Dims = dims, options: dict = options) -> Case:
            case = _mha(op, case_id, note, dims, **options)
            return with_upstream(case, dlse=True) if gradient else case

        name = f"{op}_vjp" if gradient else op
        opts = dict(options) if gradient else {**options, "return_lse": True}
        names = ("q", "k", "v", "dout", "dlse") if gradient else ("q", "k", "v")
        cases.append(_lazy(build, case_id, name, note, opts, names))
    return cases


def _gradient(op: str) -> list[Case]:
    forward = GRADIENT_OF[op]
    entries = [e for e in LONG_CASES[forward] if e[0] in _GRADIENT_LONG]
    if forward == "chunked_attention":
        entries.append(("long-chunk-2p16", "L = 2**16, causal chunks of 128", 2**16, 2**16,
                        {"chunk_size": 128, "causal": True}))  # fmt: skip
    return _multihead(forward, entries, gradient=True)


def long_cases(op: str) -> list[Case]:
    """The long-context cases of ``op`` (every op, gradients included)."""
    if op in LONG_CASES:
        return _multihead(op, LONG_CASES[op])
    if op in GRADIENT_OF:
        return _gradient(op)
    if op == "additive_attention":
        note = "2**18 positions, a window of 2049 around a centre per batch"
        options = {"window": (1024, 1024), "center": np.array([1500, 2**18 - 7])}
        return [_lazy(lambda: _additive("long-window-2p18", note, B=2, L=2**18, Din=8, Dh=8, **options),
                      "long-window-2p18", op, note, options, ("x", "w_in", "b_in", "w_out"))]  # fmt: skip
    if op == "paged_attention":
        note = "4 queries against 2**20 cached keys in 4096 blocks of 256, window (65535, 0)"
        sizes = {"seqlens": (2**20,), "block_size": 256, "max_blocks": 4096, "num_blocks": 4096}

        def build_paged() -> Case:
            return _paged("long-decode-2p20", note, Lq=4, Hq=2, Hkv=1, D=16, Dv=8, **sizes, window=(65535, 0))

        options = _paged_options("long-decode-2p20", **sizes, window=(65535, 0))
        return [_lazy(build_paged, "long-decode-2p20", op, note, options, ("q", "k_cache", "v_cache"))]
    if op == "merge_attention_states":
        note = "4 parts at 2**20 positions, lses spread over +-30"
        build = lambda: _merge("long-2p20", note, parts=4, shape=(2**20,), Dv=8, spread=30.0)  # noqa: E731
        return [_lazy(build, "long-2p20", op, note, {}, ("outs", "lses"))]
    note = "16 target steps on 2**20 source positions, local-m D = 64"
    options = {"score": "general", "mode": "local-m", "half_width": 64}
    build = lambda: _luong("long-local-m-2p20", note, B=1, T=16, S=2**20, d=8, **options)  # noqa: E731
    return [_lazy(build, "long-local-m-2p20", op, note, options, ("h_t", "h_s", "w_a"))]
