"""ONNX's quantization ops in float: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, and the
integer products MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv.

Integer arithmetic is exact: products accumulate in int32 (wrapping, as ONNX allows), rounding is half to
even, results saturate to the output type's range. Requantization (``QLinear*``) multiplies the int32
accumulator by ``x_scale * w_scale / y_scale`` in float32, the precision of the scales, as onnxruntime does.
Sub-byte and float8 element types are numpy dtypes from ``ml_dtypes`` (the ones onnx itself maps them to).
"""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
from cml_core.errors import CalibrationWarning, QuantizationError
from cml_core.quantization import ConstantOnlyOp, ElementwiseOp
from cml_core.quantization.stated import code_quantizer, code_range, scalar
from onnx import TensorProto, helper

from ._opset import OPS
from .conv import check_conv, conv_attributes, conv_nd

# element types a quantized value may have, by what a value of that type is
_INTEGER_TYPES = {TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT16, TensorProto.UINT4,
                  TensorProto.INT4, TensorProto.UINT2, TensorProto.INT2}
_FLOAT8_TYPES = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
                 TensorProto.FLOAT8E5M2FNUZ}
_ALWAYS_SATURATED = {TensorProto.FLOAT4E2M1, getattr(TensorProto, "FLOAT6E2M3", None),
                     getattr(TensorProto, "FLOAT6E3M2", None)} - {None}  # no infinity nor NaN to overflow to
_FLOAT_OUTPUTS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def _dtype(elem_type):
    return np.dtype(helper.tensor_dtype_to_np_dtype(int(elem_type)))


def _elem_type(dtype):
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _int_range(dtype):
    """(min, max) of an integer dtype, ml_dtypes' sub-byte ones included."""
    info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


def _is_integer(dtype):
    return _elem_type(dtype) in _INTEGER_TYPES | {TensorProto.INT32}


