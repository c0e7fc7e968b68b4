"""The package's layering: who may import whom, the core never importing ``downstream``, weights
readable without Lightning, and the command registry (built-in tools and entry points)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from conftest import declared_entry_points

import vir_lightning.cli as cli

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vir_lightning"

#: layer (a subpackage or top-level module of vir_lightning) → the layers it may import. Lower layers
#: never import higher ones: retention ← models ← deploy / tasks ← commands ← cli, with data beside
#: models (it needs none), and the tools' libraries (grid, benchmarks) below the commands.
LEAVES = {"checks", "io", "run_folder"}
ALLOWED = {
    "checks": set(),
    "io": set(),
    "run_folder": set(),
    "retention": set(),
    "models": {"retention", "checks"},
    "data": {"checks", "io"},
    "deploy": {"retention", "models", "data"} | LEAVES,
    "tasks": {"retention", "models", "data", "deploy"} | LEAVES,
    "grid": {"retention", "models", "data", "deploy", "tasks"} | LEAVES,
    "benchmarks": {"retention", "models", "data", "deploy", "tasks"} | LEAVES,
    "commands": {"retention", "models", "data", "deploy", "tasks", "grid", "benchmarks"} | LEAVES,
    "cli": {"commands"} | LEAVES,
    "__main__": {"cli"},
    # `import vir_lightning` stays light: no Lightning (tasks), no commands
    "": {"retention", "models", "data", "deploy"} | LEAVES,
}
DOWNSTREAM = re.compile(r"downstream(\.[\w.]+)?(:\w+)?")


def _module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved, and of every
    string constant that names a ``downstream`` module (importlib.import_module("downstream…"), …)."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                found += (
                    [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
                    if not node.module
                    else [(node.lineno, target)]
                )
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOWNSTREAM.fullmatch(node.value):
            found.append((node.lineno, node.value))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_core_never_imports_downstream():
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in SOURCES
        for line, name in _imports(path)
        if name == "downstream" or name.startswith(("downstream.", "downstream:"))
    ]
    assert not offenders, "vir_lightning must not import downstream (register a command instead):\n" + "\n".join(
        offenders
    )


def test_the_scan_sees_imports_and_importlib_strings(tmp_path):
    # the check above is only as good as what it finds
    fake = tmp_path / "vir_lightning" / "deploy" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "import downstream\nfrom downstream.mini_datasets import main\nimport importlib\n"
        'importlib.import_module("downstream.mini_datasets")\nTARGET = "downstream.mini_datasets:main"\n'
        'NOTE = "downstream/README.md explains it"\nfrom ..models import layers\nfrom . import io\n'
    )
    assert sorted(name for _, name in _imports(fake, tmp_path)) == sorted(
        [
            "downstream",
            "downstream.mini_datasets",
            "importlib",
            "downstream.mini_datasets",
            "downstream.mini_datasets:main",
            "vir_lightning.models",
            "vir_lightning.deploy.io",
        ]
    )


def test_every_layer_imports_only_the_layers_below_it():
    offenders = []
    for path in SOURCES:
        own = _layer(_module_name(path))
        assert own in ALLOWED, f"{path.relative_to(REPO)}: a new layer {own!r}; place it in ALLOWED"
        for line, name in _imports(path):
            if not name.startswith("vir_lightning"):
                continue
            target = _layer(name)
            if target != own and target not in ALLOWED[own]:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {own} imports {name}")
    assert not offenders, "upward imports:\n" + "\n".join(offenders)


def _blocked_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter in which Lightning cannot be imported."""
    prelude = (
        "import sys\nfor name in ('lightning', 'pytorch_lightning', 'lightning_fabric'):\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )


def test_checkpoints_read_and_export_without_lightning(tmp_path):
    """What the mm adapter and the deploy commands read weights with imports no Lightning."""
    from vir_lightning.models import create_model

    torch.manual_seed(0)
    tiny = {"embed_dim": 32, "depth": 2, "num_heads": 2}
    model = create_model("vir_nano_patch4_28", num_classes=3, img_size=32, **tiny)
    hparams = {
        "model_name": "vir_nano_patch4_28",
        "num_classes": 3,
        "img_size": 32,
        "in_chans": 3,
        "model_kwargs": tiny,
        "class_names": ["a", "b", "c"],
    }
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": hparams,
            "epoch": 1,
            "global_step": 2,
        },
        tmp_path / "run.ckpt",
    )
    # the mm adapter's own imports of vir_lightning, read from its source
    adapter = sorted(
        {name for _, name in _imports(REPO / "downstream" / "hvir_backbone.py") if name.startswith("vir_lightning")}
    )
    assert "vir_lightning.deploy.checkpoints" in adapter
    code = f"""
import importlib, torch
for name in {adapter!r}:
    importlib.import_module(name)
from vir_lightning.deploy.checkpoints import classifier_from_checkpoint, exported_meta, read_state_dict
state = read_state_dict("run.ckpt")
assert state and not any(k.startswith("model.") for k in state), sorted(state)[:3]
model, hparams = classifier_from_checkpoint("run.ckpt")
assert hparams["class_names"] == ["a", "b", "c"] and model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
from vir_lightning.cli import main
assert main(["export-backbone", "run.ckpt", "backbone.pth"]) == 0
assert exported_meta("backbone.pth")["model_name"] == "vir_nano_patch4_28"
assert main(["--help"]) == 0
assert "lightning" not in {{m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}}
print("ok")
"""
    result = _blocked_python(code, tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_help_and_tools_import_no_lightning_and_no_command(tmp_path):
    code = """
from vir_lightning.cli import main, tools
assert main(["--help"]) == 0
assert set(tools()) >= {"predict-large", "export-onnx", "grid", "bench"}
loaded = sorted(m for m, mod in sys.modules.items()
                if mod is not None and m.startswith(("lightning", "vir_lightning.commands", "downstream")))
assert not loaded, loaded
print("ok")
"""
    result = _blocked_python(code, tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_every_builtin_tool_is_a_command_module_with_main():
    import importlib

    for name, (module, text) in cli.TOOLS.items():
        assert module.startswith("vir_lightning.commands."), (name, module)
        assert callable(importlib.import_module(module).main), name
        assert text and "\n" not in text, name


def test_downstream_registers_its_command_in_pyproject():
    declared = {ep.name: ep.value for ep in declared_entry_points()}
    assert declared == {"build-mini-datasets": "downstream.mini_datasets:main"}


def test_registered_commands_are_listed_and_run(monkeypatch, tmp_path, capsys):
    """Entry points of the group are discovered (the installed metadata lists them once reinstalled:
    here importlib.metadata's answer is replaced), listed with their module's COMMAND_HELP (or
    docstring) without importing it, dispatched to, and never shadow a built-in command."""
    plugin = tmp_path / "vir_plugin_cmd.py"
    plugin.write_text(
        '"""Say hello: a registered command.\n\nMore text."""\n\nCALLS = []\n\n\n'
        "def run(argv):\n    CALLS.append(argv)\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    group = cli.ENTRY_POINT_GROUP
    points = [
        EntryPoint("hello", "vir_plugin_cmd:run", group),
        EntryPoint("export-onnx", "vir_plugin_cmd:run", group),  # a built-in name: ignored
        EntryPoint("broken", "no_such_module_here:main", group),
        *declared_entry_points(),
    ]
    seen = {}

    def entry_points(**kwargs):
        seen.update(kwargs)
        return points

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    listed = cli.tools()
    assert seen == {"group": "vir_lightning.commands"}
    assert "vir_plugin_cmd" not in sys.modules  # listing imports nothing
    assert listed["hello"] == ("vir_plugin_cmd", "Say hello: a registered command.")
    assert listed["export-onnx"] == cli.TOOLS["export-onnx"]
    assert listed["broken"] == ("no_such_module_here", "")
    assert listed["build-mini-datasets"] == (
        "downstream.mini_datasets",
        "small COCO/ADE20K-layout sets from real pixels (mm smoke tests)",
    )
    assert list(listed)[: len(cli.TOOLS)] == list(cli.TOOLS)  # the built-in ones first, as before
    assert cli.main(["hello", "--x", "1"]) == 3
    assert sys.modules["vir_plugin_cmd"].CALLS == [["--x", "1"]]
    assert cli.main(["broken"]) == 2
    assert "no_such_module_here" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert "  hello                Say hello: a registered command." in usage
    assert "  build-mini-datasets  small COCO/ADE20K-layout sets" in usage


def test_lightning_subcommands_stay_listed():
    assert list(cli.LIGHTNING_SUBCOMMANDS) == ["fit", "validate", "test", "predict"]
    assert not set(cli.LIGHTNING_SUBCOMMANDS) & set(cli.tools())


@pytest.mark.parametrize("module", ["vir_lightning.commands.lightning"])
def test_the_lightning_cli_class_is_at_module_level(module):
    import importlib

    cls = importlib.import_module(module).ViRLightningCLI
    assert cls.__qualname__ == "ViRLightningCLI"
    assert {"command_line", "exit_stack"} <= set(cls.__init__.__code__.co_varnames)
