"""Element-wise arithmetic and comparisons with ONNX multidirectional broadcasting."""

import numpy as np
from cml_core.quantization import ElementwiseOp, QValue

from ._opset import OPS
from .addition import QuantizedAdd
from .quantized import ComparisonOp

ARITHMETIC_VERSIONS = (7, 13, 14)


def legacy_aligned_shape(a_shape, b_shape, broadcast, axis):
    """The shape B takes to broadcast against A under the rules before opset 7.

    Without ``broadcast`` both shapes must be equal. With it, B is a scalar, a one-element tensor, or
    a contiguous run of A's dims starting at ``axis`` (A's trailing dims when ``axis`` is not given);
    B's dims are then padded with trailing 1s so numpy broadcasting lines them up.
    """
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if not broadcast:
        if a_shape != b_shape:
            raise ValueError(f"inputs of shapes {a_shape} and {b_shape} differ and broadcast=0 "
                             "(before opset 7 broadcasting must be asked for with broadcast=1)")
        return b_shape
    if int(np.prod(b_shape, dtype=np.int64)) == 1 and len(b_shape) <= len(a_shape):
        return ()
    start = len(a_shape) - len(b_shape) if axis is None else (axis + len(a_shape) if axis < 0 else axis)
    end = start + len(b_shape)
    if start < 0 or end > len(a_shape) or any(b not in (a, 1) for a, b in zip(a_shape[start:end], b_shape)):
        where = "A's trailing dims" if axis is None else f"A's dims from axis {axis}"
        raise ValueError(f"B of shape {b_shape} does not match {where} (A has shape {a_shape})")
    return b_shape + (1,) * (len(a_shape) - end)


def _legacy_binary(function, a, b, broadcast, axis):
    b = np.asarray(b)
    return function(a, b.reshape(legacy_aligned_shape(np.shape(a), b.shape, broadcast, axis)))


class QuantizedLegacyBinary(ElementwiseOp):
    """A binary op before opset 7: B is reshaped once to line up with A at ``axis``, after which the
    op is an ordinary element-wise one (a lookup, or a two-input lookup)."""

    def encrypted_forward(self, ctx, inputs):
        a, b = inputs[0], inputs[1]
        aligned = legacy_aligned_shape(a.shape, b.shape, self.attributes.get("broadcast", 0),
                                       self.attributes.get("axis"))
        if aligned != tuple(b.shape):
            if b.is_constant:
                b = QValue.constant(np.reshape(b.data, aligned))
            else:
                b = b if b.uniform else ctx.requantize(b)
                b = b.with_data(b.data.reshape(aligned))
            # B now lines up with A's trailing dims
            self.attributes = {**self.attributes, "axis": None}
        return super().encrypted_forward(ctx, [a, b])


def _register_legacy_binary(op_type, function, versions, consumed_versions=()):
    """``op_type`` before opset 7, at ``versions`` (and with the ``consumed_inputs`` attribute at
    ``consumed_versions``): the element-wise ``function`` with the legacy broadcast/axis rules."""

    def legacy(a, b, /, *, axis=None, broadcast=0):
        return _legacy_binary(function, a, b, broadcast, axis)

    def legacy_consumed(a, b, /, *, axis=None, broadcast=0, consumed_inputs=None):
        return _legacy_binary(function, a, b, broadcast, axis)

    for implementation, since in ((legacy_consumed, consumed_versions), (legacy, versions)):
        implementation.__name__ = implementation.__qualname__ = f"{op_type.lower()}_legacy"
        if since:
            OPS.op(op_type, since=since, quantized=QuantizedLegacyBinary)(implementation)


@OPS.op("Add", since=ARITHMETIC_VERSIONS, quantized=QuantizedAdd)
def add(a, b, /):
    return np.add(a, b).astype(a.dtype, copy=False)


@OPS.op("Sub", since=ARITHMETIC_VERSIONS, quantized=QuantizedAdd)
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


