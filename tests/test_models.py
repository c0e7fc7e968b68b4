"""The ViR model family: sizes, registry, modes, pooling, position-embedding resize, timm-style verbs."""

from __future__ import annotations

import pytest
import torch
from conftest import relative_error

import vir_lightning
from vir_lightning import create_model, list_models
from vir_lightning.models import ARCH_ZOO, VisionRetention
from vir_lightning.models.layers import DropPath
from vir_lightning.models.pos_embed import resize_pos_embed

# A tiny ViR for fast tests. layer_scale_init=1 so retention visibly shapes the output: with the
# default 1e-5 the branch is below float64 rounding of the residual and equality tests could not fail.
TINY = dict(embed_dim=24, depth=2, num_heads=3, layer_scale_init=1.0, num_classes=7)


def tiny(**overrides) -> VisionRetention:
    torch.manual_seed(0)
    return VisionRetention(**{**TINY, "img_size": 32, "patch_size": 8, **overrides})


def images(batch=2, size=(32, 32), channels=3, dtype=torch.float32, seed=0):
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize(
    "name,expected_millions",
    [
        ("vir_small_patch16_224", 22.059),
        ("vir_base_patch16_224", 86.585),
        ("vir_large_patch16_224", 304.375),
        ("vir_large_patch14_224", 304.252),
    ],
)
def test_parameter_counts_match_the_spec(name, expected_millions):
    with torch.device("meta"):
        model = create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6, 3) == expected_millions
    # ViT's count + 2·D per block (LayerScale) − D (no class-token position embedding).
    d, depth = model.embed_dim, len(model.blocks)
    p = model.patch_embed.patch_size[0]
    n = (224 // p) ** 2
    vit = 3 * p * p * d + d + (n + 1) * d + d + depth * (12 * d * d + 13 * d) + 2 * d + 1000 * d + 1000
    assert count == vit + 2 * d * depth - d


def test_registry_lists_the_required_models():
    names = list_models()
    for required in ["vir_small_patch16_224", "vir_base_patch16_224", "vir_large_patch16_224", "vir_large_patch14_224"]:
        assert required in names
    assert list_models("vir_nano*") and list_models("vir_tiny*")
    assert vir_lightning.list_models is list_models


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'vir_smal_patch16_224'.*vir_small_patch16_224"):
        create_model("vir_smal_patch16_224")


def test_overrides_reach_the_model():
    model = create_model("vir_nano_patch16_224", num_classes=3, img_size=(64, 96), decay="2d", drop_path_rate=0.2)
    assert model.grid_shape == (4, 6) and model.head.out_features == 3 and model.decay == "2d"
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3)


HEAVY = ("base", "large")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if any(h in n for h in HEAVY) else n for n in list_models()]
)
def test_every_registered_model_trains_every_parameter(name):
    """Forward/backward on a small input reaches every parameter without NaN.

    Large models run at 32×32 (the size table is what matters here, not the resolution)."""
    torch.manual_seed(0)
    patch = create_model(name, img_size=32 if "patch14" not in name else 28, num_classes=5, layer_scale_init=1.0)
    size = patch.img_size
    x = images(2, size)
    loss = patch(x).logsumexp(-1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    for param_name, p in patch.named_parameters():
        assert p.grad is not None, f"{param_name} received no gradient"
        assert torch.isfinite(p.grad).all(), param_name
        assert p.grad.abs().sum() > 0, f"{param_name} gradient is identically zero"


VARIANTS = [
    dict(decay="1d"),
    dict(decay="1d", pooling="avg"),
    dict(decay="1d", multipass=True),
    dict(decay="1d", pooling="token_first", multipass=True),
    dict(decay="2d"),
    dict(decay="2d", pooling="avg"),
    dict(decay="2d", pooling="avg", directions=2),
    dict(decay="2d", pooling="avg", directions=4),
    dict(decay="1d", decay_schedule="retnet"),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()))
