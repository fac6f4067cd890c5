"""Integer ranges, bit widths and the scale-like operands the QONNX ops share."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from cml_core.signature import StaticInput


def int_range(bit_width: int, signed: int, narrow: int) -> tuple[int, int]:
    """(smallest, largest) integer of a ``bit_width``-bit grid, as the QONNX specification defines it.

    Signed: [-2^(b-1), 2^(b-1) - 1], narrow dropping the lowest value; unsigned: [0, 2^b - 1],
    narrow dropping the highest. One signed bit is {-1, 0} (bipolar values have their own op).
    """
    if signed:
        return -(2 ** (bit_width - 1)) + int(bool(narrow)), 2 ** (bit_width - 1) - 1
    return 0, 2**bit_width - 1 - int(bool(narrow))


def bit_width(value: Any, name: str) -> int:
    """The bit width held by a one-element array, as an int.

    Raises:
        ValueError: ``value`` has more than one element, or is not a whole number of at least 1.
    """
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"{name} must be a single number, got an array of shape {array.shape}")
    number = array.reshape(()).item()
    if isinstance(number, bool) or not np.isfinite(number) or number != int(number) or number < 1:
        raise ValueError(f"{name} must be a whole number of bits, at least 1, got {number!r}")
    return int(number)


def float_input(x: Any) -> np.ndarray[Any, Any]:
    """``x`` as an array, which must hold floats (the ops are defined on float tensors)."""
    array = np.asarray(x)
    if array.dtype.kind != "f":
        raise ValueError(f"the input to quantize must be a float tensor, got {array.dtype}")
    return array


def operand(value: Any, x: np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
    """A scale or zero point in ``x``'s dtype, checked to broadcast onto ``x`` without changing its shape.

    Raises:
        ValueError: the shapes do not broadcast, or broadcasting would grow ``x``.
    """
    array = np.asarray(value)
    try:
        grown = np.broadcast_shapes(x.shape, array.shape) != x.shape
    except ValueError:
        grown = True
    if grown:
        raise ValueError(f"{name} of shape {array.shape} does not broadcast onto the input of shape {x.shape}; "
                         "give it as a scalar or with one entry per channel and ones elsewhere")
    return array.astype(x.dtype, copy=False)


# --- load-time checks ---------------------------------------------------------------------------


def check_flag(attributes: dict[str, Any], name: str) -> None:
    if name in attributes and attributes[name] not in (0, 1):
        raise ValueError(f"{name}={attributes[name]!r} must be 0 or 1")


def check_bit_width(static: StaticInput | None, name: str) -> None:
    """A bit width input that is an initializer must hold one whole number of at least 1."""
    if static is None:
        return
    known = [side for side in static.shape or () if side is not None]
    if static.shape is not None and len(known) == len(static.shape) and math.prod(known) != 1:
        raise ValueError(f"{name} must be a single number, got shape {static.shape}")
    if static.value is not None:
        bit_width(static.value, name)


def check_scale(static: StaticInput | None, x: StaticInput | None, name: str, *, nonzero: bool) -> None:
    """A scale or zero point must broadcast onto the input; a constant scale must be finite and non-zero."""
    if static is None:
        return
    if static.value is not None:
        values = np.asarray(static.value)
        if values.dtype.kind not in "fiu":
            raise ValueError(f"{name} must hold numbers, got {values.dtype}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} must be finite, got {values[~np.isfinite(values)].flat[0]}")
        if nonzero and np.any(values == 0):
            raise ValueError(f"{name} must not be zero (the input is divided by it)")
    if x is None or x.shape is None or static.shape is None:
        return
    if len(static.shape) > len(x.shape):
        raise ValueError(f"{name} of shape {static.shape} has more axes than the input {x.shape}")
    for side, x_side in zip(reversed(static.shape), reversed(x.shape)):
        if side is None or x_side is None or side in (1, x_side):
            continue
        raise ValueError(f"{name} of shape {static.shape} does not broadcast onto the input of shape {x.shape}")
