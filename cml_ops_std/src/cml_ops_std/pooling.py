"""Pooling, normalization and reductions."""

import itertools
import math

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ElementwiseOp, LinearOp, QuantizedOp, QValue, backend

from ._opset import OPS
from .conv import conv_nd, resolve_pads, windows


def _pool_geometry(x_shape, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode):
    """(strides, dilations, begin/end pads incl. the ceil-mode overhang, explicit pads)."""
    n = len(kernel_shape)
    strides = list(strides) if strides is not None else [1] * n
    dilations = list(dilations) if dilations is not None else [1] * n
    pads = resolve_pads(auto_pad, x_shape[2:], kernel_shape, strides, dilations, pads)
    total = list(pads)
    if ceil_mode:
        for i in range(n):
            size = x_shape[2 + i] + pads[i] + pads[i + n]
            span = (kernel_shape[i] - 1) * dilations[i] + 1
            out_floor = (size - span) // strides[i] + 1
            out_ceil = -(-(size - span) // strides[i]) + 1
            # the last window must start inside the input or its left padding
            if out_ceil > out_floor and (out_ceil - 1) * strides[i] >= x_shape[2 + i] + pads[i]:
                out_ceil -= 1
            total[i + n] += (out_ceil - out_floor) * strides[i] if out_ceil > out_floor else 0
    return strides, dilations, pads, total


def _average_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, count_include_pad):
    n = len(kernel_shape)
    strides, dilations, pads, total = _pool_geometry(x.shape, kernel_shape, strides, pads, dilations, auto_pad,
                                                     ceil_mode)
    sums = windows(x, kernel_shape, strides, dilations, total).sum(axis=tuple(range(-n, 0)))
    # which positions count: the input, plus the explicit pads when count_include_pad
    mask = np.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    if count_include_pad:
        mask = np.pad(mask, [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)], constant_values=1)
        extra = [0] * n + [total[i + n] - pads[i + n] for i in range(n)]
        counts = windows(mask, kernel_shape, strides, dilations, extra)
    else:
        counts = windows(mask, kernel_shape, strides, dilations, total)
    counts = counts.sum(axis=tuple(range(-n, 0)))
    return (sums / counts).astype(x.dtype)


class QuantizedAveragePool(LinearOp):
    """AveragePool: an integer sum over each window, divided by its count in the float mapping."""

    def encrypted_forward(self, ctx, inputs):
        q = ctx.requantize(inputs[0])
        a = self.attributes
        kernel = list(a["kernel_shape"])
        n = len(kernel)
        strides, dilations, pads, total = _pool_geometry(q.shape, kernel, a.get("strides"), a.get("pads"),
                                                         a.get("dilations"), a.get("auto_pad", "NOTSET"),
                                                         a.get("ceil_mode", 0))
        channels = q.shape[1]
        ones = np.ones((channels, 1, *kernel), dtype=np.int64)
        acc = backend.conv(self.centered(q), ones, None, pads=total, strides=strides, dilations=dilations,
                           group=channels, clear_conv=conv_nd)
        # per-position counts, from the float implementation on ones: count = sum / average
        probe = np.ones((1, 1, *q.shape[2:]))
        average = _average_pool(probe, kernel, strides, pads, dilations, "NOTSET", a.get("ceil_mode", 0),
                                a.get("count_include_pad", 0))
        summed = windows(probe, kernel, strides, dilations, total).sum(axis=tuple(range(-n, 0)))
        counts = summed / average
        if np.all(counts == counts.reshape(-1)[0]):
            return self.accumulator(ctx, acc, q.scale / counts.reshape(-1)[0])
        ctx.record_accumulator(acc)
        scale = q.scale / counts
        return QValue.lazy(acc, lambda v: scale * np.asarray(v, dtype=np.float64), False)


@OPS.op("AveragePool", since=1, quantized=QuantizedAveragePool)
def average_pool_1(x, /, *, auto_pad="NOTSET", kernel_shape, pads=None, strides=None):
    return _average_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, 0)


@OPS.op("AveragePool", since=7, quantized=QuantizedAveragePool)
def average_pool_7(x, /, *, auto_pad="NOTSET", count_include_pad=0, kernel_shape, pads=None, strides=None):
    return _average_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, count_include_pad)


@OPS.op("AveragePool", since=(10, 11), quantized=QuantizedAveragePool)
def average_pool_11(x, /, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, kernel_shape, pads=None,
                    strides=None):
    return _average_pool(x, kernel_shape, strides, pads, None, auto_pad, ceil_mode, count_include_pad)


