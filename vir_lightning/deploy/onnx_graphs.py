"""The modules that are exported to ONNX: one per exported form, each a thin view of a model.

- :class:`WholeImage` — images → logits, in the parallel or chunkwise form (any model).
- :class:`HybridFeatures` — images → logits and the four stage maps of an H-ViR (strides 4–32:
  what the detection and segmentation necks read).
- :class:`StreamingStep` — one band of whole patch rows, plus every block's retention state →
  the band's features, the new states and the logits the image would have if it ended here. A
  runtime calls it band after band, so it streams an image of any height at constant memory,
  with nothing of the model outside the graph (the form is described on the method page of the
  docs, "Streaming").

The exported graphs are traced at one image size (whole image) or one band shape (step): the
decay tables and chunk loops of retention are unrolled for that size, which is what makes them
plain tensor algebra any runtime runs. The batch stays dynamic.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.pos_embed import bicubic_weights
from ..retention.forms import CHUNKWISE, PARALLEL

#: The forms ``export-onnx`` writes. ``parallel`` and ``chunkwise`` are the model's own whole-image
#: forms; ``streaming-step`` is one band of the streaming form.
ONNX_FORMS = (PARALLEL, CHUNKWISE, "streaming-step")


def exportable_forms(model: nn.Module) -> tuple[str, ...]:
    """The :data:`ONNX_FORMS` this model has (its reason for the others: :func:`why_not`)."""
    return tuple(form for form in ONNX_FORMS if why_not(model, form) is None)


def why_not(model: nn.Module, form: str) -> str | None:
    """Why ``model`` cannot be exported in ``form``, or None when it can."""
    layers = model.retention_layers() if hasattr(model, "retention_layers") else []
    if form == PARALLEL:
        return None
    if not layers:
        return "it has no retention (softmax attention has one form: parallel)"
    if layers[0].softmax_retention:
        return "softmax_retention has no chunkwise or recurrent form"
    if form == CHUNKWISE:
        return None
    try:
        model.check_streamable()
    except ValueError as err:
        return str(err)
    if getattr(model, "multipass", False):
        return (
            "multipass replays the whole sequence in reverse after its end, so one band step cannot finish"
            " an image; export the parallel or chunkwise form"
        )
    return None


class WholeImage(nn.Module):
    """images (B, C, H, W) → logits (B, classes) (pooled features if the model has no head)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


class HybridFeatures(nn.Module):
    """images (B, C, H, W) → (logits, stage1, stage2, stage3, stage4): the H-ViR's stage maps at
    strides 4, 8, 16 and 32 (before any neck), as ``forward_intermediates`` returns them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        final, stages = self.model.forward_intermediates(images)
        return (self.model.forward_head(final), *stages)


class StreamingStep(nn.Module):
    """One band of the streaming form of a :class:`~vir_lightning.models.VisionRetention`.

    Inputs:
        pixels: (B, C, band_rows·p, grid_cols·p), normalised like the training data.
        row_weights: (band_rows, trained_rows) — the bicubic interpolation weights that give this
            band's rows of the position embedding from the trained grid's rows (torch's
            ``F.interpolate(mode="bicubic", align_corners=False)`` along the rows of an image of
            ``grid_rows`` patch rows; rows of the identity where the image has the trained height).
            They depend on the image height only, not on the model, so the host computes them.
        rows_before: () float — patch rows streamed before this band (average pooling counts tokens).
        state: (depth, B, heads, head_dim, head_dim) in 1D, (depth, B, heads, grid_cols, head_dim,
            head_dim) in 2D — every block's retention state after the rows before (zeros to start).
        feature_sum: (B, dim) — the sum of the final-norm features of the tokens before (zeros to start).

    Outputs:
        features: (B, band_rows·grid_cols, dim) — the band's final-norm patch features.
        state_out, feature_sum_out: the inputs for the next band.
        logits: (B, classes) — the logits of an image that ends with this band: the class token
            run from ``state_out`` (token_last), or the mean feature (avg).
    """

    def __init__(self, model: nn.Module, grid_cols: int, band_rows: int):
        super().__init__()
        self.model = model
        self.grid_cols, self.band_rows = grid_cols, band_rows
        self.two_d = model.decay == "2d"
        trained_rows, trained_cols = model.grid_shape
        dim = model.embed_dim
        pos = model.pos_embed.detach().reshape(trained_rows, trained_cols, dim)
        if grid_cols != trained_cols:  # the columns are fixed for this graph: resized once, here
            col_weights = bicubic_weights(trained_cols, grid_cols, pos.dtype)  # (grid_cols, trained_cols)
            pos = torch.einsum("ct,rtd->rcd", col_weights, pos)
        self.register_buffer("pos_by_column", pos.contiguous(), persistent=False)  # (trained_rows, grid_cols, dim)

    def state_shape(self, batch: int) -> tuple[int, ...]:
        """The ``state`` input's shape for ``batch`` images."""
        layer = self.model.blocks[0].retention
        per_head = (layer.head_dim, layer.head_dim)
        columns = (self.grid_cols,) if self.two_d else ()
        return (len(self.model.blocks), batch, layer.num_heads, *columns, *per_head)

    def forward(
        self, pixels: Tensor, row_weights: Tensor, rows_before: Tensor, state: Tensor, feature_sum: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        tokens, _ = model.patch_embed(pixels)
        pos = torch.einsum("bt,tcd->bcd", row_weights, self.pos_by_column).flatten(0, 1)
        x = tokens + pos
        grid_cols = self.grid_cols if self.two_d else None
        states = []
        for i, block in enumerate(model.blocks):
            x, block_state = block.forward_step(x, state[i], grid_cols)
            states.append(block_state)
        features = model.norm(x)
        state_out = torch.stack(states)
        feature_sum_out = feature_sum + features.sum(1)
        if model.pooling == "avg":
            pooled = feature_sum_out / ((rows_before + self.band_rows) * self.grid_cols)
        else:  # token_last: the class token read from the states, which it leaves as they are
            cls = model.cls_token.expand(pixels.shape[0], -1, -1)
            for i, block in enumerate(model.blocks):
                cls, _ = block.forward_step(cls, states[i], grid_cols, self.two_d)
            pooled = model.norm(cls)[:, -1]
        return features, state_out, feature_sum_out, model._head_of_pooled(pooled, False)
