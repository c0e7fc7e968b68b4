"""The CPU-scale downstream protocol: configs/mini/*.py, the mini sets' split hygiene, grey → RGB
pretrained stems, the data/model agreement hook and the results collector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_mm

require_mm()

from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from test_downstream import lightning_style_checkpoint  # noqa: E402

import downstream.mini_datasets as mini_datasets  # noqa: E402
from downstream.data_checks import DataMatchesModelHook, check_data_matches_model  # noqa: E402
from downstream.hvir_backbone import HViRBackbone  # noqa: E402
from vir_lightning.commands.export_backbone import export_backbone  # noqa: E402
from vir_lightning.models import create_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DET_CONFIGS = ["hvir_maskrcnn_mini.py", "r18_maskrcnn_mini.py", "swin_maskrcnn_mini.py"]
SEG_CONFIGS = ["hvir_upernet_mini.py", "r18_upernet_mini.py", "swin_upernet_mini.py"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return mini_datasets.build(str(tmp_path_factory.mktemp("mini")), train=3, val=2)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The mini sets built from scikit-learn's digits on its sample photos: another small real set."""
    pytest.importorskip("sklearn", reason="scikit-learn comes with `make mm`")
    roots = mini_datasets.build(str(tmp_path_factory.mktemp("digits")), train=3, val=2, objects="digits")
    return roots, mini_datasets.DIGIT_CLASSES


def mini_config(name: str, roots: dict, classes: tuple[str, ...] = mini_datasets.COCO_CLASSES) -> Config:
    """A configs/mini file pointed at ``roots`` the way a user does it: the --cfg-options that
    build-mini-datasets prints, parsed by mmengine's own DictAction as `mim train` parses them."""
    import argparse

    from mmengine.config import DictAction

    cfg = Config.fromfile(str(REPO / "configs" / "mini" / name))
    options = mini_datasets.cfg_options(roots, classes, "det" if "maskrcnn" in name else "seg")
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    cfg.merge_from_dict(parser.parse_args(["--cfg-options", *options]).cfg_options)
    return cfg


def experiment(name: str):
    """The script experiments/downstream_mini/NAME.py as a module (its folder on sys.path while it loads,
    as when it runs: seg_errors imports classify_crops)."""
    import importlib.util
    import sys

    folder = REPO / "experiments" / "downstream_mini"
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


@pytest.mark.parametrize("name", DET_CONFIGS + SEG_CONFIGS)
def test_mini_configs_share_the_protocol_and_differ_only_in_the_backbone(name):
    cfg = Config.fromfile(str(REPO / "configs" / "mini" / name))
    first = (DET_CONFIGS if "maskrcnn" in name else SEG_CONFIGS)[0]
    reference = Config.fromfile(str(REPO / "configs" / "mini" / first))
    for key in ("train_dataloader", "val_dataloader", "train_cfg", "param_scheduler", "custom_hooks"):
        assert cfg[key] == reference[key], key
    assert cfg.optim_wrapper.optimizer == reference.optim_wrapper.optimizer
    assert cfg.optim_wrapper.get("clip_grad") == reference.optim_wrapper.get("clip_grad")
    without_backbone = lambda c: {k: v for k, v in c.model.items() if k != "backbone"}  # noqa: E731
    assert without_backbone(cfg) == without_backbone(reference)
    assert cfg.model.backbone.get("init_cfg") in (None, dict(type="Pretrained", checkpoint=None))


@pytest.mark.parametrize("name", DET_CONFIGS + SEG_CONFIGS)
def test_mini_configs_build_on_the_mini_sets_pass_the_data_check_and_compute_losses(name, mini):
    library = "mmdet" if "maskrcnn" in name else "mmseg"
    registry = __import__(f"{library}.registry", fromlist=["MODELS", "DATASETS"])
    cfg = mini_config(name, mini)
    init_default_scope(library)
    model, dataset = registry.MODELS.build(cfg.model), registry.DATASETS.build(cfg.train_dataloader.dataset)
    model.init_weights()
    check_data_matches_model(model, dataset)
    # the widths the heads expect are the backbone's: a loss on a real batch, at the protocol's scale
    data = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), training=True)
    losses = model(**data, mode="loss")
    total = sum(v for k, v in losses.items() if "loss" in k for v in (v if isinstance(v, list) else [v]))
    assert torch.isfinite(total)
    if library == "mmdet":  # the 320x240 images at half scale
        assert tuple(data["data_samples"][0].img_shape) == (120, 160)
    else:  # 144x144 crops of the images at 3/4 scale (padded to it when the scale jitter made them smaller)
        assert data["inputs"].shape[-2:] == (144, 144)


