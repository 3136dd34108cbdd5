"""An example attnref backend in its own package (see ``plugin.py``)."""

__version__ = "0.1.0"
