"""Pretrained folders: ``save_pretrained(model, dir)`` and ``from_pretrained(dir)``.

A folder holds two files and no code:

    config.json          what builds the model: registered name, options, classes, image size,
                         channels, and the normalisation its inputs were trained with
    model.safetensors    the weights (safetensors: a JSON header and raw tensor bytes, no pickle)

Loading reads JSON and raw tensors only, so nothing in the folder can run code; the model is rebuilt
from the registry (:func:`vir_lightning.create_model`) and its weights loaded strictly, so a round
trip is bit-exact. The retention form, chunk size and backend are not recorded: every form computes
the same function, and they are choices of whoever runs the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Marks a config.json written here (other libraries also write config.json files).
FORMAT = "vir_lightning-pretrained"
FORMAT_VERSION = 1
#: Model options that choose how the function is computed, not which function: never recorded.
RUNTIME_OPTIONS = ("retention_mode", "chunk_size", "retention_backend")
#: Options that :func:`create_model` takes apart from the model's own, recorded at the top level.
SHAPE_OPTIONS = ("num_classes", "img_size", "in_chans")


def pretrained_config(
    model: nn.Module, class_names: list[str] | None = None, preprocessing: dict | None = None
) -> dict:
    """The ``config.json`` of ``model`` (built by :func:`vir_lightning.create_model`, which records
    its name and options on it)."""
    name = getattr(model, "model_name", None)
    if not isinstance(name, str):
        raise ValueError(
            f"{type(model).__name__} was not built by vir_lightning.create_model, so its registered"
            " name and options are unknown; build it with create_model(name, ...)"
        )
    options = {
        k: v
        for k, v in (getattr(model, "model_options", None) or {}).items()
        if k not in RUNTIME_OPTIONS + SHAPE_OPTIONS
    }
    num_classes = int(getattr(model, "num_classes", 0))
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {num_classes} classes")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": name,
        "model_options": _json_ready(options),
        "num_classes": num_classes,
        "img_size": list(model.img_size),
        "in_chans": int(model.in_chans),
        "class_names": [str(c) for c in class_names] if class_names is not None else None,
        "preprocessing": _json_ready(preprocessing) if preprocessing else None,
    }
    return config


def _json_ready(value):
    """Tuples as lists, all the way down (what JSON gives back), so a reread config compares equal."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def save_pretrained(
    model: nn.Module,
    directory: str,
    class_names: list[str] | None = None,
    preprocessing: dict | None = None,
    overwrite: bool = False,
    run: str | None = None,
) -> dict:
    """Write ``model`` as a pretrained folder (``config.json`` + ``model.safetensors``).

    Args:
        model: a model built by :func:`vir_lightning.create_model` (any registered family).
        directory: the folder to write. It is written whole beside its final place and then renamed,
            so a reader never sees half of it; an existing folder is replaced only if vir_lightning
            wrote it (see :func:`vir_lightning.io.check_output_path`).
        class_names: one name per class, for predictions.
        preprocessing: what the inputs were normalised with (``{"mean": [...], "std": [...], ...}``,
            as a training checkpoint records it); ``None`` if unknown.
        overwrite, run: as for :func:`vir_lightning.io.atomic_output`.

    Returns:
        The config written.
    """
    from safetensors.torch import save_file

    from ..io import _umask, atomic_output

    loaded = getattr(model, "pretrained_config", None) or {}  # a model from from_pretrained keeps what it had
    class_names = loaded.get("class_names") if class_names is None else class_names
    preprocessing = loaded.get("preprocessing") if preprocessing is None else preprocessing
    if preprocessing:
        check_preprocessing(preprocessing, "preprocessing")
    _refuse_other_files(directory)
    config = pretrained_config(model, class_names, preprocessing)
    # contiguous copies: safetensors stores raw bytes and refuses views that share storage
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_output(directory, directory=True, overwrite=overwrite, run=run) as tmp:
        Path(tmp, CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        weights = os.path.join(tmp, WEIGHTS_FILE)
        save_file(state, weights, metadata={"format": "pt", "model_name": config["model_name"]})
        os.chmod(weights, 0o666 & ~_umask())  # safetensors creates it 0600; the folder's files get the user's umask
    return config


def _refuse_other_files(directory: str) -> None:
    """A pretrained folder is replaced whole: refuse when it holds anything but what we write there
    (a model card or a checkpoint someone put beside the weights would be deleted)."""
    from ..io import OUTPUT_MARKER, OUTPUTS_RECORD

    if not os.path.isdir(directory):
        return
    ours = {CONFIG_FILE, WEIGHTS_FILE, OUTPUT_MARKER, OUTPUTS_RECORD}
    others = sorted(set(os.listdir(directory)) - ours)
    if others:
        raise ValueError(
            f"{directory!r} also holds {', '.join(others[:3])}{' …' if len(others) > 3 else ''}, which"
            " replacing the folder would delete; move them out or choose another folder"
        )


def check_preprocessing(record, where: str) -> dict:
    """ValueError naming ``where`` unless ``record`` holds ``mean`` and ``std``: equal-length lists of
    finite numbers, every std positive (a std of 0 would turn every prediction into NaN)."""
    import math

    ok = isinstance(record, dict) and all(
        isinstance(record.get(key), list)
        and record[key]
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in record[key])
        for key in ("mean", "std")
    )
    if not ok or len(record["mean"]) != len(record["std"]) or min(record["std"]) <= 0:
        raise ValueError(
            f"{where}: the normalisation {record!r} is invalid; expected mean and std as lists of"
            " one finite number per channel, every std > 0"
        )
    return record


