"""The one output rule of every command that writes: an existing file is replaced only if this library
wrote it (and nobody changed it since) for the same run, or with ``--overwrite``; otherwise one
``error:`` line names the file and the fix, before any work, and the file stays byte for byte."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from test_classification import QUICKSTART, TINY_MODEL
from test_grid import write_spec
from test_outputs_never_replace_inputs import digest
from test_predict_large import write_checkpoint, write_config

from vir_lightning.cli import main
from vir_lightning.data.mosaic import write_mosaic
from vir_lightning.io import OUTPUTS_RECORD, atomic_output, check_output_path, write_csv_atomically


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def user_file(path, text="the user's own file\n"):
    path.write_text(text)
    return digest(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    write_checkpoint(folder / "a.ckpt")
    write_checkpoint(folder / "b.ckpt", layer_scale_init=0.25)
    return folder


# -- the rule, in io ------------------------------------------------------------------------------


def test_a_file_this_library_wrote_is_replaced_and_any_other_is_kept(tmp_path):
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    write_csv_atomically(str(ours), ["a"], [[1]])
    write_csv_atomically(str(ours), ["a"], [[2]])  # its own earlier output: replaced
    assert ours.read_text().splitlines() == ["a", "2"]
    before = user_file(theirs)
    with pytest.raises(ValueError, match=r"theirs.csv' exists and was not written by vir_lightning .*--overwrite"):
        write_csv_atomically(str(theirs), ["a"], [[1]])
    assert digest(theirs) == before
    write_csv_atomically(str(theirs), ["a"], [[3]], overwrite=True)
    assert theirs.read_text().splitlines() == ["a", "3"]
    assert sorted(os.listdir(tmp_path)) == [OUTPUTS_RECORD, "ours.csv", "theirs.csv"]


def test_a_file_changed_after_it_was_written_is_no_longer_ours(tmp_path):
    path = tmp_path / "out.csv"
    write_csv_atomically(str(path), ["a"], [[1]])
    before = user_file(path, "a\n1\nmy note\n")  # the user edited the result
    with pytest.raises(ValueError, match="was not written by vir_lightning \\(or was changed since\\)"):
        write_csv_atomically(str(path), ["a"], [[2]])
    assert digest(path) == before


def test_a_damaged_record_only_makes_writes_ask_for_overwrite(tmp_path):
    path = tmp_path / "out.csv"
    write_csv_atomically(str(path), ["a"], [[1]])
    (tmp_path / OUTPUTS_RECORD).write_text("{not json")
    with pytest.raises(ValueError, match="not written by vir_lightning"):
        check_output_path(str(path))
    write_csv_atomically(str(path), ["a"], [[2]], overwrite=True)  # and the record is whole again
    write_csv_atomically(str(path), ["a"], [[3]])
    assert path.read_text().splitlines() == ["a", "3"]


def test_the_result_of_another_run_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "out.csv"
    write_csv_atomically(str(path), ["a"], [[1]], run="run one")
    write_csv_atomically(str(path), ["a"], [[2]], run="run one")  # the same run again: replaced
    with pytest.raises(ValueError, match=r"holds the result of another run \(run one\), not of this one \(run two\)"):
        write_csv_atomically(str(path), ["a"], [[3]], run="run two")
    assert path.read_text().splitlines() == ["a", "2"]
    write_csv_atomically(str(path), ["a"], [[3]], run="run two", overwrite=True)
    assert json.loads((tmp_path / OUTPUTS_RECORD).read_text())["out.csv"]["run"] == "run two"


def test_the_record_forgets_files_that_are_gone(tmp_path):
    for name in ("a.csv", "b.csv"):
        write_csv_atomically(str(tmp_path / name), ["a"], [[1]])
    (tmp_path / "a.csv").unlink()
    user_file(tmp_path / "a.csv")  # a new file of the same name is not ours
    write_csv_atomically(str(tmp_path / "c.csv"), ["a"], [[1]])
    assert sorted(json.loads((tmp_path / OUTPUTS_RECORD).read_text())) == ["b.csv", "c.csv"]
    with pytest.raises(ValueError, match="not written by vir_lightning"):
        check_output_path(str(tmp_path / "a.csv"))


def test_overwrite_never_replaces_a_read_only_file_an_input_or_a_foreign_folder(tmp_path):
    protected = tmp_path / "protected.csv"
    user_file(protected)
    protected.chmod(0o444)
    with pytest.raises(ValueError, match="read-only, so it is kept"):
        check_output_path(str(protected), overwrite=True)
    source = tmp_path / "input.ckpt"
    user_file(source)
    with pytest.raises(ValueError, match="is this command's own input"):
        check_output_path(str(source), inputs=[str(source)], overwrite=True)
    folder = tmp_path / "data"
    folder.mkdir()
    user_file(folder / "notes.txt")
    with (
        pytest.raises(ValueError, match="not one this command wrote"),
        atomic_output(str(folder), directory=True, overwrite=True),
    ):
        pass
    assert os.listdir(folder) == ["notes.txt"]


# -- per command ----------------------------------------------------------------------------------


def test_export_backbone_keeps_a_foreign_file_and_another_checkpoints_export(checkpoints, tmp_path, capsys):
    out = tmp_path / "backbone.pth"
    before = user_file(out)
    assert main(["export-backbone", str(checkpoints / "a.ckpt"), str(out)]) == 2
    assert "exists and was not written by vir_lightning" in error_lines(capsys.readouterr().err)[0]
    assert digest(out) == before
    assert main(["export-backbone", str(checkpoints / "a.ckpt"), str(out), "--overwrite"]) == 0
    assert main(["export-backbone", str(checkpoints / "a.ckpt"), str(out)]) == 0  # its own export, again
    exported = digest(out)
    capsys.readouterr()
    assert main(["export-backbone", str(checkpoints / "b.ckpt"), str(out)]) == 2
    message = error_lines(capsys.readouterr().err)[0]
    assert "holds the result of another run (export-backbone of" in message and "a.ckpt" in message
    assert digest(out) == exported
    assert main(["export-backbone", str(checkpoints / "b.ckpt"), str(out), "--overwrite", "true"]) == 0
    assert digest(out) != exported


def test_build_mosaic_replaces_its_own_mosaic_but_not_another_size_or_a_users_tiff(tmp_path, capsys):
    out = tmp_path / "mosaic.tif"
    argv = ["build-mosaic", str(out), "--size", "64", "64", "--levels", "1", "--tile", "32"]
    assert main(argv) == 0
    assert main(argv) == 0  # the same mosaic again
    before = digest(out)
    capsys.readouterr()
    assert main(["build-mosaic", str(out), "--size", "96", "64", "--levels", "1", "--tile", "32"]) == 2
    assert "holds the result of another run (build-mosaic 64×64" in error_lines(capsys.readouterr().err)[0]
    assert digest(out) == before
    slide = tmp_path / "slide.tif"
    before = user_file(slide)
    assert main(["build-mosaic", str(slide), "--size", "64", "64", "--levels", "1"]) == 2
    assert digest(slide) == before


def test_predict_keeps_a_csv_of_another_checkpoint_or_folder(image_folder, tiny_weights, tmp_path, capsys):
    csv_path = tmp_path / "predictions.csv"

    def predict(root, *extra):
        return main(
            [
                "predict",
                "--config",
                QUICKSTART,
                *TINY_MODEL,
                f"--model.init_args.pretrained={tiny_weights}",
                f"--data.init_args.predict_root={root}",
                f"--predictions_csv={csv_path}",
                f"--trainer.default_root_dir={tmp_path / 'run'}",
                *extra,
            ]
        )

    before = user_file(csv_path)
    assert predict(image_folder) != 0
    assert "was not written by vir_lightning" in error_lines(capsys.readouterr().err)[-1]
    assert digest(csv_path) == before
    assert predict(image_folder, "--overwrite=true") == 0
    assert predict(image_folder) == 0  # the same weights and folder again: replaced
    ours = digest(csv_path)
    other = tmp_path / "other"
    shutil.copytree(image_folder / "val", other)
    capsys.readouterr()
    assert predict(other) != 0
    message = error_lines(capsys.readouterr().err)[-1]
    assert "holds the result of another run" in message and str(other) in message
    assert digest(csv_path) == ours


def test_predict_large_keeps_foreign_files_and_overwrite_starts_afresh(checkpoints, tmp_path, capsys):
    image = tmp_path / "slide.tif"
    write_mosaic(str(image), 128, 128, levels=1, tile=64)
    config = write_config(tmp_path / "config.yaml")
    out, features = tmp_path / "pred.csv", tmp_path / "features"
    argv = [
        "predict-large",
        "--config",
        config,
        "--ckpt_path",
        str(checkpoints / "a.ckpt"),
        "--images",
        str(image),
        "--out",
        str(out),
        "--features-dir",
        str(features),
    ]
    before = user_file(out)
    assert main(argv) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: --out {str(out)!r} exists and was not written by vir_lightning (or was changed since), so it is kept;"
        " choose another path, or replace it with --overwrite"
    ]
    assert digest(out) == before
    out.unlink()
    features.mkdir()
    before = user_file(features / "slide.npy")
    assert main(argv) == 2
    assert "--features-dir file" in error_lines(capsys.readouterr().err)[0] and digest(features / "slide.npy") == before
    assert not out.exists()  # refused before any image was read
    assert main([*argv, "--overwrite"]) == 0
    assert main(argv) == 0 and "already in" in capsys.readouterr().out  # resumed: nothing to do
    assert main([*argv, "--overwrite"]) == 0  # afresh: the image is predicted again
    printed = capsys.readouterr().out
    assert "already in" not in printed and "slide.tif: 128×128 px" in printed


def test_grid_keeps_report_files_it_did_not_write_or_of_another_grid(tmp_path, capsys):
    spec = Path(write_spec(tmp_path / "one.yaml"))
    out = tmp_path / "out"
    out.mkdir()
    before = user_file(out / "results.csv")
    assert main(["grid", str(spec), "--out", str(out), "--dry-run"]) == 2
    assert "results.csv' exists and was not written by vir_lightning" in error_lines(capsys.readouterr().err)[0]
    assert digest(out / "results.csv") == before
    (out / "results.csv").unlink()
    from vir_lightning.grid.report import REPORT_FILES, report_run
    from vir_lightning.grid.spec import load_spec

    for name in REPORT_FILES:  # as a run of grid "one" leaves them
        with atomic_output(str(out / name), run=report_run(load_spec(str(spec)))) as tmp:
            open(tmp, "w").write("one's report\n")
    other = tmp_path / "two.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(spec.read_text()), "name": "two"}))
    assert main(["grid", str(other), "--out", str(out), "--dry-run"]) == 2
    assert "holds the result of another run (grid " in error_lines(capsys.readouterr().err)[0]
    for name in REPORT_FILES:  # grid "one" again may replace them (checked as the command does: planning is slow)
        check_output_path(str(out / name), run=report_run(load_spec(str(spec))))
    assert main(["grid", str(other), "--out", str(out), "--dry-run", "--overwrite"]) == 0


def test_bench_csv_of_other_options_is_kept_and_checked_before_measuring(tmp_path, capsys):
    out = tmp_path / "op.csv"
    before = user_file(out)
    argv = [
        "bench-retention",
        "--tokens",
        "64",
        "--modes",
        "parallel",
        "--decay",
        "1d",
        "--repeats",
        "1",
        "--min-seconds",
        "0",
        "--csv",
        str(out),
    ]
    assert main(argv) == 2
    assert "op.csv' exists and was not written by vir_lightning" in error_lines(capsys.readouterr().err)[0]
    assert digest(out) == before and "ms" not in capsys.readouterr().out  # nothing was measured
    assert main([*argv, "--overwrite"]) == 0
    assert main(argv) == 0  # the same options again
    measured = digest(out)
    assert main([*argv[:2], "128", *argv[3:]]) == 2
    assert "holds the result of another run (benchmark with" in error_lines(capsys.readouterr().err)[0]
    assert digest(out) == measured


def test_bench_out_folder_with_a_foreign_table_is_refused_before_measuring(tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    before = user_file(out / "results.md", "# my notes\n")
    assert main(["bench", "--models", "vir_nano_patch16_224", "--resolutions", "32", "--out", str(out)]) == 2
    assert "results.md' exists and was not written by vir_lightning" in error_lines(capsys.readouterr().err)[0]
    assert digest(out / "results.md") == before and sorted(os.listdir(out)) == ["results.md"]
