"""``export_onnx(model, path, form)``: a ViR or H-ViR as an ONNX graph, checked in ONNX Runtime.

The graph is made by ``torch.onnx.export(dynamo=True)``: torch.export traces the model with
symbolic shapes and onnxscript translates the result. The TorchScript exporter is not used: its
tracer turns every shape into a tensor, so the model's Python-level shape checks, decay tables and
chunk loops (plain integers in eager mode) fail or are traced wrongly, while torch.export keeps
them as integers and unrolls them for the traced size.

Everything a runtime needs besides the graph travels in the model's ``metadata_props`` under
``vir_lightning`` (JSON): the form, classes, normalisation, patch size, and for the streaming step
its band shape, state shape and trained grid. :func:`read_onnx_metadata` reads it back.
"""

from __future__ import annotations

import json
import os
import warnings

import torch
from torch import nn

from ..retention.forms import CHUNKWISE, PARALLEL
from .onnx_graphs import ONNX_FORMS, HybridFeatures, StreamingStep, WholeImage, exportable_forms, why_not

METADATA_KEY = "vir_lightning"
FORMAT = "vir_lightning-onnx"
FORMAT_VERSION = 1
STEP_INPUTS = ("pixels", "row_weights", "rows_before", "state", "feature_sum")
STEP_OUTPUTS = ("features", "state_out", "feature_sum_out", "logits")
#: fp32 parity the export is checked to (relative to the largest output magnitude).
PARITY_TOLERANCE = 1e-4


def check_form(model: nn.Module, form: str) -> None:
    """ValueError for an unknown form or one this model cannot export, naming the ones it can."""
    if form not in ONNX_FORMS:
        raise ValueError(f"--form {form!r} is unknown; expected one of {', '.join(ONNX_FORMS)}")
    reason = why_not(model, form)
    if reason:
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(
            f"{name} cannot be exported in the {form} form: {reason}; it exports {', '.join(exportable_forms(model))}"
        )


