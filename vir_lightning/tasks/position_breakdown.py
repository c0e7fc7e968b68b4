"""Test accuracy broken down by where the object lies relative to the class token.

Retention decays with distance: a class token appended last (the paper) reads a patch ``d`` steps
before it with weight ``γ^d``. Whether that matters shows as accuracy falling with the object's
distance to the token. The distance is measured two ways, each normalised to [0, 1]:

* **raster**: the object centre's patch counted along the raster order to the class token,
  ``(N - 1 - (row·W + col)) / (N - 1)`` with ``N = H·W`` (1D decay sees this distance);
* **Manhattan**: ``((H - 1 - row) + (W - 1 - col)) / (H + W - 2)`` (2D decay sees this one).

For ``token_first`` pooling the token sits at the start, so both are measured from the top-left
corner instead. Models without a class token (average pooling, H-ViR) are measured from the
bottom-right corner too, as the reference a flat curve is compared with.

Needs a test split whose source gives each image's object position (``source.layout(index)`` with
a ``center`` in pixels and ``source.canvas``), as :class:`~vir_lightning.data.ClutteredFashionMNISTDataModule`
does. Bins are terciles of the test set's own distances: the same images fall in the same bins for
every model of the same patch grid, so rows of a grid compare.
"""

from __future__ import annotations

import os

import lightning as L
import numpy as np
import torch

from ..io import write_csv_atomically

#: Reference patch grid for models that do not expose ``grid_shape`` (H-ViR's last stage varies).
REFERENCE_GRID = (16, 16)
BIN_NAMES = ("near", "mid", "far")


def token_distances(centers: np.ndarray, canvas: int, grid_shape: tuple[int, int], from_start: bool) -> dict:
    """Normalised raster and Manhattan distances of object centres (N×2, (y, x) pixels) to the class token."""
    rows, cols = grid_shape
    row = np.clip((centers[:, 0] / canvas * rows).astype(int), 0, rows - 1)
    col = np.clip((centers[:, 1] / canvas * cols).astype(int), 0, cols - 1)
    if not from_start:  # the token follows the last patch: count from the bottom-right corner
        row, col = rows - 1 - row, cols - 1 - col
    raster = (row * cols + col) / max(rows * cols - 1, 1)
    manhattan = (row + col) / max(rows + cols - 2, 1)
    return {"raster": raster, "manhattan": manhattan}


def equal_count_bins(distance: np.ndarray, reference: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of each ``distance`` among ``bins`` equal-count bins of ``reference`` (a value on an
    edge goes to the lower bin), and the ``bins + 1`` edges."""
    edges = np.quantile(reference, np.linspace(0, 1, bins + 1))
    return np.digitize(distance, edges[1:-1], right=True), edges


class ObjectPositionBreakdown(L.Callback):
    """Log ``test/acc1_{raster,manhattan}_{near,mid,far}`` and write every test image's position and outcome.

    The per-image table (``test_positions.csv`` in the run's log folder: index, label, correct,
    centre y/x and side in pixels, both distances) is what the distance plots are drawn from.

    Args:
        csv_name: file name of the per-image table (empty: not written).
    """

    #: What it logs, as :attr:`ImageClassifier.LOGGED_METRICS <vir_lightning.tasks.ImageClassifier.LOGGED_METRICS>`.
    LOGGED_METRICS = ("test/acc1_raster_*", "test/acc1_manhattan_*")

    def __init__(self, csv_name: str = "test_positions.csv"):
        self.csv_name = csv_name
        self._correct: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._source(trainer)  # refused before testing, not after
        self._correct = []

    @staticmethod
    def _source(trainer: L.Trainer):
        source = trainer.datamodule.source("test")
        if not hasattr(source, "layout"):
            raise ValueError(
                f"ObjectPositionBreakdown needs test images with object positions; "
                f"{type(trainer.datamodule).__name__} has none (use ClutteredFashionMNISTDataModule)"
            )
        return source

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if outputs is not None:  # per-image correctness from the test step; kept on the device until the end
            self._correct.append(outputs.detach())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        source = self._source(trainer)
        # The test loader is sequential, so outcome i is image i (limit_test_batches: the first ones).
        correct = torch.cat(self._correct).cpu().numpy() if self._correct else np.zeros(0, bool)
        if len(correct) > len(source):
            raise ValueError(f"ObjectPositionBreakdown saw {len(correct)} outcomes for {len(source)} test images")
        layouts = [source.layout(i) for i in range(len(correct))]
        centers = np.array([layout["center"] for layout in layouts], dtype=float).reshape(-1, 2)
        sides = [layout.get("side", "") for layout in layouts]  # size matters as much as place: analyses split by it
        model = pl_module.model
        grid_shape = tuple(getattr(model, "grid_shape", REFERENCE_GRID))
        from_start = getattr(model, "pooling", None) == "token_first"
        distances = token_distances(centers, source.canvas, grid_shape, from_start)
        for kind, distance in distances.items() if len(correct) else ():
            bins, _ = equal_count_bins(distance, distance, len(BIN_NAMES))
            for b, name in enumerate(BIN_NAMES):
                chosen = correct[bins == b]
                if len(chosen):
                    pl_module.log(f"test/acc1_{kind}_{name}", float(chosen.mean()))
        if self.csv_name and trainer.is_global_zero:
            folder = trainer.log_dir or trainer.default_root_dir
            rows = (
                (
                    i,
                    int(source.labels[i]),
                    int(correct[i]),
                    *centers[i],
                    sides[i],
                    distances["raster"][i],
                    distances["manhattan"][i],
                )
                for i in range(len(correct))
            )
            write_csv_atomically(
                os.path.join(folder, self.csv_name),
                ["index", "label", "correct", "center_y", "center_x", "side", "raster", "manhattan"],
                rows,
            )