@OPS.op("AveragePool", since=(19, 22), quantized=QuantizedAveragePool)
def average_pool(x, /, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape,
                 pads=None, strides=None):
    return _average_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, count_include_pad)


def _max_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, storage_order=0, with_indices=False):
    """MaxPool's output and, ``with_indices``, the Indices output: for each maximum, its position in
    the flattened input (padding not counted), spatial dims in row-major order, or in column-major
    order when ``storage_order`` is 1; the first maximum of a window wins."""
    n = len(kernel_shape)
    strides, dilations, pads, total = _pool_geometry(x.shape, kernel_shape, strides, pads, dilations, auto_pad,
                                                     ceil_mode)
    low = np.finfo(x.dtype).min if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    view = windows(x, kernel_shape, strides, dilations, total, pad_value=low)
    if not with_indices:
        return _tap_maximum(view, n)
    y = view.max(axis=tuple(range(-n, 0)))
    out = y.shape[2:]
    flat = view.reshape(view.shape[: 2 + n] + (-1,))
    offsets = np.unravel_index(np.argmax(flat, axis=-1), tuple(kernel_shape))
    grids = np.meshgrid(*(np.arange(o) for o in out), indexing="ij")
    coordinates = [grids[i] * strides[i] + offsets[i] * dilations[i] - pads[i] for i in range(n)]
    spatial = tuple(x.shape[2:])
    coordinates = [np.clip(c, 0, size - 1) for c, size in zip(coordinates, spatial)]
    position = np.ravel_multi_index(tuple(coordinates), spatial, order="F" if storage_order else "C")
    planes = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).reshape(x.shape[:2] + (1,) * n)
    indices = planes * int(np.prod(spatial, dtype=np.int64)) + position
    return y, indices.astype(np.int64)


#: up to this many positions per window, a maximum over windows is taken position by position
TAPS = 64


def _tap_maximum(view, n):
    """The maximum over the last ``n`` axes of a windows view ``(N, C, *out, *kernel)``: for small windows
    one ``np.maximum`` per kernel position over whole output planes (a reduction over the strided
    window axes walks them element by element)."""
    kernel = view.shape[-n:]
    if math.prod(kernel) > TAPS:
        return view.max(axis=tuple(range(-n, 0)))
    positions = itertools.product(*(range(k) for k in kernel))
    y = view[(Ellipsis, *next(positions))].copy(order="K")  # in the input's memory order
    for position in positions:
        np.maximum(y, view[(Ellipsis, *position)], out=y)
    return y


class QuantizedMaxPool(QuantizedOp):
    """MaxPool: requantized (monotone) integers, maximum over each window of encrypted values."""

    def encrypted_forward(self, ctx, inputs):
        if len(self.bound.node.output) > 1 and any(self.bound.node.output[1:]):
            raise QuantizationError(f"{self.where}: the Indices output cannot be computed on encrypted values")
        q = ctx.requantize(inputs[0])
        a = self.attributes
        kernel = list(a["kernel_shape"])
        strides, dilations, _, total = _pool_geometry(q.shape, kernel, a.get("strides"), a.get("pads"),
                                                      a.get("dilations"), a.get("auto_pad", "NOTSET"),
                                                      a.get("ceil_mode", 0))
        # the integers are unsigned: padding with 0, the grid's smallest value, never changes a maximum
        data = backend.window_max(q.data, kernel, strides, dilations, total)
        return QValue.affine(data, q.scale, q.zero_point, floor=q.floor)


@OPS.op("MaxPool", since=1, quantized=QuantizedMaxPool)
def max_pool_1(x, /, *, auto_pad="NOTSET", kernel_shape, pads=None, strides=None):
    return _max_pool(x, kernel_shape, strides, pads, None, auto_pad, 0)


@OPS.op("MaxPool", since=8, quantized=QuantizedMaxPool)
def max_pool_8(x, /, *, auto_pad="NOTSET", kernel_shape, pads=None, storage_order=0, strides=None, _num_outputs):
    return _max_pool(x, kernel_shape, strides, pads, None, auto_pad, 0, storage_order, _num_outputs > 1)


@OPS.op("MaxPool", since=(10, 11, 12, 22), quantized=QuantizedMaxPool)
def max_pool(x, /, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape, pads=None, storage_order=0,
             strides=None, _num_outputs):
    return _max_pool(x, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, storage_order, _num_outputs > 1)


