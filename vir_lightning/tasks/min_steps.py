"""A training schedule that adapts to the data: at least a given number of optimizer steps."""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class MinTrainSteps(L.Callback):
    """Raise ``max_epochs`` so a fit makes at least ``steps`` optimizer steps, and say so.

    A config tuned for one dataset (the quickstart: 430 steps an epoch on Fashion-MNIST) gives a
    small folder of images only a few steps an epoch: 1,400 images at batch 128 is 10 steps, 120 in
    twelve epochs, far too few to learn. With this callback the schedule counts optimizer steps
    instead; the learning-rate schedule (which reads ``trainer.estimated_stepping_batches``) follows.
    A fit whose epochs already give enough steps is left alone, and so is one steered by hand
    (``fast_dev_run``, ``limit_train_batches``, ``max_steps``; the CLI also turns it off when
    ``--trainer.max_epochs`` is given on the command line).

    Args:
        steps: the fewest optimizer steps a fit makes (0 disables the callback).
    """

    def __init__(self, steps: int = 2000):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"MinTrainSteps(steps={steps!r}): expected a non-negative integer")
        self.steps = steps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # After the data module's setup and before configure_optimizers (which sizes the schedule).
        if stage != "fit" or not self.steps or trainer.datamodule is None or not trainer.max_epochs:
            return
        if trainer.fast_dev_run or trainer.limit_train_batches != 1.0 or trainer.max_steps != -1:
            return  # the schedule is steered by hand
        batches = len(trainer.datamodule.train_dataloader())
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        if steps_per_epoch == 0 or steps_per_epoch * trainer.max_epochs >= self.steps:
            return
        epochs = math.ceil(self.steps / steps_per_epoch)
        rank_zero_info(
            f"MinTrainSteps: {steps_per_epoch} optimizer steps an epoch x max_epochs={trainer.max_epochs} is fewer "
            f"than {self.steps}; training {epochs} epochs instead ({epochs * steps_per_epoch} steps)"
        )
        trainer.fit_loop.max_epochs = epochs
