"""``fit``, ``validate``, ``test`` and ``predict``: the project's LightningCLI (model and data in
subclass mode, the data's classes / image size / channels linked into the model).

Imported only for those subcommands (it imports Lightning), by :func:`vir_lightning.cli.run_lightning`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from .. import run_folder
from ..data import ClassificationDataModule
from ..deploy.checkpoints import load_tensors_only, read_state_dict
from ..io import atomic_output
from ..tasks import ImageClassifier, MinTrainSteps, PredictionCSVWriter
from ..tasks.classification import architecture_mismatch

#: Lightning's special ``ckpt_path`` values, resolved by the Trainer rather than read here.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def _absolute(path) -> str:
    """A path as it names one file wherever the command runs (a special value such as "last" as it is)."""
    if not path or str(path) in SPECIAL_CKPT_PATHS:
        return str(path)
    return os.path.abspath(str(path))


def _one_line(message: str) -> str:
    """A configuration error reduced to the line that names the problem (and the offending key).

    jsonargparse reports a mistake as "Does not validate against any of the Union subtypes", the
    subtypes, one error per subtype and the given value (for a class, a dump of the whole
    namespace). The real message is the error of the type the value was meant to be, not
    "Expected a <class 'NoneType'>".
    """
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return "invalid configuration"
    key = re.match(r'Parser key "([^"]+)":', lines[0])
    reasons = [line[2:].strip() for line in lines if line.startswith("- ")]
    reasons = [r for r in reasons if not r.startswith("Expected a <class 'NoneType'>")]
    given = next((line[len("Given value:") :].strip() for line in lines if line.startswith("Given value:")), "")
    reason = reasons[0] if reasons else lines[1] if key and len(lines) > 1 else lines[0]
    if reason.lower().startswith("unrecognized arguments"):
        reason += " (see --help for the options)"
    if given and not given.startswith("Namespace(") and len(given) <= 80:
        reason += f" (given: {given})"
    return f"{key.group(1)}: {reason}" if key else reason


def _given(argv: list[str], option: str) -> bool:
    """Whether ``option`` is on the command line (``--opt value`` or ``--opt=value``)."""
    return any(arg == option or arg.startswith(option + "=") for arg in argv)


class ViRLightningCLI(LightningCLI):
    """LightningCLI with the project's rules: one-line configuration errors, the data's options linked
    into the model, run folders that are never overwritten silently, checkpoints checked against the
    config (never applied over it), metrics.json / checkpoints.json, ``--test_after_fit`` and the
    predictions CSV.

    ``command_line``: the arguments as given (what was asked for by hand, e.g. ``--trainer.max_epochs``);
    ``exit_stack``: holds what must last until the command ends (the run folder's lock). Both are set
    before LightningCLI's constructor, which parses and runs the subcommand.
    """

    def __init__(self, *args, command_line: list[str], exit_stack: contextlib.ExitStack, **kwargs) -> None:
        self.command_line = list(command_line)
        self.exit_stack = exit_stack
        super().__init__(*args, **kwargs)

    def __getstate__(self) -> dict:
        # The model reaches this object (LightningCLI's instantiators sit in its optimizer factory),
        # so copying the model copies it: EMAWeightAveraging deep-copies the model at setup, DDP spawn
        # pickles it. The exit stack (a live lock) belongs to this process and is left out.
        return {**self.__dict__, "exit_stack": None}

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        # Errors raise, so run_lightning prints them as one line instead of usage + a namespace dump.
        return super().init_parser(**{**kwargs, "exit_on_error": False})

    def add_arguments_to_parser(self, parser) -> None:
        # The data decides these; the model must never be told twice.
        for key in ("num_classes", "img_size", "in_chans", "class_names"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after fit, run the test split on the best (or last) checkpoint",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: replace the results of an earlier run in the same default_root_dir;"
            " predict: replace a --predictions_csv of another run or not written here",
        )
        parser.add_argument(
            "--predictions_csv",
            type=str | None,
            default=None,
            help="predict: CSV to write (default: <log dir>/predictions.csv)",
        )

    def _parse_ckpt_path(self) -> None:
        """Read the checkpoint's hyperparameters to check them, never to apply them.

        LightningCLI's own version replaces the model options of the config and command line with
        the checkpoint's, so ``--model.init_args.eval_mode chunkwise`` would be ignored and a
        checkpoint of another architecture trained on silently. Here the command line wins and the
        architecture must match (checked once the data has set the linked options).
        """
        self.checkpoint_hparams = None
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or ckpt_path in SPECIAL_CKPT_PATHS:
            return
        checkpoint = load_tensors_only(ckpt_path)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(
                f"{ckpt_path!r} is a plain state_dict, not a Lightning checkpoint: start from its "
                "weights with --model.init_args.pretrained instead of --ckpt_path"
            )
        self.checkpoint_hparams = checkpoint.get("hyper_parameters") or {}

    def _run_config(self):
        return self.config[self.config.subcommand]

    def before_instantiate_classes(self) -> None:
        trainer = self._run_config()["trainer"]
        root = trainer.get("default_root_dir") or "."
        if _given(self.command_line, "--trainer.default_root_dir"):
            # A root given on the command line takes the config's pinned logger and checkpoint
            # folders with it, so the run cannot write into (and overwrite) the config's own run.
            run_folder.point_outputs_into(trainer, root)

    def before_fit(self) -> None:
        if _given(self.command_line, "--trainer.max_epochs"):  # asked for by hand: obeyed as given
            for callback in self.trainer.callbacks:
                if isinstance(callback, MinTrainSteps):
                    callback.steps = 0
        if rank_zero_only.rank != 0:
            return  # DDP: the launching process (rank 0) holds the lock for all of them
        root = self.trainer.default_root_dir
        self.exit_stack.enter_context(run_folder.fit_lock(root))
        checkpoint_dirs = [cb.dirpath for cb in self.trainer.checkpoint_callbacks if cb.dirpath]
        ckpt_path = self._run_config().get("ckpt_path")
        if ckpt_path and (ckpt_path != "last" or run_folder.has_last_checkpoint(checkpoint_dirs)):
            return  # a resume continues the folder's run ("last" with none to resume starts afresh)
        earlier = run_folder.previous_results(root, checkpoint_dirs)
        if earlier and not self._run_config().get("overwrite"):
            raise ValueError(
                f"{root} holds the results of an earlier run ({len(earlier)} files, e.g. {earlier[0]}); resume "
                "it with --ckpt_path last, give this run its own --trainer.default_root_dir, or replace it "
                "with --overwrite true"
            )
        for path in earlier:
            os.remove(path)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        from ..tasks.progress import use_readable_output  # lines in a log, a summary without FLOPs

        use_readable_output(self.trainer, self._run_config()["trainer"].get("callbacks"))
        subcommand = self.config.subcommand
        if (
            subcommand in ("validate", "test", "predict")
            and not self._run_config().get("ckpt_path")
            and not self.model.hparams.get("pretrained")
        ):
            # Lightning would evaluate (or predict with) freshly initialised weights and exit 0.
            raise ValueError(
                f"{subcommand} needs trained weights: pass --ckpt_path CKPT (a checkpoint of this"
                " config's model) or --model.init_args.pretrained WEIGHTS"
            )
        pretrained = self.model.hparams.get("pretrained")
        if subcommand in ("validate", "test", "predict") and pretrained and os.path.isdir(str(pretrained)):
            # Evaluated as it is (no fine-tuning): a folder of another architecture would load partly
            # and predict with re-initialised parts. The image size may differ (the position
            # embedding is resized).
            from ..deploy.pretrained import as_hyper_parameters, read_pretrained_config

            saved = as_hyper_parameters(read_pretrained_config(str(pretrained)))
            for free in ("img_size", "class_names"):  # not compared (see above)
                saved.pop(free)
            mismatch = architecture_mismatch(saved, dict(self.model.hparams))
            if mismatch:
                mismatch = mismatch.replace("in the checkpoint", "in the folder")
                raise ValueError(
                    f"pretrained folder {pretrained} holds another model: {mismatch}; use a config of"
                    " the model it holds (its config.json names it)"
                )
        if self.checkpoint_hparams:
            mismatch = architecture_mismatch(self.checkpoint_hparams, dict(self.model.hparams))
            if mismatch:
                ckpt_path = self._run_config().get("ckpt_path")
                raise ValueError(
                    f"checkpoint {ckpt_path} was trained for another model: {mismatch}; use the config it was "
                    "trained with (config.yaml in its run folder), or start from its weights with "
                    "--model.init_args.pretrained"
                )

    def _save_metrics(self, fresh: bool = False) -> None:
        """Write the logged metrics into ``<default_root_dir>/metrics.json`` (atomically): what
        `grid` and scripts read, whatever loggers the config has. A fit starts the file afresh
        (``fresh``); validate and test merge into it."""
        if self.trainer.global_rank != 0:
            return
        path = os.path.join(self.trainer.default_root_dir, "metrics.json")
        metrics = json.loads(Path(path).read_text()) if os.path.exists(path) and not fresh else {}
        metrics.update({k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1})
        # The run folder's own file, which the run folder's rule governs (a fresh fit refuses to
        # replace an earlier run's results without --overwrite): no second rule for it here.
        with atomic_output(path, overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(metrics, indent=1, sort_keys=True))

    after_validate = after_test = _save_metrics

    def after_fit(self) -> None:
        if self.trainer.global_step == 0:
            # Lightning only warns ("No training batches" / max_epochs=0) and would go on to test
            # and report the metrics of weights that were never trained.
            raise ValueError(
                "the fit ran no training step (max_epochs/max_steps of 0, or no training batch); nothing "
                "was tested or saved: give the trainer at least one epoch and the data at least one image"
            )
        self._save_metrics(fresh=True)
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if self.trainer.global_rank == 0:
            # The weights this fit selected, for whatever starts from them next (grid steps).
            path = os.path.join(self.trainer.default_root_dir, "checkpoints.json")
            with atomic_output(path, overwrite=True) as tmp:  # the run folder's own file, as metrics.json
                Path(tmp).write_text(json.dumps({"best_model_path": best}))
        if not self.config.fit.get("test_after_fit"):
            return
        if best:
            # Load the checkpoint's state_dict ourselves: with EMAWeightAveraging it holds the
            # averaged weights (the ones validated and selected), whereas trainer.test(ckpt_path=…)
            # in this process would let the callback restore the raw training weights instead.
            self.model.model.load_state_dict(read_state_dict(best))
            print(f"testing the best checkpoint {best}")
        else:  # nothing was validated (no val split), or no checkpoint callback selects by a metric
            print(
                "no best checkpoint was selected (nothing validated, or no monitored metric): testing the"
                " weights at the end of training"
            )
        self.trainer.test(self.model, datamodule=self.datamodule)
        self._save_metrics()

    def before_predict(self) -> None:
        self._use_recorded_normalisation()
        if any(isinstance(cb, PredictionCSVWriter) for cb in self.trainer.callbacks):
            return
        path = self.config.predict.get("predictions_csv") or os.path.join(
            self.trainer.log_dir or ".", "predictions.csv"
        )
        config = self.config.predict
        ckpt_path = config.get("ckpt_path")
        inputs = tuple(str(p) for p in (ckpt_path, *(config.get("config") or ())) if p)
        # What makes the CSV what it is: predictions of another checkpoint or folder never replace it silently.
        weights = ckpt_path or self.model.hparams.get("pretrained")
        source = getattr(self.datamodule, "predict_root", None)
        run = f"predict with {_absolute(weights)} on {_absolute(source)}"
        self.trainer.callbacks.append(PredictionCSVWriter(path, inputs, config.get("overwrite"), run))

    def _use_recorded_normalisation(self) -> None:
        """Predict with the mean/std the checkpoint's model was trained with (its ``preprocessing``
        record), with a notice where the data config says otherwise."""
        ckpt = self.config.predict.get("ckpt_path")
        pretrained = self.model.hparams.get("pretrained")
        data = self.datamodule
        from ..deploy.checkpoints import load_tensors_only, recorded_normalisation
        from ..deploy.pretrained import read_pretrained_config

        # ("best" / "last" name no file here; Lightning resolves them)
        if ckpt and os.path.isfile(str(ckpt)) and hasattr(data, "preprocessing"):
            checkpoint = load_tensors_only(str(ckpt))
            recorded = checkpoint.get("preprocessing") if isinstance(checkpoint, dict) else None
        elif not ckpt and pretrained and os.path.isdir(str(pretrained)) and hasattr(data, "preprocessing"):
            recorded = read_pretrained_config(str(pretrained))["preprocessing"]
        else:
            return
        if not recorded:  # written before checkpoints recorded it: the config's, as before
            return
        current = data.preprocessing()
        data.mean, data.std = recorded_normalisation(recorded, (current["mean"], current["std"]), "the data config's")


def main(argv: list[str] | None) -> int:
    """Run a LightningCLI subcommand (``argv=None``: from sys.argv). Configuration errors print one
    line (VIR_DEBUG=1: traceback)."""
    with contextlib.ExitStack() as exit_stack:  # the run folder's lock, held until the command ends
        try:
            ViRLightningCLI(
                ImageClassifier,
                ClassificationDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                args=argv,
                command_line=sys.argv[1:] if argv is None else list(argv),
                exit_stack=exit_stack,
            )
        except (ValueError, OSError, ArgumentError) as err:  # OSError: unreadable/unwritable paths
            if os.environ.get("VIR_DEBUG"):
                raise
            print(f"error: {_one_line(str(err))}", file=sys.stderr)
            return 2
    return 0
