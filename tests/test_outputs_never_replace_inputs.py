"""An output never replaces one of its command's own inputs: one ``error:`` line, a non-zero exit,
and the input byte for byte as it was — also when the two paths differ only by a link or ``..``."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from test_classification import QUICKSTART, TINY_MODEL, run_cli
from test_predict_large import write_checkpoint, write_config

from vir_lightning.cli import main as cli_main
from vir_lightning.data.mosaic import write_mosaic


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(folder / "model.ckpt")
    return folder


@pytest.mark.parametrize("spelling", ["same", "link", "dotdot"])
def test_export_backbone_refuses_to_write_over_its_checkpoint(checkpoint, tmp_path, capsys, spelling):
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(checkpoint / "model.ckpt", ckpt)
    before = digest(ckpt)
    out = {"same": ckpt, "link": tmp_path / "link.ckpt", "dotdot": tmp_path / "run" / ".." / "run" / "last.ckpt"}[
        spelling
    ]
    if spelling == "link":
        os.symlink(ckpt, out)
    assert cli_main(["export-backbone", str(ckpt), str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: export-backbone output")
    assert "is this command's own input" in err[0] and "choose another output path" in err[0]
    assert digest(ckpt) == before


def test_predict_large_refuses_an_out_that_is_one_of_its_images(checkpoint, tmp_path, capsys):
    image = tmp_path / "slide.tif"
    write_mosaic(str(image), 128, 128, levels=1, tile=64)
    before = digest(image)
    config = write_config(tmp_path / "config.yaml")
    argv = [
        "predict-large",
        "--config",
        config,
        "--ckpt_path",
        str(checkpoint / "model.ckpt"),
        "--images",
        str(image),
        "--out",
        str(image),
    ]
    assert cli_main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: --out {str(image)!r} is this command's own input")
    assert digest(image) == before


def test_predict_refuses_a_predictions_csv_that_is_its_config(image_folder, tiny_weights, tmp_path):
    config = tmp_path / "quickstart.yaml"
    shutil.copy(QUICKSTART, config)
    before = digest(config)
    proc = run_cli(
        "predict",
        "--config",
        str(config),
        *TINY_MODEL,
        f"--model.init_args.pretrained={tiny_weights}",
        f"--data.init_args.predict_root={image_folder}",
        f"--predictions_csv={config}",
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "is this command's own input" in proc.stderr.strip().splitlines()[-1]
    assert digest(config) == before
