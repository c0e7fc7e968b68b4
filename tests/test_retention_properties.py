"""Causality, 2D shift-equivariance, long-sequence numerics and memory bounds of the retention op."""

from __future__ import annotations

import pytest
import torch
from conftest import random_qkv, relative_error
from torch.utils._python_dispatch import TorchDispatchMode

from vir_lightning.retention import decay_rates_for, retention, retention_decay_matrix

MODES = [("parallel", None), ("recurrent", None), ("chunkwise", 3)]


@pytest.mark.parametrize("mode,chunk_size", MODES)
def test_1d_output_ignores_future_tokens(mode, chunk_size, rates3):
    q, k, v = random_qkv(1, 3, 20, 4)
    before = retention(q, k, v, rates3, mode=mode, chunk_size=chunk_size)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[:, :, 12:] = torch.randn_like(t[:, :, 12:])
    after = retention(q2, k2, v2, rates3, mode=mode, chunk_size=chunk_size)
    assert torch.equal(after[:, :, :12], before[:, :, :12])
    assert not torch.allclose(after[:, :, 12:], before[:, :, 12:])  # the change is visible where allowed


@pytest.mark.parametrize("mode,chunk_size", MODES)
@pytest.mark.parametrize("cls_token", [False, True])
def test_2d_output_sees_only_its_upper_left_quadrant(mode, chunk_size, cls_token, rates3):
    rows, cols = 4, 5
    tokens = rows * cols + cls_token
    q, k, v = random_qkv(1, 3, tokens, 4)
    before = retention(
        q, k, v, rates3, mode=mode, chunk_size=chunk_size, grid_shape=(rows, cols), class_token=cls_token
    )
    source_y, source_x = 1, 2
    source = source_y * cols + source_x
    k2, v2 = k.clone(), v.clone()
    k2[:, :, source] += 1.0
    v2[:, :, source] -= 1.0
    after = retention(
        q, k2, v2, rates3, mode=mode, chunk_size=chunk_size, grid_shape=(rows, cols), class_token=cls_token
    )
    for target in range(rows * cols):
        y, x = divmod(target, cols)
        changed = not torch.equal(after[:, :, target], before[:, :, target])
        assert changed == (x >= source_x and y >= source_y), (target, changed)
    if cls_token:  # the class token sees every patch, and no patch sees the class token
        assert not torch.equal(after[:, :, -1], before[:, :, -1])
        k3 = k.clone()
        k3[:, :, -1] += 5.0
        out = retention(q, k3, v, rates3, mode=mode, chunk_size=chunk_size, grid_shape=(rows, cols), class_token=True)
        assert torch.equal(out[:, :, :-1], before[:, :, :-1])


def test_2d_mask_is_shift_equivariant_and_the_1d_raster_mask_is_not():
    rates = torch.tensor([0.8], dtype=torch.float64)
    rows, cols = 5, 6
    d2 = retention_decay_matrix(rows * cols, rates, grid_shape=(rows, cols))[0]
    d1 = retention_decay_matrix(rows * cols, rates)[0]

    def index(y, x):
        return y * cols + x

    pairs_checked = 0
    for (ay, ax), (by, bx) in [((2, 3), (1, 1)), ((3, 0), (2, 5)), ((1, 4), (1, 1)), ((2, 2), (0, 4))]:
        for sy, sx in [(1, 1), (2, 0), (0, 1), (1, -1)]:
            cells = [(ay + sy, ax + sx), (by + sy, bx + sx)]
            if all(0 <= y < rows and 0 <= x < cols for y, x in cells):
                assert d2[index(*cells[0]), index(*cells[1])] == d2[index(ay, ax), index(by, bx)]
                pairs_checked += 1
    assert pairs_checked >= 8
    # 1D raster order puts the end of row 0 next to the start of row 1 (geometric distance
    # cols−1 + 1) at the same decay as two horizontal neighbours: the image geometry is lost ...
    assert d1[index(1, 0), index(0, cols - 1)] == d1[index(1, 1), index(1, 0)] == rates[0]
    # ... and a cell sees cells to its upper right, outside its quadrant.
    assert d1[index(2, 0), index(1, 4)] > 0
    # The 2D mask decays with the Manhattan distance and never looks up-right.
    assert d2[index(1, 1), index(1, 0)] == rates[0]
    assert d2[index(1, 0), index(0, cols - 1)] == 0 and d2[index(2, 0), index(1, 4)] == 0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["chunkwise", "recurrent", "parallel"])
