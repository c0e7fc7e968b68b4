"""vir_lightning: Vision Retention Networks (ViR) with exact parallel, recurrent and chunkwise modes."""

from .deploy import from_pretrained, save_pretrained
from .models import create_model, list_models
from .retention import retention

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "from_pretrained", "list_models", "retention", "save_pretrained"]
