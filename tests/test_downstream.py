"""The OpenMMLab adapters: HViRBackbone in mmdet/mmseg, pretrained loading, safe mmengine checkpoints,
the shipped configs built and run (loss + predict), and bounded `mim train` / `mim test` runs."""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import relative_error, require_mm

require_mm()

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from downstream import mini_datasets  # noqa: E402
from downstream.hvir_backbone import HViRBackbone  # noqa: E402
from downstream.mini_datasets import ADE_CLASSES, COCO_CLASSES, build  # noqa: E402
from downstream.safe_checkpoints import history_buffer_statistic  # noqa: E402
from vir_lightning.commands.export_backbone import export_backbone  # noqa: E402
from vir_lightning.models import create_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIM = os.path.join(os.path.dirname(sys.executable), "mim")
NANO_WIDTHS = [32, 64, 128, 256]


def backbone(**kwargs) -> HViRBackbone:
    torch.manual_seed(0)
    return HViRBackbone(**{"arch": "nano", "drop_path_rate": 0.0, **kwargs})


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("mini")), train=4, val=2)


# ----------------------------------------------------------------------------------------------
# The backbone
# ----------------------------------------------------------------------------------------------


def test_registered_in_both_mmdet_and_mmseg():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    assert DET.get("HViRBackbone") is HViRBackbone and SEG.get("HViRBackbone") is HViRBackbone
    assert isinstance(DET.build(dict(type="HViRBackbone", arch="nano")), HViRBackbone)


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 250)])
def test_outputs_have_strides_4_to_32_and_the_chosen_norm_at_odd_sizes(size):
    x = torch.randn(2, 3, *size)
    by_channel = backbone(out_norm="ln").eval()  # Swin's per-position LayerNorm over the channels
    with torch.no_grad():
        outs = by_channel(x)
    assert len(outs) == 4
    for i, out in enumerate(outs):
        stride = 2 ** (i + 2)
        assert out.shape == (2, NANO_WIDTHS[i], math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert out.mean(1).abs().max() < 1e-4 and (out.var(1, unbiased=False) - 1).abs().max() < 1e-2
    # the default BatchNorm normalises each channel over the batch and the positions (training
    # statistics), and leaves positions their contrast: they do not all get unit variance
    by_batch = backbone().train()
    with torch.no_grad():
        outs = by_batch(x)
    for out in outs:
        assert out.mean((0, 2, 3)).abs().max() < 1e-4
        assert (out.var((0, 2, 3), unbiased=False) - 1).abs().max() < 1e-2
        assert out.var(1, unbiased=False).std() > 0.05
    with pytest.raises(ValueError, match="out_norm='group' is invalid; expected 'bn', 'ln' or None"):
        backbone(out_norm="group")


def test_out_indices_select_stages_and_bad_values_raise():
    model = backbone(out_indices=(1, 3), out_norm=False).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 256] and model.num_features == [64, 256]
    # stages after the last requested one are removed, so every parameter gets a gradient (DDP)
    early = backbone(out_indices=(0, 1)).train()
    sum(o.sum() for o in early(torch.randn(2, 3, 64, 64))).backward()
    assert all(p.grad is not None for p in early.parameters())
    for bad in [(4,), (1, 1), ()]:
        with pytest.raises(ValueError, match="out_indices"):
            backbone(out_indices=bad)
    with pytest.raises(ValueError, match="arch='huge' is unknown"):
        backbone(arch="huge")
    with pytest.raises(ValueError, match="frozen_stages=5"):
        backbone(frozen_stages=5)
    with pytest.raises(ValueError, match=r"^eval_mode: mode='fast' is unknown; expected one of"):
        backbone(eval_mode="fast")
    with pytest.raises(ValueError, match=r"^train_mode='streaming' is inference-only"):
        backbone(train_mode="streaming")
    with pytest.raises(ValueError, match=r"^eval_mode: HybridViR has no streaming mode"):
        backbone(eval_mode="streaming")
    with pytest.raises(ValueError, match=r"^train_mode: chunk_size=0 is invalid"):
        backbone(chunk_size=0)


