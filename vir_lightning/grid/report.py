"""A grid's results: ``results.csv`` (one row per run), ``results.md`` (mean ± std over seeds per
point) and ``<metric>_vs_<axis>.png`` (one plot per axis; one ``<metric>_vs_point.png`` when the
points are zipped dicts), all written atomically, so a grid killed at any moment leaves the last
complete tables behind."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from ..io import atomic_output, write_csv_atomically
from .plan import Run
from .spec import GridSpec


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _canonical(value) -> str | object:
    """A value as a dictionary key: a dict or list (a zipped ``model_kwargs``) by its JSON."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else value


def _group_key(values) -> tuple:
    return tuple(_canonical(v) for v in values)


def point_labels(points: dict[str, dict]) -> dict[str, str]:
    """Point name → a short label naming only what tells the points apart.

    ``points`` maps a name to the point's values (dotted keys; a dict value such as a zipped
    ``model_kwargs`` is spread into its own keys). Left out: a key with one value wherever it is
    set, if it is set on every point, or, for a key from a dict, on every point whose dict is not
    empty (the shared ``embed_dim`` of ``cluttered_decay.yaml``, not set for H-ViR). Kept: every
    other key, so ``directions=4, pooling=avg`` both show. A single point (named once per seed,
    say) keeps all its values.
    """
    flat: dict[str, dict] = {}
    spread: dict[str, str] = {}  # a key from a dict value → that dict's key
    for name, values in points.items():
        flat[name] = {}
        for key, value in values.items():
            if isinstance(value, dict):
                flat[name].update(value)
                spread.update({k: key for k in value})
            else:
                flat[name][_short(key)] = value
    keys = list(dict.fromkeys(k for values in flat.values() for k in values))  # first-seen order

    def shared(key: str) -> bool:  # one value wherever it is set, and set wherever it could be
        if len({_canonical(values[key]) for values in flat.values() if key in values}) > 1:
            return False
        could = [n for n, values in points.items() if key not in spread or values.get(spread[key])]
        return all(key in flat[n] for n in could)

    distinct = {json.dumps(values, sort_keys=True, default=str) for values in points.values()}  # seeds repeat
    shown = [k for k in keys if not shared(k)] if len(distinct) > 1 else keys
    return {
        name: ", ".join(f"{k}={values[k]}" for k in shown if k in values) or "base" for name, values in flat.items()
    }


def result_rows(spec: GridSpec, runs: list[Run], statuses: dict[str, dict | None]) -> list[dict]:
    rows = []
    for run in runs:
        status = statuses.get(run.run_id) or {}
        row = {"run_id": run.run_id, "seed": run.point.seed, "state": status.get("state", "pending")}
        row.update({_short(k): v for k, v in run.point.values})
        row.update({m: (status.get("metrics") or {}).get(m, "") for m in spec.metrics})
        row.update(seconds=status.get("seconds", ""))
        # each step's own wall time (a step that ended before a kill keeps its time)
        step_seconds = status.get("steps") or {}
        row.update({column: step_seconds.get(name, "") for column, name in _step_time_columns(spec).items()})
        row.update(reason=status.get("reason", ""), log=status.get("log", ""), run_dir=run.run_dir)
        rows.append(row)
    return rows


def format_mean_std(values: list[float], fmt: str = ".4f", empty: str = "—") -> str:
    """One value as is, several as mean ± sample standard deviation (over seeds), none as ``empty``."""
    if not values:
        return empty
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def _step_time_columns(spec: GridSpec) -> dict[str, str]:
    """Column ``seconds <step>`` → step name, when a run has several steps (else only its total)."""
    return {f"seconds {step.name}": step.name for step in spec.steps} if len(spec.steps) > 1 else {}


