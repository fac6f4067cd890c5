"""Property cases of the indexing, scatter and enumeration ops (cml_ops_std/indexing.py)."""

import numpy as np
from cml_core.testing.strategies import Example, OpCase, float_arrays, int_arrays, shapes
from hypothesis import strategies as st


def _rng(draw):
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def _axis(draw, ndim):
    return draw(st.integers(-ndim, ndim - 1))


@st.composite
def _range(draw, opset, constant=False):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
    unit = 0.25 if np.dtype(dtype).kind == "f" else 1
    start = draw(st.integers(-12, 12))
    delta = draw(st.integers(-4, 4).filter(bool))
    limit = start + delta * draw(st.integers(-2, 8)) + draw(st.integers(-1, 1))
    inputs = [np.array(v * unit, dtype=dtype) for v in (start, limit, delta)]
    return Example(inputs, constant_inputs=(0, 1, 2) if constant else ())


@st.composite
def _trilu(draw, opset, quantizable=False):
    x = draw(float_arrays(shapes(min_dims=2, max_dims=4)))
    inputs = [x]
    if draw(st.booleans()):
        inputs.append(np.array(draw(st.integers(-4, 4)), dtype=np.int64))
    return Example(inputs, {"upper": draw(st.integers(0, 1))}, constant_inputs=(1,) if len(inputs) > 1 else ())


@st.composite
def _cumulative(draw, opset, product=False, floats_only=False):
    kinds = [np.float32, np.float64] if floats_only or product and opset < 26 else \
        [np.float32, np.float64, np.int32, np.int64]
    dtype = draw(st.sampled_from(kinds))
    shape = draw(shapes(min_dims=1, max_dims=3))
    bound = 2 if product else 10
    if np.dtype(dtype).kind == "f":
        x = draw(float_arrays(shape, dtype, -bound, bound))
    else:
        x = draw(int_arrays(shape, dtype, -bound, bound))
    axis = np.array(_axis(draw, len(shape)), dtype=draw(st.sampled_from([np.int32, np.int64])))
    return Example([x, axis], {"exclusive": draw(st.integers(0, 1)), "reverse": draw(st.integers(0, 1))},
                   constant_inputs=(1,))


@st.composite
def _top_k(draw, opset):
    dtype = np.float32 if opset < 11 else draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
    shape = draw(shapes(min_dims=1, max_dims=3))
    x = draw(int_arrays(shape, np.int64, -3, 3)).astype(dtype)  # few values: many ties
    if np.dtype(dtype).kind == "f" and draw(st.booleans()):
        x = x + draw(float_arrays(shape, dtype, -0.5, 0.5))
    axis = _axis(draw, x.ndim)
    k = draw(st.integers(0 if opset >= 10 else 1, x.shape[axis]))
    attributes = {"axis": axis}
    if opset >= 11:
        attributes["largest"] = draw(st.integers(0, 1))
    if opset == 1:
        return Example([x], {**attributes, "k": k}, n_outputs=2)
    return Example([x, np.array([k], dtype=np.int64)], attributes, constant_inputs=(1,), n_outputs=2)


@st.composite
def _one_hot(draw, opset):
    depth = draw(st.integers(1, 5))
    # negative indices count from the end since opset 11; before, the spec makes them all off, but onnxruntime and
    # the reference evaluator wrap them there too, so opset 9 draws none (cml follows the spec)
    low = 0 if opset < 11 else -depth - 1
    indices = draw(int_arrays(shapes(min_dims=1, max_dims=3), np.int64, low, depth))
    indices = indices.astype(draw(st.sampled_from([np.int64, np.int32, np.float32])))
    depth_array = np.array(depth, dtype=draw(st.sampled_from([np.int64, np.float32])))
    values = np.array(draw(st.lists(st.integers(-5, 5), min_size=2, max_size=2)),
                      dtype=draw(st.sampled_from([np.float32, np.int64])))
    return Example([indices, depth_array, values], {"axis": _axis(draw, indices.ndim + 1)}, constant_inputs=(1, 2))


@st.composite
def _non_zero(draw, opset):
    x = draw(int_arrays(shapes(min_dims=1, max_dims=3), np.int64, -1, 1))
    return Example([x.astype(draw(st.sampled_from([np.float32, np.int32, np.bool_])))])


@st.composite
def _compress(draw, opset):
    x = draw(float_arrays(shapes(min_dims=1, max_dims=3)))
    axis = draw(st.none() | st.integers(-x.ndim, x.ndim - 1))
    size = x.size if axis is None else x.shape[axis]
    condition = np.array(draw(st.lists(st.booleans(), min_size=1, max_size=size)), dtype=bool)
    condition[draw(st.integers(0, condition.size - 1))] = True
    return Example([x, condition], {} if axis is None else {"axis": axis}, constant_inputs=(1,))


