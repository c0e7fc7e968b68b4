"""The streaming form (docs/design/method.md §7): segments with a carried state, and ViR band by band
through every block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_qkv, relative_error

from vir_lightning import create_model
from vir_lightning.models import VisionRetention, pos_embed
from vir_lightning.models.streaming import band_bounds, default_band_rows
from vir_lightning.retention import retention, retention_step

TOL = 1e-10  # float64

# layer_scale_init=1 so the retention branch is far above rounding of the residual (see test_models).
TINY = dict(embed_dim=24, depth=2, num_heads=3, layer_scale_init=1.0, num_classes=7, img_size=32, patch_size=8)


def tiny(dtype=torch.float64, **overrides) -> VisionRetention:
    torch.manual_seed(0)
    return VisionRetention(**{**TINY, **overrides}).to(dtype).eval()


def images(size, batch=2, dtype=torch.float64, seed=0):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def streamed(model, x, band_rows):
    model.set_retention_mode("streaming", band_rows)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.set_retention_mode("parallel")


# ----------------------------------------------------------------------------------------------
# The op: a sequence fed segment by segment equals the whole sequence
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 5, 33, 100])
@pytest.mark.parametrize("segment", [1, 2, 3, 7, 64, 200])
def test_1d_segments_with_carried_state_equal_the_whole_sequence(tokens, segment, rates3):
    q, k, v = random_qkv(2, 3, tokens, 8, value_dim=5, seed=tokens)
    expected = retention(q, k, v, rates3, scale=0.3)
    outputs, state = [], None
    for start in range(0, tokens, segment):
        part = slice(start, start + segment)
        out, state = retention_step(q[:, :, part], k[:, :, part], v[:, :, part], rates3, state, scale=0.3, chunk_size=4)
        outputs.append(out)
    assert relative_error(torch.cat(outputs, 2), expected) <= TOL
    assert state.shape == (2, 3, 8, 5)


@pytest.mark.parametrize("grid_shape", [(1, 1), (1, 6), (5, 4), (7, 3)])
@pytest.mark.parametrize("cls_token", [False, True])
@pytest.mark.parametrize("band", [1, 2, 3, 10])
def test_2d_row_bands_with_carried_column_states_equal_the_whole_grid(grid_shape, cls_token, band, rates3):
    rows, cols = grid_shape
    q, k, v = random_qkv(2, 3, rows * cols + cls_token, 8, value_dim=5, seed=rows * cols)
    expected = retention(q, k, v, rates3, grid_shape=grid_shape, class_token=cls_token, scale=0.3)
    outputs, state = [], None
    for row0 in range(0, rows, band):
        part = slice(row0 * cols, min(rows, row0 + band) * cols)
        out, state = retention_step(
            q[:, :, part], k[:, :, part], v[:, :, part], rates3, state, grid_cols=cols, scale=0.3, chunk_size=2
        )
        outputs.append(out)
    assert state.shape == (2, 3, cols, 8, 5)  # one state per column: grows with the width only
    if cls_token:
        out, _ = retention_step(
            q[:, :, -1:], k[:, :, -1:], v[:, :, -1:], rates3, state, grid_cols=cols, class_token=True, scale=0.3
        )
        outputs.append(out)
    assert relative_error(torch.cat(outputs, 2), expected) <= TOL


def test_half_precision_segments_keep_a_float32_state(rates3):
    q, k, v = (t.bfloat16() for t in random_qkv(1, 3, 20, 8, dtype=torch.float32))
    out, state = retention_step(q, k, v, rates3)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(state=torch.zeros(2, 3, 8, 7, dtype=torch.float64)), r"state is .*expected shape \(2, 3, 8, 8\)"),
        (dict(state=torch.zeros(2, 3, 8, 8)), r"dtype torch.float64"),
        (dict(grid_cols=4), "not a multiple of grid_cols=4"),
        (dict(class_token=True), "class_token=True needs grid_cols"),
        (dict(grid_cols=2, class_token=True), "takes one token"),
        (dict(grid_cols=0), "grid_cols=0 is invalid"),
    ],
)
def test_retention_step_rejects_mismatched_state_and_layout(kwargs, match, rates3):
    q, k, v = random_qkv(2, 3, 6, 8)
    with pytest.raises(ValueError, match=match):
        retention_step(q, k, v, rates3, **kwargs)


# ----------------------------------------------------------------------------------------------
# The model: logits equal parallel mode for every pooling, band height and grid
# ----------------------------------------------------------------------------------------------

OPTIONS = {
    "token_last_1d": dict(),
    "avg_1d": dict(pooling="avg"),
    "multipass": dict(multipass=True),
    "multipass_token_first": dict(multipass=True, pooling="token_first"),
    "multipass_avg": dict(multipass=True, pooling="avg"),
    "token_last_2d": dict(decay="2d"),
    "avg_2d": dict(decay="2d", pooling="avg"),
}
# (image size in pixels, patch 8): square, non-square both ways, one row, one column
SIZES = [(32, 32), (24, 40), (8, 48), (56, 8)]


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("size", SIZES)
def test_streaming_logits_equal_parallel_for_every_band_height(option, size):
    """Band heights 1, 2, 3, one that does not divide the grid (5) and one above it (100)."""
    model = tiny(dynamic_img_size=True, **OPTIONS[option])
    x = images(size)
    with torch.no_grad():
        expected = model(x)
    for band_rows in (1, 2, 3, 5, 100, None):
        assert relative_error(streamed(model, x, band_rows), expected) <= TOL, band_rows


@pytest.mark.parametrize("option", ["token_last_1d", "multipass", "avg_2d"])
def test_streaming_equals_parallel_in_float32(option):
    model = tiny(torch.float32, dynamic_img_size=True, **OPTIONS[option])
    x = images((40, 24), dtype=torch.float32)
    with torch.no_grad():
        expected = model(x)
    assert relative_error(streamed(model, x, 2), expected) <= 1e-4


def test_band_features_are_the_final_norm_tokens_of_the_whole_image():
    model = tiny(decay="2d")
    x = images((32, 32))
    with torch.no_grad():
        expected = model.forward_features(x)[:, :16].unflatten(1, (4, 4))  # the patch tokens
        model.set_retention_mode("streaming", 3)
        bands = []
        model.forward_streaming(
            lambda r0, r1: x[:, :, r0 * 8 : r1 * 8], (4, 4), 2, on_features=lambda row0, f: bands.append((row0, f))
        )
    assert [row0 for row0, _ in bands] == [0, 3]
    assert relative_error(torch.cat([f for _, f in bands], 1), expected) <= TOL


def test_model_built_in_streaming_mode_streams():
    model = create_model("vir_nano_patch16_224", img_size=64, retention_mode="streaming", chunk_size=2).eval()
    assert model.retention_mode == "streaming" and model.band_rows == 2
    reference = create_model("vir_nano_patch16_224", img_size=64).eval()
    reference.load_state_dict(model.state_dict())
    x = images((64, 64), dtype=torch.float32)
    with torch.no_grad():
        assert relative_error(model(x), reference(x)) <= 1e-5
    model.set_retention_mode("chunkwise")
    assert model.retention_mode == "chunkwise" and not model.streaming


def test_default_band_is_about_a_thousand_tokens_of_whole_rows():
    assert default_band_rows(64) == 16 and default_band_rows(1024) == 1 and default_band_rows(5000) == 1
    assert band_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]


# ----------------------------------------------------------------------------------------------
# Per-band position embedding: never the whole grid
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_separable_position_resize_equals_torch_bicubic_and_its_row_slices(dtype, tol):
    pos = torch.randn(1, 5 * 7, 6, dtype=dtype)
    grid = pos.reshape(1, 5, 7, 6).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(13, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    resized = pos_embed.resize_pos_embed(pos, (5, 7), (13, 4))
    assert relative_error(resized, expected.reshape(1, -1, 6)) <= tol
    rows = pos_embed.resize_pos_embed(pos, (5, 7), (13, 4), rows=slice(6, 9))
    assert relative_error(rows, expected[:, 6:9].reshape(1, -1, 6)) <= tol


def test_streaming_a_larger_image_never_resizes_the_whole_position_embedding(monkeypatch):
    model = tiny(torch.float32, dynamic_img_size=True)
    calls = []
    real = pos_embed.resize_pos_embed

    def spy(pos, old, new, rows=None):
        calls.append(rows)
        return real(pos, old, new, rows)

    monkeypatch.setattr("vir_lightning.models.vir.resize_pos_embed", spy)
    model.set_retention_mode("streaming", 2)
    with torch.no_grad():
        model(images((64, 48), batch=1, dtype=torch.float32))
    assert calls and all(isinstance(rows, slice) and rows.stop - rows.start <= 2 for rows in calls)


# ----------------------------------------------------------------------------------------------
# What cannot stream says why
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_fn,match",
    [
        (lambda: tiny(decay="2d", pooling="avg", directions=4), "directions=4 lets every token see the rows below"),
        (lambda: tiny(decay="2d", pooling="avg", directions=2), "directions=2"),
        (lambda: tiny(pooling="token_first"), "token_first' without multipass"),
        (lambda: tiny(softmax_retention=True), "softmax_retention"),
        (lambda: create_model("vit_nano_patch16_224"), "ViT baseline"),
        (lambda: create_model("hvir_nano"), "overlapping margins"),
    ],
)
def test_models_that_cannot_stream_say_why(model_fn, match):
    model = model_fn()
    with pytest.raises(ValueError, match=match):
        model.set_retention_mode("streaming")
    assert model.retention_mode != "streaming"


def test_bad_band_height_is_refused():
    with pytest.raises(ValueError, match="chunk_size=0 is invalid"):
        tiny().set_retention_mode("streaming", 0)


def test_streaming_refuses_gradients_training_mode_and_whole_image_tensors():
    model = tiny()
    model.set_retention_mode("streaming", 2)
    x = images((32, 32))
    with pytest.raises(ValueError, match="computes no gradients.*torch.no_grad"):
        model(x)
    with torch.no_grad():
        with pytest.raises(ValueError, match="forward_features returns every token"):
            model.forward_features(x)
        with pytest.raises(ValueError, match="forward_intermediates returns every token"):
            model.forward_intermediates(x)
        model.train()
        with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
            model(x)


def test_image_smaller_than_a_patch_and_fixed_size_mismatch_name_the_fix():
    model = tiny()
    model.set_retention_mode("streaming")
    with torch.no_grad():
        with pytest.raises(ValueError, match="smaller than one 8×8 patch"):
            model(images((4, 32)))
        with pytest.raises(ValueError, match="dynamic_img_size=True"):
            model(images((40, 32)))
