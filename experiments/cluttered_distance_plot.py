"""Accuracy against the garment's distance to the class token, from a cluttered grid's runs.

    python experiments/cluttered_distance_plot.py runs/grids/cluttered_decay [--step TAG] [--bins 6]
        → runs/grids/cluttered_decay/acc1_vs_token_distance[_TAG].png and .csv
          runs/grids/cluttered_decay/acc1_near_far_equal_size[_TAG].csv

Every run of the grid wrote ``test_positions.csv`` (``ObjectPositionBreakdown``): each test image's
outcome and its normalised raster and Manhattan distance to the class token. The images are cut into
``--bins`` equal-count bins of each distance; a line per grid point gives the mean accuracy over its
seeds in each bin (± the sample standard deviation as a band). A flat line means the model reads a
far garment as well as a near one.

Distance and garment size are not independent: a garment must fit on the canvas, so the centres
nearest the edges (the extreme bins) belong to smaller garments, which every model finds harder.
The second table removes that: for each garment side (in pixels) with at least 40 test images, the
near half and the far half by distance (split at that side's median; ties left out) are compared,
and the accuracy gaps are averaged over the sides, weighted by their counts. A positive gap means
near garments are read better than far ones of the same size. Runs whose table lacks the ``side``
column (written before it existed) get it from their config: the same generator, the same layouts.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys

import numpy as np

from vir_lightning.grid.report import point_labels
from vir_lightning.io import atomic_output
from vir_lightning.tasks.position_breakdown import equal_count_bins

KINDS = ("raster", "manhattan")


def read_runs(grid_dir: str, step: str | None) -> dict[str, list[dict]]:
    """point label → one {kind: distances, "correct": outcomes} per finished seed."""
    found_runs, point_values = {}, {}
    for point_file in sorted(glob.glob(os.path.join(grid_dir, "runs", "*", "point.json"))):
        run_dir = os.path.dirname(point_file)
        found = glob.glob(os.path.join(run_dir, step or "", "**", "test_positions.csv"), recursive=True)
        if step is None:  # the run's own test, not a tagged step's
            found = [f for f in found if os.path.relpath(f, run_dir).split(os.sep)[0] in ("csv", "test_positions.csv")]
        if found:
            point_values[run_dir] = _point_values(point_file)
            found_runs[run_dir] = sorted(found)[-1]
    if not found_runs:
        raise ValueError(
            f"no test_positions.csv under {grid_dir}/runs/*/{step or ''}: run the grid first"
            " (its base config must have the ObjectPositionBreakdown callback)"
        )
    labels = point_labels(point_values)
    points: dict[str, list[dict]] = {}
    for run_dir, path in found_runs.items():
        run = _positions(path)
        if run["side"] is None:
            run["side"] = _sides_from_config(os.path.join(run_dir, step or "", "config.yaml"), run)
        points.setdefault(labels[run_dir], []).append(run)
    return points


def _sides_from_config(config_path: str, run: dict) -> np.ndarray | None:
    """Each test image's garment side, regenerated from the run's data config (None: not the cluttered
    data, or no config). The regenerated centres must be the ones the run recorded."""
    import yaml

    from vir_lightning.data import ClutteredFashionMNISTDataModule

    if not os.path.exists(config_path):  # not a grid run's folder: no equal-size table for it
        return None
    try:
        with open(config_path) as f:
            data = yaml.safe_load(f)["data"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ValueError(
            f"{config_path}: cannot read the run's data config ({type(err).__name__}: {err}); rerun that run's test"
        ) from None
    if not str(data.get("class_path", "")).endswith("ClutteredFashionMNISTDataModule"):
        return None
    try:
        module = ClutteredFashionMNISTDataModule(**(data.get("init_args") or {}))
        module.setup("test")
        source = module.source("test")
        layouts = [source.layout(int(i)) for i in run["index"]]
    except (OSError, TypeError, ValueError) as err:
        raise ValueError(
            f"{config_path}: cannot regenerate the run's test images ({type(err).__name__}: {err});"
            " rerun that run's test to record the garment sizes"
        ) from None
    centers = np.array([layout["center"] for layout in layouts], dtype=float).reshape(-1, 2)
    if not np.array_equal(centers, run["center"]):
        raise ValueError(
            f"{config_path}: the generator no longer places the run's garments where its"
            " test_positions.csv says; rerun that run's test to record the garment sizes"
        )
    return np.array([layout["side"] for layout in layouts])


def _point_values(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)["values"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not a grid run's point file ({type(err).__name__}: {err});"
            " rerun the grid, or move that run folder out of runs/"
        ) from None


def _positions(path: str) -> dict[str, np.ndarray]:
    """One run's ``test_positions.csv``: {kind: distances, "correct": 0/1 outcomes}."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        run = {kind: np.array([float(r[kind]) for r in rows]) for kind in KINDS}
        run["correct"] = np.array([int(r["correct"]) for r in rows])
        run["index"] = np.array([int(r["index"]) for r in rows])
        run["center"] = np.array([[float(r["center_y"]), float(r["center_x"])] for r in rows]).reshape(-1, 2)
        run["side"] = np.array([int(r["side"]) for r in rows]) if rows and rows[0].get("side") else None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not a readable test_positions.csv ({type(err).__name__}: {err}); rerun that run's test"
        ) from None
    if not len(run["correct"]):
        raise ValueError(f"{path}: no test images in it; rerun that run's test")
    return run


