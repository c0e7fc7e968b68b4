"""Does CUDA-graph capture close ViR's bf16 gap? ViR-S inference at 512², batch 8, eager vs
``torch.compile(mode="reduce-overhead")``, beside timm's ViT-S; fp32 and bf16 autocast.

    PYTHONPATH=. python experiments/gpu/compile_check.py
"""

import time

import torch

from vir_lightning.models import create_model


def timed(fn, repeats=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - start) / repeats * 1000, 2)


x = torch.randn(8, 3, 512, 512, device="cuda")
for dtype in (torch.float32, torch.bfloat16):
    row = {}
    vir = create_model("vir_small_patch16_224", num_classes=1000, img_size=512).cuda().eval()
    vir.set_retention_mode("auto")
    models = {"vir_eager": vir}
    try:
        import timm

        models["vit_eager"] = timm.create_model("vit_small_patch16_224", num_classes=1000, img_size=512).cuda().eval()
    except ImportError:
        pass
    for name in list(models):
        models[name.replace("eager", "compiled")] = torch.compile(models[name], mode="reduce-overhead")
    for name, model in models.items():
        start = time.perf_counter()
        try:
            with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                row[name] = timed(lambda model=model: model(x))
        except Exception as err:  # a compile failure is a result too
            row[name] = f"failed: {type(err).__name__}: {str(err)[:200]}"
        row[name + "_wall_s"] = round(time.perf_counter() - start, 1)
    print(str(dtype), row, flush=True)
