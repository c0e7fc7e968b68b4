"""Lightning tasks: the classification module and its training utilities."""

from .classification import ImageClassifier, default_optimizer
from .images_per_second import ImagesPerSecond
from .min_steps import MinTrainSteps
from .position_breakdown import ObjectPositionBreakdown
from .prediction_writer import PredictionCSVWriter

__all__ = [
    "ImageClassifier",
    "ImagesPerSecond",
    "MinTrainSteps",
    "ObjectPositionBreakdown",
    "PredictionCSVWriter",
    "default_optimizer",
]
