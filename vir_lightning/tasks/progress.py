"""Output a person can follow in a log (``fit ... > log``): progress lines and a summary without FLOPs.

* :class:`ProgressLines`: Lightning's progress bar API (a :class:`~lightning.pytorch.callbacks.ProgressBar`)
  printing plain lines — no carriage returns, no colours — every ``interval_s`` seconds and at the
  end of every epoch: epoch, step/steps, the mean training loss since the last line, images/s
  (images counted from the batches, over the measured wall time) and the time left in the epoch
  and in the fit; validation results when a validation inside a fit ends; progress lines for
  validate, test and predict. Only rank 0 prints (the base class disables the other ranks).
* :func:`use_readable_output`: what the CLI calls once the trainer exists. Where stdout is not a
  terminal it puts :class:`ProgressLines` in place of the bar Lightning added by default (Rich or
  TQDM); a terminal keeps that bar, ``trainer.enable_progress_bar: false`` keeps none, and a
  progress bar the config names itself stays. It also replaces Lightning's default model summary
  by one without the FLOPs column and total (see :class:`SummaryWithoutFlops`).
* :class:`LineProgress`: the same kind of lines for ``predict-large``'s bands, with tqdm's interface.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    ModelSummary,
    ProgressBar,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

#: Seconds between two progress lines of a loop (the end of an epoch always prints one).
DEFAULT_INTERVAL_S = 15.0


def _clock() -> float:
    return time.monotonic()


def duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def images_in(batch) -> int:
    """Images in a batch: the first dimension of its first tensor (``(images, labels, ...)``, a dict
    or a bare tensor); 0 for a batch of undecodable images skipped as a whole (``None``)."""
    while isinstance(batch, (list, tuple, dict)) and batch:
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) and batch.dim() else 0


def _total(batches) -> float:
    """Lightning's batch counts (a number, or one per dataloader) as one number (``inf`` if unknown)."""
    if isinstance(batches, (list, tuple)):
        return float(sum(batches)) if batches else 0.0
    return float(batches) if batches is not None else math.inf


def _of(done: int, total: float) -> str:
    return f"{done}/{int(total)}" if math.isfinite(total) and total > 0 else str(done)


class _Run:
    """One run of a loop (a training epoch, a validation, a test): batches and images, all of it
    and since the last line, and the seconds it has run (pauses, e.g. a validation inside a
    training epoch, left out)."""

    def __init__(self, total: float):
        self.total = total
        self.started = self.last_line = _clock()
        self.paused = 0.0
        self.batches = self.images = 0
        self.recent_images = 0
        self.loss_sum: torch.Tensor | None = None  # on the device: read (synchronised) at a line only
        self.loss_count = self.recent_loss_count = 0
        self.recent_loss_sum: torch.Tensor | None = None
        self.finished = False

    def add(self, images: int, loss: torch.Tensor | None = None) -> None:
        self.batches += 1
        self.images += images
        self.recent_images += images
        if loss is not None:
            loss = loss.detach().float()
            self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
            self.recent_loss_sum = loss if self.recent_loss_sum is None else self.recent_loss_sum + loss
            self.loss_count += 1
            self.recent_loss_count += 1

    def pause(self, seconds: float) -> None:
        self.paused += seconds
        self.last_line += seconds

    def seconds(self) -> float:
        return _clock() - self.started - self.paused

    def due(self, interval_s: float) -> bool:
        return _clock() - self.last_line >= interval_s

    def recent(self) -> tuple[float, float | None]:
        """(images/s since the last line, mean loss since the last line), and a fresh stretch."""
        now = _clock()
        seconds = now - self.last_line
        rate = self.recent_images / seconds if seconds > 0 else math.nan
        loss = (self.recent_loss_sum.item() / self.recent_loss_count) if self.recent_loss_count else None
        self.last_line, self.recent_images, self.recent_loss_sum, self.recent_loss_count = now, 0, None, 0
        return rate, loss

    def mean_loss(self) -> float | None:
        return self.loss_sum.item() / self.loss_count if self.loss_count else None

    def rate(self) -> float:
        seconds = self.seconds()
        return self.images / seconds if seconds > 0 else math.nan

    def eta(self) -> float | None:
        """Seconds left at this run's pace so far (None when the number of batches is unknown)."""
        if not self.batches or not math.isfinite(self.total):
            return None
        return max(0.0, self.total - self.batches) * self.seconds() / self.batches


