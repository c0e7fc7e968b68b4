"""The streaming form of ViR (docs/design/method.md §7): the image goes through the network band by band.

Every part of a block except retention acts on one token at a time (LayerNorm, projections, MLP,
LayerScale, residuals), and retention is causal in raster order (1D) or row-causal (the 2D
quadrant). So a band of whole patch rows can pass through *all* blocks before the next band
enters, each block carrying only its retention state between bands:

    1D:  R = Σ_{tokens seen} γ^(age) kᵀv                one d×dv matrix per head
    2D:  P(x) = quadrant state of the row above          one d×dv matrix per head and grid column

Working memory is one band's activations plus these states: it does not grow with the image
height (in 2D the state grows with the width). The token sequence of the parallel form is
replayed as segments, so every pooling gives the same logits:

    token_last          bands ↓, class token
    avg                 bands ↓                       (running sum of the final-norm outputs)
    multipass (1D)      bands ↓, [class token,] class token, bands ↑ reversed  (token_last)
                        class token, bands ↓, bands ↑ reversed, class token    (token_first)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: Tokens per band when no band height is given: the band height is this many tokens' worth of
#: whole rows. Measured with ``make bench-streaming`` (``bench --modes streaming --band-rows …``;
#: README, "Streaming"): at 1024² and 2048², bands of 256–512 tokens were 10–12% slower than
#: chunkwise, 1024–2048 tokens the fastest, and working memory grows with the band.
DEFAULT_BAND_TOKENS = 1024

#: ``read_band(row0, row1)`` → pixels of patch rows [row0, row1): (batch, channels, (row1−row0)·p, cols·p).
BandReader = Callable[[int, int], Tensor]
#: ``on_features(row0, features)``: final-norm features of a band's patch tokens, (batch, rows, cols, dim).
FeatureSink = Callable[[int, Tensor], None]


def default_band_rows(grid_cols: int) -> int:
    """Band height in patch rows: :data:`DEFAULT_BAND_TOKENS` tokens' worth, at least one row."""
    return max(1, DEFAULT_BAND_TOKENS // grid_cols)


def band_bounds(rows: int, band_rows: int) -> list[tuple[int, int]]:
    """[(row0, row1), …] covering ``rows`` patch rows in bands of ``band_rows`` (the last may be shorter)."""
    return [(row0, min(row0 + band_rows, rows)) for row0 in range(0, rows, band_rows)]


def stream(
    model,
    read_band: BandReader,
    grid_shape: tuple[int, int],
    batch: int,
    band_rows: int | None = None,
    on_features: FeatureSink | None = None,
) -> Tensor:
    """Run ``model`` (a :class:`VisionRetention` in streaming mode) band by band.

    Returns the pooled, final-norm features (batch, dim): what the head reads. ``on_features``
    receives the final-norm features of every patch token of the first pass, band by band.
    """
    rows, cols = grid_shape
    bands = band_bounds(rows, band_rows or default_band_rows(cols))
    grid_cols = cols if model.decay == "2d" else None
    states: list[Tensor | None] = [None] * len(model.blocks)

    def through_blocks(x: Tensor, class_token: bool = False) -> Tensor:
        for i, block in enumerate(model.blocks):
            x, states[i] = block.forward_step(x, states[i], grid_cols, class_token)
        return model.norm(x)

    def embedded(row0: int, row1: int) -> Tensor:
        pixels = read_band(row0, row1)
        if isinstance(pixels, Tensor) and pixels.dim() == 4 and pixels.shape[0] != batch:
            # caught here: further on it would only show as a state of the wrong shape
            raise ValueError(
                f"read_band({row0}, {row1}) returned {pixels.shape[0]} images; expected batch={batch}"
                " (the batch passed to forward_streaming)"
            )
        return model.embed_band(pixels, grid_shape, row0, row1)

    average = model.pooling == "avg"
    total, count, last = None, 0, None

    def pool(out: Tensor) -> None:
        nonlocal total, count
        total = out.sum(1) if total is None else total + out.sum(1)
        count += out.shape[1]

    cls = model.cls_token.detach().expand(batch, -1, -1) if model.has_class_token else None
    if model.pooling == "token_first":  # only with multipass: the sequence opens with the class token
        through_blocks(cls)
    for row0, row1 in bands:
        last = through_blocks(embedded(row0, row1))
        if on_features is not None:
            on_features(row0, last.unflatten(1, (row1 - row0, cols)))
        if average:
            pool(last)
    if model.pooling == "token_last":
        last = through_blocks(cls, class_token=grid_cols is not None)
    if model.multipass:  # the sequence again, reversed: the state carries on
        if model.pooling == "token_last":
            through_blocks(cls)
        for row0, row1 in reversed(bands):
            last = through_blocks(embedded(row0, row1).flip(1))
            if average:
                pool(last)
        if model.pooling == "token_first":
            last = through_blocks(cls)
    return total / count if average else last[:, -1]


def check_inference_only(model) -> None:
    """Streaming computes no gradients and replays no per-sample randomness: refuse otherwise."""
    if model.training:
        raise ValueError(
            "streaming is an inference form: call model.eval() first (dropout and drop path would draw"
            " per band); train in 'parallel' or 'chunkwise' mode"
        )
    if torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "streaming is an inference form and computes no gradients: run it under torch.no_grad() or"
            " torch.inference_mode(); train in 'parallel' or 'chunkwise' mode"
        )
