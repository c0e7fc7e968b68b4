"""Writes ``predict`` results to a CSV: path, then top-5 class names and probabilities."""

from __future__ import annotations

from lightning.pytorch.callbacks import BasePredictionWriter

from ..io import write_csv_atomically


class PredictionCSVWriter(BasePredictionWriter):
    """Collects the predictions of an epoch and writes them once, atomically (temp file + rename).

    Columns: ``path, class_1, prob_1, …, class_5, prob_5`` (fewer with fewer than 5 classes).
    """

    def __init__(self, output_path: str):
        super().__init__(write_interval="epoch")
        self.output_path = output_path

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if trainer.world_size > 1:
            raise RuntimeError("predict writes one CSV from one process; run predict with trainer.devices=1")
        datamodule = trainer.datamodule
        paths, names = datamodule.predict_paths, pl_module.class_names
        rows = []
        for batch in predictions:
            for index, classes, probs in zip(batch["index"].tolist(), batch["classes"].tolist(),
                                             batch["probs"].tolist(), strict=True):
                row = [paths[index]]
                for c, p in zip(classes, probs, strict=True):
                    row += [names[c], f"{p:.6f}"]
                rows.append(row)
        top = len(predictions[0]["classes"][0]) if predictions else 0
        header = ["path"] + [f"{k}_{i}" for i in range(1, top + 1) for k in ("class", "prob")]
        write_csv_atomically(self.output_path, header, rows)
        print(f"wrote {len(rows)} predictions to {self.output_path}")


