"""Image files on disk: listing, decoding to uint8 arrays, and (image, label) sources over them.

Shared by the image-folder data module and the ``predict`` split of every data module (kept apart
from both so neither imports the other).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Image formats that are listed (with a warning) but not read.
OTHER_IMAGE_SUFFIXES = (".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".ppm", ".pgm")
#: Images above this many pixels are refused before decoding (Pillow's decompression-bomb error
#: threshold): a tiny crafted PNG could otherwise claim gigabytes per decoding worker. Raise it
#: here for legitimately huge photos, or stream them with ``predict-large``.
MAX_IMAGE_PIXELS = 2 * 89_478_485
SKIP_HINT = "delete or replace it, or set skip_bad_images: true in the data section to skip such files"
log = logging.getLogger(__name__)


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded (a ValueError: the CLI prints it as one ``error:`` line).

    A DataLoader worker's error reaches the main process re-made as ``type(err)(message)``, with
    the worker's whole traceback in front of the message; this class keeps only its own message,
    so the one error line still names the file and the fix.
    """

    def __init__(self, message: str):
        if "\nOriginal Traceback" in message:  # the last line: "<module>.ImageDecodeError: <message>"
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def is_hidden(name: str) -> bool:
    """Hidden files and folders (``.name``): macOS's ``._photo.jpg`` companions (not images),
    ``.ipynb_checkpoints``, ``.git``, … are never data."""
    return name.startswith(".")


def list_images(folder: str, recursive: bool = False) -> list[str]:
    """Sorted image paths (jpg/jpeg/png, any case) in ``folder``, hidden files and folders skipped.

    With ``recursive`` every sub-folder is searched, symlinked ones too (each real folder once, so a
    link back to a parent cannot loop). The training data and ``predict`` both list images here, so
    they agree on what an image is.
    """
    if os.path.isfile(folder):
        raise ValueError(
            f"image folder {folder!r} is a file; give the folder that holds the images"
            f" ({os.path.dirname(folder) or '.'})"
        )
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist")
    if recursive:
        paths, seen = [], set()
        for d, subdirs, files in os.walk(folder, followlinks=True):
            real = os.path.realpath(d)
            if real in seen:
                subdirs[:] = []
                continue
            seen.add(real)
            subdirs[:] = [s for s in subdirs if not is_hidden(s)]
            paths += [os.path.join(d, f) for f in files if not is_hidden(f)]
    else:
        paths = [os.path.join(folder, f) for f in os.listdir(folder) if not is_hidden(f)]
    ignored = sorted(p for p in paths if p.lower().endswith(OTHER_IMAGE_SUFFIXES))
    if ignored:  # said once per folder: these images would otherwise vanish from the data silently
        log.warning(
            "ignoring %d image files in %s that are not jpg/jpeg/png (e.g. %s); convert them to PNG to use them",
            len(ignored),
            folder,
            os.path.basename(ignored[0]),
        )
    return sorted(p for p in paths if p.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(p))


@contextlib.contextmanager
def pillow_pixel_limit_lifted() -> Iterator[None]:
    """Pillow's decompression-bomb limit off for one read, restored afterwards.

    Pillow's limit is process-wide: a reader that switched it off for good would change what every
    later image read in the process accepts (and how a bomb is reported).
    """
    from PIL import Image

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_pixel_count(path: str) -> None:
    """Refuse an image whose header claims more than :data:`MAX_IMAGE_PIXELS` (read lazily, no decoding)."""
    from PIL import Image

    try:
        with pillow_pixel_limit_lifted(), Image.open(path) as image:  # the header only: our limit decides
            width, height = image.size
    except Exception:  # Pillow cannot parse the header: let OpenCV decide (and fail with the usual error)
        return
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            f"image {path!r} is {width}×{height} px, more than the {MAX_IMAGE_PIXELS:,} px"
            " decoding limit (a decompression bomb or a huge scan); downscale it, or use"
            " predict-large for huge images"
        )


def decode_image(path: str, channels: int = 3) -> np.ndarray:
    """Decode to uint8 HxWxC RGB (channels=3) or HxWx1 gray (channels=1); ValueError naming the path.

    JPEG EXIF orientation is applied (a phone photo comes out upright), 16-bit images keep their
    8 high bits, alpha is dropped, palette and gray images are expanded.
    """
    data = np.fromfile(path, dtype=np.uint8)
    image = None
    if data.size:
        _check_pixel_count(path)
        # IMREAD_UNCHANGED would ignore the EXIF orientation; COLOR/GRAYSCALE apply it, and
        # ANYDEPTH keeps 16-bit samples 16-bit (scaled below) instead of truncating them.
        flags = (cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE) | cv2.IMREAD_ANYDEPTH
        try:
            image = cv2.imdecode(data, flags)
        except cv2.error:  # e.g. a header OpenCV's own size limit refuses
            image = None
    if image is None:
        what = "an empty file" if not data.size else "corrupt, truncated or not a jpg/png"
        raise ImageDecodeError(f"cannot decode image {path!r} ({what}); {SKIP_HINT}")
    if image.dtype == np.uint16:  # 16-bit PNG
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"image {path!r} has {image.dtype} samples; convert it to 8- or 16-bit")
    if image.ndim == 2:
        image = image[..., None]
    elif channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


class ImageFileList:
    """(image, label) pairs decoded from files to ``channels`` (3 = RGB, 1 = gray); labels default
    to the file index. With ``skip_bad`` an undecodable file yields ``(None, label)``, is logged with
    its path, and counted in ``skipped`` (per process: each DataLoader worker counts its own)."""

    def __init__(
        self, paths: Sequence[str], labels: Sequence[int] | None = None, skip_bad: bool = False, channels: int = 3
    ):
        self.paths = list(paths)
        self.labels = list(range(len(self.paths))) if labels is None else list(labels)
        self.skip_bad, self.channels, self.skipped = skip_bad, channels, 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return decode_image(self.paths[i], self.channels), self.labels[i]
        except ValueError:
            if not self.skip_bad:
                raise
            self.skipped += 1
            log.warning(
                "skipping undecodable image %s (%d skipped so far in this process)", self.paths[i], self.skipped
            )
            return None, self.labels[i]


def infer_image_size(paths: Sequence[str], multiple: int = 16, limit: int = 64, skip_bad: bool = False) -> int:
    """A square training size from the data: median shorter side of up to ``limit`` images, rounded
    down to a multiple of ``multiple`` and clamped to [multiple, 224].

    With ``skip_bad`` undecodable files are logged, counted and passed over (the next file takes
    their place in the sample); ValueError when none of ``paths`` decodes.
    """
    step = max(1, len(paths) // limit)
    order = list(paths)[::step] + [p for i, p in enumerate(paths) if i % step]  # the spread sample first
    sides, skipped = [], 0
    for path in order:
        if len(sides) == limit:
            break
        try:
            sides.append(min(decode_image(path).shape[:2]))
        except ValueError:
            if not skip_bad:
                raise
            skipped += 1
            log.warning("skipping undecodable image %s while inferring the image size (%d skipped)", path, skipped)
    if not sides:
        raise ValueError(
            f"none of the {len(paths)} training images decodes (all corrupt or not jpg/png);"
            " check the folder, or pass img_size"
        )
    if skipped:
        log.warning("inferred the image size from %d images; %d undecodable ones skipped", len(sides), skipped)
    side = int(np.median(sides))
    return int(min(224, max(multiple, side // multiple * multiple)))
