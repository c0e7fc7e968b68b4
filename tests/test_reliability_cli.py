"""The training commands never give a silently wrong result and never overwrite another run.

Each test pins a defect a new-user sweep found (docs/guides/reliability.md): a checkpoint's options
replacing the command line's, runs writing into each other's folders, fits of zero steps reporting
test metrics, and configuration errors buried in a namespace dump.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from test_classification import QUICKSTART, TINY_MODEL, run_cli

from vir_lightning import run_folder
from vir_lightning.commands.lightning import _one_line
from vir_lightning.data import ImageFolderDataModule
from vir_lightning.tasks import ImageClassifier, MinTrainSteps

SHORT_FIT = [
    *TINY_MODEL,
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--test_after_fit",
    "false",
    "--trainer.enable_progress_bar",
    "false",
]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_clear_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and "Namespace(" not in proc.stderr


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A short quickstart fit through the CLI: its run folder (checkpoints, metrics.json)."""
    cwd = tmp_path_factory.mktemp("earlier")
    proc = run_cli("fit", "--config", QUICKSTART, *SHORT_FIT, "--trainer.default_root_dir", "run", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "run"


# -- a checkpoint never overrides the command line; its architecture must match -------------------------


@pytest.mark.slow
def test_checkpoint_does_not_replace_the_command_lines_evaluation_form(earlier_run, tmp_path):
    ckpt = earlier_run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["eval_mode"] == "auto"
    proc = run_cli(
        "validate",
        "--config",
        QUICKSTART,
        *TINY_MODEL,
        "--ckpt_path",
        str(ckpt),
        "--model.init_args.eval_mode",
        "chunkwise",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.default_root_dir",
        "val",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = list((tmp_path / "val").glob("**/config.yaml"))
    assert saved and "eval_mode: chunkwise" in saved[0].read_text()  # not the checkpoint's "auto"
    bad = run_cli(
        "validate",
        "--config",
        QUICKSTART,
        *TINY_MODEL,
        "--ckpt_path",
        str(ckpt),
        "--model.init_args.eval_mode",
        "banana",
        cwd=tmp_path,
    )
    assert_one_clear_error(bad, "eval_mode", "banana")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--model.init_args.model_name", "hvir_nano", "--model.init_args.model_kwargs={}"], "model_name"),
        (['--model.init_args.model_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2, "decay": "2d"}'], "decay"),
    ],
)
def test_checkpoint_of_another_architecture_is_an_error_not_a_silent_load(earlier_run, tmp_path, args, fragment):
    ckpt = earlier_run / "checkpoints" / "last.ckpt"
    proc = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *SHORT_FIT,
        *args,
        "--ckpt_path",
        str(ckpt),
        "--trainer.default_root_dir",
        "other",
        cwd=tmp_path,
    )
    assert_one_clear_error(proc, "trained for another model", fragment)


@pytest.mark.slow
def test_truncated_or_plain_checkpoint_is_one_clear_line(earlier_run, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((earlier_run / "checkpoints" / "last.ckpt").read_bytes()[:200])
    proc = run_cli("validate", "--config", QUICKSTART, *TINY_MODEL, "--ckpt_path", str(truncated), cwd=tmp_path)
    assert_one_clear_error(proc, "cannot be read", "truncated")
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    proc = run_cli("validate", "--config", QUICKSTART, *TINY_MODEL, "--ckpt_path", str(plain), cwd=tmp_path)
    assert_one_clear_error(proc, "--model.init_args.pretrained")


def test_evaluating_without_trained_weights_is_an_error(tmp_path):
    proc = run_cli("validate", "--config", QUICKSTART, *TINY_MODEL, cwd=tmp_path)
    assert_one_clear_error(proc, "validate needs trained weights", "--ckpt_path", "pretrained")


# -- configuration errors are one line ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--data.init_args.batch_size", "-3"], ["batch_size=-3"]),
        (["--trainer.max_epochs", "banana"], ["trainer.max_epochs", "banana"]),
        (["--model.init_args.train_mode", "sideways"], ["train_mode", "sideways"]),
        (["--no_such_option", "1"], ["--no_such_option", "--help"]),
    ],
)
def test_configuration_mistakes_print_the_real_message_on_one_line(tmp_path, args, fragments):
    proc = run_cli("fit", "--config", QUICKSTART, *args, cwd=tmp_path)
    assert_one_clear_error(proc, *fragments)
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started


