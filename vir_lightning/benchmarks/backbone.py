"""Time and peak memory of a backbone's feature pyramid per retention mode, at one input size,
beside MMDetection's own backbones.

    python -m vir_lightning bench-backbone [--model hvir_tiny] [--size 800 1333] [--modes parallel chunkwise]
        [--tasks inference train] [--baselines swin_t resnet50]

The measured call is what a detector runs: all four stage outputs, batch ``--batch``, float32 on
the CPU. ``inference``: eval mode under ``torch.inference_mode``; ``train``: train mode, forward,
a loss on every output (sum of squares) and the backward pass. ``--baselines`` builds MMDetection's
Swin-T and ResNet-50 through its registry with the settings of its Mask R-CNN configs (every stage
trainable, as H-ViR's), when the mm tier is installed (``make mm``). Each configuration runs in its
own process (see :mod:`vir_lightning.benchmarks.measure`); the outputs of every retention mode are
checked against parallel mode's (the relative difference is printed).
"""

from __future__ import annotations

from ..retention.forms import OP_FORMS
from .measure import measure, worker_main

MODE_CHOICES = OP_FORMS

#: MMDetection's backbones as its Mask R-CNN configs build them (mask-rcnn_swin-t-p4-w7 and
#: mask-rcnn_r50), except that every stage trains (mmdet freezes ResNet's stem and first stage).
MM_BASELINES = {
    "swin_t": dict(
        type="SwinTransformer",
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        convert_weights=False,
    ),
    "resnet50": dict(
        type="ResNet",
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type="BN", requires_grad=True),
        norm_eval=False,
        style="pytorch",
    ),
}


def _build(cfg: dict):
    """(model, features(x)) for a retention model of the registry or an MMDetection baseline."""
    if cfg["mode"] == "mmdet":
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules

        register_all_modules()
        model = MODELS.build(dict(MM_BASELINES[cfg["model"]]))
        model.init_weights()
        return model, model
    from ..models import create_model

    extra = {"directions": cfg["directions"]} if cfg["directions"] else {}
    model = create_model(cfg["model"], num_classes=0, layer_scale_init=1.0, **extra)
    model.set_retention_mode(cfg["mode"], cfg["chunk_size"])
    return model, lambda x: model.forward_intermediates(x, intermediates_only=True)


def _worker(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model, features = _build(cfg)
    x = torch.randn(cfg["batch"], 3, cfg["height"], cfg["width"], generator=torch.Generator().manual_seed(0))
    if cfg["task"] == "train":
        model.train()

        def step():
            feats = features(x)
            sum(f.square().mean() for f in feats).backward()
            model.zero_grad(set_to_none=True)
            return [f.detach() for f in feats]

        _, stats = measure(step, cfg["repeats"], cfg["min_seconds"], allocator=cfg["allocator"])
        return {**stats, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    model.eval()
    with torch.inference_mode():
        feats, stats = measure(lambda: features(x), cfg["repeats"], cfg["min_seconds"], allocator=cfg["allocator"])
        # A fingerprint of the outputs, so the parent can compare modes without moving tensors.
        probe = torch.cat([f.flatten()[:: max(1, f.numel() // 4096)] for f in feats]).double()
    return {
        **stats,
        "probe": probe.tolist(),
        "grids": [list(f.shape[-2:]) for f in feats],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


if __name__ == "__main__":  # run_isolated: one configuration, in this process
    raise SystemExit(worker_main(_worker))
