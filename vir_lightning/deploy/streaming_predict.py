"""Streaming prediction of huge images, the library behind ``predict-large``
(:mod:`vir_lightning.commands.predict_large`): the checkpoint's (or pretrained folder's) model in
streaming form, or an ``export-onnx --form streaming-step`` graph in ONNX Runtime, with the
normalisation its model was trained with; and one opened :class:`~vir_lightning.data.large_image.LargeImage`
streamed through it band by band (optionally writing its per-patch features).
"""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path

import numpy as np

from ..io import atomic_output
from ..retention import STREAMING

# ----------------------------------------------------------------------------------------------
# The model and its normalisation, from the checkpoint and the config
# ----------------------------------------------------------------------------------------------


def _config_sections(path: str) -> tuple[dict, dict]:
    """``(model init_args, data section)`` of a LightningCLI YAML config."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"--config {path!r} is a folder; give the training config's YAML file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {path!r} is not a LightningCLI config (a mapping with model: and data:)")
    model, data = config.get("model") or {}, config.get("data") or {}
    return (model.get("init_args") or {}) if isinstance(model, dict) else {}, data if isinstance(data, dict) else {}


def normalisation(data_section: dict, recorded: dict | None = None) -> tuple[list[float], list[float]]:
    """mean/std to normalise with: what the checkpoint ``recorded`` (the model was trained with it),
    with a notice where the config says otherwise; else (older checkpoints) the config's data module:
    given in ``init_args``, else the class's defaults."""
    from .checkpoints import recorded_normalisation

    configured = _configured_normalisation(data_section)
    if not recorded:
        return configured
    given = data_section.get("init_args") or {}
    channels = len(recorded["mean"])
    compared = tuple(per_channel(v, channels) for v in configured) if {"mean", "std"} & set(given) else None
    return recorded_normalisation(recorded, compared, "--config's data")


def per_channel(values, channels: int) -> list:
    """One value per channel: the first ``channels`` values, or the given ones repeated."""
    values = list(values)
    return values[:channels] if len(values) >= channels else values * channels