def _step_loss(trainer: L.Trainer, pl_module: L.LightningModule, outputs) -> torch.Tensor | None:
    """The training step's loss from what it returned (Lightning divides it by
    ``accumulate_grad_batches`` under automatic optimisation; multiplied back here)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return None
    return loss.detach() * trainer.accumulate_grad_batches if pl_module.automatic_optimization else loss.detach()


class ProgressLines(ProgressBar):
    """Plain progress lines on stdout, for logs (see the module docstring).

    Args:
        interval_s: seconds between two lines of a loop; the end of each training epoch and of
            each validation inside a fit always prints one.
    """

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S):
        super().__init__()
        if not interval_s >= 0:
            raise ValueError(f"interval_s={interval_s}; expected seconds >= 0")
        self.interval_s = interval_s
        self._enabled = True
        self._train: _Run | None = None
        self._eval: _Run | None = None
        self._fit_seconds = 0.0  # training seconds and batches of the finished epochs of this fit
        self._fit_batches = 0
        self._validation_seconds: list[float] = []  # each validation of this fit
        self._sanity_seconds_per_batch: float | None = None

    # -- the ProgressBar interface -------------------------------------------------------------------

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args, **kwargs) -> None:
        print(*args, **kwargs, flush=True)

    def _line(self, *fields: str) -> None:
        if self._enabled:
            print(" | ".join(f for f in fields if f), file=sys.stdout, flush=True)

    # -- estimates ---------------------------------------------------------------------------------

    def _epoch(self, trainer: L.Trainer) -> str:
        epochs = trainer.max_epochs
        known = epochs is not None and epochs > 0
        return f"epoch {trainer.current_epoch + 1}/{epochs}" if known else f"epoch {trainer.current_epoch + 1}"

    def _validation_estimate(self, trainer: L.Trainer) -> float:
        """Seconds of one validation: the mean of this fit's, else the sanity check's pace."""
        if self._validation_seconds:
            return sum(self._validation_seconds) / len(self._validation_seconds)
        if self._sanity_seconds_per_batch is not None:
            return self._sanity_seconds_per_batch * _total(trainer.num_val_batches)
        return 0.0

    def _validations_left(self, trainer: L.Trainer, this_epoch: bool) -> float:
        """Validations still to come in the fit (this epoch's end included when ``this_epoch``)."""
        if not trainer.enable_validation:
            return 0
        every = trainer.check_val_every_n_epoch
        per_epoch, batches = 1, self.total_train_batches
        check = trainer.val_check_batch
        if isinstance(check, (int, float)) and math.isfinite(check) and math.isfinite(batches) and 0 < check < batches:
            per_epoch = int(batches // check)
        if not every:  # validations every val_check_batch steps, across epochs
            return per_epoch * (trainer.max_epochs - trainer.current_epoch - (0 if this_epoch else 1))
        first = trainer.current_epoch + (0 if this_epoch else 1)
        return per_epoch * sum(1 for epoch in range(first, trainer.max_epochs) if (epoch + 1) % every == 0)

    def _fit_eta(self, trainer: L.Trainer, this_epoch: bool) -> float | None:
        """Seconds left in the fit: the training batches left at this fit's pace, plus the
        validations left at theirs. None where the fit's length is unknown."""
        run, per_epoch = self._train, self.total_train_batches
        batches_done = self._fit_batches + (run.batches if run else 0)
        if not batches_done or not math.isfinite(per_epoch):
            return None
        left_this_epoch = max(0.0, per_epoch - run.batches) if run and this_epoch else 0.0
        left = None
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            left = left_this_epoch + per_epoch * max(0, trainer.max_epochs - trainer.current_epoch - 1)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            by_steps = max(0, trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
            left = by_steps if left is None else min(left, by_steps)
        if left is None:
            return None
        per_batch = (self._fit_seconds + (run.seconds() if run else 0.0)) / batches_done
        by_epochs = trainer.max_epochs is not None and trainer.max_epochs > 0
        validations = self._validations_left(trainer, this_epoch) if by_epochs else 0
        return left * per_batch + validations * self._validation_estimate(trainer)

    # -- training ---------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_seconds, self._fit_batches, self._validation_seconds = 0.0, 0, []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train = _Run(self.total_train_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._train is None or self._train.finished:  # (a fit resumed mid-epoch)
            self._train = _Run(self.total_train_batches)
        run = self._train
        run.add(images_in(batch), _step_loss(trainer, pl_module, outputs))
        if math.isfinite(run.total) and batch_idx + 1 >= run.total:
            self._end_of_epoch(trainer, batch_idx)
        elif run.due(self.interval_s):
            rate, loss = run.recent()
            eta, fit_eta = run.eta(), self._fit_eta(trainer, this_epoch=True)
            times = [
                f"epoch {duration(eta)}" if eta is not None else "",
                f"fit {duration(fit_eta)}" if fit_eta is not None else "",
            ]
            self._line(
                self._epoch(trainer),
                f"step {_of(batch_idx + 1, run.total)}",
                f"loss {loss:.4f}" if loss is not None else "",
                f"{rate:.1f} images/s",
                "ETA " + ", ".join(t for t in times if t) if any(times) else "",
            )

    def _end_of_epoch(self, trainer: L.Trainer, batch_idx: int) -> None:
        run = self._train
        run.finished = True
        seconds, loss = run.seconds(), run.mean_loss()
        self._fit_seconds += seconds
        self._fit_batches += run.batches
        fit_eta = self._fit_eta(trainer, this_epoch=True)  # (this epoch's validation is still to come)
        self._line(
            self._epoch(trainer),
            f"step {_of(batch_idx + 1, run.total)}",
            f"loss {loss:.4f} (epoch mean)" if loss is not None else "",
            f"{run.images} images in {duration(seconds)}, {run.rate():.1f} images/s",
            f"ETA fit {duration(fit_eta)}" if fit_eta is not None else "",
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train is not None and not self._train.finished and self._train.batches:
            self._end_of_epoch(trainer, self._train.batches - 1)  # a dataloader of unknown length

    # -- validation, test, predict ----------------------------------------------------------------

    def _eval_start(self, total) -> None:
        self._eval = _Run(_total(total))

    def _eval_batch(self, trainer: L.Trainer, batch, what: str) -> None:
        run = self._eval
        if run is None:
            return
        run.add(images_in(batch))
        if run.due(self.interval_s) and not (math.isfinite(run.total) and run.batches >= run.total):
            rate, _ = run.recent()
            eta = run.eta()
            fitting = trainer.state.fn == TrainerFn.FITTING
            self._line(
                self._epoch(trainer) if fitting else "",
                what,
                f"batch {_of(run.batches, run.total)}",
                f"{rate:.1f} images/s",
                f"ETA {duration(eta)}" if eta is not None else "",
            )

    def _eval_end(self, trainer: L.Trainer, what: str, prefix: str | None) -> None:
        run, self._eval = self._eval, None
        if run is None:
            return
        seconds = run.seconds()
        done = f"{run.images} images in {duration(seconds)}, {run.rate():.1f} images/s"
        if trainer.state.fn != TrainerFn.FITTING:  # validate / test / predict (Lightning prints the metrics)
            self._line(what, f"batch {_of(run.batches, run.total)}", done)
            return
        self._validation_seconds.append(seconds)
        if self._train is not None and not self._train.finished:  # a validation inside the epoch
            self._train.pause(seconds)
        metrics = sorted(
            (key, float(value))
            for key, value in trainer.callback_metrics.items()
            if key.startswith(prefix) and (not isinstance(value, torch.Tensor) or value.numel() == 1)
        )
        this_epoch = self._train is not None and not self._train.finished
        fit_eta = self._fit_eta(trainer, this_epoch=this_epoch)
        self._line(
            self._epoch(trainer),
            what,
            ", ".join(f"{key} {value:.4f}" for key, value in metrics),
            done,
            f"ETA fit {duration(fit_eta)}" if fit_eta is not None else "",
        )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._eval_batch(trainer, batch, "validation")
        elif self._eval is not None:
            self._eval.add(images_in(batch))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:  # nothing printed; its pace estimates the first validation's time
            run, self._eval = self._eval, None
            if run is not None and run.batches:
                self._sanity_seconds_per_batch = run.seconds() / run.batches
            return
        self._eval_end(trainer, "validation", "val")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer.num_test_batches)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, batch, "test")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, "test", None)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer.num_predict_batches)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, batch, "predict")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, "predict", None)


