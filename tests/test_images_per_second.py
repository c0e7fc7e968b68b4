"""ImagesPerSecond: training throughput excludes the validation inside the epoch; test throughput is its own."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vir_lightning.tasks import ImagesPerSecond

BATCH, STEP_SECONDS, VALIDATION_SECONDS = 8, 0.05, 0.3


class SleepyModule(L.LightningModule):
    """Each training and test batch takes STEP_SECONDS; each validation batch far longer."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        time.sleep(STEP_SECONDS)
        return (self.weight * batch[0].mean()).sum()

    def validation_step(self, batch, batch_idx):
        time.sleep(VALIDATION_SECONDS)

    def test_step(self, batch, batch_idx):
        time.sleep(STEP_SECONDS)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_images_per_second_counts_training_and_test_images_over_their_own_time(tmp_path):
    loader = DataLoader(TensorDataset(torch.zeros(6 * BATCH, 3, 4, 4), torch.zeros(6 * BATCH)), batch_size=BATCH)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=1,
        val_check_interval=3,
        limit_val_batches=2,
        default_root_dir=str(tmp_path),
        callbacks=[ImagesPerSecond()],
    )
    module = SleepyModule()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    ceiling = BATCH / STEP_SECONDS  # images per second if nothing but the sleep took time
    # the second epoch's rate: its two validations (4 × 0.3 s) would cut it to a fifth if they were
    # counted, and the sanity check's (before the first epoch) must not leak into it either
    assert 0.5 * ceiling < float(trainer.callback_metrics["train/images_per_s"]) <= ceiling
    metrics = trainer.test(module, dataloaders=loader, verbose=False)[0]
    assert metrics["test/images_per_s"] == pytest.approx(ceiling, rel=0.3) and metrics["test/images_per_s"] <= ceiling
