"""Named per-head decay-rate schedules.

A retention head with decay rate γ forgets a token after roughly 1 / (1 − γ) steps (its *effective
horizon*). The schedules below spread the heads over a range of horizons; they are fixed, not
learned, and identical in every layer.
"""

from __future__ import annotations

import math

__all__ = ["DECAY_SCHEDULES", "decay_rates_for"]


def _vir_schedule(num_heads: int) -> list[float]:
    """The ViR authors' schedule: γ_h = 1 − exp(linspace(log 1/32, log 1/512, H)[h]).

    Effective horizons run from 32 tokens (first head) to 512 tokens (last head).
    """
    lo, hi = math.log(1 / 32), math.log(1 / 512)
    if num_heads == 1:
        return [1.0 - math.exp(lo)]
    step = (hi - lo) / (num_heads - 1)
    return [1.0 - math.exp(lo + h * step) for h in range(num_heads)]


def _retnet_schedule(num_heads: int) -> list[float]:
    """RetNet's schedule: γ_h = 1 − 2^(−5−h) (horizons 32, 64, 128, … tokens)."""
    return [1.0 - 2.0 ** (-5 - h) for h in range(num_heads)]


DECAY_SCHEDULES = {"vir": _vir_schedule, "retnet": _retnet_schedule}


def decay_rates_for(schedule: str, num_heads: int) -> tuple[float, ...]:
    """Decay rates γ_h ∈ (0, 1) for ``num_heads`` heads under a named schedule.

    Args:
        schedule: ``"vir"`` (the authors', horizons 32…512) or ``"retnet"`` (1 − 2^(−5−h)).
        num_heads: number of retention heads, ≥ 1.

    Returns:
        A tuple of ``num_heads`` Python floats (double precision; convert on the device you need).

    Raises:
        ValueError: unknown schedule name or ``num_heads < 1``.
    """
    if schedule not in DECAY_SCHEDULES:
        raise ValueError(f"decay_schedule={schedule!r} is unknown; expected one of {sorted(DECAY_SCHEDULES)}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads={num_heads!r} must be a positive integer")
    rates = DECAY_SCHEDULES[schedule](num_heads)
    # RetNet's rates reach 1 − 2^-53 == 1.0 in double precision after ~48 heads: say so, not NaN later.
    if not all(0.0 < r < 1.0 for r in rates):
        raise ValueError(
            f"decay_schedule={schedule!r} with num_heads={num_heads} yields rates that round to 1.0;"
            " use fewer heads or the 'vir' schedule"
        )
    return tuple(rates)
