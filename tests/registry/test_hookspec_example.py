"""The example plugin in ``attnref.hookspecs``'s docstring is complete and works."""

from __future__ import annotations

import inspect
import re
import textwrap
import types

import numpy as np
import pytest
from plugin_kit import registry

import attnref
from attnref import hookspecs, reference
from attnref.backend import Backend, backend_problems
from attnref.registry import PluginSource


def _literal_block(after: str) -> str:
    """The ``::`` literal block of the module docstring that follows the text ``after``."""
    doc = hookspecs.__doc__
    assert doc is not None
    start = doc.index(after)
    start = doc.index("::\n", start) + 3
    lines = []
    for line in doc[start:].splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip() + "\n"


@pytest.fixture
def example_module() -> types.ModuleType:
    module = types.ModuleType("my_attn.plugin")
    exec(compile(_literal_block("``my_attn/plugin.py``"), "my_attn/plugin.py", "exec"), module.__dict__)
    return module


def test_the_pyproject_snippet_uses_the_entry_point_group():
    snippet = _literal_block("``pyproject.toml``").splitlines()
    assert snippet == [f'[project.entry-points."{hookspecs.ENTRY_POINT_GROUP}"]', 'my_attn = "my_attn.plugin"']


def test_the_example_plugin_registers_and_runs(example_module):
    reg = registry(PluginSource("my_attn", "docstring: my_attn.plugin", lambda: example_module))
    assert reg.names() == ["my_attn"]
    [status] = reg.statuses()
    assert (status.state, status.version, status.ops) == ("available", "0.1.0", ("global_attention",))
    backend = reg.get("my_attn")
    assert isinstance(backend, Backend)
    assert backend_problems(backend) == []

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 5, 4)).astype(np.float32) for _ in range(3))
    out, lse = backend.global_attention(backend.asarray(q), backend.asarray(k), backend.asarray(v), return_lse=True)
    ref_out, ref_lse = reference.global_attention(q, k, v, return_lse=True)
    assert out.dtype == lse.dtype == np.float32
    np.testing.assert_array_equal(backend.to_numpy(out), ref_out.astype(np.float32))
    np.testing.assert_array_equal(backend.to_numpy(lse), ref_lse.astype(np.float32))
    causal = backend.global_attention(q, k, v, causal=True, align="top_left")
    ref_causal = reference.global_attention(q, k, v, causal=True, align="top_left")
    np.testing.assert_array_equal(causal, ref_causal.astype(np.float32))


def test_the_example_signature_is_the_references_minus_precision_and_weights(example_module):
    ours = inspect.signature(example_module.MyBackend.global_attention).parameters
    ref = inspect.signature(reference.global_attention).parameters
    expected = [n for n in ref if n not in ("precision", "return_weights")]
    assert list(ours)[1:] == expected  # [0] is self
    assert all(ours[n].default == ref[n].default for n in expected)


def test_hookimpl_is_public_and_the_hook_takes_no_arguments():
    assert attnref.hookimpl is hookspecs.hookimpl
    assert list(inspect.signature(hookspecs.attnref_backends).parameters) == []
    assert re.fullmatch(r"[a-z_]+\.[a-z_]+", hookspecs.ENTRY_POINT_GROUP)
