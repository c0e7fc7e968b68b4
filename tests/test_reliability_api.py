"""Edges of the public API and the tool commands: every bad input gets one clear error naming the
problem and the fix, and edge inputs that are valid (empty sequences, NumPy integers, meta tensors)
give the right result instead of a deep failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vir_lightning.retention import retention, retention_decay_matrix, retention_step, tile_shape

RATES = [0.9, 0.8]
MODES = ("parallel", "recurrent", "chunkwise", "auto")


def qkv(batch=2, heads=2, tokens=6, dim=4, **kwargs):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, heads, tokens, dim, generator=g, **kwargs) for _ in range(3))


# ------------------------------------------------------------------------------------------------
# The retention op
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_zero_tokens_give_an_empty_result_in_every_mode(mode):
    q, k, v = qkv(tokens=0)
    out = retention(q, k, v, RATES, mode=mode)
    assert out.shape == (2, 2, 0, 4)


def test_zero_tokens_keep_the_autograd_graph():
    q, k, v = (t.requires_grad_() for t in qkv(tokens=0))
    retention(q, k, v, RATES, mode="chunkwise").sum().backward()
    assert q.grad.shape == q.shape


@pytest.mark.parametrize("grid_cols", [None, 3])
def test_an_empty_segment_returns_the_state_unchanged(grid_cols):
    q, k, v = qkv(tokens=6)
    _, state = retention_step(q, k, v, RATES, grid_cols=grid_cols)
    empty = qkv(tokens=0)
    out, after = retention_step(*empty, RATES, state, grid_cols=grid_cols)
    assert out.shape == (2, 2, 0, 4)
    assert torch.equal(after, state)


def test_meta_decay_rates_tensor_is_refused_clearly():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="decay_rates is a meta tensor.*Python floats"):
        retention(q, k, v, torch.tensor(RATES, device="meta"))


def test_decay_rates_that_require_grad_are_refused_not_silently_constant():
    q, k, v = qkv()
    rates = torch.tensor(RATES, requires_grad=True)
    with pytest.raises(ValueError, match=r"decay_rates requires grad.*detach\(\)"):
        retention(q, k, v, rates)
    with torch.no_grad():  # no gradient is asked for: fine
        retention(q, k, v, rates)
    retention(q, k, v, rates.detach())


@pytest.mark.parametrize("directions", [True, 2.0])
def test_directions_must_be_the_integer_1_2_or_4(directions):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=f"directions={directions!r} is invalid"):
        retention(q, k, v, RATES, grid_shape=(2, 3), directions=directions)


def test_numpy_integers_are_accepted_for_grid_shape_and_chunk_size():
    q, k, v = qkv()
    expected = retention(q, k, v, RATES, mode="chunkwise", grid_shape=(2, 3), chunk_size=1)
    got = retention(q, k, v, RATES, mode="chunkwise", grid_shape=(np.int64(2), np.int64(3)), chunk_size=np.int64(1))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("mode", ("parallel", "recurrent", "chunkwise"))
def test_meta_inputs_give_the_output_shape(mode):
    q, k, v = qkv(device="meta")
    assert retention(q, k, v, RATES, mode=mode).shape == q.shape


def test_step_class_token_must_be_a_bool():
    q, k, v = qkv(tokens=1)
    with pytest.raises(ValueError, match="class_token=1; expected True or False"):
        retention_step(q, k, v, RATES, grid_cols=3, class_token=1)


def test_step_state_on_another_device_is_refused_clearly():
    q, k, v = qkv()
    state = torch.zeros(2, 2, 4, 4, device="meta")
    with pytest.raises(ValueError, match="state is .*meta.*expected shape .* on cpu"):
        retention_step(q, k, v, RATES, state)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((5, torch.tensor(RATES)), dict(grid_shape=(2, 2)), r"means 4 tokens, but num_tokens is 5"),
        ((-1, torch.tensor(RATES)), {}, r"num_tokens=-1 is invalid"),
        ((4, [1.5, 0.5]), {}, r"outside the open interval \(0, 1\)"),
        ((4, torch.tensor([[0.9]])), {}, r"expected a floating-point \(heads,\) tensor"),
        ((4, torch.tensor(RATES)), dict(directions=3, grid_shape=(2, 2)), r"directions=3 is invalid"),
    ],
)
def test_decay_matrix_checks_its_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retention_decay_matrix(*args, **kwargs)


def test_decay_matrix_takes_python_floats():
    expected = retention_decay_matrix(4, torch.tensor(RATES))
    torch.testing.assert_close(retention_decay_matrix(4, RATES), expected)


def test_tile_shape_checks_the_grid():
    with pytest.raises(ValueError, match="grid_shape rows=0 is invalid"):
        tile_shape((0, 3), None)
