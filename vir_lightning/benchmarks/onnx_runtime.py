"""ONNX Runtime (CPU) beside torch eager: one model's inference time and peak memory per image size.

    python -m vir_lightning bench-onnx [--model vir_small_patch16_224] [--resolutions 224 1024] [--csv out.csv]

Per resolution, in its own process: the model (random weights, seed 0) is built at that size,
exported with ``export_onnx`` in the form ``auto`` picks there (parallel for short sequences,
chunkwise beyond), and then timed in torch (``inference_mode``, eager) and in ONNX Runtime, one
after the other in the same process with the same thread count. The graph's outputs are compared
with torch's on the timed input. Memory is not reported: with two runtimes in one process, the
resident-set peak of a call is not its own (ONNX Runtime keeps an arena); ``predict-large``'s
whole-process peak is measured by ``experiments/deploy/predict_large_16k_runtimes.sh``.
"""

from __future__ import annotations

import os
import tempfile
import time

from ..retention.forms import AUTO
from .measure import measure, worker_main


def _worker(cfg: dict) -> dict:
    import logging

    import numpy as np
    import torch

    from ..deploy.onnx_export import export_onnx, onnx_session
    from ..models import create_model
    from ..retention import resolve_mode

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    size = cfg["resolution"]
    model = create_model(cfg["model"], img_size=size, decay=cfg["decay"]).eval()
    ph, pw = model.patch_size
    grid = (size // ph, size // pw)
    tokens = grid[0] * grid[1] + int(model.has_class_token)
    form = resolve_mode(AUTO, tokens, grid if cfg["decay"] == "2d" else None, torch.device("cpu"))
    images = torch.randn(cfg["batch"], model.in_chans, size, size)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        start = time.perf_counter()
        export_onnx(model, path, form)
        export_seconds = time.perf_counter() - start
        model.set_retention_mode(form)
        session = onnx_session(path, cfg["threads"])
        feeds = {"images": images.numpy()}
        with torch.inference_mode():
            expected, torch_stats = measure(
                lambda: model(images), cfg["repeats"], cfg["min_seconds"], allocator=cfg["allocator"]
            )
        (got,), ort_stats = measure(
            lambda: session.run(None, feeds), cfg["repeats"], cfg["min_seconds"], allocator=cfg["allocator"]
        )
    difference = float(np.abs(got - expected.numpy()).max() / np.abs(expected.numpy()).max())
    for stats in (torch_stats, ort_stats):
        stats.pop("peak_mb")  # see the module docstring
    return {
        "form": form,
        "export_s": export_seconds,
        "max_relative_difference": difference,
        **{f"torch_{k}": v for k, v in torch_stats.items()},
        **{f"ort_{k}": v for k, v in ort_stats.items()},
        "speedup": torch_stats["time_ms"] / ort_stats["time_ms"],
    }


if __name__ == "__main__":  # run_isolated: one configuration, in this process
    raise SystemExit(worker_main(_worker))
