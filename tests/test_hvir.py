"""H-ViR, the hybrid family: sizes, any input size, strides, exact modes, directions, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import relative_error

from vir_lightning import create_model, list_models
from vir_lightning.models import HVIR_ARCH_ZOO, HybridViR
from vir_lightning.tasks.optim import param_groups

# A small H-ViR whose retention branch visibly shapes the output (layer_scale_init=1; with 1e-5
# the branch is below rounding and mode-equality tests could not fail).
SMALL = dict(dim=8, depths=(1, 1, 2, 1), num_heads=(2, 2), layer_scale_init=1.0, num_classes=5)


def small(**overrides) -> HybridViR:
    torch.manual_seed(0)
    return HybridViR(**{**SMALL, **overrides})


def images(batch=2, size=(64, 64), dtype=torch.float32, seed=0):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize(
    "name,expected", [("hvir_tiny", 31_692_240), ("hvir_small", 47_573_272), ("hvir_base", 93_651_496)]
)
def test_parameter_counts_are_near_the_mambavision_budgets(name, expected):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected
    budget = {"hvir_tiny": 30e6, "hvir_small": 50e6, "hvir_base": 95e6}[name]
    assert abs(expected - budget) / budget < 0.06


def test_registry_has_every_hvir_variant():
    assert {"hvir_nano", "hvir_tiny", "hvir_small", "hvir_base"} <= set(list_models("hvir_*"))
    assert set(HVIR_ARCH_ZOO) == {"nano", "tiny", "small", "base"}


@pytest.mark.parametrize("size", [(64, 64), (100, 75), (33, 47), (8, 200), (1, 1)])
def test_stage_outputs_have_strides_4_8_16_32_rounded_up_at_any_size(size):
    model = small().eval()
    with torch.no_grad():
        final, feats = model.forward_intermediates(images(1, size))
    for i, (f, info) in enumerate(zip(feats, model.feature_info, strict=True)):
        stride = info["reduction"]
        assert stride == 2 ** (i + 2)
        # each stride-2 conv (padding 1) rounds up, so stride s gives ceil(H / s) exactly.
        assert f.shape == (1, info["num_chs"], math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    assert final.shape == feats[-1].shape
    assert model(images(1, size)).shape == (1, 5)


def test_forward_intermediates_selects_stages_and_stops_early():
    model = small().eval()
    x = images(1)
    with torch.no_grad():
        every = model.forward_intermediates(x, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
        final = model.forward_features(x)
    assert len(every) == 4
    assert torch.equal(last_two[0], every[2]) and torch.equal(picked[1], every[3])
    assert torch.equal(normed[0], final)
    with pytest.raises(ValueError, match="stages 0..3"):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match="use 'NCHW'"):
        model.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize("directions", [1, 2, 4])
@pytest.mark.parametrize(
    "mode,chunk_size", [("chunkwise", 1), ("chunkwise", 3), ("chunkwise", None), ("recurrent", None)]
)
def test_logits_and_features_equal_in_every_mode_at_odd_sizes(directions, mode, chunk_size):
    model = small(directions=directions).double().eval()
    x = images(2, (100, 75), dtype=torch.float64)
    with torch.no_grad():
        ref_logits, ref_feats = model(x), model.forward_intermediates(x, intermediates_only=True)
        model.set_retention_mode(mode, chunk_size)
        logits, feats = model(x), model.forward_intermediates(x, intermediates_only=True)
    assert relative_error(logits, ref_logits) < 1e-10
    for a, b in zip(feats, ref_feats, strict=True):
        assert relative_error(a, b) < 1e-10


def test_directions_change_the_function():
    x = images(1)
    with torch.no_grad():
        out = {d: small(directions=d).eval().forward_features(x) for d in (1, 2, 4)}
    # float32 rounding is ~1e-7; at initialisation the retention branches are small next to the
    # residual, so a different decay shows up at the 1e-4 level.
    assert relative_error(out[1], out[4]) > 1e-5 and relative_error(out[2], out[4]) > 1e-5


def test_one_directional_decay_is_causal_on_the_grid_and_four_directions_are_global():
    """With directions=1 a stage-3 token depends only on tokens above-left of it; with 4 on all."""
    model = small(directions=1).eval()
    stage = model.stages[2]
    grid = torch.randn(1, 32, 4, 5, requires_grad=True)
    stage(grid)[0, :, 1, 1].sum().backward()
    reached = grid.grad.abs().sum(1)[0] > 0
    assert reached[:2, :2].all() and not reached[2:, :].any() and not reached[:, 2:].any()
    model4 = small(directions=4).eval()
    grid.grad = None
    model4.stages[2](grid)[0, :, 1, 1].sum().backward()
    assert (grid.grad.abs().sum(1)[0] > 0).all()


def test_batchnorm_stages_make_train_and_eval_differ_and_drop_path_only_trains():
    model = small(drop_path_rate=0.5)
    x = images(4)
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)  # stochastic depth draws differ
    model.eval()
    assert torch.equal(model(x), model(x))


def test_trains_with_the_classification_task_parameter_groups():
    model = small()
    groups = param_groups(model)
    decayed = {n for g in groups if "weight_decay" not in g for n in g["names"]}
    assert decayed and all(dict(model.named_parameters())[n].ndim > 1 for n in decayed)


def test_layer_decay_follows_the_blocks_of_all_four_stages():
    model = small()  # depths (1, 1, 2, 1): stem 0, blocks 1–5, norm and head 6
    scale = {n: g["lr_scale"] for g in param_groups(model, layer_decay=0.5) for n in g["names"]}
    assert scale["head.weight"] == scale["norm.weight"] == 1.0
    assert scale["stem.0.weight"] == 0.5**6
    assert scale["stages.0.0.body.0.weight"] == 0.5**5
    assert scale["downsamples.1.weight"] == scale["stages.1.0.body.0.weight"] == 0.5**4
    assert scale["stages.2.blocks.0.retention.qkv.weight"] == 0.5**3
    assert scale["stages.2.blocks.1.mlp.fc1.weight"] == 0.5**2
    assert scale["stages.3.blocks.0.norm1.weight"] == 0.5**1
    assert len({model.get_layer_depth(n)[0] for n, _ in model.named_parameters()}) == 7


def test_reset_classifier_and_pre_logits():
    model = small().eval()
    feats = model.forward_features(images(1))
    assert model.forward_head(feats, pre_logits=True).shape == (1, 64)
    model.reset_classifier(3)
    assert model(images(1)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(images(1)).shape == (1, 64)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(directions=3), "directions=3 is invalid"),
        (dict(depths=(1, 1, 1)), "expected 4 stage depths and 2 head counts"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(num_heads=(3, 2)), "not divisible by num_heads=3"),
        (dict(retention_mode="fast"), "mode"),
    ],
)
def test_invalid_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small(**kwargs)


def test_wrong_input_channels_raise_a_clear_error():
    with pytest.raises(ValueError, match=r"expected \(batch, 3, height, width\)"):
        small()(torch.randn(1, 1, 32, 32))


def test_set_retention_mode_reaches_every_retention_layer():
    model = small()
    model.set_retention_mode("chunkwise", 2)
    layers = model.retention_layers()
    assert len(layers) == 3 and all(layer.mode == "chunkwise" and layer.chunk_size == 2 for layer in layers)
    with pytest.raises(ValueError):
        model.set_retention_mode("nope")
    assert model.retention_mode == "chunkwise"
