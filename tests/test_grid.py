"""`python -m vir_lightning grid`: specs, planning, execution, resume after SIGKILL, reports, Ray."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vir_lightning.cli import main
from vir_lightning.grid.plan import place_outputs, plan, set_dotted
from vir_lightning.grid.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
# A few optimizer steps of the quickstart: enough to produce checkpoints and test metrics.
TINY_ARGS = {
    "trainer.max_epochs": 2,
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 2,
    "trainer.limit_test_batches": 2,
    "trainer.check_val_every_n_epoch": 1,
}


def write_spec(path: Path, **fields) -> str:
    spec = {"base": QUICKSTART, "args": TINY_ARGS, "seeds": [0], "metrics": ["test/acc1"], **fields}
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- specs ---------------------------------------------------------------------------------------


def test_points_are_the_product_of_axes_and_zip_groups_times_seeds(tmp_path):
    spec = load_spec(
        write_spec(
            tmp_path / "s.yaml",
            axes={"model.init_args.model_kwargs.decay": ["1d", "2d"]},
            zip=[
                {
                    "model.init_args.model_kwargs.pooling": ["avg", "token_last"],
                    "model.init_args.model_kwargs.multipass": [False, True],
                }
            ],
            seeds=[0, 1, 2],
        )
    )
    points = spec.points()
    assert len(points) == 2 * 2 * 3
    kwargs = "model.init_args.model_kwargs."
    pairs = {(p.overrides()[kwargs + "pooling"], p.overrides()[kwargs + "multipass"]) for p in points}
    assert pairs == {("avg", False), ("token_last", True)}  # zipped, not crossed
    assert spec.name == "s" and spec.axis_names[0] == "model.init_args.model_kwargs.decay"


SHIPPED_SPECS = sorted((REPO / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=[p.stem for p in SHIPPED_SPECS])
def test_every_shipped_experiment_spec_loads(path, monkeypatch):
    monkeypatch.chdir(REPO)  # base paths are relative to the repository, as on the command line
    spec = load_spec(str(path))
    assert len(spec.points()) >= 1 and spec.steps[0].subcommand == "fit"


@pytest.mark.slow
def test_the_resolution_study_plans_its_tagged_steps_at_their_resolutions(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    spec_path = str(REPO / "experiments" / "resolution_transfer.yaml")
    runs = plan(load_spec(spec_path), str(tmp_path / "out"))
    assert len(runs) == 6 and len({run.run_id for run in runs}) == 6
    for tag, size in [("36px", 36), ("44px", 44), ("56px", 56), ("ft56px", 56)]:
        config = runs[0].step_configs[tag]
        assert config["data"]["init_args"]["img_size"] == size
        assert config["trainer"]["default_root_dir"] == os.path.join(runs[0].run_dir, tag)
    assert runs[0].config["data"]["init_args"]["img_size"] == 28  # the fit itself is untouched
    assert main(["grid", spec_path, "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "6 runs: 0 ended, 6 to run" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # neither planning nor a dry run writes anything


def test_a_report_groups_points_whose_zipped_values_are_dicts(tmp_path, monkeypatch):
    # cluttered_decay.yaml zips model_kwargs dicts with model names: a point's values are not hashable
    import matplotlib.axes

    from vir_lightning.grid.plan import Run
    from vir_lightning.grid.report import write_reports

    kwargs = [{"embed_dim": 32, "decay": "1d"}, {"embed_dim": 32, "decay": "2d"}]
    spec = load_spec(write_spec(tmp_path / "s.yaml", zip=[{"model.init_args.model_kwargs": kwargs}], seeds=[0, 1]))
    runs = [
        Run(f"r{i}", point, str(tmp_path / f"r{i}"), spec.steps, spec.metrics, {}, {})
        for i, point in enumerate(spec.points())
    ]
    accuracy = {0: 0.5, 1: 0.7, 2: 0.2, 3: 0.4}  # run index → test/acc1; runs 0, 1 are the 1D seeds
    statuses = {run.run_id: {"state": "done", "metrics": {"test/acc1": accuracy[i]}} for i, run in enumerate(runs)}
    drawn_x = []  # the x values of every errorbar the plots draw
    errorbar = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(
        matplotlib.axes.Axes, "errorbar", lambda ax, x, *a, **k: drawn_x.append(list(x)) or errorbar(ax, x, *a, **k)
    )
    write_reports(spec, runs, statuses, str(tmp_path), "grid s.yaml")
    report = (tmp_path / "results.md").read_text()
    assert "| decay=1d | 2/2 | 0.6000 ± 0.1414 |" in report and "| decay=2d | 2/2 | 0.3000 ± 0.1414 |" in report
    # one plot against the points' short labels, not a plot per axis with whole dicts on its x-axis
    assert (tmp_path / "test_acc1_vs_point.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "test_acc1_vs_model_kwargs.png").exists()
    assert drawn_x == [["decay=1d", "decay=2d"]]


def test_point_labels_name_what_tells_points_apart():
    from vir_lightning.grid.report import point_labels

    name, kwargs = "model.init_args.model_name", "model.init_args.model_kwargs"
    points = {  # as cluttered_decay.yaml zips them: shared widths, H-ViR without kwargs
        "a": {name: "vir", kwargs: {"embed_dim": 64, "decay": "1d"}},
        "b": {name: "vir", kwargs: {"embed_dim": 64, "decay": "2d"}},
        "b4": {name: "vir", kwargs: {"embed_dim": 64, "decay": "2d", "directions": 4, "pooling": "avg"}},
        "c": {name: "vit", kwargs: {"embed_dim": 64, "patch_size": 4}},
        "d": {name: "hvir", kwargs: {}},
    }
    assert point_labels(points) == {
        "a": "model_name=vir, decay=1d",
        "b": "model_name=vir, decay=2d",
        "b4": "model_name=vir, decay=2d, directions=4, pooling=avg",  # set for one point: both kept
        "c": "model_name=vit, patch_size=4",
        "d": "model_name=hvir",
    }
    pooling = {"x": {"m.pooling": "avg", "m.multipass": False}, "y": {"m.pooling": "token_last", "m.multipass": True}}
    assert point_labels(pooling) == {"x": "pooling=avg, multipass=False", "y": "pooling=token_last, multipass=True"}
    assert point_labels({"x": {"m.decay": "2d"}}) == {"x": "decay=2d"}  # a single point keeps its values


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(axis={"a": [1]}), "unknown keys ['axis']"),
        (dict(base="configs/missing.yaml"), "does not exist"),
        (dict(axes={"trainer.max_epochs": 3}), "non-empty list"),
        (dict(zip=[{"a.b": [1, 2], "a.c": [1]}]), "different lengths"),
        (dict(axes={"trainer.max_epochs": [1, 2]}), "set more than once"),  # also in args
        (dict(seeds=[0, 0]), "repeats a seed"),
        (dict(seeds=["0"]), "list of integers"),
        (dict(metrics=[]), "metrics must list"),
        (dict(subcommands=["train"]), "subcommands"),
        (dict(subcommands=["test", {"run": "test", "tag": "56px"}]), "put an untagged fit before it"),
        (dict(subcommands=["fit", {"run": "test", "tag": "56 px"}]), "needs a tag of letters"),
        (dict(subcommands=["fit", {"run": "test", "tag": "a"}, {"run": "fit", "tag": "a"}]), "repeat ['a']"),
        (dict(subcommands=["fit", {"run": "test", "tag": "a", "arg": {}}]), "subcommands: {"),
        (dict(subcommands=["fit", {"run": "test", "tag": "a"}], metrics=["test/acc1@b"]), "no step tagged 'b'"),
        (dict(seeds=[-1, 4294967296]), "every seed must lie in 0 … 2**32 − 1"),
        (dict(axes={"seed_everything": [1, 2]}), "'seed_everything' cannot be set: the grid sets seed_everything"),
        (dict(axes={"trainer.default_root_dir": ["a", "b"]}), "the grid sets trainer.default_root_dir"),
        (
            dict(
                axes={"model.init_args.model_kwargs": [{}, {"decay": "2d"}]},
                zip=[{"model.init_args.model_kwargs.decay": ["1d", "2d"]}],
            ),
            "overlap: one sets a mapping",
        ),
    ],
)
def test_bad_specs_are_rejected_with_the_file_and_the_problem(fields, message, tmp_path):
    path = write_spec(tmp_path / "bad.yaml", **fields)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        load_spec(path)
    assert str(err.value).startswith(path)


@pytest.mark.parametrize(
    "fields,message",
    [
        (
            dict(subcommands=["fit", {"run": "test", "tag": "t56"}], metrics=["val/acc1@t56"]),
            "metric 'val/acc1@t56': step 't56' (test) logs only test/ metrics",
        ),
        (
            dict(args={**TINY_ARGS, "test_after_fit": False}),
            "metric 'test/acc1': the untagged steps ['fit'] log only train/, val/ metrics (set test_after_fit: true",
        ),
        (dict(subcommands=["test"]), "the untagged test has no weights to evaluate: put an untagged fit before it"),
        (
            dict(axes={"model.init_args.model_kwargs.decay": ["1d", "1d"]}),
            "points decay=1d and decay=1d resolve to the same config (the same run)",
        ),
        (dict(metrics=["test/acc"]), "metric 'test/acc' is not one the runs log: did you mean 'test/acc1'?"),
        (
            dict(
                subcommands=[
                    "fit",
                    {"run": "test", "tag": "wide", "args": {"model.init_args.model_kwargs.embed_dim": 48}},
                ]
            ),
            "step wide: the fit's checkpoint does not fit VisionRetention (",
        ),
        (
            dict(axes={"data.init_args.batch_size": [8, 0]}),
            "point batch_size=0: the data does not build: batch_size=0 must be a positive integer",
        ),
        (dict(args={**TINY_ARGS, "data.init_args.root": "no/such/folder"}), "the data does not build: "),
        (
            dict(args={**TINY_ARGS, "data.init_args.crop_scale": [1.2, 0.5]}),
            "the data does not build: crop_scale=[1.2, 0.5]: expected [low, high] with 0 < low <= high <= 1",
        ),
    ],
)
def test_plans_whose_runs_would_fail_or_repeat_after_training_are_refused_before_any_run(fields, message, tmp_path):
    """What only showed once runs had trained or started (a metric no step logs or with a typo, a
    test with no weights, one run reported twice, data options that parse but do not build) is
    found when the grid is planned."""
    path = write_spec(tmp_path / "bad.yaml", **fields)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        plan(load_spec(path), str(tmp_path / "out"))
    assert str(err.value).startswith(path)


def test_ray_options_without_the_ray_executor_are_refused(tmp_path, capsys):
    path = write_spec(tmp_path / "s.yaml")
    for option in (["--ray-address", "auto"], ["--cpus-per-run", "8"]):
        assert main(["grid", path, "--dry-run", *option]) == 2
        assert "error: --ray-address and --cpus-per-run are options of --executor ray" in capsys.readouterr().err


def test_dotted_keys_must_reach_an_existing_section():
    config = {"trainer": {"max_epochs": 1}, "model": {"init_args": {"model_kwargs": {}}}}
    set_dotted(config, "model.init_args.model_kwargs.decay", "2d")  # a new key inside a dict option
    assert config["model"]["init_args"]["model_kwargs"] == {"decay": "2d"}
    with pytest.raises(ValueError, match="'trainr' is not a section"):
        set_dotted(config, "trainr.max_epochs", 3)


def test_every_output_of_a_run_goes_into_its_own_directory():
    config = {
        "trainer": {
            "default_root_dir": "runs/quickstart",
            "logger": [{"class_path": "CSVLogger", "init_args": {"save_dir": "runs/quickstart"}}],
            "callbacks": [
                {"class_path": "ModelCheckpoint", "init_args": {"dirpath": "runs/quickstart/checkpoints"}},
                {"class_path": "LearningRateMonitor", "init_args": {"logging_interval": "step"}},
            ],
        }
    }
    placed = place_outputs(config, "/out/runs/r1")
    assert placed["trainer"]["default_root_dir"] == "/out/runs/r1"
    assert placed["trainer"]["logger"][0]["init_args"]["save_dir"] == "/out/runs/r1"
    assert placed["trainer"]["callbacks"][0]["init_args"]["dirpath"] == "/out/runs/r1/checkpoints"
    assert config["trainer"]["default_root_dir"] == "runs/quickstart"  # the input is not modified


@pytest.mark.slow
def test_unknown_keys_and_bad_values_stop_the_grid_before_any_run(tmp_path, capsys):
    out = tmp_path / "out"
    bad_key = write_spec(tmp_path / "k.yaml", axes={"trainer.max_epoch": [1, 2]})
    assert main(["grid", bad_key, "--out", str(out)]) == 2
    assert "max_epoch" in capsys.readouterr().err
    bad_model = write_spec(tmp_path / "m.yaml", axes={"model.init_args.model_kwargs.decay": ["1d", "3d"]})
    assert main(["grid", bad_model, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "decay=3d" in err and "the model does not build" in err
    assert not (out / "runs").exists()  # nothing ran, nothing was written


# -- running ---------------------------------------------------------------------------------------


def _grid(spec: str, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "vir_lightning", "grid", spec, "--out", str(out), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_grid_killed_with_sigkill_resumes_without_redoing_or_losing_runs(tmp_path):
    spec = write_spec(
        tmp_path / "decay.yaml", name="decay", axes={"model.init_args.model_kwargs.decay": ["1d", "2d"]}, seeds=[0, 1]
    )
    out = tmp_path / "out"
    proc = _grid(spec, out)
    # Wait until one run has ended and a later one has started writing checkpoints, then SIGKILL.
    deadline = time.time() + 600
    while time.time() < deadline:
        statuses = list(out.glob("runs/*/status.json"))
        started = [p for p in out.glob("runs/*/checkpoints") if not (p.parent / "status.json").exists()]
        if statuses and started:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (first_done,) = statuses
    done_before = first_done.read_text()
    mtime_before = first_done.stat().st_mtime_ns
    time.sleep(1)
    assert not any(p.parent.joinpath("status.json").exists() for p in started)  # the killed run did not end

    resumed = _grid(spec, out)
    output, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, output
    assert "done" in output.split("to run")[0]  # the listing marked the finished run as done
    rows = read_rows(out / "results.csv")
    assert len(rows) == 4 and {r["state"] for r in rows} == {"done"}
    assert all(0.0 <= float(r["test/acc1"]) <= 1.0 for r in rows)
    assert first_done.read_text() == done_before and first_done.stat().st_mtime_ns == mtime_before  # not redone
    report = (out / "results.md").read_text()
    assert "| 1d | 2/2 |" in report and "| 2d | 2/2 |" in report and "±" in report
    assert (out / "test_acc1_vs_decay.png").read_bytes()[:4] == b"\x89PNG"
    for run_dir in out.glob("runs/*"):
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["trainer"]["default_root_dir"] == str(run_dir)
        assert json.loads((run_dir / "point.json").read_text())["seed"] in (0, 1)
    # A third call finds everything done and runs nothing.
    again = _grid(spec, out, "--dry-run")
    listing, _ = again.communicate(timeout=300)
    assert "4 runs: 4 ended, 0 to run" in listing


def test_a_run_killed_after_saving_a_checkpoint_starts_afresh_when_resumed(tmp_path):
    # A SIGKILL after the fit saved its best checkpoint but before last.ckpt and status.json: the
    # resumed grid must not hand the folder to a fresh fit whose overwrite guard refuses it.
    from vir_lightning.grid.execute import read_status

    spec = write_spec(tmp_path / "one.yaml", name="one", seeds=[0])
    out = tmp_path / "out"
    assert main(["grid", spec, "--out", str(out)]) == 0
    (run_dir,) = out.glob("runs/*")
    for leftover in ("status.json", "steps.json", "checkpoints/last.ckpt"):
        (run_dir / leftover).unlink(missing_ok=True)
    assert list(run_dir.glob("checkpoints/*.ckpt"))  # the killed attempt's best checkpoint is still there
    assert main(["grid", spec, "--out", str(out)]) == 0
    assert read_status(str(run_dir))["state"] == "done"
    assert "--overwrite true" in (run_dir / "run.log").read_text()


@pytest.mark.slow
def test_a_failing_run_is_recorded_with_its_log_and_the_grid_goes_on(tmp_path, capsys):
    # eval_chunk_size=0 parses (an int) but the task rejects it when the run builds the model.
    spec = write_spec(tmp_path / "f.yaml", axes={"model.init_args.eval_chunk_size": [None, 0]})
    out = tmp_path / "out"
    assert main(["grid", spec, "--out", str(out)]) == 1
    rows = {r["eval_chunk_size"]: r for r in read_rows(out / "results.csv")}
    assert rows[""]["state"] == "done"  # None is an empty CSV cell
    failed = rows["0"]
    assert failed["state"] == "failed" and "exited with status" in failed["reason"]
    assert "chunk_size=0" in Path(failed["log"]).read_text()
    assert failed["log"] in (out / "results.md").read_text()


@pytest.mark.slow
def test_tagged_steps_start_from_the_fits_checkpoint_and_resume_step_by_step(tmp_path, capsys):
    finetune = {"data.init_args.img_size": 36, "trainer.max_epochs": 1, "trainer.limit_train_batches": 2}
    spec = write_spec(
        tmp_path / "t.yaml",
        subcommands=[
            "fit",
            {"run": "test", "tag": "same"},
            {"run": "test", "tag": "36px", "args": {"data.init_args.img_size": 36}},
            {"run": "fit", "tag": "ft36px", "args": finetune},
        ],
        metrics=["test/acc1", "test/acc1@same", "test/acc1@36px", "test/acc1@ft36px"],
    )
    out = tmp_path / "out"
    assert main(["grid", spec, "--out", str(out)]) == 0
    (run_dir,) = out.glob("runs/*")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and list(status["steps"]) == ["fit", "test@same", "test@36px", "fit@ft36px"]
    metrics = status["metrics"]
    # The same weights on the same data: the tagged test reproduces the fit's own test exactly.
    assert metrics["test/acc1@same"] == metrics["test/acc1"]
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    best = json.loads((run_dir / "checkpoints.json").read_text())["best_model_path"]
    assert best.startswith(str(run_dir / "checkpoints")) and os.path.exists(best)
    log = (run_dir / "run.log").read_text()
    assert log.count(f"--model.init_args.pretrained {best}") == 3
    step_config = yaml.safe_load((run_dir / "36px" / "config.yaml").read_text())
    assert step_config["data"]["init_args"]["img_size"] == 36
    assert step_config["trainer"]["default_root_dir"] == str(run_dir / "36px")
    assert (run_dir / "ft36px" / "checkpoints" / "last.ckpt").exists()  # the fine-tune's own folder
    assert (out / "test_acc1_vs_step.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "results.md").read_text()
    assert "test/acc1@36px" in report and "| fit | test@same | test@36px | fit@ft36px |" in report
    (row,) = read_rows(out / "results.csv")
    assert float(row["seconds fit@ft36px"]) == status["steps"]["fit@ft36px"] > 0

    # As if the grid had been killed during the last step: only that step runs again.
    (run_dir / "status.json").unlink()
    steps = json.loads((run_dir / "steps.json").read_text())
    del steps["fit@ft36px"]
    (run_dir / "steps.json").write_text(json.dumps(steps))
    assert main(["grid", spec, "--out", str(out)]) == 0
    log = (run_dir / "run.log").read_text()
    assert log.count(f"vir_lightning fit --config {run_dir / 'config.yaml'}") == 1  # the fit was not redone
    assert log.count(f"vir_lightning test --config {run_dir / '36px' / 'config.yaml'}") == 1
    assert log.count(f"vir_lightning fit --config {run_dir / 'ft36px' / 'config.yaml'}") == 2
    assert json.loads((run_dir / "status.json").read_text())["metrics"]["test/acc1"] == metrics["test/acc1"]


@pytest.mark.slow
def test_the_same_spec_runs_on_ray(tmp_path):
    pytest.importorskip("ray")
    spec = write_spec(tmp_path / "r.yaml", axes={"model.init_args.model_kwargs.decay": ["1d", "2d"]})
    out = tmp_path / "out"
    proc = _grid(spec, out, "--executor", "ray", "--cpus-per-run", "1")
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    rows = read_rows(out / "results.csv")
    assert len(rows) == 2 and {r["state"] for r in rows} == {"done"}
