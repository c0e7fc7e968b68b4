"""Training and test throughput in images per second, as metrics a grid row can report.

Lightning's own ``ThroughputMonitor`` writes rolling averages straight to the loggers, so they never
reach ``trainer.callback_metrics`` (what ``metrics.json`` and the grid runner read). This callback
logs one number per stage through the module instead:

* ``train/images_per_s``: training images over the wall time of the training epoch (data loading,
  forward, backward and optimiser step included; validation inside the epoch excluded);
* ``test/images_per_s``: test images over the wall time of the test loop.

The clock is read only at epoch and loop boundaries. On CUDA the device is synchronised there, never
per batch, so the hot path keeps no host synchronisation. With several devices the per-device rates
are summed. Callbacks listed before this one that work at those boundaries (e.g. the per-image
loop of ``ObjectPositionBreakdown`` at the end of the test) count in the time; list it first to
leave them out.
"""

from __future__ import annotations

import time

import lightning as L
import torch


def _batch_size(batch) -> int:
    """Images in a ``(images, labels, ...)`` batch or in a bare image tensor."""
    images = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(images.shape[0])


class ImagesPerSecond(L.Callback):
    """Log ``train/images_per_s`` (per training epoch) and ``test/images_per_s`` (per test run)."""

    #: What it logs, as :attr:`ImageClassifier.LOGGED_METRICS <vir_lightning.tasks.ImageClassifier.LOGGED_METRICS>`.
    LOGGED_METRICS = ("train/images_per_s", "test/images_per_s")

    def __init__(self) -> None:
        self._images = {"train": 0, "test": 0}
        self._started: dict[str, float | None] = {"train": None, "test": None}
        self._paused = 0.0  # seconds of validation inside the current training epoch
        self._validation_started = 0.0

    @staticmethod
    def _clock(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":  # time what the device did, at a boundary only
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def _start(self, stage: str, pl_module: L.LightningModule) -> None:
        self._images[stage], self._started[stage] = 0, self._clock(pl_module)

    def _log(self, stage: str, pl_module: L.LightningModule, paused: float = 0.0) -> None:
        if self._started[stage] is None:  # no batch ran in this stage
            return
        seconds = self._clock(pl_module) - self._started[stage] - paused
        if self._images[stage] and seconds > 0:
            pl_module.log(f"{stage}/images_per_s", self._images[stage] / seconds, sync_dist=True, reduce_fx="sum")
        self._started[stage] = None

    def _start_training(self, pl_module: L.LightningModule) -> None:
        self._start("train", pl_module)
        self._paused = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_training(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._started["train"] is None:  # a fit resumed mid-epoch skips on_train_epoch_start
            self._start_training(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images["train"] += _batch_size(batch)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_started = self._clock(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # (the sanity check's validation comes before the first epoch starts, which resets this)
        self._paused += self._clock(pl_module) - self._validation_started

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("train", pl_module, paused=self._paused)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test", pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._images["test"] += _batch_size(batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("test", pl_module)
