"""Reductions and normalizations beyond plain sums: max/min, norms, log-sum-exp, softmax."""

import numpy as np
from cml_core.quantization import ConstantOnlyOp, QuantizedOp, QValue, backend

from ._opset import OPS
from .pooling import QuantizedReduceMean, QuantizedReduceSum, _reduce, _reduce_axes


def _axes_of(op, inputs, shape):
    value = op.attributes.get("axes")
    if len(inputs) > 1 and inputs[1] is not None:
        value = inputs[1].data
    axes = _reduce_axes(np.zeros(shape), value, op.attributes.get("noop_with_empty_axes", 0))
    return tuple(range(len(shape))) if axes is None else axes


def _drop_axes(data, axes, keepdims):
    if keepdims:
        return data
    shape = [d for i, d in enumerate(data.shape) if i not in axes]
    return data.reshape(tuple(shape))


class QuantizedReduceMax(QuantizedOp):
    """ReduceMax / ReduceMin: a tree of encrypted maximums over the requantized integers."""

    minimum = False

    def encrypted_forward(self, ctx, inputs):
        q = ctx.requantize(inputs[0])
        axes = _axes_of(self, inputs, q.shape)
        if not axes:
            return q
        top = 2**ctx.config.op_inputs - 1
        data = top - q.data if self.minimum else q.data  # min(x) = top - max(top - x)
        out = backend.reduce_max(data, axes)
        out = top - out if self.minimum else out
        return QValue.affine(_drop_axes(out, axes, bool(self.attributes.get("keepdims", 1))), q.scale, q.zero_point)


class QuantizedReduceMin(QuantizedReduceMax):
    minimum = True


class QuantizedMapSum(QuantizedOp):
    """sum(|x| ** power) over axes, then h: exact on the quantized integers of x.

    One lookup maps each element to ``|q - zero_point| ** power``, an exact integer, where ``q`` are
    x's ``n``-bit integers (when x is not ``n``-bit integers yet, its requantization is composed into
    that lookup); the sum over each group is an integer sum. The result is exact for the quantized
    input however small a group is next to the others, where an ``n``-bit quantizer of ``|x| ** power``
    for the whole tensor rounded a small group's terms to 0. ``h`` (ReduceL2's square root) joins the
    next lookup. The price is width: squares take up to ``2n`` bits, their sum ``2n + log2(K)``.
    """

    power = 1

    def h(self, total):
        return total

    def axes(self, inputs, shape):
        return _axes_of(self, inputs, shape)

    def encrypted_forward(self, ctx, inputs):
        source = inputs[0]
        axes = self.axes(inputs, source.shape)
        if source.is_affine:
            scale, zero_point = source.scale, source.zero_point

            def levels(q):
                return np.asarray(q, np.int64) - zero_point
        else:
            quantizer = ctx.quantizer_for(source.name)
            scale, zero_point, to_float = quantizer.scale, quantizer.zero_point, source.to_float

            def levels(q):
                return quantizer.quant(to_float(q)) - zero_point

        power = self.power
        mapped = ctx.lookup(source, lambda q: np.abs(levels(q)) ** power, key=f"{self.bound.name}:g")
        unit = scale**power
        return QValue.lazy(self.sum(mapped, axes), lambda a: self.h(unit * np.asarray(a, np.float64)), True)

    def sum(self, mapped, axes):
        return _drop_axes(np.sum(mapped, axis=axes, keepdims=True), axes, bool(self.attributes.get("keepdims", 1)))


class QuantizedReduceL1(QuantizedMapSum):
    power = 1


class QuantizedReduceSumSquare(QuantizedMapSum):
    power = 2


class QuantizedReduceL2(QuantizedReduceSumSquare):
    def h(self, total):
        return np.sqrt(np.maximum(total, 0))


class QuantizedReduceLogSumExp(QuantizedMapSum):
    """max + log(sum(exp(x - max))) with the encrypted maximum of each reduced group, so the largest
    term is exp(0) = 1: one lookup per element, one per group for the sum, one two-input lookup."""

    def encrypted_forward(self, ctx, inputs):
        source = inputs[0]
        axes = self.axes(inputs, source.shape)
        if not axes:
            return source  # nothing to reduce: log(exp(x)) is x, exactly
        q = ctx.requantize(source)
        top = backend.reduce_max(q.data, axes)
        scale, zero_point = q.scale, q.zero_point
        shifted = QValue.lazy(q.data - top, lambda d: scale * np.asarray(d, np.float64), True,
                              name=f"{self.bound.name}:shifted")
        q_exp = self.fitted_quantizer(ctx, "exp", np.exp(shifted.float_value()) if ctx.calibrating else None)
        e = ctx.lookup(shifted, lambda d: q_exp.quant(np.exp(scale * np.asarray(d, np.float64))),
                       key=f"{self.bound.name}:exp")
        count = int(np.prod([source.shape[a] for a in axes]))
        total = QValue.lazy(np.sum(e, axis=axes, keepdims=True),
                            lambda t: q_exp.scale * (np.asarray(t, np.float64) - count * q_exp.zero_point), True,
                            name=f"{self.bound.name}:sum")
        q_sum = self.fitted_quantizer(ctx, "sum", total.float_value() if ctx.calibrating else None)
        sum_float = total.to_float
        t = ctx.lookup(total, lambda v: q_sum.quant(sum_float(v)), key=f"{self.bound.name}:sum")
        out_name = self.bound.node.output[0]
        values = None
        if ctx.calibrating:
            values = np.log(np.maximum(q_sum.dequant(t), 1e-300)) + scale * (np.asarray(top) - zero_point)
        q_out = self.fitted_quantizer(ctx, "out", values)

        def table(m, v):
            return q_out.quant(scale * (np.asarray(m, np.float64) - zero_point) + np.log(np.maximum(q_sum.dequant(v), 1e-300)))

        data = backend.multi_lookup(table, top, t)
        ctx.record_multi_lookup(out_name, [top, t])
        return QValue.affine(_drop_axes(data, axes, bool(self.attributes.get("keepdims", 1))), q_out.scale,
                             q_out.zero_point)


