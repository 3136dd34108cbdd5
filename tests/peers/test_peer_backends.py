"""The two outside backends of ``docs/examples`` (``attnref-jax``, ``attnref-onnxruntime``).

Without their libraries: each is a well-formed backend that reports what is
missing. With them: representative conformance cases pass, the features the
library lacks raise ``attnref.UnsupportedError``, and every entry of each
package's ``xfails.txt`` names a case that really fails (so the list is neither
stale nor hiding a pass). When the packages are installed (``make peers``),
their entry points register them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from peer_kit import EXAMPLES, INSTALL_HINT, example_plugin, need

import attnref
from attnref.backend import backend_problems
from attnref.conformance.cases import catalogue
from attnref.conformance.pytest_plugin import read_xfails
from attnref.conformance.runner import ReferenceCache, run_case

PACKAGES = {  # backend name: (folder, plugin module, libraries it needs)
    "jax": ("attnref-jax", "attnref_jax.plugin", ("jax",)),
    "onnxruntime": ("attnref-onnxruntime", "attnref_onnxruntime.plugin", ("onnx", "onnxruntime")),
}
#: Cases that exercise each translation the backends make (alignment, windows, chunks, lengths, masks, bias).
REPRESENTATIVE = {
    "global_attention": ("basic", "lq-gt-lk-bottom-right", "lq-lt-lk-top-left", "gqa", "mask-per-head",
                         "kv-lengths-partial", "q-kv-lengths", "bias-broadcast-heads", "error-mask-shape"),
    "local_attention": ("window-asym-lq-lt-lk", "window-left-unbounded", "window-wider", "window-causal-sliding",
                        "q-kv-lengths-top-left"),
    "chunked_attention": ("chunk-not-dividing", "chunk-causal-kv-lengths", "lq-gt-lk-causal-bottom-right"),
}  # fmt: skip
CACHE = ReferenceCache()


def _backend(name: str, monkeypatch: pytest.MonkeyPatch):
    folder, module, _ = PACKAGES[name]
    return example_plugin(folder, module, monkeypatch).attnref_backends()[0]


def _runnable(name: str, monkeypatch: pytest.MonkeyPatch):
    for library in PACKAGES[name][2]:
        need(library)
    return _backend(name, monkeypatch)


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_the_backend_is_well_formed_without_its_library(name, monkeypatch):
    backend = _backend(name, monkeypatch)
    assert backend_problems(backend) == []
    assert backend.name == name and backend.version.startswith("0.1.0")


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_a_missing_library_makes_it_unavailable_with_the_reason(name, monkeypatch):
    backend = _backend(name, monkeypatch)
    library = PACKAGES[name][2][-1]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == library else real(n, *a))
    assert f"{library}" in backend.unavailable_reason and "pip install" in backend.unavailable_reason


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_representative_cases_pass_in_float32(name, monkeypatch):
    backend = _runnable(name, monkeypatch)
    cases = {c.key: c for c in catalogue(sorted(backend.ops), 0, 0)}
    keys = [f"{op}/{case}" for op, ids in REPRESENTATIVE.items() for case in ids]
    results = [run_case(backend, cases[key], "float32", CACHE) for key in keys]
    assert [f"{r.key}: {r.status} {r.detail}" for r in results if r.status != "pass"] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_every_xfail_entry_names_cases_that_fail(name, monkeypatch):
    backend = _runnable(name, monkeypatch)
    folder, module, _ = PACKAGES[name]
    entries = read_xfails(EXAMPLES / folder / module.partition(".")[0] / "xfails.txt")
    assert entries, "an empty xfail file: remove it, or list the real mismatches"
    cases = catalogue(sorted(backend.ops), 0, 0)
    for entry in entries:
        op_case, _, dtype = entry.pattern.rpartition("/")
        dtype = "float32" if dtype == "*" else dtype
        chosen = [c for c in cases if entry.matches(f"{c.key}/{dtype}")][:2]  # two cases per entry keep it quick
        assert chosen, f"{entry.pattern} matches no case"
        statuses = {run_case(backend, c, dtype, CACHE).status for c in chosen}
        assert statuses == {"fail"}, f"{entry.pattern} ({op_case}, {dtype}): {statuses}"


def test_jax_declares_softcap_and_a_value_head_size_of_its_own_unsupported(monkeypatch):
    backend = _runnable("jax", monkeypatch)
    q = backend.asarray(np.ones((1, 1, 3, 4), dtype=np.float32))
    with pytest.raises(attnref.UnsupportedError, match="softcap"):
        backend.global_attention(q, q, q, softcap=5.0)
    v = backend.asarray(np.ones((1, 1, 3, 6), dtype=np.float32))
    with pytest.raises(attnref.UnsupportedError, match="value_dim"):
        backend.global_attention(q, q, v)


def test_jax_float64_stays_float64_without_turning_on_64_bit_mode_for_the_process(monkeypatch):
    jax = need("jax")
    backend = _runnable("jax", monkeypatch)
    before = bool(jax.config.jax_enable_x64)
    q = backend.asarray(np.ones((1, 1, 3, 4)))
    out, lse = backend.local_attention(q, q, q, window=(1, 0), return_lse=True)
    assert backend.to_numpy(out).dtype == np.float64 and backend.to_numpy(lse).dtype == np.float64
    assert bool(jax.config.jax_enable_x64) == before


def test_jax_rows_with_no_allowed_key_give_zero_and_minus_infinity(monkeypatch):
    """JAX returns the mean of V and lse -2.4e38 there; the backend gives attnref's values."""
    backend = _runnable("jax", monkeypatch)
    rng = np.random.default_rng(5)
    q, k, v = (backend.asarray(rng.standard_normal((1, 1, n, 4)).astype(np.float32)) for n in (5, 3, 3))
    out, lse = backend.global_attention(q, k, v, causal=True, return_lse=True)  # Lq > Lk: rows 0, 1 see nothing
    assert backend.to_numpy(out)[0, 0, :2].tolist() == [[0.0] * 4] * 2
    assert backend.to_numpy(lse)[0, 0, :2].tolist() == [-np.inf, -np.inf]


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_the_installed_package_registers_through_the_entry_point(name):
    installed = {ep.name for ep in importlib.metadata.entry_points(group="attnref.backends")}
    if name not in installed:
        pytest.skip(f"the example package for {name} is not installed; {INSTALL_HINT}")
    assert name in attnref.list_backends()


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_sinks_and_packed_sequences_are_declared_unsupported(name, monkeypatch):
    backend = _runnable(name, monkeypatch)
    q = backend.asarray(np.ones((1, 2, 3, 4), dtype=np.float32))
    with pytest.raises(attnref.UnsupportedError, match="sinks"):
        backend.global_attention(q, q, q, sinks=backend.asarray(np.zeros(2, dtype=np.float32)))
    packed = backend.asarray(np.ones((3, 2, 4), dtype=np.float32))
    with pytest.raises(attnref.UnsupportedError, match="cu_seqlens_q"):
        backend.local_attention(packed, packed, packed, window=(1, 0), cu_seqlens_q=[0, 3], cu_seqlens_k=[0, 3])
    with pytest.raises(ValueError, match="cu_seqlens_k"):  # invalid input is still the reference's error
        backend.local_attention(packed, packed, packed, window=(1, 0), cu_seqlens_q=[0, 3])


def test_registering_them_imports_none_of_their_libraries():
    """The hooks stay cheap: version and availability come from package metadata, not from importing JAX or ONNX."""
    installed = {ep.name for ep in importlib.metadata.entry_points(group="attnref.backends")}
    if not set(PACKAGES) <= installed:
        pytest.skip(f"the example packages are not installed; {INSTALL_HINT}")
    code = (
        "import json, sys, attnref\n"
        "statuses = [(s.backend, s.state) for s in attnref.backend_statuses()]\n"
        "print(json.dumps({'loaded': sorted(m for m in ('jax', 'onnx', 'onnxruntime') if m in sys.modules),"
        " 'statuses': statuses}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["loaded"] == []
    states = {name: state for name, state in report["statuses"] if name in PACKAGES}
    assert states == dict.fromkeys(PACKAGES, "available")