def test_frozen_stages_get_no_gradient_and_keep_their_statistics():
    model = backbone(frozen_stages=2)
    model.train()
    frozen = [model.model.stem, model.model.stages[0], model.model.downsamples[1], model.model.stages[1]]
    stem_bn = model.model.stem[1]
    before = stem_bn.running_mean.clone()
    sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    assert torch.equal(stem_bn.running_mean, before)
    assert all(p.grad is not None for p in model.model.stages[2].parameters())
    assert model.model.stages[2].training
    with torch.no_grad():  # frozen_stages=0 freezes only the stem
        assert not any(p.requires_grad for p in backbone(frozen_stages=0).model.stem.parameters())


def test_norm_eval_keeps_every_batchnorm_in_eval_while_training():
    model = backbone(norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [bn.running_mean.clone() for bn in bns]
    model(torch.randn(2, 3, 64, 64))
    assert bns and all(not bn.training for bn in bns)
    assert all(torch.equal(bn.running_mean, b) for bn, b in zip(bns, before, strict=True))
    assert backbone(norm_eval=False).train().model.stem[1].training


def test_train_uses_train_mode_and_eval_uses_eval_mode_with_equal_outputs():
    model = backbone(layer_scale_init=1.0, eval_mode="chunkwise", chunk_size=2)
    model.train()
    assert model.model.retention_mode == "auto"  # parallel up to the crossover, lean chunkwise above
    model.eval()
    assert model.model.retention_mode == "chunkwise"
    x = torch.randn(1, 3, 120, 90)
    with torch.no_grad():
        chunkwise = model(x)
        model.model.set_retention_mode("parallel")
        parallel = model(x)
    for a, b in zip(chunkwise, parallel, strict=True):
        assert relative_error(a, b) < 1e-5


def test_the_former_name_test_mode_still_sets_the_eval_form_with_a_warning():
    with pytest.warns(FutureWarning, match="renamed eval_mode"):
        model = backbone(test_mode="chunkwise", chunk_size=2)
    assert model.eval_mode == "chunkwise"
    assert model.eval().model.retention_mode == "chunkwise" and model.train().model.retention_mode == "auto"
    with pytest.raises(ValueError, match="test_mode is the former name of eval_mode"):
        backbone(test_mode="chunkwise", eval_mode="parallel")
    # an mmdet config of before the rename still builds
    from mmdet.registry import MODELS

    built = MODELS.build(dict(type="HViRBackbone", arch="nano", test_mode="recurrent"))
    assert built.eval().model.retention_mode == "recurrent"


def test_with_cp_checkpoints_the_retention_blocks_with_identical_gradients():
    images = torch.randn(1, 3, 64, 64)
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = backbone(layer_scale_init=1.0, with_cp=with_cp, train_mode="chunkwise").train()
        assert model.model.grad_checkpointing is with_cp
        sum(f.square().sum() for f in model(images)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Pretrained weights: export → init_cfg
# ----------------------------------------------------------------------------------------------


def lightning_style_checkpoint(path, arch="nano", seed=1, num_classes=10):
    """What `fit` writes, reduced to what export reads: model.* tensors and the hyper-parameters."""
    torch.manual_seed(seed)
    model = create_model(f"hvir_{arch}", num_classes=num_classes)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model_name": f"hvir_{arch}"}, "epoch": 3}, path)
    return model


def test_exported_checkpoint_loads_through_init_cfg_exactly(tmp_path):
    source = lightning_style_checkpoint(tmp_path / "fit.ckpt")
    meta = export_backbone(str(tmp_path / "fit.ckpt"), str(tmp_path / "hvir_nano.pth"))
    assert meta["dropped"] == ["head.bias", "head.weight"] and meta["model_name"] == "hvir_nano"
    model = backbone(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "hvir_nano.pth")))
    model.init_weights()
    own = model.model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith(("head.", "norm.")):
            assert torch.equal(own[key], value), key