def points_table(spec: GridSpec, rows: list[dict]) -> list[dict]:
    """Per combination of axis values: n finished runs, and the values over those runs of each
    metric and each step's seconds."""
    axes = [_short(k) for k in spec.axis_names]
    groups: dict[tuple, tuple[tuple, list[dict]]] = {}  # key → (the axis values, their runs)
    for row in rows:
        values = tuple(row[a] for a in axes)
        groups.setdefault(_group_key(values), (values, []))[1].append(row)
    table = []
    for values, members in groups.values():
        done = [r for r in members if r["state"] == "done"]
        entry = dict(zip(axes, values, strict=True))
        entry["runs"] = f"{len(done)}/{len(members)}"
        for column in [*spec.metrics, *_step_time_columns(spec)]:
            entry[column] = [float(r[column]) for r in done]
        table.append(entry)
    return table


def _point_columns(table: list[dict], axes: list[str]) -> tuple[list[str], list[list[str]]]:
    """The columns naming each point: one per axis, or, when an axis holds dicts (a zipped
    ``model_kwargs``), a single ``point`` column of short labels (``point_labels``)."""
    if any(isinstance(entry[a], dict) for entry in table for a in axes):
        labels = point_labels({str(i): {a: entry[a] for a in axes} for i, entry in enumerate(table)})
        return ["point"], [[labels[str(i)]] for i in range(len(table))]
    return axes, [[str(entry[a]) for a in axes] for entry in table]


def markdown(spec: GridSpec, rows: list[dict], command: str) -> str:
    axes = [_short(k) for k in spec.axis_names]
    lines = [
        f"# Grid {spec.name}",
        "",
        f"`{command}`",
        "",
        f"Base: {', '.join(spec.base)}; seeds {spec.seeds}; mean ± sample std over finished seeds.",
        "",
    ]
    table = points_table(spec, rows)
    point_header, point_cells = _point_columns(table, axes)
    header = [*point_header, "runs", *spec.metrics]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for entry, cells in zip(table, point_cells, strict=True):
        cells = [*cells, entry["runs"], *[format_mean_std(entry[m]) for m in spec.metrics]]
        lines.append("| " + " | ".join(cells) + " |")
    times = _step_time_columns(spec)
    if times:
        lines += ["", "Wall time per step in seconds (mean over finished runs; includes the CLI's start-up):", ""]
        header = [*point_header, *times.values()]
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for entry, cells in zip(table, point_cells, strict=True):
            if entry[spec.metrics[0]]:  # some runs of this point finished
                cells = [*cells, *[f"{statistics.mean(entry[t]):.0f}" for t in times]]
                lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["state"] == "failed"]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {r['run_id']} (seed {r['seed']}): {r['reason']} — log: {r['log']}" for r in failed]
    return "\n".join(lines) + "\n"


def _mean_std_of(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _save_plot(
    ax, spec: GridSpec, metric: str, against: str, out_dir: str, has_lines: bool, overwrite: bool = False
) -> str:
    import matplotlib.pyplot as plt

    ax.set_xlabel(against)
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"{spec.name}: {metric} vs {against}", fontsize=9)
    ax.grid(True, alpha=0.3)
    if has_lines:
        ax.legend(fontsize=7)
    path = os.path.join(out_dir, f"{metric.replace('/', '_')}_vs_{against}.png")
    with atomic_output(path, overwrite=overwrite, run=report_run(spec)) as tmp:
        ax.figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(ax.figure)
    return path


