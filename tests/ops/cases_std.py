"""Property-test cases for cml-ops-std: one ``OpCase`` per op type."""

import dataclasses

import numpy as np
from cml_core.testing import (
    Example,
    OpCase,
    bool_arrays,
    broadcastable_shapes,
    float32s,
    float_arrays,
    int_arrays,
    shapes,
)
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOATS = (np.float32, np.float64)


def _values(draw, shape, dtype, low=-10.0, high=10.0):
    if np.dtype(dtype).kind == "i":
        return draw(int_arrays(shape, dtype, int(low) * 5, int(high) * 5))
    return draw(float_arrays(shape, dtype, low, high))


@st.composite
def _binary(draw, dtypes=(np.float32, np.float64, np.int64), nonzero_b=False):
    dtype = draw(st.sampled_from(dtypes))
    sa, sb = draw(broadcastable_shapes(2))
    a, b = _values(draw, sa, dtype), _values(draw, sb, dtype)
    if nonzero_b:
        b = np.where(b == 0, np.ones_like(b), b)
        if dtype != np.int64:
            b = np.where(np.abs(b) < 0.1, np.full_like(b, 0.5), b)
    constant = draw(st.sampled_from([(), (1,)]))
    return Example([a, b], constant_inputs=constant)


def _away_from_zero(draw, shape, dtype):
    """Floats with 1 <= |v| <= 10, signs mixed. Quantized over their range (at most 20 wide), a step
    is at most 20/15 even at 4 bits: none of them rounds to zero."""
    magnitude = _values(draw, shape, dtype, 1.0, 10.0)
    return np.where(draw(hnp.arrays(np.bool_, shape)), -magnitude, magnitude).astype(dtype)


@st.composite
def _float_binary(draw, dtypes=FLOATS, divisor=False):
    """``_binary`` for the quantized twins: float inputs, and a divisor that stays nonzero once quantized."""
    example = draw(_binary(dtypes))
    if divisor:
        example.inputs[1] = _away_from_zero(draw, example.inputs[1].shape, example.inputs[1].dtype)
    return example


@st.composite
def _not(draw):
    return Example([draw(bool_arrays(shapes()))])


@st.composite
def _clip(draw):
    x = draw(float_arrays())
    low = draw(st.none() | float32s(-5, 0))
    high = draw(st.none() | float32s(0, 5))
    inputs = [x, None if low is None else np.array(low, np.float32), None if high is None else np.array(high, np.float32)]
    return Example(inputs, constant_inputs=draw(st.sampled_from([(), (1, 2)])))


@st.composite
def _identity(draw):
    return Example([draw(float_arrays())])


@st.composite
def _reshape(draw, opset, constant_shape=False):
    x = draw(float_arrays(shapes(min_dims=1, max_dims=4)))
    size = x.size
    # a target shape of a random factorization, with one -1 and some 0 (copy) entries
    dims = []
    rest = size
    for _ in range(draw(st.integers(1, 3))):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        d = draw(st.sampled_from(divisors))
        dims.append(d)
        rest //= d
    dims.append(rest)
    if draw(st.booleans()):
        dims[draw(st.integers(0, len(dims) - 1))] = -1
    for i, d in enumerate(dims[: x.ndim]):
        if d == x.shape[i] and draw(st.booleans()):
            dims[i] = 0
    attrs = {}
    if opset >= 14 and draw(st.booleans()):
        attrs["allowzero"] = 0
    constant = (1,) if constant_shape else draw(st.sampled_from([(1,), ()]))
    return Example([x, np.array(dims, np.int64)], attrs, constant_inputs=constant)


@st.composite
def _reshape_1(draw):
    """Reshape at opset 1: the target shape is the ``shape`` attribute."""
    example = draw(_reshape(5, constant_shape=True))
    return Example([example.inputs[0]], {"shape": example.inputs[1].tolist()})


@st.composite
def _flatten(draw, opset):
    x = draw(float_arrays(shapes(min_dims=1, max_dims=4)))
    if opset < 11 and draw(st.booleans()):
        return Example([x])  # the default axis, 1
    return Example([x], {"axis": draw(st.integers(-x.ndim if opset >= 11 else 0, x.ndim))})


