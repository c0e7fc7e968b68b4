"""What a model was trained with travels with it: a checkpoint records its data's normalisation,
channels and image size; ``predict-large`` and ``predict`` use the record over a config that says
otherwise (with a notice), and ``export-backbone`` passes it on."""

from __future__ import annotations

import csv

import lightning as L
import numpy as np
import pytest
import tifffile
import torch
from test_predict_large import write_checkpoint

from vir_lightning.cli import main as cli_main
from vir_lightning.commands.export_backbone import export_backbone
from vir_lightning.data import ImageFolderDataModule
from vir_lightning.data.mosaic import write_mosaic
from vir_lightning.tasks import ImageClassifier

MEAN, STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]


def test_a_fit_checkpoint_records_the_datas_normalisation_channels_and_size(image_folder, tmp_path):
    data = ImageFolderDataModule(str(image_folder), img_size=32, num_workers=0, batch_size=4, mean=MEAN, std=STD)
    module = ImageClassifier(
        model_name="vir_nano_patch16_224",
        num_classes=data.num_classes,
        img_size=32,
        model_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2},
        class_names=data.class_names,
    )
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "fit.ckpt")
    checkpoint = torch.load(tmp_path / "fit.ckpt", weights_only=True)
    assert checkpoint["preprocessing"] == {"mean": MEAN, "std": STD, "in_chans": 3, "img_size": 32}
    meta = export_backbone(str(tmp_path / "fit.ckpt"), str(tmp_path / "backbone.pth"))
    assert meta["preprocessing"] == checkpoint["preprocessing"]


def test_predict_large_normalises_as_the_checkpoint_records_over_a_contradicting_config(tmp_path, capsys):
    model = write_checkpoint(tmp_path / "plain.ckpt").eval()
    saved = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    saved["preprocessing"] = {"mean": MEAN, "std": STD, "in_chans": 3, "img_size": 64}
    torch.save(saved, tmp_path / "model.ckpt")
    config = tmp_path / "config.yaml"
    config.write_text(
        "model:\n  class_path: vir_lightning.tasks.ImageClassifier\n  init_args:\n"
        "    model_name: vir_nano_patch16_224\n"
        "data:\n  class_path: vir_lightning.data.ImageFolderDataModule\n  init_args:\n    root: data/mine\n"
        "    mean: [0.5, 0.5, 0.5]\n    std: [0.5, 0.5, 0.5]\n"
    )
    image = tmp_path / "slide.tif"
    write_mosaic(str(image), 128, 192, levels=1, tile=64)
    out = tmp_path / "pred.csv"
    argv = [
        "predict-large",
        "--config",
        str(config),
        "--ckpt_path",
        str(tmp_path / "model.ckpt"),
        "--images",
        str(image),
        "--out",
        str(out),
    ]
    assert cli_main(argv) == 0
    assert "using the checkpoint's, which the model was trained with" in capsys.readouterr().out
    pixels = torch.from_numpy(tifffile.imread(image)).permute(2, 0, 1)[None].float() / 255
    images = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    model.dynamic_img_size = True
    with torch.no_grad():
        probs = model(images).softmax(-1)[0]
    (row,) = list(csv.DictReader(open(out, newline="")))
    order = probs.argsort(descending=True)
    assert [float(row[f"prob_{i}"]) for i in range(1, 5)] == pytest.approx(probs[order].tolist(), abs=2e-6)
    assert not np.isclose(probs.max().item(), 0.25)  # the weights are not uniform: the normalisation shows


def test_predict_normalises_as_the_checkpoint_records_with_a_notice(image_folder, tmp_path):
    from test_classification import run_cli

    data = ImageFolderDataModule(str(image_folder), img_size=32, num_workers=0, batch_size=4, mean=MEAN, std=STD)
    kwargs = {"embed_dim": 32, "depth": 1, "num_heads": 2}
    module = ImageClassifier(
        model_name="vir_nano_patch16_224",
        num_classes=data.num_classes,
        img_size=32,
        model_kwargs=kwargs,
        class_names=data.class_names,
    )
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "fit.ckpt")
    config = tmp_path / "config.yaml"
    config.write_text(
        "model:\n  class_path: vir_lightning.tasks.ImageClassifier\n  init_args:\n"
        f"    model_name: vir_nano_patch16_224\n    num_classes: {data.num_classes}\n    img_size: 32\n"
        f"    model_kwargs: {kwargs}\n"
        "data:\n  class_path: vir_lightning.data.ImageFolderDataModule\n  init_args:\n"
        f"    root: {image_folder}\n    img_size: 32\n    num_workers: 0\n    mean: [0.5, 0.5, 0.5]\n"
        "    std: [0.5, 0.5, 0.5]\n"
        "trainer:\n  logger: false\n  enable_progress_bar: false\n"
    )
    out = tmp_path / "pred.csv"
    proc = run_cli(
        "predict",
        "--config",
        str(config),
        f"--ckpt_path={tmp_path / 'fit.ckpt'}",
        f"--data.init_args.predict_root={image_folder}",
        f"--predictions_csv={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "using the checkpoint's, which the model was trained with" in proc.stdout
    assert len(list(csv.DictReader(open(out, newline="")))) > 0
