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

import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path

from ..io import atomic_output
from ..retention.forms import CHUNKWISE, MODEL_FORMS, PARALLEL, STREAMING
from .measure import measure, measure_cuda, worker_main

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
        if cfg["dtype"] != "float32"
        else contextlib.nullcontext
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
                    rows.append(
                        dict(
                            task=task,
                            model=name,
                            mode=mode,
                            chunk_size=chunk,
                            resolution=res,
                            batch=batch,
                            model_kwargs=options,
                            grad_checkpointing=ckpt,
                            compile=compiled,
                            device=args.device,
                            dtype=args.dtype,
                            threads=args.threads,
                            repeats=args.repeats,
                            min_seconds=args.min_seconds,
                            allocator=args.allocator,
                        )
                    )
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
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "dtype": dtype,
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


def plot_report(
    rows: list[dict], out_dir: Path, machine: dict, overwrite: bool = False, run: str | None = None
) -> list[Path]:
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


if __name__ == "__main__":  # run_isolated: one configuration, in this process
    raise SystemExit(worker_main(_worker))
