"""Bad arguments raise one ValueError that names the argument, its value and what was expected."""

from __future__ import annotations

import pytest
import torch
from conftest import random_qkv

from vir_lightning.retention import decay_rates_for, retention

RATES = torch.tensor([0.9, 0.99])


def qkv(tokens=12, heads=2, dim=4):
    return random_qkv(1, heads, tokens, dim, dtype=torch.float32)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="fast"), r"mode='fast' is unknown.*parallel"),
        (dict(mode="chunkwise", chunk_size=0), r"chunk_size=0 .*positive integer"),
        (dict(mode="chunkwise", chunk_size=-3), r"chunk_size=-3"),
        (dict(mode="chunkwise", chunk_size=2.5), r"chunk_size=2.5"),
        (dict(mode="chunkwise", chunk_size=True), r"chunk_size=True"),
        (dict(grid_shape=(3, 5)), r"grid_shape=\(3, 5\).*15 tokens.*has 12"),
        (dict(grid_shape=(3, 4), class_token=True), r"class_token=True means 13 tokens"),
        (dict(grid_shape=(0, 4)), r"grid_shape rows=0"),
        (dict(grid_shape=(12,)), r"grid_shape=\(12,\).*\(rows, cols\)"),
        (dict(class_token=True), r"class_token=True needs grid_shape"),
        (dict(directions=4), r"directions=4 needs a 2D grid_shape"),
        (dict(directions=3, grid_shape=(3, 4)), r"directions=3 is invalid; expected 1, 2 or 4"),
        (dict(scale=0.0), r"scale=0.0 is invalid; expected a positive finite number"),
        (dict(scale=float("inf")), r"scale=inf is invalid"),
        (dict(scale="0.1"), r"scale='0.1' is invalid"),
    ],
)
def test_bad_option_raises_value_error(kwargs, match):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=match):
        retention(q, k, v, RATES, **kwargs)


def test_directions_with_class_token_is_rejected():
    q, k, v = qkv(tokens=13)
    with pytest.raises(ValueError, match=r"directions=2 with class_token=True"):
        retention(q, k, v, RATES, grid_shape=(3, 4), class_token=True, directions=2)


@pytest.mark.parametrize("bad", [[0.0, 0.9], [0.9, 1.0], [1.5, 0.9], [-0.1, 0.5], [float("nan"), 0.5]])
def test_decay_rates_outside_open_unit_interval_are_rejected(bad):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"decay_rates=.*outside the open interval \(0, 1\)"):
        retention(q, k, v, torch.tensor(bad))


def test_decay_rates_with_wrong_shape_are_rejected():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"decay_rates has shape \(3,\); expected \(2,\)"):
        retention(q, k, v, torch.tensor([0.9, 0.9, 0.9]))


def test_shape_mismatches_are_rejected():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"k has shape \(1, 2, 11, 4\); expected the shape of q"):
        retention(q, k[:, :, :11], v, RATES)
    with pytest.raises(ValueError, match=r"v has shape \(1, 2, 11, 4\)"):
        retention(q, k, v[:, :, :11], RATES)
    with pytest.raises(ValueError, match=r"q has shape \(2, 12, 4\); expected \(batch, heads, tokens, head_dim\)"):
        retention(q[0], k, v, RATES)


def test_mixed_dtypes_and_integer_inputs_are_rejected():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q, k, v must share dtype and device"):
        retention(q, k.double(), v, RATES)
    with pytest.raises(ValueError, match=r"q has dtype torch.int64; expected a floating-point tensor"):
        retention(q.long(), k.long(), v.long(), RATES)


def test_unknown_decay_schedule_names_the_choices():
    with pytest.raises(ValueError, match=r"decay_schedule='linear' is unknown.*retnet.*vir"):
        decay_rates_for("linear", 4)


def test_named_decay_schedules():
    vir = decay_rates_for("vir", 6)
    assert vir[0] == pytest.approx(1 - 1 / 32) and vir[-1] == pytest.approx(1 - 1 / 512)
    horizons = [1 / (1 - g) for g in vir]  # log-spaced horizons 32 … 512
    ratios = [b / a for a, b in zip(horizons, horizons[1:], strict=False)]
    assert ratios == pytest.approx([16 ** (1 / 5)] * 5)
    assert decay_rates_for("retnet", 3) == (1 - 2**-5, 1 - 2**-6, 1 - 2**-7)
    assert decay_rates_for("vir", 1) == (1 - 1 / 32,)
