"""ObjectPositionBreakdown: distances to the class token measured from the right end, and test
accuracy split by them, logged and written per image."""

from __future__ import annotations

import csv
import json
import os

import cv2
import lightning as L
import numpy as np
import pytest

from vir_lightning.data.fashion_mnist import DEBIAN_ROOT, FILES
from vir_lightning.tasks.position_breakdown import ObjectPositionBreakdown, token_distances


def test_distances_count_from_the_token_end_of_the_grid():
    # a 4×4 grid on a 40 px canvas: centres in the top-left, bottom-right and top-right patches
    centers = np.array([[5.0, 5.0], [35.0, 35.0], [5.0, 35.0]])
    last = token_distances(centers, 40, (4, 4), from_start=False)
    assert np.allclose(last["raster"], [1.0, 0.0, 12 / 15])  # top-right: 3 rows × 4 + 0 patches before the end
    assert np.allclose(last["manhattan"], [1.0, 0.0, 0.5])
    first = token_distances(centers, 40, (4, 4), from_start=True)
    assert np.allclose(first["raster"], [0.0, 1.0, 3 / 15]) and np.allclose(first["manhattan"], [0.0, 1.0, 0.5])


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_ROOT, FILES["test_images"])),
    reason="Fashion-MNIST is installed by `make data`",
)
def test_test_accuracy_is_split_by_distance_and_written_per_image(tmp_path):
    from vir_lightning.data import ClutteredFashionMNISTDataModule
    from vir_lightning.tasks import ImageClassifier

    data = ClutteredFashionMNISTDataModule(canvas=32, batch_size=16, num_workers=0)
    model = ImageClassifier(
        "vir_nano_patch4_28", model_kwargs=dict(embed_dim=32, depth=1, num_heads=1), num_classes=10, img_size=32
    )
    trainer = L.Trainer(
        accelerator="cpu",
        limit_test_batches=4,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        callbacks=[ObjectPositionBreakdown()],
    )
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]
    rows = list(csv.DictReader(open(tmp_path / "test_positions.csv")))
    assert [int(r["index"]) for r in rows] == list(range(64))
    source = data.source("test")
    assert all(float(r["center_y"]) == source.layout(int(r["index"]))["center"][0] for r in rows)
    assert all(int(r["side"]) == source.layout(int(r["index"]))["side"] for r in rows)
    correct = np.array([int(r["correct"]) for r in rows])
    assert abs(correct.mean() - metrics["test/acc1"]) < 1e-6  # the per-image outcomes are the logged accuracy
    for kind in ("raster", "manhattan"):
        distance = np.array([float(r[kind]) for r in rows])
        near, far = metrics[f"test/acc1_{kind}_near"], metrics[f"test/acc1_{kind}_far"]
        order = np.argsort(distance, kind="stable")
        assert near == pytest.approx(correct[distance <= np.quantile(distance, 1 / 3)].mean())
        assert far == pytest.approx(correct[distance > np.quantile(distance, 2 / 3)].mean())
        assert distance[order[0]] < distance[order[-1]]


def test_a_test_split_without_positions_is_refused(tmp_path):
    from vir_lightning.data import ImageFolderDataModule
    from vir_lightning.tasks import ImageClassifier

    root = tmp_path / "folder"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            cv2.imwrite(str(root / split / name / "x.png"), np.zeros((32, 32, 3), np.uint8))
    data = ImageFolderDataModule(root=str(root), img_size=32, batch_size=1, num_workers=0)
    model = ImageClassifier(
        "vir_nano_patch4_28", model_kwargs=dict(embed_dim=32, depth=1, num_heads=1), num_classes=2, img_size=32
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        callbacks=[ObjectPositionBreakdown()],
    )
    with pytest.raises(ValueError, match="needs test images with object positions"):
        trainer.test(model, datamodule=data, verbose=False)


