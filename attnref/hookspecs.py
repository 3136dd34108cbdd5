"""The plugin hook through which every backend, built-in or third-party, registers.

A plugin is a module (or object) named by an entry point of the group
``attnref.backends`` that implements :func:`attnref_backends`. A complete
plugin package, ``my_attn``, with a ``pyproject.toml`` holding::

    [project.entry-points."attnref.backends"]
    my_attn = "my_attn.plugin"

and ``my_attn/plugin.py``::

    import numpy as np
    import attnref
    from attnref.reference import global_attention


    class MyBackend:
        name = "my_attn"
        version = "0.1.0"
        ops = frozenset({"global_attention"})
        dtypes = frozenset({"float32", "float64"})
        unavailable_reason = None  # or a str saying why it cannot run here

        def asarray(self, array):
            return np.asarray(array)

        def to_numpy(self, array):
            return np.asarray(array)

        def global_attention(self, q, k, v, *, causal=False, scale=None, softcap=None,
                             bias=None, mask=None, kv_lengths=None, q_lengths=None,
                             align="bottom_right", return_lse=False):
            ...  # your kernel; validate with attnref.validation.check_attention


    @attnref.hookimpl
    def attnref_backends():
        return [MyBackend()]

After ``pip install``, ``attnref backends`` lists it and ``attnref conform
--backend my_attn`` checks it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pluggy

__all__ = ["PROJECT", "ENTRY_POINT_GROUP", "hookspec", "hookimpl", "attnref_backends"]

#: pluggy project name; markers below belong to it.
PROJECT = "attnref"
#: The entry-point group plugins register under.
ENTRY_POINT_GROUP = "attnref.backends"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Mark a plugin's hook implementation (re-exported as ``attnref.hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def attnref_backends() -> Iterable[Any]:
    """Return the backend objects this plugin provides.

    Each object follows :class:`attnref.backend.Backend`. Keep this cheap:
    import heavy libraries (torch, cupy) only when an op first runs, and report
    a missing runtime through the backend's ``unavailable_reason`` instead of
    raising.
    """
