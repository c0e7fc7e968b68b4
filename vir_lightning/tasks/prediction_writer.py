"""Writes ``predict`` results to a CSV: path, then top-5 class names and probabilities."""

from __future__ import annotations

from lightning.pytorch.callbacks import BasePredictionWriter

from ..io import check_output_path, write_csv_atomically


class PredictionCSVWriter(BasePredictionWriter):
    """Collects the predictions of an epoch and writes them once, atomically (temp file + rename).

    Columns: ``path, class_1, prob_1, …, class_5, prob_5`` (fewer with fewer than 5 classes).
    Images skipped as undecodable (``skip_bad_images``) have no row. The output path is checked
    when the writer is made, so a path that cannot be written fails before any prediction runs;
    it is never one of the command's ``inputs`` (its checkpoint and configs, and the images it
    predicts), and an existing file is
    replaced only as :func:`~vir_lightning.io.check_output_path` allows: one this library wrote for the
    same ``run`` (checkpoint and image folder), or any with ``overwrite``.
    """

    def __init__(self, output_path: str, inputs: tuple[str, ...] = (), overwrite: bool = False, run: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_path, self.inputs, self.overwrite, self.run = output_path, inputs, overwrite, run
        self._check()

    def _check(self) -> None:
        check_output_path(
            self.output_path, "--predictions_csv", inputs=self.inputs, overwrite=self.overwrite, run=self.run
        )

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Checked again before predicting: the path may have changed since the writer was made.
        if trainer.world_size > 1:
            raise ValueError("predict writes one CSV from one process; run predict with trainer.devices=1")
        # The images to predict are inputs too (the data module has listed them by now).
        self.inputs = (*self.inputs, *getattr(trainer.datamodule, "predict_paths", ()))
        self._check()

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        datamodule = trainer.datamodule
        paths, names = datamodule.predict_paths, pl_module.class_names
        rows = []
        predictions = [batch for batch in predictions if batch is not None]  # all-undecodable batches
        for batch in predictions:
            for index, classes, probs in zip(
                batch["index"].tolist(), batch["classes"].tolist(), batch["probs"].tolist(), strict=True
            ):
                row = [paths[index]]
                for c, p in zip(classes, probs, strict=True):
                    row += [names[c], f"{p:.6f}"]
                rows.append(row)
        if paths and not rows:
            raise ValueError(
                f"none of the {len(paths)} images under predict_root could be decoded (all skipped);"
                f" nothing written to {self.output_path}"
            )
        top = len(predictions[0]["classes"][0]) if predictions else 0
        header = ["path"] + [f"{k}_{i}" for i in range(1, top + 1) for k in ("class", "prob")]
        write_csv_atomically(self.output_path, header, rows, overwrite=self.overwrite, run=self.run)
        skipped = len(paths) - len(rows)
        print(
            f"wrote {len(rows)} predictions to {self.output_path}"
            + (f"; {skipped} undecodable images skipped (their paths are in the warnings above)" if skipped else "")
        )
