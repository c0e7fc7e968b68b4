"""``python -m vir_lightning <command> ...``: one entry point for every command of the project."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def _smoke(argv: list[str]) -> int:
    """Placeholder for `fit` until the classification suite lands: a real forward pass in every mode."""
    import torch

    from .models import create_model

    print("vir_lightning fit: the LightningCLI training suite is not built yet (see README, 'Status').")
    print("Running a smoke check instead: vir_nano_patch16_224 in all three retention modes.\n")
    torch.manual_seed(0)
    model = create_model("vir_nano_patch16_224", num_classes=10, decay="2d", layer_scale_init=1.0).eval()
    images = torch.rand(2, 3, 224, 224)
    reference = None
    with torch.no_grad():
        for mode in ("parallel", "chunkwise", "recurrent"):
            model.set_retention_mode(mode)
            start = time.perf_counter()
            logits = model(images)
            elapsed = time.perf_counter() - start
            reference = logits if reference is None else reference
            diff = (logits - reference).abs().max().item()
            print(f"  {mode:<10} logits {tuple(logits.shape)}  {elapsed * 1000:7.1f} ms"
                  f"  max |Δ| vs parallel {diff:.2e}")
    return 0


def _bench_retention(argv: list[str]) -> int:
    from .benchmarks.retention_op import main as bench_main

    return bench_main(argv)


#: command → (handler, one-line help). Later issues add LightningCLI subcommands and more tools here.
COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "fit": (_smoke, "train a model (placeholder: runs a smoke forward pass in every retention mode)"),
    "bench-retention": (_bench_retention, "time and peak memory of the retention op per mode and length"),
}


def _usage() -> str:
    lines = ["usage: python -m vir_lightning <command> [options]", "", "commands:"]
    lines += [f"  {name:<18} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `python -m vir_lightning <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return COMMANDS[command][0](rest)
