"""``python -m vir_lightning <command> ...``: one entry point for every command of the project.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands (model and data in
subclass mode, the data's classes / image size / channels linked into the model). Tools that are
not training runs (benchmarks, …) are plain commands registered in ``TOOLS``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from .io import atomic_output

LIGHTNING_SUBCOMMANDS = {
    "fit": "train (and validate) a model; `--test_after_fit true` then tests the best checkpoint",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "top-5 predictions for a folder of images (data.init_args.predict_root) into a CSV",
}


#: command → (module whose ``main(argv) -> int`` runs it, one-line help). Imported only when run,
#: so ``--help`` and the training subcommands never pay for the tools' imports.
TOOLS: dict[str, tuple[str, str]] = {
    "grid": (
        "vir_lightning.grid.cli", "ablation grids over the CLI configs: local or Ray, resumable, tables and plots"),
    "bench": (
        "vir_lightning.benchmarks.throughput", "images/s and peak memory: models x modes x resolutions, ViT alongside"),
    "bench-retention": (
        "vir_lightning.benchmarks.retention_op", "time and peak memory of the retention op per mode and length"),
    "bench-backbone": (
        "vir_lightning.benchmarks.backbone", "H-ViR feature-pyramid forward time and memory per retention mode"),
    "predict-large": (
        "vir_lightning.tasks.predict_large", "top-5 (and per-patch features) of huge images, streamed band by band"),
    "build-mosaic": (
        "vir_lightning.data.mosaic", "a huge real-pixel tiled pyramidal TIFF (matplotlib's photos) for predict-large"),
    "export-backbone": (
        "vir_lightning.tasks.export", "classification checkpoint → tensor state_dict for mmdet/mmseg init_cfg"),
    "build-mini-datasets": (
        "downstream.mini_datasets", "small COCO/ADE20K-layout sets from real pixels (mm smoke tests)"),
}


def _build_cli_class():
    from lightning.pytorch.cli import LightningCLI

    from .tasks import PredictionCSVWriter
    from .tasks.checkpoints import read_state_dict

    class ViRLightningCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # The data decides these; the model must never be told twice.
            for key in ("num_classes", "img_size", "in_chans", "class_names"):
                parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
            parser.add_argument("--test_after_fit", type=bool, default=False,
                                help="after fit, run the test split on the best (or last) checkpoint")
            parser.add_argument("--predictions_csv", type=str | None, default=None,
                                help="predict: CSV to write (default: <log dir>/predictions.csv)")

        def _save_metrics(self) -> None:
            """Merge the logged metrics into ``<default_root_dir>/metrics.json`` (atomically): what
            `grid` and scripts read, whatever loggers the config has."""
            if self.trainer.global_rank != 0:
                return
            path = os.path.join(self.trainer.default_root_dir, "metrics.json")
            metrics = json.loads(Path(path).read_text()) if os.path.exists(path) else {}
            metrics.update({k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1})
            with atomic_output(path) as tmp:
                Path(tmp).write_text(json.dumps(metrics, indent=1, sort_keys=True))

        after_validate = after_test = _save_metrics

        def after_fit(self) -> None:
            self._save_metrics()
            checkpoint = self.trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint is not None else ""
            if self.trainer.global_rank == 0:
                # The weights this fit selected, for whatever starts from them next (grid steps).
                with atomic_output(os.path.join(self.trainer.default_root_dir, "checkpoints.json")) as tmp:
                    Path(tmp).write_text(json.dumps({"best_model_path": best}))
            if not self.config.fit.get("test_after_fit"):
                return
            if best:
                # Load the checkpoint's state_dict ourselves: with EMAWeightAveraging it holds the
                # averaged weights (the ones validated and selected), whereas trainer.test(ckpt_path=…)
                # in this process would let the callback restore the raw training weights instead.
                self.model.model.load_state_dict(read_state_dict(best))
                print(f"testing the best checkpoint {best}")
            self.trainer.test(self.model, datamodule=self.datamodule)
            self._save_metrics()

        def before_predict(self) -> None:
            if any(isinstance(cb, PredictionCSVWriter) for cb in self.trainer.callbacks):
                return
            path = self.config.predict.get("predictions_csv") or os.path.join(
                self.trainer.log_dir or ".", "predictions.csv")
            self.trainer.callbacks.append(PredictionCSVWriter(path))

    return ViRLightningCLI


def run_lightning(argv: list[str] | None) -> int:
    """Run a LightningCLI subcommand (``argv=None``: from sys.argv). Configuration errors print one
    line (VIR_DEBUG=1: traceback)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise calls the network
    from .data import ClassificationDataModule
    from .tasks import ImageClassifier

    cli_class = _build_cli_class()
    try:
        cli_class(
            ImageClassifier,
            ClassificationDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=argv,
        )
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("VIR_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _usage() -> str:
    lines = ["usage: python -m vir_lightning <command> [options]", "", "training (LightningCLI; add --help):"]
    lines += [f"  {name:<20} {text}" for name, text in LIGHTNING_SUBCOMMANDS.items()]
    lines += ["", "tools:"]
    lines += [f"  {name:<20} {text}" for name, (_, text) in TOOLS.items()]
    lines += ["", "example: python -m vir_lightning fit --config configs/quickstart.yaml"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_SUBCOMMANDS:
        return run_lightning(None if from_command_line else argv)
    if command in TOOLS:
        try:
            return importlib.import_module(TOOLS[command][0]).main(rest)
        except (ValueError, FileNotFoundError, ImportError) as err:
            if os.environ.get("VIR_DEBUG"):
                raise
            print(f"error: {err}", file=sys.stderr)
            return 2
    print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2
