"""``export-backbone``: a Lightning classification checkpoint → a plain tensor state_dict.

The output is what MMDetection/MMSegmentation configs hand to the backbone with
``init_cfg=dict(type="Pretrained", checkpoint=OUT)``: ``{"state_dict": {name: tensor}, "meta": {...}}``
with the model's own parameter names (no ``model.`` prefix) and without the classifier head. An
``OUT`` ending in ``.safetensors`` is written as safetensors instead (no pickle at all; the meta
record as JSON in its header), which ``HViRBackbone`` loads the same way. With
Lightning's ``EMAWeightAveraging`` the checkpoint's ``state_dict`` already holds the averaged
weights (the raw ones are under ``current_model_state``), so those are exported.
Everything is read with ``weights_only=True`` and written atomically.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from ..deploy.checkpoints import EXPORT_META_KEY, load_tensors_only
from ..io import add_overwrite_argument, atomic_output, check_output_path

HEAD_PREFIX = "head."
SAFETENSORS_SUFFIX = ".safetensors"


def read_lightning_checkpoint(path: str) -> dict:
    """The checkpoint dict, loaded tensors-only (no pickled code runs)."""
    checkpoint = load_tensors_only(path)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("meta"), dict) and "state_dict" in checkpoint:
        source = checkpoint["meta"].get("source", "a checkpoint")
        raise ValueError(
            f"{path!r} is already an exported backbone (of {source}); export the training checkpoint,"
            " or use this file as it is"
        )
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path!r} is not a Lightning checkpoint (no 'state_dict'); it may already be exported")
    return checkpoint


def export_backbone(checkpoint_path: str, out_path: str, keep_head: bool = False, overwrite: bool = False) -> dict:
    """Write the backbone weights of a classification checkpoint to ``out_path``.

    An existing ``out_path`` is replaced only if it is this command's export of the same checkpoint,
    or with ``overwrite`` (see :func:`~vir_lightning.io.check_output_path`); never the checkpoint.

    Returns the ``meta`` written: model name, whether the weights are the EMA ones, counts.
    """
    # before reading a large checkpoint; never over the checkpoint itself (it holds the head and optimizer)
    run = f"export-backbone of {os.path.abspath(checkpoint_path)}" + (" with its head" if keep_head else "")
    check_output_path(out_path, "export-backbone output", inputs=(checkpoint_path,), overwrite=overwrite, run=run)
    checkpoint = read_lightning_checkpoint(checkpoint_path)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    if not state:
        raise ValueError(f"{checkpoint_path!r} has no 'model.*' weights: not an ImageClassifier checkpoint")
    dropped = [] if keep_head else sorted(k for k in state if k.startswith(HEAD_PREFIX))
    # clone: a tensor that is a view would otherwise be saved with its whole shared storage
    state = {k: v.detach().clone() for k, v in state.items() if k not in set(dropped)}
    hparams = checkpoint.get("hyper_parameters", {})
    meta = {
        "model_name": str(hparams.get("model_name", "unknown")),
        "model_kwargs": {str(k): v for k, v in (hparams.get("model_kwargs") or {}).items()},
        "ema": "current_model_state" in checkpoint,
        "epoch": int(checkpoint.get("epoch", -1)),
        "global_step": int(checkpoint.get("global_step", -1)),
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values() if v.is_floating_point())),
        "dropped": dropped,
        "source": str(checkpoint_path),
        # what the backbone's inputs were normalised with (None: a checkpoint from before it was recorded)
        "preprocessing": checkpoint.get("preprocessing"),
    }
    with atomic_output(out_path, overwrite=overwrite, run=run) as tmp:
        if out_path.endswith(SAFETENSORS_SUFFIX):
            from safetensors.torch import save_file

            save_file(state, tmp, metadata={EXPORT_META_KEY: json.dumps(meta)})
        else:
            with open(tmp, "wb") as f:
                # Through a file object: given a path, torch.save names the zip's records after the file
                # name and rejects a temporary name without an extension (an output given as plain "out").
                torch.save({"state_dict": state, "meta": meta}, f)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vir_lightning export-backbone",
        description="Turn a Lightning classification checkpoint (EMA weights when present) into a plain"
        " tensor state_dict for init_cfg=dict(type='Pretrained', checkpoint=OUT).",
    )
    parser.add_argument("checkpoint", help="a .ckpt written by `python -m vir_lightning fit`")
    parser.add_argument("out", help="output .pth (torch's tensors-only zip) or .safetensors")
    parser.add_argument("--keep-head", action="store_true", help="keep the classifier head (default: dropped)")
    add_overwrite_argument(parser, "OUT")
    args = parser.parse_args(argv)
    meta = export_backbone(args.checkpoint, args.out, args.keep_head, args.overwrite)
    weights = "EMA" if meta["ema"] else "raw (no EMA in this checkpoint)"
    print(
        f"wrote {args.out}: {meta['model_name']}, {meta['tensors']} tensors, {meta['parameters']:,} parameters,"
        f" {weights} weights from epoch {meta['epoch']}; dropped {meta['dropped'] or 'nothing'}"
    )
    return 0
