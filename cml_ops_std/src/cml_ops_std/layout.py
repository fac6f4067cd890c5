"""Ops that select, move or copy elements: transposes, slices, gathers, concatenation, padding."""

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ConstantOnlyOp, LayoutOp, QuantizedOp, QValue, ShapeOp, UniformQuantizer, backend
from cml_core.quantization.context import PendingRange, bits_for_range
from cml_core.quantization.rows import STREAM_EXTRA_BITS, RowQuantizer, rows_differ

from ._opset import OPS

VERSIONS_13_25 = (13, 21, 23, 24, 25)


def _axes(axes, ndim):
    return [int(a) + ndim if int(a) < 0 else int(a) for a in np.asarray(axes).reshape(-1)]


@OPS.op("Transpose", since=(1,) + VERSIONS_13_25, quantized=LayoutOp)
def transpose(data, /, *, perm=None):
    return np.transpose(data, perm if perm is None else list(perm))


def _squeeze(data, axes):
    if axes is None:
        axes = [i for i, d in enumerate(data.shape) if d == 1]
    axes = _axes(axes, data.ndim)
    if any(data.shape[a] != 1 for a in axes):
        raise ValueError(f"cannot squeeze axes {axes} of shape {data.shape}: not of size 1")
    return np.reshape(data, [d for i, d in enumerate(data.shape) if i not in axes])


class QuantizedSqueeze(LayoutOp):
    """Squeeze without ``axes``: the axes of size 1 in calibration, on every later run.

    ONNX squeezes every axis of size 1 when no axes are given, so the result would depend on the
    batch size: a circuit is traced on one sample, whose batch axis would go too. Calibration sees
    the whole calibration batch; the axes it squeezed are the model's, and they are kept. (After a
    calibration on one sample, the batch axis is among them; it is squeezed only where it has size
    1 again, as ONNX does, and compile names the node.)
    """

    def encrypted_forward(self, ctx, inputs):
        given = self.attributes.get("axes")  # an attribute before opset 13, an input since
        if given is not None or (len(inputs) > 1 and inputs[1] is not None):
            return super().encrypted_forward(ctx, inputs)
        source = inputs[0]
        if ctx.calibrating or "axes" not in self.state:
            self.state["axes"] = [i for i, d in enumerate(source.shape) if d == 1]
        axes = [a for a in self.state["axes"] if a < len(source.shape) and source.shape[a] == 1]
        if not source.uniform:  # a per-position float mapping cannot follow a reshape
            source = ctx.requantize(source)
        shape = tuple(d for i, d in enumerate(source.shape) if i not in axes)
        return source.with_data(source.data.reshape(shape), name="")


def check_squeeze(inputs, attributes):
    """Load-time check of a Squeeze node: its axes lie within the data's rank and name axes of size 1."""
    data = inputs[0]
    axes = attributes.get("axes")
    if axes is None and len(inputs) > 1 and inputs[1] is not None:
        axes = inputs[1].value
    if axes is None or data is None or data.shape is None:
        return
    rank = len(data.shape)
    for axis in np.asarray(axes).reshape(-1).tolist():
        if not -rank <= axis < rank:
            raise ValueError(f"axis {axis} is outside the data's {rank} axes (valid: {-rank} to {rank - 1})")
        size = data.shape[axis]
        if size is not None and size != 1:
            raise ValueError(f"axis {axis} has size {size}: only axes of size 1 can be squeezed")


@OPS.op("Squeeze", since=(1, 11), quantized=QuantizedSqueeze, validate=check_squeeze)
def squeeze_11(data, /, *, axes=None):
    return _squeeze(data, axes)


@OPS.op("Squeeze", since=VERSIONS_13_25, quantized=QuantizedSqueeze, validate=check_squeeze)
def squeeze(data, /, axes=None):
    return _squeeze(data, axes)


def _unsqueeze(data, axes):
    rank = data.ndim + np.asarray(axes).size
    shape = list(data.shape)
    for a in sorted(_axes(axes, rank)):
        shape.insert(a, 1)
    return np.reshape(data, shape)


@OPS.op("Unsqueeze", since=(1, 11), quantized=LayoutOp)
def unsqueeze_11(data, /, *, axes):
    return _unsqueeze(data, axes)


