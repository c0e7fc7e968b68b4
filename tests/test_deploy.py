"""Models that leave the project: pretrained folders (safetensors), ONNX graphs checked in ONNX
Runtime against torch, and predict-large streaming through ONNX Runtime."""

from __future__ import annotations

import csv
import json
import os
import re
import stat

import numpy as np
import pytest
import torch

from vir_lightning import create_model, from_pretrained, save_pretrained
from vir_lightning.cli import main as cli_main
from vir_lightning.data.mosaic import write_mosaic

pytest.importorskip("onnxruntime")

CLASS_NAMES = ["w", "x", "y", "z"]
SMALL = {"depth": 2, "layer_scale_init": 0.5}  # a 2-block nano: each export traces in seconds
PREPROCESSING = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def small_model(name="vir_nano_patch16_224", seed=0, **options):
    torch.manual_seed(seed)
    return create_model(name, num_classes=4, img_size=64, **{**(SMALL if name.startswith("vir") else {}), **options})


def write_checkpoint(path, **model_kwargs):
    """A training checkpoint as fit writes it (weights, hyper-parameters, preprocessing record)."""
    from vir_lightning.tasks import ImageClassifier

    torch.manual_seed(0)
    module = ImageClassifier(
        model_name="vir_nano_patch16_224",
        model_kwargs={**SMALL, **model_kwargs},
        num_classes=4,
        img_size=64,
        class_names=CLASS_NAMES,
    )
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "preprocessing": PREPROCESSING},
        path,
    )
    return module.model.eval()