@pytest.mark.parametrize("name", SEG_CONFIGS)
def test_the_mini_upernets_test_with_flip_at_the_protocols_test_scale_and_labels(name, mini):
    """`mim test --tta` sees the plain test's view and its mirror, scored against the plain test's labels
    (the inherited ADE20K recipe would give twelve views at the image's own scales)."""
    from mmseg.registry import DATASETS

    cfg = mini_config(name, mini)
    init_default_scope("mmseg")
    plain = DATASETS.build(cfg.test_dataloader.dataset)[0]
    views = DATASETS.build({**cfg.test_dataloader.dataset, "pipeline": cfg.tta_pipeline})[0]
    assert len(views["inputs"]) == 2 and views["inputs"][0].shape == plain["inputs"].shape
    assert torch.equal(views["inputs"][0], plain["inputs"])
    assert torch.equal(views["inputs"][1], plain["inputs"].flip(-1))
    for sample in views["data_samples"]:
        assert torch.equal(sample.gt_sem_seg.data, plain["data_samples"].gt_sem_seg.data)


@pytest.mark.parametrize("name", ["hvir_maskrcnn_mini.py", "hvir_upernet_mini.py"])
def test_the_mini_configs_take_another_object_set_through_cfg_options_alone(name, digits):
    roots, classes = digits
    library = "mmdet" if "maskrcnn" in name else "mmseg"
    registry = __import__(f"{library}.registry", fromlist=["MODELS", "DATASETS"])
    cfg = mini_config(name, roots, classes)
    init_default_scope(library)
    model, dataset = registry.MODELS.build(cfg.model), registry.DATASETS.build(cfg.train_dataloader.dataset)
    check_data_matches_model(model, dataset)  # class names match the file's categories, heads count them
    assert tuple(dataset.metainfo["classes"]) == (classes if library == "mmdet" else ("background", *classes))
    data = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), training=True)
    losses = model(**data, mode="loss")
    assert all(torch.isfinite(v).all() for k, v in losses.items() if "loss" in k and not isinstance(v, list))


def test_hook_refuses_heads_of_another_class_count_and_classes_matching_no_annotation(mini):
    from mmdet.registry import DATASETS, MODELS

    cfg = mini_config("hvir_maskrcnn_mini.py", mini)
    init_default_scope("mmdet")
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    cfg.model.roi_head.mask_head.num_classes = 80  # COCO's count, as the shipped config has it
    with pytest.raises(
        ValueError,
        match=r"10 classes .* model\.roi_head\.mask_head\.num_classes=80; pass "
        r"--cfg-options model\.roi_head\.mask_head\.num_classes=10",
    ):
        check_data_matches_model(MODELS.build(cfg.model), dataset, "val")
    cfg.model.roi_head.mask_head.num_classes = 10
    model = MODELS.build(cfg.model)
    # a test-mode set keeps its images, but names that match none of the file's categories drop every box
    cfg.val_dataloader.dataset.metainfo = dict(classes=tuple(f"c{i}" for i in range(10)))
    renamed = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(renamed) == len(dataset)
    with pytest.raises(ValueError, match=r"no annotation of the val set belongs to metainfo\.classes"):
        check_data_matches_model(model, renamed, "val")
    assert DataMatchesModelHook.priority == "VERY_HIGH"


def test_segmentation_heads_must_count_the_dataset_classes(mini):
    from mmseg.registry import DATASETS, MODELS

    cfg = mini_config("hvir_upernet_mini.py", mini)
    init_default_scope("mmseg")
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    cfg.model.auxiliary_head.num_classes = 150
    with pytest.raises(
        ValueError,
        match=r"model\.auxiliary_head\.num_classes=150; pass --cfg-options "
        r"model\.auxiliary_head\.num_classes=11",
    ):
        check_data_matches_model(MODELS.build(cfg.model), dataset)