def test_union_error_reduces_to_the_named_types_message():
    message = (
        "Does not validate against any of the Union subtypes\nSubtypes: [<class 'A'>, <class 'NoneType'>]\n"
        "Errors:\n  - size=3 is too small; pass 4 or more\n  - Expected a <class 'NoneType'>\n"
        "Given value type: <class 'jsonargparse._namespace.Namespace'>\nGiven value: Namespace(a=1)"
    )
    assert _one_line(message) == "size=3 is too small; pass 4 or more"


# -- runs never overwrite each other ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_fit_into_a_folder_in_use_stops_without_touching_it(tmp_path):
    run_dir = tmp_path / "busy"
    with run_folder.fit_lock(str(run_dir)):
        proc = run_cli(
            "fit", "--config", QUICKSTART, *SHORT_FIT, "--trainer.default_root_dir", str(run_dir), cwd=tmp_path
        )
    assert_one_clear_error(proc, "another fit", str(run_dir))
    assert not list(run_dir.glob("**/*.ckpt")) and not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_fresh_fit_refuses_a_folder_with_results_unless_told_to_overwrite(earlier_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(earlier_run, run_dir)
    (run_dir / "checkpoints" / "epoch07-acc1_0.9000.ckpt").write_bytes(b"an earlier run's best")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    proc = run_cli("fit", "--config", QUICKSTART, *SHORT_FIT, "--trainer.default_root_dir", str(run_dir), cwd=tmp_path)
    assert_one_clear_error(proc, "earlier run", "--overwrite true", "--ckpt_path last")
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics

    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "test/acc1": 0.99}))
    proc = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *SHORT_FIT,
        "--trainer.default_root_dir",
        str(run_dir),
        "--overwrite",
        "true",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (run_dir / "checkpoints" / "epoch07-acc1_0.9000.ckpt").exists()  # the replaced run's files are gone
    assert "test/acc1" not in json.loads((run_dir / "metrics.json").read_text())  # no stale metric survives


@pytest.mark.slow
def test_root_dir_on_the_command_line_takes_checkpoints_and_logs_with_it(earlier_run):
    cwd = earlier_run.parent
    # The fixture's fit gave only --trainer.default_root_dir run: nothing went to the config's runs/quickstart.
    assert not (cwd / "runs").exists()
    assert (earlier_run / "checkpoints" / "last.ckpt").is_file()
    assert list(earlier_run.glob("csv/version_*/metrics.csv")) and list(earlier_run.glob("tensorboard/version_*"))


# -- no metrics for weights that never trained; small data trains ----------------------------------------


@pytest.mark.slow
def test_fit_of_zero_steps_is_an_error_and_reports_no_metrics(tmp_path):
    proc = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        *TINY_MODEL,
        "--trainer.max_epochs",
        "0",
        "--trainer.default_root_dir",
        "run",
        cwd=tmp_path,
    )
    assert_one_clear_error(proc, "no training step")
    assert "test/acc1" not in proc.stdout
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_dataset_smaller_than_one_batch_still_trains(image_folder):
    data = ImageFolderDataModule(root=str(image_folder), batch_size=128, num_workers=0)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert len(batches) == 1 and len(batches[0][1]) == len(data.train_dataloader().dataset) < 128


def test_min_train_steps_stretches_a_short_schedule_and_says_so(image_folder, tmp_path, caplog):
    data = ImageFolderDataModule(root=str(image_folder), batch_size=8, num_workers=0, img_size=32)
    module = ImageClassifier(
        "vir_nano_patch4_28",
        model_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2},
        num_classes=3,
        img_size=32,
        in_chans=3,
    )
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[MinTrainSteps(10)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    with caplog.at_level("INFO"):
        trainer.fit(module, data)
    assert trainer.global_step == 12  # 24 images / 8 = 3 steps an epoch: 4 epochs, not 2
    assert "training 4 epochs instead" in caplog.text
    with pytest.raises(ValueError, match="non-negative integer"):
        MinTrainSteps(-1)


def test_resume_from_last_with_nothing_to_resume_counts_as_a_fresh_fit(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch03-acc1_0.5000.ckpt").write_bytes(b"best of an earlier run")
    assert not run_folder.has_last_checkpoint([str(tmp_path / "checkpoints")])
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert run_folder.has_last_checkpoint([str(tmp_path / "checkpoints")])


def test_fit_lock_is_released_when_the_holder_ends(tmp_path):
    with run_folder.fit_lock(str(tmp_path)):
        with pytest.raises(ValueError, match=f"pid {os.getpid()}"), run_folder.fit_lock(str(tmp_path)):
            pass
    with run_folder.fit_lock(str(tmp_path)):  # free again
        pass
