"""Output a person can follow in a log: progress lines when stdout is not a terminal, no FLOPs column."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichProgressBar, TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from vir_lightning.tasks import progress
from vir_lightning.tasks.progress import (
    LineProgress,
    ProgressLines,
    RichSummaryWithoutFlops,
    SummaryWithoutFlops,
    use_readable_output,
)

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
TINY_MODEL = ['--model.init_args.model_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2}']


class FakeClock:
    """A clock that only the model's steps move (1 s a training step, 0.5 s a validation step)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tiny(L.LightningModule):
    def __init__(self, clock: FakeClock):
        super().__init__()
        self.layer = torch.nn.Linear(2, 3)
        self.clock = clock
        self.losses: list[float] = []

    def _loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.layer(x), y)

    def training_step(self, batch, batch_idx):
        self.clock.now += 1.0
        loss = self._loss(batch)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        self.clock.now += 0.5
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # the weights (so each batch's loss) stay put

    @staticmethod
    def _loader(n: int, seed: int) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        return DataLoader(
            TensorDataset(torch.randn(n, 2, generator=g), torch.randint(0, 3, (n,), generator=g)), batch_size=4
        )

    def train_dataloader(self):
        return self._loader(10, 0)  # batches of 4, 4 and 2 images

    def val_dataloader(self):
        return self._loader(6, 1)


