"""Model families. Pure PyTorch: no Lightning, OpenMMLab or distribution code in here."""

from .blocks import RetentionBlock
from .registry import create_model, list_models, register_model
from .retention_layer import MultiHeadRetention
from .vir import ARCH_ZOO, VisionRetention

__all__ = [
    "ARCH_ZOO",
    "MultiHeadRetention",
    "RetentionBlock",
    "VisionRetention",
    "create_model",
    "list_models",
    "register_model",
]
