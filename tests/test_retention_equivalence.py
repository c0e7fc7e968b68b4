"""All three retention forms compute the same function (docs/design/method.md §1–2), values and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import brute_force_retention, random_qkv, relative_error

from vir_lightning.retention import retention

TOL = 1e-10  # float64

# (grid_shape, cls_token, directions); None = 1D
LAYOUTS_SMALL = [
    (None, False, 1),
    ((1, 1), False, 1),
    ((1, 1), True, 1),
    ((3, 4), False, 1),
    ((4, 3), True, 1),
    ((1, 6), True, 1),
    ((5, 1), False, 1),
    ((3, 4), False, 2),
    ((4, 3), False, 4),
    ((1, 5), False, 4),
    ((5, 1), False, 2),
    ((2, 2), False, 4),
]


@pytest.mark.parametrize("grid_shape,cls_token,directions", LAYOUTS_SMALL)
def test_parallel_matches_brute_force_definition(grid_shape, cls_token, directions, rates3):
    tokens = 7 if grid_shape is None else grid_shape[0] * grid_shape[1] + cls_token
    q, k, v = random_qkv(2, 3, tokens, 4, value_dim=5)
    expected = brute_force_retention(q, k, v, rates3, grid_shape, cls_token, directions)
    actual = retention(q, k, v, rates3, grid_shape=grid_shape, class_token=cls_token, directions=directions)
    assert relative_error(actual, expected) <= TOL


@pytest.mark.parametrize("tokens", [1, 2, 5, 16, 33, 64, 100])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 16, 64, 1000, None])
def test_1d_chunkwise_equals_parallel_for_every_length_and_chunk(tokens, chunk_size, rates3):
    q, k, v = random_qkv(2, 3, tokens, 8, seed=tokens)
    expected = retention(q, k, v, rates3)
    actual = retention(q, k, v, rates3, mode="chunkwise", chunk_size=chunk_size)
    assert relative_error(actual, expected) <= TOL


@pytest.mark.parametrize("tokens", [1, 2, 17, 64])
def test_1d_recurrent_equals_parallel(tokens, rates3):
    q, k, v = random_qkv(2, 3, tokens, 8, value_dim=6, seed=tokens)
    assert relative_error(retention(q, k, v, rates3, mode="recurrent"), retention(q, k, v, rates3)) <= TOL


GRIDS = [(1, 1), (1, 9), (9, 1), (2, 3), (5, 4), (4, 7), (8, 8)]


@pytest.mark.parametrize("grid_shape", GRIDS)
@pytest.mark.parametrize("cls_token", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 100, None])
def test_2d_chunkwise_equals_parallel(grid_shape, cls_token, chunk_size, rates3):
    tokens = grid_shape[0] * grid_shape[1] + cls_token
    q, k, v = random_qkv(2, 3, tokens, 4, seed=tokens)
    kwargs = dict(grid_shape=grid_shape, class_token=cls_token)
    expected = retention(q, k, v, rates3, **kwargs)
    actual = retention(q, k, v, rates3, mode="chunkwise", chunk_size=chunk_size, **kwargs)
    assert relative_error(actual, expected) <= TOL


@pytest.mark.parametrize("grid_shape", GRIDS)
@pytest.mark.parametrize("cls_token", [False, True])
def test_2d_recurrent_equals_parallel(grid_shape, cls_token, rates3):
    tokens = grid_shape[0] * grid_shape[1] + cls_token
    q, k, v = random_qkv(1, 3, tokens, 4, seed=tokens)
    kwargs = dict(grid_shape=grid_shape, class_token=cls_token)
    expected = retention(q, k, v, rates3, **kwargs)
    assert relative_error(retention(q, k, v, rates3, mode="recurrent", **kwargs), expected) <= TOL


@pytest.mark.parametrize("directions", [2, 4])
@pytest.mark.parametrize("grid_shape", [(1, 1), (1, 6), (6, 1), (3, 5), (6, 4)])
@pytest.mark.parametrize(
    "mode,chunk_size", [("recurrent", None), ("chunkwise", 1), ("chunkwise", 4), ("chunkwise", None)]
)
def test_2d_multi_direction_modes_equal_parallel(directions, grid_shape, mode, chunk_size, rates3):
    q, k, v = random_qkv(2, 3, grid_shape[0] * grid_shape[1], 4, seed=directions)
    kwargs = dict(grid_shape=grid_shape, directions=directions)
    expected = retention(q, k, v, rates3, **kwargs)
    actual = retention(q, k, v, rates3, mode=mode, chunk_size=chunk_size, **kwargs)
    assert relative_error(actual, expected) <= TOL


def test_directions_4_is_the_symmetric_manhattan_decay(rates3):
    """Each pair counted once: D[i, j] = γ^(|Δx|+|Δy|) for every pair, in every mode."""
    rows, cols = 3, 4
    q, k, v = random_qkv(1, 3, rows * cols, 4)
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    x, y = x.flatten().double(), y.flatten().double()
    distance = (x[:, None] - x[None, :]).abs() + (y[:, None] - y[None, :]).abs()
    decay = rates3[:, None, None] ** distance
    expected = ((q @ k.transpose(-1, -2)) * decay) @ v
    for mode in ("parallel", "recurrent", "chunkwise"):
        actual = retention(q, k, v, rates3, mode=mode, chunk_size=2, grid_shape=(rows, cols), directions=4)
        assert relative_error(actual, expected) <= TOL, mode


LAYOUTS_GRAD = [(None, False, 1), ((3, 4), False, 1), ((4, 3), True, 1), ((3, 4), False, 2), ((4, 3), False, 4)]


@pytest.mark.parametrize("grid_shape,cls_token,directions", LAYOUTS_GRAD)
@pytest.mark.parametrize("mode,chunk_size", [("recurrent", None), ("chunkwise", 1), ("chunkwise", 5)])
def test_gradients_equal_across_modes(grid_shape, cls_token, directions, mode, chunk_size, rates3):
    tokens = 13 if grid_shape is None else grid_shape[0] * grid_shape[1] + cls_token
    kwargs = dict(grid_shape=grid_shape, class_token=cls_token, directions=directions)
    upstream = torch.randn(2, 3, tokens, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def grads(**mode_kwargs):
        q, k, v = random_qkv(2, 3, tokens, 4, requires_grad=True)
        (retention(q, k, v, rates3, **kwargs, **mode_kwargs) * upstream).sum().backward()
        return q.grad, k.grad, v.grad

    for expected, actual in zip(grads(), grads(mode=mode, chunk_size=chunk_size), strict=True):
        assert relative_error(actual, expected) <= TOL


def test_value_dim_may_differ_from_head_dim(rates3):
    q, k, v = random_qkv(1, 3, 12, 4, value_dim=9)
    out = retention(q, k, v, rates3, mode="chunkwise", chunk_size=5)
    assert out.shape == (1, 3, 12, 9)
    assert relative_error(out, retention(q, k, v, rates3)) <= TOL


def test_decay_rates_accept_a_sequence_of_floats(rates3):
    q, k, v = random_qkv(1, 3, 6, 4)
    assert torch.equal(retention(q, k, v, rates3.tolist()), retention(q, k, v, rates3))


@pytest.mark.parametrize("mode", ["parallel", "chunkwise", "recurrent", "auto"])
@pytest.mark.parametrize("grid_shape,cls_token,directions", [(None, False, 1), ((3, 4), True, 1), ((3, 4), False, 4)])
def test_scale_argument_equals_scaling_q_in_every_mode(mode, grid_shape, cls_token, directions, rates3):
    tokens = 11 if grid_shape is None else grid_shape[0] * grid_shape[1] + cls_token
    q, k, v = random_qkv(2, 3, tokens, 4, seed=3)
    kwargs = dict(grid_shape=grid_shape, class_token=cls_token, directions=directions, mode=mode)
    expected = retention(q * 0.3, k, v, rates3, **{**kwargs, "mode": "parallel"})
    actual = retention(q, k, v, rates3, scale=0.3, chunk_size=2 if mode == "chunkwise" else None, **kwargs)
    assert relative_error(actual, expected) <= TOL