@pytest.mark.parametrize("grid_shape", [None, (128, 128)])
def test_no_nan_or_inf_at_16384_tokens(dtype, mode, grid_shape):
    if mode == "recurrent" and grid_shape is not None:
        grid_shape = (32, 512)  # same token count; the 2D recurrence walks every cell (slow in Python)
    rates = torch.tensor(decay_rates_for("vir", 2), dtype=torch.float32)
    q, k, v = random_qkv(1, 2, 16384, 16, dtype=dtype)
    out = retention(q, k, v, rates, mode=mode, grid_shape=grid_shape)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("grid_shape", [None, (64, 64)])
def test_float32_chunkwise_tracks_float64_at_4096_tokens(grid_shape):
    rates = torch.tensor(decay_rates_for("vir", 2), dtype=torch.float64)
    q, k, v = random_qkv(1, 2, 4096, 16)
    expected = retention(q, k, v, rates, mode="chunkwise", grid_shape=grid_shape)
    actual = retention(*(t.float() for t in (q, k, v)), rates.float(), mode="chunkwise", grid_shape=grid_shape)
    assert relative_error(actual.double(), expected) <= 1e-5


@pytest.mark.parametrize("mode", ["parallel", "chunkwise"])
def test_bfloat16_decays_are_exact_beyond_256_tokens(mode):
    """bfloat16 cannot count past 256 exactly; decays built from bf16 distances would be visibly off."""
    rates = torch.tensor([1 - 1 / 512, 1 - 1 / 256])  # long horizons: γ^300 is still ≈ 0.3–0.55
    q, k, v = random_qkv(1, 2, 600, 8, dtype=torch.float32)
    q_bf, k_bf, v_bf = (t.bfloat16() for t in (q, k, v))
    reference = retention(*(t.float() for t in (q_bf, k_bf, v_bf)), rates)
    out = retention(q_bf, k_bf, v_bf, rates, mode=mode, chunk_size=128)
    assert relative_error(out.float(), reference) <= 2e-2


def test_decays_follow_the_input_device_and_dtype():
    rates = torch.tensor([0.9, 0.99])
    matrix = retention_decay_matrix(40, rates.double(), grid_shape=(5, 8))
    assert matrix.dtype == torch.float64 and matrix.device == rates.device
    assert retention_decay_matrix(40, rates.bfloat16()).dtype == torch.float32  # never 16-bit decays


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in elements) any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize(
    "grid_shape,directions,chunk_size",
    [(None, 1, 64), ((64, 64), 1, 1), ((64, 64), 4, 2), ((32, 128), 2, 1)],
)
@pytest.mark.parametrize("mode", ["chunkwise", "recurrent"])
def test_chunkwise_and_recurrent_never_build_a_token_by_token_matrix(grid_shape, directions, chunk_size, mode):
    batch, heads, tokens, head_dim = 1, 2, 4096, 8
    rates = torch.tensor([0.9, 0.99])
    q, k, v = random_qkv(batch, heads, tokens, head_dim, dtype=torch.float32)
    with LargestTensor() as probe:
        retention(q, k, v, rates, mode=mode, chunk_size=chunk_size, grid_shape=grid_shape, directions=directions)
    io_size = batch * heads * tokens * head_dim
    if grid_shape is None:
        # 1D chunks are batched: one chunk×chunk score block per chunk, one d×d state per chunk.
        num_chunks = -(-tokens // chunk_size)
        bound = max(io_size, batch * heads * tokens * chunk_size, batch * heads * (num_chunks + 1) * head_dim**2)
    else:
        chunk_tokens = chunk_size * grid_shape[1]
        bound = max(io_size, batch * heads * chunk_tokens**2, batch * heads * grid_shape[1] * head_dim**2)
    assert probe.largest <= bound
    assert probe.largest < tokens * tokens  # far from N×N
