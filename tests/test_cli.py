"""The command line: help, dispatch, and the retention benchmark."""

from __future__ import annotations

import csv
import subprocess
import sys

from vir_lightning.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "fit" in out and "bench-retention" in out


def test_unknown_command_is_an_error(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "vir_lightning", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "bench-retention" in proc.stdout and "predict" in proc.stdout


def test_retention_benchmark_prints_a_table_and_writes_csv(tmp_path, capsys):
    out_csv = tmp_path / "nested" / "bench.csv"
    argv = [
        "--tokens",
        "64",
        "256",
        "--modes",
        "parallel",
        "chunkwise",
        "--decay",
        "1d",
        "2d",
        "--repeats",
        "1",
        "--min-seconds",
        "0",
        "--heads",
        "1",
        "--head-dim",
        "8",
        "--csv",
        str(out_csv),
    ]
    assert main(["bench-retention", *argv]) == 0
    printed = capsys.readouterr().out
    assert "| 2d | 256 | chunkwise |" in printed
    assert "1d chunkwise: time(256)/time(64)" in printed
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 8
    assert all(float(r["time_ms"]) > 0 and r["finite"] == "True" for r in rows)
    assert not list(out_csv.parent.glob(".partial-*"))  # no temp file left behind


def test_retention_benchmark_skips_configurations_predicted_not_to_fit(capsys):
    argv = ["--tokens", "65536", "--modes", "parallel", "--decay", "1d", "--max-memory-gb", "1"]
    assert main(["bench-retention", *argv]) == 0
    assert "skipped: predicted > 1 GB" in capsys.readouterr().out


def test_atomic_csv_write_leaves_nothing_behind_when_interrupted(tmp_path):
    from vir_lightning.io import write_csv_atomically

    target = tmp_path / "out.csv"
    write_csv_atomically(str(target), ["a"], [[1]])

    def rows():
        yield [2]
        raise KeyboardInterrupt

    try:
        write_csv_atomically(str(target), ["a"], rows())
    except KeyboardInterrupt:
        pass
    assert target.read_text().splitlines() == ["a", "1"]  # the old file is intact
    assert not list(tmp_path.glob(".partial-*"))
