"""The plugin hook through which every backend, built-in or third-party, registers.

A plugin is a module (or object) named by an entry point of the group
``attnref.backends`` that implements :func:`attnref_backends`. A complete
plugin package, ``my_attn``, with a ``pyproject.toml`` holding::

    [project.entry-points."attnref.backends"]
    my_attn = "my_attn.plugin"

and ``my_attn/plugin.py``::

    import numpy as np

    import attnref
    from attnref import reference


    class MyBackend:  # global attention in float32 and float64
        name = "my_attn"
        version = "0.1.0"
        ops = frozenset({"global_attention"})
        dtypes = frozenset({"float32", "float64"})
        # None when usable, else why not. If the check needs a heavy library,
        # make this a property that imports it on first use.
        unavailable_reason = None

        def asarray(self, array):
            return np.asarray(array)

        def to_numpy(self, array):
            return np.asarray(array)

        def global_attention(self, q, k, v, *, causal=False, scale=None, softcap=None,
                             bias=None, mask=None, kv_lengths=None, q_lengths=None,
                             align="bottom_right", return_lse=False, sinks=None,
                             cu_seqlens_q=None, cu_seqlens_k=None):
            # Your kernel goes here (validate first with
            # attnref.validation.check_attention). This one rounds the
            # float64 reference to the input dtype.
            result = reference.global_attention(
                q, k, v, causal=causal, scale=scale, softcap=softcap, bias=bias,
                mask=mask, kv_lengths=kv_lengths, q_lengths=q_lengths, align=align,
                return_lse=return_lse, sinks=sinks, cu_seqlens_q=cu_seqlens_q,
                cu_seqlens_k=cu_seqlens_k)
            if return_lse:
                return tuple(x.astype(q.dtype) for x in result)
            return result.astype(q.dtype)


    @attnref.hookimpl
    def attnref_backends():
        return [MyBackend()]

After ``pip install``, ``attnref backends`` lists it and ``attnref conform
--backend my_attn`` checks it.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from attnref.backend import Backend

__all__ = ["PROJECT", "ENTRY_POINT_GROUP", "hookspec", "hookimpl", "attnref_backends"]

#: pluggy project name; markers below belong to it.
PROJECT = "attnref"
#: The entry-point group plugins register under.
ENTRY_POINT_GROUP = "attnref.backends"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Mark a plugin's hook implementation (re-exported as ``attnref.hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def attnref_backends() -> Iterable[Backend]:
    """Return the backend objects this plugin provides.

    Each object follows :class:`attnref.backend.Backend`; backend names must be
    unique across all installed plugins. Keep this cheap and side-effect free:
    import heavy libraries (torch, cupy) only when an op first runs, report a
    missing runtime through the backend's ``unavailable_reason`` instead of
    raising, and do not query the registry from here. Returning an empty list
    is allowed (``attnref backends`` then shows the plugin as loaded with no
    backend).
    """
