"""Resizing learned absolute position embeddings between patch grids."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def infer_grid_shape(num_patches: int, target_grid: tuple[int, int]) -> tuple[int, int]:
    """Guess the (rows, cols) a flat position embedding of ``num_patches`` entries was trained on.

    A square grid when ``num_patches`` is a perfect square; otherwise the factor pair whose aspect
    ratio is closest to ``target_grid``'s (checkpoints rarely store their grid).
    """
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    target_ratio = target_grid[0] / target_grid[1]
    pairs = [(r, num_patches // r) for r in range(1, num_patches + 1) if num_patches % r == 0]
    return min(pairs, key=lambda rc: abs(math.log((rc[0] / rc[1]) / target_ratio)))


def bicubic_weights(old: int, new: int, dtype: torch.dtype, device=None) -> Tensor:
    """The (new, old) matrix W with ``resized = W @ signal`` for torch's bicubic resize of one axis
    (``align_corners=False``, clamped borders).

    Read off ``F.interpolate`` itself, applied to the identity (channel c = a one-hot at sample c),
    so it is torch's interpolation exactly, not a re-derivation.
    """
    eye = torch.eye(old, dtype=dtype, device=device).reshape(1, old, old, 1)
    return F.interpolate(eye, size=(new, 1), mode="bicubic", align_corners=False)[0, :, :, 0].T


def resize_pos_embed(
    pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], rows: slice | None = None
) -> Tensor:
    """Bicubic resize of a (1, rows·cols, dim) patch position embedding to another grid.

    2D bicubic resizing is separable, ``P' = W_rows · P · W_colsᵀ``, so ``rows`` (a slice of the
    new grid's rows) yields just those rows, (1, len(rows)·new_cols, dim), without building the
    whole new grid: what streaming needs for a huge image.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos_embed if rows is None else pos_embed.reshape(1, *old_grid, -1)[:, rows].flatten(1, 2)
    dim = pos_embed.shape[-1]
    # float32 at least: bicubic is not implemented for every 16-bit dtype on CPU.
    dtype = pos_embed.dtype if pos_embed.dtype in (torch.float32, torch.float64) else torch.float32
    row_weights = bicubic_weights(old_grid[0], new_grid[0], dtype, pos_embed.device)
    if rows is not None:
        row_weights = row_weights[rows]
    col_weights = bicubic_weights(old_grid[1], new_grid[1], dtype, pos_embed.device)
    grid = pos_embed.to(dtype).reshape(old_grid[0], old_grid[1] * dim)
    resized = (row_weights @ grid).reshape(-1, old_grid[1], dim)  # (rows', old_cols, dim)
    resized = col_weights @ resized  # (rows', new_cols, dim)
    return resized.to(pos_embed.dtype).reshape(1, -1, dim)
