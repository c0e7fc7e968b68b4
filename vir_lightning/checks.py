"""Checks of plain option values shared by every layer of the package (models, data, deploy).

Nothing here imports torch or any other part of the package, so the data pipeline can use it
without importing the models.
"""

from __future__ import annotations

import numbers


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def to_2tuple(value, name: str = "value") -> tuple[int, int]:
    """``224 -> (224, 224)``; ``(224, 320) -> (224, 320)``; ValueError unless positive integers."""
    pair = (value, value) if _is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"{name}={value!r} is invalid; expected a positive int or a pair of positive ints")
    return (int(pair[0]), int(pair[1]))


def check_int(name: str, value, minimum: int = 1, hint: str = "") -> int:
    """``value`` as an int, or ValueError naming ``name`` unless it is an integer >= ``minimum``."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid; expected an integer >= {minimum}{hint}")
    return int(value)
