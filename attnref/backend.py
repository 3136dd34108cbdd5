"""What a backend object is: the protocol every backend implements.

A backend computes attnref's ops on its own array type. It converts NumPy
arrays in with :meth:`Backend.asarray` and out with :meth:`Backend.to_numpy`;
everything else (the conformance suite, the benchmarks) talks to it through
those two methods and the op methods, whose names and signatures are the
reference's, without ``precision`` and ``return_weights``.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

from attnref.dtypes import DTYPE_NAMES

__all__ = ["FORWARD_OPS", "GRADIENT_OPS", "STATE_OPS", "OPS", "Backend", "backend_problems"]

#: The forward ops, by their reference names.
FORWARD_OPS: tuple[str, ...] = (
    "global_attention",
    "local_attention",
    "chunked_attention",
    "additive_attention",
    "luong_attention",
)
#: The vector-Jacobian products of the multi-head ops (contract section 6): ops like any other.
GRADIENT_OPS: tuple[str, ...] = (
    "global_attention_vjp",
    "local_attention_vjp",
    "chunked_attention_vjp",
)
#: The ops of paged KV caches and merged partial states (contract sections 9 and 10).
STATE_OPS: tuple[str, ...] = ("paged_attention", "merge_attention_states")
#: Every op a backend may implement, by its reference name.
OPS: tuple[str, ...] = FORWARD_OPS + GRADIENT_OPS + STATE_OPS


@runtime_checkable
class Backend(Protocol):
    """The protocol of a backend object.

    Attributes
    ----------
    name : str
        Unique name, e.g. ``"numpy"``.
    version : str
        Version of the backend (and, where useful, of its library).
    ops : frozenset of str
        The op names it implements (a subset of :data:`OPS`); each is a method.
    dtypes : frozenset of str
        The dtype names it supports (a subset of ``attnref.dtypes.DTYPE_NAMES``).
    unavailable_reason : str or None
        ``None`` when usable; otherwise why not (library missing, no GPU).
        May be a property that checks lazily; it must not raise.
    """

    name: str
    version: str
    ops: frozenset[str]
    dtypes: frozenset[str]

    @property
    def unavailable_reason(self) -> str | None: ...

    def asarray(self, array: Any) -> Any:
        """A NumPy array as this backend's native array, on its default device, dtype kept."""

    def to_numpy(self, array: Any) -> Any:
        """A native array back as a NumPy array, dtype kept."""


def backend_problems(obj: Any) -> list[str]:
    """What makes ``obj`` an invalid backend (an empty list if it is valid).

    Never raises: an attribute whose access raises is reported as a problem.
    ``unavailable_reason`` is looked up without being evaluated, since it may
    be a lazy probe.
    """
    problems: list[str] = []
    name = _attribute(obj, "name", problems)
    if not isinstance(name, str) or not name:
        problems.append(f"'name' must be a non-empty str, got {name!r}")
    version = _attribute(obj, "version", problems)
    if not isinstance(version, str):
        problems.append(f"'version' must be a str, got {version!r}")
    ops = _attribute(obj, "ops", problems)
    if not isinstance(ops, (set, frozenset)) or not ops <= set(OPS):
        problems.append(f"'ops' must be a set of op names from {OPS}, got {ops!r}")
    else:
        problems += [
            f"declares op {op!r} but has no method {op}()"
            for op in sorted(ops)
            if not callable(_attribute(obj, op, problems))
        ]
    dtypes = _attribute(obj, "dtypes", problems)
    if not isinstance(dtypes, (set, frozenset)) or not dtypes <= set(DTYPE_NAMES):
        problems.append(f"'dtypes' must be a set of dtype names from {DTYPE_NAMES}, got {dtypes!r}")
    for method in ("asarray", "to_numpy"):
        if not callable(_attribute(obj, method, problems)):
            problems.append(f"missing method {method}()")
    if not _has_attribute_statically(obj, "unavailable_reason"):
        problems.append("missing attribute 'unavailable_reason' (None when usable)")
    return problems


def _attribute(obj: Any, name: str, problems: list[str]) -> Any:
    """``getattr(obj, name, None)``, recording an access that raises as a problem."""
    try:
        return getattr(obj, name, None)
    except Exception as exc:  # a property of a broken backend
        problems.append(f"reading {name!r} raised {type(exc).__name__}: {exc}")
        return None


def _has_attribute_statically(obj: Any, name: str) -> bool:
    """Whether ``obj`` has ``name`` without running a property (or it resolves names dynamically)."""
    missing = object()
    return inspect.getattr_static(obj, name, missing) is not missing or hasattr(type(obj), "__getattr__")
