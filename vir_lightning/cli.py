"""``python -m vir_lightning <command> ...``: one entry point for every command of the project.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands (model and data in
subclass mode, the data's classes / image size / channels linked into the model). Tools that are
not training runs (benchmarks, …) are plain commands: the project's own in ``TOOLS`` (one module each
in :mod:`vir_lightning.commands`), other packages' through the ``vir_lightning.commands`` entry
points; :func:`tools` lists both. Nothing here imports Lightning until a training subcommand runs.
"""

from __future__ import annotations

import importlib
import os
import sys

LIGHTNING_SUBCOMMANDS = {
    "fit": "train (and validate) a model; `--test_after_fit true` then tests the best checkpoint",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "top-5 predictions for a folder of images (data.init_args.predict_root) into a CSV",
}


#: command → (module whose ``main(argv) -> int`` runs it, one-line help): the project's own tools,
#: one module each in :mod:`vir_lightning.commands`. Imported only when run, so ``--help`` and the
#: training subcommands never pay for the tools' imports.
TOOLS: dict[str, tuple[str, str]] = {
    "grid": (
        "vir_lightning.commands.grid",
        "ablation grids over the CLI configs: local or Ray, resumable, tables and plots",
    ),
    "bench": ("vir_lightning.commands.bench", "images/s and peak memory: models x modes x resolutions, ViT alongside"),
    "bench-retention": (
        "vir_lightning.commands.bench_retention",
        "time and peak memory of the retention op per mode and length",
    ),
    "bench-backbone": (
        "vir_lightning.commands.bench_backbone",
        "H-ViR feature-pyramid forward time and memory per retention mode",
    ),
    "bench-onnx": (
        "vir_lightning.commands.bench_onnx",
        "ONNX Runtime (CPU) beside torch eager: time and memory per size",
    ),
    "predict-large": (
        "vir_lightning.commands.predict_large",
        "top-5 (and per-patch features) of huge images, streamed band by band",
    ),
    "build-mosaic": (
        "vir_lightning.commands.build_mosaic",
        "a huge real-pixel tiled pyramidal TIFF (matplotlib's photos) for predict-large",
    ),
    "export-backbone": (
        "vir_lightning.commands.export_backbone",
        "classification checkpoint → tensor state_dict for mmdet/mmseg init_cfg",
    ),
    "export-model": (
        "vir_lightning.commands.export_model",
        "checkpoint → pretrained folder (config.json + model.safetensors)",
    ),
    "export-onnx": (
        "vir_lightning.commands.export_onnx",
        "checkpoint or pretrained folder → ONNX, checked in ONNX Runtime",
    ),
    "export-cluttered": (
        "vir_lightning.commands.export_cluttered",
        "cluttered Fashion-MNIST written out as an image folder",
    ),
}

#: The entry-point group through which other packages (``downstream``: ``build-mini-datasets``) add
#: commands: ``name = "module:function"`` in their ``[project.entry-points."vir_lightning.commands"]``,
#: the function taking ``argv`` and returning the exit status. Its one-line help is the module's
#: ``COMMAND_HELP`` string, else its docstring's first line, both read from the source without
#: importing it. A registered name never shadows a built-in command.
ENTRY_POINT_GROUP = "vir_lightning.commands"


def _entry_points():
    """The installed distributions' entry points of :data:`ENTRY_POINT_GROUP` (none if unreadable)."""
    from importlib.metadata import entry_points

    try:
        return list(entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # a broken distribution's metadata must not break every command
        return []


def _module_help(module: str) -> str:
    """``COMMAND_HELP`` of ``module``'s source, else its docstring's first line ("" when unreadable):
    found and parsed, never imported (registered commands may import heavy or missing packages)."""
    import ast

    try:
        origin = _module_source(module)
        if origin is None:
            return ""
        with open(origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (ImportError, OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "COMMAND_HELP" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    doc = ast.get_docstring(tree) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _module_source(module: str) -> str | None:
    """The ``.py`` file of ``module``, found without importing anything: ``find_spec`` of a submodule
    would import (run) its parent packages."""
    import importlib.util

    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name: looked up, not imported
    if spec is None:
        return None
    if not rest:
        return spec.origin if spec.origin and spec.origin.endswith(".py") else None
    for folder in spec.submodule_search_locations or ():
        base = os.path.join(folder, *rest)
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
    return None


def registered_tools() -> dict[str, tuple[str, str, str]]:
    """command → (module, function, one-line help) of the commands other packages register."""
    found = {}
    for entry_point in _entry_points():
        name = entry_point.name
        if name in LIGHTNING_SUBCOMMANDS or name in TOOLS or name in found or not entry_point.module:
            continue
        found[name] = (entry_point.module, entry_point.attr or "main", _module_help(entry_point.module))
    return found


def tools() -> dict[str, tuple[str, str]]:
    """Every tool command → (module, one-line help): the built-in :data:`TOOLS`, then the commands
    registered through the ``vir_lightning.commands`` entry points (sorted by name)."""
    registered = registered_tools()
    return {**TOOLS, **{name: (registered[name][0], registered[name][2]) for name in sorted(registered)}}


def _tool_main(command: str):
    """The ``main(argv) -> int`` of a tool command, imported now; None for an unknown command."""
    if command in TOOLS:
        return importlib.import_module(TOOLS[command][0]).main
    registered = registered_tools().get(command)
    if registered is None:
        return None
    return getattr(importlib.import_module(registered[0]), registered[1])


def run_lightning(argv: list[str] | None) -> int:
    """Run a LightningCLI subcommand (``argv=None``: from sys.argv). Configuration errors print one
    line (VIR_DEBUG=1: traceback). Lightning is imported here, not before."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise calls the network
    from .commands import lightning

    return lightning.main(argv)


def _usage() -> str:
    lines = ["usage: python -m vir_lightning <command> [options]", "", "training (LightningCLI; add --help):"]
    lines += [f"  {name:<20} {text}" for name, text in LIGHTNING_SUBCOMMANDS.items()]
    lines += ["", "tools:"]
    lines += [f"  {name:<20} {text}" for name, (_, text) in tools().items()]
    lines += ["", "example: python -m vir_lightning fit --config configs/quickstart.yaml"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_SUBCOMMANDS:
        return run_lightning(None if from_command_line else argv)
    try:
        tool = _tool_main(command)
        if tool is not None:
            return tool(rest)
    except (ValueError, OSError, ImportError) as err:  # OSError: unreadable/unwritable paths
        if os.environ.get("VIR_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2
