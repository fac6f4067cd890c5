"""Quantization stated by the graph itself: integer codes whose scale and zero point the model gives.

A model quantized before it reaches cml (QuantizeLinear -> Clip -> DequantizeLinear, a QONNX
``Quant``) says how its tensors are quantized. Ops producing such a tensor declare it with
``ElementwiseOp.stated_output``; the helpers here build that quantizer from the range of integer
codes the tensor can take.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .context import bits_for_range
from .quantizers import UniformQuantizer
from .values import QValue

#: integers fed to a value's float mapping to find where its codes saturate
_FAR = 2**40


def code_range(value: QValue, low: int, high: int, calibrating: bool) -> tuple[int, int] | None:
    """The integer codes an encrypted ``value`` can stand for, within its type's [``low``, ``high``].

    ``value``'s floats are integer codes (the output of a QuantizeLinear, maybe clipped). Its
    mapping is evaluated where its integers are far below and far above any calibrated range (a
    quantization chain saturates there: at the type's bounds, or at a Clip's) and, while
    calibrating, on the calibration data. None when the codes are not whole numbers.
    """
    mapping = value.to_float
    if mapping is None:
        return None
    shape = np.shape(value.data)
    seen: list[Any] = []
    with np.errstate(all="ignore"):
        for far in (-_FAR, _FAR):
            seen.append(np.asarray(mapping(np.full(shape, far, dtype=np.int64)), dtype=np.float64))
        if calibrating:
            seen.append(np.asarray(value.float_value(), dtype=np.float64))
    codes = np.concatenate([s.reshape(-1) for s in seen])
    codes = codes[np.isfinite(codes)]
    if not codes.size or np.any(codes != np.rint(codes)):
        return None
    return max(low, int(codes.min())), min(high, int(codes.max()))


def code_quantizer(low: int, high: int, scale: float, zero_point: int) -> UniformQuantizer | None:
    """The quantizer whose integers are exactly the codes [``low``, ``high``] of floats
    ``scale * (code - zero_point)``; None for a scale that is not a positive finite number."""
    if not (np.isfinite(scale) and scale > 0) or low > high:
        return None
    signed = low < 0
    n_bits = bits_for_range(low, high) if signed else max(1, int(high).bit_length())
    symmetric = signed and low > -(2 ** (n_bits - 1))  # a narrow signed range: [-(2**(n-1) - 1), ...]
    return UniformQuantizer(n_bits, float(scale), int(zero_point), signed, symmetric)


def scalar(value: QValue | None) -> float | None:
    """The single number a constant input holds, or None (absent, encrypted, or several numbers)."""
    if value is None or not value.is_constant or np.size(value.data) != 1:
        return None
    return float(np.asarray(value.data).reshape(-1)[0])
