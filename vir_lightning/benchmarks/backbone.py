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

import argparse
import json
import os
import platform
import sys

from ..retention.forms import CHUNKWISE, OP_FORMS, PARALLEL
from .measure import add_measure_args, check_measure_args, check_positive, measure, run_isolated, write_results_csv

MODE_CHOICES = OP_FORMS

#: MMDetection's backbones as its Mask R-CNN configs build them (mask-rcnn_swin-t-p4-w7 and
#: mask-rcnn_r50), except that every stage trains (mmdet freezes ResNet's stem and first stage).
MM_BASELINES = {
    "swin_t": dict(type="SwinTransformer", embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                   window_size=7, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2, patch_norm=True,
                   out_indices=(0, 1, 2, 3), convert_weights=False),
    "resnet50": dict(type="ResNet", depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                     norm_cfg=dict(type="BN", requires_grad=True), norm_eval=False, style="pytorch"),
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
    return {**stats, "probe": probe.tolist(), "grids": [list(f.shape[-2:]) for f in feats],
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vir_lightning bench-backbone", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="hvir_tiny", help="a registered H-ViR name (default hvir_tiny)")
    p.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("HEIGHT", "WIDTH"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--modes", nargs="+", choices=MODE_CHOICES, default=[PARALLEL, CHUNKWISE])
    p.add_argument("--directions", type=int, nargs="+", default=[0], help="2D decay directions (0 = model default)")
    p.add_argument("--chunk-size", type=int, default=None, help="chunkwise tile height in grid rows")
    p.add_argument("--tasks", nargs="+", choices=("inference", "train"), default=["inference"],
                   help="inference, and/or a training step (forward, loss on every output, backward)")
    p.add_argument("--baselines", nargs="*", choices=sorted(MM_BASELINES), default=[],
                   help="MMDetection backbones measured alongside, in the same run (needs `make mm`)")
    add_measure_args(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Every bad value as one ValueError before any configuration runs (each would otherwise fail
    in its own row and the command still succeed)."""
    import torch

    from ..models import HybridViR, create_model

    check_measure_args(args)
    for option, values in (("--size", args.size), ("--batch", args.batch), ("--chunk-size", args.chunk_size)):
        check_positive(option, values)
    bad = [d for d in args.directions if d not in (0, 1, 2, 4)]
    if bad:
        raise ValueError(f"--directions {' '.join(map(str, bad))}: expected 0 (the model's default), 1, 2 or 4")
    with torch.device("meta"):  # cheap: no weights
        model = create_model(args.model, num_classes=0)  # ValueError names close matches for a typo
    if not isinstance(model, HybridViR):
        raise ValueError(f"--model {args.model!r} is not an H-ViR backbone; expected one of hvir_nano, hvir_tiny,"
                         " hvir_small, hvir_base (`bench` measures the ViR/ViT classifiers)")
    if args.baselines:
        try:
            import mmdet  # noqa: F401
        except ImportError:
            raise ImportError("--baselines needs MMDetection: run `make mm` (or drop --baselines)") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    _check_args(args)
    import torch

    height, width = args.size
    print(
        f"# backbone benchmark — {args.model} {height}×{width} batch {args.batch}, all four stage outputs, fp32,"
        f" {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads,"
        f" torch {torch.__version__}"
    )
    print("| task | backbone | directions | mode | chunk | time ms (median) | min–max ms | peak MB | params M |"
          " rel. diff vs parallel |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    common = dict(height=height, width=width, batch=args.batch, threads=args.threads, allocator=args.allocator,
                  repeats=args.repeats, min_seconds=args.min_seconds)
    for task in args.tasks:
        plan = [dict(model=args.model, mode=mode, directions=directions,
                     chunk_size=args.chunk_size if mode == CHUNKWISE else None)
                for directions in args.directions for mode in args.modes]
        plan += [dict(model=name, mode="mmdet", directions=0, chunk_size=None) for name in args.baselines]
        references = {}
        for entry in plan:
            cfg = {**entry, **common, "task": task}
            result = run_isolated("vir_lightning.benchmarks.backbone", cfg)
            probe = result.pop("probe", None)
            diff = ""
            if probe is not None and cfg["mode"] != "mmdet":
                reference = references.get(cfg["directions"])
                if reference is None and cfg["mode"] == PARALLEL:
                    references[cfg["directions"]] = torch.tensor(probe)
                elif reference is not None:
                    diff = f"{float((torch.tensor(probe) - reference).norm() / reference.norm()):.1e}"
            row = {**cfg, **result, "rel_diff": diff}
            rows.append(row)
            label = "—" if cfg["mode"] == "mmdet" else (cfg["directions"] or "default")
            default_chunk = cfg["mode"] == CHUNKWISE and cfg["chunk_size"] is None
            chunk = "default" if default_chunk else (cfg["chunk_size"] or "—")
            name = f"{cfg['model']} (MMDetection)" if cfg["mode"] == "mmdet" else cfg["model"]
            mode = "—" if cfg["mode"] == "mmdet" else cfg["mode"]
            if "error" in result:
                print(f"| {task} | {name} | {label} | {mode} | {chunk} | {result['error']} | | | | |")
            else:
                print(
                    f"| {task} | {name} | {label} | {mode} | {chunk} | {result['time_ms']:.0f} |"
                    f" {result['time_min_ms']:.0f}–{result['time_max_ms']:.0f} | {result['peak_mb']:.0f} |"
                    f" {result['params_m']:.1f} | {diff or '—'} |"
                )
            sys.stdout.flush()
    grids = next((row["grids"] for row in rows if "grids" in row), None)
    if grids:
        print(f"stage grids: {grids}")
    if args.csv:
        write_results_csv(args.csv, rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
