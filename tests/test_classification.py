"""The classification suite: CLI, configs, data modules, LightningModule, resume, DDP, predict."""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import write_image_folder

from vir_lightning.cli import main
from vir_lightning.data import FashionMNISTDataModule, ImageFolderDataModule
from vir_lightning.data.image_folder import decode_image
from vir_lightning.deploy.checkpoints import load_weights
from vir_lightning.tasks import ImageClassifier
from vir_lightning.tasks.optim import param_groups, warmup_cosine

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(glob.glob(str(REPO / "configs" / "**" / "*.yaml"), recursive=True))
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
# A fast model for CLI runs: the quickstart's nano ViR cut down.
TINY_MODEL = ['--model.init_args.model_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2}']


def run_cli(*args: str, cwd: Path, timeout: int = 600, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vir_lightning", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def metrics_rows(run_dir: Path) -> list[dict]:
    files = sorted(run_dir.glob("**/csv/version_*/metrics.csv"))
    assert files, f"no metrics.csv under {run_dir}"
    return list(csv.DictReader(files[-1].open()))


# -- command line ----------------------------------------------------------------------------------


def test_help_lists_training_subcommands_and_tools(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "bench-retention"):
        assert command in out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_parses_with_print_config(config, tmp_path):
    proc = run_cli("fit", "--config", config, "--print_config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "class_path: vir_lightning.tasks.ImageClassifier" in proc.stdout


def test_quickstart_fast_dev_run_prints_test_accuracy(tmp_path):
    proc = run_cli("fit", "--config", QUICKSTART, "--trainer.fast_dev_run", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/acc1" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("config", [c for c in CONFIGS if "imagenet" in c], ids=lambda p: os.path.basename(p))
def test_imagenet_configs_run_fast_dev_run_on_a_real_pixel_folder(config, image_folder, tmp_path):
    """The full recipes (RandAugment, Mixup/CutMix, EMA, erasing) on CPU, one step each."""
    proc = run_cli(
        "fit",
        "--config",
        config,
        "--trainer.fast_dev_run",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.precision",
        "32-true",
        f"--data.init_args.root={image_folder}",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.num_workers",
        "0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data.init_args.img_size", "30"], "not divisible by the patch size"),
        (["--model.init_args.model_name", "vir_nano_patch4_82"], "did you mean"),
        (["--data.init_args.root", "/nonexistent/fmnist"], "sudo apt-get install dataset-fashion-mnist"),
    ],
)
def test_configuration_errors_print_one_clear_line(args, message, tmp_path):
    proc = run_cli("fit", "--config", QUICKSTART, "--trainer.fast_dev_run", "1", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_own_image_folder_needs_only_the_root(image_folder, tmp_path):
    proc = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        "--data",
        "ImageFolderDataModule",
        f"--data.root={image_folder}",
        "--trainer.fast_dev_run",
        "1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/acc1" in proc.stdout


# -- data ----------------------------------------------------------------------------------------------


def test_image_folder_takes_classes_and_size_from_the_data(image_folder):
    dm = ImageFolderDataModule(str(image_folder), num_workers=0, batch_size=4)
    assert dm.class_names == ["sneaker", "trouser", "tshirt"]
    assert dm.num_classes == 3 and dm.in_chans == 3 and dm.img_size == 32
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.max() < 3


def test_gray_and_rgba_images_decode_to_rgb(image_folder):
    paths = sorted(glob.glob(str(image_folder / "train" / "*" / "*")))
    kinds = {Path(p).suffix for p in paths}
    assert {".png", ".jpg", ".PNG", ".JPEG"} <= kinds
    for path in paths:
        image = decode_image(path)
        assert image.shape == (32, 32, 3) and image.dtype.name == "uint8"


def test_undecodable_image_fails_with_its_path_or_is_skipped_and_counted(tmp_path):
    write_image_folder(tmp_path, per_class_train=2, per_class_val=1)
    bad = tmp_path / "train" / "trouser" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    dm = ImageFolderDataModule(str(tmp_path), img_size=32, num_workers=0, batch_size=2)
    dm.setup("fit")
    with pytest.raises(ValueError, match="broken.jpg"):
        list(dm.train_dataloader())
    dm = ImageFolderDataModule(
        str(tmp_path), img_size=32, num_workers=0, batch_size=16, skip_bad_images=True, random_erasing=0.0
    )
    dm.setup("fit")
    images, _ = next(iter(dm.val_dataloader()))
    train_source = dm._datasets["train"].source
    batches = list(dm._loader("train", shuffle=False))
    assert sum(len(b[1]) for b in batches) == len(train_source) - 1
    assert train_source.skipped == 1


def test_empty_class_folder_and_missing_root_are_clear_errors(tmp_path):
    write_image_folder(tmp_path, per_class_train=2, per_class_val=1)
    (tmp_path / "train" / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"class folders without jpg/jpeg/png images.*empty_class"):
        ImageFolderDataModule(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"data root '/no/such/root' does not exist"):
        ImageFolderDataModule("/no/such/root")


def test_augmentation_depends_only_on_seed_epoch_and_index():
    dm = FashionMNISTDataModule(num_workers=0, batch_size=8, crop_scale=(0.3, 1.0), val_size=100)
    dm.setup("fit")
    dataset = dm._datasets["train"]
    first = dataset[5][0]
    assert torch.equal(first, dataset[5][0])  # same (seed, epoch, index): same augmentation
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[5][0])  # a new epoch: a new augmentation
    dataset.set_epoch(0)
    assert torch.equal(first, dataset[5][0])