def _along(param, shape, axis, block_size, what):
    """``param`` (a scale or zero point) shaped to broadcast against an array of ``shape``.

    Per tensor: a scalar (or one element). Per axis: a 1-D tensor of ``shape[axis]`` elements. Blocked
    (``block_size`` > 0): ``shape`` with ``ceil(shape[axis] / block_size)`` along ``axis``, each value
    repeated over its block.

    Raises:
        ValueError: the shape fits none of these, naming ``what``.
    """
    param = np.asarray(param)
    if param.size == 1 and (param.ndim <= 1 or not block_size):
        return param.reshape(())
    rank = len(shape)
    if not -rank <= axis < rank:
        raise ValueError(f"axis={axis} is outside [{-rank}, {rank - 1}] for an input of shape {tuple(shape)}")
    axis %= rank
    if not block_size:
        if param.ndim != 1 or param.shape[0] != shape[axis]:
            raise ValueError(f"{what} of shape {param.shape} is neither a scalar nor a 1-D tensor of the {shape[axis]} "
                             f"elements along axis {axis} of the input {tuple(shape)}; blocked quantization needs "
                             f"block_size")
        return param.reshape([-1 if a == axis else 1 for a in range(rank)])
    if block_size < 0:
        raise ValueError(f"block_size={block_size} must be positive")
    blocks = -(-shape[axis] // block_size)
    want = tuple(blocks if a == axis else d for a, d in enumerate(shape))
    if param.shape != want:
        raise ValueError(f"{what} of shape {param.shape} does not fit blocks of {block_size} along axis {axis} of "
                         f"the input {tuple(shape)}: expected {want}")
    return np.repeat(param, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)


def _division_dtype(x, scale, precision):
    """The dtype ``x / scale`` is computed in: ``precision`` when given, else the scale's float type."""
    if precision:
        return _dtype(precision)
    if _elem_type(scale.dtype) in _FLOAT_OUTPUTS:
        return scale.dtype
    return np.result_type(x.dtype if x.dtype.kind == "f" else np.float32, np.float32)  # int32 or float8e8m0 scale


def _saturate_float(values, dtype, saturate):
    """``values`` (float64) rounded to nearest even in the float ``dtype``; out-of-range values clipped to
    the largest finite magnitude when ``saturate`` (infinities too, NaN stays NaN), else overflowing as
    the type does (to infinity or NaN)."""
    if saturate or _elem_type(dtype) in _ALWAYS_SATURATED:
        top = float(ml_dtypes.finfo(dtype).max)
        values = np.clip(values, -top, top)
    return values.astype(dtype)


def _output_type(zero_point, output_dtype):
    if zero_point is not None:
        if output_dtype and int(output_dtype) != _elem_type(zero_point.dtype):
            raise ValueError(f"output_dtype={helper.tensor_dtype_to_string(int(output_dtype))} disagrees with the "
                             f"zero point's type {zero_point.dtype}; give one or make them equal")
        return _elem_type(zero_point.dtype)
    return int(output_dtype) if output_dtype else TensorProto.UINT8


def _quantize(x, y_scale, y_zero_point, *, axis=1, block_size=0, output_dtype=0, precision=0, saturate=1):
    target = _output_type(y_zero_point, output_dtype)
    if target not in _INTEGER_TYPES | _FLOAT8_TYPES | _ALWAYS_SATURATED:
        raise ValueError(f"QuantizeLinear cannot produce {helper.tensor_dtype_to_string(target)}")
    dtype = _dtype(target)
    compute = _division_dtype(x, y_scale, precision)
    scale = _along(y_scale, x.shape, axis, block_size, "y_scale")
    quotient = (x.astype(compute) / scale.astype(compute)).astype(np.float64)
    zero = 0.0 if y_zero_point is None else _along(y_zero_point, x.shape, axis, block_size, "y_zero_point")
    zero = np.asarray(zero).astype(np.float64)
    if target in _INTEGER_TYPES:
        low, high = _int_range(dtype)
        return np.clip(np.rint(quotient) + zero, low, high).astype(dtype)
    return _saturate_float(quotient + zero, dtype, saturate)


def _dequantize(x, x_scale, x_zero_point, *, axis=1, block_size=0, output_dtype=0):
    out = _dtype(output_dtype) if output_dtype else np.dtype(x_scale.dtype)
    if _elem_type(out) not in _FLOAT_OUTPUTS:
        raise ValueError(f"DequantizeLinear produces float, float16 or bfloat16, not {out}: set output_dtype")
    if x_zero_point is not None and x_zero_point.dtype != x.dtype:
        raise ValueError(f"x_zero_point is {x_zero_point.dtype} but x is {x.dtype}; they must have the same type")
    if _is_integer(x.dtype):
        shifted = x.astype(np.int64)
        if x_zero_point is not None:
            shifted = shifted - _along(x_zero_point, x.shape, axis, block_size, "x_zero_point").astype(np.int64)
    else:
        shifted = x.astype(np.float32)
        if x_zero_point is not None:
            shifted = shifted - _along(x_zero_point, x.shape, axis, block_size, "x_zero_point").astype(np.float32)
    # (x - zero point) is rounded to float32 (exact below 2**24), then one float32 product is rounded to the output
    scale = _along(x_scale, x.shape, axis, block_size, "x_scale").astype(np.float32)
    return (shifted.astype(np.float32) * scale).astype(out)


def _per_tensor(name, value):
    if np.asarray(value).size != 1:
        raise ValueError(f"{name} of shape {np.shape(value)} must be a scalar at this opset (per-axis needs opset 13)")
    return value


class QuantizedDequantizeLinear(ElementwiseOp):
    """DequantizeLinear states how its output is quantized: its codes, scale and zero point.

    On an encrypted input (the codes of a QuantizeLinear, maybe clipped) it composes like any
    element-wise op, and its output's integers are exactly those codes: the op reading it gets the
    model's own integers and bit width (3 bits for a Clip to [0, 7]), not a fitted quantizer.
    Folded at load on an integer weight, it gives that weight's integers and scale as they are.
    Per-axis and blocked parameters fall back to a fitted quantizer.
    """

    rounds_like_its_quantizer = True  # QuantizeLinear rounds half to even, as the quantizer does

    def call_numpy(self, values):
        # composed chains widen float constants to float64; the op's scale is float32/16 by its schema
        values = list(values)
        if len(values) > 1 and isinstance(values[1], np.ndarray) and values[1].dtype == np.float64:
            values[1] = values[1].astype(np.float32)
        return super().call_numpy(values)

    def stated_output(self, ctx, inputs):
        x, scale, zero_point = (list(inputs) + [None, None])[:3]
        s = scalar(scale)
        z = 0.0 if zero_point is None else scalar(zero_point)
        if s is None or z is None or x is None or x.to_float is None:
            return None
        probe = np.asarray(x.to_float(np.zeros(np.shape(x.data), dtype=np.int64)))
        if not _is_integer(probe.dtype):  # float8 codes: no integer grid to keep
            return None
        low, high = _int_range(probe.dtype)
        codes = code_range(x, int(low), int(high), ctx.calibrating)
        if codes is None:
            warnings.warn(CalibrationWarning(
                f"{self.where}: the codes reaching it are not whole numbers, so the model's quantization cannot be "
                "kept exactly here: this tensor gets a quantizer fitted on the calibration data instead"), stacklevel=2)
            return None
        return code_quantizer(*codes, float(np.float32(s)), int(z))

    @staticmethod
    def stated_constant(bound, values, index):
        """(integers - zero point, scale): the scale one number, or per axis an array shaped to
        broadcast against the integers; None for blocked or float8 weights."""
        x, scale = np.asarray(values[0]), np.asarray(values[1])
        zero_point = values[2] if len(values) > 2 and values[2] is not None else None
        if not _is_integer(x.dtype) or int(bound.attributes.get("block_size", 0)):
            return None
        if scale.size == 1:
            z = 0 if zero_point is None else int(np.asarray(zero_point).reshape(-1)[0])
            return x.astype(np.int64) - z, float(scale.astype(np.float32).reshape(-1)[0])
        axis = int(bound.attributes.get("axis", 1)) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        z = 0 if zero_point is None else np.asarray(zero_point).astype(np.int64).reshape(shape)
        return x.astype(np.int64) - z, scale.astype(np.float32).astype(np.float64).reshape(shape)


class QuantizedDynamicQuantizeLinear(ConstantOnlyOp):
    """Its scale is computed from the values themselves: not possible on encrypted data."""

    client_side = False  # weights or model computation: not the client's to run

    def encrypted_forward(self, ctx, inputs):
        raise QuantizationError(
            f"{self.where}: DynamicQuantizeLinear computes its scale from the values it quantizes, which an "
            "encrypted circuit cannot do; quantize the model statically (onnxruntime's quantize_static, QDQ "
            "format) or give cml the float model")


class QuantizedQOperator(ConstantOnlyOp):
    """QLinearConv, QLinearMatMul, MatMulInteger, ConvInteger: the QOperator form runs in float here."""

    client_side = False  # weights or model computation: not the client's to run

    def encrypted_forward(self, ctx, inputs):
        raise QuantizationError(
            f"{self.where}: {self.bound.node.op_type} on encrypted data is not supported (QOperator format); "
            "export the model in QDQ format (onnxruntime quantize_static(..., quant_format=QuantFormat.QDQ)), whose "
            "QuantizeLinear/DequantizeLinear pairs cml turns into the model's own integers")


@OPS.op("QuantizeLinear", since=10, quantized=ElementwiseOp)
def quantize_linear_10(x, y_scale, /, y_zero_point=None):
    _per_tensor("y_scale", y_scale)
    return _quantize(x, y_scale, y_zero_point)


@OPS.op("QuantizeLinear", since=13, quantized=ElementwiseOp)
def quantize_linear_13(x, y_scale, /, y_zero_point=None, *, axis=1):
    return _quantize(x, y_scale, y_zero_point, axis=axis)


@OPS.op("QuantizeLinear", since=19, quantized=ElementwiseOp)
def quantize_linear_19(x, y_scale, /, y_zero_point=None, *, axis=1, saturate=1):
    return _quantize(x, y_scale, y_zero_point, axis=axis, saturate=saturate)


@OPS.op("QuantizeLinear", since=21, quantized=ElementwiseOp)
def quantize_linear_21(x, y_scale, /, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, saturate=1):
    return _quantize(x, y_scale, y_zero_point, axis=axis, block_size=block_size, output_dtype=output_dtype,
                     saturate=saturate)


@OPS.op("QuantizeLinear", since=(23, 24, 25, 28), quantized=ElementwiseOp)
def quantize_linear(x, y_scale, /, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, precision=0,
                    saturate=1):
    return _quantize(x, y_scale, y_zero_point, axis=axis, block_size=block_size, output_dtype=output_dtype,
                     precision=precision, saturate=saturate)


@OPS.op("DequantizeLinear", since=10, quantized=QuantizedDequantizeLinear)
def dequantize_linear_10(x, x_scale, /, x_zero_point=None):
    _per_tensor("x_scale", x_scale)
    return _dequantize(x, x_scale, x_zero_point)


@OPS.op("DequantizeLinear", since=(13, 19), quantized=QuantizedDequantizeLinear)
def dequantize_linear_13(x, x_scale, /, x_zero_point=None, *, axis=1):
    return _dequantize(x, x_scale, x_zero_point, axis=axis)


@OPS.op("DequantizeLinear", since=21, quantized=QuantizedDequantizeLinear)
def dequantize_linear_21(x, x_scale, /, x_zero_point=None, *, axis=1, block_size=0):
    return _dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size)