@pytest.mark.parametrize(
    "mode,chunk_size", [("recurrent", None), ("chunkwise", 1), ("chunkwise", 3), ("chunkwise", None)]
)
def test_logits_equal_in_every_mode(variant, mode, chunk_size):
    model = tiny(img_size=(32, 40), **variant).eval()
    x64 = images(2, (32, 40), dtype=torch.float64)
    model64 = tiny(img_size=(32, 40), **variant).double().eval()
    with torch.no_grad():
        reference64, reference32 = model64(x64), model(x64.float())
        model64.set_retention_mode(mode, chunk_size)
        model.set_retention_mode(mode, chunk_size)
        assert relative_error(model64(x64), reference64) <= 1e-10
        assert relative_error(model(x64.float()), reference32) <= 1e-4
    assert model.retention_mode == mode


def test_decay_choices_change_the_function():
    """The equivalence tests above would pass vacuously if decay options were ignored."""
    x = images()
    outputs = [tiny(**v).eval()(x) for v in (dict(decay="1d"), dict(decay="2d"), dict(decay_schedule="retnet"))]
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[0], outputs[2])
    avg = [tiny(decay="2d", pooling="avg", directions=d).eval()(x) for d in (1, 2, 4)]
    assert not torch.allclose(avg[0], avg[1]) and not torch.allclose(avg[1], avg[2])


def test_class_token_goes_last_and_sees_every_patch():
    model = tiny().eval()
    x = images(1)
    base = model(x)
    x2 = x.clone()
    x2[:, :, :8, :8] += 1.0  # the first patch in raster order
    assert not torch.allclose(model(x2), base)


def test_token_first_without_multipass_reads_a_token_that_saw_only_itself():
    """An ablation, documented: under causal 1D decay the first token never sees a patch."""
    model = tiny(pooling="token_first").eval()
    with torch.no_grad():
        assert torch.equal(model(images(1, seed=1)), model(images(1, seed=2)))
        multipass = tiny(pooling="token_first", multipass=True).eval()
        assert not torch.allclose(multipass(images(1, seed=1)), multipass(images(1, seed=2)))


def test_multipass_doubles_the_sequence_for_any_patch_size():
    for patch, size in [(4, 28), (8, 32), (7, 28)]:
        model = tiny(img_size=size, patch_size=patch, multipass=True)
        tokens = model.forward_features(images(1, (size, size)))
        assert tokens.shape[1] == 2 * ((size // patch) ** 2 + 1)


def test_softmax_variant_is_parallel_only_and_not_causal():
    model = tiny(softmax_retention=True).eval()
    with pytest.raises(ValueError, match=r"mode='chunkwise' is impossible with softmax_retention=True"):
        model.set_retention_mode("chunkwise")
    layer = model.blocks[0].retention
    x = torch.randn(1, 9, 24)
    x2 = x.clone()
    x2[:, 8] += 3.0  # change only the last token
    with torch.no_grad():
        softmax_out = layer(x)[:, :8], layer(x2)[:, :8]
        layer.softmax_retention = False
        plain_out = layer(x)[:, :8], layer(x2)[:, :8]
    # The authors' softmax form leaks the future into earlier positions (logit 0, not −inf) ...
    assert not torch.allclose(*softmax_out)
    # ... true retention does not.
    assert torch.equal(*plain_out)


def test_drop_path_is_applied_in_training_only():
    model = tiny(drop_path_rate=0.5, depth=4)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.0, 0.0, 1 / 6, 1 / 6, 1 / 3, 1 / 3, 0.5, 0.5])
    x = images()
    model.train()
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(first, model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_any_divisible_image_size_and_channel_count():
    model = tiny(img_size=(24, 56), in_chans=1)
    assert model(images(2, (24, 56), channels=1)).shape == (2, 7)
    with pytest.raises(ValueError, match=r"not divisible by the patch size 8×8"):
        tiny(img_size=30)
    with pytest.raises(ValueError, match=r"built for 24×56.*dynamic_img_size=True"):
        model(images(1, (32, 32), channels=1))
    with pytest.raises(ValueError, match=r"expected \(batch, 1, height, width\)"):
        model(images(1, (24, 56), channels=3))


def test_dynamic_img_size_resizes_the_position_embedding_on_the_fly():
    model = tiny(dynamic_img_size=True, decay="2d").eval()
    assert model(images(1, (48, 64))).shape == (1, 7)


def test_loading_weights_for_another_size_resizes_the_position_embedding():
    source = tiny(img_size=32)  # 4×4 grid
    target = tiny(img_size=(48, 64))  # 6×8 grid
    target.load_state_dict(source.state_dict())
    expected = resize_pos_embed(source.pos_embed.detach(), (4, 4), (6, 8))
    assert torch.equal(target.pos_embed.detach(), expected)
    corners = target.pos_embed.detach().reshape(6, 8, -1)
    assert not torch.equal(corners[0, 0], corners[-1, -1])
    for name, value in source.state_dict().items():
        if name != "pos_embed":
            assert torch.equal(target.state_dict()[name], value), name
    # Same size: loaded exactly.
    same = tiny(img_size=32)
    same.load_state_dict(source.state_dict())
    assert torch.equal(same.pos_embed, source.pos_embed)


def test_loading_a_checkpoint_of_another_architecture_fails_loudly():
    with pytest.raises(RuntimeError, match=r"size mismatch|Missing key|Unexpected key"):
        tiny(embed_dim=48).load_state_dict(tiny().state_dict())


def test_forward_intermediates_returns_patch_grids():
    model = tiny(img_size=(32, 40), depth=3).eval()
    x = images(2, (32, 40))
    final, feats = model.forward_intermediates(x, indices=[0, -1])
    assert [f.shape for f in feats] == [(2, 24, 4, 5)] * 2
    assert torch.allclose(final, model.forward_features(x))
    only = model.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True, norm=True)
    assert [f.shape for f in only] == [(2, 20, 24)] * 2
    with pytest.raises(ValueError, match=r"indices=\[5\] is invalid; there are blocks 0..2"):
        model.forward_intermediates(x, indices=[5])


