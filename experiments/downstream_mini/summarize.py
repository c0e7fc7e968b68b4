"""Collect the numbers of one mini downstream run, and print the table of all of them.

    summarize.py collect WORK_DIR LOG --train-seconds S   → WORK_DIR/result.json
    summarize.py table OUT                                → a Markdown table of OUT/*/result.json

The numbers come from the `mim train` log: the last validation line (COCO bbox/segm mAP or mIoU, and
its ``time:``, the mean seconds per validation image at batch 1, which is the inference time per
image, data loading included), every earlier validation line (the learning curve), and the wall time
of the whole command measured by run.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from vir_lightning.io import atomic_output

# "Epoch(val) [8][100/100]    coco/bbox_mAP: 0.512  ...  time: 0.1234" (mmdet, by epoch) or
# "Iter(val) [100/100]    aAcc: 97.1  mIoU: 80.2  ...  time: 0.05" (mmseg, by iteration).
VAL_LINE = re.compile(r"(?:Epoch|Iter)\(val\) (?:\[(\d+)\])?\[(\d+)/(\d+)\]\s+(.*)")
METRICS = {"bbox_mAP": r"coco/bbox_mAP: ([\d.]+)", "segm_mAP": r"coco/segm_mAP: ([\d.]+)",
           "mIoU": r"\bmIoU: ([\d.]+)", "aAcc": r"\baAcc: ([\d.]+)"}
TRAIN_ITER = re.compile(r"(?:Epoch|Iter)\(train\)\s+(?:\[(\d+)\])?\[\s*(\d+)/(\d+)\]")


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
        point = {k: float(m.group(1)) for k, p in METRICS.items() if (m := re.search(p, rest))}
        point["train_iter"] = int(epoch) * iters_per_epoch if epoch else last_train_iter
        time = re.search(r"\btime: ([\d.]+)", rest)
        point["seconds_per_image"] = float(time.group(1)) if time else None
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


def table(out: str) -> str:
    rows = ["| run | bbox mAP | segm mAP | mIoU (%) | aAcc (%) | train time | inference s/image |",
            "|---|---|---|---|---|---|---|"]
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "result.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            r = json.load(f)
        cells = [f"{r[key]:{fmt}}" if r.get(key) is not None else "–" for key, fmt in
                 (("bbox_mAP", ".3f"), ("segm_mAP", ".3f"), ("mIoU", ".2f"), ("aAcc", ".2f"))]
        per_image = f"{r['seconds_per_image']:.3f}" if r.get("seconds_per_image") is not None else "–"
        rows.append(f"| {name} | {' | '.join(cells)} | {r['train_seconds'] / 60:.1f} min | {per_image} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("collect")
    c.add_argument("work_dir")
    c.add_argument("log")
    c.add_argument("--train-seconds", type=int, required=True)
    t = sub.add_parser("table")
    t.add_argument("out")
    args = parser.parse_args(argv)
    try:
        if args.verb == "collect":
            r = collect(args.work_dir, args.log, args.train_seconds)
            print(f"{r['name']}: " + ", ".join(f"{k} {r[k]}" for k in METRICS if k in r))
        else:
            print(table(args.out))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
