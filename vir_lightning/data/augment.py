"""Training-time augmentations that albumentations 2.0.8 does not ship: RandAugment, MixUp and CutMix.

The ViR/H-ViR ImageNet recipe follows the DeiT-style schedule: RandAugment ``rand-m9-mstd0.5`` on every
image, then MixUp/CutMix with label smoothing on every batch. timm provides all three, but timm (and
torchvision) cannot be installed next to the CPU torch build used here, and albumentations 2.0.8 has no
equivalent. This module fills the gap with small, self-written implementations:

* :class:`RandAugment` is an ``albumentations.ImageOnlyTransform`` for uint8 numpy images (HxW, HxWx1 or
  HxWx3). It draws all of its randomness from the transform's own ``py_random`` generator, so
  ``A.Compose(..., seed=...)`` makes it reproducible and ``A.ReplayCompose`` records the sampled ops.
  The individual operations live in :data:`RAND_AUGMENT_OPS` so each one can be tested and reused alone.
* :class:`MixupCutmix` mixes a whole batch of float image tensors with its flipped copy (timm's
  ``mode="batch"``) and returns matching soft targets. It draws from torch's global RNG, so
  ``torch.manual_seed`` / Lightning's ``seed_everything`` makes it reproducible.
* :func:`smooth_one_hot` turns class indices into label-smoothed one-hot targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import field_validator

__all__ = [
    "RAND_AUGMENT_OPS",
    "SIGNED_OPS",
    "MixupCutmix",
    "RandAugment",
    "smooth_one_hot",
]

#: Largest magnitude; every op reaches its strongest setting here (timm's ``_LEVEL_DENOM``).
MAX_MAGNITUDE = 10.0
#: Largest rotation, in degrees, reached at magnitude 10.
MAX_ROTATE_DEGREES = 30.0
#: Largest shear factor, reached at magnitude 10.
MAX_SHEAR = 0.3
#: Largest translation as a fraction of the image side, reached at magnitude 10 (timm's ``translate_pct``).
MAX_TRANSLATE_FRACTION = 0.45
#: Largest deviation of the Color/Contrast/Brightness/Sharpness enhancement factor from 1.
MAX_ENHANCE_DELTA = 0.9
#: Largest value SolarizeAdd adds to dark pixels, reached at magnitude 10.
MAX_SOLARIZE_ADD = 110
#: Pixels below this value are brightened by SolarizeAdd.
SOLARIZE_ADD_THRESHOLD = 128
#: Probability with which each chosen op is actually applied (timm's RandAugment uses 0.5).
OP_PROBABILITY = 0.5

# An op maps (uint8 image, magnitude, fill) to a uint8 image of the same shape. Images reaching an op are
# always HxWxC (C = 1 or 3); RandAugment.apply takes care of the HxW case.
Op = Callable[[np.ndarray, float, int], np.ndarray]


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Round and clip a float image back to uint8 (blends can overshoot [0, 255])."""
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _blend(degenerate: np.ndarray, img: np.ndarray, factor: float) -> np.ndarray:
    """Interpolate (factor < 1) or extrapolate (factor > 1) from ``degenerate`` towards ``img``.

    This is the PIL ``ImageEnhance`` rule that Color, Contrast, Brightness and Sharpness share:
    factor 0 gives the degenerate image, factor 1 the original, factor 2 twice the difference.
    """
    out = degenerate.astype(np.float32) + factor * (img.astype(np.float32) - degenerate.astype(np.float32))
    return _to_uint8(out)


def _grayscale(img: np.ndarray) -> np.ndarray:
    """Luma of an HxWxC image as HxW uint8 (ITU-R 601, as PIL's "L" mode); HxWx1 is already gray."""
    if img.shape[2] == 1:
        return img[:, :, 0]
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _enhance_factor(magnitude: float) -> float:
    """Map a signed magnitude in [-10, 10] to an enhancement factor in [0.1, 1.9]."""
    return 1.0 + MAX_ENHANCE_DELTA * magnitude / MAX_MAGNITUDE