def test_forward_head_pre_logits_and_reset_classifier():
    model = tiny()
    feats = model.forward_features(images())
    assert model.forward_head(feats, pre_logits=True).shape == (2, 24)
    model.reset_classifier(11)
    assert model(images()).shape == (2, 11) and model.get_classifier().out_features == 11
    model.reset_classifier(0)
    assert model(images()).shape == (2, 24)


def test_no_weight_decay_names_embeddings_norms_biases_and_layer_scale():
    model = tiny()
    names = model.no_weight_decay()
    assert {"pos_embed", "cls_token", "blocks.0.ls1.gamma", "blocks.0.norm1.weight", "head.bias"} <= names
    assert all(p.ndim >= 2 for n, p in model.named_parameters() if n not in names)
    assert "blocks.0.retention.qkv.weight" not in names


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(decay="3d"), r"decay='3d' is unknown"),
        (dict(pooling="max"), r"pooling='max' is unknown"),
        (dict(decay="2d", directions=4), r"directions=4 needs decay='2d' and pooling='avg'"),
        (dict(decay="1d", directions=2, pooling="avg"), r"directions=2 needs decay='2d'"),
        (dict(decay="2d", multipass=True), r"decay='2d' supports pooling"),
        (dict(decay_schedule="cosine"), r"decay_schedule='cosine' is unknown"),
        (dict(retention_mode="fast"), r"mode='fast' is unknown"),
        (dict(drop_path_rate=1.0), r"drop_path_rate=1.0"),
        (dict(num_heads=5), r"not divisible by num_heads=5"),
    ],
)
def test_invalid_model_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_size_table_is_consistent():
    for arch in ARCH_ZOO.values():
        assert arch["embed_dim"] % arch["num_heads"] == 0


def test_set_retention_mode_rejects_bad_arguments_and_changes_nothing():
    model = tiny()
    with pytest.raises(ValueError, match=r"mode='fast' is unknown"):
        model.set_retention_mode("fast")
    with pytest.raises(ValueError, match=r"chunk_size=0 is invalid"):
        model.set_retention_mode("chunkwise", 0)
    assert model.retention_mode == "parallel"
