"""The float64 reference: the definition of every attnref op.

Plain NumPy, formulas in the docstrings. The multi-head ops (global, local,
chunked) are defined together in :mod:`attnref.reference.multihead`; every
other op has a module of its own. Backends are checked against these
functions; they are not built for speed.
"""

from attnref.reference.additive_attention import additive_attention
from attnref.reference.gradients import chunked_attention_vjp, global_attention_vjp, local_attention_vjp
from attnref.reference.luong_attention import luong_attention
from attnref.reference.merge_attention_states import merge_attention_states
from attnref.reference.multihead import chunked_attention, global_attention, local_attention
from attnref.reference.paged_attention import paged_attention

__all__ = [
    "global_attention",
    "local_attention",
    "chunked_attention",
    "paged_attention",
    "merge_attention_states",
    "additive_attention",
    "luong_attention",
    "global_attention_vjp",
    "local_attention_vjp",
    "chunked_attention_vjp",
]