_register_legacy_binary("Add", add, (6,), (1,))
_register_legacy_binary("Sub", sub, (6,), (1,))
_register_legacy_binary("Mul", mul, (6,), (1,))
_register_legacy_binary("Div", div, (6,), (1,))


@OPS.op("Equal", since=(7, 11, 13, 19), quantized=ComparisonOp)
def equal(a, b, /):
    return np.equal(a, b)


@OPS.op("Greater", since=(7, 9, 13), quantized=ComparisonOp)
def greater(a, b, /):
    return np.greater(a, b)


@OPS.op("Less", since=(7, 9, 13), quantized=ComparisonOp)
def less(a, b, /):
    return np.less(a, b)


_register_legacy_binary("Equal", equal, (1,))
_register_legacy_binary("Greater", greater, (1,))
_register_legacy_binary("Less", less, (1,))


@OPS.op("Not", since=1, quantized=ElementwiseOp)
def logical_not(x, /):
    return np.logical_not(x)


FLOAT32_MAX = float(np.finfo(np.float32).max)


@OPS.op("Clip", since=1, quantized=ElementwiseOp)
def clip_1(x, /, *, consumed_inputs=None, max=None, min=None):  # noqa: A002  (ONNX attribute names)
    return clip(x, min=None if min is None else np.asarray(min, x.dtype),
                max=None if max is None else np.asarray(max, x.dtype))


@OPS.op("Clip", since=6, quantized=ElementwiseOp)
def clip_6(x, /, *, max=FLOAT32_MAX, min=-FLOAT32_MAX):  # noqa: A002  (ONNX attribute names)
    return clip(x, min=np.asarray(min, x.dtype), max=np.asarray(max, x.dtype))


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


_register_legacy_binary("Pow", power, (1,))


@OPS.op("Mod", since=(10, 13, 28), quantized=ElementwiseOp)
def mod(a, b, /, *, fmod=0):
    with np.errstate(all="ignore"):
        if fmod:
            return np.fmod(a, b).astype(a.dtype, copy=False)
        # the remainder takes the divisor's sign, for integers and floats alike (Python's %)
        return np.mod(a, b).astype(a.dtype, copy=False)


def _variadic(function, inputs):
    out = inputs[0]
    for x in inputs[1:]:
        out = function(out, x)
    return np.asarray(out).astype(inputs[0].dtype, copy=False)


@OPS.op("Sum", since=(6, 8, 13), quantized=ElementwiseOp)
def sum_(*inputs):
    return _variadic(np.add, inputs)


@OPS.op("Mean", since=(6, 8, 13), quantized=ElementwiseOp)
def mean(*inputs):
    total = _variadic(np.add, inputs)
    return (total / np.asarray(len(inputs), dtype=total.dtype)).astype(total.dtype, copy=False)


@OPS.op("Max", since=(6, 8, 12, 13), quantized=ElementwiseOp)
def maximum(*inputs):
    return _variadic(np.maximum, inputs)


@OPS.op("Min", since=(6, 8, 12, 13), quantized=ElementwiseOp)
def minimum(*inputs):
    return _variadic(np.minimum, inputs)


def _register_variadic_1(op_type, function):
    """``op_type`` at opset 1: ``function`` with the ``consumed_inputs`` attribute of that version."""

    def variadic_1(*inputs, consumed_inputs=None):
        return function(*inputs)

    variadic_1.__name__ = variadic_1.__qualname__ = f"{op_type.lower()}_1"
    OPS.op(op_type, since=1, quantized=ElementwiseOp)(variadic_1)


for _op_type, _function in (("Sum", sum_), ("Mean", mean), ("Max", maximum), ("Min", minimum)):
    _register_variadic_1(_op_type, _function)


@OPS.op("GreaterOrEqual", since=(12, 16), quantized=ComparisonOp)
def greater_or_equal(a, b, /):
    return np.greater_equal(a, b)


@OPS.op("LessOrEqual", since=(12, 16), quantized=ComparisonOp)
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


_register_legacy_binary("And", logical_and, (1,))
_register_legacy_binary("Or", logical_or, (1,))
_register_legacy_binary("Xor", logical_xor, (1,))


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