def test_the_distance_plot_averages_seeds_per_equal_count_bin(tmp_path):
    import json
    import subprocess
    import sys

    outcomes = {0: [1, 1, 0, 0], 1: [1, 0, 0, 1]}  # seed → outcomes of 4 images at distances 0.1 … 0.4
    for seed, correct in outcomes.items():
        run = tmp_path / "runs" / f"p-{seed}"
        (run / "csv" / "version_0").mkdir(parents=True)
        point = {"values": {"model.init_args.model_kwargs.decay": "2d"}, "seed": seed}
        (run / "point.json").write_text(json.dumps(point))
        rows = ["index,label,correct,center_y,center_x,raster,manhattan"]
        rows += [f"{i},0,{c},0,0,{0.1 * (i + 1)},{0.1 * (4 - i)}" for i, c in enumerate(correct)]
        (run / "csv" / "version_0" / "test_positions.csv").write_text("\n".join(rows) + "\n")
    script = os.path.join(os.path.dirname(__file__), "..", "experiments", "cluttered_distance_plot.py")
    done = subprocess.run([sys.executable, script, str(tmp_path), "--bins", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = list(csv.reader(open(tmp_path / "acc1_vs_token_distance.csv")))
    assert table[1] == ["raster", "decay=2d", "2", "0.7500", "0.2500"]  # near half: (1+1+1+0)/4
    assert table[2] == ["manhattan", "decay=2d", "2", "0.2500", "0.7500"]
    assert (tmp_path / "acc1_vs_token_distance.png").stat().st_size > 0
    missing = subprocess.run([sys.executable, script, str(tmp_path), "--step", "112px"], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no test_positions.csv")
    too_many = subprocess.run([sys.executable, script, str(tmp_path), "--bins", "5"], capture_output=True, text=True)
    assert too_many.returncode == 1 and too_many.stderr.startswith("error: --bins 5: more bins than the 4 test images")
    # a damaged per-image table is named in one error line, and the earlier plot is kept
    damaged = tmp_path / "runs" / "p-1" / "csv" / "version_0" / "test_positions.csv"
    damaged.write_text("index,label,correct\n0,0,1\n")
    before = (tmp_path / "acc1_vs_token_distance.csv").read_text()
    broken = subprocess.run([sys.executable, script, str(tmp_path), "--bins", "2"], capture_output=True, text=True)
    assert broken.returncode == 1 and broken.stderr.startswith(f"error: {damaged}: not a readable test_positions.csv")
    assert "Traceback" not in broken.stderr
    assert (tmp_path / "acc1_vs_token_distance.csv").read_text() == before


def test_the_equal_size_table_compares_near_and_far_garments_of_one_side():
    import importlib.util

    script = os.path.join(os.path.dirname(__file__), "..", "experiments", "cluttered_distance_plot.py")
    spec = importlib.util.spec_from_file_location("cluttered_distance_plot", script)
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    # side 20 (40 images): near garments all right, far all wrong, a gap of 1. Side 30 (120 images): no
    # gap. Size and distance are confounded (side 30 sits far), so a plain near/far split would also
    # charge the size. The median image of side 30 ties the median and is left out.
    side = np.array([20] * 40 + [30] * 120)
    raster = np.concatenate([np.linspace(0.0, 0.4, 40), np.linspace(0.5, 0.9, 120)])
    raster[40 + 59] = raster[40 + 60] = 0.7  # a tie at side 30's median
    correct = np.concatenate([[1] * 20 + [0] * 20, [1] * 120])
    run = {"raster": raster, "manhattan": raster, "correct": correct, "side": side, "index": np.arange(160)}
    assert plot.near_far_gap_at_equal_size(run, "raster") == pytest.approx((1 * 40 + 0 * 120) / 160)  # weighted
    assert np.isnan(plot.near_far_gap_at_equal_size(run, "raster", min_images=121))  # no side has enough images
    inverted, sideless = {**run, "correct": 1 - correct}, {**run, "side": None}
    table = plot.equal_size_table({"decay=1d": [run, inverted], "no sides": [sideless]})
    assert table[1] == ["decay=1d", 2, "0.0000", "0.3536", "0.0000", "0.3536"] and len(table) == 2


def test_runs_without_the_side_column_get_the_sizes_their_config_generates(tmp_path):
    import subprocess
    import sys

    import yaml

    from vir_lightning.data import ClutteredFashionMNISTDataModule

    data = {"class_path": "vir_lightning.data.ClutteredFashionMNISTDataModule", "init_args": {"canvas": 40}}
    source = ClutteredFashionMNISTDataModule(canvas=40)
    source.setup("test")
    layouts = [source.source("test").layout(i) for i in range(1000)]  # about 65 per garment side
    for seed in (0, 1):
        run = tmp_path / "runs" / f"p-{seed}"
        (run / "csv" / "version_0").mkdir(parents=True)
        (run / "point.json").write_text(json.dumps({"values": {"m.decay": "1d"}, "seed": seed}))
        (run / "config.yaml").write_text(yaml.safe_dump({"data": data}))
        rows = ["index,label,correct,center_y,center_x,raster,manhattan"]  # as written before the side column
        rows += [
            f"{i},0,{int(layout['side'] < 26)},{layout['center'][0]},{layout['center'][1]},{i / 1000},{i / 1000}"
            for i, layout in enumerate(layouts)
        ]
        (run / "csv" / "version_0" / "test_positions.csv").write_text("\n".join(rows) + "\n")
    script = os.path.join(os.path.dirname(__file__), "..", "experiments", "cluttered_distance_plot.py")
    command = [sys.executable, script, str(tmp_path), "--bins", "2"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # outcome depends on size only: at equal size, no gap, however size and distance are spread
    table = list(csv.reader(open(tmp_path / "acc1_near_far_equal_size.csv")))
    assert table[1][:3] == ["decay=1d", "2", "0.0000"]
    # a config whose generator places the garments elsewhere is refused, naming the file
    data["init_args"]["generator_seed"] = 5
    (tmp_path / "runs" / "p-1" / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    moved = subprocess.run(command, capture_output=True, text=True)
    assert moved.returncode == 1 and "no longer places the run's garments" in moved.stderr
