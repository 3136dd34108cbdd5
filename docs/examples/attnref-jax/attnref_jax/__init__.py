"""An attnref backend wrapping ``jax.nn.dot_product_attention`` (see ``plugin.py``)."""

__version__ = "0.1.0"
