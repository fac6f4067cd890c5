"""Element-wise math functions."""

import math as _math

import numpy as np
from cml_core.quantization import ElementwiseOp

from ._opset import OPS


def _unary(name, since, function, quiet=True, since_consumed=()):
    """Register ``function`` as ``name``; at ``since_consumed`` (opset 1) with its ``consumed_inputs``
    attribute, a legacy in-place hint that changes nothing."""

    def implementation(x, /):
        with np.errstate(all="ignore"):
            return np.asarray(function(x)).astype(np.asarray(x).dtype, copy=False)

    def with_consumed_inputs(x, /, *, consumed_inputs=None):
        return implementation(x)

    implementation.__name__ = implementation.__qualname__ = name.lower()
    with_consumed_inputs.__name__ = with_consumed_inputs.__qualname__ = f"{name.lower()}_1"
    OPS.op(name, since=since, quantized=ElementwiseOp)(implementation)
    if since_consumed:
        OPS.op(name, since=since_consumed, quantized=ElementwiseOp)(with_consumed_inputs)
    return implementation


abs_ = _unary("Abs", (6, 13), np.abs, since_consumed=(1,))
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
exp = _unary("Exp", (6, 13), np.exp, since_consumed=(1,))
log = _unary("Log", (6, 13), np.log, since_consumed=(1,))

_erf_scalar = np.frompyfunc(_math.erf, 1, 1)


def _erf(x):
    return np.asarray(_erf_scalar(np.asarray(x, dtype=np.float64)), dtype=np.float64)


_erfc_scalar = np.frompyfunc(_math.erfc, 1, 1)


def _erfc(x):
    """1 - erf(x) in float64, without the cancellation of computing it that way for large x."""
    return np.asarray(_erfc_scalar(np.asarray(x, dtype=np.float64)), dtype=np.float64)


def _erf_any(x):
    """erf: from a table for float32 (``tables.erf``, absolute error below 1e-7), else exactly in float64."""
    if isinstance(x, np.ndarray) and x.dtype == np.float32:
        from .tables import erf as erf_float32

        return erf_float32(x)
    return _erf(x)


erf = _unary("Erf", (9, 13), _erf_any)

neg = _unary("Neg", (6, 13), np.negative, since_consumed=(1,))
sqrt = _unary("Sqrt", (6, 13), np.sqrt, since_consumed=(1,))
reciprocal = _unary("Reciprocal", (6, 13), np.reciprocal, since_consumed=(1,))
round_ = _unary("Round", (11, 22), np.round)  # halves to even, as ONNX specifies
floor = _unary("Floor", (6, 13), np.floor, since_consumed=(1,))
ceil = _unary("Ceil", (6, 13), np.ceil, since_consumed=(1,))
sign = _unary("Sign", (9, 13), np.sign)


@OPS.op("IsNaN", since=(9, 13, 20), quantized=ElementwiseOp)
def is_nan(x, /):
    return np.isnan(x)


@OPS.op("IsInf", since=(10, 20), quantized=ElementwiseOp)
def is_inf(x, /, *, detect_negative=1, detect_positive=1):
    return np.isinf(x) & (((x > 0) & bool(detect_positive)) | ((x < 0) & bool(detect_negative)))