def test_training_images_paste_training_garments_and_validation_images_test_garments(tmp_path, monkeypatch):
    # Fashion-MNIST's train split stands in as class 0 only and its test split as class 9 only.
    real = mini_datasets._objects

    def one_class(objects, root, split):
        images, labels = real(objects, root, split)
        keep = labels == (0 if split == "train" else 9)
        return images[keep][:50], labels[keep][:50]

    monkeypatch.setattr(mini_datasets, "_objects", one_class)
    roots = mini_datasets.build(str(tmp_path / "m"), train=6, val=4)
    for split, category in (("train2017", 1), ("val2017", 10)):
        with open(f"{roots['coco']}/annotations/instances_{split}.json") as f:
            assert {a["category_id"] for a in json.load(f)["annotations"]} == {category}
    import cv2

    for split, label in (("training", 0 + 2), ("validation", 9 + 2)):  # ADE: 1 = photo, 2… = garments
        paths = Path(roots["ade"], "annotations", split).glob("*.png")
        maps = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]
        assert set(np.unique(np.concatenate([m.ravel() for m in maps]))) == {1, label}


def test_a_grey_pretrained_stem_gives_an_rgb_backbone_the_grey_response(tmp_path):
    torch.manual_seed(0)
    grey = create_model("hvir_nano", num_classes=10, in_chans=1)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in grey.state_dict().items()},
            "hyper_parameters": {"model_name": "hvir_nano"},
        },
        tmp_path / "grey.ckpt",
    )
    export_backbone(str(tmp_path / "grey.ckpt"), str(tmp_path / "grey.pth"))
    pretrained = dict(type="Pretrained", checkpoint=str(tmp_path / "grey.pth"))
    rgb = HViRBackbone(arch="nano", out_norm=False, init_cfg=pretrained)
    rgb.init_weights()
    reference = HViRBackbone(arch="nano", in_chans=1, out_norm=False)
    assert reference.load_pretrained(str(tmp_path / "grey.pth"))["adapted"] == []
    image = torch.rand(2, 1, 64, 64)
    rgb.eval(), reference.eval()
    with torch.no_grad():
        for ours, expected in zip(rgb(image.expand(-1, 3, -1, -1)), reference(image), strict=True):
            torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    # any other channel difference is still a mismatch, named
    lightning_style_checkpoint(tmp_path / "rgb.ckpt")
    export_backbone(str(tmp_path / "rgb.ckpt"), str(tmp_path / "rgb.pth"))
    with pytest.raises(ValueError, match="shape mismatch stem.0.weight"):
        HViRBackbone(arch="nano", in_chans=4).load_pretrained(str(tmp_path / "rgb.pth"))


def test_summarize_reads_metrics_curve_and_inference_time_from_mim_logs(tmp_path):
    summarize = experiment("summarize")
    det_log = "\n".join(
        [
            "11/27 14:16:10 - mmengine - INFO - Epoch(train) [1][ 25/100]  base_lr: 9.7e-05 lr: 9.7e-05  time: 1.79",
            "11/27 14:25:04 - mmengine - INFO - Epoch(val) [2][100/100]    eta: 0:00:00  time: 1.3718"
            "  data_time: 0.0096",
            "11/27 14:25:07 - mmengine - INFO - Epoch(val) [2][100/100]    coco/bbox_mAP: 0.0010"
            "  coco/bbox_mAP_50: 0.0030"
            "  coco/segm_mAP: 0.0020  data_time: 0.0095  time: 1.2062",
            "11/27 14:30:00 - mmengine - INFO - Epoch(val) [4][100/100]    coco/bbox_mAP: 0.5120  coco/segm_mAP: 0.4980"
            "  data_time: 0.0095  time: 0.2500",
        ]
    )
    result = summarize.parse_log(det_log)
    assert (result["bbox_mAP"], result["segm_mAP"], result["seconds_per_image"]) == (0.512, 0.498, 0.25)
    assert [p["train_iter"] for p in result["curve"]] == [200, 400]
    seg_log = (
        "11/27 15:20:43 - mmengine - INFO - Iter(train) [450/600]  base_lr: 1.2e-04\n"
        "11/27 15:21:06 - mmengine - INFO - Iter(val) [100/100]    aAcc: 89.5700  mIoU: 8.1400  mAcc: 9.0900"
        "  data_time: 0.0068  time: 0.2252\n"
    )
    seg = summarize.parse_log(seg_log)
    assert (seg["mIoU"], seg["aAcc"], seg["train_iter"]) == (8.14, 89.57, 450) and "bbox_mAP" not in seg
    with pytest.raises(ValueError, match="did not finish"):
        summarize.parse_log("11/27 15:20:43 - mmengine - INFO - Iter(train) [450/600]")
    (tmp_path / "run").mkdir()
    (tmp_path / "run.log").write_text(seg_log)
    assert summarize.main(["collect", str(tmp_path / "run"), str(tmp_path / "run.log"), "--train-seconds", "90"]) == 0
    assert "| run | 1 | – | – | 8.14 | – | 89.57 | 1.5 min | 0.225 |" in summarize.table(str(tmp_path))
    # run.sh's other seeds (NAME_s1, NAME_s2) pool into NAME's row: mean ± sample std
    (tmp_path / "run_s1").mkdir()
    (tmp_path / "run_s1.log").write_text(seg_log.replace("mIoU: 8.1400", "mIoU: 10.1400"))
    summarize.collect(str(tmp_path / "run_s1"), str(tmp_path / "run_s1.log"), 150)
    assert "| run | 2 | – | – | 9.14 ± 1.41 | – | 89.57 ± 0.00 | 2.0 ± 0.7 min | 0.225 ± 0.000 |" in summarize.table(
        str(tmp_path)
    )