def test_init_cfg_raises_on_another_arch_and_on_missing_or_unexpected_keys(tmp_path):
    lightning_style_checkpoint(tmp_path / "tiny.ckpt", arch="tiny")
    export_backbone(str(tmp_path / "tiny.ckpt"), str(tmp_path / "tiny.pth"))
    with pytest.raises(ValueError, match=r"does not fit HViRBackbone\(arch='nano'\).*shape mismatch"):
        backbone(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "tiny.pth"))).init_weights()

    state = {k: v for k, v in backbone().model.state_dict().items()}
    first = sorted(state)[0]
    torch.save({k: v for k, v in state.items() if k != first}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=rf"missing 1 keys \(first: \['{re.escape(first)}'\]\)"):
        backbone().load_pretrained(str(tmp_path / "missing.pth"))
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected 1 keys \(first: \['extra.weight'\]\)"):
        backbone().load_pretrained(str(tmp_path / "extra.pth"))
    # keys of stages removed by out_indices are ignored, not reported as unexpected
    torch.save(state, tmp_path / "full.pth")
    report = backbone(out_indices=(0, 1, 2)).load_pretrained(str(tmp_path / "full.pth"))
    assert report["ignored"] and all(k.startswith(("stages.3.", "downsamples.3.")) for k in report["ignored"])
    # a detector checkpoint: the backbone under "backbone.model." is selected by prefix
    torch.save({"state_dict": {f"backbone.model.{k}": v for k, v in state.items()}}, tmp_path / "det.pth")
    assert backbone().load_pretrained(str(tmp_path / "det.pth"), prefix="backbone.model.")["loaded"] == len(state)
    with pytest.raises(ValueError, match="no keys starting with prefix='nope.'"):
        backbone().load_pretrained(str(tmp_path / "det.pth"), prefix="nope.")
    with pytest.raises(ValueError, match="only dict\\(type='Pretrained'"):
        backbone(init_cfg=dict(type="Kaiming"))


def test_pretrained_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refusing to unpickle code"):
        backbone().load_pretrained(str(tmp_path / "evil.pth"))


# ----------------------------------------------------------------------------------------------
# mmengine checkpoints under weights_only=True
# ----------------------------------------------------------------------------------------------


def test_mmengine_history_buffers_load_tensors_only():
    buffer = HistoryBuffer()
    for value in (1.0, 2.0, 4.0):
        buffer.update(value)
    blob = io.BytesIO()
    torch.save({"message_hub": {"log_scalars": {"loss": buffer}}}, blob)
    blob.seek(0)
    loaded = torch.load(blob, weights_only=True)["message_hub"]["log_scalars"]["loss"]
    assert loaded.mean() == pytest.approx(7 / 3) and loaded.current() == 4.0


def test_a_crafted_getattr_in_a_checkpoint_is_refused():
    class Sneaky:
        def __reduce__(self):  # pickles as getattr(HistoryBuffer, "__init__"): an allowed class, a foreign name
            return (getattr, (HistoryBuffer, "__init__"))

    blob = io.BytesIO()
    torch.save({"x": Sneaky()}, blob, pickle_protocol=2)
    blob.seek(0)
    with pytest.raises((pickle.UnpicklingError, ValueError), match="only HistoryBuffer statistics"):
        torch.load(blob, weights_only=True)
    with pytest.raises(ValueError, match="only HistoryBuffer statistics"):
        history_buffer_statistic(HistoryBuffer, "__init__")


# ----------------------------------------------------------------------------------------------
# The shipped configs: build, loss, predict (nano backbone and small images for speed)
# ----------------------------------------------------------------------------------------------


