"""Entry point of the built-in NumPy backend (group ``attnref.backends``)."""

from __future__ import annotations

import attnref
from attnref_numpy.backend import NumpyBackend


@attnref.hookimpl
def attnref_backends() -> list[NumpyBackend]:
    """The NumPy backend (always available: NumPy is a dependency of attnref)."""
    return [NumpyBackend()]
