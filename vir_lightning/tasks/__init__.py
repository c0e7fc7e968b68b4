"""Lightning tasks: the classification module and its training utilities."""

from .classification import ImageClassifier, default_optimizer
from .prediction_writer import PredictionCSVWriter

__all__ = ["ImageClassifier", "PredictionCSVWriter", "default_optimizer"]
