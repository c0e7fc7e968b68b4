"""Parameter groups (no weight decay, layer-wise lr decay) and the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, layer_decay: float | None = None) -> list[dict]:
    """Optimizer groups: parameters in ``model.no_weight_decay()`` (or with < 2 dims) get
    ``weight_decay=0``; the rest keep the optimizer's weight decay. With ``layer_decay`` every group
    carries ``lr_scale = layer_decay ** (num_layers − 1 − layer_id)`` from the model's own
    ``get_layer_depth(name) -> (layer_id, num_layers)`` (the head learns at full lr)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if layer_decay is not None and not hasattr(model, "get_layer_depth"):
        raise ValueError(
            f"layer_decay={layer_decay} needs a model that knows its layers (get_layer_depth);"
            f" {type(model).__name__} has none: leave layer_decay unset"
        )
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = name in skip or param.ndim <= 1
        layer, num_layers = model.get_layer_depth(name) if layer_decay is not None else (0, 1)
        key = (no_decay, layer)
        if key not in groups:
            group = {"params": [], "names": [], "lr_scale": 1.0}
            if no_decay:
                group["weight_decay"] = 0.0
            if layer_decay is not None:
                group["lr_scale"] = layer_decay ** (num_layers - 1 - layer)
            groups[key] = group
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return list(groups.values())


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    warmup_lr: float,
    min_lr: float,
    cooldown_steps: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear from ``warmup_lr`` to each group's lr, cosine down to ``min_lr``,
    then ``cooldown_steps`` at ``min_lr`` (the DeiT-style "310 + 10 cooldown" epochs)."""
    total_steps = max(1, total_steps - max(0, cooldown_steps))
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def factor_for(base_lr: float):
        def factor(step: int) -> float:
            if step < warmup_steps:
                lr = warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
            else:
                progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
                lr = min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            return lr / base_lr if base_lr > 0 else 0.0

        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_for(g["lr"]) for g in optimizer.param_groups])