class QuantizedGlobalAveragePool(LinearOp):
    """GlobalAveragePool: integer sum over the spatial axes, divided by their size."""

    def encrypted_forward(self, ctx, inputs):
        q = ctx.requantize(inputs[0])
        axes = tuple(range(2, len(q.shape)))
        acc = np.sum(self.centered(q), axis=axes, keepdims=True)
        return self.accumulator(ctx, acc, q.scale / int(np.prod([q.shape[a] for a in axes])))


@OPS.op("GlobalAveragePool", since=(1, 22), quantized=QuantizedGlobalAveragePool)
def global_average_pool(x, /):
    if x.dtype in (np.float32, np.float64) and x.ndim >= 3 and x.size:
        total = _spatial_sums(x)
        if total is not None:
            total /= x.dtype.type(math.prod(x.shape[2:]))
            return total.reshape(*x.shape[:2], *(1,) * (x.ndim - 2))
    return np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype)


def _spatial_sums(x):
    """Per sample and channel, the sum of ``x`` (N, C, *spatial) over its spatial axes as one product
    with a vector of ones (BLAS, blocked sums), read in ``x``'s memory order: ``(N, C)``, or ``None``
    for a layout that is neither NCHW nor channels-last (numpy sums a channels-last view a row at a
    time, several times slower and less exactly)."""
    n, c = x.shape[:2]
    size = math.prod(x.shape[2:])
    ones = np.ones(size, x.dtype)
    if x.flags.c_contiguous:
        return np.matmul(x.reshape(n * c, size), ones).reshape(n, c)
    last = np.moveaxis(x, 1, -1)
    if last.flags.c_contiguous:
        return np.matmul(ones, last.reshape(n, size, c))
    return None


class QuantizedGlobalMaxPool(QuantizedOp):
    """GlobalMaxPool: maximum of the requantized integers over the spatial axes."""

    def encrypted_forward(self, ctx, inputs):
        q = ctx.requantize(inputs[0])
        data = backend.reduce_max(q.data, tuple(range(2, len(q.shape))))
        return QValue.affine(data, q.scale, q.zero_point, floor=q.floor)


@OPS.op("GlobalMaxPool", since=(1, 22), quantized=QuantizedGlobalMaxPool)
def global_max_pool(x, /):
    return np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)


def _batch_norm(x, scale, bias, mean, var, epsilon, spatial=True):
    """Inference: ``(x - mean) / sqrt(var + epsilon) * scale + bias``, the parameters per channel
    (``spatial``) or, with ``spatial`` false (before opset 9), per activation: shaped like one sample."""
    shape = (1, -1) + (1,) * (x.ndim - 2) if spatial else (1,) + tuple(x.shape[1:])
    inv = (np.asarray(scale) / np.sqrt(np.asarray(var) + epsilon)).reshape(shape)
    return ((x - np.asarray(mean).reshape(shape)) * inv + np.asarray(bias).reshape(shape)).astype(x.dtype)


def _batch_statistics(x, spatial=True):
    """The batch's mean and (biased) variance per channel, or per activation without ``spatial``."""
    axes = (0,) + tuple(range(2, x.ndim)) if spatial else (0,)
    x64 = x.astype(np.float64)
    return x64.mean(axis=axes), x64.var(axis=axes)


def _batch_norm_training(x, scale, bias, mean, var, epsilon, momentum, spatial=True):
    """Training mode: Y normalized by the batch's statistics, the running mean and variance moved
    toward them by ``1 - momentum``, and the batch's mean and variance."""
    batch_mean, batch_var = _batch_statistics(x, spatial)
    shape = np.shape(mean)
    y = _batch_norm(x, scale, bias, batch_mean.reshape(shape), batch_var.reshape(shape), epsilon, spatial)
    running_mean = np.asarray(mean) * momentum + batch_mean.reshape(shape) * (1 - momentum)
    running_var = np.asarray(var) * momentum + batch_var.reshape(shape) * (1 - momentum)
    dtype = np.asarray(mean).dtype
    return (y, running_mean.astype(dtype), running_var.astype(dtype), batch_mean.reshape(shape).astype(dtype),
            batch_var.reshape(shape).astype(dtype))


