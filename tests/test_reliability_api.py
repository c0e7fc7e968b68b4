"""Edges of the public API and the tool commands: every bad input gets one clear error naming the
problem and the fix, and edge inputs that are valid (empty sequences, NumPy integers, meta tensors)
give the right result instead of a deep failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vir_lightning.models import UnknownOptionError, create_model
from vir_lightning.retention import retention, retention_decay_matrix, retention_step, tile_shape

RATES = [0.9, 0.8]
MODES = ("parallel", "recurrent", "chunkwise", "auto")


def qkv(batch=2, heads=2, tokens=6, dim=4, **kwargs):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, heads, tokens, dim, generator=g, **kwargs) for _ in range(3))


# ------------------------------------------------------------------------------------------------
# The retention op
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_zero_tokens_give_an_empty_result_in_every_mode(mode):
    q, k, v = qkv(tokens=0)
    out = retention(q, k, v, RATES, mode=mode)
    assert out.shape == (2, 2, 0, 4)


def test_zero_tokens_keep_the_autograd_graph():
    q, k, v = (t.requires_grad_() for t in qkv(tokens=0))
    retention(q, k, v, RATES, mode="chunkwise").sum().backward()
    assert q.grad.shape == q.shape


@pytest.mark.parametrize("grid_cols", [None, 3])
def test_an_empty_segment_returns_the_state_unchanged(grid_cols):
    q, k, v = qkv(tokens=6)
    _, state = retention_step(q, k, v, RATES, grid_cols=grid_cols)
    empty = qkv(tokens=0)
    out, after = retention_step(*empty, RATES, state, grid_cols=grid_cols)
    assert out.shape == (2, 2, 0, 4)
    assert torch.equal(after, state)


def test_meta_decay_rates_tensor_is_refused_clearly():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="decay_rates is a meta tensor.*Python floats"):
        retention(q, k, v, torch.tensor(RATES, device="meta"))


def test_decay_rates_that_require_grad_are_refused_not_silently_constant():
    q, k, v = qkv()
    rates = torch.tensor(RATES, requires_grad=True)
    with pytest.raises(ValueError, match=r"decay_rates requires grad.*detach\(\)"):
        retention(q, k, v, rates)
    with torch.no_grad():  # no gradient is asked for: fine
        retention(q, k, v, rates)
    retention(q, k, v, rates.detach())


@pytest.mark.parametrize("directions", [True, 2.0])
def test_directions_must_be_the_integer_1_2_or_4(directions):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=f"directions={directions!r} is invalid"):
        retention(q, k, v, RATES, grid_shape=(2, 3), directions=directions)


def test_numpy_integers_are_accepted_for_grid_shape_and_chunk_size():
    q, k, v = qkv()
    expected = retention(q, k, v, RATES, mode="chunkwise", grid_shape=(2, 3), chunk_size=1)
    got = retention(q, k, v, RATES, mode="chunkwise", grid_shape=(np.int64(2), np.int64(3)), chunk_size=np.int64(1))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("mode", ("parallel", "recurrent", "chunkwise"))
def test_meta_inputs_give_the_output_shape(mode):
    q, k, v = qkv(device="meta")
    assert retention(q, k, v, RATES, mode=mode).shape == q.shape


def test_step_class_token_must_be_a_bool():
    q, k, v = qkv(tokens=1)
    with pytest.raises(ValueError, match="class_token=1; expected True or False"):
        retention_step(q, k, v, RATES, grid_cols=3, class_token=1)


def test_step_state_on_another_device_is_refused_clearly():
    q, k, v = qkv()
    state = torch.zeros(2, 2, 4, 4, device="meta")
    with pytest.raises(ValueError, match="state is .*meta.*expected shape .* on cpu"):
        retention_step(q, k, v, RATES, state)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((5, torch.tensor(RATES)), dict(grid_shape=(2, 2)), r"means 4 tokens, but num_tokens is 5"),
        ((-1, torch.tensor(RATES)), {}, r"num_tokens=-1 is invalid"),
        ((4, [1.5, 0.5]), {}, r"outside the open interval \(0, 1\)"),
        ((4, torch.tensor([[0.9]])), {}, r"expected a floating-point \(heads,\) tensor"),
        ((4, torch.tensor(RATES)), dict(directions=3, grid_shape=(2, 2)), r"directions=3 is invalid"),
    ],
)
def test_decay_matrix_checks_its_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retention_decay_matrix(*args, **kwargs)


def test_decay_matrix_takes_python_floats():
    expected = retention_decay_matrix(4, torch.tensor(RATES))
    torch.testing.assert_close(retention_decay_matrix(4, RATES), expected)


def test_tile_shape_checks_the_grid():
    with pytest.raises(ValueError, match="grid_shape rows=0 is invalid"):
        tile_shape((0, 3), None)


# ------------------------------------------------------------------------------------------------
# The models
# ------------------------------------------------------------------------------------------------

TINY_VIR = dict(embed_dim=16, depth=1, num_heads=2, num_classes=3, in_chans=1)
TINY_HVIR = dict(dim=8, depths=(1, 1, 1, 1), num_heads=(2, 2), num_classes=3, in_chans=1)
FAMILIES = {
    "vir": ("vir_nano_patch4_28", TINY_VIR, 28),
    "vit": ("vit_nano_patch16_224", dict(TINY_VIR, img_size=32), 32),
    "hvir": ("hvir_nano", TINY_HVIR, 32),
}


def tiny(family):
    name, kwargs, size = FAMILIES[family]
    return create_model(name, **kwargs).eval(), size


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "make_input,error,match",
    [
        (
            lambda s: torch.randint(0, 255, (2, 1, s, s), dtype=torch.uint8),
            ValueError,
            r"dtype torch.uint8; expected floating-point images .*x.float\(\) / 255",
        ),
        (
            lambda s: torch.randn(2, 1, s, s, dtype=torch.float64),
            ValueError,
            r"dtype torch.float64 but the model's weights are torch.float32; pass x.to\(torch.float32\)",
        ),
        (lambda s: torch.randn(2, 1, s, s, dtype=torch.bfloat16), ValueError, r"dtype torch.bfloat16 but the model"),
        (lambda s: torch.randn(2, 1, s, s).numpy(), TypeError, r"input is a ndarray; expected a torch.Tensor"),
        (lambda s: torch.randn(1, s, s), ValueError, r"input has shape \(1, \d+, \d+\); expected \(batch, 1,"),
        (lambda s: torch.randn(2, 1, s, s, device="meta"), ValueError, r"input is on meta but the model is on cpu"),
    ],
)
def test_bad_images_get_one_clear_error(family, make_input, error, match):
    model, size = tiny(family)
    with pytest.raises(error, match=match):
        model(make_input(size))


@pytest.mark.parametrize("family", FAMILIES)
def test_another_dtype_under_autocast_is_fine(family):
    model, size = tiny(family)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(2, 1, size, size, dtype=torch.bfloat16)).shape == (2, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_empty_batch_gives_empty_logits(family):
    model, size = tiny(family)
    with torch.no_grad():
        assert model(torch.randn(0, 1, size, size)).shape == (0, 3)


def test_vit_image_smaller_than_a_patch_says_so():
    model, _ = tiny("vit")
    with pytest.raises(ValueError, match=r"image of 8×8 px is smaller than one 16×16 patch"):
        model(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("num_classes", [-1, 2.5, True, "3"])
def test_num_classes_must_be_a_non_negative_integer(family, num_classes):
    name, kwargs, _ = FAMILIES[family]
    with pytest.raises(ValueError, match=f"num_classes={num_classes!r} is invalid; expected an integer >= 0"):
        create_model(name, **{**kwargs, "num_classes": num_classes})
    model, _ = tiny(family)
    with pytest.raises(ValueError, match="num_classes=.* is invalid"):
        model.reset_classifier(num_classes)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(img_size=0), r"img_size=0 is invalid; expected a positive int"),
        (dict(img_size=2), r"img_size=2 is smaller than one 4×4 patch"),
        (dict(patch_size=0), r"patch_size=0 is invalid"),
        (dict(embed_dim=0), r"embed_dim=0 is invalid; expected an integer >= 1"),
        (dict(in_chans=0), r"in_chans=0 is invalid"),
        (dict(drop_rate=1.5), r"drop_rate=1.5; expected 0 <= rate < 1"),
        (dict(mlp_ratio=0), r"mlp_ratio=0; expected a positive number"),
    ],
)
def test_vir_options_are_checked_when_built(overrides, match):
    with pytest.raises(ValueError, match=match):
        create_model("vir_nano_patch4_28", **{**TINY_VIR, **overrides})


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(num_heads=5), r"num_heads=5: expected 4 stage depths and 2 head counts"),
        (dict(depths=(1, 1, -1, 1)), r"depths=\(1, 1, -1, 1\)"),
        (dict(dim=1), r"dim=1 is invalid; expected an integer >= 2"),
        (dict(img_size=0), r"img_size=0 is invalid"),
    ],
)
def test_hvir_options_are_checked_when_built(overrides, match):
    with pytest.raises(ValueError, match=match):
        create_model("hvir_nano", **{**TINY_HVIR, **overrides})


def test_an_unknown_model_option_lists_the_options():
    with pytest.raises(UnknownOptionError, match=r"model 'hvir_nano' has no option 'embed_dim'; its options are .*dim"):
        create_model("hvir_nano", embed_dim=16)
    # a TypeError as Python's own, and a ValueError for the commands' one-line errors
    assert issubclass(UnknownOptionError, TypeError) and issubclass(UnknownOptionError, ValueError)


def test_a_model_name_that_is_not_a_string_is_refused_clearly():
    with pytest.raises(TypeError, match="model name None is not a string"):
        create_model(None)


@pytest.mark.parametrize("indices", [True, [0.5]])
def test_intermediate_indices_must_be_integers(indices):
    model, size = tiny("vir")
    with pytest.raises(ValueError, match="indices=.* is invalid"):
        model.forward_intermediates(torch.randn(1, 1, size, size), indices=indices)


# ------------------------------------------------------------------------------------------------
# The tool commands: one `error:` line and exit status 2, before anything runs or is written
# ------------------------------------------------------------------------------------------------


def run_tool(argv, capsys):
    from vir_lightning.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines


ONE_1D = ["--modes", "parallel", "--decay", "1d"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bench-retention", "--tokens", "0", *ONE_1D], "--tokens 0: expected a value >= 1"),
        (["bench-retention", "--tokens", "16", "--batch", "0", *ONE_1D], "--batch 0: expected a value >= 1"),
        (["bench-retention", "--tokens", "16", "--heads", "0", *ONE_1D], "--heads 0"),
        (["bench-retention", "--tokens", "16", "--head-dim", "0", *ONE_1D], "--head-dim 0"),
        (["bench-retention", "--tokens", "16", "--chunk-size", "0", *ONE_1D], "--chunk-size 0"),
        (["bench-retention", "--tokens", "15", "--decay", "2d"], "--decay 2d needs square token counts"),
        (["bench-retention", "--tokens", "16", "--threads", "0", *ONE_1D], "--threads 0: expected at least 1"),
        (["bench-retention", "--tokens", "16", "--repeats", "0", *ONE_1D], "--repeats 0"),
        (["bench-retention", "--tokens", "16", "--min-seconds", "-1", *ONE_1D], "--min-seconds -1.0"),
        (["bench-retention", "--tokens", "16", "--max-memory-gb", "0", *ONE_1D], "--max-memory-gb 0.0"),
        (["bench-retention", "--tokens", "16", "--csv", "{tmp}", *ONE_1D], "is a directory; give a file name"),
        (["bench-backbone", "--size", "0", "0"], "--size 0 0: expected values >= 1"),
        (["bench-backbone", "--size", "64", "64", "--batch", "0"], "--batch 0"),
        (["bench-backbone", "--size", "64", "64", "--directions", "3"], "--directions 3: expected 0"),
        (["bench-backbone", "--size", "64", "64", "--chunk-size", "0"], "--chunk-size 0"),
        (["bench-backbone", "--model", "vir_nano_patch16_224"], "is not an H-ViR backbone"),
        (["bench-backbone", "--model", "hvir_tni"], "unknown model 'hvir_tni'"),
        (
            ["bench", "--models", "vir_nano_patch16_224", "--resolutions", "32", "--model-kwargs", '{"bogus": 1}'],
            "--model-kwargs '{\"bogus\": 1}' for vir_nano_patch16_224: model 'vir_nano_patch16_224' has no option",
        ),
        (
            ["bench", "--models", "vir_nano_patch16_224", "--resolutions", "32", "--model-kwargs", '{"embed_dim": 0}'],
            "embed_dim=0 is invalid",
        ),
        (
            ["bench", "--models", "vir_nano_patch16_224", "--resolutions", "32", "--max-memory-gb", "-1"],
            "--max-memory-gb -1.0",
        ),
        (
            ["bench", "--models", "vir_nano_patch16_224", "--resolutions", "32", "--whole-image-max-resolution", "0"],
            "--whole-image-max-resolution 0",
        ),
        (["bench", "--models", "vir_nano_patch16_224", "--resolutions", "32", "--threads", "0"], "--threads 0"),
        (
            ["bench", "--models", "vir_nano_patch16_224", "--resolutions", "32", "--out", "{tmp}/file/x"],
            "is a file, not a folder",
        ),
    ],
)
def test_benchmark_bad_values_give_one_error_line_before_any_run(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, lines = run_tool(argv, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert capsys.readouterr().out == ""  # no table was started: nothing ran


def _spec(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return str(path)


BASE = "base: configs/quickstart.yaml\naxes: {trainer.max_epochs: [1]}\nmetrics: [test/acc1]\n"


@pytest.mark.parametrize(
    "text,args,message",
    [
        ("base: [\n", [], "is not valid YAML (while parsing"),
        (b"\xff\xfe\x00base", [], "is not a text (UTF-8) file"),
        ("name: ../../elsewhere\n" + BASE, [], "name='../../elsewhere' is invalid"),
        (BASE, ["--cpus-per-run", "0"], "--cpus-per-run 0.0: expected a positive number"),
        (BASE, ["--out", "{tmp}/file"], "is a file; give a folder"),
    ],
)
def test_grid_bad_specs_and_options_give_one_error_line(text, args, message, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    spec = _spec(tmp_path, text)
    code, lines = run_tool(["grid", spec, *[a.replace("{tmp}", str(tmp_path)) for a in args]], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "elsewhere").exists()


def test_grid_spec_that_is_a_folder_says_so(tmp_path, capsys):
    code, lines = run_tool(["grid", str(tmp_path)], capsys)
    assert code == 2 and lines == [f"error: grid spec {tmp_path} is a folder; give the spec's YAML file"]


def test_a_metric_added_to_the_spec_after_a_run_ended_is_read_or_the_run_is_failed(tmp_path):
    from vir_lightning.grid.execute import status_for_metrics

    (tmp_path / "metrics.json").write_text('{"test/acc1": 0.5, "val/acc1": 0.6}')
    run = {
        "run_dir": str(tmp_path),
        "steps": [{"run": "fit", "tag": None, "name": "fit"}],
        "metrics": ["test/acc1", "val/acc1"],
    }
    done = {"state": "done", "metrics": {"test/acc1": 0.5}}
    assert status_for_metrics(run, done)["metrics"] == {"test/acc1": 0.5, "val/acc1": 0.6}
    never_logged = status_for_metrics({**run, "metrics": ["test/acc1", "test/acc5"]}, done)
    assert never_logged["state"] == "failed" and "['test/acc5'] were not logged" in never_logged["reason"]
    assert status_for_metrics(run, None) is None
    assert status_for_metrics(run, {"state": "failed"}) == {"state": "failed"}


PREDICT = [
    "predict-large",
    "--config",
    "configs/quickstart.yaml",
    "--ckpt_path",
    "{tmp}/none.ckpt",
    "--images",
    "{tmp}/a.png",
    "--out",
    "{tmp}/out.csv",
]


@pytest.mark.parametrize(
    "replace,extra,message",
    [
        (("configs/quickstart.yaml", "{tmp}"), [], "is a folder; give the training config's YAML file"),
        (
            ("{tmp}/none.ckpt", "{tmp}"),
            [],
            "is a folder without config.json, so not a pretrained folder; give the .ckpt file",
        ),
        (("{tmp}/none.ckpt", "{tmp}/file"), [], "is not a PyTorch file (neither torch.save's zip nor a pickle)"),
        (("{tmp}/out.csv", "{tmp}/file/out.csv"), [], "--out"),
        (None, ["--features-dir", "{tmp}/file"], "--features-dir"),
    ],
)
def test_predict_large_bad_paths_give_one_error_line(replace, extra, message, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder, not a checkpoint")
    argv = [replace[1] if replace and a == replace[0] else a for a in PREDICT] + extra
    code, lines = run_tool([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "out.csv").exists()


def streaming_vir(decay):
    model = create_model("vir_nano_patch4_28", **TINY_VIR, decay=decay).eval()
    model.set_retention_mode("streaming", 2)
    return model


@pytest.mark.parametrize("decay", ["1d", "2d"])
@pytest.mark.parametrize(
    "grid_shape,batch,match",
    [
        ((0, 7), 2, r"grid_shape rows=0 is invalid; expected an integer >= 1"),
        (7, 2, r"grid_shape=7 is invalid; expected the image's patch grid \(rows, cols\)"),
        ((7, 7), 3, r"read_band\(0, 2\) returned 2 images; expected batch=3"),
        ((7, 7), -1, r"batch=-1 is invalid"),
    ],
)
def test_forward_streaming_checks_its_grid_and_batch(decay, grid_shape, batch, match):
    model = streaming_vir(decay)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        model.forward_streaming(lambda row0, row1: x[:, :, row0 * 4 : row1 * 4], grid_shape, batch)


@pytest.mark.parametrize("decay", ["1d", "2d"])
def test_streaming_forward_checks_the_images_like_the_other_forms(decay):
    model = streaming_vir(decay)
    with torch.no_grad(), pytest.raises(ValueError, match="dtype torch.uint8"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with torch.no_grad():
        assert model(torch.randn(0, 1, 28, 28)).shape == (0, 3)