@OPS.op("Unsqueeze", since=VERSIONS_13_25, quantized=LayoutOp)
def unsqueeze(data, axes, /):
    return _unsqueeze(data, axes)


@OPS.op("Expand", since=(8, 13), quantized=LayoutOp)
def expand(data, shape, /):
    target = np.broadcast_shapes(tuple(data.shape), tuple(int(d) for d in np.asarray(shape).reshape(-1)))
    return np.broadcast_to(data, target)


@OPS.op("Tile", since=(6, 13), quantized=LayoutOp)
def tile(data, repeats, /):
    return np.tile(data, [int(r) for r in np.asarray(repeats).reshape(-1)])


@OPS.op("Tile", since=1, quantized=LayoutOp)
def tile_1(data, tiles, axis, /):
    """Tile at opset 1: ``tiles`` copies of the data along the one axis ``axis``."""
    axis = int(np.asarray(axis).reshape(-1)[0])
    if not -data.ndim <= axis < data.ndim:
        raise ValueError(f"axis={axis} is outside the data's {data.ndim} axes")
    repeats = [1] * data.ndim
    repeats[axis] = int(np.asarray(tiles).reshape(-1)[0])
    return np.tile(data, repeats)


@OPS.op("Slice", since=(10, 11, 13), quantized=LayoutOp)
def slice_(data, starts, ends, /, axes=None, steps=None):
    starts = np.asarray(starts).reshape(-1)
    ends = np.asarray(ends).reshape(-1)
    axes = _axes(range(len(starts)) if axes is None else axes, data.ndim)
    steps = [1] * len(starts) if steps is None else [int(s) for s in np.asarray(steps).reshape(-1)]
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise ValueError("Slice steps cannot be 0")
        size = data.shape[axis]
        start, end = int(start), int(end)
        start += size if start < 0 else 0
        end += size if end < 0 else 0
        if step > 0:
            start, end = min(max(start, 0), size), min(max(end, 0), size)
        else:  # counting down: -1 as end means "past the first element"
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
        index[axis] = slice(start, None if end < 0 else end, step)
    return data[tuple(index)]


@OPS.op("Slice", since=1, quantized=LayoutOp)
def slice_1(data, /, *, axes=None, ends, starts):
    if len(starts) != len(ends) or (axes is not None and len(axes) != len(starts)):
        raise ValueError(f"starts ({len(starts)}), ends ({len(ends)}) and axes must have the same length")
    return slice_(data, np.array(starts, np.int64), np.array(ends, np.int64), axes)


class QuantizedGather(LayoutOp):
    """Gather: encrypted data at constant indices moves integers (a layout); a constant table read at
    encrypted indices is a table lookup on the indices' integers; encrypted data at encrypted indices is
    a sum of two-input lookups, one per position the indices can name (``_select_encrypted``).

    The encrypted indices stand for exact integers (a Cast to an integer type, integer arithmetic,
    an integer model input): their float mapping gives each index, and the table value at that
    index becomes the output's float mapping over the same integers. Nothing is computed on the
    integers here; the lookup happens where a later op needs an integer (a chain such as
    ``Gather -> Where -> Add -> Gather`` costs one lookup). An index off the table (only possible
    for integers calibration never saw) reads the nearest end of the table.
    """

    def encrypted_forward(self, ctx, inputs):
        data, indices = inputs[0], inputs[1]
        if indices.is_constant:
            return super().encrypted_forward(ctx, inputs)
        if not data.is_constant:
            return _select_encrypted(self, ctx, data, indices, self._candidate_parts)
        table = np.asarray(data.data)
        if table.dtype.kind == "f":
            table = table.astype(np.float64)
        axis = int(self.attributes.get("axis", 0))
        axis = axis + table.ndim if axis < 0 else axis
        before, after = table.shape[:axis], table.shape[axis + 1:]
        index_of = indices.to_float

        def to_float(q):
            """Table values at the indices the integers stand for; ``q`` spans the output's shape (the
            indices' integers repeated along the table's other axes)."""
            q = np.asarray(q)
            if q.ndim < len(before) + len(after):  # a one-element probe of the value type
                q = q.reshape((1,) * (len(before) + len(after)))
            own = q[(0,) * len(before) + (Ellipsis,) + (0,) * len(after)]
            index = np.asarray(index_of(own))
            if index.dtype.kind == "f":
                index = np.rint(index)
            index = index.astype(np.int64)
            size = table.shape[axis]
            index = np.clip(np.where(index < 0, index + size, index), 0, size - 1)
            return np.take(table, index, axis=axis)

        source = indices.data
        shape = before + tuple(source.shape) + after
        if before or after:
            source = source.reshape((1,) * len(before) + tuple(source.shape) + (1,) * len(after))
            source = backend.broadcast(source, shape)
        return QValue.lazy(source, to_float, indices.uniform and not before and not after)

    def _candidate_parts(self, data, index_data, position):
        """Gather of encrypted data at encrypted indices: the output's shape, the indices' integers spread over
        it, and for a candidate position ``j`` along the axis the data there spread over it."""
        axis = int(self.attributes.get("axis", 0))
        axis = axis + len(data.shape) if axis < 0 else axis
        before, after = tuple(data.shape[:axis]), tuple(data.shape[axis + 1:])
        index_shape = tuple(index_data.shape)
        shape = before + index_shape + after
        spread_index = backend.broadcast(
            index_data.reshape((1,) * len(before) + index_shape + (1,) * len(after)), shape)
        keep = [slice(None)] * len(data.shape)
        keep[axis] = slice(position, position + 1)
        column = data.data[tuple(keep)].reshape(before + (1,) * len(index_shape) + after)
        return spread_index, backend.broadcast(column, shape), int(data.shape[axis])


