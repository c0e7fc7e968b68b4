"""The lean chunkwise backward (retention/autograd.py) and the tile-shaped 2D chunks."""

from __future__ import annotations

import pytest
import torch
from conftest import random_qkv, relative_error, saved_tensor_bytes

from vir_lightning.retention import modes, retention
from vir_lightning.retention.autograd import ChunkwiseRetention, ChunkwiseSpec, chunkwise_forward
from vir_lightning.retention.functional import tile_shape

TOL = 1e-10  # float64


def _log_gamma(rates3):
    return modes.log_rates(tuple(rates3.tolist()), torch.float64, torch.device("cpu"))


@pytest.mark.parametrize(
    "spec,tokens",
    [
        (ChunkwiseSpec(3, 0.5), 8),  # a ragged last chunk
        (ChunkwiseSpec(2, 0.5, (3, 4), True, 1, 3), 13),  # class token, ragged tiles
        (ChunkwiseSpec(2, 0.5, (3, 3), False, 2, 2), 9),
        (ChunkwiseSpec(1, 0.5, (2, 4), False, 4, 3), 8),
    ],
)
def test_lean_backward_passes_gradcheck(spec, tokens, rates3):
    q, k, v = random_qkv(1, 3, tokens, 3, requires_grad=True)
    log_gamma = _log_gamma(rates3)
    assert torch.autograd.gradcheck(lambda a, b, c: ChunkwiseRetention.apply(a, b, c, log_gamma, spec), (q, k, v))


@pytest.mark.parametrize("grid_shape", [(5, 7), (1, 9), (8, 3), (4, 4)])
@pytest.mark.parametrize("cls_token", [False, True])
@pytest.mark.parametrize("tile", [(1, 1), (2, 3), (3, 2), (8, 4), (2, 100)])
def test_tile_shaped_2d_chunks_equal_parallel_values_and_gradients(grid_shape, cls_token, tile, rates3):
    tokens = grid_shape[0] * grid_shape[1] + cls_token
    log_gamma = _log_gamma(rates3)
    spec = ChunkwiseSpec(tile[0], 0.7, grid_shape, cls_token, 1, tile[1])
    upstream = torch.randn(2, 3, tokens, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def run(fn):
        q, k, v = random_qkv(2, 3, tokens, 4, value_dim=5, seed=tokens, requires_grad=True)
        out = fn(q, k, v)
        (out * upstream).sum().backward()
        return out, q.grad, k.grad, v.grad

    expected = run(lambda q, k, v: retention(q, k, v, rates3, grid_shape=grid_shape, class_token=cls_token, scale=0.7))
    lean = run(lambda q, k, v: ChunkwiseRetention.apply(q, k, v, log_gamma, spec))
    through_autograd = run(lambda q, k, v: chunkwise_forward(spec, log_gamma, q, k, v))
    for want, got, plain in zip(expected, lean, through_autograd, strict=True):
        assert relative_error(got, want) <= TOL
        assert relative_error(plain, want) <= TOL


@pytest.mark.parametrize("cls_token", [False, True])
def test_grid_wider_than_the_default_tile_uses_tiles_and_stays_exact(cls_token, rates3):
    """23×40 patches: default tiles of 12×20 (2×2 of them, the bottom band one row short)."""
    grid_shape = (23, 40)
    assert tile_shape(grid_shape, None) == (12, 20)
    tokens = 23 * 40 + cls_token
    upstream = torch.randn(1, 3, tokens, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def grads(mode):
        q, k, v = random_qkv(1, 3, tokens, 4, requires_grad=True)
        out = retention(q, k, v, rates3, mode=mode, grid_shape=grid_shape, class_token=cls_token, scale=0.5)
        (out * upstream).sum().backward()
        return out, q.grad, k.grad, v.grad

    for want, got in zip(grads("parallel"), grads("chunkwise"), strict=True):
        assert relative_error(got, want) <= TOL


@pytest.mark.parametrize("grid_shape", [None, (16, 24)])
def test_lean_backward_keeps_only_q_k_v(grid_shape, rates3):
    tokens = 384
    q, k, v = random_qkv(1, 3, tokens, 8, dtype=torch.float32, requires_grad=True)
    qkv_bytes = 3 * q.numel() * q.element_size()
    kwargs = dict(mode="chunkwise", grid_shape=grid_shape, chunk_size=4 if grid_shape else 32)
    lean = saved_tensor_bytes(lambda: retention(q, k, v, rates3, **kwargs))
    spec = ChunkwiseSpec(4, 1.0, grid_shape, False, 1, 24) if grid_shape else ChunkwiseSpec(32, 1.0)
    log_gamma = modes.log_rates(tuple(rates3.tolist()), torch.float32, torch.device("cpu"))
    plain = saved_tensor_bytes(lambda: chunkwise_forward(spec, log_gamma, q, k, v))
    assert lean == qkv_bytes
    assert plain > 2 * qkv_bytes  # what the lean backward avoids: score blocks and scan states


def test_lean_backward_skips_inputs_without_gradient(rates3):
    q, k, v = random_qkv(1, 3, 10, 4)
    v.requires_grad_(True)
    retention(q, k, v, rates3, mode="chunkwise", chunk_size=3).sum().backward()
    expected = random_qkv(1, 3, 10, 4)[2].requires_grad_(True)
    retention(q, k, expected, rates3).sum().backward()
    assert q.grad is None and k.grad is None
    assert relative_error(v.grad, expected.grad) <= TOL


def test_bf16_under_autocast_saves_bf16_and_computes_in_float32(rates3):
    """Mixed precision: q, k, v are kept in bfloat16 for the backward pass (half the memory of
    float32 copies), the states are float32 whatever autocast says, and dtypes come back as given."""
    q, k, v = (t.to(torch.bfloat16).requires_grad_(True) for t in random_qkv(1, 3, 40, 8, seed=5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        saved = saved_tensor_bytes(lambda: retention(q, k, v, rates3, mode="chunkwise", chunk_size=7))
        out = retention(q, k, v, rates3, mode="chunkwise", chunk_size=7)
    assert saved == 3 * q.numel() * 2
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert q.grad.dtype == k.grad.dtype == v.grad.dtype == torch.bfloat16
    reference = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    expected = retention(*reference, rates3, mode="chunkwise", chunk_size=7)
    expected.square().sum().backward()
    assert relative_error(out.double(), expected) < 1e-2  # bfloat16 output rounding
    for t, ref in zip((q, k, v), reference, strict=True):
        assert relative_error(t.grad.double(), ref.grad) < 2e-2