@st.composite
def _unique(draw, opset):
    x = draw(int_arrays(shapes(min_dims=1, max_dims=3), np.int64, -2, 2))
    x = x.astype(draw(st.sampled_from([np.float32, np.int64])))
    attributes = {"sorted": draw(st.integers(0, 1))}
    if draw(st.booleans()):
        attributes["axis"] = _axis(draw, x.ndim)
    return Example([x], attributes, n_outputs=4)


@st.composite
def _eye_like(draw, opset):
    x = draw(float_arrays(shapes(min_dims=2, max_dims=2)))
    attributes = {"k": draw(st.integers(-4, 4))}
    if draw(st.booleans()):
        attributes["dtype"] = draw(st.sampled_from([1, 6, 7, 11]))  # float, int32, int64, double
    return Example([x], attributes)


def _distinct_along(rng, shape, axis, size):
    """Indices of ``shape`` whose values along ``axis`` are distinct (an unambiguous scatter)."""
    shape = list(shape)
    count = shape[axis]
    lines = np.moveaxis(np.zeros(shape, dtype=np.int64), axis, -1)
    picks = np.array([rng.permutation(size)[:count] for _ in range(int(np.prod(lines.shape[:-1])))])
    return np.moveaxis(picks.reshape(lines.shape), -1, axis)


def _reductions(opset):
    return ["none"] if opset < 16 else ["none", "add", "mul"] + (["max", "min"] if opset >= 18 else [])


def _quantizable_reductions(opset):
    """Reductions whose quantized error is the output's rounding alone ("add" rounds each term, "mul" is refused)."""
    return ["none", "max", "min"] if opset >= 18 else ["none"]


@st.composite
def _scatter_elements(draw, opset, deprecated=False, quantizable=False):
    data = draw(float_arrays(shapes(min_dims=1, max_dims=3), min_value=-3, max_value=3))
    rng = _rng(draw)
    axis = _axis(draw, data.ndim)
    size = data.shape[axis]
    shape = [draw(st.integers(1, d)) for d in data.shape]
    reduction = "none" if deprecated else draw(st.sampled_from(_quantizable_reductions(opset) if quantizable
                                                                else _reductions(opset)))
    if reduction == "none":
        shape[axis] = draw(st.integers(1, size))
        indices = _distinct_along(rng, shape, axis, size)
    else:
        indices = rng.integers(0, size, shape)
    indices = np.where(rng.random(shape) < 0.3, indices - size, indices)  # negative: counted from the end
    updates = draw(float_arrays(tuple(shape), min_value=-3, max_value=3))
    attributes = {"axis": axis} if reduction == "none" or deprecated else {"axis": axis, "reduction": reduction}
    return Example([data, indices.astype(np.int64), updates], attributes, constant_inputs=(1,))


