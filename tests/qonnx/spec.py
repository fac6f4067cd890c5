"""The QONNX specification's formulas, written out element by element from its text, as test oracles.

Arithmetic on tensor values is float32 (the spec's tensor type), one IEEE operation at a time;
rounding and clipping are exact, on Python numbers: ``decimal`` rounds the exact value of a float
with the rounding rule each of the spec's mode names stands for. Nothing here comes from the plugin.
"""

import decimal

import numpy as np

F = np.float32

#: the spec's rounding-mode names (any case) -> the rule decimal implements for it
DECIMAL_MODES = {
    "ROUND": decimal.ROUND_HALF_EVEN,
    "CEIL": decimal.ROUND_CEILING,
    "FLOOR": decimal.ROUND_FLOOR,
    "UP": decimal.ROUND_UP,  # away from zero
    "DOWN": decimal.ROUND_DOWN,  # towards zero
    "ROUND_TO_ZERO": decimal.ROUND_DOWN,  # Brevitas's name for DOWN
    "HALF_UP": decimal.ROUND_HALF_UP,  # nearest, ties away from zero
    "HALF_DOWN": decimal.ROUND_HALF_DOWN,  # nearest, ties towards zero
}

#: the spec's table of rounding modes: value -> (ROUND, CEIL, FLOOR, UP, DOWN, HALF_UP, HALF_DOWN)
SPEC_TABLE = {
    5.5: (6, 6, 5, 6, 5, 6, 5),
    2.5: (2, 3, 2, 3, 2, 3, 2),
    1.6: (2, 2, 1, 2, 1, 2, 2),
    1.1: (1, 2, 1, 2, 1, 1, 1),
    1.0: (1, 1, 1, 1, 1, 1, 1),
    -1.0: (-1, -1, -1, -1, -1, -1, -1),
    -1.1: (-1, -1, -2, -2, -1, -1, -1),
    -1.6: (-2, -1, -2, -2, -1, -2, -2),
    -2.5: (-2, -2, -3, -3, -2, -3, -2),
    -5.5: (-6, -5, -6, -6, -5, -6, -5),
}
TABLE_MODES = ("ROUND", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN")


def round_exact(value, mode):
    """``value`` (a float or int, taken exactly) rounded to an int by the spec's ``mode``."""
    rule = DECIMAL_MODES[mode.upper()]
    exact_value = decimal.Decimal(value if isinstance(value, int) else float(value))
    return int(exact_value.to_integral_value(rounding=rule))


def min_int(signed, narrow, bits):
    if signed:
        return -(2 ** (bits - 1)) + (1 if narrow else 0)
    return 0


def max_int(signed, narrow, bits):
    if signed:
        return 2 ** (bits - 1) - 1
    return 2**bits - 1 - (1 if narrow else 0)


def _elements(x, *operands):
    """(index, x element, operand elements broadcast to x's shape) for every element of x."""
    spread = [np.broadcast_to(np.asarray(o, F), x.shape) for o in operands]
    for index in np.ndindex(x.shape):
        yield index, F(x[index]), [F(o[index]) for o in spread]


def _clip(value, low, high):
    return min(max(float(value), low), high)


def quant(x, scale, zeropt, bitwidth, signed=1, narrow=0, rounding_mode="ROUND"):
    """Quant/IntQuant: y = x / scale + zeropt; clamp to [min_int, max_int]; round; (y - zeropt) * scale."""
    bits = int(np.asarray(bitwidth).item())
    low, high = min_int(signed, narrow, bits), max_int(signed, narrow, bits)
    out = np.empty(x.shape, F)
    for index, xe, (s, z) in _elements(x, scale, zeropt):
        y = _clip(xe / s + z, low, high)
        out[index] = (F(round_exact(y, rounding_mode)) - z) * s
    return out


def bipolar_quant(x, scale):
    """BipolarQuant: +1 where x >= 0, else -1, times scale."""
    out = np.empty(x.shape, F)
    for index, xe, (s,) in _elements(x, scale):
        out[index] = (F(1) if xe >= 0 else F(-1)) * s
    return out


def trunc_v1(x, scale, zeropt, in_bitwidth, out_bitwidth, rounding_mode="FLOOR"):
    """Trunc version 1: y = round(x / scale + zeropt); y / 2^(in - out) rounded by the mode; (y - zeropt) * scale."""
    dropped = int(np.asarray(in_bitwidth).item()) - int(np.asarray(out_bitwidth).item())
    divisor = F(2.0**dropped)
    out = np.empty(x.shape, F)
    for index, xe, (s, z) in _elements(x, scale, zeropt):
        y = F(round_exact(xe / s + z, "ROUND")) / divisor
        out[index] = (F(round_exact(y, rounding_mode)) - z) * s
    return out


def trunc_v2(x, scale, zeropt, in_bitwidth, out_scale, out_bitwidth, signed=1, narrow=0, rounding_mode="FLOOR"):
    """Trunc version 2: y = round(x / scale + zeropt); t = 2^round(log2(out_scale / scale)); clamp y / t to
    the output grid; round by the mode; (y - zeropt / t) * out_scale."""
    bits = int(np.asarray(out_bitwidth).item())
    low, high = min_int(signed, narrow, bits), max_int(signed, narrow, bits)
    out = np.empty(x.shape, F)
    for index, xe, (s, z, so) in _elements(x, scale, zeropt, out_scale):
        t = F(2.0 ** round_exact(float(np.log2(so / s)), "ROUND"))
        y = F(round_exact(xe / s + z, "ROUND")) / t
        y = _clip(y, low, high)
        out[index] = (F(round_exact(y, rounding_mode)) - z / t) * so
    return out
