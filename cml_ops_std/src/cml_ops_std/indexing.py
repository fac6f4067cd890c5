"""Ops that index, scatter, count or enumerate: Range, Trilu, CumSum, TopK, OneHot, Scatter*, GatherND ..."""

import math

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ConstantOnlyOp, LayoutOp, LinearOp, QuantizedOp, QValue, backend
from onnx import helper

from ._opset import OPS


def _scalar(value):
    """The one element of a scalar (or one-element) tensor input."""
    array = np.asarray(value).reshape(-1)
    if array.size != 1:
        raise ValueError(f"expected a scalar, got a tensor of {array.size} elements")
    return array[0]


def _axis(axis, ndim):
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is outside the input's {ndim} axes (valid: {-ndim} to {ndim - 1})")
    return axis + ndim if axis < 0 else axis


def _wrapped(indices, size, what="index"):
    """Indices with negative values counted from the end, checked to lie in [-size, size - 1]."""
    indices = np.asarray(indices).astype(np.int64)
    if indices.size and (indices.min() < -size or indices.max() >= size):
        bad = indices[(indices < -size) | (indices >= size)].reshape(-1)[0]
        raise ValueError(f"{what} {bad} is out of range for an axis of size {size}")
    return np.where(indices < 0, indices + size, indices)


class _ClearOnly(ConstantOnlyOp):
    """Constant-only ops whose refusal says what to do instead (``advice``)."""

    advice = ""

    def encrypted_forward(self, ctx, inputs):
        raise QuantizationError(
            f"{self.where}: this op cannot run on encrypted values; its inputs must be constants "
            f"(initializers or values computed from them). {self.advice}".rstrip()
        )


class _DataDependentShape(_ClearOnly):
    advice = ("Its output shape or order depends on the values themselves, which an encrypted circuit cannot "
              "have: apply it to the decrypted output instead.")


class _CumulativeProduct(_ClearOnly):
    advice = "A running product of encrypted values is not supported; a CumSum of logarithms is."


class _EncryptedIndices(_ClearOnly):
    advice = "Its indices decide the output's layout; compute them from constants."


# ---------------------------------------------------------------------------------------------- Range


