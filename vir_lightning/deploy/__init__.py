"""Models that leave the project: pretrained folders (safetensors) and ONNX graphs.

Nothing here is needed to train; the ONNX parts import ``onnx``/``onnxruntime`` only when used
(the ``deploy`` extra).
"""

from .pretrained import from_pretrained, read_pretrained_config, save_pretrained

__all__ = ["from_pretrained", "read_pretrained_config", "save_pretrained"]
