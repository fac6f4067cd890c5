"""Property-test cases for cml-ops-std: one ``OpCase`` per op type."""

import numpy as np
from hypothesis import strategies as st

from cml_core.testing import Example, OpCase, bool_arrays, float32s, broadcastable_shapes, float_arrays, int_arrays, shapes


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
def _reshape(draw, opset):
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
    return Example([x, np.array(dims, np.int64)], attrs, constant_inputs=draw(st.sampled_from([(1,), ()])))


@st.composite
def _flatten(draw):
    x = draw(float_arrays(shapes(min_dims=1, max_dims=4)))
    return Example([x], {"axis": draw(st.integers(-x.ndim, x.ndim))})


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
def _gemm(draw):
    m, k, n = (draw(st.integers(1, 5)) for _ in range(3))
    trans_a, trans_b = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    a = draw(float_arrays((k, m) if trans_a else (m, k), min_value=-3, max_value=3))
    b = draw(float_arrays((n, k) if trans_b else (k, n), min_value=-3, max_value=3))
    attrs = {"transA": trans_a, "transB": trans_b}
    for name in ("alpha", "beta"):
        if draw(st.booleans()):  # 0, or a magnitude a model would use, either sign
            attrs[name] = draw(st.just(0.0) | float32s(0.05, 2) | float32s(-2, -0.05))
    inputs = [a, b]
    if draw(st.booleans()):
        c_shape = draw(st.sampled_from([(m, n), (1, n), (n,), (m, 1), ()]))
        inputs.append(draw(float_arrays(c_shape)))
    constant = draw(st.sampled_from([(), (1,), (1, 2)]))
    return Example(inputs, attrs, constant_inputs=tuple(i for i in constant if i < len(inputs)))


@st.composite
def _conv(draw):
    rank = draw(st.integers(1, 3))
    group = draw(st.integers(1, 2))
    cin, cout = group * draw(st.integers(1, 2)), group * draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [draw(st.integers(1, 2)) for _ in range(rank)]
    strides = [draw(st.integers(1, 2)) for _ in range(rank)]
    spatial = [draw(st.integers((k - 1) * d + 1, (k - 1) * d + 4)) for k, d in zip(kernel, dilations)]
    x = draw(float_arrays((draw(st.integers(1, 2)), cin, *spatial), min_value=-3, max_value=3))
    w = draw(float_arrays((cout, cin // group, *kernel), min_value=-3, max_value=3))
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
    inputs = [x, w]
    if draw(st.booleans()):
        inputs.append(draw(float_arrays((cout,))))
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


CASES = [
    OpCase("Add", lambda opset: _binary()),
    OpCase("Sub", lambda opset: _binary()),
    OpCase("Mul", lambda opset: _binary()),
    OpCase("Div", lambda opset: _binary(nonzero_b=True)),
    OpCase("Equal", lambda opset: _binary((np.int64, np.float32) if opset >= 11 else (np.int64,))),
    OpCase("Greater", lambda opset: _binary()),
    OpCase("Less", lambda opset: _binary()),
    OpCase("Not", lambda opset: _not()),
    OpCase("Clip", lambda opset: _clip()),
    OpCase("Identity", lambda opset: _identity()),
    OpCase("Reshape", _reshape),
    OpCase("Flatten", lambda opset: _flatten()),
    OpCase("MatMul", lambda opset: _matmul()),
    OpCase("Gemm", lambda opset: _gemm()),
    OpCase("Conv", lambda opset: _conv()),
    OpCase("Constant", _constant),
]