@OPS.op("DequantizeLinear", since=(23, 24, 25, 28), quantized=QuantizedDequantizeLinear)
def dequantize_linear(x, x_scale, /, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    return _dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size, output_dtype=output_dtype)


@OPS.op("DynamicQuantizeLinear", since=11, quantized=QuantizedDynamicQuantizeLinear)
def dynamic_quantize_linear(x, /):
    """(y, y_scale, y_zero_point): uint8 quantization over [min(x, 0), max(x, 0)], in float32.

    An all-zero ``x`` (an empty range) gets scale 1, as onnxruntime gives.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        raise ValueError("DynamicQuantizeLinear needs a non-empty input to find its range")
    low = np.minimum(np.float32(0), x.min())
    high = np.maximum(np.float32(0), x.max())
    scale = np.float32(1) if high == low else (high - low) / np.float32(255)
    zero = np.rint(np.clip(np.float32(0) - low / scale, np.float32(0), np.float32(255)))
    y = np.clip(np.rint(x / scale) + zero, 0, 255).astype(np.uint8)
    return y, np.asarray(scale, dtype=np.float32), np.asarray(zero).astype(np.uint8)


def _shifted(x, zero_point, what, per_row=False):
    """``x - zero_point`` as int64 (exact); a 1-D zero point of a matrix's rows gets a trailing axis."""
    shifted = np.asarray(x).astype(np.int64)
    if zero_point is None:
        return shifted
    if zero_point.dtype != x.dtype:
        raise ValueError(f"{what} is {zero_point.dtype} but its input is {x.dtype}; they must have the same type")
    zero = np.asarray(zero_point).astype(np.int64)
    if zero.size == 1:
        zero = zero.reshape(())
    elif per_row and zero.ndim == 1 and shifted.ndim >= 2:
        zero = zero[:, None]
    return shifted - zero