def _register_reduction(op_type, function, attr_versions, input_versions, quantized, elementwise=None):
    """``elementwise`` is what remains of the op when noop_with_empty_axes leaves nothing to reduce
    (ReduceL2 of one element is its absolute value, and so on)."""

    def with_attribute(data, /, *, axes=None, keepdims=1):
        return _reduce(function, data, axes, keepdims, 0)

    def with_input(data, /, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        if noop_with_empty_axes and (axes is None or np.asarray(axes).size == 0) and elementwise is not None:
            return elementwise(data).astype(data.dtype, copy=False)
        return _reduce(function, data, axes, keepdims, noop_with_empty_axes)

    for f, suffix in ((with_attribute, "attribute"), (with_input, "input")):
        f.__name__ = f.__qualname__ = f"{op_type.lower()}_axes_{suffix}"
    if attr_versions:
        OPS.op(op_type, since=attr_versions, quantized=quantized)(with_attribute)
    if input_versions:
        OPS.op(op_type, since=input_versions, quantized=quantized)(with_input)


def _l1(x, axis, keepdims):
    return np.sum(np.abs(x), axis=axis, keepdims=keepdims)


def _l2(x, axis, keepdims):
    return np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims))


def _sum_square(x, axis, keepdims):
    return np.sum(np.square(x), axis=axis, keepdims=keepdims)


def _log_sum_exp(x, axis, keepdims):
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)
    out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return out if keepdims else np.squeeze(out, axis=axis)


def _prod(x, axis, keepdims):
    return np.prod(x, axis=axis, keepdims=keepdims)


def _max(x, axis, keepdims):
    return np.max(x, axis=axis, keepdims=keepdims) if x.size else np.full(
        np.sum(x, axis=axis, keepdims=keepdims).shape, -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min,
        dtype=x.dtype)


def _min(x, axis, keepdims):
    return np.min(x, axis=axis, keepdims=keepdims) if x.size else np.full(
        np.sum(x, axis=axis, keepdims=keepdims).shape, np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).max,
        dtype=x.dtype)


_register_reduction("ReduceSum", np.sum, (11,), (13,), QuantizedReduceSum)
_register_reduction("ReduceMean", np.mean, (11, 13), (18,), QuantizedReduceMean)
_register_reduction("ReduceMax", _max, (11, 12, 13), (18, 20), QuantizedReduceMax)
_register_reduction("ReduceMin", _min, (11, 12, 13), (18, 20), QuantizedReduceMin)
_register_reduction("ReduceL1", _l1, (11, 13), (18,), QuantizedReduceL1, np.abs)
_register_reduction("ReduceL2", _l2, (11, 13), (18,), QuantizedReduceL2, np.abs)
_register_reduction("ReduceSumSquare", _sum_square, (11, 13), (18,), QuantizedReduceSumSquare, np.square)
_register_reduction("ReduceLogSumExp", _log_sum_exp, (11, 13), (18, 28), QuantizedReduceLogSumExp, lambda x: x)
# a product of encrypted values needs one multiplication per element, each doubling the bits
_register_reduction("ReduceProd", _prod, (11, 13), (18,), ConstantOnlyOp)


def _arg(function, data, axis, keepdims, select_last_index):
    axis = axis + data.ndim if axis < 0 else axis
    if select_last_index:
        flipped = np.flip(data, axis=axis)
        out = data.shape[axis] - 1 - function(flipped, axis=axis)
    else:
        out = function(data, axis=axis)
    out = out.astype(np.int64)
    return np.expand_dims(out, axis) if keepdims else out


# the position of an encrypted maximum would take a comparison tree per element: apply ArgMax to the
# decrypted output instead (the op table says so)
@OPS.op("ArgMax", since=11, quantized=ConstantOnlyOp)
def arg_max_11(data, /, *, axis=0, keepdims=1):
    return _arg(np.argmax, data, axis, keepdims, 0)


@OPS.op("ArgMax", since=(12, 13), quantized=ConstantOnlyOp)
def arg_max(data, /, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmax, data, axis, keepdims, select_last_index)