def _index_candidates(op, ctx, indices, size):
    """The positions along an axis of ``size`` that the encrypted ``indices`` can name, and a map from the
    indices' integers to one of them.

    Every integer of the indices' calibrated range stands for an index (negative ones count from the end,
    the rest are clipped to the axis); those indices are the candidates. An integer outside that range
    (one calibration never saw) reads the nearest candidate, so exactly one candidate is always selected.
    """
    if "index range" not in op.state:
        if not ctx.calibrating:
            from cml_core.errors import QuantizationError

            raise QuantizationError(f"{op.where}: the range of the encrypted indices was not calibrated")
        raw = np.asarray(indices.data)
        low, high = ctx.calibrated_range(f"{op.where}:index range@{id(op):x}", float(raw.min()), float(raw.max()))
        op.state["index range"] = (int(low), int(high))
    low, high = op.state["index range"]
    index_of = indices.to_float

    def index_at(q):
        index = np.asarray(index_of(np.asarray(q, dtype=np.int64)))
        if index.dtype.kind == "f":
            index = np.rint(index)
        index = index.astype(np.int64)
        return np.clip(np.where(index < 0, index + size, index), 0, size - 1)

    candidates = np.unique(index_at(np.arange(low, high + 1)))

    def selected(q):
        index = index_at(q)
        nearest = np.abs(index[..., None] - candidates).argmin(axis=-1)
        return candidates[nearest]

    return [int(c) for c in candidates], selected, bits_for_range(low, high)


def _candidate_slots(ctx, indices, candidates, selected, key):
    """The indices as the rank of their candidate (0, 1, ...), by one lookup: fewer bits for the two-input
    lookups that follow when the indices' integers span more values than there are candidates."""
    ranks = np.asarray(candidates)

    def rank_of(q):
        return np.searchsorted(ranks, selected(q)).astype(np.float64)

    slots = UniformQuantizer(bits_for_range(0, len(candidates) - 1), 1.0, 0)
    data = ctx.requantize_to(QValue.lazy(indices.data, rank_of, True, indices.name), slots, key)

    def candidate_of(q):
        return ranks[np.clip(np.asarray(q, dtype=np.int64), 0, len(ranks) - 1)]

    return data, candidate_of