def test_summarize_adds_the_test_time_flip_score_from_the_last_test_line(tmp_path):
    summarize = experiment("summarize")
    (tmp_path / "run").mkdir()
    (tmp_path / "run.log").write_text(
        "11/27 15:21:06 - mmengine - INFO - Iter(val) [100/100]    aAcc: 89.5700"
        "  mIoU: 8.1400  mAcc: 9.0900  data_time: 0.0068  time: 0.2252\n"
    )
    summarize.collect(str(tmp_path / "run"), str(tmp_path / "run.log"), 90)
    # mmengine prints the progress line at [100/100] before the metrics line; only the latter counts
    test_log = tmp_path / "run.flip.log"
    test_log.write_text(
        "11/28 20:04:17 - mmengine - INFO - Iter(test) [ 50/100]    eta: 0:00:06  time: 0.1207  data_time: 0.0069\n"
        "11/28 20:04:18 - mmengine - INFO - Iter(test) [100/100]    eta: 0:00:00  time: 0.1201  data_time: 0.0069\n"
        "11/28 20:04:18 - mmengine - INFO - Iter(test) [100/100]    aAcc: 91.3800  mIoU: 9.2700  mAcc: 9.8900"
        "  data_time: 0.0069  time: 0.4207\n"
    )
    assert summarize.main(["flip", str(tmp_path / "run"), str(test_log)]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (result["mIoU"], result["mIoU_flip"], result["aAcc_flip"], result["seconds_per_image_flip"]) == (
        8.14,
        9.27,
        91.38,
        0.4207,
    )
    assert "| run | 1 | – | – | 8.14 | 9.27 | 89.57 | 1.5 min | 0.225 |" in summarize.table(str(tmp_path))
    # a test that stopped before its metrics line adds nothing and says so
    test_log.write_text("11/28 20:04:17 - mmengine - INFO - Iter(test) [ 50/100]    eta: 0:00:06  time: 0.1207\n")
    assert summarize.main(["flip", str(tmp_path / "run"), str(test_log)]) == 2
    assert json.loads((tmp_path / "run" / "result.json").read_text())["mIoU_flip"] == 9.27
    # nor without the training run's result.json
    assert summarize.main(["flip", str(tmp_path / "untrained"), str(test_log)]) == 2


def test_crop_probe_finds_each_garment_once_and_scores_its_labels_as_mmseg_would():
    probe = experiment("classify_crops")
    label_map = np.ones((40, 60), dtype=np.uint8)  # 1 = background
    label_map[0, :] = 0  # ignored
    label_map[5:15, 5:15] = 2 + 3  # class 3, a 10x10 square
    label_map[20:30, 30:34] = label_map[20:30, 36:40] = 2 + 5  # class 5 in two straps 2 px apart: one garment
    label_map[20:30, 50:58] = 2 + 5  # another garment of class 5, far away
    found = [(k, box, pixels, 0) for k, box, pixels in probe.garments(label_map)]
    assert sorted((k, box) for k, box, _, _ in found) == [
        (3, (5, 5, 15, 15)),
        (5, (20, 30, 30, 40)),
        (5, (20, 50, 30, 58)),
    ]
    assert sum(int(p.sum()) for _, _, p, _ in found) == 100 + 80 + 80  # the gap between the straps is not labelled
    as_found = [(k, None, box, pixels, owner) for k, box, pixels, owner in found]
    assert probe.miou_with_exact_masks([label_map], as_found, [k for k, *_ in found], classes=10) == 1.0
    # the class-3 garment called class 5: class 3 scores 0, class 5 gets 160 of 260 pixels, background 1
    wrong = [5 if k == 3 else k for k, *_ in found]
    assert probe.miou_with_exact_masks([label_map], as_found, wrong, classes=10) == pytest.approx(
        (0 + 160 / 260 + 1) / 3
    )


def test_seg_errors_splits_a_segmenters_loss_into_class_and_mask_errors():
    seg_errors = experiment("seg_errors")
    truth = np.ones((30, 40), dtype=np.uint8)  # 1 = background
    truth[0, :] = 0  # ignored
    truth[5:15, 5:15] = 2 + 3  # garment of class 3, 100 px
    truth[5:15, 25:35] = 2 + 7  # garment of class 7, 100 px
    perfect = seg_errors.decompose([truth], [truth.copy()], classes=10)
    assert all(value == 1.0 for value in perfect.values())

    wrong_class = truth.copy()
    wrong_class[truth == 2 + 7] = 2 + 3  # the class-7 garment called class 3, its mask exact
    scores = seg_errors.decompose([truth], [wrong_class], classes=10)
    assert scores["masks only"] == 1.0 and scores["foreground IoU"] == 1.0
    assert scores["garments right"] == 0.5
    assert scores["classes only"] == scores["as predicted"] == pytest.approx((1 + 0.5 + 0) / 3)

    thin = truth.copy()
    thin[5:15, 5:10] = 1  # half of the class-3 garment missed (background), classes right
    scores = seg_errors.decompose([truth], [thin], classes=10)
    assert scores["classes only"] == 1.0 and scores["garments right"] == 1.0
    # 960 true background pixels (the ignored row left out), 1,010 predicted
    assert scores["masks only"] == scores["as predicted"] == pytest.approx((960 / 1010 + 0.5 + 1) / 3)
    assert scores["foreground IoU"] == pytest.approx(150 / 200)

    mixed = truth.copy()
    mixed[5:8, 25:35] = 2 + 1  # 30 of the class-7 garment's pixels called class 1: its majority stays 7
    scores = seg_errors.decompose([truth], [mixed], classes=10)
    assert scores["one label per garment"] == scores["classes only"] == 1.0 > scores["as predicted"]
    assert scores["masks only"] == 1.0


@pytest.mark.parametrize("objects", ["fashion-mnist", "digits"])
def test_run_sh_keeps_the_pretraining_under_out_and_reaches_another_set_by_cfg_options(objects, tmp_path):
    """run.sh under another OUT: the pretraining's checkpoint lands under OUT (the config names its
    folders), export-backbone finds it there, and the pretrained run starts from OUT's backbone; with
    OBJECTS=digits every run gets the digit sets' roots, names and class counts as --cfg-options."""
    import os
    import subprocess
    import sys

    calls = tmp_path / "calls.txt"
    fake = tmp_path / "bin"
    fake.mkdir()
    # A stand-in python: `fit` writes last.ckpt where the config's checkpoint callback says;
    # export-backbone fails (as the real one does) when the checkpoint is not where it is asked for;
    # `-c` snippets (run.sh's --cfg-options of another set) run in the real interpreter.
    (fake / "python").write_text(f"""#!/usr/bin/env bash
[ "$1" = -c ] && exec {sys.executable} "$@"
echo "$@" >> {calls}
if [ "$3" = fit ]; then dir=$(sed -n 's/^ *dirpath: //p' "$5"); mkdir -p "$dir"; touch "$dir/last.ckpt"; fi
if [ "$3" = export-backbone ]; then [ -f "$4" ] || exit 3; touch "$5"; fi
exit 0
""")
    # A stand-in mim: `train` leaves the checkpoint pointer mmengine leaves in its work folder.
    (fake / "mim").write_text(f"""#!/usr/bin/env bash
echo mim "$@" >> {calls}
if [ "$1" = train ]; then
  while [ $# -gt 0 ]; do
    [ "$1" = --work-dir ] && mkdir -p "$2" && touch "$2/iter_6000.pth" && echo "$2/iter_6000.pth" > "$2/last_checkpoint"
    shift
  done
fi
exit 0
""")
    for script in fake.iterdir():
        script.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PY=str(fake / "python"), OUT=str(out), OBJECTS=objects)
    done = subprocess.run(
        [str(REPO / "experiments/downstream_mini/run.sh"), "seg_hvir_pretrained", "det_r18"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "pretrain_hvir_nano/checkpoints/last.ckpt").is_file()
    lines = calls.read_text().splitlines()
    assert (
        f"-m vir_lightning export-backbone {out}/pretrain_hvir_nano/checkpoints/last.ckpt "
        f"{out}/hvir_nano_backbone.pth" in lines
    )
    (seg,) = [line for line in lines if line.startswith("mim train mmseg")]
    (det,) = [line for line in lines if line.startswith("mim train mmdet configs/mini/r18_maskrcnn_mini.py")]
    assert f"model.backbone.init_cfg.checkpoint={out}/hvir_nano_backbone.pth" in seg
    # the segmentation run is then tested with flip, on its own checkpoint and set; detection is not
    (flip,) = [line for line in lines if line.startswith("mim test")]
    assert flip.startswith(
        f"mim test mmseg configs/mini/hvir_upernet_mini.py --checkpoint {out}/seg_hvir_pretrained/iter_6000.pth --tta "
    )
    assert f"summarize.py flip {out}/seg_hvir_pretrained {out}/seg_hvir_pretrained.flip.log" in "\n".join(lines)
    if objects == "digits":
        roots = mini_datasets.set_roots("data/mini_digits")
        for line, task in ((seg, "seg"), (flip, "seg"), (det, "det")):
            assert all(
                f" {option}" in line for option in mini_datasets.cfg_options(roots, mini_datasets.DIGIT_CLASSES, task)
            )
        assert "model.decode_head.num_classes=11" in seg and "model.decode_head.num_classes=11" in flip
        assert "model.roi_head.mask_head.num_classes=10" in det
    else:
        assert "data_root" not in seg + flip + det  # the configs' own data/mini
    # a finished run whose checkpoint is gone cannot be scored with flip: one error line before anything is
    # built, trained or tested (on a clean clone the mini sets are not there yet)
    (out / "seg_r18").mkdir()
    (out / "seg_r18/result.json").write_text('{"mIoU": 50.0}')
    calls.write_text("")
    done = subprocess.run(
        [str(REPO / "experiments/downstream_mini/run.sh"), "seg_r18"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and calls.read_text() == ""
    assert done.stderr.strip().splitlines() == [
        f"error: seg_r18: no checkpoint to test with flip ({out}/seg_r18/last_checkpoint missing); train it again:"
        f" remove {out}/seg_r18/result.json and rerun"
    ]
    # a backbone placed under another OUT (a second pretraining stage's) is used as it is: no
    # pretraining, no export, the fine-tuning starts from it
    placed = tmp_path / "placed"
    placed.mkdir()
    (placed / "hvir_nano_backbone.pth").write_bytes(b"weights")
    calls.write_text("")
    done = subprocess.run(
        [str(REPO / "experiments/downstream_mini/run.sh"), "seg_hvir_pretrained"],
        env={**env, "OUT": str(placed)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert not [line for line in lines if " fit " in line or "export-backbone" in line]
    (seg,) = [line for line in lines if line.startswith("mim train mmseg")]
    assert f"model.backbone.init_cfg.checkpoint={placed}/hvir_nano_backbone.pth" in seg
    # an unknown set is refused before anything runs
    done = subprocess.run(
        [str(REPO / "experiments/downstream_mini/run.sh"), "det_r18"],
        capture_output=True,
        text=True,
        env=dict(env, OBJECTS="garmnets", OUT=str(tmp_path / "other")),
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: unknown OBJECTS 'garmnets'; choose from fashion-mnist digits"
    ]
    assert not (tmp_path / "other").exists()


def test_cfg_options_survive_mmengine_parsing_or_are_refused():
    import argparse

    from mmengine.config import DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    roots = mini_datasets.set_roots("data/mini_one")
    parsed = parser.parse_args(["--cfg-options", *mini_datasets.cfg_options(roots, ("cat",), "det")]).cfg_options
    assert parsed["train_dataloader.dataset.metainfo.classes"] == ("cat",)  # a one-class set stays a sequence
    assert parsed["val_evaluator.ann_file"] == "data/mini_one/coco/annotations/instances_val2017.json"
    assert parsed["model.roi_head.mask_head.num_classes"] == 1
    # DictAction would drop the space and split on the comma without a word: refused instead
    with pytest.raises(ValueError, match="'data/my sets/coco': --cfg-options cannot carry spaces"):
        mini_datasets.cfg_options(mini_datasets.set_roots("data/my sets"), ("cat",), "det")
    with pytest.raises(ValueError, match="'cat,dog'"):
        mini_datasets.cfg_options(roots, ("cat,dog",), "seg")
