"""QONNX's integer and bipolar quantizers: ``Quant`` (renamed ``IntQuant`` in newer QONNX) and ``BipolarQuant``.

Both return the dequantized values (floats on the integer grid times the scale), as the
specification defines them; the arithmetic runs in the input's dtype, as QONNX and Brevitas do, so
a value that lands on a rounding tie in float32 is rounded as they round it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._opset import BREVITAS_DOMAIN, OPS, QONNX_DOMAIN
from .integers import bit_width, check_bit_width, check_flag, check_scale, float_input, int_range, operand
from .rounding import rounding_function


def check_quant(inputs: Any, attributes: dict[str, Any]) -> None:
    """Load-time check of a Quant node: its attributes, a constant bit width, the scale and zero point."""
    rounding_function(attributes["rounding_mode"])
    check_flag(attributes, "signed")
    check_flag(attributes, "narrow")
    x, scale, zeropt, bits = (list(inputs) + [None] * 4)[:4]
    check_scale(scale, x, "scale", nonzero=True)
    check_scale(zeropt, x, "zeropt", nonzero=False)
    check_bit_width(bits, "bitwidth")


def quant(x, scale, zeropt, bitwidth, /, *, signed=1, narrow=0, rounding_mode="ROUND"):  # type: ignore[no-untyped-def]
    """Quant(x) = (round(clip(x / scale + zeropt, min_int, max_int)) - zeropt) * scale.

    The clipping bounds come from ``bitwidth``, ``signed`` and ``narrow`` (see ``int_range``); the
    rounding from ``rounding_mode`` (see ``rounding``). Clipping comes first, as in the specification.
    """
    x = float_input(x)
    scale = operand(scale, x, "scale")
    zeropt = operand(zeropt, x, "zeropt")
    low, high = int_range(bit_width(bitwidth, "bitwidth"), signed, narrow)
    y = x / scale + zeropt
    y = np.clip(y, x.dtype.type(low), x.dtype.type(high))
    y = rounding_function(rounding_mode)(y)
    return ((y - zeropt) * scale).astype(x.dtype, copy=False)


def check_bipolar_quant(inputs: Any, attributes: dict[str, Any]) -> None:
    """Load-time check of a BipolarQuant node: its scale broadcasts onto the input."""
    x, scale = (list(inputs) + [None] * 2)[:2]
    check_scale(scale, x, "scale", nonzero=False)


def bipolar_quant(x, scale, /):  # type: ignore[no-untyped-def]
    """BipolarQuant(x) = (+1 where x >= 0, else -1) * scale."""
    x = float_input(x)
    scale = operand(scale, x, "scale")
    signs = np.where(x >= 0, x.dtype.type(1), x.dtype.type(-1))
    return (signs * scale).astype(x.dtype, copy=False)


for _domain in (QONNX_DOMAIN, BREVITAS_DOMAIN):
    OPS.op("Quant", since=1, domain=_domain, validate=check_quant)(quant)
    OPS.op("BipolarQuant", since=1, domain=_domain, validate=check_bipolar_quant)(bipolar_quant)
# QONNX's current name for Quant; only in its own domain (Brevitas never wrote it)
OPS.op("IntQuant", since=1, domain=QONNX_DOMAIN, validate=check_quant)(quant)
