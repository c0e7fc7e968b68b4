"""Images/s and peak memory of whole models: models × retention modes × resolutions × batch sizes,
for inference and for a training step, with the ViT baseline (same blocks, SDPA attention) alongside.

    python -m vir_lightning bench [--models vir_small_patch16_224 vit_small_patch16_224]
        [--resolutions 224 512 1024 2048] [--batch-sizes 2] [--modes parallel chunkwise auto]
        [--tasks inference train] [--out runs/bench]

``streaming`` (inference) pushes bands of ``--band-rows`` patch rows through every block; its
memory does not grow with the image height, so it alone runs above ``--whole-image-max-resolution``.

Every configuration runs in its own process (peak memory is its own; see :mod:`.measure`): one
warm-up call, which also counts FLOPs (``torch.utils.flop_counter``) and peak memory, then timed
calls (median, min–max). On CUDA, CUDA events with synchronisation and ``max_memory_allocated``.
Configurations predicted not to fit are skipped with a message; one that runs out of memory is
recorded as OOM. Writes ``results.csv``, ``results.md`` and PNG plots (images/s and peak memory
against resolution, one line per model and mode) to ``--out``, each recording the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from ..io import atomic_output, check_output_path
from ..retention.forms import AUTO, CHUNKWISE, MODEL_FORMS, PARALLEL, STREAMING
from .measure import (
    add_measure_args,
    check_measure_args,
    check_output_folder,
    check_positive,
    measure,
    measure_cuda,
    run_isolated,
    write_results_csv,
)

MODULE = "vir_lightning.benchmarks.throughput"
RETENTION_MODES = MODEL_FORMS
ATTENTION_MODE = "sdpa"  # the label of the ViT baseline's single form


# ----------------------------------------------------------------------------------------------
# One configuration, in its own process
# ----------------------------------------------------------------------------------------------


def _register_cpu_sdpa_flops() -> None:
    """torch's flop counter knows the CUDA SDPA kernels but not the CPU flash kernel; count it the
    same way (4·N²·d per head forward, the matching backward formula), or the ViT would show ~0."""
    import torch
    from torch.utils import flop_counter

    aten = torch.ops.aten
    forward_op = aten._scaled_dot_product_flash_attention_for_cpu
    if forward_op in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(forward_op)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _worker(cfg: dict) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import create_model

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    res, batch = cfg["resolution"], cfg["batch"]
    model = create_model(cfg["model"], img_size=res, **json.loads(cfg.get("model_kwargs") or "{}")).to(device)
    if cfg["mode"] != ATTENTION_MODE:
        model.set_retention_mode(cfg["mode"], cfg["chunk_size"])
    if cfg.get("grad_checkpointing"):
        model.set_grad_checkpointing(True)
    forward = model
    if cfg.get("compile"):
        forward = torch.compile(model, fullgraph=True)
    images = torch.randn(batch, 3, res, res, device=device)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=getattr(torch, cfg["dtype"])))
        if cfg["dtype"] != "float32" else contextlib.nullcontext
    )
    if cfg["task"] == "inference":
        model.eval()

        def call():
            with torch.inference_mode(), autocast():
                return forward(images)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        targets = torch.randint(0, 1000, (batch,), device=device)

        def call():
            with autocast():
                loss = torch.nn.functional.cross_entropy(forward(images), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

    _register_cpu_sdpa_flops()
    counter = FlopCounterMode(display=False)  # wraps the warm-up call only (see measure)
    if cfg.get("compile"):  # FLOPs from one eager pass (compiled kernels are not aten ops); compile untimed
        inference = cfg["task"] == "inference"
        with counter, torch.no_grad() if inference else contextlib.nullcontext():
            out = model(images)
            if not inference:
                out.sum().backward()
        model.zero_grad(set_to_none=True)
        call()
        counter_context = contextlib.nullcontext
    else:
        counter_context = lambda: counter  # noqa: E731
    try:
        if device.type == "cuda":
            _, stats = measure_cuda(call, cfg["repeats"], cfg["min_seconds"], counter_context)
        else:
            _, stats = measure(call, cfg["repeats"], cfg["min_seconds"], counter_context, cfg["allocator"])
    except (torch.OutOfMemoryError, RuntimeError) as err:  # CPU allocators raise RuntimeError
        if "out of memory" in str(err).lower() or "can't allocate memory" in str(err).lower():
            return {"error": "OOM"}
        raise
    flops = counter.get_total_flops()
    return {
        **stats,
        "images_per_s": batch / (stats["time_ms"] / 1e3),
        "gflop": flops / 1e9,
        "achieved_gflops": flops / 1e9 / (stats["time_ms"] / 1e3),
        "tokens": max(_tokens(model, res), default=0),
    }


# ----------------------------------------------------------------------------------------------
# Planning: which configurations, and which ones cannot fit
# ----------------------------------------------------------------------------------------------


def _mixer_layers(model) -> list[tuple[int, int]]:
    """(heads, stride in pixels) of every token mixer: the patch size for isotropic models, the
    stage's reduction for hierarchical ones."""
    from ..models import MultiHeadAttention, MultiHeadRetention

    mixers = (MultiHeadAttention, MultiHeadRetention)
    if hasattr(model, "patch_embed"):
        stride = model.patch_embed.patch_size[0]
        return [(m.num_heads, stride) for m in model.modules() if isinstance(m, mixers)]
    return [
        (m.num_heads, info["reduction"])
        for stage, info in zip(model.stages, model.feature_info, strict=True)
        for m in stage.modules()
        if isinstance(m, mixers)
    ]


