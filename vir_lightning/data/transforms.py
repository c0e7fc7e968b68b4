"""Albumentations pipelines for training and evaluation (uint8 HWC in, float CHW tensor out)."""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from ..checks import to_2tuple


def check_transform_options(
    mean, std, crop_scale, crop_ratio, hflip: float, color_jitter: float, random_erasing: float, eval_crop_pct: float
) -> None:
    """ValueError naming the option, for values the pipelines below would reject only when built
    (at the first ``setup``) or take without a word (a std of 0, a crop area above the whole image)."""

    def pair(name, values, low, high):
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        if len(values) != 2 or not low < values[0] <= values[1] <= high:
            upper = "" if high == float("inf") else f" <= {high:g}"
            raise ValueError(f"{name}={list(values)}: expected [low, high] with {low:g} < low <= high{upper}")

    pair("crop_scale", crop_scale, 0.0, 1.0)  # fractions of the image's area
    pair("crop_ratio", crop_ratio, 0.0, float("inf"))
    for name, value in (("hflip", hflip), ("random_erasing", random_erasing)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name}={value}: expected a probability in [0, 1]")
    if not color_jitter >= 0:
        raise ValueError(f"color_jitter={color_jitter}: expected a strength >= 0")
    if not 0 < eval_crop_pct <= 1:
        raise ValueError(f"eval_crop_pct={eval_crop_pct}: expected a fraction in (0, 1]")
    if not all(s > 0 for s in std):
        raise ValueError(f"std={list(std)}: every value must be positive (pixels are divided by it)")
    if not mean or not std:
        raise ValueError("mean and std need at least one value (one per channel, or one for all)")


def build_train_transform(
    img_size,
    mean,
    std,
    in_chans: int,
    crop_scale=(0.08, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: float = 0.4,
    rand_augment: dict | None = None,
    random_erasing: float = 0.25,
) -> A.Compose:
    """RandomResizedCrop (bicubic) → flip → [RandAugment | colour jitter] → normalise → erase → tensor.

    As in the DeiT recipe, colour jitter is skipped when RandAugment is on (it already jitters).
    """
    height, width = to_2tuple(img_size)
    ops: list = [
        A.RandomResizedCrop(
            size=(height, width), scale=tuple(crop_scale), ratio=tuple(crop_ratio), interpolation=cv2.INTER_CUBIC
        )
    ]
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    if rand_augment:
        from .augment import RandAugment  # imported lazily: only recipes that use it pay for it

        ops.append(RandAugment(**rand_augment))
    elif color_jitter > 0:
        if in_chans == 1:  # saturation/hue mean nothing for one channel
            ops.append(A.RandomBrightnessContrast(color_jitter, color_jitter, p=1.0))
        else:
            ops.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, hue=0.0, p=1.0))
    ops.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    if random_erasing > 0:
        ops.append(A.Erasing(p=random_erasing, fill=0))  # 0 after normalisation = the mean colour
    ops.append(ToTensorV2())
    return A.Compose(ops)


def build_eval_transform(img_size, mean, std, crop_pct: float = 0.875) -> A.Compose:
    """Resize the shorter side to size / crop_pct (bicubic), centre crop, normalise."""
    height, width = to_2tuple(img_size)
    resize_to = round(max(height, width) / crop_pct)
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=resize_to, interpolation=cv2.INTER_CUBIC),
            A.CenterCrop(height, width),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )
