"""`export-backbone`: a real Lightning checkpoint (H-ViR trained through the CLI with EMA) → tensors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vir_lightning.commands.export_backbone import export_backbone
from vir_lightning.models import create_model

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vir_lightning", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def hvir_checkpoint(tmp_path_factory) -> Path:
    """Six steps of H-ViR nano on Fashion-MNIST (56×56) with EMAWeightAveraging, via the CLI."""
    cwd = tmp_path_factory.mktemp("fit")
    proc = run(
        "fit",
        "--config",
        QUICKSTART,
        "--model.init_args.model_name",
        "hvir_nano",
        "--model.init_args.model_kwargs={}",
        "--data.init_args.img_size",
        "56",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "6",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--test_after_fit",
        "false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging",
        "--trainer.callbacks.init_args.decay",
        "0.5",
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "runs" / "quickstart" / "checkpoints" / "last.ckpt"


def test_export_writes_the_ema_weights_without_the_head(hvir_checkpoint, tmp_path):
    out = tmp_path / "hvir_nano.pth"
    proc = run("export-backbone", str(hvir_checkpoint), str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hvir_nano" in proc.stdout and "EMA weights" in proc.stdout
    exported = torch.load(out, weights_only=True)
    checkpoint = torch.load(hvir_checkpoint, weights_only=True)
    ema = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    raw = {k[len("model.") :]: v for k, v in checkpoint["current_model_state"].items() if k.startswith("model.")}
    state = exported["state_dict"]
    assert exported["meta"]["ema"] is True and exported["meta"]["model_name"] == "hvir_nano"
    assert set(state) == {k for k in ema if not k.startswith("head.")}
    assert all(torch.equal(state[k], ema[k]) for k in state)
    assert any(not torch.equal(ema[k], raw[k]) for k in state if ema[k].is_floating_point())  # EMA ≠ raw
    model = create_model("hvir_nano", num_classes=0, in_chans=1)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected


def test_export_refuses_a_non_lightning_file_and_leaves_nothing_behind(tmp_path):
    torch.save({"stem.0.weight": torch.zeros(1)}, tmp_path / "plain.pth")
    proc = run("export-backbone", str(tmp_path / "plain.pth"), str(tmp_path / "out.pth"), cwd=tmp_path)
    assert proc.returncode == 2 and "not a Lightning checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("export-backbone", str(tmp_path / "missing.ckpt"), str(tmp_path / "out.pth"), cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.pth"]


def test_export_keeps_the_head_on_request(tmp_path):
    model = create_model("hvir_nano", num_classes=4)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "a.ckpt")
    meta = export_backbone(str(tmp_path / "a.ckpt"), str(tmp_path / "a.pth"), keep_head=True)
    assert meta["dropped"] == [] and meta["ema"] is False
    assert "head.weight" in torch.load(tmp_path / "a.pth", weights_only=True)["state_dict"]
