"""Collect the numbers of one mini downstream run, and print the table of all of them.

    summarize.py collect WORK_DIR LOG --train-seconds S   → WORK_DIR/result.json
    summarize.py flip WORK_DIR TEST_LOG                   → mIoU_flip (`mim test --tta`) added to it
    summarize.py table OUT                                → a Markdown table of OUT/*/result.json
                                                            (seeds NAME, NAME_s1, … pooled: mean ± std)

The numbers come from the `mim train` log: the last validation line (COCO bbox/segm mAP or mIoU, and
its ``time:``, the mean seconds per validation image at batch 1, which is the inference time per
image, data loading included), every earlier validation line (the learning curve), and the wall time
of the whole command measured by run.sh. A segmentation run's test-time-flip score comes from the last
line of its `mim test --tta` log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from vir_lightning.grid.report import format_mean_std
from vir_lightning.io import atomic_output

# "Epoch(val) [8][100/100]    coco/bbox_mAP: 0.512  ...  time: 0.1234" (mmdet, by epoch) or
# "Iter(val) [100/100]    aAcc: 97.1  mIoU: 80.2  ...  time: 0.05" (mmseg, by iteration).
VAL_LINE = re.compile(r"(?:Epoch|Iter)\(val\) (?:\[(\d+)\])?\[(\d+)/(\d+)\]\s+(.*)")
METRICS = {
    "bbox_mAP": r"coco/bbox_mAP: ([\d.]+)",
    "segm_mAP": r"coco/segm_mAP: ([\d.]+)",
    "mIoU": r"\bmIoU: ([\d.]+)",
    "aAcc": r"\baAcc: ([\d.]+)",
}
TEST_LINE = re.compile(r"Iter\(test\) \[(\d+)/\1\]\s+(.*\bmIoU: .*)")  # the closing metrics line
TRAIN_ITER = re.compile(r"(?:Epoch|Iter)\(train\)\s+(?:\[(\d+)\])?\[\s*(\d+)/(\d+)\]")


def line_metrics(text: str) -> dict:
    """The METRICS a metrics line names, and its ``time:`` (seconds per image; None if absent)."""
    metrics = {k: float(m.group(1)) for k, p in METRICS.items() if (m := re.search(p, text))}
    time = re.search(r"\btime: ([\d.]+)", text)
    return {**metrics, "seconds_per_image": float(time.group(1)) if time else None}


def parse_log(text: str) -> dict:
    curve = []
    iters_per_epoch = 1
    last_train_iter = 0
    for line in text.splitlines():
        train = TRAIN_ITER.search(line)
        if train:
            epoch, it, total = train.groups()
            iters_per_epoch = int(total) if epoch else 1
            last_train_iter = (int(epoch) - 1) * int(total) + int(it) if epoch else int(it)
        match = VAL_LINE.search(line)
        if not match or not any(re.search(p, match.group(4)) for p in METRICS.values()):
            continue
        epoch, done, total, rest = match.groups()
        point = line_metrics(rest)
        point["train_iter"] = int(epoch) * iters_per_epoch if epoch else last_train_iter
        curve.append(point)
    if not curve:
        raise ValueError("the log has no validation metrics line: the run did not finish")
    return {**curve[-1], "curve": curve}


def collect(work_dir: str, log: str, train_seconds: int) -> dict:
    with open(log) as f:
        result = parse_log(f.read())
    result["train_seconds"] = train_seconds
    result["name"] = os.path.basename(os.path.normpath(work_dir))
    with atomic_output(os.path.join(work_dir, "result.json")) as tmp, open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    return result


def add_flip(work_dir: str, test_log: str) -> dict:
    """Add the test-time-flip mIoU/aAcc and its seconds per image to ``WORK_DIR/result.json``."""
    with open(test_log) as f:
        lines = [m.group(2) for line in f if (m := TEST_LINE.search(line))]
    if not lines:
        raise ValueError(f"{test_log}: no closing test metrics line: the flip test did not finish")
    path = os.path.join(work_dir, "result.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: collect the training run first (summarize.py collect)")
    with open(path) as f:
        try:
            result = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON ({e}): collect the training run again") from e
    flip = line_metrics(lines[-1])
    for key in ("mIoU", "aAcc", "seconds_per_image"):
        result[f"{key}_flip"] = flip.get(key)
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    return result


SEED_SUFFIX = re.compile(r"_s\d+$")  # run.sh names seed S > 0 runs NAME_sS


def _cell(values: list, fmt: str) -> str:
    """One run's metric over its seeds; "–" where the run has no such metric."""
    return format_mean_std([v for v in values if v is not None], fmt, empty="–")


def table(out: str) -> str:
    """A Markdown table of ``OUT/*/result.json``: one row per run, its seeds (NAME, NAME_s1, …) pooled."""
    runs: dict[str, list[dict]] = {}
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "result.json")
        if os.path.isfile(path):
            with open(path) as f:
                runs.setdefault(SEED_SUFFIX.sub("", name), []).append(json.load(f))
    rows = [
        "| run | seeds | bbox mAP | segm mAP | mIoU (%) | mIoU, test-time flip (%) | aAcc (%) | train time"
        " | inference s/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, results in runs.items():
        cells = [
            _cell([r.get(key) for r in results], fmt)
            for key, fmt in (
                ("bbox_mAP", ".3f"),
                ("segm_mAP", ".3f"),
                ("mIoU", ".2f"),
                ("mIoU_flip", ".2f"),
                ("aAcc", ".2f"),
            )
        ]
        minutes = _cell([r["train_seconds"] / 60 for r in results], ".1f")
        per_image = _cell([r.get("seconds_per_image") for r in results], ".3f")
        rows.append(f"| {name} | {len(results)} | {' | '.join(cells)} | {minutes} min | {per_image} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("collect")
    c.add_argument("work_dir")
    c.add_argument("log")
    c.add_argument("--train-seconds", type=int, required=True)
    f = sub.add_parser("flip")
    f.add_argument("work_dir")
    f.add_argument("test_log")
    t = sub.add_parser("table")
    t.add_argument("out")
    args = parser.parse_args(argv)
    try:
        if args.verb == "collect":
            r = collect(args.work_dir, args.log, args.train_seconds)
            print(f"{r['name']}: " + ", ".join(f"{k} {r[k]}" for k in METRICS if k in r))
        elif args.verb == "flip":
            r = add_flip(args.work_dir, args.test_log)
            print(f"{r['name']}: mIoU_flip {r['mIoU_flip']}")
        else:
            print(table(args.out))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
