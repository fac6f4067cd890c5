"""The rounding modes of QONNX's Quant and Trunc, by the names the specification and Brevitas use.

Each function rounds a float array to whole numbers and keeps its dtype. The specification's table:

    value  ROUND(=HALF_EVEN)  CEIL  FLOOR  UP  DOWN  HALF_UP  HALF_DOWN
     2.5          2             3     2     3    2      3        2
    -2.5         -2            -2    -3    -3   -2     -3       -2
     1.6          2             2     1     2    1      2        2

``UP`` and ``DOWN`` go away from and towards zero; the ``HALF_`` modes round to the nearest whole
number and send ties away from (``HALF_UP``) or towards (``HALF_DOWN``) zero. ``ROUND_TO_ZERO`` is
Brevitas's name for ``DOWN``. Names are case-insensitive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _away_from_zero(y: Any) -> Any:
    return np.where(y < 0, np.floor(y), np.ceil(y))


def _nearest(y: Any, ties_away: bool) -> Any:
    # |y - trunc(y)| is exact in floating point; adding 0.5 first is not (0.49999997 + 0.5 rounds to 1.0)
    whole = np.trunc(y)
    fraction = np.abs(y - whole)
    up = fraction >= 0.5 if ties_away else fraction > 0.5
    return np.where(up, whole + np.sign(y), whole)


ROUNDING_MODES: dict[str, Callable[[Any], Any]] = {
    "ROUND": np.rint,  # halves to even
    "CEIL": np.ceil,
    "FLOOR": np.floor,
    "UP": _away_from_zero,
    "DOWN": np.trunc,
    "ROUND_TO_ZERO": np.trunc,
    "HALF_UP": lambda y: _nearest(y, ties_away=True),
    "HALF_DOWN": lambda y: _nearest(y, ties_away=False),
}


def rounding_function(mode: str) -> Callable[[Any], Any]:
    """The function rounding like ``mode`` (any case).

    Raises:
        ValueError: ``mode`` is not one of ``ROUNDING_MODES``; the message lists them.
    """
    function = ROUNDING_MODES.get(str(mode).upper())
    if function is None:
        raise ValueError(f"rounding_mode {mode!r} is not one of {', '.join(ROUNDING_MODES)} (any case)")
    return function