# -- module ----------------------------------------------------------------------------------------------


def test_param_groups_exclude_embeddings_norms_biases_and_layer_scale_from_weight_decay():
    module = ImageClassifier("vir_nano_patch4_28", num_classes=10, img_size=28, in_chans=1)
    groups = param_groups(module.model)
    no_decay = {n for g in groups if g.get("weight_decay") == 0.0 for n in g["names"]}
    decay = {n for g in groups if "weight_decay" not in g for n in g["names"]}
    assert {"pos_embed", "cls_token", "blocks.0.ls1.gamma", "blocks.0.norm1.weight", "head.bias"} <= no_decay
    assert "blocks.0.retention.qkv.weight" in decay and "head.weight" in decay
    layered = param_groups(module.model, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in layered for n in g["names"]}
    assert scale["head.weight"] == 1.0 and scale["blocks.5.mlp.fc1.weight"] == 0.5
    assert scale["pos_embed"] == 0.5**7


def test_warmup_cosine_schedule_values():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": 1.0}], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=110, warmup_steps=10, warmup_lr=0.0, min_lr=0.1, cooldown_steps=10)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.55)  # half way through the 90 cosine steps
    assert lrs[100:] == pytest.approx([0.1] * 10)  # cooldown at min_lr


def test_pretrained_weights_load_at_another_resolution_and_head_size(tmp_path):
    source = ImageClassifier("vir_nano_patch4_28", num_classes=10, img_size=28, in_chans=1)
    path = tmp_path / "weights.pt"
    torch.save(source.model.state_dict(), path)
    target = ImageClassifier("vir_nano_patch4_28", num_classes=5, img_size=56, in_chans=1, pretrained=str(path))
    assert target.load_report["reinitialised_head"] == ["head.weight", "head.bias"]
    assert target.load_report["missing"] == [] and target.load_report["unexpected"] == []
    assert target.model.pos_embed.shape == (1, 196, 96)
    assert torch.equal(target.model.blocks[3].mlp.fc1.weight, source.model.blocks[3].mlp.fc1.weight)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    other = ImageClassifier("vir_tiny_patch4_28", num_classes=10, img_size=28, in_chans=1)
    path = tmp_path / "tiny.pt"
    torch.save(other.model.state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit VisionRetention.*another architecture"):
        ImageClassifier("vir_nano_patch4_28", num_classes=10, img_size=28, in_chans=1, pretrained=str(path))
    with pytest.raises(ValueError, match=r"shares no parameter names"):
        load_weights(other.model, {"backbone.conv.weight": torch.zeros(1)})


def test_a_fit_checkpoint_rebuilds_its_own_classifier_and_other_files_are_refused(tmp_path):
    from vir_lightning.deploy.checkpoints import classifier_from_checkpoint

    torch.manual_seed(0)
    module = ImageClassifier(
        "hvir_nano",
        model_kwargs={"retention_mode": "chunkwise", "chunk_size": 4},
        num_classes=3,
        img_size=64,
        in_chans=3,
    ).eval()
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    model, hparams = classifier_from_checkpoint(str(path))
    images = torch.randn(2, 3, 64, 64)
    assert not model.training and hparams["num_classes"] == 3
    torch.testing.assert_close(model(images), module.model(images), rtol=1e-4, atol=1e-5)
    torch.save(module.model.state_dict(), tmp_path / "backbone.pth")  # no hyper-parameters
    with pytest.raises(ValueError, match="has no hyper_parameters.*vir_lightning fit"):
        classifier_from_checkpoint(str(tmp_path / "backbone.pth"))
    wrong = dict(module.hparams, num_classes=5)  # hyper-parameters that do not describe the weights
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": wrong}, tmp_path / "wrong.ckpt")
    with pytest.raises(ValueError, match="weights do not fit the hvir_nano it names"):
        classifier_from_checkpoint(str(tmp_path / "wrong.ckpt"))


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": object()}, path)
    with pytest.raises(ValueError, match="not a tensors-only checkpoint"):
        ImageClassifier("vir_nano_patch4_28", num_classes=10, img_size=28, in_chans=1, pretrained=str(path))


def test_metrics_of_one_checkpoint_are_identical_in_every_retention_mode(tmp_path):
    L.seed_everything(0)
    dm = FashionMNISTDataModule(num_workers=0, batch_size=100, val_size=300)
    module = ImageClassifier(
        "vir_nano_patch4_28", num_classes=10, img_size=28, in_chans=1, model_kwargs={"decay": "2d", "depth": 2}
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=80,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, dm)
    results = {}
    for mode, chunk in (("parallel", None), ("chunkwise", 2), ("recurrent", None), ("streaming", 3)):
        module.hparams.eval_mode, module.hparams.eval_chunk_size = mode, chunk
        evaluator = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
        results[mode] = evaluator.validate(module, dm, verbose=False)[0]
    assert results["parallel"]["val/acc1"] > 0.3  # it learned something, so equality means something
    for mode in ("chunkwise", "recurrent", "streaming"):
        assert results[mode]["val/acc1"] == results["parallel"]["val/acc1"]
        assert results[mode]["val/acc5"] == results["parallel"]["val/acc5"]
        assert results[mode]["val/loss"] == pytest.approx(results["parallel"]["val/loss"], rel=1e-5)


# -- reliability --------------------------------------------------------------------------------------------


RESUME_ARGS = [
    '--model.init_args.model_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2, "drop_path_rate": 0.1}',
    "--trainer.max_epochs",
    "3",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.limit_train_batches",
    "6",
    "--trainer.limit_val_batches",
    "3",
    "--test_after_fit",
    "false",
    "--data.init_args.num_workers",
    "0",
    "--data.init_args.crop_scale=[0.5, 1.0]",
]


@pytest.mark.slow
def test_fit_killed_part_way_and_resumed_matches_an_uninterrupted_fit(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    proc = run_cli("fit", "--config", QUICKSTART, *RESUME_ARGS, cwd=whole)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = list(whole.glob("runs/quickstart/**/config.yaml"))
    assert saved and "vir_nano_patch4_28" in saved[0].read_text()  # every run saves its resolved config
    env = {"PYTHONPATH": str(REPO / "tests")}
    killed = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *RESUME_ARGS,
        "--trainer.callbacks+=kill_callback.KillAtEpoch",
        "--trainer.callbacks.epoch=2",
        cwd=broken,
        extra_env=env,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL after two epochs
    resumed = run_cli("fit", "--config", QUICKSTART, *RESUME_ARGS, "--ckpt_path", "last", cwd=broken)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr  # not from scratch

    def final(run_dir):
        rows = [r for r in metrics_rows(run_dir) if r.get("val/acc1")]
        return rows[-1]["epoch"], float(rows[-1]["val/acc1"]), float(rows[-1]["val/loss"])

    assert final(whole) == final(broken)
    last = [torch.load(d / "runs/quickstart/checkpoints/last.ckpt", weights_only=True) for d in (whole, broken)]
    assert [c["epoch"] for c in last] == [2, 2]  # last.ckpt is the final epoch, whether or not it improved
    weights = [c["state_dict"] for c in last]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


@pytest.mark.slow
def test_ddp_fit_on_two_cpu_processes(tmp_path):
    config = str(REPO / "configs" / "quickstart_ddp.yaml")
    proc = run_cli(
        "fit",
        "--config",
        config,
        *TINY_MODEL,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
        "--data.init_args.num_workers",
        "0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/acc1" in proc.stdout
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout


def test_predict_writes_top5_csv_for_a_folder(image_folder, tiny_weights, tmp_path):
    out = tmp_path / "preds" / "out.csv"
    proc = run_cli(
        "predict",
        "--config",
        QUICKSTART,
        *TINY_MODEL,
        f"--model.init_args.pretrained={tiny_weights}",
        f"--data.init_args.predict_root={image_folder}",
        f"--predictions_csv={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    images = glob.glob(str(image_folder / "**" / "*.*"), recursive=True)
    assert sorted(r["path"] for r in rows) == sorted(images)
    from vir_lightning.data.fashion_mnist import CLASS_NAMES

    for row in rows:
        probs = [float(row[f"prob_{i}"]) for i in range(1, 6)]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert {row[f"class_{i}"] for i in range(1, 6)} <= set(CLASS_NAMES)
    assert not list(out.parent.glob(".partial-*"))
