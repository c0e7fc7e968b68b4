"""The cases of the new-user sweep over predict-large, export-*, predict, the grids and the data
modules (docs/guides/reliability.md, "The newest paths"): each ends in one ``error:`` line naming the problem
and the fix, a warning, or the right result, where it used to lose data or answer wrongly."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import FASHION_MNIST
from PIL import Image
from test_classification import QUICKSTART, TINY_MODEL
from test_grid import write_spec
from test_outputs_never_replace_inputs import digest
from test_predict_large import read_rows, write_checkpoint, write_config

from vir_lightning.cli import main
from vir_lightning.data import ImageFolderDataModule
from vir_lightning.data.fashion_mnist import FILES, FashionMNISTDataModule
from vir_lightning.data.files import list_images
from vir_lightning.grid.spec import load_spec
from vir_lightning.tasks import ImageClassifier


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def vir(tmp_path_factory):
    """(checkpoint, config, a 96² real-pixel PNG, a 3×3 PNG) for predict-large."""
    folder = tmp_path_factory.mktemp("vir")
    write_checkpoint(folder / "model.ckpt")
    from matplotlib import cbook

    pixels = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((96, 96)))
    Image.fromarray(pixels).save(folder / "photo.png")
    Image.fromarray(pixels[:3, :3]).save(folder / "tiny.png")
    return str(folder / "model.ckpt"), write_config(folder / "config.yaml"), folder / "photo.png", folder / "tiny.png"


def predict_large(vir, out, *extra):
    ckpt, config, _, _ = vir
    return main(["predict-large", "--config", config, "--ckpt_path", ckpt, "--out", str(out), *extra])


# -- predict-large ---------------------------------------------------------------------------------


def test_an_image_given_twice_is_predicted_once(vir, tmp_path, capsys):
    photo = vir[2]
    link = tmp_path / "same.png"
    os.symlink(photo, link)
    assert predict_large(vir, tmp_path / "p.csv", "--images", str(photo), str(photo), str(link)) == 0
    assert "2 of --images name an image given before; each is predicted once" in capsys.readouterr().out
    assert [row["path"] for row in read_rows(tmp_path / "p.csv")] == [str(photo)]


def test_a_rerun_that_adds_features_predicts_the_image_again(vir, tmp_path, capsys):
    photo, out, features = vir[2], tmp_path / "p.csv", tmp_path / "features"
    assert predict_large(vir, out, "--images", str(photo)) == 0
    assert predict_large(vir, out, "--images", str(photo), "--features-dir", str(features)) == 0
    assert "already in" not in capsys.readouterr().out  # it used to skip it, leaving no features
    assert (features / "photo.npy").exists() and len(read_rows(out)) == 1
    assert predict_large(vir, out, "--images", str(photo), "--features-dir", str(features)) == 0
    assert "already in" in capsys.readouterr().out


def test_a_run_where_every_image_fails_writes_nothing_and_says_so(vir, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert predict_large(vir, out, "--images", str(vir[3])) == 1
    captured = capsys.readouterr()
    assert "nothing written to" in captured.out and "wrote" not in captured.out
    assert not out.exists() and not os.path.exists(str(out) + ".options.json")


def test_an_image_smaller_than_a_patch_is_padded_with_edge_pad_and_the_advice_fits_the_level(vir, tmp_path, capsys):
    tiny = str(vir[3])
    assert predict_large(vir, tmp_path / "a.csv", "--images", tiny) == 1
    message = error_lines(capsys.readouterr().err)[0]
    assert "smaller than one 16×16 patch, so cropping leaves nothing; use --edge pad" in message
    assert "lower --level" not in message  # it is read at level 0 already
    assert predict_large(vir, tmp_path / "b.csv", "--images", tiny, "--edge", "pad") == 0
    assert read_rows(tmp_path / "b.csv")[0]["grid_rows"] == "1"


def test_a_folder_given_as_an_image_is_named_as_a_folder(vir, tmp_path, capsys):
    assert predict_large(vir, tmp_path / "p.csv", "--images", str(tmp_path)) == 1
    assert error_lines(capsys.readouterr().err) == [
        f"error: {tmp_path} is a folder; pass the image files in it (e.g. {tmp_path / '*.tif'})"
    ]


def test_an_image_too_large_for_memory_is_named_with_the_fix(vir, tmp_path, capsys, monkeypatch):
    import vir_lightning.commands.predict_large as predict_large_module

    def numpy_out_of_memory(*args, **kwargs):  # what numpy says for a 10⁶² px strip: no file, no fix
        raise MemoryError("Unable to allocate 931. GiB for an array with shape (1000000, 1000000)")

    monkeypatch.setattr(predict_large_module, "predict_image", numpy_out_of_memory)
    assert predict_large(vir, tmp_path / "p.csv", "--images", str(vir[2])) == 1
    message = error_lines(capsys.readouterr().err)[0]
    assert message.startswith(f"error: {vir[2]}: Unable to allocate 931. GiB")
    assert "rewrite the file tiled, or read another --level" in message


def test_predict_large_names_predict_for_a_model_that_cannot_stream(tmp_path, capsys):
    from vir_lightning.deploy.streaming_predict import load_streaming_model

    module = ImageClassifier(model_name="hvir_nano", num_classes=4, img_size=64, class_names=list("wxyz"))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "h.ckpt")
    config = tmp_path / "c.yaml"
    config.write_text(
        "model:\n  class_path: vir_lightning.tasks.ImageClassifier\n  init_args:\n    model_name: hvir_nano\n"
    )
    with pytest.raises(ValueError, match="predict-large takes ViR checkpoints: use `predict` for this model") as err:
        load_streaming_model(str(config), str(tmp_path / "h.ckpt"), None)
    assert "retention_mode" not in str(err.value).split("(")[0]


# -- export-backbone and checkpoints ---------------------------------------------------------------


def test_export_of_an_exported_backbone_or_of_a_non_torch_file_says_what_the_file_is(vir, tmp_path, capsys):
    assert main(["export-backbone", vir[0], str(tmp_path / "backbone.pth")]) == 0
    assert main(["export-backbone", str(tmp_path / "backbone.pth"), str(tmp_path / "again.pth")]) == 2
    assert "is already an exported backbone (of " in error_lines(capsys.readouterr().err)[0]
    (tmp_path / "c.json").write_text("{}")
    assert main(["export-backbone", str(tmp_path / "c.json"), str(tmp_path / "z.pth")]) == 2
    assert "is not a PyTorch file (neither torch.save's zip nor a pickle)" in error_lines(capsys.readouterr().err)[0]
    assert sorted(os.listdir(tmp_path)) == [".vir_lightning-outputs.json", "backbone.pth", "c.json"]


def test_the_hvir_backbone_names_a_vir_export_as_what_it_is(vir, tmp_path):
    from conftest import require_mm

    require_mm()
    from downstream.hvir_backbone import HViRBackbone

    assert main(["export-backbone", vir[0], str(tmp_path / "vir.pth")]) == 0
    backbone = HViRBackbone(arch="nano", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "vir.pth")))
    with pytest.raises(ValueError, match="holds the backbone of 'vir_nano_patch16_224', not of an H-ViR"):
        backbone.init_weights()


# -- build-mosaic, export-cluttered ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("m.tif", ["--levels", "0"], "--levels 0: expected at least 1"),
        ("mosaic.png", [], "the mosaic is a TIFF; give a .tif or .tiff file name"),
    ],
)
def test_build_mosaic_refuses_no_levels_and_a_non_tiff_name(tmp_path, capsys, name, options, message):
    assert main(["build-mosaic", str(tmp_path / name), "--size", "64", "64", *options]) == 2
    assert message in error_lines(capsys.readouterr().err)[0]
    assert os.listdir(tmp_path) == []


def test_export_cluttered_needs_training_and_validation_images(tmp_path, capsys):
    assert main(["export-cluttered", str(tmp_path / "out"), "--train", "0", "--val", "0", "--test", "0"]) == 2
    assert "--train 0: expected 1.." in error_lines(capsys.readouterr().err)[0]
    assert not (tmp_path / "out").exists()


# -- image folders and predict ---------------------------------------------------------------------


def test_images_outside_every_class_folder_are_said_to_be_unused(image_folder, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    for n in range(3):
        shutil.copy(list_images(str(root / "train" / "tshirt"))[n], root / "train" / f"loose{n}.png")
    with caplog.at_level(logging.WARNING):
        ImageFolderDataModule(str(root))
    assert "3 image(s) directly in the split folder, outside every class folder, are not used" in caplog.text


def test_an_image_folder_with_one_class_or_validating_on_its_training_images_is_refused(image_folder, tmp_path):
    with pytest.raises(ValueError, match="val_dir='train' is the training folder 'train'; give it held-out images"):
        ImageFolderDataModule(str(image_folder), val_dir="train")
    root = tmp_path / "one"
    for split in ("train", "val"):
        shutil.copytree(image_folder / split / "tshirt", root / split / "tshirt")
    with pytest.raises(ValueError, match="has one class folder \\('tshirt'\\); classification needs at least 2"):
        ImageFolderDataModule(str(root))


def test_predict_never_writes_its_csv_over_one_of_its_images(image_folder, tiny_weights, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(image_folder / "val", images)
    victim = list_images(str(images), recursive=True)[0]
    before = digest(victim)
    assert (
        main(
            [
                "predict",
                "--config",
                QUICKSTART,
                *TINY_MODEL,
                f"--model.init_args.pretrained={tiny_weights}",
                f"--data.init_args.predict_root={images}",
                f"--predictions_csv={victim}",
                "--overwrite=true",
                f"--trainer.default_root_dir={tmp_path / 'run'}",
            ]
        )
        != 0
    )
    assert "is this command's own input" in error_lines(capsys.readouterr().err)[-1]
    assert digest(victim) == before


def test_predict_root_naming_a_file_says_to_give_its_folder(image_folder):
    image = list_images(str(image_folder / "val"), recursive=True)[0]
    with pytest.raises(ValueError, match="is a file; give the folder that holds the images"):
        list_images(image, recursive=True)


def test_model_kwargs_that_the_data_sets_are_refused():
    with pytest.raises(ValueError, match="model_kwargs sets img_size, which the data sets"):
        ImageClassifier(num_classes=10, img_size=28, in_chans=1, model_kwargs={"img_size": 28})


# -- Fashion-MNIST files ---------------------------------------------------------------------------


def test_fashion_mnist_files_that_do_not_belong_together_are_refused(tmp_path):
    for name in FILES.values():
        os.symlink(os.path.join(FASHION_MNIST, name), tmp_path / name)
    os.unlink(tmp_path / FILES["test_labels"])  # the 60k training labels beside the 10k test images
    os.symlink(os.path.join(FASHION_MNIST, FILES["train_labels"]), tmp_path / FILES["test_labels"])
    module = FashionMNISTDataModule(root=str(tmp_path), val_size=100)
    with pytest.raises(ValueError, match="do not belong together: expected N×28×28 images and N labels"):
        module.setup("fit")


def test_unpacked_fashion_mnist_files_are_named_with_the_fix(tmp_path):
    for name in FILES.values():
        with gzip.open(os.path.join(FASHION_MNIST, name)) as packed:
            (tmp_path / name[: -len(".gz")]).write_bytes(packed.read())
    with pytest.raises(FileNotFoundError, match="is unpacked .*gzip them again"):
        FashionMNISTDataModule(root=str(tmp_path))


# -- grid specs --------------------------------------------------------------------------------------


def test_a_grid_yaml_exponent_is_a_number(tmp_path):
    # as people write it by hand: PyYAML alone reads 3e-4 as the string "3e-4" (YAML 1.1), so
    # [3e-4, 0.0003] was two runs of one value, and 3e-4 reached the CLI as text
    path = Path(write_spec(tmp_path / "s.yaml"))
    path.write_text(path.read_text() + "axes: {model.init_args.optimizer.init_args.lr: [3e-4, 1e-3]}\n")
    assert yaml.safe_load(path.read_text())["axes"]["model.init_args.optimizer.init_args.lr"][0] == "3e-4"
    assert [p.values[0][1] for p in load_spec(str(path)).points()] == [0.0003, 0.001]


def test_a_grid_whose_fit_trains_no_step_is_refused_by_the_dry_run(tmp_path, capsys):
    from test_grid import TINY_ARGS

    spec = write_spec(tmp_path / "s.yaml", args={**TINY_ARGS, "trainer.max_epochs": 0})
    assert main(["grid", spec, "--dry-run", "--out", str(tmp_path / "out")]) == 2
    assert (
        "the untagged fit trains no step (trainer max_epochs/max_steps of 0)" in error_lines(capsys.readouterr().err)[0]
    )
