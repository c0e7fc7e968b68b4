"""vir_lightning: Vision Retention Networks (ViR) with exact parallel, recurrent and chunkwise modes."""

from .models import create_model, list_models
from .retention import retention

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "retention"]