def _tokens(model, res: int) -> list[int]:
    extra = int(getattr(model, "has_class_token", False))
    return [math.ceil(res / stride) ** 2 + extra for _, stride in _mixer_layers(model)]


def _predicted_gb(model, cfg: dict) -> float:
    """A rough upper bound of the working memory in GB, enough to skip what cannot fit: the N×N
    tables of parallel retention dominate at high resolution; everything else is linear in N."""
    from ..models.streaming import default_band_rows

    batch, res = cfg["batch"], cfg["resolution"]
    width = getattr(model, "num_features", 768)
    per_layer = []
    inputs = batch * 3 * res * res  # the image tensor itself
    for (heads, stride), tokens in zip(_mixer_layers(model), _tokens(model, res), strict=True):
        if cfg["mode"] == STREAMING:  # one band of whole rows at a time
            cols = math.ceil(res / stride)
            tokens = cols * (cfg["chunk_size"] or default_band_rows(cols))
        # parallel: the scores per image, the decay table and its temporaries (ViR-S at 1024²
        # measured 4.7 / 6.3 tables' worth at batch 1 / 2)
        quadratic = (2 * batch + 3) * heads * tokens**2 if cfg["mode"] == PARALLEL else 0
        per_layer.append(quadratic + 12 * batch * tokens * width)
    params = sum(p.numel() for p in model.parameters())
    if cfg["task"] == "train":  # every layer's activations are kept for backward; Adam: 4 copies
        total = sum(per_layer) + 4 * params
    else:
        total = max(per_layer, default=0) + params
    return 4 * (total + inputs) / 2**30


def _memory_limit_gb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f}
        return 0.9 * info["MemAvailable"] / 2**20
    except (OSError, KeyError):
        return float("inf")


def _configs(args, models: dict) -> list[dict]:
    """Every configuration, ordered so that all models and modes at one (task, resolution, batch)
    run back to back: ratios then compare measurements minutes apart at most, on a noisy machine."""
    rows = []
    for task in args.tasks:
        for name, model in models.items():
            if model.retention_layers():
                modes = args.modes if task == "inference" else args.train_modes
            else:
                modes = [ATTENTION_MODE]
            retention = bool(model.retention_layers())
            option_sets = args.model_kwargs if retention else [""]
            checkpointing = [c == "on" for c in args.grad_checkpointing] if retention and task == "train" else [False]
            compiling = [c == "on" for c in args.compile]
            variants = ((o, m, c, k) for o in option_sets for m in modes for c in checkpointing for k in compiling)
            for options, mode, ckpt, compiled in variants:
                chunks = {CHUNKWISE: args.chunk_sizes, STREAMING: args.band_rows}.get(mode, [None])
                grid = ((c, r, b) for c in chunks for r in args.resolutions for b in args.batch_sizes)
                for chunk, res, batch in grid:
                    rows.append(dict(
                        task=task, model=name, mode=mode, chunk_size=chunk, resolution=res, batch=batch,
                        model_kwargs=options, grad_checkpointing=ckpt, compile=compiled,
                        device=args.device, dtype=args.dtype, threads=args.threads, repeats=args.repeats,
                        min_seconds=args.min_seconds, allocator=args.allocator,
                    ))
    return sorted(rows, key=lambda r: (args.tasks.index(r["task"]), r["resolution"], r["batch"]))


