"""The built-in torch backend of attnref (registered through the attnref.backends entry point).

``import attnref_torch`` does not import torch; the backend imports it on first use.
"""

from attnref_torch.backend import TorchBackend

__all__ = ["TorchBackend"]