def _select_encrypted(op, ctx, data, indices, spread):
    """Encrypted ``data`` read at encrypted integer ``indices``: the sum over the candidate positions ``j``
    of a two-input lookup giving the data's integer where the index is ``j`` and 0 elsewhere.

    Exactly one candidate matches each element, so the sum is the selected integer itself and keeps the
    data's float mapping. The indices must stand for integers (a whole-number tensor quantizes with scale
    1); their float mapping is read inside the lookups, so indices computed by a chain of element-wise ops
    cost no lookup of their own, unless their integers span more bits than the candidates need: then one
    lookup first gives each index the rank of its candidate. ``spread(data, index_integers, j)`` gives the
    index integers and the data at position ``j``, both spread over the output, and the axis' size.
    """
    if not data.uniform:  # a per-position float mapping cannot follow moved elements
        data = ctx.requantize(data)
    if not indices.uniform:
        indices = ctx.requantize(indices)
    *_, size = spread(data, indices.data, 0)
    candidates, selected, index_bits = _index_candidates(op, ctx, indices, size)
    out_name = op.bound.node.output[0]
    index_data = indices.data
    if len(candidates) > 1 and index_bits > bits_for_range(0, len(candidates) - 1):
        index_data, selected = _candidate_slots(ctx, indices, candidates, selected, f"{out_name}[candidate rank]")
    total = None
    for j in candidates:
        index_part, data_part, _ = spread(data, index_data, j)
        if len(candidates) == 1:
            return data.with_data(data_part, name="")

        def pick(q_index, q_data, j=j):
            return np.where(selected(q_index) == j, np.asarray(q_data, dtype=np.int64), 0)

        part = backend.multi_lookup(pick, index_part, data_part)
        ctx.record_multi_lookup(f"{out_name}[candidate {j}]", [index_part, data_part])
        total = part if total is None else total + part
    return data.with_data(total, name="")


class QuantizedGatherElements(LayoutOp):
    """GatherElements: encrypted data at constant indices moves integers (a layout); encrypted data at
    encrypted indices is a sum of two-input lookups, one per position the indices can name
    (``_select_encrypted``); a constant table at encrypted indices reads the table inside the indices'
    float mapping (a lookup where a later op needs integers), as Gather does."""

    def encrypted_forward(self, ctx, inputs):
        data, indices = inputs[0], inputs[1]
        if indices.is_constant:
            return super().encrypted_forward(ctx, inputs)
        if data.is_constant:
            return self._constant_table(indices, np.asarray(data.data))
        return _select_encrypted(self, ctx, data, indices, self._candidate_parts)

    def _axis(self, ndim):
        axis = int(self.attributes.get("axis", 0))
        return axis + ndim if axis < 0 else axis

    def _candidate_parts(self, data, index_data, position):
        """The indices' integers, and the data at ``position`` along the axis spread over the indices'
        shape (the data cut to it along the other axes)."""
        axis = self._axis(len(data.shape))
        shape = tuple(index_data.shape)
        cut = [slice(0, n) for n in shape]
        cut[axis] = slice(position, position + 1)
        column = data.data[tuple(cut)]
        return index_data, backend.broadcast(column, shape), int(data.shape[axis])

    def _constant_table(self, indices, table):
        if table.dtype.kind == "f":
            table = table.astype(np.float64)
        axis = self._axis(table.ndim)
        size = table.shape[axis]
        index_of = indices.to_float
        shape = tuple(indices.shape)

        def to_float(q):
            """The table at the indices the integers stand for, position by position."""
            q = np.asarray(q)
            if q.shape != shape:  # a one-element probe of the value type
                q = np.broadcast_to(q.reshape(-1)[:1].reshape((1,) * len(shape)), shape)
            index = np.asarray(index_of(q))
            if index.dtype.kind == "f":
                index = np.rint(index)
            index = index.astype(np.int64)
            index = np.clip(np.where(index < 0, index + size, index), 0, size - 1)
            cut = [slice(0, n) for n in shape]
            cut[axis] = slice(None)
            return np.take_along_axis(table[tuple(cut)], index, axis=axis)

        return QValue.lazy(indices.data, to_float, False)


@OPS.op("Gather", since=(1, 11, 13), quantized=QuantizedGather)
def gather(data, indices, /, *, axis=0):
    axis = axis + data.ndim if axis < 0 else axis
    size = data.shape[axis]
    indices = np.asarray(indices).astype(np.int64)
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise ValueError(f"Gather index {int(indices.max() if indices.max() >= size else indices.min())} is out of "
                         f"range for axis {axis} of size {size}")
    indices = np.where(indices < 0, indices + size, indices)
    return np.take(data, indices, axis=axis)


