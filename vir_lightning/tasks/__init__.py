"""Lightning tasks: the classification module and its training utilities."""

from .classification import ImageClassifier, default_optimizer
from .min_steps import MinTrainSteps
from .position_breakdown import ObjectPositionBreakdown
from .prediction_writer import PredictionCSVWriter

__all__ = ["ImageClassifier", "MinTrainSteps", "ObjectPositionBreakdown", "PredictionCSVWriter", "default_optimizer"]
