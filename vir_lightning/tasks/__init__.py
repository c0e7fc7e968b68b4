"""Lightning tasks: the classification module and its training utilities."""

from .classification import ImageClassifier, default_optimizer
from .min_steps import MinTrainSteps
from .prediction_writer import PredictionCSVWriter

__all__ = ["ImageClassifier", "MinTrainSteps", "PredictionCSVWriter", "default_optimizer"]
