"""Entry point of the torch backend (``attnref.backends`` group, name ``torch``).

Importing this module does not import torch: :class:`~attnref_torch.backend.TorchBackend`
imports it on first use, and reports "torch is not installed" without trying.
"""

from __future__ import annotations

import attnref
from attnref_torch.backend import TorchBackend


@attnref.hookimpl
def attnref_backends() -> list[TorchBackend]:
    """The torch backend (CPU and CUDA tensors)."""
    return [TorchBackend()]
