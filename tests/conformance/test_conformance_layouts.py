"""The layout cases really hand over the memory layouts they name, with the same values."""

from __future__ import annotations

import numpy as np
import pytest
from planted import ToyBackend

from attnref.conformance.cases import catalogue
from attnref.conformance.layouts import LAYOUTS, native_layout


class _NumPy:
    asarray = staticmethod(np.array)


def _sample(ndim: int = 4) -> np.ndarray:
    shape = (2, 3, 5, 4)[:ndim] if ndim == 4 else (2, 5, 4)
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("ndim", [3, 4])
def test_every_layout_keeps_the_values(layout: str, ndim: int) -> None:
    a = _sample(ndim)
    if layout == "broadcast":
        a = np.broadcast_to(a[:1], a.shape).copy()
    native = native_layout(_NumPy(), a, layout)
    np.testing.assert_array_equal(native, a)
    assert native.dtype == a.dtype


def test_each_layout_has_its_memory_form() -> None:
    a = _sample()
    transposed = native_layout(_NumPy(), a, "transposed")
    assert not transposed.flags.c_contiguous and transposed.strides[1] < transposed.strides[2]
    assert native_layout(_NumPy(), a, "sliced").strides[-1] == 2 * a.itemsize
    assert native_layout(_NumPy(), a, "negative-strides").strides[2] < 0
    assert native_layout(_NumPy(), np.broadcast_to(a[:1], a.shape).copy(), "broadcast").strides[0] == 0
    assert not native_layout(_NumPy(), a, "readonly").flags.writeable
    fortran = native_layout(_NumPy(), a, "fortran")
    assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous
    with pytest.raises(ValueError, match="equal across its first axis"):
        native_layout(_NumPy(), a, "broadcast")


def test_torch_layouts_through_array_api_compat() -> None:
    torch = pytest.importorskip("torch")
    a = _sample()

    class _Torch:
        asarray = staticmethod(torch.from_numpy)

    for layout in LAYOUTS:
        values = np.broadcast_to(a[:1], a.shape).copy() if layout == "broadcast" else a
        native = native_layout(_Torch(), values, layout)
        assert isinstance(native, torch.Tensor)
        np.testing.assert_array_equal(native.numpy(), values)
    assert not native_layout(_Torch(), a, "transposed").is_contiguous()
    assert native_layout(_Torch(), np.broadcast_to(a[:1], a.shape).copy(), "broadcast").stride()[0] == 0


def test_every_multihead_op_has_layout_cases_in_every_layout() -> None:
    for op in ("global_attention", "local_attention", "chunked_attention"):
        used = {layout for c in catalogue([op], examples=0) for layout in c.layouts.values()}
        assert used == set(LAYOUTS), op


def test_the_toy_kernel_passes_every_layout_case_in_every_dtype() -> None:
    from attnref.conformance.runner import run_case

    cases = [c for c in catalogue(examples=0) if c.layouts]
    results = [run_case(ToyBackend(), c, d) for c in cases for d in ("float16", "bfloat16", "float32", "float64")]
    assert all(r.status == "pass" for r in results), [(r.key, r.detail) for r in results if r.status != "pass"]