@OPS.op("GatherElements", since=(11, 13), quantized=QuantizedGatherElements)
def gather_elements(data, indices, /, *, axis=0):
    axis = axis + data.ndim if axis < 0 else axis
    indices = np.asarray(indices)
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    return np.take_along_axis(data, indices, axis=axis)


def _split(data, split, axis, count):
    axis = axis + data.ndim if axis < 0 else axis
    size = data.shape[axis]
    if split is None:
        chunk = -(-size // count)
        split = [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])
    split = [int(s) for s in np.asarray(split).reshape(-1)]
    if sum(split) != size:
        raise ValueError(f"split sizes {split} do not add up to the axis size {size}")
    bounds = np.cumsum([0] + split)
    index = [slice(None)] * data.ndim
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        index[axis] = slice(int(start), int(end))
        parts.append(data[tuple(index)])
    return tuple(parts)


@OPS.op("Split", since=1, quantized=LayoutOp)
def split_1(data, /, split_input=None, *, axis=None, split=None, _num_outputs):
    """Split at opset 1: the lengths come from the optional second input or the ``split`` attribute."""
    lengths = split_input if split_input is not None else split
    return _split(data, lengths, 0 if axis is None else axis, _num_outputs)


@OPS.op("Split", since=(2, 11), quantized=LayoutOp)
def split_11(data, /, *, axis=0, split=None, _num_outputs):
    return _split(data, split, axis, _num_outputs)


@OPS.op("Split", since=13, quantized=LayoutOp)
def split_13(data, /, split=None, *, axis=0, _num_outputs):
    return _split(data, split, axis, _num_outputs)


@OPS.op("Split", since=18, quantized=LayoutOp)
def split(data, /, split=None, *, axis=0, num_outputs=None, _num_outputs):
    return _split(data, split, axis, num_outputs or _num_outputs)


