"""QONNX's integer and bipolar quantizers: ``Quant`` (renamed ``IntQuant`` in newer QONNX) and ``BipolarQuant``.

Both return the dequantized values (floats on the integer grid times the scale), as the
specification defines them; the arithmetic runs in the input's dtype, as QONNX and Brevitas do, so
a value that lands on a rounding tie in float32 is rounded as they round it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cml_core.quantization import ElementwiseOp
from cml_core.quantization.stated import code_quantizer

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


def _one(value: Any) -> float | None:
    """The single number of a constant array, or None (absent, or several numbers)."""
    return None if value is None or np.size(value) != 1 else float(np.asarray(value).reshape(-1)[0])


def _grid(attributes: dict[str, Any], scale: Any, zeropt: Any, bitwidth: Any) -> tuple[int, int, float, int] | None:
    """(smallest code, largest code, scale, zero point) of a Quant node with one scale and an
    integer zero point (constant arrays); None for per-channel parameters or a fractional zero point."""
    s, z, bits = _one(scale), _one(zeropt), _one(bitwidth)
    if s is None or z is None or bits is None or z != int(z) or bits != int(bits) or bits < 1:
        return None
    low, high = int_range(int(bits), attributes.get("signed", 1), attributes.get("narrow", 0))
    return low, high, s, int(z)


class QuantizedQuant(ElementwiseOp):
    """Quant states its output's quantization: the codes of ``bitwidth`` bits, ``scale`` and
    ``zeropt``. On an encrypted input the op composes like any element-wise op and the op reading
    its output gets exactly those codes (a 3-bit Quant is a 3-bit encrypted integer); folded at
    load on a weight, it gives the weight's codes and scale as they are. Per-channel scales fall
    back to a fitted quantizer (encrypted) or to the usual weight quantization (constant)."""

    @property
    def rounds_like_its_quantizer(self) -> bool:  # type: ignore[override]
        return str(self.attributes.get("rounding_mode", "ROUND")).upper() == "ROUND"

    def stated_output(self, ctx: Any, inputs: Any) -> Any:
        params = [None if v is None or not v.is_constant else v.data for v in (list(inputs) + [None] * 4)[1:4]]
        grid = _grid(self.attributes, *params)
        return None if grid is None else code_quantizer(*grid)

    @staticmethod
    def stated_constant(bound: Any, values: Any, index: int) -> Any:
        x, scale, zeropt, bitwidth = (list(values) + [None] * 4)[:4]
        grid = _grid(dict(bound.attributes), scale, zeropt, bitwidth)
        if grid is None:
            return None
        low, high, s, z = grid
        out = quant(np.asarray(x), scale, zeropt, bitwidth, **bound.attributes)
        codes = np.rint(np.asarray(out, dtype=np.float64) / s) + z
        return np.clip(codes, low, high).astype(np.int64) - z, s


class QuantizedBipolarQuant(ElementwiseOp):
    """BipolarQuant states its output: codes -1 and +1 on ``scale`` (a sign, not a rounding: a model
    input it reads keeps its own quantizer)."""

    def stated_output(self, ctx: Any, inputs: Any) -> Any:
        scale = inputs[1] if len(inputs) > 1 else None
        s = _one(scale.data) if scale is not None and scale.is_constant else None
        return None if s is None or s <= 0 else code_quantizer(-1, 1, s, 0)


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
    OPS.op("Quant", since=1, domain=_domain, validate=check_quant, quantized=QuantizedQuant)(quant)
    OPS.op("BipolarQuant", since=1, domain=_domain, validate=check_bipolar_quant, quantized=QuantizedBipolarQuant)(bipolar_quant)
# QONNX's current name for Quant; only in its own domain (Brevitas never wrote it)
OPS.op("IntQuant", since=1, domain=QONNX_DOMAIN, validate=check_quant, quantized=QuantizedQuant)(quant)