def binned(points: dict[str, list[dict]], kind: str, bins: int) -> tuple[np.ndarray, dict]:
    """Bin centres and, per point, (mean, std) accuracy over seeds in each equal-count bin."""
    reference = next(iter(points.values()))[0][kind]  # the same test images in every run
    _, edges = equal_count_bins(reference, reference, bins)
    curves = {}
    for label, runs in points.items():
        per_seed = []
        for run in runs:
            index, _ = equal_count_bins(run[kind], reference, bins)
            per_seed.append([run["correct"][index == b].mean() if (index == b).any() else np.nan for b in range(bins)])
        per_seed = np.array(per_seed)
        std = per_seed.std(0, ddof=1) if len(per_seed) > 1 else np.zeros(bins)
        curves[label] = (per_seed.mean(0), std, len(runs))
    return (edges[:-1] + edges[1:]) / 2, curves


def near_far_gap_at_equal_size(run: dict, kind: str, min_images: int = 40) -> float:
    """Accuracy of the near half minus the far half, garments of the same side compared (module doc)."""
    gaps, weights = [], []
    for side in np.unique(run["side"]):
        same = run["side"] == side
        if same.sum() < min_images:
            continue
        median = np.median(run[kind][same])
        near, far = same & (run[kind] < median), same & (run[kind] > median)
        if near.any() and far.any():
            gaps.append(run["correct"][near].mean() - run["correct"][far].mean())
            weights.append(same.sum())
    return float(np.average(gaps, weights=weights)) if gaps else float("nan")


def equal_size_table(points: dict[str, list[dict]]) -> list[list]:
    """Per point: seeds and, per distance kind, the mean and std over seeds of the equal-size gap."""
    table = [["point", "seeds", *[f"{kind}_{stat}" for kind in KINDS for stat in ("gap_mean", "gap_std")]]]
    for label, runs in points.items():
        runs = [run for run in runs if run["side"] is not None]
        if not runs:
            continue
        gaps = {kind: np.array([near_far_gap_at_equal_size(run, kind) for run in runs]) for kind in KINDS}
        counted = np.isfinite(gaps[KINDS[0]])  # a seed without a side of enough images has no gap
        if not counted.any():
            continue
        cells = []
        for kind in KINDS:
            values = gaps[kind][counted]
            cells += [f"{values.mean():.4f}", f"{values.std(ddof=1) if len(values) > 1 else 0.0:.4f}"]
        table.append([label, int(counted.sum()), *cells])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid_dir", help="a grid's output folder (runs/grids/<spec name>)")
    parser.add_argument("--step", default=None, help="a tagged step's test (e.g. 112px) instead of the run's own")
    parser.add_argument("--bins", type=int, default=6)
    args = parser.parse_args(argv)
    if args.bins < 2:
        raise SystemExit("error: --bins must be at least 2")
    try:
        points = read_runs(args.grid_dir, args.step)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    images = min(len(run["correct"]) for runs in points.values() for run in runs)
    if args.bins > images:
        raise SystemExit(
            f"error: --bins {args.bins}: more bins than the {images} test images of a run; give at most {images}"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suffix = f"_{args.step}" if args.step else ""
    stem = os.path.join(args.grid_dir, "acc1_vs_token_distance" + suffix)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    table = [["distance", "point", "seeds", *[f"bin{b}" for b in range(args.bins)]]]
    for axis, kind in zip(axes, KINDS, strict=True):
        centres, curves = binned(points, kind, args.bins)
        for label, (mean, std, seeds) in curves.items():
            axis.plot(centres, mean, marker="o", label=f"{label} ({seeds} seeds)")
            axis.fill_between(centres, mean - std, mean + std, alpha=0.15)
            table.append([kind, label, seeds, *[f"{m:.4f}" for m in mean]])
        axis.set_xlabel(f"{kind} distance to the class token (0 = next to it, 1 = farthest)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    with atomic_output(stem + ".png") as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    with atomic_output(stem + ".csv") as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(table)
    print(f"wrote {stem}.png and {stem}.csv ({len(points)} points)")
    gaps = equal_size_table(points)
    if len(gaps) == 1:
        print("no run has garment sizes with enough test images per size: no equal-size table")
    else:
        gaps_path = os.path.join(args.grid_dir, f"acc1_near_far_equal_size{suffix}.csv")
        with atomic_output(gaps_path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(gaps)
        print(f"near minus far accuracy at equal garment size (points of %), mean ± std over seeds → {gaps_path}")
        for label, seeds, *cells in gaps[1:]:
            shown = [
                f"{kind} {100 * float(m):+.1f} ± {100 * float(sd):.1f}"
                for kind, m, sd in zip(KINDS, cells[::2], cells[1::2], strict=True)
            ]
            print(f"  {label} ({seeds} seeds): {', '.join(shown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
