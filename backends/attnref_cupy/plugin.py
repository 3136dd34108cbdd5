"""Entry point of the built-in CuPy backend (group ``attnref.backends``).

The backend is always listed; without CuPy or a CUDA device it reports itself
unavailable with the reason, and importing this module never imports CuPy.
"""

from __future__ import annotations

import attnref
from attnref_cupy.backend import CupyBackend


@attnref.hookimpl
def attnref_backends() -> list[CupyBackend]:
    """The CuPy backend (available only with CuPy and a CUDA device)."""
    return [CupyBackend()]
