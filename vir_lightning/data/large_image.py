"""Huge images read band by band: rows of pixels without ever loading the whole image.

    image = open_large_image("slide.tif", level=0)       # or .svs/.ndpi/… (OpenSlide), .png/.jpg (PIL)
    image.height, image.width, image.channels, image.levels, image.max_value
    rows = image.read_rows(0, 256)                       # (256, width, channels): gray, RGB or RGBA

Every reader returns gray, RGB or RGBA pixels whose full-scale value is ``max_value`` (255 for
8-bit, 65535 for 16-bit, 4095 for 12-bit TIFFs, 1 for float ones, …): what the model's
normalisation divides by. What a TIFF's samples mean is read from the file (``tiff_pixels``).

Readers:
- ``tifffile``: tiled or striped TIFF and BigTIFF. Only the tiles or strips that cover the asked
  rows are read and decoded; the last decoded row of tiles is kept, because consecutive bands
  are usually thinner than a tile. Pyramid levels are tifffile's (SubIFDs, OME, SVS, …) or, for
  generic pyramids, the following full-size pages in the file (OpenSlide's generic-TIFF layout).
- ``openslide``: every whole-slide format OpenSlide reads (Aperio, Hamamatsu, MIRAX, Leica,
  Philips, Ventana, generic tiled TIFF, …), through ``read_region``; its RGBA is composited on white
  (transparent means "not scanned": background).
- ``pil``: PNG / JPEG and anything else Pillow opens. These formats have no random row access,
  so the image is decoded whole once: for files that fit in memory.
"""

from __future__ import annotations

import os

import numpy as np

from .files import pillow_pixel_limit_lifted
from .tiff_pixels import interpret

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
READERS = ("auto", "tifffile", "openslide", "pil")


