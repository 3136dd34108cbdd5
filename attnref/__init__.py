"""attnref: the numeric ground truth for global and local attention.

* :mod:`attnref.reference` defines every op in float64 NumPy.
* Backends (NumPy, PyTorch, CuPy, and third-party plugins) compute the same ops
  fast; :func:`list_backends` and :func:`get_backend` find them.
* :mod:`attnref.conformance` proves a backend computes what the reference defines.
"""

from attnref.errors import (
    AttnrefError,
    BackendError,
    BackendNotFoundError,
    BackendUnavailableError,
    InvalidArgumentError,
    InvalidTypeError,
    UnsupportedError,
)
from attnref.hookspecs import hookimpl
from attnref.registry import backend_statuses, get_backend, list_backends
from attnref.windows import window_from_size

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "AttnrefError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "BackendError",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "UnsupportedError",
    "hookimpl",
    "list_backends",
    "get_backend",
    "backend_statuses",
    "window_from_size",
]