def parsed(words: list[str]) -> dict:
    """``--cfg-options`` words as mim reads them (mmengine's DictAction)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    return parser.parse_args(["--cfg-options", *words]).cfg_options


def det_options(roots: dict, scale=(320, 240)) -> dict:
    """What a user sets to train the shipped Mask R-CNN config on their own COCO-format data: the
    roots, names and class counts ``run.sh`` gives a mini set (mini_datasets.cfg_options), and a scale."""
    options = parsed(mini_datasets.cfg_options(roots, COCO_CLASSES, "det"))
    for split in ("val", "test"):
        options[f"{split}_dataloader.dataset.pipeline.1.scale"] = scale
    options["train_dataloader.dataset.pipeline.2.scale"] = scale
    return options


def seg_options(roots: dict, crop=(128, 128)) -> dict:
    """What a user sets to train the shipped UPerNet config on their own ADE20K-layout data: as
    :func:`det_options`, plus a dataset type that takes any class names (ADE20KDataset has its 150)."""
    options = {
        **parsed(mini_datasets.cfg_options(roots, COCO_CLASSES, "seg")),
        "model.data_preprocessor.size": crop,
        "train_dataloader.dataset.pipeline.3.crop_size": crop,
    }
    for split in ("train", "val", "test"):
        options[f"{split}_dataloader.dataset.type"] = "BaseSegDataset"
        options[f"{split}_dataloader.dataset.reduce_zero_label"] = True
    options["train_dataloader.dataset.pipeline.2.scale"] = (4 * crop[0], crop[0])
    for split in ("val", "test"):
        options[f"{split}_dataloader.dataset.pipeline.1.scale"] = (4 * crop[0], crop[0])
    return options


NANO = {"model.backbone.arch": "nano"}


def test_maskrcnn_config_builds_computes_losses_and_predicts(mini, tmp_path):
    from mmdet.registry import DATASETS, MODELS

    source = lightning_style_checkpoint(tmp_path / "fit.ckpt")
    export_backbone(str(tmp_path / "fit.ckpt"), str(tmp_path / "nano.pth"))
    cfg = Config.fromfile(str(REPO / "configs" / "vir_maskrcnn.py"))
    cfg.merge_from_dict(
        {
            **det_options(mini),
            **NANO,
            "model.neck.in_channels": NANO_WIDTHS,
            "model.backbone.init_cfg.checkpoint": str(tmp_path / "nano.pth"),
        }
    )
    init_default_scope("mmdet")
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    model = MODELS.build(cfg.model)
    model.init_weights()  # the detector's init reaches the backbone's strict loader
    assert isinstance(model.backbone, HViRBackbone)
    assert torch.equal(
        model.backbone.model.stages[2].blocks[0].retention.qkv.weight, source.stages[2].blocks[0].retention.qkv.weight
    )
    data = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), training=True)
    losses = model(**data, mode="loss")
    total = sum(v for k, v in losses.items() if "loss" in k for v in (v if isinstance(v, list) else [v]))
    assert {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses) and torch.isfinite(total)
    total.backward()
    assert model.backbone.model.stages[3].blocks[0].retention.qkv.weight.grad.abs().sum() > 0

    val = DATASETS.build(cfg.val_dataloader.dataset)
    model.eval()
    with torch.no_grad():
        results = model.test_step(pseudo_collate([val[0]]))
    assert model.backbone.model.retention_mode == "chunkwise"
    assert {"bboxes", "scores", "labels", "masks"} <= set(results[0].pred_instances.keys())


def test_upernet_config_builds_computes_losses_and_predicts(mini):
    from mmseg.registry import DATASETS, MODELS

    cfg = Config.fromfile(str(REPO / "configs" / "vir_upernet_ade20k.py"))
    cfg.merge_from_dict(
        {
            **seg_options(mini),
            **NANO,
            "model.decode_head.in_channels": NANO_WIDTHS,
            "model.auxiliary_head.in_channels": NANO_WIDTHS[2],
        }
    )
    init_default_scope("mmseg")
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    model = MODELS.build(cfg.model)
    model.init_weights()
    data = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), training=True)
    losses = model(**data, mode="loss")
    assert {"decode.loss_ce", "aux.loss_ce"} <= set(losses)
    sum(losses[k] for k in ("decode.loss_ce", "aux.loss_ce")).backward()
    val = DATASETS.build(cfg.val_dataloader.dataset)
    model.eval()
    with torch.no_grad():
        results = model.test_step(pseudo_collate([val[0]]))
    pred = results[0].pred_sem_seg.data
    assert pred.shape[-2:] == results[0].gt_sem_seg.data.shape[-2:]
    assert int(pred.max()) < len(ADE_CLASSES)


# ----------------------------------------------------------------------------------------------
# `mim train` / `mim test` / resume, end to end, with the shipped configs unchanged (H-ViR-T)
# ----------------------------------------------------------------------------------------------


def cfg_options(options: dict) -> list[str]:
    """--cfg-options KEY=VALUE words as a user types them (tuples as (a,b), no spaces)."""

    def text(value):
        if isinstance(value, (tuple, list)):
            return "(" + ",".join(str(v) for v in value) + ")"
        return str(value)

    return [f"{k}={text(v)}" for k, v in options.items()]


def mim(verb: str, package: str, config: str, work_dir: Path, options: dict, *extra: str) -> str:
    cmd = [
        MIM,
        verb,
        package,
        str(REPO / "configs" / config),
        "--gpus",
        "0",
        "--work-dir",
        str(work_dir),
        *extra,
        "--cfg-options",
        *cfg_options(options),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work_dir.parent, timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-4000:]}"
    return output


@pytest.mark.slow
def test_mim_train_test_and_resume_mask_rcnn(mini, tmp_path):
    options = {
        **det_options(mini),
        "train_cfg.max_epochs": 1,
        "train_dataloader.batch_size": 2,
        "default_hooks.logger.interval": 1,
    }
    work = tmp_path / "det"
    out = mim("train", "mmdet", "vir_maskrcnn.py", work, options)
    assert re.search(r"Epoch\(train\) \[1\]\[2/2\]", out) and "coco/bbox_mAP" in out and "coco/segm_mAP" in out
    assert (work / "epoch_1.pth").is_file()

    out = mim("train", "mmdet", "vir_maskrcnn.py", work, {**options, "train_cfg.max_epochs": 2}, "--resume")
    assert "resumed epoch: 1, iter: 2" in out and re.search(r"Epoch\(train\) \[2\]\[2/2\]", out)

    out = mim(
        "test", "mmdet", "vir_maskrcnn.py", tmp_path / "det_test", options, "--checkpoint", str(work / "epoch_2.pth")
    )
    assert re.search(r"Epoch\(test\) \[2/2\].*coco/bbox_mAP: [\d.]+.*coco/segm_mAP: [\d.]+", out)


@pytest.mark.slow
def test_mim_train_test_and_resume_upernet(mini, tmp_path):
    options = {
        **seg_options(mini),
        "train_cfg.max_iters": 4,
        "train_cfg.val_interval": 4,
        "default_hooks.logger.interval": 1,
    }
    work = tmp_path / "seg"
    out = mim("train", "mmseg", "vir_upernet_ade20k.py", work, options)
    assert re.search(r"Iter\(train\) \[4/4\]", out) and re.search(r"mIoU: [\d.]+", out)
    assert (work / "iter_4.pth").is_file()

    out = mim("train", "mmseg", "vir_upernet_ade20k.py", work, {**options, "train_cfg.max_iters": 6}, "--resume")
    assert "resumed epoch: 0, iter: 4" in out and re.search(r"Iter\(train\) \[6/6\]", out)

    out = mim(
        "test",
        "mmseg",
        "vir_upernet_ade20k.py",
        tmp_path / "seg_test",
        options,
        "--checkpoint",
        str(work / "iter_6.pth"),
    )
    assert re.search(r"Iter\(test\) \[2/2\].*mIoU: [\d.]+", out)
