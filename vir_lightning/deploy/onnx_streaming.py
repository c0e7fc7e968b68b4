"""Streaming an image through an exported step graph in ONNX Runtime (``predict-large --runtime onnxruntime``).

:class:`OnnxStreamingModel` offers what ``predict-large`` uses of a streaming ViR —
``forward_streaming(read_band, grid_shape, batch, on_features)`` and the patch size, channels and
width — with ONNX Runtime doing all of the network's work: the host only reads pixels, computes the
position-embedding row weights (bicubic coefficients, independent of the model) and carries the
states from one call to the next.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.pos_embed import bicubic_weights
from ..models.streaming import BandReader, FeatureSink
from .onnx_export import onnx_session, read_onnx_metadata


class OnnxStreamingModel:
    """An ``export-onnx --form streaming-step`` graph in an ONNX Runtime CPU session.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's intra-op threads (default: its own choice, every core).

    Raises:
        ValueError: the file is not an ONNX model written by ``export-onnx``, or is of another form.
    """

    multipass = False  # refused at export: a step graph never has it

    def __init__(self, path: str, threads: int | None = None):
        meta = read_onnx_metadata(path)
        if meta["form"] != "streaming-step":
            raise ValueError(
                f"--onnx {path!r} holds the {meta['form']} form, which takes whole images; predict-large"
                " streams bands: export with `export-onnx CKPT OUT.onnx --form streaming-step`"
            )
        self.path, self.meta = path, meta
        self.session = onnx_session(path, threads)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.patch_size = tuple(meta["patch_size"])
        self.in_chans = meta["in_chans"]
        self.num_features = meta["dim"]
        self.num_classes = meta["num_classes"]
        self.band_rows = meta["band_rows"]
        self.grid_cols = meta["grid_cols"]

    def check_grid(self, grid_shape: tuple[int, int], where: str = "image") -> None:
        """ValueError unless the graph can stream an image of ``grid_shape`` patches (it was exported
        for one width and one band height)."""
        rows, cols = grid_shape
        ph, pw = self.patch_size
        if cols != self.grid_cols:
            raise ValueError(
                f"{where} is {cols * pw} px wide ({cols} patches, after the edge is cropped or padded) but"
                f" {self.path} was exported for {self.meta['width']} px; export the step for this width"
                f" with `export-onnx ... --form streaming-step --width {cols * pw}`"
            )
        if rows % self.band_rows:
            raise ValueError(
                f"{where} has {rows} patch rows, not a multiple of the {self.band_rows}-row bands"
                f" {self.path} was exported for; export it with --band-rows 1 (any height)"
            )

    def forward_streaming(
        self, read_band: BandReader, grid_shape: tuple[int, int], batch: int, on_features: FeatureSink | None = None
    ) -> torch.Tensor:
        """(batch, num_classes) logits of an image read band by band, as the torch model's
        ``forward_streaming``; ``on_features(row0, (batch, rows, cols, dim))`` per band."""
        self.check_grid(grid_shape)
        rows, cols = grid_shape
        trained_rows = self.meta["trained_grid"][0]
        if rows == trained_rows:
            row_weights = np.eye(rows, dtype=np.float32)
        else:  # (rows, trained_rows): which trained rows each image row blends (torch's bicubic resize)
            row_weights = bicubic_weights(trained_rows, rows, torch.float32).numpy()
        state_shape = list(self.meta["state_shape"])
        state_shape[1] = batch
        feeds = {
            "state": np.zeros(state_shape, np.float32),
            "feature_sum": np.zeros((batch, self.num_features), np.float32),
        }
        logits = None
        for row0 in range(0, rows, self.band_rows):
            row1 = row0 + self.band_rows
            pixels = read_band(row0, row1)
            pixels = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
            feeds.update(
                pixels=np.ascontiguousarray(pixels, dtype=np.float32),
                row_weights=np.ascontiguousarray(row_weights[row0:row1]),
                rows_before=np.array(row0, dtype=np.float32),
            )
            features, feeds["state"], feeds["feature_sum"], logits = self.session.run(
                None, {k: v for k, v in feeds.items() if k in self.input_names}
            )
            if on_features is not None:
                on_features(row0, torch.from_numpy(features).unflatten(1, (row1 - row0, cols)))
        return torch.from_numpy(logits)
