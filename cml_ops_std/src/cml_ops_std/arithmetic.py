"""Element-wise arithmetic and comparisons with ONNX multidirectional broadcasting."""

import numpy as np
from cml_core.quantization import ElementwiseOp

from ._opset import OPS

ARITHMETIC_VERSIONS = (7, 13, 14)


@OPS.op("Add", since=ARITHMETIC_VERSIONS, quantized=ElementwiseOp)
def add(a, b, /):
    return np.add(a, b).astype(a.dtype, copy=False)


@OPS.op("Sub", since=ARITHMETIC_VERSIONS, quantized=ElementwiseOp)
def sub(a, b, /):
    return np.subtract(a, b).astype(a.dtype, copy=False)


@OPS.op("Mul", since=ARITHMETIC_VERSIONS, quantized=ElementwiseOp)
def mul(a, b, /):
    return np.multiply(a, b).astype(a.dtype, copy=False)


@OPS.op("Div", since=ARITHMETIC_VERSIONS, quantized=ElementwiseOp)
def div(a, b, /):
    if a.dtype.kind in "iu":
        # integer division truncates toward zero, like C
        quotient = np.trunc(np.asarray(a, np.float64) / np.asarray(b, np.float64))
        return quotient.astype(a.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b).astype(a.dtype, copy=False)


@OPS.op("Equal", since=(11, 13, 19), quantized=ElementwiseOp)
def equal(a, b, /):
    return np.equal(a, b)


@OPS.op("Greater", since=(9, 13), quantized=ElementwiseOp)
def greater(a, b, /):
    return np.greater(a, b)


@OPS.op("Less", since=(9, 13), quantized=ElementwiseOp)
def less(a, b, /):
    return np.less(a, b)


@OPS.op("Not", since=1, quantized=ElementwiseOp)
def logical_not(x, /):
    return np.logical_not(x)


@OPS.op("Clip", since=(11, 12, 13), quantized=ElementwiseOp)
def clip(x, /, min=None, max=None):  # noqa: A002  (ONNX input names)
    out = x
    if min is not None:
        out = np.maximum(out, min)
    if max is not None:
        out = np.minimum(out, max)
    return np.asarray(out).astype(x.dtype, copy=False)


@OPS.op("Pow", since=(7, 12, 13, 15), quantized=ElementwiseOp)
def power(x, y, /):
    with np.errstate(all="ignore"):
        if x.dtype.kind in "iu":
            return np.power(x.astype(np.float64), y).astype(x.dtype)
        return np.power(x, y.astype(x.dtype, copy=False)).astype(x.dtype, copy=False)


@OPS.op("Mod", since=(10, 13, 28), quantized=ElementwiseOp)
def mod(a, b, /, *, fmod=0):
    with np.errstate(all="ignore"):
        if fmod:
            return np.fmod(a, b).astype(a.dtype, copy=False)
        if a.dtype.kind == "f":
            raise ValueError("Mod of floating-point values needs fmod=1")
        return np.mod(a, b).astype(a.dtype, copy=False)


def _variadic(function, inputs):
    out = inputs[0]
    for x in inputs[1:]:
        out = function(out, x)
    return np.asarray(out).astype(inputs[0].dtype, copy=False)


@OPS.op("Sum", since=(8, 13), quantized=ElementwiseOp)
def sum_(*inputs):
    return _variadic(np.add, inputs)


@OPS.op("Mean", since=(8, 13), quantized=ElementwiseOp)
def mean(*inputs):
    total = _variadic(np.add, inputs)
    return (total / np.asarray(len(inputs), dtype=total.dtype)).astype(total.dtype, copy=False)


@OPS.op("Max", since=(8, 12, 13), quantized=ElementwiseOp)
def maximum(*inputs):
    return _variadic(np.maximum, inputs)


@OPS.op("Min", since=(8, 12, 13), quantized=ElementwiseOp)
def minimum(*inputs):
    return _variadic(np.minimum, inputs)


@OPS.op("GreaterOrEqual", since=(12, 16), quantized=ElementwiseOp)
def greater_or_equal(a, b, /):
    return np.greater_equal(a, b)


@OPS.op("LessOrEqual", since=(12, 16), quantized=ElementwiseOp)
def less_or_equal(a, b, /):
    return np.less_equal(a, b)


@OPS.op("And", since=7, quantized=ElementwiseOp)
def logical_and(a, b, /):
    return np.logical_and(a, b)


@OPS.op("Or", since=7, quantized=ElementwiseOp)
def logical_or(a, b, /):
    return np.logical_or(a, b)


@OPS.op("Xor", since=7, quantized=ElementwiseOp)
def logical_xor(a, b, /):
    return np.logical_xor(a, b)


@OPS.op("BitShift", since=(11, 28), quantized=ElementwiseOp)
def bit_shift(x, y, /, *, direction):
    if direction not in ("LEFT", "RIGHT"):
        raise ValueError(f"BitShift direction must be 'LEFT' or 'RIGHT', got {direction!r}")
    bits = np.dtype(x.dtype).itemsize * 8
    shift = np.asarray(y).astype(x.dtype)
    widest = np.asarray(bits - 1, x.dtype)
    if direction == "LEFT":
        # shifting by the width or more leaves 0, not numpy's modular shift
        out = np.left_shift(x, np.minimum(shift, widest))
        return np.where(shift >= bits, np.zeros_like(out), out).astype(x.dtype)
    if x.dtype.kind == "i":
        # an arithmetic shift by the width or more leaves only copies of the sign bit: -1 or 0
        return np.right_shift(x, np.minimum(shift, widest)).astype(x.dtype)
    out = np.right_shift(x, np.minimum(shift, widest))
    return np.where(shift >= bits, np.zeros_like(out), out).astype(x.dtype)


@OPS.op("Where", since=(9, 16), quantized=ElementwiseOp)
def where(condition, x, y, /):
    return np.where(condition, x, y).astype(x.dtype, copy=False)
