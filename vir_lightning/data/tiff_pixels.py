"""What a TIFF's samples mean: its photometric interpretation, bit depth and sample format, turned
into gray, RGB or RGBA pixels with a known full-scale value — or one refusal naming the file and
what is unsupported. Never a silent guess: a CMYK file read as RGB, a MINISWHITE scan read as plain
gray or a float image of 0–255 divided by 1 would each give a confident wrong answer.

| photometric | samples | becomes |
|---|---|---|
| MINISBLACK | 1, or 2 (gray + alpha: alpha dropped) | gray |
| MINISWHITE | as MINISBLACK | gray, inverted (full scale − value) |
| RGB | 3, or 4+ (RGB + alpha: kept; other extra samples dropped) | RGB / RGBA |
| PALETTE | 1 index of ≤ 16 bits | RGB from the colour map (16-bit, or 8-bit where every entry is < 256) |
| SEPARATED | CMYK (ink set 1), 4 inks (+ extra samples, dropped) | RGB = (max − C)(max − K)/max, … |
| YCBCR | JPEG-compressed (the codec returns RGB), or 8-bit unsubsampled | RGB (BT.601 full range) |

Depths: unsigned 1–8 bits become 8-bit (1-bit: 0/255), 9–16 bits keep their own full scale
(2^bits − 1, e.g. 4095 for 12-bit); float samples have full scale 1, or the file's SMaxSampleValue,
and a value outside [0, full scale] is refused when read (rescale the file, or store it as 8/16-bit).
Refused: signed or complex samples, 32-bit integers, CIELAB/ICC/ITU Lab, LogL/LogLuv, masks, CFA,
other ink sets, subsampled uncompressed YCbCr, and more than one image sample without a photometric
that says what they are (multispectral bands).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MINISWHITE, MINISBLACK, RGB, PALETTE, SEPARATED, YCBCR = 0, 1, 2, 3, 5, 6
_NAMES = {
    0: "MINISWHITE",
    1: "MINISBLACK",
    2: "RGB",
    3: "PALETTE",
    4: "MASK",
    5: "SEPARATED",
    6: "YCBCR",
    8: "CIELAB",
    9: "ICCLAB",
    10: "ITULAB",
    32803: "CFA",
    32844: "LOGL",
    32845: "LOGLUV",
}
_UINT, _FLOAT = 1, 3
_ALPHA = (1, 2)  # EXTRASAMPLE associated / unassociated alpha
_JPEG = (6, 7, 34892)  # old-style JPEG, JPEG, lossy JPEG


@dataclass(frozen=True)
class TiffPixels:
    """How decoded samples (rows, width, samples) become the reader's pixels."""

    channels: int  # 1 gray, 3 RGB, 4 RGBA
    dtype: np.dtype
    max_value: float  # the value of a full-scale pixel
    convert: Callable[[np.ndarray], np.ndarray]