# ----------------------------------------------------------------------------------------------
# The machine, and the reference: a large matmul's GFLOP/s
# ----------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str, dtype: str, threads: int) -> dict:
    import torch

    info = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
        "python": platform.python_version(), "device": device, "dtype": dtype,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return info


def matmul_peak_gflops(device: str, dtype: str, size: int = 2048) -> float:
    """GFLOP/s of a ``size``² matmul in ``dtype`` — the practical ceiling the models are read against."""
    import torch

    a, b = (torch.randn(size, size, device=device, dtype=getattr(torch, dtype)) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


# ----------------------------------------------------------------------------------------------
# Reports: Markdown table and plots
# ----------------------------------------------------------------------------------------------


def _label(row: dict) -> str:
    if row["mode"] == ATTENTION_MODE:
        return f"{row['model']} (SDPA)"
    what = "band" if row["mode"] == STREAMING else "chunk"
    chunk = f" {what} {row['chunk_size']}" if row.get("chunk_size") else ""
    options = f" {row['model_kwargs']}" if row.get("model_kwargs") else ""
    checkpointing = " +grad ckpt" if row.get("grad_checkpointing") in (True, "True") else ""
    compiled = " compiled" if row.get("compile") in (True, "True") else ""
    return f"{row['model']}{options} {row['mode']}{chunk}{checkpointing}{compiled}"


def _cell(row: dict | None, key: str, fmt: str) -> str:
    if row is None:
        return ""
    if row.get("error"):
        return "OOM" if row["error"] == "OOM" else "skipped" if row["error"].startswith("skipped") else "failed"
    return format(row[key], fmt)


def markdown_report(rows: list[dict], machine: dict, command: str, baseline: str | None) -> str:
    """One table per (task, batch): a row per model/mode, images/s and peak MB per resolution, and
    the speed ratio against the baseline's row at the same resolution."""
    lines = [
        "# Throughput benchmark",
        "",
        f"`{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
    ]
    resolutions = sorted({r["resolution"] for r in rows})
    for task in dict.fromkeys(r["task"] for r in rows):
        for batch in sorted({r["batch"] for r in rows if r["task"] == task}):
            group = [r for r in rows if r["task"] == task and r["batch"] == batch]
            base = {r["resolution"]: r for r in group if r["model"] == baseline}
            unit = "images/s" if task == "inference" else "training images/s"
            lines += [f"## {task}, batch {batch}", "", f"{unit} (× baseline {baseline}) · peak MB", ""]
            lines.append("| model / mode | " + " | ".join(f"{res}²" for res in resolutions) + " |")
            lines.append("|---" * (len(resolutions) + 1) + "|")
            for label in dict.fromkeys(_label(r) for r in group):
                cells = []
                for res in resolutions:
                    row = next((r for r in group if _label(r) == label and r["resolution"] == res), None)
                    text = _cell(row, "images_per_s", ".3g")
                    ref = base.get(res)
                    if row and not row.get("error") and ref and not ref.get("error") and ref is not row:
                        text += f" ({row['images_per_s'] / ref['images_per_s']:.2f}×)"
                    if row and not row.get("error"):
                        text += f" · {row['peak_mb']:.0f}"
                    cells.append(text)
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
    skipped = [r for r in rows if r.get("error", "").startswith("skipped")]
    if skipped:
        lines += ["Skipped (predicted not to fit), or whole-image forms above --whole-image-max-resolution:", ""]
        lines += [f"- {_label(r)} {r['task']} {r['resolution']}² batch {r['batch']}: {r['error']}" for r in skipped]
        lines.append("")
    lines += [
        "Columns: median of the timed calls, after untimed warm-up and memory calls; peak MB is the",
        "memory one call added (resident set on CPU with freed memory returned at once,",
        "`max_memory_allocated` on CUDA). GFLOP, achieved GFLOP/s and the min–max spread per",
        "configuration are in results.csv.",
        "",
    ]
    return "\n".join(lines)


def plot_report(rows: list[dict], out_dir: Path, machine: dict, overwrite: bool = False,
                run: str | None = None) -> list[Path]:
    """``throughput_<task>_b<batch>.png`` and ``memory_<task>_b<batch>.png``: against resolution,
    log scales, one line per model and mode (the paper's Figure 5 layout); ``overwrite`` and ``run``
    as in :func:`~vir_lightning.io.atomic_output`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups = dict.fromkeys((r["task"], r["batch"]) for r in rows)
    for task, batch in groups:
        group = [r for r in rows if r["task"] == task and r["batch"] == batch and not r.get("error")]
        if not group:
            continue  # nothing ran (all skipped or failed): the Markdown table says why
        panels = (("images_per_s", "images / s", "throughput"), ("peak_mb", "peak memory (MB)", "memory"))
        for key, ylabel, stem in panels:
            fig, ax = plt.subplots(figsize=(6.4, 4.4))
            for label in dict.fromkeys(_label(r) for r in group):
                points = sorted((r["resolution"], r[key]) for r in group if _label(r) == label)
                style = "--" if label.endswith("(SDPA)") else "-"
                ax.plot(*zip(*points, strict=True), style, marker="o", label=label)
            ax.set_xscale("log", base=2)
            ticks = sorted({r["resolution"] for r in group})
            ax.set_xticks(ticks, [f"{t}²" for t in ticks])
            ax.minorticks_off()
            ax.set_yscale("log")
            ax.set_xlabel("resolution (pixels per side)")
            ax.set_ylabel(ylabel)
            where = f"{machine['device']}, {machine['dtype']}, {machine['threads']} threads"
            ax.set_title(f"{task}, batch {batch} — {where}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            path = out_dir / f"{stem}_{task}_b{batch}.png"
            with atomic_output(path, overwrite=overwrite, run=run) as tmp:
                fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
            plt.close(fig)
            written.append(path)
    return written


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vir_lightning bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vir_small_patch16_224", "vit_small_patch16_224"],
                   help="registered model names (ViR, H-ViR, or vit_* baselines)")
    p.add_argument("--baseline", default=None, help="the model the ratios are against (default: the first vit_*)")
    p.add_argument("--resolutions", type=int, nargs="+", default=[224, 512, 1024, 2048])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2])
    p.add_argument("--tasks", nargs="+", choices=("inference", "train"), default=["inference", "train"])
    p.add_argument("--modes", nargs="+", choices=RETENTION_MODES, default=[PARALLEL, CHUNKWISE, AUTO],
                   help="retention modes for inference")
    p.add_argument("--train-modes", nargs="+", choices=RETENTION_MODES, default=[PARALLEL],
                   help="retention modes for the training step")
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[None],
                   help="chunkwise chunk sizes (tokens in 1D, grid rows in 2D); default: the library's")
    p.add_argument("--band-rows", type=int, nargs="+", default=[None],
                   help="streaming band heights in patch rows; default: about 1024 tokens of whole rows")
    p.add_argument("--whole-image-max-resolution", type=int, default=4096,
                   help="every form but streaming (and the ViT) only up to this resolution: each holds the"
                        " whole image's tokens, and a ViR-S chunkwise call at 8192² takes minutes here")
    p.add_argument("--train-max-resolution", type=int, default=512,
                   help="training steps only up to this resolution (a 2048² ViT step takes minutes here)")
    p.add_argument("--model-kwargs", nargs="+", default=[""],
                   help="JSON options for the retention models (not the ViT), e.g. '{\"decay\": \"2d\"}';"
                        " several sets give rows side by side ('' = the defaults)")
    p.add_argument("--grad-checkpointing", nargs="+", choices=("off", "on"), default=["off"],
                   help="training steps of the retention models without and/or with gradient checkpointing")
    p.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off"],
                   help="eager and/or torch.compile(model, fullgraph=True) (compiled before timing; CPU: inductor)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="float32, or autocast to a 16-bit type")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="skip configurations predicted above this (default: 90%% of available memory)")
    p.add_argument("--out", default="runs/bench", help="directory for results.csv, results.md and the plots")
    add_measure_args(p, repeats=3)
    return p


def _check_args(args) -> dict:
    """Validate before any run; returns the models built on the meta device (cheap) by name."""
    import torch

    from ..models import create_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if not args.device.startswith(("cpu", "cuda")):
        raise ValueError(f"--device {args.device!r} is not supported; use cpu or cuda[:N]")
    check_measure_args(args)
    check_positive("--whole-image-max-resolution", args.whole_image_max_resolution)
    check_positive("--train-max-resolution", args.train_max_resolution)
    if args.max_memory_gb is not None and not args.max_memory_gb > 0:
        raise ValueError(f"--max-memory-gb {args.max_memory_gb}: expected a positive number of GB")
    check_output_folder("--out", args.out)
    for name in ("results.csv", "results.md"):  # before the runs, so no measurement is lost at the end
        check_output_path(os.path.join(args.out, name), "--out", overwrite=args.overwrite, run=args.run)
    for name, values in (("--resolutions", args.resolutions), ("--batch-sizes", args.batch_sizes),
                         ("--chunk-sizes", [c for c in args.chunk_sizes if c is not None]),
                         ("--band-rows", [c for c in args.band_rows if c is not None])):
        bad = [v for v in values if v < 1]
        if bad:
            raise ValueError(f"{name} {bad}: every value must be a positive integer")
    option_sets = []
    for text in args.model_kwargs:
        try:
            options = json.loads(text) if text else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"--model-kwargs {text!r} is not JSON ({err}); e.g. '{{\"decay\": \"2d\"}}'") from None
        if not isinstance(options, dict):
            raise ValueError(f"--model-kwargs {text!r} must be a JSON object, e.g. '{{\"decay\": \"2d\"}}'")
        option_sets.append(options)
    models = {}
    with torch.device("meta"):
        for name in dict.fromkeys(args.models):
            models[name] = create_model(name)  # ValueError names close matches for a typo
            if models[name].retention_layers():
                for options, text in zip(option_sets, args.model_kwargs, strict=True):
                    try:
                        create_model(name, **options)
                    except (TypeError, ValueError) as err:  # a bad option, named with its flag
                        raise ValueError(f"--model-kwargs {text!r} for {name}: {err}") from None
    for name, model in models.items():
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", (1, 1))[0]
        bad = [r for r in args.resolutions if r % patch]
        if bad:
            raise ValueError(f"--resolutions {bad} are not multiples of {name}'s patch size {patch}")
    baseline = args.baseline or next((n for n, m in models.items() if not m.retention_layers()), None)
    if baseline is not None and baseline not in models:
        raise ValueError(f"--baseline {baseline!r} is not one of --models {list(models)}")
    args.baseline = baseline
    return models


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    models = _check_args(args)
    import torch

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args.device, args.dtype, args.threads)
    machine["matmul_peak_gflops"] = round(matmul_peak_gflops(args.device, args.dtype), 1)
    machine["allocator"] = args.allocator
    limit = args.max_memory_gb or _memory_limit_gb(args.device)
    command = "python -m vir_lightning bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"# {command}\n# " + ", ".join(f"{k} {v}" for k, v in machine.items()))

    rows = []
    for cfg in _configs(args, models):
        model = models[cfg["model"]]
        if cfg["task"] == "train" and cfg["resolution"] > args.train_max_resolution:
            continue
        predicted = _predicted_gb(model, cfg)
        if cfg["mode"] != STREAMING and cfg["resolution"] > args.whole_image_max_resolution:
            limit_res = args.whole_image_max_resolution
            result = {"error": f"skipped: whole-image form above --whole-image-max-resolution {limit_res}"}
        elif predicted > limit:
            result = {"error": f"skipped: predicted {predicted:.1f} GB > {limit:.1f} GB"}
        else:
            result = run_isolated(MODULE, cfg)
        row = {**cfg, **result, **{f"machine_{k}": v for k, v in machine.items()}}
        rows.append(row)
        if result.get("error"):
            print(f"{_label(row):48s} {cfg['task']:9s} {cfg['resolution']:5d}² b{cfg['batch']}: {result['error']}")
        else:
            print(
                f"{_label(row):48s} {cfg['task']:9s} {cfg['resolution']:5d}² b{cfg['batch']}:"
                f" {row['images_per_s']:8.3f} img/s  ({row['time_min_ms']:.0f}–{row['time_max_ms']:.0f} ms,"
                f" n={row['repeats']})  peak {row['peak_mb']:7.0f} MB  {row['gflop']:8.1f} GFLOP"
                f"  {row['achieved_gflops']:6.1f} GFLOP/s"
            )
        sys.stdout.flush()

    write_results_csv(str(out_dir / "results.csv"), rows, args)
    report = markdown_report(rows, machine, command, args.baseline)
    with atomic_output(out_dir / "results.md", overwrite=args.overwrite, run=args.run) as tmp:
        Path(tmp).write_text(report)
    print(f"wrote {out_dir / 'results.md'}")
    for path in plot_report(rows, out_dir, machine, args.overwrite, args.run):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
