"""Smooth float32 functions as tables: a few numpy passes where a series would take thirty.

A function ``f`` is tabulated once, in float64, every ``STEP`` over ``[low, high]``; a float32 ``x`` is
read as ``f(x0) + (x - x0) * (f(x0 + STEP) - f(x0)) / STEP`` with ``x0`` the grid point below it.
``STEP`` is a power of two, so ``x / STEP``, its floor and the fraction between are exact in float32:
the only errors are the table's rounding to float32 and the interpolation's, ``STEP**2 / 8 * |f''|``
(below 3e-8 times ``|f''|``). Beyond the table ``f`` is taken constant (its value at the nearest end).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .chunks import CHUNK, chunked

#: the grid step of every table
STEP = 2.0**-11


class Table:
    """``function`` tabulated on ``[low, high]`` (both multiples of ``STEP``), read by linear interpolation."""

    def __init__(self, function, low: float, high: float) -> None:
        count = round((high - low) / STEP) + 1
        values = np.array([function(low + i * STEP) for i in range(count + 1)])
        self.low, self.high = np.float32(low), np.float32(high)
        self.offset = round(low / STEP)
        self.values = values[:-1].astype(np.float32)
        self.slopes = np.diff(values).astype(np.float32)  # per step, not per unit

    def __call__(self, x: np.ndarray, out: np.ndarray, times_x: bool = False, below=None) -> np.ndarray:
        """``f(x)``, or ``x * f(x)`` with ``times_x``, into ``out`` (float32 arrays of one shape; ``out`` may
        be ``x``). ``below``, when given, computes the result of the elements under the table's low end
        instead (a function of a float32 array)."""
        size = min(CHUNK, x.size)
        u = np.empty(size, np.float32)
        floor = np.empty(size, np.float32)
        index = np.empty(size, np.intp)
        read = np.empty(size, np.float32)

        def step(xs: np.ndarray, result: np.ndarray) -> None:
            n = xs.size
            uu, ff, ii, rr = u[:n], floor[:n], index[:n], read[:n]
            under = None
            if below is not None:
                mask = np.less(xs, self.low, out=rr.view(np.bool_)[:n])
                if mask.any():
                    under = np.flatnonzero(mask)
                    tail = xs[under]
            # above the table f is its last value (the last step's slope is ~0, whatever the fraction);
            # below, the index is clipped to the first value
            np.minimum(xs, self.high, out=uu)
            uu *= np.float32(1 / STEP)
            np.floor(uu, out=ff)
            uu -= ff  # the fraction of a step, exact
            ii[...] = ff
            ii -= self.offset
            np.take(self.slopes, ii, out=rr, mode="clip")
            uu *= rr
            np.take(self.values, ii, out=rr, mode="clip")
            if times_x:
                uu += rr
                np.multiply(uu, xs, out=result)
            else:
                np.add(uu, rr, out=result)
            if under is not None:
                result[under] = below(tail)

        with np.errstate(invalid="ignore"):  # NaN and -inf: their indices are clipped, their values NaN
            return chunked(x, out, step)


@functools.cache
def normal_cdf() -> Table:
    """Phi, the standard normal distribution function (Gelu's gate), on [-3, 5.5]: above, Phi rounds to 1 in
    float32; below, ``gelu`` computes it apart (relative accuracy matters there, where Phi is tiny)."""
    return Table(lambda v: 0.5 * math.erfc(-v / math.sqrt(2)), -3.0, 5.5)


@functools.cache
def tanh_gate() -> Table:
    """Gelu's tanh approximation of Phi, ``(1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))) / 2``, on [-3, 5.5]."""
    def gate(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-2.0 * math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))

    return Table(gate, -3.0, 5.5)


@functools.cache
def erf_positive() -> Table:
    """erf on [0, 4] (above, erf rounds to 1 in float32)."""
    return Table(math.erf, 0.0, 4.0)


def erf(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """erf of a float32 array: the table of ``erf_positive`` on ``|x|``, with ``x``'s sign (absolute error
    below 1e-7)."""
    out = np.empty_like(x) if out is None else out
    magnitude = np.abs(x, out=np.empty_like(x))
    erf_positive()(magnitude, magnitude)
    return np.copysign(magnitude, x, out=out)


def gated(x: np.ndarray, table: Table, below, out: np.ndarray | None = None) -> np.ndarray:
    """``x * g(x)`` for a float32 array, ``g`` read from ``table``; the elements under the table's low end
    (where ``g`` is tiny and its table only absolutely accurate) come from ``below``, a function of a
    float32 array computing the product in float64. ``out`` may be ``x``."""
    return table(x, np.empty_like(x) if out is None else out, times_x=True, below=below)
