"""Grid specs: a YAML file naming base configs, axes, seeds and metrics, expanded into runs.

    name: decay_1d_vs_2d                 # optional; default: the file's stem
    base: configs/quickstart.yaml        # or a list, composed in order like repeated --config
    subcommands: [fit]                   # fit / validate / test, run in order in each run
    args:                                # the same for every run (dotted CLI keys)
      trainer.max_epochs: 2
    axes:                                # every combination of these
      model.init_args.model_kwargs.decay: [1d, 2d]
    zip:                                 # optional: groups whose lists vary together
      - model.init_args.model_kwargs.pooling: [token_last, avg]
        model.init_args.model_kwargs.multipass: [false, false]
    seeds: [0, 1, 2]
    metrics: [test/acc1]

A subcommand may also be a tagged step that starts from the weights the run's ``fit`` selected
(its best checkpoint) with its own dotted args, in its own folder ``<run dir>/<tag>``; the metrics
it logs are collected as ``<metric>@<tag>``. This is how a run is evaluated or fine-tuned at
another resolution:

    subcommands:
      - fit
      - {run: test, tag: 56px, args: {data.init_args.img_size: 56}}
      - {run: fit, tag: ft56px, args: {data.init_args.img_size: 56, trainer.max_epochs: 1}}
    metrics: [test/acc1, test/acc1@56px, test/acc1@ft56px]

Keys are the CLI's dotted keys (``--trainer.max_epochs`` → ``trainer.max_epochs``); a key may also
reach into a dict-valued option such as ``model.init_args.model_kwargs``. Paths in the spec are
relative to the current directory, as on the command line.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``3e-4`` is the number 0.0003 (PyYAML, on YAML 1.1,
    reads it as a string, so ``lr: [3e-4, 0.0003]`` was two runs of one value, and ``3e-4`` would
    reach the CLI as text). The CLI's jsonargparse reads it as a number too."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


SPEC_KEYS = {"name", "base", "subcommands", "args", "axes", "zip", "seeds", "metrics"}
SUBCOMMANDS = ("fit", "validate", "test")
STEP_KEYS = {"run", "tag", "args"}
#: Config keys the planner sets for every run, so a spec must not: what each is for instead.
PLANNER_KEYS = {
    "seed_everything": "list seeds under seeds:",
    "trainer.default_root_dir": "each run gets its own folder under --out",
}
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a folder name and a metric suffix


@dataclass(frozen=True)
class Step:
    """One subcommand of a run. Untagged: in the run's own folder. Tagged: in ``<run dir>/<tag>``,
    starting from the weights of the run's fit, with ``args`` set on top of the run's config."""

    subcommand: str
    tag: str | None = None
    args: tuple[tuple[str, object], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.subcommand}@{self.tag}" if self.tag else self.subcommand

    def to_dict(self) -> dict:
        return {"run": self.subcommand, "tag": self.tag, "args": dict(self.args)}


@dataclass(frozen=True)
class GridPoint:
    """One run: the values of every axis (in spec order) and the seed."""

    values: tuple[tuple[str, object], ...]
    seed: int

    def overrides(self) -> dict:
        return dict(self.values)

    def label(self) -> str:
        return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in self.values) or "base"


@dataclass
class GridSpec:
    name: str
    base: list[str]
    steps: list[Step]
    args: dict
    axes: dict[str, list]
    zipped: list[dict[str, list]]
    seeds: list[int]
    metrics: list[str]
    source: str = ""
    axis_names: list[str] = field(default_factory=list)

    def points(self) -> list[GridPoint]:
        """Every (axis values, seed): the product of the axes and of each zip group, then seeds."""
        factors = [[((key, value),) for value in values] for key, values in self.axes.items()]
        for group in self.zipped:
            keys = list(group)
            factors.append([tuple(zip(keys, combo, strict=True)) for combo in zip(*group.values(), strict=True)])
        combos = [sum(parts, ()) for parts in itertools.product(*factors)] if factors else [()]
        return [GridPoint(combo, seed) for combo in combos for seed in self.seeds]


def _fail(source: str, message: str) -> ValueError:
    return ValueError(f"{source}: {message}")


def _dotted_mapping(source: str, what: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise _fail(source, f"{what} must be a mapping of dotted keys (e.g. trainer.max_epochs: 2)")
    return dict(value)


def _value_lists(source: str, what: str, mapping: dict) -> dict[str, list]:
    for key, values in mapping.items():
        if not isinstance(values, list) or not values:
            raise _fail(source, f"{what} {key!r} must be a non-empty list of values, got {values!r}")
    return mapping


def load_spec(path: str) -> GridSpec:
    """Read and check a grid spec. Raises ValueError naming the file and the problem."""
    source = str(path)
    if os.path.isdir(source):
        raise ValueError(f"grid spec {source} is a folder; give the spec's YAML file")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"grid spec {source} does not exist")
    try:
        raw = yaml.load(Path(source).read_text(), Loader=SpecLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        # PyYAML's message spans several lines (with a caret under the spot): one line here
        raise _fail(source, f"is not valid YAML ({' '.join(str(err).split())})") from None
    except UnicodeDecodeError as err:
        raise _fail(source, f"is not a text (UTF-8) file ({err.reason} at byte {err.start})") from None
    if not isinstance(raw, dict):
        raise _fail(source, "must be a YAML mapping with base, axes, seeds, metrics")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise _fail(source, f"unknown keys {unknown}; a grid spec has {sorted(SPEC_KEYS)}")

    base = raw.get("base")
    base = [base] if isinstance(base, str) else base
    if not base or not all(isinstance(b, str) for b in base):
        raise _fail(source, "base must name a config file (or a list of them)")
    missing = [b for b in base if not os.path.isfile(b)]
    if missing:
        raise _fail(source, f"base config {missing[0]} does not exist")

    steps = _steps(source, raw.get("subcommands", ["fit"]))

    args = _dotted_mapping(source, "args", raw.get("args"))
    axes = _value_lists(source, "axis", _dotted_mapping(source, "axes", raw.get("axes")))
    zipped_raw = raw.get("zip") or []
    if not isinstance(zipped_raw, list):
        raise _fail(source, "zip must be a list of groups (mappings of dotted keys to equal-length lists)")
    zipped = []
    for group in zipped_raw:
        group = _value_lists(source, "zipped axis", _dotted_mapping(source, "a zip group", group))
        lengths = {len(v) for v in group.values()}
        if len(lengths) > 1:
            raise _fail(source, f"zip group {sorted(group)} has lists of different lengths {sorted(lengths)}")
        zipped.append(group)
    names = list(axes) + [key for group in zipped for key in group]
    repeated = sorted({k for k in names if names.count(k) > 1} | (set(names) & set(args)))
    if repeated:
        raise _fail(source, f"keys {repeated} are set more than once (axes, zip groups and args must not overlap)")
    every_key = [*names, *args]
    nested = sorted(
        {f"{outer} / {inner}" for outer in every_key for inner in every_key if inner.startswith(outer + ".")}
    )
    if nested:  # the whole mapping would replace the key inside it, or the other way round, silently
        raise _fail(source, f"keys {nested} overlap: one sets a mapping that holds the other; set only the inner keys")
    for key in every_key:
        owner = next((k for k in PLANNER_KEYS if key == k or key.startswith(k + ".") or k.startswith(key + ".")), None)
        if owner:
            raise _fail(
                source, f"{key!r} cannot be set: the grid sets {owner} for every run itself ({PLANNER_KEYS[owner]})"
            )

    seeds = raw.get("seeds", [0])
    integers = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not seeds or not integers:
        raise _fail(source, f"seeds={seeds!r}; expected a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise _fail(source, f"seeds={seeds!r} repeats a seed")
    if not all(0 <= s <= 2**32 - 1 for s in seeds):
        raise _fail(
            source, f"seeds={seeds!r}: every seed must lie in 0 … 2**32 − 1 (what Lightning's seed_everything takes)"
        )
    metrics = raw.get("metrics")
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise _fail(source, "metrics must list the logged metrics to collect, e.g. [test/acc1]")
    tags = {step.tag for step in steps if step.tag}
    for metric in metrics:
        tag = metric.partition("@")[2]
        if "@" in metric and tag not in tags:
            raise _fail(source, f"metric {metric!r} names no step tagged {tag!r} (tags: {sorted(tags)})")
    name = raw.get("name") or Path(source).stem
    if "name" in raw and (not isinstance(name, str) or not TAG_PATTERN.fullmatch(name)):
        # it names the results folder runs/grids/<name> and prefixes every run id
        raise _fail(source, f"name={name!r} is invalid; expected letters, digits, '_', '.', '-' (it names a folder)")
    return GridSpec(name, base, steps, args, axes, zipped, seeds, metrics, source, names)


def _steps(source: str, raw) -> list[Step]:
    expected = (
        f"expected a list of {list(SUBCOMMANDS)} or tagged steps "
        "{run: test, tag: 56px, args: {data.init_args.img_size: 56}}"
    )
    if not isinstance(raw, list) or not raw:
        raise _fail(source, f"subcommands={raw!r}; {expected}")
    steps = []
    for entry in raw:
        if isinstance(entry, str) and entry in SUBCOMMANDS:
            steps.append(Step(entry))
            continue
        if not isinstance(entry, dict) or set(entry) - STEP_KEYS or entry.get("run") not in SUBCOMMANDS:
            raise _fail(source, f"subcommands: {entry!r} is not a subcommand; {expected}")
        tag = entry.get("tag")
        if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
            raise _fail(source, f"step {entry!r} needs a tag of letters, digits, '_', '.', '-' (it names a folder)")
        if not any(step.subcommand == "fit" and not step.tag for step in steps):
            raise _fail(source, f"step {tag!r} starts from the run's fit: put an untagged fit before it")
        args = _dotted_mapping(source, f"args of step {tag!r}", entry.get("args"))
        steps.append(Step(entry["run"], tag, tuple(args.items())))
    # A step is known by its tag, or by its subcommand when untagged (a folder, a metric suffix).
    keys = [step.tag or step.subcommand for step in steps]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise _fail(source, f"subcommands repeat {repeated}: each tag, and each untagged subcommand, at most once")
    return steps