# -- the model summary, without FLOPs ------------------------------------------------------------------

_summary_log = logging.getLogger("lightning.pytorch.callbacks.model_summary")


def _without_flops(summary_data: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    return [column for column in summary_data if column[0] != "FLOPs"]


class SummaryWithoutFlops(ModelSummary):
    """Lightning's model summary without the FLOPs column and total.

    Lightning counts FLOPs only by running an ``example_input_array`` through the model under
    torch's FLOP counter; without one it prints "Total FLOPs: 0". With one, the count would still be
    of what torch can see, in the retention form the model is in: the fused retention kernels of
    the GPU backends (Triton, fla) count 0, and parallel and chunkwise forms count differently for
    the same model. So no number rather than a wrong one; ``python -m vir_lightning bench`` reports
    FLOPs per model, retention form and resolution.
    """

    @staticmethod
    def summarize(
        summary_data,
        total_parameters,
        trainable_parameters,
        model_size,
        total_training_modes,
        total_flops=0,
        **summarize_kwargs,
    ) -> None:
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, 0, *_without_flops(summary_data)
        )
        lines = table.splitlines()
        if lines and lines[-1].endswith("Total Flops"):
            lines.pop()
        _summary_log.info("\n" + "\n".join(lines))


class RichSummaryWithoutFlops(RichModelSummary):
    """:class:`~lightning.pytorch.callbacks.RichModelSummary` without the FLOPs column and total (see
    :class:`SummaryWithoutFlops`)."""

    @staticmethod
    def summarize(
        summary_data,
        total_parameters,
        trainable_parameters,
        model_size,
        total_training_modes,
        total_flops=0,
        **summarize_kwargs,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        summary_data = _without_flops(summary_data)
        console = get_console()
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        styles = {
            " ": {"style": "dim"},
            "Name": {"justify": "left", "no_wrap": True},
            "Type": {},
            "Mode": {},
            "In sizes": {"justify": "right", "style": "white"},
            "Out sizes": {"justify": "right", "style": "white"},
        }
        for name, _ in summary_data:
            table.add_column(name, **styles.get(name, {"justify": "right"}))
        for row in zip(*(values for _, values in summary_data), strict=True):
            table.add_row(*row)
        console.print(table)

        grid = Table.grid(expand=True)
        grid.add_column()
        grid.add_column()
        for name, value in (
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", total_training_modes["train"]),
            ("Modules in eval mode", total_training_modes["eval"]),
        ):
            grid.add_row(f"[bold]{name}[/]: {value}")
        console.print(grid)


# -- choosing them -----------------------------------------------------------------------------------


def _named_classes(config_callbacks) -> list[type]:
    """The classes of the callbacks a config names (its ``trainer.callbacks``: class_path entries,
    instances, one or a list); names that do not import are left out."""
    if config_callbacks is None:
        return []
    items = config_callbacks if isinstance(config_callbacks, (list, tuple)) else [config_callbacks]
    classes = []
    for item in items:
        if isinstance(item, L.Callback):
            classes.append(type(item))
            continue
        path = item.get("class_path") if hasattr(item, "get") else None
        if isinstance(path, str) and "." in path:
            module, _, name = path.rpartition(".")
            try:
                classes.append(getattr(importlib.import_module(module), name))
            except (ImportError, AttributeError):
                pass
    return classes


def use_readable_output(trainer: L.Trainer, config_callbacks=None) -> None:
    """Replace the progress bar and model summary Lightning added by default (see the module
    docstring). ``config_callbacks``: the config's ``trainer.callbacks``, whose own progress bar or
    model summary is left as it is."""
    named = _named_classes(config_callbacks)
    own_bar = any(issubclass(c, ProgressBar) for c in named)
    own_summary = any(issubclass(c, ModelSummary) for c in named)
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) in (RichProgressBar, TQDMProgressBar) and not own_bar and not sys.stdout.isatty():
            trainer.callbacks[i] = ProgressLines()
        elif type(callback) in (RichModelSummary, ModelSummary) and not own_summary:
            kind = RichSummaryWithoutFlops if type(callback) is RichModelSummary else SummaryWithoutFlops
            trainer.callbacks[i] = kind(max_depth=callback._max_depth, **callback._summarize_kwargs)


# -- predict-large ---------------------------------------------------------------------------------------


class LineProgress:
    """tqdm's ``total``/``desc``/``unit``/``file``, ``update`` and ``with`` for a log: one line every
    ``interval_s`` seconds (``desc: 12/40 bands (30%), 0:45 elapsed, ETA 1:45``), never a carriage
    return. Other tqdm options are accepted and ignored."""

    def __init__(
        self,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        file=None,
        interval_s: float = DEFAULT_INTERVAL_S,
        **_tqdm_options,
    ):
        self.total, self.desc, self.unit, self.file, self.interval_s = total, desc, unit, file, interval_s
        self.n = 0
        self.started = self.last_line = _clock()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = _clock()
        if now - self.last_line < self.interval_s:
            return
        self.last_line = now
        elapsed = now - self.started
        done = (
            f"{self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%)"
            if self.total
            else f"{self.n} {self.unit}s"
        )
        eta = f", ETA {duration(elapsed * (self.total - self.n) / self.n)}" if self.total and self.n else ""
        print(f"{self.desc}: {done}, {duration(elapsed)} elapsed{eta}", file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        pass
