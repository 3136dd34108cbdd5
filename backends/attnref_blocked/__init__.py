"""Blocked attention for any NumPy-like array namespace, shared by the NumPy and CuPy backends.

Written once against a namespace ``xp`` (``numpy``, ``cupy``; anything whose
functions and operators follow NumPy's), so that no backend imports another's
internals:

- :mod:`attnref_blocked.plan`: how a call is cut into tasks (query blocks and
  their key ranges, from the op's :class:`~attnref.patterns.Pattern`);
- :mod:`attnref_blocked.numerics`: the one masked softmax and the one weighted
  sum of the blocked code (masking selects);
- :mod:`attnref_blocked.blocks`: a task's masked scores and allowed mask;
- :mod:`attnref_blocked.forward` and :mod:`attnref_blocked.backward`: the
  multi-head ops and their vector-Jacobian products (FlashAttention-2's
  blocked backward);
- :mod:`attnref_blocked.pooling`: the attention pooling ops;
- :mod:`attnref_blocked.threads`: running a call's tasks on worker threads
  that end with the call;
- :mod:`attnref_blocked.backend`: :class:`ArrayBackend`, the op methods a
  backend binds to its namespace.
"""

from __future__ import annotations

from attnref_blocked.backend import ArrayBackend
from attnref_blocked.plan import BlockConfig

__all__ = ["ArrayBackend", "BlockConfig"]
