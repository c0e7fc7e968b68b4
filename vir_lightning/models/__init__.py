"""Model families. Pure PyTorch: no Lightning, OpenMMLab or distribution code in here."""

from . import vit  # noqa: F401  (registers the vit_* baselines)
from .attention import MultiHeadAttention
from .blocks import RetentionBlock
from .hvir import ARCH_ZOO as HVIR_ARCH_ZOO
from .hvir import HybridViR
from .registry import UnknownOptionError, create_model, list_models, register_model
from .retention_layer import MultiHeadRetention, RetentionModeMixin
from .vir import ARCH_ZOO, VisionRetention

__all__ = [
    "ARCH_ZOO",
    "HVIR_ARCH_ZOO",
    "HybridViR",
    "MultiHeadAttention",
    "MultiHeadRetention",
    "RetentionBlock",
    "RetentionModeMixin",
    "UnknownOptionError",
    "VisionRetention",
    "create_model",
    "list_models",
    "register_model",
]
