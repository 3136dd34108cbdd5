"""An attnref backend running the ONNX ``Attention`` op in onnxruntime (see ``plugin.py``)."""

__version__ = "0.1.0"
