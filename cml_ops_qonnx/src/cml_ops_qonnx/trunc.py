"""QONNX's ``Trunc``: requantize an integer grid to fewer bits by dropping low bits.

Version 1 (also the ``onnx.brevitas`` op of older Brevitas exports) takes the input and output bit
widths and keeps the input's scale. Version 2, what Brevitas 0.13 writes, takes the output scale
instead of deriving it, and clips to the output grid given by ``signed`` and ``narrow``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cml_core.quantization import ElementwiseOp
from cml_core.quantization.stated import code_quantizer

from ._opset import BREVITAS_DOMAIN, OPS, QONNX_DOMAIN
from .integers import bit_width, check_bit_width, check_flag, check_scale, float_input, int_range, operand
from .rounding import rounding_function


def _on_input_grid(x: np.ndarray[Any, Any], scale: Any, zeropt: Any) -> np.ndarray[Any, Any]:
    # the input is already on its grid: rounding to even only removes float error
    return np.rint(x / scale + zeropt)  # type: ignore[no-any-return]


def check_trunc_v1(inputs: Any, attributes: dict[str, Any]) -> None:
    """Load-time check of a version-1 Trunc node."""
    rounding_function(attributes["rounding_mode"])
    x, scale, zeropt, in_bits, out_bits = (list(inputs) + [None] * 5)[:5]
    check_scale(scale, x, "scale", nonzero=True)
    check_scale(zeropt, x, "zeropt", nonzero=False)
    check_bit_width(in_bits, "in_bitwidth")
    check_bit_width(out_bits, "out_bitwidth")


def trunc_v1(x, scale, zeropt, in_bitwidth, out_bitwidth, /, *, rounding_mode="FLOOR"):  # type: ignore[no-untyped-def]
    """Trunc-1(x) = (round_mode(rint(x / scale + zeropt) / 2^(in_bitwidth - out_bitwidth)) - zeropt) * scale.

    No clipping: the input bit width bounds the result already.
    """
    x = float_input(x)
    scale = operand(scale, x, "scale")
    zeropt = operand(zeropt, x, "zeropt")
    dropped = bit_width(in_bitwidth, "in_bitwidth") - bit_width(out_bitwidth, "out_bitwidth")
    y = _on_input_grid(x, scale, zeropt) / np.ldexp(x.dtype.type(1), dropped)
    y = rounding_function(rounding_mode)(y)
    return ((y - zeropt) * scale).astype(x.dtype, copy=False)


def check_trunc_v2(inputs: Any, attributes: dict[str, Any]) -> None:
    """Load-time check of a version-2 Trunc node."""
    rounding_function(attributes["rounding_mode"])
    check_flag(attributes, "signed")
    check_flag(attributes, "narrow")
    x, scale, zeropt, in_bits, out_scale, out_bits = (list(inputs) + [None] * 6)[:6]
    check_scale(scale, x, "scale", nonzero=True)
    check_scale(zeropt, x, "zeropt", nonzero=False)
    check_scale(out_scale, x, "out_scale", nonzero=True)
    check_bit_width(in_bits, "in_bitwidth")
    check_bit_width(out_bits, "out_bitwidth")


def trunc_v2(x, scale, zeropt, in_bitwidth, out_scale, out_bitwidth, /, *,  # type: ignore[no-untyped-def]
             signed=1, narrow=0, rounding_mode="FLOOR"):
    """Trunc-2(x) = (round_mode(clip(rint(x / scale + zeropt) / t, min_int, max_int)) - zeropt / t) * out_scale.

    ``t = 2^rint(log2(out_scale / scale))`` is the power of two between the two grids; the bounds
    come from ``out_bitwidth``, ``signed`` and ``narrow``. ``in_bitwidth`` is checked but not used:
    the scales say how many bits are dropped.
    """
    x = float_input(x)
    scale = operand(scale, x, "scale")
    zeropt = operand(zeropt, x, "zeropt")
    out_scale = operand(out_scale, x, "out_scale")
    bit_width(in_bitwidth, "in_bitwidth")
    low, high = int_range(bit_width(out_bitwidth, "out_bitwidth"), signed, narrow)
    exponent = np.rint(np.log2(out_scale / scale))
    if not np.all(np.isfinite(exponent)):
        raise ValueError("out_scale / scale must be a finite positive ratio (a power of two)")
    step = np.ldexp(x.dtype.type(1), exponent.astype(np.int32))
    y = _on_input_grid(x, scale, zeropt) / step
    y = np.clip(y, x.dtype.type(low), x.dtype.type(high))
    y = rounding_function(rounding_mode)(y)
    return ((y - zeropt / step) * out_scale).astype(x.dtype, copy=False)


class QuantizedTrunc(ElementwiseOp):
    """Trunc (version 2) states its output's quantization: codes of ``out_bitwidth`` bits (``signed``,
    ``narrow``) on ``out_scale``; the op reading it gets exactly those codes. Per-channel scales, or
    a zero point that does not fall on the output grid, fall back to a fitted quantizer."""

    def stated_output(self, ctx: Any, inputs: Any) -> Any:
        params = [None if v is None or not v.is_constant else v.data for v in (list(inputs) + [None] * 6)[1:6]]
        scale, zeropt, _, out_scale, out_bits = params
        if any(p is None or np.size(p) != 1 for p in (scale, zeropt, out_scale, out_bits)):
            return None
        s, z, s_out = (float(np.asarray(p).reshape(-1)[0]) for p in (scale, zeropt, out_scale))
        bits = float(np.asarray(out_bits).reshape(-1)[0])
        step = 2.0 ** round(float(np.log2(s_out / s))) if s > 0 and s_out > 0 else 0.0
        if not step or bits != int(bits) or bits < 1 or (z / step) != int(z / step):
            return None
        low, high = int_range(int(bits), self.attributes.get("signed", 1), self.attributes.get("narrow", 0))
        return code_quantizer(low, high, s_out, int(z / step))


OPS.op("Trunc", since=1, domain=QONNX_DOMAIN, validate=check_trunc_v1, quantized=ElementwiseOp)(trunc_v1)
OPS.op("Trunc", since=2, domain=QONNX_DOMAIN, validate=check_trunc_v2, quantized=QuantizedTrunc)(trunc_v2)
OPS.op("Trunc", since=1, domain=BREVITAS_DOMAIN, validate=check_trunc_v1, quantized=ElementwiseOp)(trunc_v1)
