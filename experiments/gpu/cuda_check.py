"""First run of the CUDA path: exactness of every retention form and of the models on a GPU, and
ViR-S against timm's ViT-S (fused SDPA attention) side by side. One script, one device call.

    PYTHONPATH=. python experiments/gpu/cuda_check.py OUT_JSON

Needs only torch (and timm for the ViT peer); prints one line per check and writes every number.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from vir_lightning.models import create_model
from vir_lightning.retention import retention

# DRY=1 runs every check on the CPU at small sizes (the script's own test before spending GPU time).
DRY = __import__("os").environ.get("DRY") == "1"
DEVICE = "cpu" if DRY else "cuda"
results: dict = {"device": "cpu (dry run)" if DRY else torch.cuda.get_device_name(0), "torch": torch.__version__}


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def record(key, value):
    results[key] = value
    print(key, value, flush=True)


# 1. The op: every form equals parallel in float64, forward and gradients (the lean backward).
torch.manual_seed(0)
for name, kwargs, tokens in [
    ("1d", {}, 300),
    ("2d", {"grid_shape": (12, 25)}, 300),
    ("2d_cls", {"grid_shape": (12, 25), "class_token": True}, 301),
    ("2d_dir4", {"grid_shape": (12, 25), "directions": 4}, 300),
]:
    q, k, v = (torch.randn(2, 3, tokens, 16, device=DEVICE, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rates = [0.9, 0.97, 0.99]
    ref = retention(q, k, v, rates, mode="parallel", **kwargs)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for mode in ("chunkwise", "recurrent"):
        if mode == "recurrent" and kwargs.get("directions", 1) != 1:
            continue
        out = retention(q, k, v, rates, mode=mode, chunk_size=7 if "grid_shape" not in kwargs else 3, **kwargs)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        errors = [rel(out, ref)] + [rel(g, r) for g, r in zip(grads, ref_grads, strict=True)]
        record(f"op_{name}_{mode}_rel_err", max(errors))


# 2. Models: forms agree on CUDA (fp32), streaming included.
def forms_agree(model_name, size, modes, **kw):
    model = create_model(model_name, num_classes=10, img_size=size, **kw).to(DEVICE).eval()
    x = torch.randn(2, 3, *((size, size) if isinstance(size, int) else size), device=DEVICE)
    outs = {}
    with torch.no_grad():
        for mode in modes:
            model.set_retention_mode(*(mode if isinstance(mode, tuple) else (mode,)))
            outs[str(mode)] = model(x).double()
    ref = outs[str(modes[0])]
    return {m: rel(o, ref) for m, o in outs.items() if m != str(modes[0])}


side, hvir_size = (64, (64, 96)) if DRY else (512, (800, 1344))
one_d_forms = ["parallel", "chunkwise", ("streaming", 2)]
record(f"vir_s_{side}_1d_forms", forms_agree("vir_small_patch16_224", side, one_d_forms))
record(f"vir_s_{side}_2d_forms", forms_agree("vir_small_patch16_224", side, ["parallel", "chunkwise"], decay="2d"))
record(f"hvir_t_{hvir_size[0]}x{hvir_size[1]}_forms", forms_agree("hvir_tiny", hvir_size, ["parallel", "chunkwise"]))


# 3. Speed and memory: ViR-S (auto form) against timm's ViT-S (SDPA), same batch and size, fp32 and bf16.
def timed(fn, repeats=5):
    fn()
    if DRY:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000, 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000, torch.cuda.max_memory_allocated() / 2**20


def bench(model, size, batch, dtype):
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def infer():
        with torch.no_grad(), torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32):
            model(x)

    def train():
        with torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(x).float().logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.eval()
    infer_ms, infer_mb = timed(infer)
    model.train()
    train_ms, train_mb = timed(train, repeats=3)
    return dict(
        infer_ms=round(infer_ms, 2),
        infer_peak_mb=round(infer_mb),
        train_ms=round(train_ms, 2),
        train_peak_mb=round(train_mb),
    )


try:
    import timm
except ImportError:
    timm = None
for size, batch in [(32, 1)] if DRY else [(224, 64), (512, 8), (1024, 2)]:
    for dtype in (torch.float32, torch.bfloat16):
        tag = f"{size}_b{batch}_{str(dtype).split('.')[-1]}"
        vir = create_model("vir_small_patch16_224", num_classes=1000, img_size=size).to(DEVICE)
        vir.set_retention_mode("auto")
        row = {"vir_s_auto": bench(vir, size, batch, dtype)}
        del vir
        if timm is not None:
            vit = timm.create_model("vit_small_patch16_224", num_classes=1000, img_size=size).to(DEVICE)
            row["timm_vit_s"] = bench(vit, size, batch, dtype)
            del vit
            row["vit_over_vir_infer"] = round(row["timm_vit_s"]["infer_ms"] / row["vir_s_auto"]["infer_ms"], 2)
            row["vit_over_vir_train"] = round(row["timm_vit_s"]["train_ms"] / row["vir_s_auto"]["train_ms"], 2)
        if not DRY:
            torch.cuda.empty_cache()
        record(f"speed_{tag}", row)

with open(sys.argv[1], "w") as f:
    json.dump(results, f, indent=1)