@OPS.op("ArgMin", since=11, quantized=ConstantOnlyOp)
def arg_min_11(data, /, *, axis=0, keepdims=1):
    return _arg(np.argmin, data, axis, keepdims, 0)


@OPS.op("ArgMin", since=(12, 13), quantized=ConstantOnlyOp)
def arg_min(data, /, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmin, data, axis, keepdims, select_last_index)


def _softmax_axes(x, axis, version):
    axis = axis + x.ndim if axis < 0 else axis
    return tuple(range(axis, x.ndim)) if version < 13 else (axis,)


def _softmax(x, axes, log=False):
    top = np.max(x, axis=axes, keepdims=True)
    shifted = x - top
    total = np.sum(np.exp(shifted), axis=axes, keepdims=True)
    out = shifted - np.log(total) if log else np.exp(shifted) / total
    return out.astype(x.dtype, copy=False)


class QuantizedSoftmax(QuantizedOp):
    """Softmax / LogSoftmax: exp by a lookup, an integer sum, then one two-input lookup per element
    (the element's exponential and its row's requantized sum)."""

    log = False
    version = 13

    def encrypted_forward(self, ctx, inputs):
        source = inputs[0]
        axes = _softmax_axes(np.zeros(source.shape), int(self.attributes.get("axis", -1 if self.version >= 13 else 1)),
                             self.version)
        # subtract each row's encrypted maximum: the largest term is exp(0) = 1, so no row sums to 0
        q = ctx.requantize(source)
        row_max = backend.reduce_max(q.data, axes)
        scale = q.scale
        shifted = QValue.lazy(q.data - row_max, lambda d: scale * np.asarray(d, np.float64), True,
                              name=f"{self.bound.name}:shifted")
        exp_values = np.exp(shifted.float_value()) if ctx.calibrating else None
        q_exp = self.fitted_quantizer(ctx, "exp", exp_values)
        e = ctx.lookup(shifted, lambda d: q_exp.quant(np.exp(scale * np.asarray(d, np.float64))),
                       key=f"{self.bound.name}:exp")
        count = int(np.prod([source.shape[a] for a in axes]))
        total = np.sum(e, axis=axes, keepdims=True)
        total_float = QValue.lazy(total, lambda t: q_exp.scale * (np.asarray(t, np.float64) - count * q_exp.zero_point),
                                  True, name=f"{self.bound.name}:sum")
        sums = total_float.float_value() if ctx.calibrating else None
        q_sum = self.fitted_quantizer(ctx, "sum", sums)
        assert total_float.to_float is not None
        sum_float = total_float.to_float
        t = ctx.lookup(total_float, lambda q: q_sum.quant(sum_float(q)), key=f"{self.bound.name}:sum")
        q_out = ctx.quantizer_for(self.bound.node.output[0])
        log = self.log

        def table(a, b):
            denominator = np.maximum(q_sum.dequant(b), 1e-12)
            if log:  # log softmax = (x - max) - log(sum): exact in the shifted integers, no log of a tiny exp
                return q_out.quant(scale * np.asarray(a, np.float64) - np.log(denominator))
            return q_out.quant(q_exp.dequant(a) / denominator)

        first = shifted.data if log else e
        operands = [first, backend.broadcast(t, tuple(e.shape))]
        data = backend.multi_lookup(table, *operands)
        ctx.record_multi_lookup(self.bound.node.output[0], operands)
        return QValue.affine(data, q_out.scale, q_out.zero_point)


def _softmax_family(op_type, log):
    class Old(QuantizedSoftmax):
        version = 11

    class New(QuantizedSoftmax):
        version = 13

    for cls in (Old, New):
        cls.log = log
        cls.__name__ = cls.__qualname__ = f"Quantized{op_type}"

    def old(x, /, *, axis=1):
        return _softmax(x, _softmax_axes(x, axis, 11), log)

    def new(x, /, *, axis=-1):
        return _softmax(x, _softmax_axes(x, axis, 13), log)

    old.__name__ = old.__qualname__ = f"{op_type.lower()}_11"
    new.__name__ = new.__qualname__ = op_type.lower()
    OPS.op(op_type, since=11, quantized=Old)(old)
    OPS.op(op_type, since=13, quantized=New)(new)


_softmax_family("Softmax", log=False)
_softmax_family("LogSoftmax", log=True)


def _hardmax(x, axes):
    flat_axis = axes[0]
    moved = x.reshape(x.shape[:flat_axis] + (-1,))
    index = np.argmax(moved, axis=-1)
    out = np.zeros_like(moved)
    np.put_along_axis(out, index[..., None], 1, axis=-1)
    return out.reshape(x.shape)


@OPS.op("Hardmax", since=11, quantized=ConstantOnlyOp)
def hardmax_11(x, /, *, axis=1):
    return _hardmax(x, _softmax_axes(x, axis, 11))


@OPS.op("Hardmax", since=13, quantized=ConstantOnlyOp)
def hardmax(x, /, *, axis=-1):
    axis = axis + x.ndim if axis < 0 else axis
    return np.moveaxis(_hardmax(np.moveaxis(x, axis, -1), (x.ndim - 1,)), -1, axis)
