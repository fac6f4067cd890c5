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
