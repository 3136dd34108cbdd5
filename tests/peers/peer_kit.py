"""Helpers of the peer tests: importing a peer or skipping, one-node ONNX models, the example backends.

Every test in this folder runs the installed peer library itself (JAX, ONNX's
reference evaluator, onnxruntime, PyTorch) and skips with a reason where it is
absent. ``make peers`` installs them (the ``peers`` extra) and runs the folder.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
INSTALL_HINT = "install the peers with `make peers` (pip install -e '.[peers]')"


def need(module: str) -> ModuleType:
    """Import ``module`` or skip the test, saying how to install it."""
    return pytest.importorskip(module, reason=f"{module} is not installed; {INSTALL_HINT}")


def to_bhld(array: Any) -> np.ndarray:
    """A ``(B, L, H, D)`` array (JAX's layout) as attnref's ``(B, H, L, D)``, in float64."""
    return np.swapaxes(np.asarray(array, dtype=np.float64), 1, 2)


def rows_with_nan(out: np.ndarray) -> list[bool]:
    """For a ``(B, H, L, D)`` output: which rows ``i`` of batch 0, head 0 hold a NaN."""
    return np.isnan(out[0, 0]).any(axis=-1).tolist()


# -- ONNX ------------------------------------------------------------------------
def attention_model(
    inputs: list[tuple[str, int]], outputs: list[tuple[str, int]], *, opset: int = 23, **attributes: Any
) -> Any:
    """A one-node model with the ONNX ``Attention`` op.

    ``inputs``/``outputs`` are ``(name, TensorProto element type)`` in the op's
    order; an empty name skips an optional slot.
    """
    from onnx import helper

    node = helper.make_node("Attention", [n for n, _ in inputs], [n for n, _ in outputs], **attributes)
    graph = helper.make_graph(
        [node],
        "peer",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs if n],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs if n],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10  # onnx 1.23 writes a newer IR version by default than onnxruntime 1.30 loads
    return model


def qkv_model(*, mask: int | None = None, dtype: int | None = None, opset: int = 23, **attributes: Any) -> Any:
    """``Attention(Q, K, V[, attn_mask]) -> Y``, every tensor of ``dtype`` (float32 by default)."""
    from onnx import TensorProto

    elem = TensorProto.FLOAT if dtype is None else dtype
    inputs = [("Q", elem), ("K", elem), ("V", elem)] + ([] if mask is None else [("M", mask)])
    return attention_model(inputs, [("Y", elem)], opset=opset, **attributes)


def onnx_reference(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of ONNX's own reference implementation (``onnx.reference``)."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def onnxruntime_run(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of onnxruntime's CPU kernels (its errors raise)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # a rejected model raises; no console noise
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# -- the example backends ----------------------------------------------------------
def example_plugin(folder: str, module: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The plugin module of an example package in ``docs/examples``, imported from its source folder."""
    monkeypatch.syspath_prepend(str(EXAMPLES / folder))
    package = module.partition(".")[0]
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)  # an installed copy must not shadow the source
    return importlib.import_module(module)