class QuantizedConcat(QuantizedOp):
    """Concat: inputs brought to one quantization (the output's) and their integers concatenated.

    Inputs that already share that quantization cost nothing; the others cost one lookup each. When
    the rows of a (samples, rows, features) tensor are joined from parts that differ in range
    (``rows.rows_differ`` over the parts: a class token's row beside the patches), one grid would leave
    the narrow part a few integers: each part then keeps a grid of its own (an encrypted one on a grid
    already as it is, else requantized over its own range; a constant quantized over its own range; both
    with the residual stream's bits, ``rows.STREAM_EXTRA_BITS`` beyond ``n``), and the output's float
    mapping changes from part to part along the axis. A reader needing one grid requantizes it with one
    lookup, as before; a normalization or a sum of rows reads each row on its own grid.
    """

    def encrypted_forward(self, ctx, inputs):
        axis = int(self.attributes.get("axis", 1))  # no axis: Concat-1's default
        axis = axis + len(inputs[0].shape) if axis < 0 else axis
        encrypted = [v for v in inputs if not v.is_constant]
        first = encrypted[0]
        shared = all(v.is_affine and (v.scale, v.zero_point) == (first.scale, first.zero_point) for v in encrypted)
        if shared and len(encrypted) == len(inputs):  # constants would be rounded to the inputs' grid
            quantizer = None
            scale, zero_point = first.scale, first.zero_point
        elif self._parts_differ(ctx, inputs, axis):
            return self._on_grids_of_their_own(ctx, inputs, axis)
        else:
            quantizer = ctx.quantizer_for(self.bound.node.output[0])
            scale, zero_point = quantizer.scale, quantizer.zero_point
        parts = []
        for i, v in enumerate(inputs):
            if v.is_constant:
                q = np.rint(np.asarray(v.data, dtype=np.float64) / scale) + zero_point
                parts.append(q.astype(np.int64))
            elif quantizer is None:
                parts.append(v.data)
            else:
                parts.append(ctx.requantize_to(v, quantizer, key=f"{self.bound.name}:{i}"))
        return QValue.affine(np.concatenate(tuple(parts), axis=axis), scale, zero_point)

    def _parts_differ(self, ctx, inputs, axis):
        """Whether the parts get grids of their own (decided on calibration): rows of (samples, rows,
        features) tensors, without masking values, whose ranges differ (``rows.rows_differ``)."""
        if "parts differ" not in self.state:
            masking = any(v.floor is not None or v.name in ctx.floors for v in inputs)
            if len(inputs[0].shape) != 3 or axis != 1 or masking:
                self.state["parts differ"] = False
            else:
                lows, highs = [], []
                pending = False
                for i, v in enumerate(inputs):
                    values = np.asarray(v.data if v.is_constant else v.float_value(), dtype=np.float64)
                    finite = values[np.isfinite(values)]
                    low, high = (float(finite.min()), float(finite.max())) if finite.size else (np.inf, -np.inf)
                    try:
                        low, high = ctx.calibrated_range(f"{self.where}:part {i}@{id(self):x}", low, high)
                    except PendingRange:  # every part is recorded on this chunk before the node stops
                        pending = True
                    lows.append(low)
                    highs.append(high)
                if pending:
                    raise PendingRange(self.where)
                self.state["parts differ"] = rows_differ(np.asarray(lows), np.asarray(highs))
        return self.state["parts differ"]

    def _on_grids_of_their_own(self, ctx, inputs, axis):
        bits = ctx.config.op_inputs + STREAM_EXTRA_BITS
        parts, scales, zero_points = [], [], []
        for i, v in enumerate(inputs):
            if v.is_constant:
                values = np.asarray(v.data, dtype=np.float64)
                grid = UniformQuantizer.fit(float(values.min()), float(values.max()), bits)
                data, scale, zero_point = grid.quant(values), grid.scale, grid.zero_point
            elif v.is_affine or id(v.data) in ctx.inputs:  # on a grid already, or a model input's integers
                q = ctx.requantize(v)
                data, scale, zero_point = q.data, q.scale, q.zero_point
            else:
                grid = ctx.quantizer_for(v.name, bits)
                data = ctx.requantize_to(v, grid, key=f"{self.bound.name}:{i}")
                scale, zero_point = grid.scale, grid.zero_point
            shape = [1] * len(v.shape)
            shape[axis] = v.shape[axis]
            parts.append(data)
            scales.append(np.full(shape, scale, dtype=np.float64))
            zero_points.append(np.full(shape, zero_point, dtype=np.int64))
        grid = RowQuantizer(bits, np.concatenate(scales, axis=axis),
                            np.concatenate(zero_points, axis=axis))
        return grid.value(np.concatenate(tuple(parts), axis=axis))


@OPS.op("Concat", since=(4, 11, 13), quantized=QuantizedConcat)
def concat(*inputs, axis):
    return np.concatenate(inputs, axis=axis)


@OPS.op("Concat", since=1, quantized=QuantizedConcat)
def concat_1(*inputs, axis=None):
    return np.concatenate(inputs, axis=1 if axis is None else axis)


class QuantizedPad(LayoutOp):
    """Pad: reflect/edge/wrap move integers; constant padding writes the integer of the pad value."""

    def encrypted_forward(self, ctx, inputs):
        mode = self.attributes.get("mode", "constant")
        if mode != "constant":
            return super().encrypted_forward(ctx, inputs)
        if not any(width for pair in self._pads(inputs[0].shape, inputs) for width in pair):
            return inputs[0]  # nothing to pad (a body padding a mask to the length it already has)
        source = ctx.requantize(inputs[0])
        if len(inputs) < 3 or inputs[2] is None:
            value = float(self.attributes.get("value", 0.0))  # an attribute before opset 11
        else:
            value = float(np.asarray(inputs[2].data).reshape(-1)[0])
        if not np.isfinite(value):
            raise QuantizationError(f"{self.where}: the pad value {value} has no integer; pad with a finite value")
        q_value = int(np.rint(value / source.scale)) + source.zero_point
        if not np.isclose(source.scale * (q_value - source.zero_point), value, rtol=1e-9, atol=1e-12):
            # the pad value is off the input's grid: move to the output's quantization (one lookup)
            quantizer = ctx.quantizer_for(self.bound.node.output[0])
            data = ctx.requantize_to(source, quantizer, key=f"{self.bound.name}:pad")
            source = QValue.affine(data, quantizer.scale, quantizer.zero_point)
            q_value = int(quantizer.quant(np.array(value)))
        data, pads = _crop(source.data, self._pads(source.shape, inputs))
        if q_value != 0:
            data = data - q_value
        padded = backend.pad_zeros(data, pads)
        if q_value != 0:
            padded = padded + q_value
        return QValue.affine(padded, source.scale, source.zero_point)

    def _pads(self, shape, inputs):
        if len(inputs) > 1:
            given = inputs[1].data
        else:  # an attribute before opset 11: ``paddings`` at opset 1, ``pads`` at 2
            given = self.attributes["pads"] if "pads" in self.attributes else self.attributes["paddings"]
        pads = [int(p) for p in np.asarray(given).reshape(-1)]
        axes = None if len(inputs) < 4 or inputs[3] is None else _axes(inputs[3].data, len(shape))
        return _pad_widths(pads, len(shape), axes)


