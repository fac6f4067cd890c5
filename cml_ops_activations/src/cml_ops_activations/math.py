"""Element-wise math functions."""

import math as _math

import numpy as np
from cml_core.quantization import ElementwiseOp

from ._opset import OPS


def _unary(name, since, function, quiet=True):
    def implementation(x, /):
        with np.errstate(all="ignore"):
            return np.asarray(function(x)).astype(np.asarray(x).dtype, copy=False)

    implementation.__name__ = implementation.__qualname__ = name.lower()
    OPS.op(name, since=since, quantized=ElementwiseOp)(implementation)
    return implementation


abs_ = _unary("Abs", (6, 13), np.abs)
acos = _unary("Acos", (7, 22), np.arccos)
acosh = _unary("Acosh", (9, 22), np.arccosh)
asin = _unary("Asin", (7, 22), np.arcsin)
asinh = _unary("Asinh", (9, 22), np.arcsinh)
atan = _unary("Atan", (7, 22), np.arctan)
atanh = _unary("Atanh", (9, 22), np.arctanh)
cos = _unary("Cos", (7, 22), np.cos)
cosh = _unary("Cosh", (9, 22), np.cosh)
sin = _unary("Sin", (7, 22), np.sin)
sinh = _unary("Sinh", (9, 22), np.sinh)
tan = _unary("Tan", (7, 22), np.tan)
exp = _unary("Exp", (6, 13), np.exp)
log = _unary("Log", (6, 13), np.log)

_erf_scalar = np.frompyfunc(_math.erf, 1, 1)


def _erf(x):
    return np.asarray(_erf_scalar(np.asarray(x, dtype=np.float64)), dtype=np.float64)


_erfc_scalar = np.frompyfunc(_math.erfc, 1, 1)


def _erfc(x):
    """1 - erf(x) in float64, without the cancellation of computing it that way for large x."""
    return np.asarray(_erfc_scalar(np.asarray(x, dtype=np.float64)), dtype=np.float64)


erf = _unary("Erf", (9, 13), _erf)

neg = _unary("Neg", (6, 13), np.negative)
sqrt = _unary("Sqrt", (6, 13), np.sqrt)
reciprocal = _unary("Reciprocal", (6, 13), np.reciprocal)
round_ = _unary("Round", (11, 22), np.round)  # halves to even, as ONNX specifies
floor = _unary("Floor", (6, 13), np.floor)
ceil = _unary("Ceil", (6, 13), np.ceil)
sign = _unary("Sign", (9, 13), np.sign)


@OPS.op("IsNaN", since=(9, 13, 20), quantized=ElementwiseOp)
def is_nan(x, /):
    return np.isnan(x)


@OPS.op("IsInf", since=(10, 20), quantized=ElementwiseOp)
def is_inf(x, /, *, detect_negative=1, detect_positive=1):
    return np.isinf(x) & (((x > 0) & bool(detect_positive)) | ((x < 0) & bool(detect_negative)))