def as_hyper_parameters(config: dict) -> dict:
    """A folder's config in the terms of a training checkpoint's ``hyper_parameters``."""
    return {
        "model_name": config["model_name"],
        "model_kwargs": config["model_options"],
        "num_classes": config["num_classes"],
        "img_size": config["img_size"],
        "in_chans": config["in_chans"],
        "class_names": config["class_names"],
        "preprocessing": config["preprocessing"],
    }


def is_pretrained_folder(path) -> bool:
    """Whether ``path`` is a folder (with a ``config.json``): the caller then loads it as one."""
    return os.path.isdir(os.fspath(path))


def read_pretrained_config(directory: str) -> dict:
    """The checked ``config.json`` of a pretrained folder (ValueError naming what is wrong)."""
    directory = os.fspath(directory)
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isdir(directory):
        raise ValueError(f"{directory!r} is not a folder; give a folder written by save_pretrained or export-model")
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{directory!r} is a folder without {CONFIG_FILE}, so not a pretrained folder; give the .ckpt"
            " file written by fit, or a folder written by `python -m vir_lightning export-model CKPT DIR`"
            " (or save_pretrained)"
        ) from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path!r} cannot be read as JSON ({err}); write the folder again with export-model") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(
            f'{path!r} is not a vir_lightning config (no "format": "{FORMAT}"); write the folder'
            " with `python -m vir_lightning export-model CKPT DIR`"
        )
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format_version {config.get('format_version')!r}; this vir_lightning reads"
            f" version {FORMAT_VERSION}: upgrade vir_lightning"
        )
    missing = [k for k in ("model_name", "model_options", *SHAPE_OPTIONS) if k not in config]
    if missing or not isinstance(config["model_options"], dict):
        raise ValueError(
            f"{path!r} lacks {', '.join(missing) or 'a model_options mapping'}; write the folder again"
            " with export-model"
        )
    if isinstance(config["num_classes"], bool) or not isinstance(config["num_classes"], int):
        raise ValueError(f"{path!r}: num_classes is {config['num_classes']!r}; expected an integer")
    if config.get("preprocessing") is not None:
        check_preprocessing(config["preprocessing"], path)
    names = config.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != config["num_classes"]):
        what = f"{len(names)} entries" if isinstance(names, list) else f"the value {names!r} (not a list)"
        raise ValueError(f"{path!r}: class_names has {what} for num_classes={config['num_classes']}")
    return config


def read_pretrained_weights(directory: str) -> dict[str, torch.Tensor]:
    """The tensors of a pretrained folder's ``model.safetensors`` (no code is run to read them)."""
    return read_safetensors(os.path.join(os.fspath(directory), WEIGHTS_FILE))


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file on the CPU, or one ValueError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a safetensors file; write the folder again with export-model")
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} does not exist; the folder lacks its weights (write it again with export-model)")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path!r} is not a readable safetensors file ({' '.join(str(err).split())[:200]});"
            " it is truncated or of another format"
        ) from None


def from_pretrained(directory: str, **overrides) -> nn.Module:
    """The model of a pretrained folder, weights loaded strictly, in eval mode.

    Args:
        directory: a folder written by :func:`save_pretrained` or ``export-model``.
        **overrides: run-time options for :func:`vir_lightning.create_model` (e.g.
            ``retention_mode="chunkwise"``, ``dynamic_img_size=True``); options that change the
            architecture would not fit the weights and are refused by the strict load.

    Returns:
        The model, with ``model.pretrained_config`` holding the folder's config (class names,
        normalisation).

    Raises:
        ValueError: no ``config.json`` or ``model.safetensors``, a config of another format, or
            weights that do not match the config (missing or unexpected tensors, another shape).
    """
    from ..models import create_model

    config = read_pretrained_config(directory)
    fixed = sorted(set(overrides) & {"model_name", *SHAPE_OPTIONS})
    if fixed:
        raise ValueError(
            f"from_pretrained({directory!r}, {fixed[0]}=...): the weights fix {', '.join(fixed)}; build"
            " the model with create_model and load the folder with --model.init_args.pretrained (or"
            " load_weights) to change them"
        )
    state = read_pretrained_weights(directory)
    size = config["img_size"]
    options = {**config["model_options"], **overrides}
    try:
        model = create_model(
            config["model_name"],
            num_classes=config["num_classes"],
            img_size=size if isinstance(size, int) else tuple(size),
            in_chans=config["in_chans"],
            **options,
        )
    except (ValueError, TypeError) as err:
        source = "its config.json with your options" if overrides else "its config.json"
        raise ValueError(f"{directory!r}: {source} does not build a model ({err})") from None
    check_weights_fit(model, state, f"{directory!r}" + (f" with {sorted(overrides)}" if overrides else ""))
    model.load_state_dict(state)
    model.pretrained_config = config
    return model.eval()


def weight_mismatches(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading strictly into a model whose state_dict is ``own``: missing
    and unexpected tensors and tensors of another shape, the first few of each named ([] if none)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys (first: {missing[:4]})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys (first: {unexpected[:4]})")
    if reshaped:
        problems.append(
            "shape mismatch "
            + ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped[:3])
        )
    return problems


def check_weights_fit(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """ValueError unless ``state`` holds exactly ``model``'s tensors with their shapes."""
    problems = weight_mismatches(model.state_dict(), state)
    if problems:
        raise ValueError(
            f"{source}: the weights do not match the model its config.json names"
            f" ({getattr(model, 'model_name', type(model).__name__)}): {'; '.join(problems)}"
        )