def interpret(page, path: str) -> TiffPixels:
    """The conversion for ``page`` (a tifffile TiffPage), or ValueError naming ``path`` and the reason."""
    photometric = int(page.photometric)
    name = _NAMES.get(photometric, str(photometric))
    bits, samples = page.bitspersample, page.samplesperpixel
    extras = [int(e) for e in (page.extrasamples or ())]
    color_samples = samples - len(extras)

    def refuse(what: str) -> ValueError:
        return ValueError(
            f"{path}: {what} is not supported; convert the image to 8- or 16-bit gray or RGB"
            " (e.g. with tifffile or GDAL) and run again"
        )

    sample_format = int(page.sampleformat)
    if sample_format == _UINT:
        if bits > 16:
            raise refuse(f"{bits}-bit integer samples")
        depth = _uint_depth(bits)
    elif sample_format == _FLOAT:
        if photometric in (PALETTE, YCBCR, SEPARATED):
            raise refuse(f"float samples with photometric {name}")
        declared = page.tags.valueof("SMaxSampleValue")
        full = float(np.max(declared)) if declared is not None else 1.0
        depth = (np.dtype(np.float32), full, _float_check(path, full))
    else:
        raise refuse("signed integer" if sample_format == 2 else f"sample format {sample_format}")
    dtype, full, scale = depth

    if photometric in (MINISBLACK, MINISWHITE):
        if color_samples != 1 or (extras and extras[0] not in _ALPHA):
            raise refuse(f"{samples} samples per pixel with photometric {name} (multispectral bands?)")
        invert = photometric == MINISWHITE
        return TiffPixels(1, dtype, full, lambda s: _gray(scale(s[..., :1]), full, invert))
    if photometric == RGB:
        if color_samples != 3:
            raise refuse(f"photometric RGB with {color_samples} colour samples")
        keep = 4 if extras and extras[0] in _ALPHA else 3
        return TiffPixels(keep, dtype, full, lambda s: scale(s[..., :keep]))
    if photometric == PALETTE:
        if samples != 1 or sample_format != _UINT or page.colormap is None:
            raise refuse(
                f"a palette image with {samples} samples of format {sample_format} and"
                f" {'no' if page.colormap is None else 'a'} colour map"
            )
        colormap = np.asarray(page.colormap).reshape(3, -1).T  # (entries, 3) uint16
        full = 255.0 if colormap.max() < 256 else 65535.0  # 8-bit maps stored unscaled (Pillow reads them so)
        colormap = colormap.astype(np.uint16)
        return TiffPixels(3, np.dtype(np.uint16), full, lambda s: colormap[s[..., 0].astype(np.intp)])
    if photometric == SEPARATED:
        inkset = page.tags.valueof("InkSet") or 1
        if inkset != 1 or color_samples != 4:
            raise refuse(f"photometric SEPARATED with ink set {inkset} and {color_samples} inks (only CMYK)")
        return TiffPixels(3, np.dtype(np.float32), full, lambda s: _cmyk_to_rgb(scale(s[..., :4]), full))
    if photometric == YCBCR:
        if int(page.compression) in _JPEG:  # the JPEG codec returns RGB
            return TiffPixels(3, dtype, full, lambda s: scale(s[..., :3]))
        if tuple(page.subsampling or (1, 1)) != (1, 1) or bits != 8 or color_samples != 3:
            raise refuse(f"uncompressed YCbCr with subsampling {tuple(page.subsampling or ())} and {bits}-bit samples")
        return TiffPixels(3, np.dtype(np.float32), 255.0, lambda s: _ycbcr_to_rgb(s[..., :3]))
    raise refuse(f"photometric {name}")


def _uint_depth(bits: int) -> tuple[np.dtype, float, Callable[[np.ndarray], np.ndarray]]:
    """(dtype, full scale, scaling) of unsigned samples of ``bits`` bits."""
    if bits < 8:  # 1–7 bits (bilevel fax, 4-bit scans): spread to 0–255
        factor = 255 // (2**bits - 1)
        return np.dtype(np.uint8), 255.0, lambda s: s.astype(np.uint8) * np.uint8(factor)
    if bits == 8:
        return np.dtype(np.uint8), 255.0, lambda s: s
    return np.dtype(np.uint16), float(2**bits - 1), lambda s: s  # 12-bit: full scale 4095


def _float_check(path: str, full: float) -> Callable[[np.ndarray], np.ndarray]:
    def scale(samples: np.ndarray) -> np.ndarray:
        samples = samples.astype(np.float32, copy=False)
        low, high = float(samples.min(initial=0.0)), float(samples.max(initial=0.0))
        if low < 0 or high > full * (1 + 1e-6) or not np.isfinite(high):
            raise ValueError(
                f"{path}: float pixels reach {high:g} (lowest {low:g}) but a float image's full"
                f" scale is {full:g} (1 unless the file's SMaxSampleValue says otherwise); rescale"
                " it to [0, 1] or store it as 8- or 16-bit integers"
            )
        return samples

    return scale


def _gray(samples: np.ndarray, full: float, invert: bool) -> np.ndarray:
    if not invert:
        return samples
    if samples.dtype.kind == "f":
        return np.float32(full) - samples
    return (np.asarray(full, samples.dtype) - samples).astype(samples.dtype)


def _cmyk_to_rgb(cmyk: np.ndarray, full: float) -> np.ndarray:
    inks = cmyk.astype(np.float32)
    keep = np.float32(full) - inks  # how much of each ink's complement reaches the eye
    return keep[..., :3] * keep[..., 3:] / np.float32(full)


def _ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """8-bit YCbCr (TIFF's default coefficients, ITU-R BT.601, full range) → RGB in 0–255, float32."""
    y, cb, cr = (ycbcr[..., i].astype(np.float32) for i in range(3))
    cb, cr = cb - 128.0, cr - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(rgb, 0.0, 255.0)