def _check_integer_inputs(op_type, *arrays):
    for a in arrays:
        if a is not None and np.dtype(a.dtype) not in (np.dtype(np.int8), np.dtype(np.uint8)):
            raise ValueError(f"{op_type} takes int8 or uint8 tensors, got {a.dtype}")


def _int32(acc):
    """An int64 accumulator as int32, wrapping around as int32 accumulation would."""
    return acc.astype(np.int32)


def _requantize(acc, multiplier, zero_point):
    """``saturate(round_half_even(float32(acc) * multiplier) + zero_point)`` as ``zero_point``'s type."""
    low, high = _int_range(zero_point.dtype)
    scaled = acc.astype(np.float32) * multiplier
    return np.clip(np.rint(scaled).astype(np.float64) + zero_point.astype(np.float64), low, high).astype(
        zero_point.dtype)


@OPS.op("MatMulInteger", since=10, quantized=QuantizedQOperator)
def matmul_integer(a, b, /, a_zero_point=None, b_zero_point=None):
    _check_integer_inputs("MatMulInteger", a, b, a_zero_point, b_zero_point)
    return _int32(np.matmul(_shifted(a, a_zero_point, "a_zero_point", per_row=True),
                            _shifted(b, b_zero_point, "b_zero_point")))


def _float32_scale(scale, what):
    scale = np.asarray(scale)
    if _elem_type(scale.dtype) not in _FLOAT_OUTPUTS:
        raise ValueError(f"{what} must be float, float16 or bfloat16, got {scale.dtype}")
    return scale.astype(np.float32).reshape(() if scale.size == 1 else scale.shape)


