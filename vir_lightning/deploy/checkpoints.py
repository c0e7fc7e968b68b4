"""Loading weights safely (tensors only, never pickled code) into a model, with a clear report.

Checkpoints of ``fit``, exported backbones, safetensors files and pretrained folders, read without
Lightning (nor the Lightning tasks): the mm adapter (``downstream``), the deploy commands and the
training tasks all read weights through here."""

from __future__ import annotations

import json
import logging
import os
import pickle

import torch
from torch import nn

log = logging.getLogger(__name__)

#: The safetensors header key that holds export-backbone's ``meta`` record (JSON).
EXPORT_META_KEY = "vir_lightning_export"


def recorded_normalisation(
    recorded: dict, configured: tuple[list[float], list[float]] | None, where: str
) -> tuple[list[float], list[float]]:
    """The mean/std a checkpoint's ``preprocessing`` record holds (its model was trained with them),
    over the ``configured`` ones (per channel; None: nothing configured), with one notice naming
    ``where`` when the two differ. ``predict`` and ``predict-large`` both choose so."""
    mean, std = [float(m) for m in recorded["mean"]], [float(s) for s in recorded["std"]]
    if configured is not None and ([float(m) for m in configured[0]], [float(s) for s in configured[1]]) != (mean, std):
        print(
            f"note: {where} mean/std {list(configured[0])} / {list(configured[1])} differ from the checkpoint's"
            f" {mean} / {std}; using the checkpoint's, which the model was trained with"
        )
    return mean, std