def _warp(img: np.ndarray, matrix: np.ndarray, fill: int, inverse: bool) -> np.ndarray:
    """Apply a 2x3 affine matrix with bilinear sampling, filling uncovered pixels with ``fill``.

    Args:
        img: HxWxC uint8 image.
        matrix: 2x3 affine matrix.
        fill: Value for pixels that map outside the source image.
        inverse: If True, ``matrix`` maps output coordinates to input coordinates (PIL's convention,
            used for shears); otherwise it maps input to output (OpenCV's default).
    """
    height, width, channels = img.shape
    flags = cv2.INTER_LINEAR | (cv2.WARP_INVERSE_MAP if inverse else 0)
    out = cv2.warpAffine(
        img,
        matrix.astype(np.float64),
        (width, height),
        flags=flags,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(fill, fill, fill, fill),
    )
    # OpenCV drops a trailing singleton channel axis; put it back so the shape round-trips.
    return out.reshape(height, width, channels)


# --------------------------------------------------------------------------------------------------------
# Operations. Each takes an HxWxC uint8 image, a magnitude and a fill value and returns a new image.
# Signed ops (see SIGNED_OPS) read the sign of the magnitude as the direction; the others expect [0, 10].
# --------------------------------------------------------------------------------------------------------


def identity(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Return the image unchanged (lets RandAugment sometimes leave an image alone)."""
    return img


def auto_contrast(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Stretch each channel linearly so that its darkest pixel becomes 0 and its brightest 255.

    Constant channels are left as they are, since there is no range to stretch. Ignores magnitude.
    """
    out = img.copy()
    for c in range(img.shape[2]):
        channel = img[:, :, c]
        low, high = int(channel.min()), int(channel.max())
        if high > low:
            lut = _to_uint8((np.arange(256, dtype=np.float32) - low) * (255.0 / (high - low)))
            out[:, :, c] = lut[channel]
    return out


def _equalize_channel(channel: np.ndarray) -> np.ndarray:
    """Histogram-equalise one uint8 channel the way PIL's ``ImageOps.equalize`` does.

    The step is the pixel count without the last occupied bin, divided over 255 levels; a pixel's new value
    is the number of pixels strictly darker than it, in steps (rounded). A channel with a single occupied
    bin has step 0 and is returned unchanged, rather than being pushed to 0 as a plain CDF map would.
    """
    hist = np.bincount(channel.ravel(), minlength=256)
    occupied = hist[hist > 0]
    step = (int(occupied.sum()) - int(occupied[-1])) // 255
    if step == 0:
        return channel
    darker = np.cumsum(hist) - hist
    lut = np.clip((darker + step // 2) // step, 0, 255).astype(np.uint8)
    return lut[channel]


def equalize(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Equalise the histogram of each channel separately. Ignores magnitude."""
    return np.stack([_equalize_channel(img[:, :, c]) for c in range(img.shape[2])], axis=2)


def invert(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Return the photographic negative ``255 - img``. Ignores magnitude."""
    return 255 - img


def rotate(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Rotate about the image centre by ``magnitude / 10 * 30`` degrees (positive = counter-clockwise)."""
    height, width = img.shape[:2]
    angle = MAX_ROTATE_DEGREES * magnitude / MAX_MAGNITUDE
    # Pixel centres run from 0 to side-1, so the geometric centre is at (side-1)/2, not side/2.
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, 1.0)
    return _warp(img, matrix, fill, inverse=False)


def posterize(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Keep only the top ``8 - int(magnitude / 10 * 4)`` bits of each pixel (8 bits at 0, 4 bits at 10)."""
    bits = 8 - int(magnitude / MAX_MAGNITUDE * 4)
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    return img & mask


def solarize(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Invert pixels at or above a threshold that falls from 256 (no change) at 0 to 0 (full negative) at 10."""
    threshold = 256 - int(magnitude / MAX_MAGNITUDE * 256)
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def solarize_add(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Add ``int(magnitude / 10 * 110)`` to pixels below 128, saturating at 255; brighter pixels stay."""
    add = int(magnitude / MAX_MAGNITUDE * MAX_SOLARIZE_ADD)
    brightened = np.minimum(img.astype(np.int16) + add, 255).astype(np.uint8)
    return np.where(img < SOLARIZE_ADD_THRESHOLD, brightened, img)


def color(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Scale saturation by ``1 + 0.9 * magnitude / 10`` by blending with the image's grayscale version.

    A grayscale image has no saturation to change, so it is returned unchanged.
    """
    if img.shape[2] != 3:
        return img
    gray = np.repeat(_grayscale(img)[:, :, None], 3, axis=2)
    return _blend(gray, img, _enhance_factor(magnitude))


def contrast(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Scale contrast by ``1 + 0.9 * magnitude / 10`` around the image's mean luma."""
    mean = int(_grayscale(img).mean() + 0.5)
    return _blend(np.full_like(img, mean), img, _enhance_factor(magnitude))


def brightness(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Scale brightness by ``1 + 0.9 * magnitude / 10`` (blend with a black image)."""
    return _blend(np.zeros_like(img), img, _enhance_factor(magnitude))


_SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0


def sharpness(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Sharpen (magnitude > 0) or blur (magnitude < 0) by blending with a 3x3 smoothed copy.

    The one-pixel border keeps its original values in the smoothed copy, so it is never changed; a
    replicated border would otherwise leak a halo into the edge pixels.
    """
    height, width, channels = img.shape
    smooth = cv2.filter2D(img.astype(np.float32), -1, _SMOOTH_KERNEL, borderType=cv2.BORDER_REPLICATE)
    smooth = smooth.reshape(height, width, channels)
    degenerate = img.astype(np.float32)
    degenerate[1:-1, 1:-1] = smooth[1:-1, 1:-1]
    return _blend(degenerate, img, _enhance_factor(magnitude))


def shear_x(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Shear horizontally: output pixel (x, y) samples input (x + s*y, y) with ``s = 0.3 * magnitude / 10``."""
    factor = MAX_SHEAR * magnitude / MAX_MAGNITUDE
    return _warp(img, np.array([[1.0, factor, 0.0], [0.0, 1.0, 0.0]]), fill, inverse=True)


def shear_y(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Shear vertically: output pixel (x, y) samples input (x, y + s*x) with ``s = 0.3 * magnitude / 10``."""
    factor = MAX_SHEAR * magnitude / MAX_MAGNITUDE
    return _warp(img, np.array([[1.0, 0.0, 0.0], [factor, 1.0, 0.0]]), fill, inverse=True)


def translate_x(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Shift right by ``0.45 * width * magnitude / 10`` pixels (left for negative magnitudes)."""
    shift = MAX_TRANSLATE_FRACTION * img.shape[1] * magnitude / MAX_MAGNITUDE
    return _warp(img, np.array([[1.0, 0.0, shift], [0.0, 1.0, 0.0]]), fill, inverse=False)


def translate_y(img: np.ndarray, magnitude: float, fill: int) -> np.ndarray:
    """Shift down by ``0.45 * height * magnitude / 10`` pixels (up for negative magnitudes)."""
    shift = MAX_TRANSLATE_FRACTION * img.shape[0] * magnitude / MAX_MAGNITUDE
    return _warp(img, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, shift]]), fill, inverse=False)


#: Name -> operation. RandAugment draws uniformly from these keys.
RAND_AUGMENT_OPS: dict[str, Op] = {
    "Identity": identity,
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "SolarizeAdd": solarize_add,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
}

#: Ops whose magnitude gets a random sign (a direction); the rest only ever see magnitudes in [0, 10].
SIGNED_OPS: frozenset[str] = frozenset(
    {"Rotate", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY"}
)

_OP_NAMES: tuple[str, ...] = tuple(RAND_AUGMENT_OPS)


# --------------------------------------------------------------------------------------------------------
# RandAugment
# --------------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    """True for Python/numpy integers but not for bools, which are ints to Python but never meant as counts."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    """True for finite Python/numpy real numbers (bools excluded)."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )


class RandAugment(A.ImageOnlyTransform):
    """RandAugment (Cubuk et al., 2020) with timm's ``rand-m{magnitude}-mstd{magnitude_std}`` semantics.

    For every image, ``num_ops`` operations are drawn uniformly with replacement from
    :data:`RAND_AUGMENT_OPS`. Each drawn op runs with probability 0.5, at a magnitude sampled from
    ``Normal(magnitude, magnitude_std)`` and clipped to [0, 10]; ops in :data:`SIGNED_OPS` also get a
    random direction. All of that is decided in :meth:`get_params` from ``self.py_random``, so
    ``A.Compose(..., seed=...)`` reproduces it and ``A.ReplayCompose`` can replay it.

    Place it before ``A.Normalize``: it expects uint8 images (HxW, HxWx1 or HxWx3, RGB order) and returns
    uint8 images of the same shape.

    Args:
        num_ops: Number of operations drawn per image (timm's ``n``, default 2).
        magnitude: Mean magnitude in [0, 10] (timm's ``m``, default 9).
        magnitude_std: Standard deviation of the per-op magnitude (timm's ``mstd``); 0 uses ``magnitude``
            exactly.
        fill: Value in [0, 255] for pixels uncovered by Rotate, Shear and Translate.
        p: Probability of applying the transform at all.

    Raises:
        ValueError: If an argument is out of range or of the wrong type.

    Example:
        >>> import albumentations as A
        >>> pipeline = A.Compose([A.RandomResizedCrop((224, 224)), RandAugment(), A.Normalize()], seed=0)
    """

    class InitSchema(BaseTransformInitSchema):
        # Annotated as Any so that pydantic does not silently coerce (e.g. 2.5 -> error text about ints,
        # True -> 1); the validators below check types and ranges and explain what is expected.
        num_ops: Any
        magnitude: Any
        magnitude_std: Any
        fill: Any

        @field_validator("num_ops")
        @classmethod
        def _check_num_ops(cls, value: Any) -> int:
            if not _is_int(value) or value < 0:
                raise ValueError(f"num_ops must be an integer >= 0, got {value!r}")
            return int(value)

        @field_validator("magnitude")
        @classmethod
        def _check_magnitude(cls, value: Any) -> float:
            if not _is_real(value) or not 0.0 <= float(value) <= MAX_MAGNITUDE:
                raise ValueError(f"magnitude must be a number in [0, {MAX_MAGNITUDE:g}], got {value!r}")
            return float(value)

        @field_validator("magnitude_std")
        @classmethod
        def _check_magnitude_std(cls, value: Any) -> float:
            if not _is_real(value) or float(value) < 0.0:
                raise ValueError(f"magnitude_std must be a finite number >= 0, got {value!r}")
            return float(value)

        @field_validator("fill")
        @classmethod
        def _check_fill(cls, value: Any) -> int:
            if not _is_int(value) or not 0 <= value <= 255:
                raise ValueError(f"fill must be an integer in [0, 255], got {value!r}")
            return int(value)

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.5,
        fill: int = 128,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.fill = fill

    def _sample_magnitude(self) -> float:
        """Draw one op's magnitude from Normal(magnitude, magnitude_std), clipped to [0, 10]."""
        if self.magnitude_std == 0.0:
            return self.magnitude
        return min(max(self.py_random.gauss(self.magnitude, self.magnitude_std), 0.0), MAX_MAGNITUDE)

    def get_params(self) -> dict[str, Any]:
        """Choose the ops for one image.

        Every draw happens here rather than in :meth:`apply`, so the chosen ops are part of the params that
        ``A.ReplayCompose`` records. The same number of draws is made whether or not an op ends up applied,
        which keeps the random stream aligned across images.

        Returns:
            ``{"ops": [(name, magnitude), ...]}``: the ops to run, in order, each with the magnitude it runs
            at (negative for a signed op drawn in the reverse direction). Ops that lost their 0.5 coin flip
            are not listed.
        """
        ops: list[tuple[str, float]] = []
        for _ in range(self.num_ops):
            name = self.py_random.choice(_OP_NAMES)
            applied = self.py_random.random() < OP_PROBABILITY
            magnitude = self._sample_magnitude()
            negate = self.py_random.random() < 0.5
            if not applied:
                continue
            if name in SIGNED_OPS and negate:
                magnitude = -magnitude
            ops.append((name, magnitude))
        return {"ops": ops}

    def apply(self, img: np.ndarray, ops: Sequence[tuple[str, float]] = (), **params: Any) -> np.ndarray:
        """Run the sampled ops on one image.

        Args:
            img: uint8 image, HxW, HxWx1 or HxWx3.
            ops: ``(name, magnitude)`` pairs from :meth:`get_params`.
            **params: Other albumentations params (``shape``, ``fill``); ``self.fill`` is used.

        Returns:
            The augmented uint8 image with the input's shape.

        Raises:
            ValueError: If the image is not uint8 or not HxW / HxWx1 / HxWx3.
        """
        if img.dtype != np.uint8:
            raise ValueError(
                f"RandAugment expects uint8 images, got dtype {img.dtype}; place it before A.Normalize/ToFloat"
            )
        if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3))):
            raise ValueError(f"RandAugment expects an HxW, HxWx1 or HxWx3 image, got shape {img.shape}")
        # The ops all work on HxWxC so that grayscale needs no special cases beyond Color.
        out = img if img.ndim == 3 else img[:, :, None]
        for name, magnitude in ops:
            out = RAND_AUGMENT_OPS[name](out, magnitude, self.fill)
        return out.reshape(img.shape)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Names of the constructor arguments, for albumentations' serialisation and ``repr``."""
        return ("num_ops", "magnitude", "magnitude_std", "fill")


# --------------------------------------------------------------------------------------------------------
# MixUp / CutMix
# --------------------------------------------------------------------------------------------------------


def _check_targets(targets: torch.Tensor, num_classes: int) -> None:
    """Raise ValueError unless ``targets`` is a 1D integer tensor of class indices in [0, num_classes)."""
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"targets must be a torch.Tensor of class indices, got {type(targets).__name__}")
    if targets.ndim != 1:
        raise ValueError(f"targets must be 1D (batch,) class indices, got shape {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must have an integer dtype, got {targets.dtype}")
    if targets.numel() > 0:
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"targets must lie in [0, {num_classes}), got values in [{low}, {high}]")


def _check_num_classes(num_classes: Any) -> None:
    if not _is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")


def _check_smoothing(smoothing: Any, name: str) -> None:
    if not _is_real(smoothing) or not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {smoothing!r}")


def smooth_one_hot(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Label-smoothed one-hot encoding.

    Every class gets ``smoothing / num_classes`` and the true class additionally ``1 - smoothing``, so
    each row sums to 1 (the convention of timm and ``torch.nn.CrossEntropyLoss(label_smoothing=...)``).

    Args:
        targets: (B,) integer class indices in [0, num_classes).
        num_classes: Number of classes K.
        smoothing: Label smoothing in [0, 1); 0 gives plain one-hot.

    Returns:
        (B, K) float32 tensor on ``targets.device``.

    Raises:
        ValueError: If an argument is invalid.
    """
    _check_num_classes(num_classes)
    _check_smoothing(smoothing, "smoothing")
    _check_targets(targets, num_classes)
    off = float(smoothing) / num_classes
    on = 1.0 - float(smoothing) + off
    out = torch.full((targets.shape[0], num_classes), off, dtype=torch.float32, device=targets.device)
    return out.scatter_(1, targets.long().unsqueeze(1), on)


class MixupCutmix:
    """Batch-wise MixUp / CutMix with label-smoothed soft targets (timm's ``Mixup(mode="batch")``).

    Each call pairs sample ``i`` with sample ``B-1-i`` (the batch flipped) and uses one mixing weight
    ``lam`` for the whole batch:

    * MixUp: ``lam ~ Beta(mixup_alpha, mixup_alpha)``, images ``lam * x + (1 - lam) * x.flip(0)``.
    * CutMix: ``lam ~ Beta(cutmix_alpha, cutmix_alpha)``; a box of about ``(1 - lam)`` of the image area
      (clipped at the image border) is pasted from ``x.flip(0)``, then ``lam`` is recomputed from the box
      actually pasted, so the targets match the pixels exactly.

    Targets become ``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))``. All randomness comes from torch's
    global RNG, so ``torch.manual_seed`` / ``lightning.seed_everything`` makes it reproducible.

    Args:
        num_classes: Number of classes K.
        mixup_alpha: Beta concentration for MixUp; 0 disables MixUp.
        cutmix_alpha: Beta concentration for CutMix; 0 disables CutMix.
        switch_prob: Probability of CutMix rather than MixUp when both are enabled.
        prob: Probability of mixing a given batch at all.
        label_smoothing: Label smoothing in [0, 1) applied to the targets, mixed or not.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> mix = MixupCutmix(num_classes=1000)
        >>> images, soft_targets = mix(images, labels)  # in training_step, before the forward pass
        >>> loss = torch.sum(-soft_targets * torch.log_softmax(model(images), dim=-1), dim=-1).mean()
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        label_smoothing: float = 0.1,
    ):
        _check_num_classes(num_classes)
        for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not _is_real(alpha) or float(alpha) < 0.0:
                raise ValueError(f"{name} must be a finite number >= 0 (0 disables it), got {alpha!r}")
        for name, probability in (("switch_prob", switch_prob), ("prob", prob)):
            if not _is_real(probability) or not 0.0 <= float(probability) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {probability!r}")
        _check_smoothing(label_smoothing, "label_smoothing")
        self.num_classes = int(num_classes)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.switch_prob = float(switch_prob)
        self.prob = float(prob)
        self.label_smoothing = float(label_smoothing)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, switch_prob={self.switch_prob}, prob={self.prob}, "
            f"label_smoothing={self.label_smoothing})"
        )

    def _choose_mode(self) -> str | None:
        """Decide, from torch's RNG, whether this batch gets "mixup", "cutmix" or nothing (None)."""
        if self.mixup_alpha == 0.0 and self.cutmix_alpha == 0.0:
            return None
        # Skip the draw when prob is 1 so the default setting consumes no extra random numbers.
        if self.prob < 1.0 and torch.rand(()).item() >= self.prob:
            return None
        if self.mixup_alpha > 0.0 and self.cutmix_alpha > 0.0:
            return "cutmix" if torch.rand(()).item() < self.switch_prob else "mixup"
        return "mixup" if self.mixup_alpha > 0.0 else "cutmix"

    @staticmethod
    def _sample_beta(alpha: float) -> float:
        return float(torch.distributions.Beta(alpha, alpha).sample().item())

    @staticmethod
    def _cutmix_box(lam: float, height: int, width: int) -> tuple[int, int, int, int]:
        """Random box covering about ``1 - lam`` of the image, clipped at the border: (y0, y1, x0, x1).

        The box has the image's aspect ratio, sides ``sqrt(1 - lam)`` times the image's, and a centre drawn
        uniformly over the image; near the border part of it falls outside and is cut off.
        """
        ratio = math.sqrt(max(1.0 - lam, 0.0))
        box_h, box_w = int(height * ratio), int(width * ratio)
        cy = int(torch.randint(0, height, ()).item())
        cx = int(torch.randint(0, width, ()).item())
        y0, x0 = cy - box_h // 2, cx - box_w // 2
        y1, x1 = y0 + box_h, x0 + box_w
        return max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch.

        Args:
            images: (B, C, H, W) floating-point tensor; not modified.
            targets: (B,) integer class indices in [0, num_classes); not modified.

        Returns:
            ``(mixed_images, soft_targets)``: images of the input's shape and dtype, and (B, num_classes)
            soft targets in the images' dtype whose rows sum to 1. When the batch is not mixed the images
            are returned as they came and the targets are the smoothed one-hot vectors.

        Raises:
            ValueError: If ``images`` is not a 4D float tensor, ``targets`` is not valid class indices, or
                their batch sizes differ.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.dtype.is_floating_point:
            if isinstance(images, torch.Tensor):
                got = f"shape {tuple(images.shape)} and dtype {images.dtype}"
            else:
                got = type(images).__name__
            raise ValueError(f"images must be a (B, C, H, W) floating-point tensor, got {got}")
        _check_targets(targets, self.num_classes)
        if images.shape[0] != targets.shape[0]:
            raise ValueError(
                f"images and targets must have the same batch size, got {images.shape[0]} and {targets.shape[0]}"
            )

        one_hot = smooth_one_hot(targets, self.num_classes, self.label_smoothing).to(images.dtype)
        mode = self._choose_mode()
        if mode is None:
            return images, one_hot

        if mode == "mixup":
            lam = self._sample_beta(self.mixup_alpha)
            mixed = images * lam + images.flip(0) * (1.0 - lam)
        else:
            lam = self._sample_beta(self.cutmix_alpha)
            height, width = images.shape[-2:]
            y0, y1, x0, x1 = self._cutmix_box(lam, height, width)
            mixed = images.clone()
            mixed[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
            # The clipped box can be smaller than asked for; the targets must describe the pixels pasted.
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)

        soft = one_hot * lam + one_hot.flip(0) * (1.0 - lam)
        return mixed, soft