def plot_axes(spec: GridSpec, rows: list[dict], out_dir: str, overwrite: bool = False) -> list[str]:
    """For each axis: the first metric's mean ± std against that axis's values, one line per
    combination of the other axes (when an axis holds dicts, one plot against the points' short
    labels instead). With tagged steps, also ``<metric>_vs_step.png``: the metric
    in the run's own steps and in each tagged step that logged it, one line per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = spec.metrics[0]
    axes = [_short(k) for k in spec.axis_names]
    table = points_table(spec, rows)
    header, point_cells = _point_columns(table, axes)
    zipped = header == ["point"]  # an axis holds dicts: the points go by their short labels
    # each point's name in a legend or on an x-axis: its short label, or axis=value for every axis
    names = [
        cells[0] if zipped else ", ".join(f"{a}={c}" for a, c in zip(axes, cells, strict=True)) for cells in point_cells
    ]
    written = []
    if zipped:  # one plot against the points' short labels; per-axis plots would show whole dicts
        _, ax = plt.subplots(figsize=(max(5.6, 1.2 * len(table)), 4))
        shown = [(name, entry) for name, entry in zip(names, table, strict=True) if entry[metric]]
        if shown:
            means, stds = zip(*(_mean_std_of(e[metric]) for _, e in shown), strict=True)
            ax.errorbar([name for name, _ in shown], means, yerr=stds, marker="o", capsize=4, linestyle="none")
            ax.tick_params(axis="x", labelsize=7, labelrotation=25)
            for label in ax.get_xticklabels():  # long labels end under their point
                label.set_horizontalalignment("right")
        written.append(_save_plot(ax, spec, metric, "point", out_dir, False, overwrite))
    for axis in [] if zipped else axes:
        others = [a for a in axes if a != axis]
        _, ax = plt.subplots(figsize=(5.6, 4))
        series: dict[tuple, tuple[tuple, list]] = {}  # key → (the other axes' values, their points)
        for entry in table:
            if entry[metric]:
                values = tuple(entry[o] for o in others)
                series.setdefault(_group_key(values), (values, []))[1].append(entry)
        for key, entries in series.values():
            means, stds = zip(*(_mean_std_of(e[metric]) for e in entries), strict=True)
            name = ", ".join(f"{o}={v}" for o, v in zip(others, key, strict=True)) or metric
            ax.errorbar([str(e[axis]) for e in entries], means, yerr=stds, marker="o", capsize=4, label=name)
        written.append(_save_plot(ax, spec, metric, axis, out_dir, bool(series), overwrite))

    steps = [("fit", metric)] + [
        (s.tag, f"{metric}@{s.tag}") for s in spec.steps if s.tag and f"{metric}@{s.tag}" in spec.metrics
    ]
    if len(steps) > 1:
        _, ax = plt.subplots(figsize=(5.6, 4))
        drawn = False
        for entry, name in zip(table, names, strict=True):
            shown = [(tag, m) for tag, m in steps if entry[m]]
            if shown:
                means, stds = zip(*(_mean_std_of(entry[m]) for _, m in shown), strict=True)
                ax.errorbar([tag for tag, _ in shown], means, yerr=stds, marker="o", capsize=4, label=name or metric)
                drawn = True
        written.append(_save_plot(ax, spec, metric, "step", out_dir, drawn, overwrite))
    return written


def report_run(spec: GridSpec) -> str:
    """What the report files of ``--out`` belong to: another grid's are never replaced silently."""
    return f"grid {spec.name}"


#: The report files every grid writes into its ``--out`` (the plots are named after metrics and axes).
REPORT_FILES = ("results.csv", "results.md")


def write_reports(
    spec: GridSpec, runs: list[Run], statuses: dict, out_dir: str, command: str, overwrite: bool = False
) -> None:
    """``results.csv``, ``results.md`` and the plots in ``out_dir``, replacing earlier ones only as
    :func:`~vir_lightning.io.check_output_path` allows (this grid's own, or any with ``overwrite``)."""
    rows = result_rows(spec, runs, statuses)
    fields = list(rows[0]) if rows else ["run_id"]
    write_csv_atomically(
        os.path.join(out_dir, REPORT_FILES[0]),
        fields,
        ([r[f] for f in fields] for r in rows),
        overwrite=overwrite,
        run=report_run(spec),
    )
    with atomic_output(os.path.join(out_dir, REPORT_FILES[1]), overwrite=overwrite, run=report_run(spec)) as tmp:
        Path(tmp).write_text(markdown(spec, rows, command))
    if any(r["state"] == "done" for r in rows):
        plot_axes(spec, rows, out_dir, overwrite)
