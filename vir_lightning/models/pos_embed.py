"""Resizing learned absolute position embeddings between patch grids."""

from __future__ import annotations

import math

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


def resize_pos_embed(pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bicubic resize of a (1, rows·cols, dim) patch position embedding to another grid."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    # Interpolate in float32 at least: bicubic is not implemented for every 16-bit dtype on CPU.
    resized = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    return resized.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