class LargeImage:
    """One pyramid level of an image, read in bands of rows. Subclasses implement :meth:`_read`."""

    reader = "?"

    def __init__(self, path: str, level: int, level_shapes: list[tuple[int, int]], channels: int, dtype):
        if not 0 <= level < len(level_shapes):
            sizes = ", ".join(f"{i}: {w}×{h}" for i, (h, w) in enumerate(level_shapes))
            raise ValueError(
                f"{path}: pyramid level {level} does not exist (levels {sizes}); pass --level"
                f" 0..{len(level_shapes) - 1}"
            )
        self.path, self.level, self.levels = path, level, level_shapes
        self.height, self.width = level_shapes[level]
        self.channels, self.dtype = channels, np.dtype(dtype)
        #: The value of a full-scale pixel (what normalisation divides by); a TIFF's comes from its tags.
        self.max_value = pixel_scale(self.dtype)

    def read_rows(self, row0: int, row1: int) -> np.ndarray:
        """Pixel rows [row0, row1) of this level: (row1 − row0, width, channels), the file's dtype."""
        if not 0 <= row0 < row1 <= self.height:
            raise ValueError(f"{self.path}: rows {row0}:{row1} are outside the image (height {self.height})")
        return self._read(row0, row1)

    def _read(self, row0: int, row1: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TiffImage(LargeImage):
    """Tiled or striped TIFF/BigTIFF through tifffile, decoding only the segments a band needs."""

    reader = "tifffile"

    def __init__(self, path: str, level: int = 0):
        import tifffile

        try:
            self._tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable TIFF ({err})") from None
        try:
            pages = _tiff_levels(self._tif)
            shapes = [(p.imagelength, p.imagewidth) for p in pages]
            # uint8 stands in until ``interpret`` says what the samples are (it refuses what is not).
            super().__init__(path, level, shapes, pages[0].samplesperpixel, np.uint8)
            self._page = page = pages[level]
            self._pixels = interpret(page, path)  # what the samples mean, or one refusal
            self.channels, self.dtype = self._pixels.channels, self._pixels.dtype
            self.max_value = self._pixels.max_value
            if page.planarconfig == 2 and page.samplesperpixel > 1:
                raise ValueError(
                    f"{path}: planar-separate TIFF samples are not supported; rewrite it interleaved"
                    " (e.g. tifffile.imwrite(..., planarconfig='contig'))"
                )
            if page.imagedepth > 1:
                raise ValueError(f"{path}: volumetric TIFF pages (depth {page.imagedepth}) are not images")
        except BaseException:
            self._tif.close()
            raise
        if page.is_tiled:
            self._seg_height, self._seg_width = page.tilelength, page.tilewidth
        else:
            self._seg_height, self._seg_width = page.rowsperstrip or page.imagelength, page.imagewidth
        self._per_row = -(-page.imagewidth // self._seg_width)
        self._decode = page.decode
        self._cache: tuple[int, np.ndarray] | None = None  # (segment row, its decoded pixels)

    def _segment_row(self, index: int) -> np.ndarray:
        """Pixels of the ``index``-th row of tiles (or the ``index``-th strip): decoded, then converted."""
        if self._cache is not None and self._cache[0] == index:
            return self._cache[1]
        page, fh = self._page, self._tif.filehandle
        top = index * self._seg_height
        height = min(self._seg_height, page.imagelength - top)
        out = np.zeros((height, page.imagewidth, page.samplesperpixel), page.dtype)
        for column in range(self._per_row):
            segment = index * self._per_row + column
            offset, count = page.dataoffsets[segment], page.databytecounts[segment]
            if count == 0:
                continue  # an empty tile: zeros
            fh.seek(offset)
            data = fh.read(count)
            try:
                pixels, _, _ = self._decode(data, segment, jpegtables=page.jpegtables)
            except Exception as err:  # codecs raise their own types
                raise ValueError(
                    f"{self.path}: corrupt tile {segment} (pixel rows {top}+, column"
                    f" {column * self._seg_width}+) at level {self.level}: {err}"
                ) from None
            if pixels is None:
                continue
            pixels = pixels.reshape(pixels.shape[-3:])  # (length, width, samples): depth is 1
            x0 = column * self._seg_width
            width = min(self._seg_width, page.imagewidth - x0)
            out[:, x0 : x0 + width] = pixels[:height, :width]
        out = self._pixels.convert(out)
        self._cache = (index, out)
        return out

    def _read(self, row0: int, row1: int) -> np.ndarray:
        first, last = row0 // self._seg_height, (row1 - 1) // self._seg_height
        parts = []
        for index in range(first, last + 1):
            top = index * self._seg_height
            segment = self._segment_row(index)
            parts.append(segment[max(row0 - top, 0) : min(row1 - top, segment.shape[0])])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        self._tif.close()


def _tiff_levels(tif) -> list:
    """The TiffPages of every pyramid level, largest first."""
    if not tif.series:
        raise ValueError(f"{tif.filename}: the TIFF holds no image")
    series = tif.series[0]
    if len(series.levels) > 1:
        return [level.keyframe for level in series.levels]
    # A generic pyramid (OpenSlide's layout): later series that are smaller versions of the first.
    pages = [series.keyframe]
    for other in tif.series[1:]:
        page = other.keyframe
        previous = pages[-1]
        if (
            page.samplesperpixel == previous.samplesperpixel
            and page.imagelength < previous.imagelength
            and page.imagewidth < previous.imagewidth
            and page.is_tiled == previous.is_tiled
        ):
            pages.append(page)
    return pages


class SlideImage(LargeImage):
    """A whole-slide image through OpenSlide (``read_region`` per band, RGBA composited on white)."""

    reader = "openslide"

    def __init__(self, path: str, level: int = 0):
        import openslide

        try:
            self._slide = openslide.OpenSlide(path)
        except (openslide.OpenSlideError, OSError) as err:
            raise ValueError(f"{path}: OpenSlide cannot open it ({err})") from None
        shapes = [(h, w) for w, h in self._slide.level_dimensions]
        try:
            super().__init__(path, level, shapes, 3, np.uint8)
        except ValueError:
            self._slide.close()
            raise
        self._downsample = self._slide.level_downsamples[level]

    def _read(self, row0: int, row1: int) -> np.ndarray:
        import openslide

        y = int(round(row0 * self._downsample))  # read_region takes level-0 coordinates
        try:
            region = self._slide.read_region((0, y), self.level, (self.width, row1 - row0))
        except openslide.OpenSlideError as err:
            raise ValueError(
                f"{self.path}: OpenSlide failed on rows {row0}:{row1} at level {self.level}: {err}"
            ) from None
        rgba = np.asarray(region)
        rgb, alpha = rgba[..., :3].astype(np.float32), rgba[..., 3:].astype(np.float32) / 255.0
        # OpenSlide returns non-premultiplied RGBA, with alpha 0 outside the scanned area.
        return np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)

    def close(self) -> None:
        self._slide.close()


class PillowImage(LargeImage):
    """PNG, JPEG and other Pillow formats, decoded whole (no random row access in these formats)."""

    reader = "pil"

    def __init__(self, path: str, level: int = 0):
        from PIL import Image, ImageOps

        # The user asked for this file: no decompression-bomb refusal, for this read only.
        try:
            with pillow_pixel_limit_lifted(), Image.open(path) as image:
                image.load()
                # A phone photo stores its pixels on their side plus an EXIF orientation tag.
                image = ImageOps.exif_transpose(image)
                if image.mode in ("I", "F"):  # converting would clip them to 0–255 without a word
                    kind = "integer" if image.mode == "I" else "float"
                    raise ValueError(
                        f"32-bit {kind} pixels (Pillow mode {image.mode}) are not supported; store the"
                        " image as 8- or 16-bit, or as a TIFF with its full scale"
                    )
                if image.mode not in ("L", "RGB", "RGBA", "I;16", "I;16B", "I;16L"):
                    image = image.convert("RGB")
                self._pixels = np.asarray(image)
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
        if self._pixels.ndim == 2:
            self._pixels = self._pixels[..., None]
        super().__init__(path, level, [self._pixels.shape[:2]], self._pixels.shape[2], self._pixels.dtype)

    def _read(self, row0: int, row1: int) -> np.ndarray:
        return self._pixels[row0:row1]


def open_large_image(path: str, level: int = 0, reader: str = "auto") -> LargeImage:
    """Open one pyramid ``level`` of ``path`` with ``reader`` (``auto``: by the file's suffix:
    TIFF → tifffile, slide formats → OpenSlide, anything else → Pillow). ValueError / FileNotFoundError
    with the path for anything unreadable."""
    if reader not in READERS:
        raise ValueError(f"reader={reader!r} is unknown; expected one of {READERS}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; pass the image files in it (e.g. {os.path.join(path, '*.tif')})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"level={level!r} is invalid; expected a pyramid level 0, 1, …")
    if reader == "auto":
        suffix = os.path.splitext(path)[1].lower()
        reader = "tifffile" if suffix in TIFF_SUFFIXES else "openslide" if suffix in SLIDE_SUFFIXES else "pil"
    cls = {"tifffile": TiffImage, "openslide": SlideImage, "pil": PillowImage}[reader]
    return cls(path, level)


def to_model_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Adapt (rows, width, c) pixels to the model's ``channels``: RGBA → RGB (alpha dropped),
    gray → RGB (repeated), RGB → gray (ITU-R 601 luma, as Pillow's "L"); c == channels passes."""
    have = pixels.shape[-1]
    if have == channels:
        return pixels
    if have == 4 and channels == 3:
        return pixels[..., :3]
    if have == 1 and channels == 3:
        return np.repeat(pixels, 3, axis=-1)
    if have in (3, 4) and channels == 1:
        luma = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return luma[..., None]
    raise ValueError(f"the image has {have} channels and the model takes {channels}; convert the image first")


def pixel_scale(dtype: np.dtype) -> float:
    """The value of a full-scale pixel: 255 for 8-bit, 65535 for 16-bit images."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if dtype.kind == "f":
        return 1.0
    raise ValueError(f"pixels of dtype {dtype} are not supported; expected 8- or 16-bit unsigned or float images")