def _qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    if np.size(y_scale) != 1 or np.size(y_zero_point) != 1:
        raise ValueError(f"y_scale and y_zero_point must be scalars, got shapes {np.shape(y_scale)} and "
                         f"{np.shape(y_zero_point)}")
    y_zero_point = np.asarray(y_zero_point).reshape(())
    if y_zero_point.dtype.kind in "iu":
        _check_integer_inputs("QLinearMatMul", a, b, y_zero_point)
        acc = _int32(np.matmul(_shifted(a, a_zero_point, "a_zero_point", per_row=True),
                               _shifted(b, b_zero_point, "b_zero_point")))
    else:  # float8: the products are exact in float32, their sum is rounded as float32 accumulation would be
        a32 = a.astype(np.float32) - a_zero_point.astype(np.float32)
        b32 = b.astype(np.float32) - b_zero_point.astype(np.float32)
        acc = np.matmul(a32, b32)
    sa = _float32_scale(a_scale, "a_scale")
    if sa.ndim == 1 and sa.size > 1 and np.ndim(a) >= 2:
        sa = sa[:, None]
    multiplier = sa * _float32_scale(b_scale, "b_scale") / _float32_scale(y_scale, "y_scale")
    dtypes = {np.asarray(v).dtype for v in (a_scale, b_scale, y_scale)}
    if len(dtypes) == 1 and np.dtype(next(iter(dtypes))).itemsize == 2:
        # float16/bfloat16 scales: the multiplier is computed in their type (onnxruntime and the reference
        # evaluator agree; 1.5 * 5.9375 is 8.875 in bfloat16, so an accumulator of 12 gives 106, not 107)
        narrow = next(iter(dtypes))
        sa16 = np.asarray(a_scale).reshape(sa.shape)
        multiplier = (sa16 * np.asarray(b_scale).reshape(np.shape(_float32_scale(b_scale, "b_scale")))
                      / np.asarray(y_scale, dtype=narrow).reshape(())).astype(np.float32)
    if y_zero_point.dtype.kind in "iu":
        return _requantize(acc, multiplier, y_zero_point)
    scaled = (acc * multiplier).astype(np.float64) + y_zero_point.astype(np.float64)
    return _saturate_float(scaled, y_zero_point.dtype, True)