def _configured_normalisation(data_section: dict) -> tuple[list[float], list[float]]:
    """mean/std of the config's data module: given in ``init_args``, else the class's defaults."""
    from .. import data as data_modules

    init_args = data_section.get("init_args") or {}
    class_name = str(data_section.get("class_path", "ClassificationDataModule")).rsplit(".", 1)[-1]
    cls = getattr(data_modules, class_name, data_modules.ClassificationDataModule)
    defaults = {}
    for klass in reversed(cls.__mro__):  # a subclass's defaults win over its base's
        if klass.__init__ is not object.__init__:
            defaults.update(
                {
                    k: p.default
                    for k, p in inspect.signature(klass.__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty
                }
            )
    return list(init_args.get("mean", defaults["mean"])), list(init_args.get("std", defaults["std"]))


def load_streaming_model(config_path: str | None, ckpt_path: str, band_rows: int | None):
    """The checkpoint's (or pretrained folder's) ViR in streaming mode (``dynamic_img_size``), eval,
    plus (class names, mean, std).

    The architecture comes from the checkpoint (it describes its weights); a config that names
    another model or other model options is refused rather than silently ignored.
    """
    from .checkpoints import classifier_from_checkpoint

    model_args, data_section = _config_sections(config_path) if config_path else ({}, {})
    model, hparams = classifier_from_checkpoint(ckpt_path)
    for key in ("model_name", "model_kwargs"):
        wanted = model_args.get(key)
        if wanted is not None and (wanted or None) != (hparams.get(key) or None):
            raise ValueError(
                f"--config sets model {key}={wanted!r} but the checkpoint was trained with"
                f" {hparams.get(key)!r}; use the config the checkpoint was trained with"
            )
    try:
        model.set_retention_mode(STREAMING, band_rows)
    except ValueError as err:  # the model's reason names its own options, which this command does not have
        raise ValueError(
            f"predict-large streams the image band by band, which {hparams.get('model_name')!r} cannot"
            f" ({err}); predict-large takes ViR checkpoints: use `predict` for this model"
        ) from None
    model.dynamic_img_size = True  # any image size: the position embedding is resized band by band
    names = hparams.get("class_names") or [str(i) for i in range(model.num_classes)]
    mean, std = _normalisation(config_path, data_section, hparams.get("preprocessing"), ckpt_path)
    return model, list(names), mean, std


def load_onnx_model(config_path: str | None, onnx_path: str):
    """An ``export-onnx --form streaming-step`` graph in ONNX Runtime, plus (class names, mean, std)."""
    from .onnx_streaming import OnnxStreamingModel

    model = OnnxStreamingModel(onnx_path)
    _, data_section = _config_sections(config_path) if config_path else ({}, {})
    names = model.meta.get("class_names") or [str(i) for i in range(model.num_classes)]
    mean, std = _normalisation(config_path, data_section, model.meta.get("preprocessing"), onnx_path)
    return model, list(names), mean, std


def _normalisation(config_path: str | None, data_section: dict, recorded: dict | None, weights: str):
    if not recorded and not config_path:
        raise ValueError(
            f"{weights!r} does not record the normalisation its model was trained with (it predates"
            " the record): pass the training config with --config"
        )
    return normalisation(data_section, recorded)


# ----------------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------------


def patch_grid(height: int, width: int, patch: tuple[int, int], edge: str) -> tuple[int, int, int, int]:
    """(rows, cols, edge rows px, edge cols px) of an image cut into patches: sides that are not a
    multiple of the patch are cropped (``edge="crop"``) or padded (``"pad"``) by that many pixels."""
    ph, pw = patch
    if edge == "crop":
        rows, cols = height // ph, width // pw
        return rows, cols, height - rows * ph, width - cols * pw
    rows, cols = math.ceil(height / ph), math.ceil(width / pw)
    return rows, cols, rows * ph - height, cols * pw - width


def predict_image(
    model,
    image,
    mean,
    std,
    edge: str = "crop",
    features_path: str | None = None,
    progress=None,
    overwrite: bool = False,
) -> dict:
    """Stream one opened :class:`LargeImage` through ``model``: the CSV row's fields plus
    ``probs`` (num_classes,). Writes the features memmap (atomically) when ``features_path``
    (replacing an existing file as :func:`~vir_lightning.io.check_output_path` allows)."""
    import torch

    from ..data.large_image import to_model_channels

    ph, pw = model.patch_size
    channels = model.in_chans
    if edge == "crop" and (image.height < ph or image.width < pw):
        lower = "a lower --level (a larger image), or " if image.level > 0 else ""
        raise ValueError(
            f"{image.path}: {image.width}×{image.height} px at level {image.level} is smaller than"
            f" one {pw}×{ph} patch, so cropping leaves nothing; use {lower}--edge pad"
        )
    rows, cols, edge_rows, edge_cols = patch_grid(image.height, image.width, (ph, pw), edge)
    scale = image.max_value
    mean_t = torch.tensor(per_channel(mean, channels)).view(1, -1, 1, 1)
    std_t = torch.tensor(per_channel(std, channels)).view(1, -1, 1, 1)

    def read_band(row0: int, row1: int):
        y0, y1 = row0 * ph, min(row1 * ph, image.height)
        pixels = to_model_channels(image.read_rows(y0, y1), channels)
        band = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)[None]
        band = (band / scale - mean_t) / std_t
        band = band[..., : cols * pw]  # crop: the right edge; pad: zeros (the mean colour) beyond it
        missing_rows, missing_cols = (row1 - row0) * ph - band.shape[2], cols * pw - band.shape[3]
        if missing_rows or missing_cols:
            band = torch.nn.functional.pad(band, (0, missing_cols, 0, missing_rows))
        if progress is not None:
            progress.update(1)
        return band

    start = time.perf_counter()
    with torch.inference_mode():
        if features_path is None:
            logits = model.forward_streaming(read_band, (rows, cols), 1)
        else:
            with atomic_output(features_path, overwrite=overwrite) as tmp:
                # The .npy header (shape, dtype) from NumPy, then each band written at its place
                # with plain file writes: a writable memmap would keep every written page resident.
                header = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.float16, shape=(rows, cols, model.num_features)
                )
                offset, row_bytes = header.offset, cols * model.num_features * 2
                del header
                with open(tmp, "r+b") as features:

                    def sink(row0, band_features):
                        features.seek(offset + row0 * row_bytes)
                        features.write(band_features[0].to(torch.float16).contiguous().numpy().tobytes())

                    logits = model.forward_streaming(read_band, (rows, cols), 1, on_features=sink)
    return {
        "level": image.level,
        "reader": image.reader,
        "height": image.height,
        "width": image.width,
        "grid_rows": rows,
        "grid_cols": cols,
        "edge": edge,
        "edge_rows_px": edge_rows,
        "edge_cols_px": edge_cols,
        "probs": logits[0].float().softmax(-1),
        "seconds": time.perf_counter() - start,
    }
