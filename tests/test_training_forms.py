"""Training in every retention form: train_mode, gradient checkpointing, no host reads, compile."""

from __future__ import annotations

import pytest
import torch
from conftest import saved_tensor_bytes

from vir_lightning.models import create_model
from vir_lightning.models.hvir import HybridViR
from vir_lightning.tasks.classification import ImageClassifier


def tiny_vir(**overrides):
    torch.manual_seed(0)
    kwargs = dict(num_classes=5, img_size=28, in_chans=1, embed_dim=16, depth=2, num_heads=2, layer_scale_init=1.0)
    return create_model("vir_nano_patch4_28", **{**kwargs, **overrides})


def tiny_hvir(**overrides):
    torch.manual_seed(0)
    return HybridViR(
        **{**dict(dim=8, depths=(1, 1, 2, 1), num_heads=(2, 2), layer_scale_init=1.0, num_classes=5), **overrides}
    )


def gradients(model, images, seed=3, run=None):
    """Parameter gradients of a loss on ``run(images)`` (default: the model itself)."""
    model.zero_grad()
    torch.manual_seed(seed)  # the same drop-path draws in both runs
    (model if run is None else run)(images).square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "build,shape",
    [
        (lambda: tiny_vir(drop_path_rate=0.3), (2, 1, 28, 28)),
        (lambda: tiny_vir(decay="2d", drop_path_rate=0.3), (2, 1, 28, 28)),
        (lambda: tiny_hvir(drop_path_rate=0.3), (2, 3, 64, 64)),
    ],
)
@pytest.mark.parametrize("mode", ["parallel", "chunkwise"])
def test_grad_checkpointing_gives_identical_gradients_with_less_saved(build, shape, mode):
    model = build().double().train()
    model.set_retention_mode(mode)
    images = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = gradients(model, images)
    saved_plain = saved_tensor_bytes(lambda: model(images))
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    actual = gradients(model, images)
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)
    assert saved_tensor_bytes(lambda: model(images)) < saved_plain


def test_hvir_checkpointing_leaves_batchnorm_statistics_as_without():
    """Conv blocks are not recomputed, so BatchNorm's running statistics move once per step."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    stats = []
    for checkpointing in (False, True):
        model = tiny_hvir().train()
        model.set_grad_checkpointing(checkpointing)
        model(images).sum().backward()
        stats.append(torch.cat([m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]))
    assert torch.equal(stats[0], stats[1])


def test_set_grad_checkpointing_refuses_a_non_boolean():
    with pytest.raises(ValueError, match="enable='yes'; expected True or False"):
        tiny_vir().set_grad_checkpointing("yes")


# -- the task's training form -------------------------------------------------------------------


def test_train_mode_defaults_to_auto_or_to_the_models_own_form():
    assert ImageClassifier(num_classes=10, img_size=28, in_chans=1).train_mode == "auto"
    module = ImageClassifier(num_classes=10, img_size=28, in_chans=1, model_kwargs={"retention_mode": "chunkwise"})
    assert module.train_mode == "chunkwise"
    assert module.model.retention_mode == "chunkwise"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(train_mode="streaming"), "train_mode='streaming' is inference-only"),
        (dict(train_mode="banana"), "train_mode: mode='banana' is unknown"),
        (dict(train_mode="chunkwise", train_chunk_size=0), "chunk_size=0 is invalid"),
        (
            dict(train_mode="chunkwise", model_kwargs={"softmax_retention": True}),
            "mode='chunkwise' is impossible with softmax_retention=True",
        ),
        (dict(grad_checkpointing="yes"), "enable='yes'; expected True or False"),
    ],
)
def test_bad_training_options_get_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier(num_classes=10, img_size=28, in_chans=1, **kwargs)


def test_train_mode_from_model_kwargs_keeps_their_chunk_size_and_streaming_falls_back_to_auto():
    module = ImageClassifier(
        num_classes=10, img_size=28, in_chans=1, model_kwargs={"retention_mode": "chunkwise", "chunk_size": 5}
    )
    assert (module.train_mode, module.train_chunk_size) == ("chunkwise", 5)
    assert module.model.retention_layers()[0].chunk_size == 5
    module = ImageClassifier(num_classes=10, img_size=28, in_chans=1, model_kwargs={"retention_mode": "streaming"})
    assert module.train_mode == "auto"


def test_grad_checkpointing_attribute_is_assignable_like_timms():
    model = tiny_vir()
    model.grad_checkpointing = True
    assert all(block.grad_checkpointing for block in model.blocks)


def test_layer_depth_of_a_backbone_without_its_last_stages():
    model = tiny_hvir()
    model.stages[3] = torch.nn.Identity()  # what a detection backbone with out_indices (0, 1, 2) does
    assert model.get_layer_depth("stages.2.blocks.1.mlp.fc1.weight") == (4, 6)


def test_compile_option_keeps_the_checkpoint_keys_and_the_logits():
    eager = ImageClassifier(
        num_classes=10, img_size=28, in_chans=1, model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2}
    )
    compiled = ImageClassifier(
        num_classes=10,
        img_size=28,
        in_chans=1,
        compile=True,
        model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2},
    )
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    compiled.load_state_dict(eager.state_dict())
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(images), eager.eval()(images), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="compile='yes'; expected true or false"):
        ImageClassifier(num_classes=10, img_size=28, in_chans=1, compile="yes")


def test_grad_checkpointing_option_reaches_the_model():
    module = ImageClassifier(num_classes=10, img_size=28, in_chans=1, grad_checkpointing=True)
    assert module.model.grad_checkpointing


# -- the hot path: no host reads, compilable -------------------------------------------------------


@pytest.mark.parametrize(
    "build,shape",
    [
        (lambda: tiny_vir(), (1, 1, 28, 28)),
        (lambda: tiny_vir(decay="2d"), (1, 1, 28, 28)),
        (lambda: tiny_hvir(), (1, 3, 64, 64)),
    ],
)
@pytest.mark.parametrize("mode", ["parallel", "chunkwise", "auto"])
def test_forward_and_backward_never_read_a_tensor_back_to_the_host(build, shape, mode, monkeypatch):
    """``.item()``, ``.tolist()`` and ``bool(tensor)`` stall a GPU and break ``torch.compile``."""
    model = build().train()
    model.set_retention_mode(mode)
    images = torch.randn(shape)

    def refuse(self, *args, **kwargs):
        raise AssertionError("a host read on the hot path")

    for name in ("item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    model(images).sum().backward()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["parallel", "chunkwise"])
def test_compiled_model_with_fullgraph_equals_eager(mode):
    """torch.compile(fullgraph=True) on CPU (inductor): logits and gradients equal to eager."""
    model = tiny_vir(depth=1)
    model.set_retention_mode(mode, 2 if mode == "chunkwise" else None)
    images = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(model, fullgraph=True)
    expected = gradients(model, images)
    actual = gradients(model, images, run=compiled)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images), rtol=1e-5, atol=1e-6)
