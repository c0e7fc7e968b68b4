"""Can a mini Mask R-CNN fit one batch? The probe that found H-ViR's output-norm problem.

    fit_one_batch.py CONFIG [--lr 3e-4] [--steps 120] [--images 4] [--cfg-options KEY=VALUE ...]

Builds the config's model and training set through MMDetection's registries, then trains on the
same first ``--images`` training images every step (AdamW, gradients clipped at norm 5) and prints
what mmengine logs for it (the total, each loss, the R-CNN accuracy) every 20 steps. A backbone
whose features the heads can read drives every loss down within about 100 steps
(docs/results/downstream-mini.md has the table); one that cannot leaves the mask loss near ln 2 and the
R-CNN classification loss high.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    args = parser.parse_args(argv)
    if args.images < 1 or args.steps < 0:
        parser.error(f"--images {args.images} / --steps {args.steps}: give at least 1 image and 0 or more steps")
    if not os.path.isfile(args.config):
        parser.error(f"config {args.config!r} does not exist; pass a configs/mini/*_maskrcnn_mini.py file")
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    init_default_scope("mmdet")
    from mmdet.registry import DATASETS, MODELS

    # the pipeline's random flips draw from numpy / random: seeded too, so a probe repeats exactly
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([dataset[i] for i in range(min(args.images, len(dataset)))])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    for step in range(args.steps + 1):
        data = model.data_preprocessor(batch, training=True)
        total, losses = model.parse_losses(model(**data, mode="loss"))  # mmengine's sum of every loss term
        optimizer.zero_grad()
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step % 20 == 0:
            values = "  ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
            print(f"step {step}: grad norm {grad_norm:.1f}  {values}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
