"""From a spec to runs: each point's resolved config, checked by the CLI's own parser, with its own
run directory named by a hash of that config.

The base configs (plus the spec's ``args``) are resolved once with ``--print_config``; each point's
values are then set in that resolved config, and every point's config is checked by
``--print_config`` again, in parallel, before any run starts: an unknown key or a bad value
stops the grid with the CLI's own message.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..io import atomic_output
from ..run_folder import config_entries, point_outputs_into
from .spec import GridPoint, GridSpec, Step


@dataclass
class Run:
    """One point of the grid, ready to execute."""

    run_id: str
    point: GridPoint
    run_dir: str
    steps: list[Step]
    metrics: list[str]
    config: dict  # resolved, with its outputs placed in run_dir
    step_configs: dict[str, dict]  # tag -> the config of that tagged step, outputs in run_dir/tag

    def write_config(self) -> None:
        """``config.yaml`` and ``point.json`` in the run directory, and each tagged step's
        ``<tag>/config.yaml`` (once; atomically)."""
        point = os.path.join(self.run_dir, "point.json")
        if not os.path.exists(point):
            with atomic_output(point) as tmp:
                values = {"values": dict(self.point.values), "seed": self.point.seed}
                Path(tmp).write_text(json.dumps(values, default=str))
        for folder, config in {"": self.config, **self.step_configs}.items():
            path = os.path.join(self.run_dir, folder, "config.yaml")
            if not os.path.exists(path):
                with atomic_output(path) as tmp:  # creates the folder
                    Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False))

    def to_dict(self) -> dict:  # what an executor ships to a worker (plain data)
        steps = [{"run": step.subcommand, "tag": step.tag, "name": step.name} for step in self.steps]
        return dict(
            run_id=self.run_id,
            run_dir=self.run_dir,
            steps=steps,
            metrics=self.metrics,
            label=self.point.label(),
            seed=self.point.seed,
        )


def set_dotted(config: dict, key: str, value) -> None:
    """``config[a][b][c] = value`` for ``key = "a.b.c"``; every level but the last must exist."""
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ValueError(f"{key!r}: {where!r} is not a section of the resolved config (unknown key?)")
        node = child
    node[parts[-1]] = value


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, "-m", "vir_lightning", *args], capture_output=True, text=True, env=env)


def _cli_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def resolve_base(spec: GridSpec) -> dict:
    """The base configs composed and resolved by the CLI (every option present, with its default)."""
    args = [spec.steps[0].subcommand]
    for path in spec.base:
        args += ["--config", path]
    proc = _cli([*args, "--print_config"])
    if proc.returncode != 0:
        raise ValueError(f"{spec.source}: the base config does not parse: {_cli_error(proc)}")
    config = yaml.safe_load(proc.stdout)
    for key, value in spec.args.items():
        set_dotted(config, key, value)
    return config


def _point_config(base: dict, point: GridPoint) -> dict:
    config = copy.deepcopy(base)
    for key, value in point.values:
        set_dotted(config, key, value)
    config["seed_everything"] = point.seed
    return config


def config_hash(config: dict, steps: list[Step] = ()) -> str:
    """A stable hash of a resolved config (before run paths are set) and of its tagged steps, if
    any: same config and steps, same run."""
    tagged = [step.to_dict() for step in steps if step.tag]
    content = {"config": config, "steps": tagged} if tagged else config
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _step_config(config: dict, step: Step) -> dict:
    config = copy.deepcopy(config)
    for key, value in step.args:
        set_dotted(config, key, value)
    return config


def place_outputs(config: dict, run_dir: str) -> dict:
    """A copy of ``config`` with its outputs in ``run_dir`` (:func:`vir_lightning.run_folder.point_outputs_into`),
    so runs never share a folder."""
    config = copy.deepcopy(config)
    point_outputs_into(config.setdefault("trainer", {}), run_dir)
    return config


def _check_model(config: dict, label: str):
    """Model options are a free dict the parser cannot check: build the model on the meta device
    (returned; None for a model that is not built by name)."""
    init = (config.get("model") or {}).get("init_args") or {}
    if "model_name" not in init:
        return None
    import torch

    from ..models import create_model

    try:
        with torch.device("meta"):
            return create_model(init["model_name"], **(init.get("model_kwargs") or {}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"point {label}: the model does not build: {err}") from None


def _check_step_weights(config: dict, step_config: dict, label: str) -> None:
    """A tagged step starts from its run's fit weights (``pretrained``): a step model they cannot
    load into (another depth or width) would fail only after the fit has trained."""
    fit_model, step_model = _check_model(config, label), _check_model(step_config, label)
    if fit_model is None or step_model is None:
        return
    from ..deploy.checkpoints import head_to_reinitialise

    try:
        head_to_reinitialise(step_model, fit_model.state_dict(), "the fit's checkpoint")
    except ValueError as err:
        raise ValueError(
            f"point {label}: {err}: a tagged step starts from them; give it the fit's model options"
        ) from None


def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _check_data(config: dict, label: str) -> None:
    """Data options parse whatever their values: build the data module (it lists its files and
    decodes no image), so a ``batch_size`` of 0, a missing root or a crop scale above 1 is found now
    instead of failing every run at its start."""
    data = config.get("data") or {}
    if not isinstance(data, dict) or not data.get("class_path"):
        return
    try:
        _import(data["class_path"])(**(data.get("init_args") or {}))
    except (TypeError, ValueError, OSError, ImportError, AttributeError) as err:
        raise ValueError(f"point {label}: the data does not build: {err}") from None


#: Packages whose callbacks log no ``train/``, ``val/`` or ``test/`` metric unless they declare
#: ``LOGGED_METRICS`` (checkpointing, LR monitors, EMA, …); a callback from elsewhere may log any.
KNOWN_PACKAGES = ("vir_lightning.", "lightning.")


def _logged_metric_patterns(config: dict) -> list[str] | None:
    """The ``train/``, ``val/``, ``test/`` metrics the run's model and callbacks log, as fnmatch
    patterns (their ``LOGGED_METRICS``); None where a model or callback of unknown kind may log more."""
    model = (config.get("model") or {}).get("class_path")
    callbacks = [
        c.get("class_path")
        for c in config_entries((config.get("trainer") or {}).get("callbacks"))
        if isinstance(c, dict)
    ]
    patterns = []
    for class_path, is_model in [(model, True), *((c, False) for c in callbacks)]:
        try:
            declared = getattr(_import(class_path), "LOGGED_METRICS", None) if class_path else None
        except (ImportError, AttributeError, ValueError):
            return None
        if declared is None and (is_model or not str(class_path).startswith(KNOWN_PACKAGES)):
            return None
        patterns += declared or []
    return patterns


def _check_metric_names(spec: GridSpec, config: dict) -> None:
    """A metric name with a typo in a split that is logged (``test/acc`` for ``test/acc1``) would
    otherwise be found only after every run has trained."""
    patterns = _logged_metric_patterns(config)
    if patterns is None:
        return
    for metric in spec.metrics:
        name = metric.partition("@")[0]
        split = name.split("/", 1)[0]
        if split not in ("train", "val", "test") or any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        logged = [p for p in patterns if p.startswith(split + "/")]
        # the closest, the first declared among equals (test/acc → test/acc1, not test/acc5)
        score, close = max(
            ((difflib.SequenceMatcher(None, name, p).ratio(), p) for p in logged),
            key=lambda pair: pair[0],
            default=(0.0, None),
        )
        hint = f"did you mean {close!r}? " if score >= 0.6 else ""
        raise ValueError(
            f"{spec.source}: metric {metric!r} is not one the runs log: {hint}({split}/ metrics: {', '.join(logged)})"
        )


#: The metric prefixes each subcommand logs (``fit`` also ``test/`` with ``test_after_fit``).
LOGGED_SPLITS = {"fit": {"train", "val"}, "validate": {"val"}, "test": {"test"}}


def _check_steps_and_metrics(spec: GridSpec, config: dict, step_configs: dict, label: str) -> None:
    """Mistakes that would otherwise show only after training: an untagged validate/test with no
    weights to evaluate, and a ``train/``, ``val/`` or ``test/`` metric that no step of the run logs."""
    init = (config.get("model") or {}).get("init_args") or {}
    weights = bool(init.get("pretrained") or config.get("ckpt_path"))
    fits = [(config, "the untagged fit")] if any(s.subcommand == "fit" and not s.tag for s in spec.steps) else []
    fits += [(step_configs[s.tag], f"step {s.tag!r}") for s in spec.steps if s.tag and s.subcommand == "fit"]
    for fit_config, name in fits:
        trainer = fit_config.get("trainer") or {}
        if 0 in (trainer.get("max_epochs"), trainer.get("max_steps")):
            raise ValueError(
                f"{spec.source}: point {label}: {name} trains no step (trainer max_epochs/max_steps of"
                " 0), so every run would fail after its start; give it at least one"
            )
    untagged = [step.subcommand for step in spec.steps if not step.tag]
    for index, subcommand in enumerate(untagged):
        if subcommand != "fit" and "fit" not in untagged[:index] and not weights:
            raise ValueError(
                f"{spec.source}: point {label}: the untagged {subcommand} has no weights to evaluate:"
                " put an untagged fit before it, or set model.init_args.pretrained"
            )

    def splits(step_names: list[str], step_config: dict) -> set[str]:
        logged = set().union(*(LOGGED_SPLITS[name] for name in step_names))
        if "fit" in step_names and step_config.get("test_after_fit"):
            logged.add("test")
        return logged

    by_tag = {step.tag: step for step in spec.steps if step.tag}
    for metric in spec.metrics:
        name, _, tag = metric.partition("@")
        split = name.split("/", 1)[0]
        if split not in ("train", "val", "test") or "/" not in name:
            continue  # a callback's metric: not known here
        logged = splits([by_tag[tag].subcommand], step_configs[tag]) if tag else splits(untagged, config)
        if split not in logged:
            steps = f"step {tag!r} ({by_tag[tag].subcommand}) logs" if tag else f"the untagged steps {untagged} log"
            hint = " (set test_after_fit: true or add a test step)" if split == "test" and not tag else ""
            raise ValueError(
                f"{spec.source}: metric {metric!r}: {steps} only"
                f" {', '.join(sorted(f'{s}/' for s in logged))} metrics{hint}"
            )


def plan(spec: GridSpec, out_dir: str, workers: int = 2) -> list[Run]:
    """Every run of the grid with its resolved config (nothing is written); raises
    ValueError (naming the point and the CLI's message) if any point's config is invalid."""
    base = resolve_base(spec)
    tagged = [step for step in spec.steps if step.tag]
    configs = []
    for point in spec.points():
        config = _point_config(base, point)
        step_configs = {}
        for step in tagged:
            try:
                step_configs[step.tag] = _step_config(config, step)
            except ValueError as err:
                raise ValueError(f"{spec.source}: point {point.label()}, step {step.tag}: {err}") from None
        configs.append((point, config, step_configs))

    def check(item) -> str | None:
        where, subcommand, config = item
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(config, f, sort_keys=False)
        try:
            proc = _cli([subcommand, "--config", f.name, "--print_config"])
        finally:
            os.unlink(f.name)
        return None if proc.returncode == 0 else f"point {where}: {_cli_error(proc)}"

    # Seeds do not change what builds or parses: check one config per combination of axis values
    # (and tagged step).
    distinct = {}
    for point, config, step_configs in configs:
        key = json.dumps(point.values, default=str)
        distinct.setdefault(key, (point.label(), spec.steps[0].subcommand, config))
        for step in tagged:
            distinct.setdefault(
                f"{key}@{step.tag}", (f"{point.label()}, step {step.tag}", step.subcommand, step_configs[step.tag])
            )
    run_ids, first_point = [], {}
    for point, config, _ in configs:
        run_id = f"{spec.name}-{config_hash(config, spec.steps)}"
        if run_id in first_point:  # two points that resolve to one config would be one run, reported twice
            raise ValueError(
                f"{spec.source}: points {first_point[run_id]} and {point.label()} resolve to the same"
                " config (the same run): drop a repeated axis value, or an axis the config ignores"
            )
        first_point[run_id] = point.label()
        run_ids.append(run_id)
    data_checked = set()
    for where, _, config in distinct.values():
        data = json.dumps(config.get("data"), sort_keys=True, default=str)
        try:
            _check_model(config, where)
            if data not in data_checked:  # most grids vary the model only: the data module is built once
                data_checked.add(data)
                _check_data(config, where)
        except ValueError as err:
            raise ValueError(f"{spec.source}: {err}") from None
    for point, config, step_configs in configs[:1]:  # what the steps log depends on the steps, not the point
        _check_steps_and_metrics(spec, config, step_configs, point.label())
        _check_metric_names(spec, config)
    weights_checked = set()
    for point, config, step_configs in configs:
        key = json.dumps(point.values, default=str)  # seeds do not change shapes
        for tag, step_config in step_configs.items():
            if (key, tag) not in weights_checked:
                weights_checked.add((key, tag))
                try:
                    _check_step_weights(config, step_config, f"{point.label()}, step {tag}")
                except ValueError as err:
                    raise ValueError(f"{spec.source}: {err}") from None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        errors = [e for e in pool.map(check, distinct.values()) if e]
    if errors:
        raise ValueError(f"{spec.source}: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))

    runs = []
    for run_id, (point, config, step_configs) in zip(run_ids, configs, strict=True):
        run_dir = os.path.abspath(os.path.join(out_dir, "runs", run_id))
        placed = {tag: place_outputs(c, os.path.join(run_dir, tag)) for tag, c in step_configs.items()}
        runs.append(Run(run_id, point, run_dir, spec.steps, spec.metrics, place_outputs(config, run_dir), placed))
    return runs
