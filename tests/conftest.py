"""Shared helpers: an independent brute-force retention and a relative-error measure."""

from __future__ import annotations

import pytest
import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual − expected| / max |expected| (the scale-free error used throughout)."""
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual - expected).abs().max() / scale).item()


def brute_force_retention(q, k, v, rates, grid_shape=None, cls_token=False, directions=1):
    """Σ_j D[i, j] (q_i·k_j) v_j with D written out pair by pair from SPEC §1–2 (Python loops)."""
    batch, heads, tokens, _ = q.shape
    out = torch.zeros(batch, heads, tokens, v.shape[-1], dtype=q.dtype)
    if grid_shape is None:
        positions = [(n, 0) for n in range(tokens)]
    else:
        rows, cols = grid_shape
        positions = [(n % cols, n // cols) for n in range(rows * cols)] + ([(cols - 1, rows)] if cls_token else [])
    for h in range(heads):
        gamma = float(rates[h])
        for i in range(tokens):
            for j in range(tokens):
                dx = positions[i][0] - positions[j][0]
                dy = positions[i][1] - positions[j][1]
                if grid_shape is None:
                    visible = dx >= 0
                else:
                    upper_left, lower_right = dx >= 0 and dy >= 0, dx <= 0 and dy <= 0
                    visible = {1: upper_left, 2: upper_left or lower_right, 4: True}[directions]
                if visible:
                    weight = gamma ** (abs(dx) + abs(dy))
                    out[:, h, i] += weight * (q[:, h, i] * k[:, h, j]).sum(-1, keepdim=True) * v[:, h, j]
    return out


def random_qkv(batch, heads, tokens, head_dim, value_dim=None, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, tokens, head_dim)] * 2 + [(batch, heads, tokens, value_dim or head_dim)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_(requires_grad) for s in shapes]


@pytest.fixture
def rates3():
    """Three heads with short, medium and long horizons (float64)."""
    return torch.tensor([0.5, 0.9, 0.97], dtype=torch.float64)