@st.composite
def _scatter_nd(draw, opset, quantizable=False):
    data = draw(float_arrays(shapes(min_dims=1, max_dims=3), min_value=-3, max_value=3))
    rng = _rng(draw)
    depth = draw(st.integers(1, data.ndim))
    cells = int(np.prod(data.shape[:depth]))
    reduction = draw(st.sampled_from(_quantizable_reductions(opset) if quantizable else _reductions(opset)))
    count = draw(st.integers(1, cells))
    flat = rng.permutation(cells)[:count] if reduction == "none" else rng.integers(0, cells, count)
    indices = np.stack(np.unravel_index(flat, data.shape[:depth]), axis=-1).astype(np.int64)
    indices = np.where(rng.random(indices.shape) < 0.3, indices - np.array(data.shape[:depth]), indices)
    if count % 2 == 0 and draw(st.booleans()):
        indices = indices.reshape(2, count // 2, depth)
    updates = draw(float_arrays(indices.shape[:-1] + data.shape[depth:], min_value=-3, max_value=3))
    attributes = {} if reduction == "none" else {"reduction": reduction}
    return Example([data, indices, updates], attributes, constant_inputs=(1,))


@st.composite
def _tensor_scatter(draw, opset):
    ndim = draw(st.integers(2, 4))
    shape = [draw(st.integers(1, 3)) for _ in range(ndim)]
    axis = draw(st.integers(1, ndim - 1))
    shape[axis] = draw(st.integers(1, 5))
    length = shape[axis]
    update_shape = list(shape)
    update_shape[axis] = draw(st.integers(1, length))
    cache = draw(float_arrays(tuple(shape), min_value=-3, max_value=3))
    update = draw(float_arrays(tuple(update_shape), min_value=-3, max_value=3))
    mode = draw(st.sampled_from(["linear", "circular"]))
    attributes = {"mode": mode, "axis": draw(st.sampled_from([axis, axis - ndim]))}
    inputs = [cache, update]
    if draw(st.booleans()):
        top = length - update_shape[axis] if mode == "linear" else 2 * length
        inputs.append(np.array([draw(st.integers(0, top)) for _ in range(shape[0])], dtype=np.int64))
    return Example(inputs, attributes, constant_inputs=(2,) if len(inputs) > 2 else ())


@st.composite
def _gather_nd(draw, opset):
    data = draw(float_arrays(shapes(min_dims=1, max_dims=4, max_side=3)))
    batch_dims = 0 if opset < 12 else draw(st.integers(0, data.ndim - 1))
    depth = draw(st.integers(1, data.ndim - batch_dims))
    middle = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    rng = _rng(draw)
    sizes = np.array(data.shape[batch_dims:batch_dims + depth])
    shape = data.shape[:batch_dims] + middle + (depth,)
    indices = (rng.random(shape) * sizes).astype(np.int64)
    indices = np.where(rng.random(shape) < 0.3, indices - sizes, indices)
    attributes = {"batch_dims": batch_dims} if opset >= 12 else {}
    return Example([data, indices], attributes, constant_inputs=(1,))


@st.composite
def _reverse_sequence(draw, opset):
    x = draw(float_arrays(shapes(min_dims=2, max_dims=4)))
    time_axis = draw(st.integers(0, 1))
    batch_axis = 1 - time_axis
    lengths = [draw(st.integers(0, x.shape[time_axis])) for _ in range(x.shape[batch_axis])]
    return Example([x, np.array(lengths, dtype=np.int64)], {"time_axis": time_axis, "batch_axis": batch_axis},
                   constant_inputs=(1,))


@st.composite
def _center_crop_pad(draw, opset):
    x = draw(float_arrays(shapes(min_dims=1, max_dims=3)))
    axes = None
    if draw(st.booleans()):
        axes = draw(st.lists(st.integers(-x.ndim, x.ndim - 1), min_size=1, max_size=x.ndim,
                             unique_by=lambda a: a % x.ndim))
    count = x.ndim if axes is None else len(axes)
    target = np.array([draw(st.integers(1, 7)) for _ in range(count)], dtype=np.int64)
    return Example([x, target], {} if axes is None else {"axes": axes}, constant_inputs=(1,))


@st.composite
def _depth_to_space(draw, opset):
    block = draw(st.integers(1, 3))
    x = draw(float_arrays((draw(st.integers(1, 2)), block * block * draw(st.integers(1, 2)),
                           draw(st.integers(1, 3)), draw(st.integers(1, 3)))))
    attributes = {"blocksize": block}
    if opset >= 11:
        attributes["mode"] = draw(st.sampled_from(["DCR", "CRD"]))
    return Example([x], attributes)


@st.composite
def _space_to_depth(draw, opset):
    block = draw(st.integers(1, 3))
    x = draw(float_arrays((draw(st.integers(1, 2)), draw(st.integers(1, 3)),
                           block * draw(st.integers(1, 2)), block * draw(st.integers(1, 2)))))
    attributes = {"blocksize": block}
    if opset >= 28:
        attributes["mode"] = draw(st.sampled_from(["DCR", "CRD"]))
    return Example([x], attributes)


CASES = [
    OpCase("Range", _range),
    OpCase("Trilu", _trilu),
    OpCase("CumSum", _cumulative, quantizable=lambda opset: _cumulative(opset, floats_only=True)),
    OpCase("CumProd", lambda opset: _cumulative(opset, product=True)),
    OpCase("TopK", _top_k),
    OpCase("OneHot", _one_hot),
    OpCase("NonZero", _non_zero),
    OpCase("Compress", _compress),
    OpCase("Unique", _unique),
    OpCase("EyeLike", _eye_like),
    OpCase("Scatter", lambda opset: _scatter_elements(opset, deprecated=True)),
    OpCase("ScatterElements", _scatter_elements, quantizable=lambda opset: _scatter_elements(opset, quantizable=True)),
    OpCase("ScatterND", _scatter_nd, quantizable=lambda opset: _scatter_nd(opset, quantizable=True)),
    OpCase("TensorScatter", _tensor_scatter),
    OpCase("GatherND", _gather_nd),
    OpCase("ReverseSequence", _reverse_sequence),
    OpCase("CenterCropPad", _center_crop_pad),
    OpCase("DepthToSpace", _depth_to_space),
    OpCase("SpaceToDepth", _space_to_depth),
]
