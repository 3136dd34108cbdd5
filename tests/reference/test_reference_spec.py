"""The reference reads like a spec: one definition, written out, with nothing hidden.

The three multi-head ops are written out in full (no docstring assembled by
string replacement), so this checks that the parameters they share are
documented and defaulted identically, and that the reference needs no
optional dependency at import.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys

from attnref.reference import chunked_attention, global_attention, local_attention, multihead

OPS = (global_attention, local_attention, chunked_attention)
OWN = {"causal", "window", "chunk_size"}  # each op's pattern arguments


def _parameter_entries(doc: str) -> dict[str, str]:
    """``name -> entry text`` of a NumPy-style Parameters section."""
    section = doc.split("Parameters\n    ----------\n", 1)[1].split("\n    Returns\n", 1)[0]
    entries = re.split(r"\n    (?=\S)", "\n" + section)
    return {e.split(" : ")[0].strip(): e for e in entries if e.strip()}


def test_shared_parameters_are_documented_identically() -> None:
    entries = [_parameter_entries(op.__doc__ or "") for op in OPS]
    shared = [{n: e for n, e in d.items() if n not in OWN} for d in entries]
    assert shared[0] == shared[1] == shared[2]
    assert {"q", "k", "v", "sinks", "cu_seqlens_q, cu_seqlens_k", "precision"} <= set(shared[0])
    for op, d in zip(OPS, entries, strict=True):  # and every argument has an entry
        documented = {n for entry in d for n in entry.split(", ")}
        assert documented == set(inspect.signature(op).parameters), op.__name__


def test_shared_keyword_arguments_have_one_order_and_one_default() -> None:
    signatures = [
        [(p.name, p.default) for p in inspect.signature(op).parameters.values() if p.name not in OWN] for op in OPS
    ]
    assert signatures[0] == signatures[1] == signatures[2]
    assert [name for name, _ in signatures[0]][-5:] == [
        "sinks", "cu_seqlens_q", "cu_seqlens_k", "return_weights", "precision",
    ]  # fmt: skip


def test_the_steps_are_numbered_in_the_module_docstring() -> None:
    doc = multihead.__doc__ or ""
    assert [int(n) for n in re.findall(r"^    (\d)\. ", doc, flags=re.M)] == [1, 2, 3, 4, 5, 6, 7]


def test_the_reference_imports_no_optional_dependency() -> None:
    optional = ("hypothesis", "torch", "cupy", "pytest")
    probe = (
        "import json, sys\nimport attnref.reference, attnref.validation, attnref.patterns\n"
        f"print(json.dumps([m for m in {optional!r} if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_non_finite_data_is_computed_without_warnings() -> None:
    """NaN and inf are data (contract section 1): no RuntimeWarning on the way (an inf score plus a -inf bias)."""
    import warnings

    import numpy as np

    from attnref.reference import merge_attention_states, paged_attention

    q = np.full((1, 1, 2, 1), np.inf)
    k = v = np.ones((1, 1, 2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = global_attention(q, k, v, bias=np.full((1, 1, 2, 2), -np.inf), sinks=np.array([np.nan]))
        merge_attention_states(np.full((2, 1, 1), np.nan), np.array([[np.inf], [-np.inf]]))
        paged_attention(q, np.ones((1, 2, 1, 1)), np.full((1, 2, 1, 1), np.inf), block_table=[[0]], cache_seqlens=[2])
    assert np.isnan(out).all()