def one_error(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def relative(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


# ----------------------------------------------------------------------------------------------
# Pretrained folders
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options",
    [
        ("vir_nano_patch16_224", {"decay": "1d"}),
        ("vir_nano_patch16_224", {"decay": "2d", "pooling": "avg"}),
        ("hvir_nano", {}),
    ],
)
def test_a_pretrained_folder_round_trip_is_bit_exact_and_holds_no_pickle(tmp_path, name, options):
    model = small_model(name, **options).eval()
    save_pretrained(model, str(tmp_path / "m"), class_names=CLASS_NAMES, preprocessing=PREPROCESSING)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        ".written-by-vir_lightning",
        "config.json",
        "model.safetensors",
    ]
    loaded = from_pretrained(str(tmp_path / "m"))
    assert type(loaded) is type(model) and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    assert loaded.pretrained_config["class_names"] == CLASS_NAMES
    assert loaded.pretrained_config["preprocessing"] == PREPROCESSING
    assert stat.S_IMODE(os.stat(tmp_path / "m" / "model.safetensors").st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_export_model_writes_a_folder_that_predict_large_and_pretrained_read(tmp_path, capsys):
    reference = write_checkpoint(tmp_path / "m.ckpt", decay="2d")
    assert cli_main(["export-model", str(tmp_path / "m.ckpt"), str(tmp_path / "folder")]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = from_pretrained(str(tmp_path / "folder"))
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    from vir_lightning.tasks import ImageClassifier

    fine_tune = ImageClassifier(
        model_name="vir_nano_patch16_224",
        model_kwargs={**SMALL, "decay": "2d"},
        num_classes=4,
        img_size=96,
        pretrained=str(tmp_path / "folder"),
    )
    assert torch.equal(fine_tune.model.blocks[1].mlp.fc1.weight, reference.blocks[1].mlp.fc1.weight)

    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((160, 224, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    rows = {}
    for name, weights in (
        ("ckpt", ["--ckpt_path", str(tmp_path / "m.ckpt")]),
        ("folder", ["--ckpt_path", str(tmp_path / "folder")]),
    ):  # no --config: the folder has it
        out = tmp_path / f"{name}.csv"
        assert cli_main(["predict-large", *weights, "--images", str(tmp_path / "a.png"), "--out", str(out)]) == 0
        (rows[name],) = list(csv.DictReader(out.open()))
    keys = [f"{what}_{i}" for i in range(1, 5) for what in ("class", "prob")]
    assert [rows["ckpt"][k] for k in keys] == [rows["folder"][k] for k in keys]


def test_export_model_refuses_to_replace_a_folder_it_did_not_write(tmp_path, capsys):
    write_checkpoint(tmp_path / "m.ckpt")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert cli_main(["export-model", str(tmp_path / "m.ckpt"), str(tmp_path / "mine")]) == 2
    assert "not one this command wrote" in one_error(capsys)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def _break(folder, how: str) -> None:
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    if how == "no config":
        (folder / "config.json").unlink()
    elif how == "foreign config":
        (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    elif how == "missing tensor":
        state = load_file(weights)
        del state["norm.weight"]
        save_file(state, weights)
    elif how == "wrong shape":
        state = load_file(weights)
        state["head.weight"] = torch.zeros(7, state["head.weight"].shape[1])
        save_file(state, weights)
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "config of another model":
        config = json.loads((folder / "config.json").read_text())
        config["model_options"]["depth"] = 3
        (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "how,match",
    [
        ("no config", "is a folder without config.json"),
        ("foreign config", "is not a vir_lightning config"),
        ("missing tensor", "missing 1 keys (first: ['norm.weight'])"),
        ("wrong shape", "shape mismatch head.weight: (7, 96) vs (4, 96)"),
        ("truncated", "is not a readable safetensors file"),
        ("config of another model", "keys (first: ['blocks.2."),
    ],
)
def test_a_broken_pretrained_folder_gets_one_error_line(tmp_path, capsys, how, match):
    save_pretrained(small_model(), str(tmp_path / "m"), preprocessing=PREPROCESSING)
    _break(tmp_path / "m", how)
    with pytest.raises(ValueError, match=re.escape(match)):
        from_pretrained(str(tmp_path / "m"))
    out = tmp_path / "p.csv"
    assert (
        cli_main(
            [
                "predict-large",
                "--ckpt_path",
                str(tmp_path / "m"),
                "--images",
                str(tmp_path / "none.png"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert match in one_error(capsys)
    assert not out.exists()


def test_export_backbone_writes_safetensors_that_the_mm_backbone_loads(tmp_path):
    from safetensors import safe_open

    from vir_lightning.deploy.checkpoints import exported_meta, read_state_dict
    from vir_lightning.tasks import ImageClassifier

    torch.manual_seed(0)
    module = ImageClassifier(model_name="hvir_nano", num_classes=4, img_size=64)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "h.ckpt")
    assert cli_main(["export-backbone", str(tmp_path / "h.ckpt"), str(tmp_path / "h.safetensors")]) == 0
    with safe_open(str(tmp_path / "h.safetensors"), "pt") as f:  # raw tensors: no pickle anywhere
        assert "stem.0.weight" in f.keys()
    state = read_state_dict(str(tmp_path / "h.safetensors"))
    assert not any(k.startswith("head.") for k in state)
    assert torch.equal(state["stem.0.weight"], module.model.stem[0].weight)
    assert exported_meta(str(tmp_path / "h.safetensors"))["model_name"] == "hvir_nano"
    try:
        from downstream.hvir_backbone import HViRBackbone
    except ImportError:
        pytest.skip("the OpenMMLab tier is not installed (make mm): the mm backbone itself is not tried")
    backbone = HViRBackbone(arch="nano", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "h.safetensors")))
    backbone.init_weights()
    assert torch.equal(backbone.model.stem[0].weight, module.model.stem[0].weight)


# ----------------------------------------------------------------------------------------------
# ONNX: whole image
# ----------------------------------------------------------------------------------------------


def export(model, path, form, **kwargs) -> dict:
    from vir_lightning.deploy.onnx_export import export_onnx

    return export_onnx(model, str(path), form, **kwargs)


def run_onnx(path, **feeds):
    from vir_lightning.deploy.onnx_export import onnx_session

    session = onnx_session(str(path))
    wanted = {i.name for i in session.get_inputs()}
    return session.run(
        None, {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in feeds.items() if k in wanted}
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "options,form,size",
    [
        ({"decay": "1d"}, "parallel", None),  # class token last, the training size
        ({"decay": "1d"}, "chunkwise", (96, 128)),  # another size: position embedding resized at export
        ({"decay": "2d", "pooling": "avg"}, "chunkwise", None),
        ({"decay": "2d"}, "parallel", (80, 64)),  # 2D class token, another size
    ],
)
def test_whole_image_graphs_give_the_torch_logits_and_name_their_size(tmp_path, options, form, size):
    import onnxruntime

    model = small_model(**options).eval()
    meta = export(model, tmp_path / "m.onnx", form, img_size=size)
    height, width = size or (64, 64)
    assert meta["image_size"] == [height, width] and meta["max_relative_difference"] <= 1e-4
    images = torch.randn(3, 3, height, width)  # a batch the export never saw
    model.dynamic_img_size = True
    with torch.no_grad():
        expected = model(images)
    (logits,) = run_onnx(tmp_path / "m.onnx", images=images)
    assert relative(logits, expected) <= 1e-4
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument, match=f"Expected: {height}"):
        run_onnx(tmp_path / "m.onnx", images=torch.randn(1, 3, height + 16, width))


@pytest.mark.slow
def test_hvir_stage_maps_export_at_two_sizes(tmp_path):
    model = small_model("hvir_nano").eval()
    for size in ((64, 64), (96, 128)):
        meta = export(model, tmp_path / f"h{size[0]}.onnx", "chunkwise", img_size=size)
        assert meta["outputs"] == ["logits", "stage1", "stage2", "stage3", "stage4"]
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            final, stages = model.forward_intermediates(images)
            expected = [model.forward_head(final), *stages]
        got = run_onnx(tmp_path / f"h{size[0]}.onnx", images=images)
        assert [g.shape for g in got] == [tuple(e.shape) for e in expected]
        for g, e in zip(got, expected, strict=True):
            assert relative(g, e) <= 1e-4


# ----------------------------------------------------------------------------------------------
# ONNX: the streaming step
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("options,band_rows", [({"decay": "1d", "pooling": "avg"}, 1), ({"decay": "1d"}, 2)])
def test_the_streaming_step_streams_an_image_of_another_height_as_torch_does(tmp_path, options, band_rows):
    from vir_lightning.deploy.onnx_streaming import OnnxStreamingModel

    model = small_model(**options).eval()
    export(model, tmp_path / "s.onnx", "streaming-step", width=80, band_rows=band_rows)
    images = torch.randn(2, 3, 6 * 16, 80)  # 6×5 patches: neither the trained height nor width
    model.set_retention_mode("chunkwise")
    model.dynamic_img_size = True
    with torch.no_grad():
        expected = model(images)
        tokens = model.forward_features(images)[:, : 6 * 5]
    runner = OnnxStreamingModel(str(tmp_path / "s.onnx"))
    bands = {}
    logits = runner.forward_streaming(
        lambda r0, r1: images[:, :, r0 * 16 : r1 * 16],
        (6, 5),
        2,
        on_features=lambda row0, f: bands.__setitem__(row0, f),
    )
    assert relative(logits, expected) <= 1e-4
    features = torch.cat([bands[r] for r in sorted(bands)], dim=1).flatten(1, 2)
    assert relative(features, tokens) <= 1e-4
    with pytest.raises(ValueError, match="export the step for this width"):
        runner.check_grid((6, 4))


@pytest.fixture(scope="module")
def step_graph(tmp_path_factory):
    """A 2D-decay ViR (class token last): checkpoint, its step graph for 768 px, and a 512×768 mosaic."""
    folder = tmp_path_factory.mktemp("step")
    write_checkpoint(folder / "m.ckpt", decay="2d")
    write_mosaic(str(folder / "mosaic.tif"), 512, 768, levels=1, tile=256)
    assert (
        cli_main(
            [
                "export-onnx",
                str(folder / "m.ckpt"),
                str(folder / "step.onnx"),
                "--form",
                "streaming-step",
                "--width",
                "768",
            ]
        )
        == 0
    )
    return folder


@pytest.mark.slow
def test_predict_large_in_onnx_runtime_equals_the_torch_run(step_graph, tmp_path):
    rows, features = {}, {}
    for runtime, weights in (
        ("torch", ["--ckpt_path", str(step_graph / "m.ckpt")]),
        ("onnxruntime", ["--runtime", "onnxruntime", "--onnx", str(step_graph / "step.onnx")]),
    ):
        out = tmp_path / f"{runtime}.csv"
        argv = [
            "predict-large",
            *weights,
            "--images",
            str(step_graph / "mosaic.tif"),
            "--out",
            str(out),
            "--features-dir",
            str(tmp_path / runtime),
        ]
        assert cli_main(argv) == 0
        (rows[runtime],) = list(csv.DictReader(out.open()))
        features[runtime] = np.load(tmp_path / runtime / "mosaic.npy").astype(np.float32)
    classes = {runtime: [row[f"class_{i}"] for i in range(1, 5)] for runtime, row in rows.items()}
    assert classes["torch"] == classes["onnxruntime"]
    for i in range(1, 5):
        assert float(rows["torch"][f"prob_{i}"]) == pytest.approx(float(rows["onnxruntime"][f"prob_{i}"]), abs=2e-6)
    assert features["torch"].shape == (32, 48, 96)
    assert relative(features["onnxruntime"], features["torch"]) <= 2e-3  # float16 storage


@pytest.mark.slow
def test_predict_large_refuses_graphs_it_cannot_stream_with(step_graph, tmp_path, capsys):
    import onnx
    from PIL import Image

    Image.fromarray(np.zeros((64, 640, 3), np.uint8)).save(tmp_path / "narrow.png")
    out = tmp_path / "p.csv"
    argv = ["predict-large", "--runtime", "onnxruntime", "--images", str(tmp_path / "narrow.png"), "--out", str(out)]
    assert cli_main([*argv, "--onnx", str(step_graph / "step.onnx")]) == 1
    assert "export the step for this width with `export-onnx ... --form streaming-step --width 640`" in (
        one_error(capsys)
    )
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["pixels"], ["logits"])],
        "foreign",
        [onnx.helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "foreign.onnx")
    (tmp_path / "text.onnx").write_text("not a graph")
    for path, match in (
        (tmp_path / "foreign.onnx", "was not written by vir_lightning export-onnx"),
        (tmp_path / "text.onnx", "is not an ONNX model"),
    ):
        assert cli_main([*argv, "--onnx", str(path)]) == 2
        assert match in one_error(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# export-onnx: bad input
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from vir_lightning.tasks import ImageClassifier

    folder = tmp_path_factory.mktemp("ckpts")
    write_checkpoint(folder / "vir.ckpt")
    write_checkpoint(folder / "multipass.ckpt", multipass=True)
    torch.manual_seed(0)
    module = ImageClassifier(model_name="hvir_nano", num_classes=4, img_size=64)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, folder / "hvir.ckpt")
    return folder


@pytest.mark.parametrize(
    "source,extra,match",
    [
        ("vir.ckpt", ["--form", "recurrent"], "--form 'recurrent' is unknown; expected one of parallel, chunkwise,"),
        ("hvir.ckpt", ["--form", "streaming-step"], "it exports parallel, chunkwise"),
        ("multipass.ckpt", ["--form", "streaming-step"], "multipass replays the whole sequence"),
        (
            "vir.ckpt",
            ["--form", "streaming-step", "--width", "70"],
            "--width 70 is not a multiple of the patch width 16",
        ),
        ("vir.ckpt", ["--form", "parallel", "--width", "64"], "--width and --band-rows shape the streaming step"),
        ("vir.ckpt", ["--form", "parallel", "--opset", "3"], "--opset=3 is invalid"),
        ("missing.ckpt", ["--form", "parallel"], "does not exist"),
    ],
)
def test_export_onnx_bad_options_get_one_error_line_and_write_nothing(
    checkpoints, tmp_path, capsys, source, extra, match
):
    out = tmp_path / "m.onnx"
    assert cli_main(["export-onnx", str(checkpoints / source), str(out), *extra]) == 2
    assert match in one_error(capsys)
    assert not out.exists() and not list(tmp_path.glob(".partial-*"))


@pytest.mark.parametrize("where", ["folder", "below a file", "read-only"])
def test_export_onnx_refuses_an_output_it_cannot_write_before_tracing(checkpoints, tmp_path, capsys, where):
    (tmp_path / "file").write_text("x")
    out = {"folder": tmp_path, "below a file": tmp_path / "file" / "m.onnx", "read-only": tmp_path / "file"}[where]
    if where == "read-only":
        os.chmod(out, 0o444)
    assert (
        cli_main(
            [
                "export-onnx",
                str(checkpoints / "vir.ckpt"),
                str(out),
                "--form",
                "parallel",
                *(["--overwrite"] if where == "read-only" else []),
            ]
        )
        == 2
    )
    assert {"folder": "is a directory", "below a file": "is a file, so the folder", "read-only": "is read-only"}[
        where
    ] in one_error(capsys)
    assert (tmp_path / "file").read_text() == "x"


# ----------------------------------------------------------------------------------------------
# The new-user sweep: each case that failed the standard, pinned
# ----------------------------------------------------------------------------------------------


def test_export_model_never_replaces_a_folder_holding_its_checkpoint_or_other_files(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    write_checkpoint(tmp_path / "m" / "m.ckpt")
    assert cli_main(["export-model", str(tmp_path / "m" / "m.ckpt"), str(tmp_path / "m")]) == 2
    assert "holds this command's own input" in one_error(capsys)
    assert (tmp_path / "m" / "m.ckpt").exists()
    assert cli_main(["export-model", str(tmp_path / "m" / "m.ckpt"), str(tmp_path / "out")]) == 0
    (tmp_path / "out" / "MODEL_CARD.md").write_text("mine")
    assert cli_main(["export-model", str(tmp_path / "m" / "m.ckpt"), str(tmp_path / "out")]) == 2
    assert "also holds MODEL_CARD.md" in one_error(capsys)
    assert (tmp_path / "out" / "MODEL_CARD.md").read_text() == "mine"


def test_saving_a_loaded_model_again_keeps_its_classes_and_normalisation(tmp_path):
    save_pretrained(small_model(), str(tmp_path / "a"), class_names=CLASS_NAMES, preprocessing=PREPROCESSING)
    save_pretrained(from_pretrained(str(tmp_path / "a")), str(tmp_path / "b"))
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["class_names"] == CLASS_NAMES and config["preprocessing"] == PREPROCESSING


@pytest.mark.parametrize("preprocessing", [{"mean": [0.5] * 3, "std": [0.0] * 3}, {"mean": "x", "std": [1.0]}])
def test_a_normalisation_that_cannot_be_right_is_refused_not_turned_into_nan(tmp_path, preprocessing):
    save_pretrained(small_model(), str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "preprocessing": preprocessing}))
    with pytest.raises(ValueError, match="the normalisation .* is invalid"):
        from_pretrained(str(tmp_path / "m"))


def test_from_pretrained_refuses_options_that_the_weights_fix(tmp_path):
    save_pretrained(small_model(), str(tmp_path / "m"))
    with pytest.raises(ValueError, match="the weights fix num_classes"):
        from_pretrained(str(tmp_path / "m"), num_classes=10)
    assert from_pretrained(str(tmp_path / "m"), retention_mode="chunkwise").retention_mode == "chunkwise"


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--img-size", "70"], "--img-size height 70 is not a multiple of 16"),
        (["--img-size", "8"], "--img-size height 8 is not a multiple of 16"),
        (["--opset", "99"], "--opset 99: the installed onnx knows opsets up to"),
    ],
)
def test_export_onnx_sizes_and_opsets_it_cannot_trace_get_one_line(checkpoints, tmp_path, capsys, extra, match):
    assert (
        cli_main(["export-onnx", str(checkpoints / "vir.ckpt"), str(tmp_path / "m.onnx"), "--form", "parallel", *extra])
        == 2
    )
    assert match in one_error(capsys)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_predict_and_validate_refuse_a_pretrained_folder_of_another_model(tmp_path):
    from test_classification import QUICKSTART, TINY_MODEL, run_cli

    tiny = {"embed_dim": 32, "depth": 2, "num_heads": 2}
    for name, options in (("same", {}), ("other", {"decay": "2d"})):
        model = create_model("vir_nano_patch4_28", num_classes=10, img_size=28, in_chans=1, **tiny, **options)
        save_pretrained(model, str(tmp_path / name))
    proc = run_cli(
        "predict",
        "--config",
        QUICKSTART,
        *TINY_MODEL,
        f"--model.init_args.pretrained={tmp_path / 'other'}",
        f"--predictions_csv={tmp_path / 'p.csv'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "holds another model: model_kwargs is" in proc.stderr
    assert not (tmp_path / "p.csv").exists()
    proc = run_cli(
        "validate",
        "--config",
        QUICKSTART,
        *TINY_MODEL,
        f"--model.init_args.pretrained={tmp_path / 'same'}",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "val/acc1" in proc.stdout