def _range(start, limit, delta, compute_dtype=None):
    dtype = np.asarray(start).dtype
    start, limit, delta = (np.asarray(v).reshape(-1) for v in (start, limit, delta))
    for name, value in (("start", start), ("limit", limit), ("delta", delta)):
        if value.size != 1:
            raise ValueError(f"Range {name} must be a scalar, got {value.size} elements")
    if delta[0] == 0:
        raise ValueError("Range delta cannot be 0")
    if dtype.kind in "iu":
        s, e, d = int(start[0]), int(limit[0]), int(delta[0])
        count = max(-((s - e) // d), 0)
        return (s + np.arange(count, dtype=np.int64) * d).astype(dtype)
    compute = np.dtype(compute_dtype or dtype)
    s, e, d = (v.astype(compute)[0] for v in (start, limit, delta))
    span = float(e - s) / float(d)
    if not math.isfinite(span):
        raise ValueError(f"Range from {s} to {e} by {d} has no finite length")
    count = max(math.ceil(span), 0)
    return (s + np.arange(count).astype(compute) * d).astype(dtype)


@OPS.op("Range", since=11, quantized=ConstantOnlyOp)
def range_11(start, limit, delta, /):
    return _range(start, limit, delta)


@OPS.op("Range", since=27, quantized=ConstantOnlyOp)
def range_(start, limit, delta, /, *, stash_type=1):
    dtype = np.asarray(start).dtype
    widened = stash_type == 1 and dtype.kind == "f" and dtype.itemsize < 4
    return _range(start, limit, delta, np.float32 if widened else None)


# ---------------------------------------------------------------------------------------------- Trilu


class QuantizedZeroFilling(LayoutOp):
    """Layouts that write zeros (Trilu, CenterCropPad): run on the integers minus the zero point.

    A zero of the centred integers is the float 0, so the written zeros are exact; the zero point is
    added back afterwards. Other inputs must be constants.
    """

    def encrypted_forward(self, ctx, inputs):
        if self.encrypted_positions(inputs) != [0]:
            return super().encrypted_forward(ctx, inputs)  # refuses, naming the encrypted inputs
        source = ctx.requantize(inputs[0])
        zero_point = source.zero_point
        centered = QValue.affine(source.data - zero_point if zero_point else source.data, source.scale, 0)
        moved = super().encrypted_forward(ctx, [centered, *inputs[1:]])
        data = moved.data + zero_point if zero_point else moved.data
        return QValue.affine(data, source.scale, zero_point)


@OPS.op("Trilu", since=14, quantized=QuantizedZeroFilling)
def trilu(input, k=None, /, *, upper=1):
    if input.ndim < 2:
        raise ValueError(f"Trilu needs at least 2 dimensions, got {input.ndim}")
    k = 0 if k is None else int(_scalar(k))
    rows, cols = input.shape[-2:]
    offsets = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    keep = offsets >= k if upper else offsets <= k
    return np.where(keep, input, np.zeros((), dtype=input.dtype)).astype(input.dtype, copy=False)


# ---------------------------------------------------------------------------------------------- CumSum / CumProd


def _cumulative(x, axis, exclusive, reverse, accumulate, identity):
    """``accumulate`` (a ufunc's running reduction) along ``axis``, ONNX ``exclusive``/``reverse``."""
    if x.ndim == 0:
        raise ValueError("a cumulative op needs an input of at least 1 dimension")
    axis = _axis(_scalar(axis), x.ndim)
    values = np.flip(x, axis) if reverse else x
    out = accumulate(values, axis=axis, dtype=x.dtype)
    if exclusive:
        first = [slice(None)] * x.ndim
        first[axis] = slice(0, 1)
        rest = [slice(None)] * x.ndim
        rest[axis] = slice(0, -1)
        out = np.concatenate([np.full_like(out[tuple(first)], identity), out[tuple(rest)]], axis=axis)
    return np.flip(out, axis) if reverse else out


class QuantizedCumSum(LinearOp):
    """CumSum of encrypted values: a running sum of the centred integers (one accumulator, no lookup)."""

    def encrypted_forward(self, ctx, inputs):
        if self.encrypted_positions(inputs) != [0]:
            raise QuantizationError(f"{self.where}: the axis of a CumSum must be a constant")
        source = ctx.requantize(inputs[0])
        centered = self.centered(source)
        axis = inputs[1].data
        try:
            acc = self.call_numpy([centered, axis])
        except Exception:  # noqa: BLE001  (the backend cannot trace this numpy call)
            if not backend.is_traced(centered):
                raise
            acc = backend.by_selection_matrix(centered, lambda basis: self.call_numpy([basis, axis]))
        return self.accumulator(ctx, acc, source.scale)


@OPS.op("CumSum", since=(11, 14), quantized=QuantizedCumSum)
def cum_sum(x, axis, /, *, exclusive=0, reverse=0):
    return _cumulative(x, axis, exclusive, reverse, np.cumsum, 0)


@OPS.op("CumProd", since=26, quantized=_CumulativeProduct)
def cum_prod(x, axis, /, *, exclusive=0, reverse=0):
    return _cumulative(x, axis, exclusive, reverse, np.cumprod, 1)


# ---------------------------------------------------------------------------------------------- TopK


def _top_k(x, k, axis, largest):
    """The ``k`` largest (or smallest) along ``axis``; equal values in order of their index.

    NaN counts as larger than every number (numpy's sort order).
    """
    if x.ndim == 0:
        raise ValueError("TopK needs an input of at least 1 dimension")
    axis = _axis(axis, x.ndim)
    size = x.shape[axis]
    k = int(_scalar(k))
    if not 0 <= k <= size:
        raise ValueError(f"TopK k={k} is outside [0, {size}] (the size of axis {axis})")
    if largest:
        # a stable ascending sort of the reversed axis, read backwards: descending, ties by lower index
        order = size - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    chosen = np.take(order, np.arange(k), axis=axis)  # unsorted output may be in any order: sorted is one
    return np.take_along_axis(x, chosen, axis=axis), chosen.astype(np.int64)


@OPS.op("TopK", since=1, quantized=_DataDependentShape)
def top_k_1(x, /, *, axis=-1, k):
    return _top_k(x, k, axis, True)


@OPS.op("TopK", since=10, quantized=_DataDependentShape)
def top_k_10(x, k, /, *, axis=-1):
    return _top_k(x, k, axis, True)


@OPS.op("TopK", since=(11, 24), quantized=_DataDependentShape)
def top_k(x, k, /, *, axis=-1, largest=1, sorted=1):  # noqa: A002  (the ONNX attribute's name)
    return _top_k(x, k, axis, largest)


# ---------------------------------------------------------------------------------------------- OneHot


def _one_hot(indices, depth, values, axis, negative_from_end):
    depth_value = float(_scalar(depth))
    if not math.isfinite(depth_value) or depth_value < 1:
        raise ValueError(f"OneHot depth must be a positive number, got {depth_value}")
    depth = int(depth_value)
    values = np.asarray(values).reshape(-1)
    if values.size != 2:
        raise ValueError(f"OneHot values must hold [off_value, on_value], got {values.size} elements")
    indices = np.asarray(indices)
    if indices.dtype.kind == "f":
        indices = np.trunc(indices)
    indices = indices.astype(np.int64)
    if negative_from_end:
        indices = np.where(indices < 0, indices + depth, indices)
    axis = _axis(axis, indices.ndim + 1)
    hot = indices[..., None] == np.arange(depth)
    out = np.where(hot, values[1], values[0]).astype(values.dtype, copy=False)
    return np.moveaxis(out, -1, axis)


@OPS.op("OneHot", since=9, quantized=_EncryptedIndices)
def one_hot_9(indices, depth, values, /, *, axis=-1):
    return _one_hot(indices, depth, values, axis, False)


@OPS.op("OneHot", since=(11, 28), quantized=_EncryptedIndices)
def one_hot(indices, depth, values, /, *, axis=-1):
    return _one_hot(indices, depth, values, axis, True)


# ---------------------------------------------------------------------------------------------- NonZero, Compress, Unique


@OPS.op("NonZero", since=(9, 13), quantized=_DataDependentShape)
def non_zero(x, /):
    if x.ndim == 0:
        return np.zeros((0, int(bool(x))), dtype=np.int64)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


@OPS.op("Compress", since=(9, 11, 28), quantized=LayoutOp)
def compress(input, condition, /, *, axis=None):
    condition = np.asarray(condition).astype(bool).reshape(-1)
    data = input.reshape(-1) if axis is None else input
    axis = 0 if axis is None else _axis(axis, input.ndim)
    size = data.shape[axis]
    if condition.size > size:
        if condition[size:].any():
            raise ValueError(f"Compress condition selects index {size + int(np.argmax(condition[size:]))}, "
                             f"beyond the axis size {size}")
        condition = condition[:size]
    return np.compress(condition, data, axis=axis)


@OPS.op("Unique", since=(11, 28), quantized=_DataDependentShape)
def unique(x, /, *, axis=None, sorted=1):  # noqa: A002  (the ONNX attribute's name)
    if axis is None:
        values, first, inverse, counts = np.unique(x.reshape(-1), return_index=True, return_inverse=True,
                                                   return_counts=True)
        along = 0
    else:
        along = _axis(axis, x.ndim)
        values, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True, return_counts=True,
                                                   axis=along)
    inverse = inverse.reshape(-1)
    if not sorted:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        values, first, counts, inverse = np.take(values, order, axis=along), first[order], counts[order], rank[inverse]
    return (values.astype(x.dtype, copy=False), first.astype(np.int64), inverse.astype(np.int64),
            counts.astype(np.int64))


# ---------------------------------------------------------------------------------------------- EyeLike


class QuantizedEyeLike(QuantizedOp):
    """EyeLike reads only its input's shape: a clear constant, whether the input is encrypted or not."""

    def encrypted_forward(self, ctx, inputs):
        return QValue.constant(self.call_numpy([np.zeros(inputs[0].shape)]))


@OPS.op("EyeLike", since=(9, 22), quantized=QuantizedEyeLike)
def eye_like(input, /, *, dtype=None, k=0):
    if input.ndim != 2:
        raise ValueError(f"EyeLike needs a 2-dimensional input, got {input.ndim} dimensions")
    out_dtype = input.dtype if dtype is None else np.dtype(helper.tensor_dtype_to_np_dtype(int(dtype)))
    return np.eye(input.shape[0], input.shape[1], k=int(k)).astype(out_dtype)


# ---------------------------------------------------------------------------------------------- scatters


class QuantizedScatter(QuantizedOp):
    """Scatters of encrypted data and/or updates at constant indices, on the output's quantization.

    The data and the updates are brought to the output's quantizer (a lookup for each encrypted one
    not already on it; constants are quantized with it), so the written integers mean what they
    meant. With ``reduction="none"``, ``"max"`` or ``"min"`` the integers are moved or compared as
    they are (the mapping is increasing, and clipping to the output's range commutes with them);
    ``"add"`` sums the centred integers, unclipped, so each term carries its own rounding. A product
    of encrypted values (``"mul"``) is not supported.
    """

    #: positions of the data and updates inputs (the others are indices and must be constants)
    value_inputs = (0, 2)

    def encrypted_forward(self, ctx, inputs):
        encrypted = self.encrypted_positions(inputs)
        if any(p not in self.value_inputs for p in encrypted):
            raise QuantizationError(f"{self.where}: the indices of a scatter must be constants "
                                    f"(encrypted inputs: {encrypted})")
        reduction = self.attributes.get("reduction", "none")
        if reduction == "mul":
            raise QuantizationError(f"{self.where}: a scatter with reduction 'mul' multiplies encrypted values, "
                                    "which is not supported; only 'none', 'add', 'max' and 'min' are")
        if "out" not in self.state:
            self.state["out"] = ctx.quantizer_for(self.bound.node.output[0])
        quantizer = self.state["out"]
        scale, zero_point = quantizer.scale, quantizer.zero_point
        clipped = reduction != "add"

        def on_grid(values):
            q = np.rint(np.asarray(values, dtype=np.float64) / scale) + zero_point
            return (np.clip(q, quantizer.q_min, quantizer.q_max) if clipped else q).astype(np.int64)

        args = [None if v is None else v.data for v in inputs]
        for p in self.value_inputs:
            value = inputs[p]
            if value.is_constant:
                args[p] = on_grid(value.data)
            elif value.is_affine and (value.scale, value.zero_point) == (scale, zero_point):
                args[p] = value.data
            else:
                to_float = value.to_float
                args[p] = ctx.lookup(value, lambda q, to_float=to_float: on_grid(to_float(q)),
                                     key=f"{self.bound.name}:{p}")
            if not clipped and zero_point:
                args[p] = args[p] - zero_point
        out = self.call_numpy(args)
        if not clipped and zero_point:
            out = out + zero_point
        return QValue.affine(out, scale, zero_point)


def _check_reduction(reduction, allowed):
    if reduction not in allowed:
        raise ValueError(f"unknown reduction {reduction!r} (expected one of {', '.join(allowed)})")


_REDUCE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_elements(data, indices, updates, axis, reduction):
    if indices.shape != updates.shape or indices.ndim != data.ndim:
        raise ValueError(f"indices {indices.shape} and updates {updates.shape} must have the same shape, "
                         f"of the data's rank {data.ndim}")
    axis = _axis(axis, data.ndim)
    for i, (n, d) in enumerate(zip(indices.shape, data.shape)):
        if i != axis and n > d:
            raise ValueError(f"indices {indices.shape} exceed the data {data.shape} along axis {i}")
    where = list(np.indices(indices.shape, sparse=True))
    where[axis] = _wrapped(indices, data.shape[axis])
    out = np.array(data, copy=True)
    if reduction == "none":
        out[tuple(where)] = updates
    else:
        _REDUCE[reduction].at(out, tuple(where), updates)
    return out


@OPS.op("Scatter", since=9, quantized=QuantizedScatter)
def scatter(data, indices, updates, /, *, axis=0):
    return _scatter_elements(data, indices, updates, axis, "none")


@OPS.op("ScatterElements", since=(11, 13), quantized=QuantizedScatter)
def scatter_elements_11(data, indices, updates, /, *, axis=0):
    return _scatter_elements(data, indices, updates, axis, "none")


@OPS.op("ScatterElements", since=16, quantized=QuantizedScatter)
def scatter_elements_16(data, indices, updates, /, *, axis=0, reduction="none"):
    _check_reduction(reduction, ("none", "add", "mul"))
    return _scatter_elements(data, indices, updates, axis, reduction)


@OPS.op("ScatterElements", since=18, quantized=QuantizedScatter)
def scatter_elements(data, indices, updates, /, *, axis=0, reduction="none"):
    _check_reduction(reduction, ("none", "add", "mul", "max", "min"))
    return _scatter_elements(data, indices, updates, axis, reduction)


def _scatter_nd(data, indices, updates, reduction):
    indices = np.asarray(indices)
    depth = indices.shape[-1] if indices.ndim else 0
    if indices.ndim == 0 or depth > data.ndim:
        raise ValueError(f"ScatterND indices of shape {indices.shape} cannot index data of rank {data.ndim}")
    expected = indices.shape[:-1] + data.shape[depth:]
    if updates.shape != expected:
        raise ValueError(f"ScatterND updates have shape {updates.shape}, expected {expected}")
    where = indices.reshape(-1, depth).astype(np.int64)
    for i in range(depth):
        where[:, i] = _wrapped(where[:, i], data.shape[i])
    parts = updates.reshape((where.shape[0],) + data.shape[depth:])
    out = np.array(data, copy=True)
    for position, part in zip(where, parts):
        key = tuple(int(j) for j in position)
        out[key] = part if reduction == "none" else _REDUCE[reduction](out[key], part)
    return out


@OPS.op("ScatterND", since=(11, 13), quantized=QuantizedScatter)
def scatter_nd_11(data, indices, updates, /):
    return _scatter_nd(data, indices, updates, "none")


@OPS.op("ScatterND", since=16, quantized=QuantizedScatter)
def scatter_nd_16(data, indices, updates, /, *, reduction="none"):
    _check_reduction(reduction, ("none", "add", "mul"))
    return _scatter_nd(data, indices, updates, reduction)


@OPS.op("ScatterND", since=18, quantized=QuantizedScatter)
def scatter_nd(data, indices, updates, /, *, reduction="none"):
    _check_reduction(reduction, ("none", "add", "mul", "max", "min"))
    return _scatter_nd(data, indices, updates, reduction)


class QuantizedTensorScatter(QuantizedScatter):
    value_inputs = (0, 1)


@OPS.op("TensorScatter", since=24, quantized=QuantizedTensorScatter)
def tensor_scatter(past_cache, update, write_indices=None, /, *, axis=-2, mode="linear"):
    if mode not in ("linear", "circular"):
        raise ValueError(f"unknown TensorScatter mode {mode!r} (expected linear or circular)")
    if past_cache.ndim < 2 or update.ndim != past_cache.ndim:
        raise ValueError(f"TensorScatter cache {past_cache.shape} and update {update.shape} must have one rank of "
                         "at least 2")
    axis = _axis(axis, past_cache.ndim)
    if axis == 0:
        raise ValueError("TensorScatter's axis cannot be the batch axis 0")
    length, count = past_cache.shape[axis], update.shape[axis]
    if any(u != c for i, (u, c) in enumerate(zip(update.shape, past_cache.shape)) if i != axis) or count > length:
        raise ValueError(f"TensorScatter update {update.shape} does not fit the cache {past_cache.shape} "
                         f"along axis {axis}")
    batch = past_cache.shape[0]
    starts = np.zeros(batch, dtype=np.int64) if write_indices is None else np.asarray(write_indices).reshape(-1)
    if starts.size != batch:
        raise ValueError(f"TensorScatter write_indices has {starts.size} values for a batch of {batch}")
    out = np.array(past_cache, copy=True)
    for b in range(batch):
        positions = int(starts[b]) + np.arange(count)
        if mode == "circular":
            positions %= length
        elif count and (positions[0] < 0 or positions[-1] >= length):
            raise ValueError(f"TensorScatter writes positions {positions[0]} to {positions[-1]} of sample {b}, "
                             f"outside the cache length {length}")
        np.moveaxis(out[b], axis - 1, 0)[positions] = np.moveaxis(update[b], axis - 1, 0)
    return out


# ---------------------------------------------------------------------------------------------- GatherND


def _gather_nd(data, indices, batch_dims):
    indices = np.asarray(indices).astype(np.int64)
    if indices.ndim < 1:
        raise ValueError("GatherND indices need at least 1 dimension")
    depth = indices.shape[-1]
    if batch_dims < 0 or batch_dims >= min(data.ndim, indices.ndim) or depth > data.ndim - batch_dims:
        raise ValueError(f"GatherND cannot index data {data.shape} with indices {indices.shape} "
                         f"and batch_dims={batch_dims}")
    batch_shape = data.shape[:batch_dims]
    if indices.shape[:batch_dims] != batch_shape:
        raise ValueError(f"GatherND batch dimensions differ: data {batch_shape}, indices {indices.shape[:batch_dims]}")
    batches = int(np.prod(batch_shape, dtype=np.int64))
    blocks = data.reshape((batches,) + data.shape[batch_dims:])
    where = indices.reshape(batches, -1, depth)
    for i in range(depth):
        where[..., i] = _wrapped(where[..., i], data.shape[batch_dims + i])
    tail = data.shape[batch_dims + depth:]
    out = [blocks[b][tuple(where[b].T)] for b in range(batches)]
    out = np.stack(out) if out else np.zeros((0, where.shape[1]) + tail, dtype=data.dtype)
    return out.reshape(indices.shape[:-1] + tail)


@OPS.op("GatherND", since=11, quantized=LayoutOp)
def gather_nd_11(data, indices, /):
    return _gather_nd(data, indices, 0)


@OPS.op("GatherND", since=(12, 13), quantized=LayoutOp)
def gather_nd(data, indices, /, *, batch_dims=0):
    return _gather_nd(data, indices, int(batch_dims))


# ---------------------------------------------------------------------------------------------- ReverseSequence, CenterCropPad


@OPS.op("ReverseSequence", since=(10, 28), quantized=LayoutOp)
def reverse_sequence(input, sequence_lens, /, *, batch_axis=1, time_axis=0):
    if input.ndim < 2 or {batch_axis, time_axis} != {0, 1}:
        raise ValueError(f"ReverseSequence needs batch_axis and time_axis 0 and 1 of an input of rank >= 2, got "
                         f"batch_axis={batch_axis}, time_axis={time_axis} and rank {input.ndim}")
    lengths = np.asarray(sequence_lens).reshape(-1)
    if lengths.size != input.shape[batch_axis]:
        raise ValueError(f"ReverseSequence has {lengths.size} lengths for a batch of {input.shape[batch_axis]}")
    out = np.array(input, copy=True)
    for b, length in enumerate(lengths.tolist()):
        if not 0 <= length <= input.shape[time_axis]:
            raise ValueError(f"sequence length {length} is outside [0, {input.shape[time_axis]}]")
        span = [slice(None)] * input.ndim
        span[batch_axis] = slice(b, b + 1)
        span[time_axis] = slice(0, length)
        out[tuple(span)] = np.flip(input[tuple(span)], axis=time_axis)
    return out


@OPS.op("CenterCropPad", since=18, quantized=QuantizedZeroFilling)
def center_crop_pad(input_data, shape, /, *, axes=None):
    targets = [int(s) for s in np.asarray(shape).reshape(-1)]
    axes = list(range(input_data.ndim)) if axes is None else [_axis(a, input_data.ndim) for a in axes]
    if len(targets) != len(axes):
        raise ValueError(f"CenterCropPad has {len(targets)} sizes for {len(axes)} axes")
    out = input_data
    for axis, target in zip(axes, targets):
        size = out.shape[axis]
        if target < 0:
            raise ValueError(f"CenterCropPad size {target} is negative")
        if target < size:
            start = (size - target) // 2
            window = [slice(None)] * out.ndim
            window[axis] = slice(start, start + target)
            out = out[tuple(window)]
        elif target > size:
            before = (target - size) // 2
            widths = [(0, 0)] * out.ndim
            widths[axis] = (before, target - size - before)
            out = np.pad(out, widths)
    return out


# ---------------------------------------------------------------------------------------------- DepthToSpace, SpaceToDepth


def _depth_to_space(x, blocksize, mode):
    if x.ndim != 4:
        raise ValueError(f"DepthToSpace needs a 4-dimensional input, got {x.ndim} dimensions")
    n, c, h, w = x.shape
    b = int(blocksize)
    if b < 1 or c % (b * b):
        raise ValueError(f"DepthToSpace: {c} channels are not a multiple of blocksize**2 = {b * b}")
    if mode == "DCR":
        blocks = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        blocks = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise ValueError(f"unknown DepthToSpace mode {mode!r} (expected DCR or CRD)")
    return blocks.reshape(n, c // (b * b), h * b, w * b)


@OPS.op("DepthToSpace", since=1, quantized=LayoutOp)
def depth_to_space_1(input, /, *, blocksize):
    return _depth_to_space(input, blocksize, "DCR")


@OPS.op("DepthToSpace", since=(11, 13, 28), quantized=LayoutOp)
def depth_to_space(input, /, *, blocksize, mode="DCR"):
    return _depth_to_space(input, blocksize, mode)


def _space_to_depth(x, blocksize, mode):
    if x.ndim != 4:
        raise ValueError(f"SpaceToDepth needs a 4-dimensional input, got {x.ndim} dimensions")
    n, c, h, w = x.shape
    b = int(blocksize)
    if b < 1 or h % b or w % b:
        raise ValueError(f"SpaceToDepth: height {h} and width {w} must be multiples of blocksize {b}")
    cells = x.reshape(n, c, h // b, b, w // b, b)
    if mode == "DCR":
        cells = cells.transpose(0, 3, 5, 1, 2, 4)
    elif mode == "CRD":
        cells = cells.transpose(0, 1, 3, 5, 2, 4)
    else:
        raise ValueError(f"unknown SpaceToDepth mode {mode!r} (expected DCR or CRD)")
    return cells.reshape(n, c * b * b, h // b, w // b)


@OPS.op("SpaceToDepth", since=(1, 13), quantized=LayoutOp)
def space_to_depth_1(input, /, *, blocksize):
    return _space_to_depth(input, blocksize, "DCR")


@OPS.op("SpaceToDepth", since=28, quantized=LayoutOp)
def space_to_depth(input, /, *, blocksize, mode="DCR"):
    return _space_to_depth(input, blocksize, mode)