@st.composite
def _matmul(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    k = draw(st.integers(1, 5))
    rank_a, rank_b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    batch = draw(broadcastable_shapes(2, max_dims=max(rank_a, rank_b) - 2)) if min(rank_a, rank_b) > 2 else ((), ())
    a_shape = (k,) if rank_a == 1 else (*batch[0], draw(st.integers(1, 4)), k)
    b_shape = (k,) if rank_b == 1 else (*batch[1], k, draw(st.integers(1, 4)))
    a, b = _values(draw, a_shape, dtype, -3, 3), _values(draw, b_shape, dtype, -3, 3)
    return Example([a, b], constant_inputs=draw(st.sampled_from([(), (1,)])))


@st.composite
def _gemm(draw, opset):
    m, k, n = (draw(st.integers(1, 5)) for _ in range(3))
    trans_a, trans_b = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    a = draw(float_arrays((k, m) if trans_a else (m, k), min_value=-3, max_value=3))
    b = draw(float_arrays((n, k) if trans_b else (k, n), min_value=-3, max_value=3))
    attrs = {"transA": trans_a, "transB": trans_b}
    for name in ("alpha", "beta"):
        # before opset 7 the oracle (the ONNX reference evaluator) ignores alpha and beta: left out
        if opset >= 7 and draw(st.booleans()):  # 0, or a magnitude a model would use, either sign
            attrs[name] = draw(st.just(0.0) | float32s(0.05, 2) | float32s(-2, -0.05))
    inputs = [a, b]
    if opset < 11 or draw(st.booleans()):  # C is a required input before opset 11
        c_shapes = [(m, n), (1, n), (n,), (m, 1), ()]
        if opset < 7:  # C broadcasts only with broadcast=1
            broadcast = draw(st.integers(0, 1))
            attrs["broadcast"] = broadcast
            c_shapes = c_shapes if broadcast else [(m, n)]
        inputs.append(draw(float_arrays(draw(st.sampled_from(c_shapes)))))
    constant = draw(st.sampled_from([(), (1,), (1, 2)]))
    return Example(inputs, attrs, constant_inputs=tuple(i for i in constant if i < len(inputs)))


def conv_geometry(draw):
    """(x shape, w shape, attributes) of a convolution: ranks 1-3, groups, dilations, strides, pads or auto_pad."""
    rank = draw(st.integers(1, 3))
    group = draw(st.integers(1, 2))
    cin, cout = group * draw(st.integers(1, 2)), group * draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [draw(st.integers(1, 2)) for _ in range(rank)]
    strides = [draw(st.integers(1, 2)) for _ in range(rank)]
    spatial = [draw(st.integers((k - 1) * d + 1, (k - 1) * d + 4)) for k, d in zip(kernel, dilations)]
    batch = draw(st.sampled_from([1, 2, 9]))  # 9: the batch-last path for many small samples
    attrs = {"group": group, "dilations": dilations, "strides": strides}
    auto_pad = draw(st.sampled_from(["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    if auto_pad == "NOTSET":
        attrs["pads"] = [draw(st.integers(0, 2)) for _ in range(2 * rank)]
    else:
        attrs["auto_pad"] = auto_pad
        if auto_pad.startswith("SAME"):
            attrs["dilations"] = [1] * rank  # onnxruntime rejects SAME padding with dilations
    if draw(st.booleans()):
        attrs["kernel_shape"] = kernel
    return (batch, cin, *spatial), (cout, cin // group, *kernel), attrs


@st.composite
def _conv(draw):
    x_shape, w_shape, attrs = conv_geometry(draw)
    inputs = [draw(float_arrays(x_shape, min_value=-3, max_value=3)), draw(float_arrays(w_shape, min_value=-3, max_value=3))]
    if draw(st.booleans()):
        inputs.append(draw(float_arrays((w_shape[0],))))
    return Example(inputs, attrs, constant_inputs=tuple(range(1, len(inputs))))


@st.composite
def _constant(draw, opset):
    kinds = ["value"] if opset < 12 else ["value", "value_float", "value_floats", "value_int", "value_ints"]
    kind = draw(st.sampled_from(kinds))
    if kind == "value":
        from onnx import numpy_helper

        value = numpy_helper.from_array(draw(float_arrays()), "v")
    elif kind == "value_float":
        value = draw(float32s(-10, 10))
    elif kind == "value_floats":
        value = draw(st.lists(float32s(-10, 10), min_size=1, max_size=5))
    elif kind == "value_int":
        value = draw(st.integers(-100, 100))
    else:
        value = draw(st.lists(st.integers(-100, 100), min_size=1, max_size=5))
    return Example([], {kind: value})


@st.composite
def _legacy_binary(draw, dtypes=FLOATS, divisor=False, positive_a=False, broadcast=True):
    """A binary op before opset 7: equal shapes (broadcast off), or ``broadcast=1`` with B a scalar,
    a one-element tensor or A's trailing dims, sometimes placed there by an explicit ``axis``.

    (An ``axis`` lining B up with dims other than A's trailing ones has no oracle here: onnxruntime
    runs no opset below 7 and the ONNX reference evaluator ignores ``axis``.) Without ``broadcast``
    the shapes are equal and the attributes left out (the reference evaluator's Pow takes none).
    """
    dtype = draw(st.sampled_from(dtypes))
    a_shape = draw(shapes(min_dims=1))
    mode = draw(st.sampled_from(["same", "scalar", "trailing", "axis"] if broadcast else ["same"]))
    attrs = {}
    if mode == "same":
        b_shape = a_shape
        if broadcast and draw(st.booleans()):
            attrs["broadcast"] = 0
    else:
        attrs["broadcast"] = 1
        if mode == "scalar":
            b_shape = draw(st.sampled_from([(), (1,), (1,) * len(a_shape)]))
        else:
            k = draw(st.integers(1, len(a_shape)))
            b_shape = a_shape[len(a_shape) - k:]
            if mode == "axis":
                attrs["axis"] = len(a_shape) - k
    if np.dtype(dtype) == np.bool_:
        a, b = draw(bool_arrays(a_shape)), draw(bool_arrays(b_shape))
    else:
        a = _values(draw, a_shape, dtype, 0.1, 4.0) if positive_a else _values(draw, a_shape, dtype)
        b = _away_from_zero(draw, b_shape, dtype) if divisor else _values(draw, b_shape, dtype)
        if positive_a:
            b = _values(draw, b_shape, dtype, -3.0, 3.0)
    # an encrypted B broadcast by the legacy rules is lined up with A as one sample: B is a constant then
    constant = (1,) if mode != "same" else draw(st.sampled_from([(), (1,)]))
    return Example([a, b], attrs, constant_inputs=constant)


def _floats_binary(op_type, legacy_dtypes=FLOATS, **kwargs):
    """A binary op on floats and integers; its quantized twin gets float inputs. Before opset 7 it
    takes ``legacy_dtypes`` with the legacy broadcast rules."""

    def examples(opset):
        if opset < 7:
            return _legacy_binary(legacy_dtypes)
        return _binary(**{**kwargs, "dtypes": FLOATS}) if opset < 9 and op_type in ("Greater", "Less") else \
            _binary(**kwargs)

    def quantizable(opset):
        return _legacy_binary() if opset < 7 else _float_binary()

    return OpCase(op_type, examples, quantizable=quantizable)


@st.composite
def _clip_attributes(draw, opset):
    """Clip before opset 11: the bounds are the ``min`` and ``max`` attributes."""
    attrs = {}
    if draw(st.booleans()):
        attrs["min"] = draw(float32s(-5, 0))
    if draw(st.booleans()):
        attrs["max"] = draw(float32s(0, 5))
    return Example([draw(float_arrays())], attrs)


CASES = [
    _floats_binary("Add"),
    _floats_binary("Sub"),
    _floats_binary("Mul"),
    OpCase("Div", lambda opset: _legacy_binary(divisor=True) if opset < 7 else _binary(nonzero_b=True),
           quantizable=lambda opset: _legacy_binary(divisor=True) if opset < 7 else _float_binary(divisor=True)),
    OpCase("Equal", lambda opset: _legacy_binary((np.int64, np.bool_)) if opset < 7 else
           _binary((np.int64, np.float32) if opset >= 11 else (np.int64,)),
           quantizable=lambda opset: _legacy_binary((np.int64,)) if opset < 7 else _float_binary((np.float32,))),
    _floats_binary("Greater"),
    _floats_binary("Less"),
    OpCase("Not", lambda opset: _not()),
    OpCase("Clip", lambda opset: _clip_attributes(opset) if opset < 11 else _clip()),
    OpCase("Identity", lambda opset: _identity()),
    OpCase("Reshape", lambda opset: _reshape_1() if opset < 5 else _reshape(opset),
           quantizable=lambda opset: _reshape_1() if opset < 5 else _reshape(opset, constant_shape=True)),
    OpCase("Flatten", _flatten),
    OpCase("MatMul", lambda opset: _matmul()),
    OpCase("Gemm", _gemm),
    OpCase("Conv", lambda opset: _conv()),
    OpCase("Constant", _constant),
]


@st.composite
def _variadic(draw, dtypes=FLOATS, encrypted=False, same_shape=False):
    """``encrypted``: at least one input is not a constant (for the quantized twins). ``same_shape``:
    no broadcasting (before opset 8)."""
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.integers(1, 4))
    shapes_ = [draw(shapes())] * n if same_shape else draw(broadcastable_shapes(n))
    constant = draw(st.sampled_from([(), (0,)])) if n > 1 or not encrypted else ()
    return Example([_values(draw, s, dtype) for s in shapes_], constant_inputs=constant)


@st.composite
def _pow(draw):
    sa, sb = draw(broadcastable_shapes(2))
    base = draw(float_arrays(sa, min_value=0.1, max_value=4))
    exponent = draw(float_arrays(sb, min_value=-3, max_value=3))
    if draw(st.booleans()):
        base = -base
        exponent = np.round(exponent)
    return Example([base, exponent], constant_inputs=draw(st.sampled_from([(), (1,)])))


@st.composite
def _mod(draw, quantizable=False):
    """``quantizable``: float inputs and a divisor that stays nonzero once quantized."""
    fmod = draw(st.integers(0, 1))
    dtype = np.float32 if fmod or quantizable else draw(st.sampled_from([np.int64, np.float32, np.float64]))
    sa, sb = draw(broadcastable_shapes(2))
    a = _values(draw, sa, dtype)
    if quantizable:
        return Example([a, _away_from_zero(draw, sb, dtype)], {"fmod": fmod})
    b = _values(draw, sb, dtype)
    b = np.where(b == 0, np.ones_like(b), b)
    return Example([a, b], {"fmod": fmod})


@st.composite
def _logical(draw):
    sa, sb = draw(broadcastable_shapes(2))
    return Example([draw(bool_arrays(sa)), draw(bool_arrays(sb))])


@st.composite
def _bit_shift(draw):
    dtype = draw(st.sampled_from([np.uint8, np.uint32, np.uint64]))
    sa, sb = draw(broadcastable_shapes(2))
    x = draw(int_arrays(sa, dtype, 0, 200))
    y = draw(int_arrays(sb, dtype, 0, np.dtype(dtype).itemsize * 8 - 1))
    return Example([x, y], {"direction": draw(st.sampled_from(["LEFT", "RIGHT"]))})


@st.composite
def _where(draw):
    sc, sa, sb = draw(broadcastable_shapes(3))
    return Example([draw(bool_arrays(sc)), draw(float_arrays(sa)), draw(float_arrays(sb))],
                   constant_inputs=draw(st.sampled_from([(), (0,), (0, 2)])))


@st.composite
def _cast(draw, opset, like=False, quantizable=False):
    """``quantizable``: a float source cast to a float or boolean (what a quantized twin outputs)."""
    source = draw(st.sampled_from([np.float32, np.float64] + ([] if quantizable else [np.int32, np.int64])))
    target = draw(st.sampled_from([np.float32, np.float64, np.bool_] + ([] if quantizable else [np.int32, np.int64])))
    x = _values(draw, draw(shapes()), source)
    if like:
        return Example([x, np.zeros(1, dtype=target)], constant_inputs=(1,))
    from onnx import TensorProto, helper

    code = helper.np_dtype_to_tensor_dtype(np.dtype(target))
    # Cast-1 names the type ("FLOAT"); from 6 on it is the type's number
    return Example([x], {"to": TensorProto.DataType.Name(code) if opset < 6 else code})


@st.composite
def _dropout(draw, opset, n_outputs=(1, 2)):
    x = draw(float_arrays())
    if opset < 7:  # is_test=1: inference (is_test=0 drops random elements); the mask as at 7 (see below)
        return Example([x], {"ratio": draw(float32s(0, 0.9)), "is_test": 1})
    if opset < 10:
        # Dropout-7's mask has the data's type by its schema; the oracles return booleans, which strict shape
        # inference then refuses: the mask is left out here (tests/ops/test_casts.py checks it)
        return Example([x], {"ratio": draw(float32s(0, 0.9))})
    if opset < 12:
        return Example([x], {"ratio": draw(float32s(0, 0.9))}, n_outputs=draw(st.sampled_from(n_outputs)))
    ratio = np.array(draw(float32s(0, 0.9)), np.float32)
    inputs = [x] + ([ratio] if draw(st.booleans()) else [])
    return Example(inputs, constant_inputs=(1,), n_outputs=draw(st.sampled_from(n_outputs)))


@st.composite
def _transpose(draw):
    x = draw(float_arrays(shapes(min_dims=1)))
    attrs = {"perm": list(draw(st.permutations(range(x.ndim))))} if draw(st.booleans()) else {}
    return Example([x], attrs)


@st.composite
def _squeeze(draw, opset):
    x = draw(float_arrays(shapes(min_dims=1, max_side=2)))
    ones = [i for i, d in enumerate(x.shape) if d == 1]
    axes = draw(st.none() | st.lists(st.sampled_from(ones), unique=True).map(
        lambda a: [i - x.ndim if j % 2 else i for j, i in enumerate(a)])) if ones else None
    if axes is None or not axes and opset >= 13:
        return Example([x])
    if opset < 13:
        return Example([x], {"axes": axes}) if axes else Example([x])
    return Example([x, np.array(axes, np.int64)], constant_inputs=(1,))


@st.composite
def _unsqueeze(draw, opset):
    x = draw(float_arrays(shapes(max_dims=3)))
    k = draw(st.integers(1, 2))
    rank = x.ndim + k
    axes = draw(st.lists(st.integers(-rank, rank - 1), min_size=k, max_size=k).filter(
        lambda a: len({v % rank for v in a}) == len(a)))
    if opset < 13:
        return Example([x], {"axes": axes})
    return Example([x, np.array(axes, np.int64)], constant_inputs=(1,))


@st.composite
def _expand(draw):
    target, source = draw(broadcastable_shapes(2))
    x = draw(float_arrays(source))
    return Example([x, np.array(target, np.int64)], constant_inputs=(1,))


@st.composite
def _tile(draw, opset):
    x = draw(float_arrays(shapes(min_dims=1, max_dims=3, max_side=3)))
    if opset < 6:
        # the last axis only: the ONNX reference evaluator (the oracle below opset 7) ignores ``axis``
        axis = draw(st.sampled_from([x.ndim - 1, -1]))
        # Tile-1 types tiles and axis like the data (T)
        return Example([x, np.array([draw(st.integers(1, 3))], x.dtype), np.array([axis], x.dtype)],
                       constant_inputs=(1, 2))
    repeats = np.array([draw(st.integers(1, 3)) for _ in range(x.ndim)], np.int64)
    return Example([x, repeats], constant_inputs=(1,))


def _slice_start(draw, first, size, step):
    """An ONNX ``starts`` value selecting ``first`` as the first element: itself, counted from the end,
    or (at the edge it is clamped to) any value past that edge."""
    forms = [first, first - size]
    if step > 0 and first == 0:
        forms += [-size - draw(st.integers(1, 2)), -(2**31)]
    if step < 0 and first == size - 1:
        forms += [size + draw(st.integers(0, 2)), 2**31]
    return draw(st.sampled_from(forms))


def _slice_end(draw, stop, size, step):
    """An ONNX ``ends`` value stopping before ``stop`` (``size`` past the last element, -1 before the
    first): itself, counted from the end, or any value the spec clamps to it."""
    if stop == size:
        return draw(st.sampled_from([size, size + draw(st.integers(1, 2)), 2**31]))
    if stop == -1:
        return draw(st.sampled_from([-size - draw(st.integers(1, 2)), -(2**31)]))
    return draw(st.sampled_from([stop, stop - size]))


@st.composite
def _slice(draw, allow_empty=True):
    """Slices selecting at least one element per axis; with ``allow_empty``, one example in eight
    draws its bounds at random (out-of-range values, empty and reversed selections)."""
    x = draw(float_arrays(shapes(min_dims=1)))
    axes = draw(st.lists(st.integers(0, x.ndim - 1), min_size=1, max_size=x.ndim, unique=True))
    at_random = allow_empty and draw(st.sampled_from([False] * 7 + [True]))
    starts, ends, steps = [], [], []
    for a in axes:
        size = x.shape[a]
        step = draw(st.sampled_from([1, 1, 2, -1, -2]))
        if at_random:
            starts.append(draw(st.integers(-size - 2, size + 2)))
            ends.append(draw(st.integers(-size - 2, size + 2) | st.sampled_from([2**31, -(2**31)])))
        else:
            first = draw(st.integers(0, size - 1))
            # stop one past the last selected element: any of them, in the step's direction
            stop = draw(st.integers(first + 1, size)) if step > 0 else draw(st.integers(-1, first - 1))
            starts.append(_slice_start(draw, first, size, step))
            ends.append(_slice_end(draw, stop, size, step))
        steps.append(step)
    negative_axes = [a - x.ndim if draw(st.booleans()) else a for a in axes]
    inputs = [x, np.array(starts, np.int64), np.array(ends, np.int64)]
    # without axes, ONNX slices the first len(starts) axes: leave them out only when those were drawn
    if axes != list(range(len(axes))) or any(s != 1 for s in steps) or draw(st.booleans()):
        inputs += [np.array(negative_axes, np.int64), np.array(steps, np.int64)]
    return Example(inputs, constant_inputs=tuple(range(1, len(inputs))))


@st.composite
def _slice_attributes(draw, allow_empty=True):
    """Slice at opset 1: starts, ends and axes are attributes, steps are 1."""
    example = draw(_slice(allow_empty))
    x, starts, ends = example.inputs[:3]
    axes = example.inputs[3] if len(example.inputs) > 3 else None
    steps = example.inputs[4] if len(example.inputs) > 4 else np.ones_like(starts)
    keep = steps == 1
    if axes is not None:
        keep &= axes >= 0  # non-negative axes at opset 1
    if not keep.any():
        return Example([x], {"starts": [0], "ends": [x.shape[0]]})
    attrs = {"starts": starts[keep].tolist(), "ends": ends[keep].tolist()}
    if axes is not None:
        attrs["axes"] = axes[keep].tolist()
    elif not keep.all() or draw(st.booleans()):
        attrs["axes"] = np.flatnonzero(keep).tolist()
    return Example([x], attrs)


@st.composite
def _gather(draw, elements=False):
    x = draw(float_arrays(shapes(min_dims=1)))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    size = x.shape[axis]
    if elements:
        shape = list(x.shape)
        shape[axis] = draw(st.integers(1, 4))
        indices = draw(int_arrays(tuple(shape), np.int64, -size, size - 1))
    else:
        indices = draw(int_arrays(shapes(max_dims=2), np.int64, -size, size - 1))
    return Example([x, indices], {"axis": axis}, constant_inputs=(1,))


@st.composite
def _split(draw, opset, single=False):
    """``single``: one output (the quantized twins' test compares one output)."""
    x = draw(float_arrays(shapes(min_dims=1)))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    size = x.shape[axis]
    parts = 1 if single else draw(st.integers(1, size))
    if draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(1, size - 1), min_size=parts - 1, max_size=parts - 1, unique=True))) if size > 1 else []
        split = np.diff([0] + cuts + [size]).astype(np.int64)
        if opset < 13:
            return Example([x], {"axis": axis, "split": split.tolist()}, n_outputs=len(split))
        return Example([x, split], {"axis": axis}, constant_inputs=(1,), n_outputs=len(split))
    if opset >= 18:
        n = 1 if single else draw(st.integers(1, size))
        chunk = -(-size // n)
        outputs = -(-size // chunk)
        return Example([x], {"axis": axis, "num_outputs": outputs}, n_outputs=outputs)
    n = 1 if single else draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
    return Example([x], {"axis": axis}, n_outputs=n)


@st.composite
def _concat(draw, opset):
    base = list(draw(shapes(min_dims=2 if opset < 4 else 1)))
    axis = draw(st.integers(-len(base) if opset >= 11 else 0, len(base) - 1))
    omit_axis = False  # Concat-1's default axis 1: the ONNX reference evaluator (its oracle) requires the attribute
    inputs = []
    for _ in range(draw(st.integers(1, 3))):
        shape = list(base)
        shape[axis] = draw(st.integers(1, 3))
        inputs.append(draw(float_arrays(tuple(shape))))
    return Example(inputs, {} if omit_axis else {"axis": axis},
                   constant_inputs=draw(st.sampled_from([(), (0,)])) if len(inputs) > 1 else ())


@st.composite
def _pad(draw, opset):
    x = draw(float_arrays(shapes(min_dims=1, max_dims=3, min_side=2, max_side=4)))
    modes = ["constant", "reflect", "edge"] + (["wrap"] if opset >= 19 else [])
    mode = draw(st.sampled_from(modes))
    limit = 1 if mode in ("reflect", "wrap") else 2
    low = 0 if mode != "constant" else -1
    if opset < 11:
        low = 0 if opset < 2 else low  # removing elements (negative pads) from opset 2
    pads = [draw(st.integers(low, limit)) for _ in range(2 * x.ndim)]
    if opset < 11:  # pads and value are attributes: ``paddings`` at opset 1
        attrs = {"mode": mode, "paddings" if opset < 2 else "pads": pads}
        if mode == "constant" and draw(st.booleans()):
            attrs["value"] = draw(float32s(-3, 3))
        return Example([x], attrs)
    inputs = [x, np.array(pads, np.int64)]
    if mode == "constant" and draw(st.booleans()):
        inputs.append(np.array(draw(float32s(-3, 3)), np.float32))
    return Example(inputs, {"mode": mode}, constant_inputs=tuple(range(1, len(inputs))))


@st.composite
def _shape(draw, opset):
    x = draw(float_arrays(shapes()))
    attrs = {}
    if opset >= 15 and draw(st.booleans()):
        attrs["start"] = draw(st.integers(-x.ndim - 1, x.ndim + 1))
        if draw(st.booleans()):
            attrs["end"] = draw(st.integers(-x.ndim - 1, x.ndim + 1))
    return Example([x], attrs)


@st.composite
def _constant_of_shape(draw, constant_shape=False):
    from onnx import numpy_helper

    shape = np.array(draw(shapes(max_dims=3)), np.int64)
    attrs = {}
    if draw(st.booleans()):
        attrs["value"] = numpy_helper.from_array(np.array([draw(float32s(-5, 5))], np.float32), "v")
    # an encrypted shape is an integer tensor: the quantized tests can only take the constant one
    return Example([shape], attrs, constant_inputs=(0,) if constant_shape else draw(st.sampled_from([(0,), ()])))


CASES += [
    OpCase("Pow", lambda opset: _legacy_binary(positive_a=True, broadcast=False) if opset < 7 else _pow()),
    OpCase("Mod", lambda opset: _mod(), quantizable=lambda opset: _mod(quantizable=True)),
    OpCase("Sum", lambda opset: _variadic(same_shape=opset < 8),
           quantizable=lambda opset: _variadic(encrypted=True, same_shape=opset < 8)),
    # float64: no onnxruntime kernel, the fallback evaluator fails
    OpCase("Mean", lambda opset: _variadic((np.float32,), same_shape=opset < 8),
           quantizable=lambda opset: _variadic((np.float32,), True, same_shape=opset < 8)),
    OpCase("Max", lambda opset: _variadic((np.float32, np.float64, np.int64) if opset >= 12 else (np.float32,),
                                          same_shape=opset < 8),
           quantizable=lambda opset: _variadic(FLOATS if opset >= 12 else (np.float32,), True, same_shape=opset < 8)),
    OpCase("Min", lambda opset: _variadic((np.float32, np.float64, np.int64) if opset >= 12 else (np.float32,),
                                          same_shape=opset < 8),
           quantizable=lambda opset: _variadic(FLOATS if opset >= 12 else (np.float32,), True, same_shape=opset < 8)),
    _floats_binary("GreaterOrEqual"),
    _floats_binary("LessOrEqual"),
    OpCase("And", lambda opset: _legacy_binary((np.bool_,)) if opset < 7 else _logical()),
    OpCase("Or", lambda opset: _legacy_binary((np.bool_,)) if opset < 7 else _logical()),
    OpCase("Xor", lambda opset: _legacy_binary((np.bool_,)) if opset < 7 else _logical()),
    OpCase("BitShift", lambda opset: _bit_shift()),
    OpCase("Where", lambda opset: _where()),
    OpCase("Cast", _cast, quantizable=lambda opset: _cast(opset, quantizable=True)),
    OpCase("CastLike", lambda opset: _cast(opset, like=True), quantizable=lambda opset: _cast(opset, True, True)),
    OpCase("Dropout", _dropout, quantizable=lambda opset: _dropout(opset, n_outputs=(1,))),
    OpCase("Transpose", lambda opset: _transpose()),
    OpCase("Squeeze", _squeeze),
    OpCase("Unsqueeze", _unsqueeze),
    OpCase("Expand", lambda opset: _expand()),
    OpCase("Tile", _tile),
    OpCase("Slice", lambda opset: _slice_attributes() if opset < 10 else _slice(),
           quantizable=lambda opset: _slice_attributes(False) if opset < 10 else _slice(allow_empty=False)),
    OpCase("Gather", lambda opset: _gather()),
    OpCase("GatherElements", lambda opset: _gather(elements=True)),
    OpCase("Split", _split, quantizable=lambda opset: _split(opset, single=True)),
    OpCase("Concat", _concat),
    OpCase("Pad", _pad),
    OpCase("Shape", _shape),
    OpCase("Size", lambda opset: _shape(1)),  # opset 1 draws no Shape attributes
    OpCase("ConstantOfShape", lambda opset: _constant_of_shape(),
           quantizable=lambda opset: _constant_of_shape(constant_shape=True)),
]


@st.composite
def _pool(draw, opset, kind, n_outputs=(1,)):
    """``n_outputs``: MaxPool's choices of outputs (Y, Indices) from opset 8."""
    rank = draw(st.integers(1, 3 if kind != "max" else 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilated = opset >= 19 if kind == "average" else opset >= 10
    dilations = [draw(st.integers(1, 2)) for _ in range(rank)] if dilated else [1] * rank
    strides = [draw(st.integers(1, 2)) for _ in range(rank)]
    spatial = [draw(st.integers((k - 1) * d + 1, (k - 1) * d + 4)) for k, d in zip(kernel, dilations)]
    x = draw(float_arrays((draw(st.integers(1, 2)), draw(st.integers(1, 3)), *spatial), min_value=-3, max_value=3))
    attrs = {"kernel_shape": kernel, "strides": strides}
    if any(d != 1 for d in dilations):
        attrs["dilations"] = dilations
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    if kind == "average" and opset < 7:
        # the oracle below opset 7 (the ONNX reference evaluator) counts pads in the average, where
        # AveragePool-1 (as 7 with its default count_include_pad=0) leaves them out: no padding
        auto_pad = draw(st.sampled_from(["NOTSET", "VALID"]))
        attrs["pads"] = [0] * (2 * rank)
    elif auto_pad == "NOTSET":
        attrs["pads"] = [draw(st.integers(0, k - 1)) for k in kernel] * 2
        if opset >= 10 and draw(st.booleans()):
            attrs["ceil_mode"] = 1
    else:
        attrs["auto_pad"] = auto_pad
        if auto_pad.startswith("SAME"):
            # onnxruntime rejects SAME padding with dilations, and computes negative pads when a stride
            # exceeds the kernel
            attrs.pop("dilations", None)
            attrs["strides"] = [min(st_, k) for st_, k in zip(strides, kernel)]
    if kind == "average" and opset >= 7 and draw(st.booleans()):
        attrs["count_include_pad"] = 1
    outputs = draw(st.sampled_from(n_outputs)) if kind == "max" and opset >= 8 else 1
    if kind == "max" and opset >= 8 and draw(st.booleans()):
        attrs["storage_order"] = draw(st.integers(0, 1))
    return Example([x], attrs, n_outputs=outputs)


@st.composite
def _global_pool(draw):
    return Example([draw(float_arrays(shapes(min_dims=3, max_dims=5)))])


@st.composite
def _batch_norm(draw, opset):
    """Inference. Before opset 9, ``spatial=0`` takes parameters per activation (shaped like one
    sample), at opset 7 only: below it the oracle (the ONNX reference evaluator) knows per-channel
    parameters only, and only in test mode (``is_test=1``)."""
    x = draw(float_arrays(shapes(min_dims=2, max_dims=4)))
    attrs = {"epsilon": draw(float32s(1e-6, 1e-2))} if draw(st.booleans()) else {}
    spatial = 1
    if opset < 9 and draw(st.booleans()):
        spatial = 0 if opset == 7 else 1
        attrs["spatial"] = spatial
    if opset < 7:
        attrs["is_test"] = 1
    if opset < 6:
        attrs["consumed_inputs"] = [0, 0, 0, 1, 1]
    shape = (x.shape[1],) if spatial else x.shape[1:]
    params = [draw(float_arrays(shape, min_value=-2, max_value=2)) for _ in range(3)]
    var = draw(float_arrays(shape, min_value=0.1, max_value=4))
    return Example([x, params[0], params[1], params[2], var], attrs, constant_inputs=(1, 2, 3, 4))


@st.composite
def _reduce(draw, opset, axes_as_input, bound=10.0, low=None):
    x = draw(float_arrays(shapes(min_dims=1), min_value=-bound if low is None else low, max_value=bound))
    attrs = {"keepdims": draw(st.integers(0, 1))}
    axes = draw(st.none() | st.lists(st.integers(-x.ndim, x.ndim - 1), min_size=1, max_size=x.ndim).filter(
        lambda a: len({v % x.ndim for v in a}) == len(a)))
    if not axes_as_input(opset):
        if axes is not None:
            attrs["axes"] = axes
        return Example([x], attrs)
    if draw(st.booleans()):
        attrs["noop_with_empty_axes"] = draw(st.integers(0, 1))
    if axes is None:
        return Example([x], attrs)
    return Example([x, np.array(axes, np.int64)], attrs, constant_inputs=(1,))


CASES += [
    OpCase("AveragePool", lambda opset: _pool(opset, "average")),
    # the Indices output cannot be an encrypted output
    OpCase("MaxPool", lambda opset: _pool(opset, "max", n_outputs=(1, 2)), quantizable=lambda opset: _pool(opset, "max")),
    OpCase("GlobalAveragePool", lambda opset: _global_pool()),
    OpCase("GlobalMaxPool", lambda opset: _global_pool()),
    OpCase("BatchNormalization", _batch_norm),
    OpCase("ReduceSum", lambda opset: _reduce(opset, lambda v: v >= 13)),
    OpCase("ReduceMean", lambda opset: _reduce(opset, lambda v: v >= 18)),
]


@st.composite
def _arg(draw, opset):
    x = draw(float_arrays(shapes(min_dims=1)))
    attrs = {"axis": draw(st.integers(-x.ndim, x.ndim - 1)), "keepdims": draw(st.integers(0, 1))}
    if opset >= 12:
        attrs["select_last_index"] = draw(st.integers(0, 1))
    if draw(st.booleans()):  # ties, so select_last_index matters
        x = np.round(x / 5).astype(np.float32)
    return Example([x], attrs)


@st.composite
def _softmax(draw, opset):
    """Before opset 11 (no onnxruntime kernel), the input is coerced to 2-D at ``axis`` only where
    that is the last axis: the ONNX reference evaluator, the oracle there, knows the single-axis
    form only (opset 11 has the same 2-D semantics and onnxruntime judges it)."""
    x = draw(float_arrays(shapes(min_dims=1), min_value=-20, max_value=20))
    if opset < 11:
        if x.ndim == 2 and draw(st.booleans()):
            return Example([x])  # the default axis 1 is the last one
        return Example([x], {"axis": draw(st.sampled_from([x.ndim - 1, -1]))})
    attrs = {"axis": draw(st.integers(-x.ndim, x.ndim - 1))} if draw(st.booleans()) else {}
    if not attrs and opset < 13 and x.ndim < 2:
        attrs = {"axis": 0}
    return Example([x], attrs)


def _positive_reduce(opset, since_input):
    return _reduce(opset, lambda v: v >= since_input)


CASES += [
    OpCase("ReduceMax", lambda opset: _reduce(opset, lambda v: v >= 18)),
    OpCase("ReduceMin", lambda opset: _reduce(opset, lambda v: v >= 18)),
    OpCase("ReduceL1", lambda opset: _reduce(opset, lambda v: v >= 18)),
    OpCase("ReduceL2", lambda opset: _reduce(opset, lambda v: v >= 18)),
    OpCase("ReduceSumSquare", lambda opset: _reduce(opset, lambda v: v >= 18)),
    OpCase("ReduceLogSumExp", lambda opset: _reduce(opset, lambda v: v >= 18)),
    # positive sums: the logarithm of a negative sum is NaN
    OpCase("ReduceLogSum", lambda opset: _reduce(opset, lambda v: v >= 18, low=0.5)),
    # |x| <= 1.2 keeps products finite: past overflow, inf * 0 depends on the multiplication order
    OpCase("ReduceProd", lambda opset: _reduce(opset, lambda v: v >= 18, bound=1.2)),
    OpCase("ArgMax", _arg),
    OpCase("ArgMin", _arg),
    OpCase("Softmax", _softmax),
    OpCase("LogSoftmax", _softmax),
    OpCase("Hardmax", _softmax),
]


@st.composite
def _conv_transpose(draw):
    rank = draw(st.integers(1, 2))
    group = draw(st.integers(1, 2))
    cin, per_group = group * draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    strides = [draw(st.integers(1, 2)) for _ in range(rank)]
    dilations = [draw(st.integers(1, 2)) for _ in range(rank)]
    spatial = [draw(st.integers(1, 4)) for _ in range(rank)]
    x = draw(float_arrays((1, cin, *spatial), min_value=-3, max_value=3))
    w = draw(float_arrays((cin, per_group, *kernel), min_value=-3, max_value=3))
    attrs = {"group": group, "strides": strides, "dilations": dilations}
    mode = draw(st.sampled_from(["pads", "output_padding", "output_shape"]))
    if mode == "pads":  # at most half the kernel on each side, so the output keeps at least one element
        attrs["pads"] = [draw(st.integers(0, (k - 1) // 2)) for k in kernel] * 2
    elif mode == "output_padding":
        attrs["output_padding"] = [draw(st.integers(0, s - 1)) for s in strides]
    else:
        full = [(spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(rank)]
        attrs["output_shape"] = [max(1, f - draw(st.integers(0, 1))) for f in full]
    inputs = [x, w] + ([draw(float_arrays((per_group * group,)))] if draw(st.booleans()) else [])
    return Example(inputs, attrs, constant_inputs=tuple(range(1, len(inputs))))


@st.composite
def _lp_pool(draw, opset):
    example = draw(_pool(opset if opset >= 18 else 11, "average"))
    example.attributes.pop("count_include_pad", None)
    if opset < 18:
        example.attributes.pop("ceil_mode", None)
        example.attributes.pop("dilations", None)
    p = draw(st.integers(1, 3))
    example.attributes["p"] = float(p) if opset < 2 else p  # a float at opset 1
    return example


@st.composite
def _lrn(draw):
    # onnxruntime implements LRN for 4-D inputs only
    x = draw(float_arrays(shapes(min_dims=4, max_dims=4), min_value=-3, max_value=3))
    attrs = {"size": draw(st.sampled_from([1, 3, 5]))}  # onnxruntime accepts odd sizes only
    for name, strategy in (("alpha", float32s(1e-4, 1e-1)), ("beta", float32s(0.1, 1)), ("bias", float32s(0.5, 2))):
        if draw(st.booleans()):
            attrs[name] = draw(strategy)
    return Example([x], attrs)


@st.composite
def _instance_norm(draw):
    x = draw(float_arrays(shapes(min_dims=3, max_dims=4, min_side=2), min_value=-3, max_value=3))
    # a ramp keeps every group's variance away from 0, where onnxruntime's float32 statistics lose digits
    x = (x + np.arange(x.size, dtype=np.float32).reshape(x.shape) % 3).astype(np.float32)
    c = x.shape[1]
    params = [draw(float_arrays((c,), min_value=-2, max_value=2)) for _ in range(2)]
    return Example([x, *params], constant_inputs=(1, 2))


@st.composite
def _layer_norm(draw, n_outputs=(1, 3)):
    x = draw(float_arrays(shapes(min_dims=1, max_dims=4, min_side=2), min_value=-3, max_value=3))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    normalized = x.shape[axis % x.ndim:]
    inputs = [x, draw(float_arrays(normalized, min_value=-2, max_value=2))]
    if draw(st.booleans()):
        inputs.append(draw(float_arrays(normalized, min_value=-2, max_value=2)))
    return Example(inputs, {"axis": axis}, constant_inputs=tuple(range(1, len(inputs))),
                   n_outputs=draw(st.sampled_from(n_outputs)))


CASES += [
    OpCase("ConvTranspose", lambda opset: _conv_transpose()),
    OpCase("LpPool", _lp_pool),
    OpCase("LRN", lambda opset: _lrn()),
    OpCase("InstanceNormalization", lambda opset: _instance_norm()),
    # Mean and InvStdDev cannot be encrypted outputs
    OpCase("LayerNormalization", lambda opset: _layer_norm(), quantizable=lambda opset: _layer_norm(n_outputs=(1,))),
]


def _without(*names):
    return lambda example: dataclasses.replace(
        example, attributes={k: v for k, v in example.attributes.items() if k not in names})


def _numbered_type(example):
    from onnx import TensorProto

    return dataclasses.replace(example, attributes={**example.attributes,
                                                    "to": TensorProto.DataType.Value(example.attributes["to"])})


def _tile_repeats(example):
    x, tiles, axis = example.inputs
    repeats = np.ones(x.ndim, np.int64)
    repeats[int(axis[0])] = int(tiles[0])
    return dataclasses.replace(example, inputs=[x, repeats], constant_inputs=(1,))


# versions no oracle runs (onnxruntime starts at opset 7, the reference evaluator lacks them or fails, ONNX's
# converter has no adapter), judged at the next version after translating what changed between the two:
# Cast-1 names its target type where Cast-6 numbers it; Dropout-1/6 (is_test=1, inference) are Dropout-7 with
# is_test and consumed_inputs gone; Split-1 takes its split as the attribute Split-2 has; Tile-1's (tiles, axis)
# are Tile-6's repeats, 1 on every other axis
ORACLE_AT = {
    ("Cast", 1): (6, _numbered_type),
    ("Dropout", 1): (7, _without("is_test", "consumed_inputs")),
    ("Dropout", 6): (7, _without("is_test")),
    ("Split", 1): (2, lambda example: example),
    ("Tile", 1): (6, _tile_repeats),
}