def test_progress_lines_measure_images_per_second_loss_and_eta(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(progress, "_clock", clock)
    model = Tiny(clock)
    trainer = L.Trainer(
        callbacks=[ProgressLines(interval_s=0)],
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    lines = capsys.readouterr().out.splitlines()
    progress_lines = [line for line in lines if line.startswith("epoch ")]
    mean = sum(model.losses[:3]) / 3
    assert progress_lines[:4] == [
        # 4 images in the 1 s of the first step; 2 steps left in the epoch, 5 in the fit, and two
        # validations of 1 s each (estimated from the sanity check's 0.5 s a batch × 2 batches)
        f"epoch 1/2 | step 1/3 | loss {model.losses[0]:.4f} | 4.0 images/s | ETA epoch 0:02, fit 0:07",
        f"epoch 1/2 | step 2/3 | loss {model.losses[1]:.4f} | 4.0 images/s | ETA epoch 0:01, fit 0:06",
        # the last batch holds 2 images: 10 in 3 s, not 3 batches × 4
        f"epoch 1/2 | step 3/3 | loss {mean:.4f} (epoch mean) | 10 images in 0:03, 3.3 images/s | ETA fit 0:05",
        "epoch 1/2 | validation | batch 1/2 | 8.0 images/s | ETA 0:00",  # 4 images in 0.5 s
    ]
    # the validation's results, then 3 training batches and the last validation left (1 s each)
    assert re.fullmatch(
        r"epoch 1/2 \| validation \| val_loss \d\.\d{4} \| 6 images in 0:01, 6\.0 images/s"
        r" \| ETA fit 0:04",
        progress_lines[4],
    ), progress_lines[4]
    assert progress_lines[5] == (
        f"epoch 2/2 | step 1/3 | loss {model.losses[3]:.4f} | 4.0 images/s | ETA epoch 0:02, fit 0:03"
    )
    assert progress_lines[-1].endswith(" | 6 images in 0:01, 6.0 images/s | ETA fit 0:00")
    assert len(progress_lines) == 10
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_progress_lines_wait_for_their_interval(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(progress, "_clock", clock)
    trainer = L.Trainer(
        callbacks=[ProgressLines(interval_s=1.5)],
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Tiny(clock))
    lines = capsys.readouterr().out.splitlines()
    steps = [line.split(" | ")[1] for line in lines if line.startswith("epoch 1/1 | step")]
    assert steps == ["step 2/3", "step 3/3"]  # 1 s a step: the first line after 2 s, then the epoch's end


def test_only_rank_zero_prints(capsys):
    bar = ProgressLines()
    bar.setup(SimpleNamespace(is_global_zero=False), None, "fit")
    bar._line("epoch 1/1", "step 1/1")
    assert not bar.is_enabled and capsys.readouterr().out == ""


@pytest.mark.parametrize("terminal", [False, True])
def test_the_default_bar_gives_way_to_lines_only_off_a_terminal(monkeypatch, terminal):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    trainer = L.Trainer(logger=False, enable_checkpointing=False)
    default = type(trainer.progress_bar_callback)
    assert default in (RichProgressBar, TQDMProgressBar)
    use_readable_output(trainer)
    assert type(trainer.progress_bar_callback) is (default if terminal else ProgressLines)
    assert sum(isinstance(c, ProgressBar) for c in trainer.callbacks) == 1
    summaries = [c for c in trainer.callbacks if isinstance(c, ModelSummary)]
    assert [type(c) for c in summaries] in ([RichSummaryWithoutFlops], [SummaryWithoutFlops])


def test_a_bar_or_summary_the_config_names_stays_and_a_disabled_bar_stays_off(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    bar, summary = TQDMProgressBar(refresh_rate=7), ModelSummary(max_depth=2)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, callbacks=[bar, summary])
    named = [
        {"class_path": "lightning.pytorch.callbacks.TQDMProgressBar", "init_args": {"refresh_rate": 7}},
        {"class_path": "lightning.pytorch.callbacks.ModelSummary", "init_args": {"max_depth": 2}},
    ]
    use_readable_output(trainer, named)
    assert trainer.progress_bar_callback is bar and summary in trainer.callbacks
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    use_readable_output(trainer)
    assert trainer.progress_bar_callback is None
    assert not any(isinstance(c, ModelSummary) for c in trainer.callbacks)


def test_the_plain_summary_has_no_flops(caplog):
    from lightning.pytorch.utilities.model_summary import summarize

    summary = summarize(Tiny(FakeClock()), max_depth=1)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        SummaryWithoutFlops.summarize(
            summary._get_summary_data(),
            summary.total_parameters,
            summary.trainable_parameters,
            summary.model_size,
            summary.total_training_modes,
            summary.total_flops,
        )
    assert "Total params" in caplog.text and "layer" in caplog.text
    assert "flops" not in caplog.text.lower()


def test_line_progress_prints_lines_at_its_interval(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(progress, "_clock", clock)
    with LineProgress(total=8, desc="big.tif", unit="band", file=sys.stderr, leave=False, interval_s=10) as bands:
        for _ in range(8):
            clock.now += 4.0
            bands.update(1)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "big.tif: 3/8 bands (38%), 0:12 elapsed, ETA 0:20",
        "big.tif: 6/8 bands (75%), 0:24 elapsed, ETA 0:08",
    ]


def test_piped_fit_prints_progress_lines_and_a_summary_without_flops(tmp_path):
    """The CLI with stdout piped (as ``fit ... > log``): lines with every field, no carriage return."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vir_lightning",
            "fit",
            "--config",
            QUICKSTART,
            *TINY_MODEL,
            "--trainer.max_epochs",
            "1",
            "--trainer.check_val_every_n_epoch",
            "1",
            "--trainer.limit_train_batches",
            "4",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.limit_test_batches",
            "2",
            "--data.init_args.batch_size",
            "16",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    number, time_ = r"\d+\.\d+", r"\d+:\d\d"
    assert re.search(
        rf"^epoch 1/1 \| step 4/4 \| loss {number} \(epoch mean\) \| 64 images in {time_}, "
        rf"{number} images/s \| ETA fit {time_}$",
        out,
        re.M,
    ), out
    assert re.search(
        rf"^epoch 1/1 \| validation \| val/acc1 {number}, val/acc5 {number}, val/loss {number} \| "
        rf"32 images in {time_}, {number} images/s \| ETA fit 0:00$",
        out,
        re.M,
    ), out
    assert re.search(rf"^test \| batch 2/2 \| 32 images in {time_}, {number} images/s$", out, re.M), out
    assert "\r" not in out + proc.stderr and "\x1b" not in out
    assert "Total params" in out  # the summary is still there, without its FLOPs
    assert "flops" not in (out + proc.stderr).lower()