def _pad_widths(pads, ndim, axes):
    axes = list(range(ndim)) if axes is None else axes
    n = len(axes)
    if len(pads) != 2 * n:
        raise ValueError(f"pads has {len(pads)} values, expected {2 * n}")
    widths = [(0, 0)] * ndim
    for i, axis in enumerate(axes):
        widths[axis] = (pads[i], pads[i + n])
    return widths


def _crop(data, widths):
    """Apply the negative pads (crops); returns the data and the remaining non-negative widths."""
    if all(b >= 0 and a >= 0 for b, a in widths):
        return data, widths
    index = tuple(slice(-b if b < 0 else 0, (data.shape[i] + a) if a < 0 else None) for i, (b, a) in enumerate(widths))
    return data[index], [(max(b, 0), max(a, 0)) for b, a in widths]


def _pad(data, pads, constant_value, axes, mode):
    widths = _pad_widths([int(p) for p in np.asarray(pads).reshape(-1)], data.ndim,
                         None if axes is None else _axes(axes, data.ndim))
    data, widths = _crop(data, widths)
    if mode == "constant":
        value = 0 if constant_value is None else np.asarray(constant_value).reshape(-1)[0]
        return np.pad(data, widths, mode="constant", constant_values=value)
    if mode in ("reflect", "edge", "wrap"):
        return np.pad(data, widths, mode=mode)
    raise ValueError(f"unknown Pad mode {mode!r}")


@OPS.op("Pad", since=1, quantized=QuantizedPad)
def pad_1(data, /, *, mode="constant", paddings, value=0.0):
    return _pad(data, paddings, np.asarray(value, data.dtype), None, mode)


@OPS.op("Pad", since=2, quantized=QuantizedPad)
def pad_2(data, /, *, mode="constant", pads, value=0.0):
    return _pad(data, pads, np.asarray(value, data.dtype), None, mode)


@OPS.op("Pad", since=(11, 13), quantized=QuantizedPad)
def pad_11(data, pads, /, constant_value=None, *, mode="constant"):
    return _pad(data, pads, constant_value, None, mode)


@OPS.op("Pad", since=(18, 19, 21, 23, 24, 25), quantized=QuantizedPad)
def pad(data, pads, /, constant_value=None, axes=None, *, mode="constant"):
    return _pad(data, pads, constant_value, axes, mode)


@OPS.op("Shape", since=(1, 13), quantized=ShapeOp)
def shape_1(data, /):
    return np.array(data.shape, dtype=np.int64)


@OPS.op("Shape", since=(15, 19, 21, 23, 24, 25), quantized=ShapeOp)
def shape(data, /, *, end=None, start=0):
    return np.array(data.shape, dtype=np.int64)[slice(start, end)]


@OPS.op("Size", since=(1, 13, 19, 21, 23, 24, 25), quantized=ShapeOp)
def size(data, /):
    return np.array(int(np.prod(data.shape)), dtype=np.int64)


@OPS.op("ConstantOfShape", since=(9, 20, 21, 23, 24, 25), quantized=ConstantOnlyOp)
def constant_of_shape(shape, /, *, value=None):
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full([int(d) for d in np.asarray(shape).reshape(-1)], fill[0], dtype=fill.dtype)