def export_onnx(
    model: nn.Module,
    path: str,
    form: str,
    *,
    img_size: tuple[int, int] | None = None,
    width: int | None = None,
    band_rows: int = 1,
    opset: int | None = None,
    class_names: list[str] | None = None,
    preprocessing: dict | None = None,
    overwrite: bool = False,
    run: str | None = None,
) -> dict:
    """Export ``model`` (eval, fp32, CPU) to ``path`` and check the graph in ONNX Runtime.

    Args:
        model: a ViR or H-ViR built by :func:`vir_lightning.create_model` (e.g. from a pretrained folder).
        path: the ``.onnx`` file (written beside its place and renamed: nothing half-written).
        form: ``"parallel"`` or ``"chunkwise"`` (the whole image: ``images`` → ``logits``, and for an
            H-ViR also ``stage1`` … ``stage4``), or ``"streaming-step"`` (see :class:`StreamingStep`).
        img_size: whole-image forms: (height, width) the graph takes (default: the model's). Other
            sizes are refused by the runtime, which names this one.
        width: streaming step: image width in pixels (default: the model's); a multiple of the patch.
        band_rows: streaming step: patch rows per band (an image's height in patch rows must be a
            multiple; 1, the default, takes any height).
        opset: ONNX opset (default: the exporter's).
        class_names, preprocessing: recorded in the metadata for the runtime side.
        overwrite, run: as for :func:`vir_lightning.io.atomic_output`.

    Returns:
        The metadata written, plus ``max_relative_difference`` (ONNX Runtime vs torch on a random batch).
    """
    import onnx

    from ..checks import check_int, to_2tuple
    from ..io import atomic_output, check_output_path

    check_output_path(path, "export-onnx output", overwrite=overwrite, run=run)
    check_form(model, form)
    if opset is not None:
        check_int("--opset", opset, 7)
        newest = onnx.defs.onnx_opset_version()
        if opset > newest:
            raise ValueError(
                f"--opset {opset}: the installed onnx knows opsets up to {newest}; give at most {newest}"
                " or leave --opset out"
            )
    model = model.eval().requires_grad_(False).float().to("cpu")
    model.set_retention_mode(CHUNKWISE if form != PARALLEL else PARALLEL)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "form": form,
        "model_name": getattr(model, "model_name", type(model).__name__),
        "num_classes": int(model.num_classes),
        "in_chans": int(model.in_chans),
        "class_names": [str(c) for c in class_names] if class_names else None,
        "preprocessing": preprocessing or None,
    }
    generator = torch.Generator().manual_seed(0)
    if form == "streaming-step":
        ph, pw = model.patch_size
        width = model.img_size[1] if width is None else check_int("--width", width)
        band_rows = check_int("--band-rows", band_rows)
        if width % pw:
            raise ValueError(
                f"--width {width} is not a multiple of the patch width {pw}; give the image width"
                " after cropping or padding to whole patches"
            )
        grid_cols = width // pw
        module = StreamingStep(model, grid_cols, band_rows)
        example = _step_example(module, 2, generator)
        batch = torch.export.Dim("batch")
        dynamic = {
            "pixels": {0: batch},
            "row_weights": None,
            "rows_before": None,
            "state": {1: batch},
            "feature_sum": {0: batch},
        }
        names = (list(STEP_INPUTS), list(STEP_OUTPUTS))
        meta.update(
            patch_size=[ph, pw],
            width=width,
            grid_cols=grid_cols,
            band_rows=band_rows,
            trained_grid=list(model.grid_shape),
            dim=int(model.embed_dim),
            pooling=model.pooling,
            decay=model.decay,
            state_shape=list(module.state_shape(1)),
        )  # batch: dimension 1
    else:
        height, width_px = to_2tuple(img_size if img_size is not None else model.img_size, "--img-size")
        patch = tuple(getattr(model, "patch_size", (1, 1)))  # H-ViR's convolutions take any size
        for side, px, unit in ((0, height, "height"), (1, width_px, "width")):
            if check_int(f"--img-size {unit}", px) % patch[side]:
                raise ValueError(
                    f"--img-size {unit} {px} is not a multiple of {patch[side]} (the patch of this model);"
                    f" give e.g. {max(patch[side], px // patch[side] * patch[side])}"
                )
        if hasattr(model, "dynamic_img_size"):
            model.dynamic_img_size = (height, width_px) != tuple(model.img_size)  # resized once, at trace time
        module = HybridFeatures(model) if hasattr(model, "stages") else WholeImage(model)
        example = (torch.randn(2, model.in_chans, height, width_px, generator=generator),)
        dynamic = {"images": {0: torch.export.Dim("batch")}}
        stages = ["stage1", "stage2", "stage3", "stage4"] if isinstance(module, HybridFeatures) else []
        names = (["images"], ["logits", *stages])
        meta.update(image_size=[height, width_px])
        if hasattr(model, "patch_size"):
            meta.update(patch_size=list(model.patch_size))
    meta.update(inputs=names[0], outputs=names[1])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals, not the user's model
        expected = module(*example)  # the model's own errors first, as one line
        try:
            program = torch.onnx.export(
                module,
                example,
                None,
                input_names=names[0],
                output_names=names[1],
                dynamo=True,
                dynamic_shapes=dynamic,
                opset_version=opset,
                verbose=False,
                optimize=False,
            )
        except Exception as err:  # the exporter wraps every cause in pages of its own report
            raise ValueError(
                f"torch.onnx.export failed for {meta['model_name']} ({meta['form']}):"
                f" {_summary(err)}; please report this with the model's options"
            ) from None
        simplify(program.model)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ValueError(
            f"the exported graph fails onnx.checker ({' '.join(str(err).split())[:200]});"
            f"{' try the default --opset;' if opset else ''} nothing was written"
        ) from None
    with atomic_output(path, overwrite=overwrite, run=run) as tmp:
        onnx.save_model(proto, tmp)
    difference = max_relative_difference(path, dict(zip(names[0], example, strict=True)), expected)
    if difference > PARITY_TOLERANCE:  # the file stays for inspection, but nobody should deploy it unawares
        raise ValueError(
            f"wrote {path}, but ONNX Runtime differs from torch by {difference:.2e} (relative) on a test"
            f" batch, more than {PARITY_TOLERANCE:g}: please report this with the model's options"
        )
    return {**meta, "max_relative_difference": difference}


