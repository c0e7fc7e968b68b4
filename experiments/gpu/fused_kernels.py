"""The fused retention backends on CUDA, in one run: exactness, graph breaks, and ViR against timm's ViT.

    PYTHONPATH=. python experiments/gpu/fused_kernels.py --csv docs/bench/gpu.csv --checks docs/bench/gpu_checks.json

1. Exactness. Every backend in fp32 against the torch backend (forward and the gradients of q, k, v;
   fp32 products in IEEE precision); the torch forms in float64 against the parallel form; whole
   models (ViR-S 1D and 2D, H-ViR-T) on each backend against torch.
2. Graph breaks: ``torch._dynamo.explain`` of an inference and a training step of ViR-S (1D, 2D) and
   H-ViR-T with the ``"auto"`` backend (the Triton kernel under compile), in bf16 autocast.
3. Speed and memory, side by side in this one process: ViR-S with 1D and with 2D decay (``_2d``) on
   each backend beside timm's ``vit_small_patch16_224`` (SDPA: flash attention in bf16), at 224, 512,
   1024 and 2048 px, bf16 autocast and fp32; ``infer`` is a forward under ``no_grad``, ``train`` a
   forward, cross-entropy, backward and AdamW step. Each resolution's batch is doubled until the
   ViT's bf16 inference step takes at least 20 ms (so kernel-launch overhead does not decide the
   ratio), and every model runs at that batch. ms = median of 10 synchronised steps after 3 warm-up
   steps; peak_mb = ``torch.cuda.max_memory_allocated`` during a step above what was allocated before
   it. H-ViR-T beside a timm backbone of its class at 800×1344 follows the bf16 rows. Rows are
   measured in priority order and stop at ``--deadline-s`` after the script started (the ones left
   out are listed); a row that fails records its error and the run goes on. The checks JSON is
   rewritten after every part, so a run cut short keeps what it measured.

On the lent GPU machine (torch, timm and Triton installed there; fla-core 0.6.0 and einops brought
as wheels in an ignored ``.whl`` folder, see the device tool's notes):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
    python experiments/gpu/fused_kernels.py --csv $OUT/gpu.csv --checks $OUT/gpu_checks.json

``DRY=1`` runs everything on the CPU at toy sizes (Triton's interpreter, our own ViT when timm is
missing): the script's own test, in ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

DRY = os.environ.get("DRY") == "1"
if DRY:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is defined
else:
    os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # fla's fp32 products in IEEE fp32, as torch's default

import torch  # noqa: E402
import torch._dynamo as dynamo  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vir_lightning.benchmarks.measure import measure, measure_cuda  # noqa: E402
from vir_lightning.io import atomic_output, write_csv_atomically  # noqa: E402
from vir_lightning.models import create_model  # noqa: E402
from vir_lightning.retention import retention  # noqa: E402
from vir_lightning.retention.backends import unsupported  # noqa: E402

DEVICE = torch.device("cpu" if DRY else "cuda")
CSV_COLUMNS = ("device", "dtype", "task", "model", "backend", "resolution", "batch", "ms", "peak_mb")
RESOLUTIONS = (32, 64) if DRY else (224, 512, 1024, 2048)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
HVIR_SIZE = (64, 96) if DRY else (800, 1344)
MIN_VIT_MS = 0.0 if DRY else 20.0
#: DRY runs shallow models: the interpreter takes seconds per kernel launch.
SHALLOW = {"vir_small_patch16_224": {"depth": 2}, "hvir_tiny": {"depths": (1, 1, 1, 1)}} if DRY else {}
#: The models whose logits (exactness) and steps (graph breaks) are checked: (label, name, size, options).
CHECK_SIDE = 32 if DRY else 512
CHECKED_MODELS = (
    ("vir_s_1d", "vir_small_patch16_224", (CHECK_SIDE, CHECK_SIDE), {}),
    ("vir_s_2d", "vir_small_patch16_224", (CHECK_SIDE, CHECK_SIDE), {"decay": "2d"}),
    ("hvir_t", "hvir_tiny", (64, 64) if DRY else HVIR_SIZE, {}),
)
checks: dict = {}


def log(key: str, value) -> None:
    checks[key] = value
    print(key, value, flush=True)


def write_checks(path: str) -> None:
    # overwrite: this script regenerates the repository's own result files (docs/bench), which a
    # checkout wrote, not this library, so the output rule would otherwise keep them
    with atomic_output(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(checks, indent=1, default=str))


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def usable(backend: str, dtype: torch.dtype, one_d: bool) -> bool:
    return unsupported(backend, DEVICE, dtype, one_d, step=False) is None


# ------------------------------------------------------------------------------------------------
# 1. Exactness
# ------------------------------------------------------------------------------------------------

GRID = (5, 7) if DRY else (12, 25)
OP_CASES = {  # name: (retention kwargs, tokens)
    "1d": ({}, GRID[0] * GRID[1]),
    "2d": ({"grid_shape": GRID}, GRID[0] * GRID[1]),
    "2d_cls": ({"grid_shape": GRID, "class_token": True}, GRID[0] * GRID[1] + 1),
    "2d_dir2": ({"grid_shape": GRID, "directions": 2}, GRID[0] * GRID[1]),
    "2d_dir4": ({"grid_shape": GRID, "directions": 4}, GRID[0] * GRID[1]),
}


def op_errors(dtype, tokens, kwargs, run, reference) -> float:
    """Largest relative error of ``run`` against ``reference`` over the output and the three gradients."""
    # head_dim 64, as ViR-S: fla autotunes per head dim, so the models' size costs no extra tuning
    q, k, v = (torch.randn(2, 3, tokens, 64, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    rates = [0.9, 0.97, 0.99]
    results = []
    for fn in (run, reference):
        out = fn(q, k, v, rates, scale=64**-0.5, **kwargs)
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    return max(rel(a, b) for a, b in zip(*results, strict=True))


def check_exactness() -> None:
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products in IEEE precision on both sides
    try:
        _check_exactness()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def _check_exactness() -> None:
    for name, (kwargs, tokens) in OP_CASES.items():
        parallel = lambda *a, **kw: retention(*a, mode="parallel", backend="torch", **kw)  # noqa: E731
        for mode in ("chunkwise", "recurrent"):
            if mode == "recurrent" and kwargs.get("directions", 1) != 1:
                continue
            form = lambda *a, mode=mode, **kw: retention(*a, mode=mode, chunk_size=3, backend="torch", **kw)  # noqa: E731
            log(f"op_{name}_float64_{mode}_vs_parallel", op_errors(torch.float64, tokens, kwargs, form, parallel))
        torch_fp32 = lambda *a, **kw: retention(*a, mode="chunkwise", backend="torch", **kw)  # noqa: E731
        for backend in ("triton", "fla"):
            if usable(backend, torch.float32, "grid_shape" not in kwargs):
                fused = lambda *a, backend=backend, **kw: retention(*a, backend=backend, **kw)  # noqa: E731
                log(f"op_{name}_fp32_{backend}_vs_torch", op_errors(torch.float32, tokens, kwargs, fused, torch_fp32))
    for label, name, size, kwargs in CHECKED_MODELS:
        # LayerScale 1: at its default (1e-5) retention hardly reaches the logits, and any backend would pass.
        model = (
            create_model(name, num_classes=10, img_size=size, layer_scale_init=1.0, **kwargs, **SHALLOW.get(name, {}))
            .to(DEVICE)
            .eval()
        )
        x = torch.randn(2, 3, *size, device=DEVICE)
        logits = {}
        with torch.no_grad():
            for backend in ("torch", "triton", "fla"):
                if usable(backend, torch.float32, kwargs.get("decay", "1d") == "1d" and name != "hvir_tiny"):
                    model.set_retention_backend(backend)
                    logits[backend] = model(x)
        for backend, out in logits.items():
            if backend != "torch":
                log(f"model_{label}_fp32_{backend}_vs_torch", rel(out, logits["torch"]))


# ------------------------------------------------------------------------------------------------
# 2. Graph breaks
# ------------------------------------------------------------------------------------------------


def autocast(dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(DEVICE.type, dtype=dtype)


def step_fn(model, task: str, dtype: torch.dtype, batch: int, size: tuple[int, int]):
    """The call that one timed step makes: inference, or forward + loss + backward + AdamW."""
    x = torch.randn(batch, 3, *size, device=DEVICE)
    if task == "infer":
        model.eval()

        def infer():
            with torch.no_grad(), autocast(dtype):
                return model(x)

        return infer
    model.train()
    labels = torch.randint(0, 1000, (batch,), device=DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train():
        with autocast(dtype):
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return train


def check_graph_breaks() -> None:
    for label, name, size, kwargs in CHECKED_MODELS:
        model = create_model(name, num_classes=1000, img_size=size, retention_mode="chunkwise", **kwargs).to(DEVICE)
        x = torch.randn(2, 3, *size, device=DEVICE)
        for task in ("infer", "train"):
            if task == "infer":
                model.eval()
                fn = lambda model=model, x=x: model(x).float().sum()  # noqa: E731
                context = torch.no_grad
            else:
                model.train()
                fn = lambda model=model, x=x: model(x).float().square().mean()  # noqa: E731
                context = contextlib.nullcontext
            with context(), autocast(torch.bfloat16):
                explained = dynamo.explain(fn)()
            dynamo.reset()
            log(
                f"graph_breaks_{label}_{task}_bf16",
                [explained.graph_break_count, [str(r.reason)[:200] for r in explained.break_reasons]],
            )
    # explain traces forwards only: compile one whole training step (Inductor, the backward, the kernel's
    # lowering) of ViR-S 2D with fullgraph=True and compare its loss and a gradient with eager.
    side = CHECK_SIDE
    model = (
        create_model(
            "vir_small_patch16_224",
            num_classes=1000,
            img_size=side,
            decay="2d",
            **SHALLOW.get("vir_small_patch16_224", {}),
        )
        .to(DEVICE)
        .train()
    )
    x = torch.randn(2, 3, side, side, device=DEVICE)
    labels = torch.randint(0, 1000, (2,), device=DEVICE)
    grads, losses = [], []
    start = time.perf_counter()
    for forward in (model, torch.compile(model, fullgraph=True)):
        with autocast(torch.bfloat16):
            loss = F.cross_entropy(forward(x).float(), labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.blocks[0].retention.qkv.weight.grad.clone())
        model.zero_grad(set_to_none=True)
    log(
        "compiled_train_step_vir_s_2d_bf16",
        {
            "loss_rel_err": rel(losses[1], losses[0]),
            "qkv_grad_rel_err": rel(grads[1], grads[0]),
            "seconds_with_compile": round(time.perf_counter() - start, 1),
        },
    )


# ------------------------------------------------------------------------------------------------
# 3. Speed and memory
# ------------------------------------------------------------------------------------------------


def build(model: str, resolution, backend: str):
    """(module, registry name) of a CSV row's model: timm's ViT-S, ViR-S (``_2d``: 2D decay), H-ViR-T."""
    size = resolution if isinstance(resolution, tuple) else (resolution, resolution)
    if model == "vit_small_patch16_224":
        try:
            import timm
        except ImportError:  # DRY on a machine without timm: our own SDPA ViT-S stands in
            return create_model(model, num_classes=1000, img_size=size)
        return timm.create_model(model, num_classes=1000, img_size=size)
    if model.startswith("timm:"):
        import timm

        return timm.create_model(model[5:], num_classes=1000, img_size=size)
    if model == "hvir_tiny":
        return create_model(
            "hvir_tiny",
            num_classes=1000,
            retention_backend=backend,
            retention_mode="auto",
            **SHALLOW.get("hvir_tiny", {}),
        )
    decay = "2d" if model.endswith("_2d") else "1d"
    return create_model(
        "vir_small_patch16_224",
        num_classes=1000,
        img_size=size,
        decay=decay,
        retention_mode="auto",
        retention_backend=backend,
        **SHALLOW.get("vir_small_patch16_224", {}),
    )


def timed_step(model_name: str, backend: str, resolution, batch: int, task: str, dtype: torch.dtype) -> tuple:
    """(ms, peak_mb) of one configuration, or (None, what went wrong) when it fails (out of memory, or
    any other error: logged, and the run goes on)."""
    size = resolution if isinstance(resolution, tuple) else (resolution, resolution)
    model = None
    try:
        model = build(model_name, resolution, backend).to(DEVICE)
        call = step_fn(model, task, dtype, batch, size)
        if DRY:
            _, stats = measure(call, repeats=1, min_seconds=0)
        else:
            for _ in range(3):
                call()
            _, stats = measure_cuda(call, repeats=10, min_seconds=0)
        return round(stats["time_ms"], 2), round(stats["peak_mb"], 1)
    except torch.OutOfMemoryError:
        return None, "OOM"
    except Exception as err:  # noqa: BLE001 - one failing row must not cost the rest of the run
        log(f"error_{model_name}_{backend}_{resolution}_{task}_{dtype}", f"{type(err).__name__}: {str(err)[:300]}")
        return None, type(err).__name__
    finally:
        del model
        if not DRY:
            torch.cuda.empty_cache()


def vit_batch(resolution: int) -> int:
    """The smallest power-of-two batch at which the ViT's bf16 inference step takes MIN_VIT_MS."""
    batch = 1
    while True:
        ms, _ = timed_step("vit_small_patch16_224", "torch", resolution, batch, "infer", torch.bfloat16)
        if ms is None:  # out of memory (or broken): the last batch that ran
            return max(1, batch // 2)
        if ms >= MIN_VIT_MS or batch >= 1024:
            return batch
        batch *= 2


def planned_rows(resolutions, dtypes) -> list[tuple]:
    """(model, backend, resolution, task, dtype) in priority order: bf16 first (the goals), then fp32."""
    rows = []
    for dtype in dtypes:
        for resolution in resolutions:
            for task in ("infer", "train"):
                rows.append(("vit_small_patch16_224", "torch", resolution, task, dtype))
                for model, one_d in (("vir_small_patch16_224", True), ("vir_small_patch16_224_2d", False)):
                    for backend in ("triton", "fla", "torch"):
                        if backend == "torch" or usable(backend, dtype, one_d):
                            rows.append((model, backend, resolution, task, dtype))
    return rows


def hvir_rows() -> list[tuple]:
    peer = "vit_small_patch16_224" if DRY else "timm:swin_tiny_patch4_window7_224"
    return [
        (model, backend, HVIR_SIZE, task, torch.bfloat16)
        for task in ("infer", "train")
        for model, backend in ((peer, "torch"), ("hvir_tiny", "triton"), ("hvir_tiny", "torch"))
        if backend == "torch" or usable(backend, torch.bfloat16, False)
    ]


def benchmark(csv_path: str, deadline: float, resolutions, dtypes) -> None:
    device_name = "cpu (dry run)" if DRY else torch.cuda.get_device_name()
    batches = {res: vit_batch(res) for res in resolutions}
    batches[HVIR_SIZE] = 1 if DRY else 2
    log("batches", {str(k): v for k, v in batches.items()})
    rows, left_out = [], []
    planned = planned_rows(resolutions, dtypes)
    if torch.bfloat16 in dtypes:  # H-ViR right after the bf16 rows, before fp32
        first_fp32 = next((i for i, row in enumerate(planned) if row[4] == torch.float32), len(planned))
        planned = planned[:first_fp32] + hvir_rows() + planned[first_fp32:]
    for model, backend, resolution, task, dtype in planned:
        label = (model, backend, resolution, task, str(dtype))
        if time.perf_counter() > deadline:
            left_out.append(label)
            continue
        if model.startswith("timm:"):
            try:
                build(model, resolution, backend)
            except Exception as err:  # noqa: BLE001 - a peer timm cannot build at this size: say so, go on
                log(f"peer_{model}_unavailable", f"{type(err).__name__}: {str(err)[:200]}")
                continue
        ms, peak = timed_step(model, backend, resolution, batches[resolution], task, dtype)
        if ms is None:  # the error is logged; the CSV keeps numbers only
            peak = None
        res_label = "x".join(map(str, resolution)) if isinstance(resolution, tuple) else resolution
        row = dict(
            device=device_name,
            dtype="bf16" if dtype == torch.bfloat16 else "fp32",
            task=task,
            model=model.removeprefix("timm:"),
            backend=backend,
            resolution=res_label,
            batch=batches[resolution],
            ms="" if ms is None else ms,
            peak_mb="" if peak is None else peak,
        )
        rows.append(row)
        print(",".join(str(row[c]) for c in CSV_COLUMNS), flush=True)
        write_csv_atomically(csv_path, CSV_COLUMNS, ([r[c] for c in CSV_COLUMNS] for r in rows), overwrite=True)
    log("rows_left_out_by_deadline", left_out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", default="docs/bench/gpu.csv")
    parser.add_argument("--checks", default="docs/bench/gpu_checks.json")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=420.0,
        help="no speed row starts later than this many seconds after the script started",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["exactness", "graph_breaks", "speed"])
    parser.add_argument("--resolutions", nargs="+", type=int, default=list(RESOLUTIONS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    args = parser.parse_args(argv)
    if not DRY and not torch.cuda.is_available():
        print("error: no CUDA device; run on a GPU machine, or with DRY=1 to test the script on the CPU")
        return 2
    log("device", "cpu (dry run)" if DRY else torch.cuda.get_device_name())
    log("torch", torch.__version__)
    start = time.perf_counter()
    for part, fn in (("exactness", check_exactness), ("graph_breaks", check_graph_breaks)):
        if part not in args.skip:
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - record it and go on to the speed rows
                log(f"{part}_failed", f"{type(err).__name__}: {str(err)[:500]}")
            log(f"{part}_s", round(time.perf_counter() - start, 1))
            write_checks(args.checks)
    if "speed" not in args.skip:
        benchmark(args.csv, start + args.deadline_s, args.resolutions, [DTYPES[d] for d in args.dtypes])
    log("total_s", round(time.perf_counter() - start, 1))
    write_checks(args.checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