class QuantizedBatchNormalization(ElementwiseOp):
    """BatchNormalization in inference: an element-wise affine map. Training mode (batch statistics,
    running outputs) depends on the whole batch and is refused."""

    def encrypted_forward(self, ctx, inputs):
        if self.attributes.get("training_mode", 0) or any(self.bound.node.output[1:]):
            raise QuantizationError(f"{self.where}: BatchNormalization in training mode (batch statistics, "
                                    "running mean and variance outputs) cannot run on encrypted values")
        return super().encrypted_forward(ctx, inputs)


def _batch_norm_legacy(x, scale, b, mean, var, epsilon, momentum, spatial, outputs):
    """BatchNormalization before opset 14: inference when the node asks for Y only; with more
    outputs, training mode (Y, running mean, running variance, batch mean, batch variance)."""
    if outputs <= 1:
        return _batch_norm(x, scale, b, mean, var, epsilon, bool(spatial))  # Y only: inference
    return _batch_norm_training(x, scale, b, mean, var, epsilon, momentum, bool(spatial))[:outputs]


@OPS.op("BatchNormalization", since=1, quantized=QuantizedBatchNormalization)
def batch_normalization_1(x, scale, b, mean, var, /, *, consumed_inputs, epsilon=1e-5, is_test=0, momentum=0.9,
                          spatial=1, _num_outputs):
    return _batch_norm_legacy(x, scale, b, mean, var, epsilon, momentum, spatial, _num_outputs)


@OPS.op("BatchNormalization", since=6, quantized=QuantizedBatchNormalization)
def batch_normalization_6(x, scale, b, mean, var, /, *, epsilon=1e-5, is_test=0, momentum=0.9, spatial=1,
                          _num_outputs):
    return _batch_norm_legacy(x, scale, b, mean, var, epsilon, momentum, spatial, _num_outputs)


@OPS.op("BatchNormalization", since=7, quantized=QuantizedBatchNormalization)
def batch_normalization_7(x, scale, b, mean, var, /, *, epsilon=1e-5, momentum=0.9, spatial=1, _num_outputs):
    return _batch_norm_legacy(x, scale, b, mean, var, epsilon, momentum, spatial, _num_outputs)


@OPS.op("BatchNormalization", since=9, quantized=QuantizedBatchNormalization)
def batch_normalization_9(x, scale, b, input_mean, input_var, /, *, epsilon=1e-5, momentum=0.9, _num_outputs):
    return _batch_norm_legacy(x, scale, b, input_mean, input_var, epsilon, momentum, 1, _num_outputs)


@OPS.op("BatchNormalization", since=(14, 15), quantized=QuantizedBatchNormalization)
def batch_normalization(x, scale, b, input_mean, input_var, /, *, epsilon=1e-5, momentum=0.9, training_mode=0,
                        _num_outputs):
    if training_mode:
        outputs = _batch_norm_training(x, scale, b, input_mean, input_var, epsilon, momentum)[:max(_num_outputs, 1)]
        return outputs if len(outputs) > 1 else outputs[0]
    return _batch_norm(x, scale, b, input_mean, input_var, epsilon)


def _reduce_axes(data, axes, noop_with_empty_axes=0):
    if axes is None or np.asarray(axes).size == 0:
        return None if not noop_with_empty_axes else ()
    return tuple(int(a) + data.ndim if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1))


def _reduce(function, data, axes, keepdims, noop):
    axes = _reduce_axes(data, axes, noop)
    if axes == ():
        return data
    return np.asarray(function(data, axis=axes, keepdims=bool(keepdims))).astype(data.dtype, copy=False)


class QuantizedReduceSum(LinearOp):
    """ReduceSum / ReduceMean: integer sums of the requantized input."""

    mean = False

    def encrypted_forward(self, ctx, inputs):
        q = ctx.requantize(inputs[0])
        axes_value = self.attributes.get("axes")
        if len(inputs) > 1 and inputs[1] is not None:
            axes_value = inputs[1].data
        axes = _reduce_axes(np.zeros(q.shape), axes_value, self.attributes.get("noop_with_empty_axes", 0))
        if axes == ():
            return q
        keepdims = bool(self.attributes.get("keepdims", 1))
        acc = np.sum(self.centered(q), axis=axes, keepdims=keepdims)
        count = int(np.prod([q.shape[a] for a in (axes if axes is not None else range(len(q.shape)))]))
        return self.accumulator(ctx, acc, q.scale / count if self.mean else q.scale)


class QuantizedReduceMean(QuantizedReduceSum):
    mean = True