@OPS.op("QLinearMatMul", since=(10, 21), quantized=QuantizedQOperator)
def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, /):
    return _qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point)


def _check_conv_integer(inputs, attributes):
    check_conv([inputs[0], inputs[1]], attributes)


def _check_qlinear_conv(inputs, attributes):
    check_conv([inputs[0], inputs[3], inputs[8] if len(inputs) > 8 else None], attributes)


def _integer_conv(x, x_zero_point, w, w_zero_point, *, auto_pad, dilations, group, kernel_shape, pads, strides):
    """int64 convolution of ``x - x_zero_point`` by ``w - w_zero_point`` (per output channel or per tensor).

    Padding adds values equal to ``x_zero_point``: zeros once shifted.
    """
    if x_zero_point is not None and np.asarray(x_zero_point).size != 1:
        raise ValueError(f"x_zero_point must be a scalar, got shape {np.shape(x_zero_point)}")
    xs = _shifted(x, x_zero_point, "x_zero_point")
    ws = _shifted(w, None, "w_zero_point")
    if w_zero_point is not None:
        if w_zero_point.dtype != w.dtype:
            raise ValueError(f"w_zero_point is {w_zero_point.dtype} but w is {w.dtype}")
        zero = np.asarray(w_zero_point).astype(np.int64)
        if zero.size != 1 and zero.shape != (w.shape[0],):
            raise ValueError(f"w_zero_point of shape {zero.shape} must be a scalar or hold one value per output "
                             f"channel ({w.shape[0]})")
        ws = ws - zero.reshape((-1,) + (1,) * (w.ndim - 1) if zero.size != 1 else ())
    _, strides, dilations, pads = conv_attributes(x.shape, w.shape, auto_pad, dilations, kernel_shape, pads, strides)
    return conv_nd(xs, ws, strides=strides, pads=pads, dilations=dilations, group=group)


@OPS.op("ConvInteger", since=10, quantized=QuantizedQOperator, validate=_check_conv_integer)
def conv_integer(x, w, /, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1,
                 kernel_shape=None, pads=None, strides=None):
    _check_integer_inputs("ConvInteger", x, w, x_zero_point, w_zero_point)
    return _int32(_integer_conv(x, x_zero_point, w, w_zero_point, auto_pad=auto_pad, dilations=dilations,
                                group=group, kernel_shape=kernel_shape, pads=pads, strides=strides))


@OPS.op("QLinearConv", since=10, quantized=QuantizedQOperator, validate=_check_qlinear_conv)
def qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, /, B=None, *,  # noqa: N803
                 auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    _check_integer_inputs("QLinearConv", x, w, x_zero_point, w_zero_point, y_zero_point)
    for name, value in (("x_scale", x_scale), ("y_scale", y_scale), ("y_zero_point", y_zero_point)):
        if np.asarray(value).size != 1:
            raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
    acc = _integer_conv(x, x_zero_point, w, w_zero_point, auto_pad=auto_pad, dilations=dilations, group=group,
                        kernel_shape=kernel_shape, pads=pads, strides=strides)
    if B is not None:
        acc = acc + np.asarray(B, dtype=np.int64).reshape((-1,) + (1,) * (acc.ndim - 2))
    w_scale = _float32_scale(w_scale, "w_scale")
    if w_scale.size != 1:
        if w_scale.shape != (w.shape[0],):
            raise ValueError(f"w_scale of shape {w_scale.shape} must be a scalar or hold one value per output "
                             f"channel ({w.shape[0]})")
        w_scale = w_scale.reshape((-1,) + (1,) * (acc.ndim - 2))
    else:
        w_scale = w_scale.reshape(())
    multiplier = _float32_scale(x_scale, "x_scale").reshape(()) * w_scale / _float32_scale(y_scale, "y_scale").reshape(())
    return _requantize(_int32(acc), multiplier, np.asarray(y_zero_point).reshape(()))
