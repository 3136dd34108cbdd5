"""The float64 reference: the definition of every attnref op.

One public function per module, plain NumPy, formulas in the docstrings.
Backends are checked against these functions; they are not built for speed.
"""

from attnref.reference.additive_attention import additive_attention
from attnref.reference.chunked_attention import chunked_attention
from attnref.reference.global_attention import global_attention
from attnref.reference.gradients import chunked_attention_vjp, global_attention_vjp, local_attention_vjp
from attnref.reference.local_attention import local_attention
from attnref.reference.luong_attention import luong_attention

__all__ = [
    "global_attention",
    "local_attention",
    "chunked_attention",
    "additive_attention",
    "luong_attention",
    "global_attention_vjp",
    "local_attention_vjp",
    "chunked_attention_vjp",
]