def _summary(err: Exception) -> str:
    """The first line of an exporter error that says what went wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for marker in ("Exception summary", "Error:", "error"):
        for i, line in enumerate(lines):
            if marker in line:
                return " ".join(
                    lines[i + 1 : i + 2] if marker == "Exception summary" and i + 1 < len(lines) else [line]
                )[:300]
    return (lines[0] if lines else type(err).__name__)[:300]


def simplify(model) -> None:
    """Fold constants, drop unused nodes, deduplicate initializers and common subexpressions (in place).

    onnxscript's default optimisation adds pattern-rewrite rules on top of this; its matcher is
    quadratic in the graph and took three quarters of the export time (7 of 9 minutes for ViR-S at
    1024², whose chunkwise loops are unrolled), while ONNX Runtime applies its own fusions when it
    loads the graph anyway.
    """
    import onnx_ir as ir
    from onnx_ir.passes import common as common_passes
    from onnxscript.optimizer import _constant_folding

    ir.passes.Sequential(
        common_passes.InlinePass(),
        _constant_folding.FoldConstantsPass(shape_inference=True, input_size_limit=8192, output_size_limit=262144),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.RemoveUnusedFunctionsPass(),
        common_passes.RemoveUnusedOpsetsPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )(model)


def _step_example(step: StreamingStep, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A band of random pixels at row 1 of the trained grid, with random incoming states."""
    model = step.model
    ph, pw = model.patch_size
    pixels = torch.randn(batch, model.in_chans, step.band_rows * ph, step.grid_cols * pw, generator=generator)
    trained_rows = model.grid_shape[0]
    rows = min(step.band_rows, trained_rows)
    row_weights = torch.zeros(step.band_rows, trained_rows)
    row_weights[torch.arange(rows), torch.arange(rows)] = 1.0
    state = torch.randn(step.state_shape(batch), generator=generator) * 0.1
    feature_sum = torch.randn(batch, model.embed_dim, generator=generator)
    return pixels, row_weights, torch.tensor(1.0), state, feature_sum


def max_relative_difference(path: str, feeds: dict[str, torch.Tensor], expected) -> float:
    """The largest |ONNX Runtime − torch| over all outputs, relative to each output's largest |torch| value."""
    session = onnx_session(path)
    wanted = {i.name for i in session.get_inputs()}
    outputs = session.run(None, {k: v.numpy() for k, v in feeds.items() if k in wanted})
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    worst = 0.0
    for got, want in zip(outputs, expected, strict=True):
        want = want.numpy()
        scale = max(float(abs(want).max()), 1e-12) if want.size else 1.0
        worst = max(worst, float(abs(got - want).max()) / scale if want.size else 0.0)
    return worst


def onnx_session(path: str, threads: int | None = None):
    """An ONNX Runtime CPU session of ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initializers are the exporter's, not the user's
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def read_onnx_metadata(path: str) -> dict:
    """The ``vir_lightning`` metadata of an exported graph; ValueError for a file that is not one of ours."""
    import onnx

    if os.path.isdir(path):
        raise ValueError(f"--onnx {path!r} is a folder; give the .onnx file written by export-onnx")
    if not os.path.isfile(path):
        raise ValueError(f"--onnx {path!r} does not exist; write one with `python -m vir_lightning export-onnx`")
    try:
        proto = onnx.load_model(path, load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for a file of another format
        raise ValueError(
            f"--onnx {path!r} is not an ONNX model ({type(err).__name__}); give a file written by export-onnx"
        ) from None
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        meta = json.loads(props[METADATA_KEY])
    except (KeyError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(
            f"--onnx {path!r} was not written by vir_lightning export-onnx (no {METADATA_KEY} metadata);"
            " export the model with `python -m vir_lightning export-onnx CKPT OUT.onnx`"
        )
    inputs = [i.name for i in proto.graph.input]
    declared = [name for name in meta.get("inputs", []) if name in inputs]
    if not declared or any(name not in meta.get("inputs", []) for name in inputs):
        raise ValueError(
            f"--onnx {path!r} has inputs {inputs}, not those its metadata declares ({meta.get('inputs')});"
            " the file was changed after export: export it again"
        )
    if meta.get("preprocessing") is not None:
        from .pretrained import check_preprocessing

        check_preprocessing(meta["preprocessing"], f"--onnx {path!r}")
    return meta
