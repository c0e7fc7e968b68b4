"""Data modules for image classification (albumentations pipelines, seeded and resumable)."""

from .base import ClassificationDataModule
from .cluttered_fashion_mnist import ClutteredFashionMNISTDataModule
from .fashion_mnist import FashionMNISTDataModule
from .image_folder import ImageFolderDataModule

__all__ = [
    "ClassificationDataModule",
    "ClutteredFashionMNISTDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
]