def load_tensors_only(path: str):
    """``torch.load(weights_only=True)`` on the CPU, with one clear error for a missing file or a
    file that needs arbitrary unpickling (refused: no pickled code ever runs)."""
    if os.path.isdir(path):
        raise ValueError(
            f"checkpoint {path!r} is a folder; give the .ckpt file (a pretrained folder of export-model"
            " is given as --model.init_args.pretrained)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path!r} does not exist") from None
    except pickle.UnpicklingError as err:
        if not _looks_like_torch_save(path):
            raise ValueError(
                f"checkpoint {path!r} is not a PyTorch file (neither torch.save's zip nor a pickle);"
                " point to a .ckpt written by fit"
            ) from None
        raise ValueError(
            f"{path!r} is not a tensors-only checkpoint (refusing to unpickle code): {_one_line(err)}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        # torch's reader errors for a truncated or foreign file are long; their first sentence says it.
        first = str(err).strip().split(". ")[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"checkpoint {path!r} cannot be read ({first}): it is truncated or not a checkpoint;"
            " point to a complete .ckpt file"
        ) from None


def _file_head(path: str, size: int) -> bytes:
    """The first ``size`` bytes of a file (b"" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _looks_like_torch_save(path: str) -> bool:
    """A torch.save zip, or a legacy pickle (protocol 2+ starts with 0x80)."""
    head = _file_head(path, 4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _one_line(err: Exception) -> str:
    """torch's weights_only error spans several lines around its cause: that cause, on one line."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split()) or type(err).__name__


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a plain state_dict file, of a Lightning checkpoint (prefix ``model.`` removed), of a
    safetensors file or of a pretrained folder (``export-model``); never unpickling code."""
    from . import pretrained

    path = os.fspath(path)
    if pretrained.is_pretrained_folder(path):
        pretrained.read_pretrained_config(path)  # a folder without our config.json is named as such
        return pretrained.read_pretrained_weights(path)
    if _is_safetensors(path):
        return pretrained.read_safetensors(path)
    return _state_dict_of(load_tensors_only(path), path)


def exported_meta(path: str) -> dict | None:
    """The ``meta`` record ``export-backbone`` wrote beside the weights (.pth or .safetensors), or None."""
    if _is_safetensors(path):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            text = (f.metadata() or {}).get(EXPORT_META_KEY)
        meta = json.loads(text) if text else None
    else:
        loaded = load_tensors_only(path)
        meta = loaded.get("meta") if isinstance(loaded, dict) else None
    return meta if isinstance(meta, dict) else None


def _is_safetensors(path: str) -> bool:
    """A safetensors file: 8 bytes of header length, then the JSON header (``{``)."""
    head = _file_head(path, 9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _state_dict_of(obj, path: str) -> dict[str, torch.Tensor]:
    """:func:`read_state_dict` on an already loaded checkpoint ``obj`` (``path`` names it in errors)."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path!r} holds no state_dict of tensors")
    if any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return state


def head_to_reinitialise(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> list[str]:
    """The keys of a classifier head of another size in ``state`` (dropped by :func:`load_weights`);
    ValueError where ``state`` cannot be loaded into ``model`` at all: no shared keys, or another
    shape anywhere but the head and the (resizable) position embedding. Shapes only, so it also
    checks models and weights on the meta device (``grid --dry-run``)."""
    own = model.state_dict()
    shared = set(own) & set(state)
    if not shared:
        raise ValueError(
            f"{source} shares no parameter names with {type(model).__name__}: it belongs to another"
            f" architecture (first keys: {sorted(state)[:3]})"
        )
    dropped_head = [
        key
        for key in ("head.weight", "head.bias")
        if key in state and key in own and state[key].shape != own[key].shape
    ]
    mismatched = [k for k in shared - set(dropped_head) if k != "pos_embed" and state[k].shape != own[k].shape]
    if mismatched:
        details = ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(mismatched)[:5])
        raise ValueError(
            f"{source} does not fit {type(model).__name__} ({details}); it was trained for another architecture or size"
        )
    return dropped_head


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Load ``state`` into ``model`` for fine-tuning and report what did not match.

    - A classifier head of another size is dropped (re-initialised), and said so.
    - The position embedding is resized by the model's own load hook.
    - Any other shape mismatch, or no shared keys at all, raises ValueError (another architecture).
    - Missing and unexpected keys are logged as warnings and returned.
    """
    dropped_head = head_to_reinitialise(model, state, source)
    state = {k: v for k, v in state.items() if k not in dropped_head}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in dropped_head]
    if dropped_head:
        log.warning("%s: classifier head has another number of classes; re-initialised %s", source, dropped_head)
    if missing:
        log.warning("%s: missing keys (left at initialisation): %s", source, missing)
    if result.unexpected_keys:
        log.warning("%s: unexpected keys (ignored): %s", source, result.unexpected_keys)
    return {"missing": missing, "unexpected": list(result.unexpected_keys), "reinitialised_head": dropped_head}


def classifier_from_checkpoint(path: str) -> tuple[nn.Module, dict]:
    """The model of a ``python -m vir_lightning fit`` checkpoint (or of a pretrained folder written
    from one by ``export-model``), weights loaded strictly, in eval.

    The architecture comes from the checkpoint's ``hyper_parameters`` (name, options, classes, input
    size and channels), since they describe its weights; the retention form (``retention_mode``,
    ``chunk_size``) is left at the model's default, as every form computes the same function.

    Returns:
        (model, hyper_parameters), the latter with the checkpoint's ``preprocessing`` record added
        (normalisation, channels, image size; ``None`` for checkpoints written before it existed).

    Raises:
        ValueError: the file has no hyper-parameters (e.g. an exported backbone or a bare state_dict),
            or its weights do not fit the architecture they name.
    """
    from ..models import create_model

    if os.path.isdir(path):
        return _classifier_from_folder(path)
    checkpoint = load_tensors_only(path)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "model_name" not in hparams:
        raise ValueError(
            f"{path!r} has no hyper_parameters: give a checkpoint written by"
            " `python -m vir_lightning fit` (last.ckpt), not an exported backbone"
        )
    options = {
        k: v for k, v in (hparams.get("model_kwargs") or {}).items() if k not in ("retention_mode", "chunk_size")
    }
    size = hparams.get("img_size", 224)
    model = create_model(
        hparams["model_name"],
        num_classes=hparams.get("num_classes", 1000),
        img_size=size if isinstance(size, int) else tuple(size),
        in_chans=hparams.get("in_chans", 3),
        **options,
    )
    try:
        model.load_state_dict(_state_dict_of(checkpoint, path))  # strict: the architecture the checkpoint names
    except RuntimeError as err:
        raise ValueError(
            f"{path!r}: its weights do not fit the {hparams['model_name']} it names"
            f" ({' '.join(str(err).split())[:300]})"
        ) from None
    return model.eval().requires_grad_(False), {**hparams, "preprocessing": checkpoint.get("preprocessing")}


def _classifier_from_folder(path: str) -> tuple[nn.Module, dict]:
    """:func:`classifier_from_checkpoint` for a pretrained folder: its config as the hyper-parameters."""
    from .pretrained import as_hyper_parameters, from_pretrained

    model = from_pretrained(path)
    return model.requires_grad_(False), as_hyper_parameters(model.pretrained_config)
