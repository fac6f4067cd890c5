"""Property-test cases for the quantization ops (cml_ops_std.qdq): one ``OpCase`` per op type.

Scales are positive and finite, of magnitudes from 2**-8 to 16; a power of two half of the time, so that
values drawn on a grid of half steps are exact ties (round half to even is then checked). Values reach
past the quantized type's range (saturation). Element types follow the schema of each since-version.
Values of types onnxruntime cannot feed from Python (int4, float8, ...) are initializers.
"""

import ml_dtypes
import numpy as np
from cml_core.testing import Example, OpCase, shapes
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

from .cases_std import conv_geometry

_INTEGERS = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16, "uint4": ml_dtypes.uint4,
             "int4": ml_dtypes.int4, "uint2": ml_dtypes.uint2, "int2": ml_dtypes.int2}
_FLOATS = {"float8e4m3fn": ml_dtypes.float8_e4m3fn, "float8e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
           "float8e5m2": ml_dtypes.float8_e5m2, "float8e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
           "float4e2m1": ml_dtypes.float4_e2m1fn, "float6e2m3": ml_dtypes.float6_e2m3fn,
           "float6e3m2": ml_dtypes.float6_e3m2fn}
_FLOAT_DTYPES = {np.dtype(t) for t in _FLOATS.values()}
_FEEDABLE = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float16)}


def _quantized_types(opset, dequantize=False):
    """Quantized element types the schema of QuantizeLinear / DequantizeLinear allows at ``opset``."""
    names = ["uint8", "int8"]
    if opset >= 19:
        names += ["float8e4m3fn", "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz"]
    if opset >= 21:
        names += ["uint16", "int16", "uint4", "int4"]
    if opset >= 23:
        names += ["float4e2m1"]
    if opset >= 25:
        names += ["uint2", "int2"]
    if opset >= 28:
        names += ["float6e2m3", "float6e3m2"]
    if dequantize:
        names += ["int32"]
    return names


def _dtype(name):
    return np.dtype(_INTEGERS.get(name) or _FLOATS.get(name) or name)


def _elem(dtype):
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _range(dtype):
    """(low, high) of the values of ``dtype`` (largest finite magnitude for a float type)."""
    if np.dtype(dtype) in _FLOAT_DTYPES or np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16):
        top = float(ml_dtypes.finfo(dtype).max)
        return -top, top
    info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


@st.composite
def _scale_values(draw, shape):
    """Positive finite scales, from 2**-8 to 16: all powers of two, or any mantissa."""
    exponents = draw(hnp.arrays(np.int64, shape, elements=st.integers(-8, 4)))
    if draw(st.booleans()):
        return np.ldexp(1.0, exponents)
    mantissas = draw(hnp.arrays(np.float64, shape, elements=st.floats(1, 2, exclude_max=True)))
    return np.ldexp(mantissas, exponents)


def _granularity(draw, shape, opset, blocked_from):
    """(scale shape, axis, block_size) for per-tensor, per-axis (opset 13 on) or blocked quantization."""
    kinds = ["tensor"] + (["axis"] if opset >= 13 and shape else []) + (["blocked"] if opset >= blocked_from and shape else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "tensor":
        return draw(st.sampled_from([(), (1,)])), None, None
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    if kind == "axis":
        return (shape[axis],), axis, None
    block = draw(st.integers(1, max(1, shape[axis])))
    scale_shape = list(shape)
    scale_shape[axis] = -(-shape[axis] // block)
    if np.prod(scale_shape) == 1:  # one block holding everything is per-tensor (onnxruntime refuses block_size)
        return (), None, None
    return tuple(scale_shape), axis, block


def _broadcast(param, shape, axis, block):
    """``param`` repeated like the op does, to compute the test's inputs (grid values times scale)."""
    if param.size == 1:
        return param.reshape(())
    if block is None:
        return param.reshape([-1 if a == axis % len(shape) else 1 for a in range(len(shape))])
    return np.repeat(param, block, axis=axis).take(np.arange(shape[axis]), axis=axis)


@st.composite
def _quantize(draw, opset):
    target = _dtype(draw(st.sampled_from(_quantized_types(opset))))
    low, high = _range(target)
    is_float = target in _FLOAT_DTYPES
    x_dtypes = [np.float32] + ([np.float16, ml_dtypes.bfloat16] if opset >= 19 else [])
    x_dtype = np.dtype(draw(st.sampled_from(x_dtypes)))
    shape = draw(shapes(max_dims=3, max_side=4))
    scale_shape, axis, block = _granularity(draw, shape, opset, 21)
    scale = draw(_scale_values(scale_shape))
    if is_float:
        zero = np.zeros(scale_shape)  # ONNX's reference ignores a float8 zero point; models give 0
    else:
        zero = draw(hnp.arrays(np.int64, scale_shape, elements=st.integers(low, high)))
    scale_dtype = division = x_dtype
    attributes = {}
    if opset >= 23 and draw(st.booleans()):  # a division precision of its own, and a scale of any float type
        division = np.dtype(draw(st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16])))
        attributes["precision"] = _elem(division)
        scale_dtype = np.dtype(draw(st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16])))
    elif opset >= 24 and x_dtype == np.float32 and draw(st.booleans()):
        scale_dtype = np.dtype(ml_dtypes.float8_e8m0fnu)  # microscaling: a power of two
        scale = np.ldexp(1.0, np.round(np.log2(scale)).astype(np.int64))
    # quotients x / scale: half steps (ties) and any value, reaching half the range past each end, but finite
    # in the division's precision (the reference evaluator casts an infinite quotient to int32: garbage)
    span = (high - low) / 2
    limit = float(ml_dtypes.finfo(division).max) / 2
    q_low, q_high = max(low - span, -limit), min(high + span, limit)
    grid = st.integers(int(2 * q_low), int(2 * q_high)).map(lambda k: k / 2)
    quotients = draw(hnp.arrays(np.float64, shape, elements=grid | st.floats(q_low, q_high)))
    if not is_float:
        quotients = quotients - _broadcast(zero, shape, axis, block)
    x = quotients * _broadcast(scale, shape, axis, block)
    top = min(float(ml_dtypes.finfo(x_dtype).max), limit)  # x too is finite in the division's precision
    x = np.clip(x, -top, top).astype(x_dtype)
    scale = scale.astype(np.float32).astype(scale_dtype)
    if opset >= 19 and is_float:
        attributes["saturate"] = draw(st.integers(0, 1))
        if not attributes["saturate"] and np.isnan(np.array(np.inf).astype(target).astype(np.float64)):
            # overflow gives NaN, which numpy's comparison does not see as equal in an ml_dtypes array: only
            # infinity (float8e5m2) is overflowed to
            wide = _broadcast(scale.astype(np.float64), shape, axis, block)
            x = np.clip(x.astype(np.float64), low * wide, high * wide).astype(x_dtype)
    inputs = [x, scale]
    if axis is not None:
        attributes["axis"] = axis
    if block is not None:
        attributes["block_size"] = block
    with_zero = target != np.uint8 or draw(st.booleans())
    if opset >= 21 and (not with_zero or draw(st.booleans())):
        attributes["output_dtype"] = _elem(target)
    if with_zero and opset >= 21 and "output_dtype" in attributes and draw(st.booleans()):
        with_zero = False
    if with_zero:
        inputs.append(zero.astype(np.float64 if is_float else np.int64).astype(target))
    return Example(inputs, attributes, constant_inputs=tuple(range(1, len(inputs))))


@st.composite
def _dequantize(draw, opset):
    source = _dtype(draw(st.sampled_from(_quantized_types(opset, dequantize=True))))
    shape = draw(shapes(max_dims=3, max_side=4))
    scale_shape, axis, block = _granularity(draw, shape, opset, 21)
    is_float = source in _FLOAT_DTYPES
    if is_float:
        low, high = _range(source)
        x = draw(hnp.arrays(np.float64, shape, elements=st.floats(low, high))).astype(source)
        zero = np.zeros(scale_shape).astype(source)
    else:
        low, high = (-(2**31), 2**31 - 1) if source == np.int32 else _range(source)
        x = draw(hnp.arrays(np.int64, shape, elements=st.integers(low, high))).astype(source)
        zero = np.zeros(scale_shape, np.int64) if source == np.int32 else \
            draw(hnp.arrays(np.int64, scale_shape, elements=st.integers(low, high)))
        zero = zero.astype(source)
    scale_types = [np.float32] + ([np.float16, ml_dtypes.bfloat16] if opset >= 19 else [])
    scale = draw(_scale_values(scale_shape)).astype(np.float32)
    scale_dtype = np.dtype(draw(st.sampled_from(scale_types + ([ml_dtypes.float8_e8m0fnu] if opset >= 24 else []))))
    attributes = {}
    if scale_dtype == np.dtype(ml_dtypes.float8_e8m0fnu):
        scale = np.ldexp(np.float32(1), np.round(np.log2(scale)).astype(np.int64))
        attributes["output_dtype"] = _elem(draw(st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16])))
    elif opset >= 23 and draw(st.booleans()):
        attributes["output_dtype"] = _elem(draw(st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16])))
    inputs = [x, scale.astype(scale_dtype)]
    if axis is not None:
        attributes["axis"] = axis
    if block is not None:
        attributes["block_size"] = block
    if draw(st.booleans()) or source not in (np.dtype(np.uint8), np.dtype(np.int32)) and draw(st.booleans()):
        inputs.append(zero)
    constant = tuple(range(1, len(inputs)))
    if source not in _FEEDABLE or draw(st.booleans()):
        constant = (0,) + constant
    return Example(inputs, attributes, constant_inputs=constant)


@st.composite
def _dynamic_quantize(draw):
    shape = draw(shapes(min_dims=1, max_dims=3))
    magnitude = draw(st.sampled_from([2.0**-10, 1.0, 100.0]))
    low = draw(st.sampled_from([-magnitude, 0.0, magnitude / 4]))
    high = draw(st.sampled_from([-magnitude / 4, 0.0, magnitude]).filter(lambda h: h >= low))
    x = draw(hnp.arrays(np.float32, shape, elements=st.floats(low, high, width=32, allow_subnormal=False)))
    return Example([x], n_outputs=3)


def _integer(draw, shape, dtype):
    low, high = _range(dtype)
    extremes = st.sampled_from([low, high])  # the largest products, for exact int32 accumulation
    return draw(hnp.arrays(np.int64, shape, elements=st.integers(low, high) | extremes)).astype(dtype)


def _matmul_shapes(draw, vector_by_vector=True):
    """(a shape, b shape): vectors, matrices and broadcast batches.

    ``vector_by_vector``: both may be vectors (onnxruntime's QLinearMatMul gives their product shape (1,)
    instead of () when the output is int8).
    """
    k = draw(st.integers(1, 5))
    rank_a, rank_b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if rank_a == rank_b == 1 and not vector_by_vector:
        rank_b = 2
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=max(rank_a, rank_b) - 2, max_side=3)
                 ).input_shapes if min(rank_a, rank_b) > 2 else ((), ())
    a_shape = (k,) if rank_a == 1 else (*batch[0], draw(st.integers(1, 4)), k)
    b_shape = (k,) if rank_b == 1 else (*batch[1], k, draw(st.integers(1, 4)))
    return a_shape, b_shape


def _column_shape(draw, b_shape):
    """Shape of a per-tensor or (onnxruntime's) per-column parameter of ``b``: () or (N,), or (..., 1, N)."""
    if len(b_shape) < 2 or draw(st.booleans()):
        return draw(st.sampled_from([(), (1,)]))
    # a batched b takes (..., 1, N) in onnxruntime, not (N,)
    return (b_shape[-1],) if len(b_shape) == 2 else (*b_shape[:-2], 1, b_shape[-1])


@st.composite
def _matmul_integer(draw):
    a_dtype, b_dtype = (np.dtype(draw(st.sampled_from([np.uint8, np.int8]))) for _ in range(2))
    a_shape, b_shape = _matmul_shapes(draw)
    # onnxruntime takes a per-tensor zero point of a only (the spec also allows one per row)
    a_zero = _integer(draw, draw(st.sampled_from([(), (1,)])), a_dtype) if draw(st.booleans()) else None
    b_zero = _integer(draw, _column_shape(draw, b_shape), b_dtype) if draw(st.booleans()) else None
    inputs = [_integer(draw, a_shape, a_dtype), _integer(draw, b_shape, b_dtype), a_zero, b_zero]
    while inputs[-1] is None:
        inputs.pop()
    constant = draw(st.sampled_from([(), (1,)])) + (2, 3)
    return Example(inputs, constant_inputs=constant)


def _scale_array(draw, shape, dtype=np.float32):
    return np.asarray(draw(_scale_values(shape)), dtype=np.float32).astype(dtype)


@st.composite
def _qlinear_matmul(draw, opset):
    a_dtype, b_dtype, y_dtype = (np.dtype(draw(st.sampled_from([np.uint8, np.int8]))) for _ in range(3))
    scale_dtype = np.dtype(draw(st.sampled_from([np.float32] + ([np.float16, ml_dtypes.bfloat16] if opset >= 21 else []))))
    a_shape, b_shape = _matmul_shapes(draw, vector_by_vector=False)
    a, b = _integer(draw, a_shape, a_dtype), _integer(draw, b_shape, b_dtype)
    scalar = st.sampled_from([(), (1,)])
    # onnxruntime takes per-tensor a and y; b per tensor or per column
    b_shape_param = _column_shape(draw, b_shape)
    inputs = [a, _scale_array(draw, draw(scalar), scale_dtype), _integer(draw, draw(scalar), a_dtype),
              b, _scale_array(draw, b_shape_param, scale_dtype), _integer(draw, b_shape_param, b_dtype),
              _scale_array(draw, draw(scalar), scale_dtype), _integer(draw, draw(scalar), y_dtype)]
    constant = (1, 2) + draw(st.sampled_from([(), (3,)])) + (4, 5, 6, 7)
    return Example(inputs, constant_inputs=constant)


@st.composite
def _conv_integer(draw):
    x_shape, w_shape, attrs = conv_geometry(draw)
    x_dtype, w_dtype = (np.dtype(draw(st.sampled_from([np.uint8, np.int8]))) for _ in range(2))
    inputs = [_integer(draw, x_shape, x_dtype), _integer(draw, w_shape, w_dtype)]
    # onnxruntime takes per-tensor zero points only (the spec also allows one per output channel for w)
    n_zero = draw(st.integers(0, 2))
    if n_zero:
        inputs.append(_integer(draw, draw(st.sampled_from([(), (1,)])), x_dtype))
    if n_zero == 2:
        inputs.append(_integer(draw, draw(st.sampled_from([(), (1,)])), w_dtype))
    return Example(inputs, attrs, constant_inputs=tuple(range(1, len(inputs))))


@st.composite
def _qlinear_conv(draw):
    x_shape, w_shape, attrs = conv_geometry(draw)
    # onnxruntime's kernels: uint8 x and y with uint8 or int8 w, or all int8 (the spec allows any mix)
    x_dtype = y_dtype = np.dtype(draw(st.sampled_from([np.uint8, np.int8])))
    w_dtype = np.dtype(draw(st.sampled_from([np.uint8, np.int8])) if x_dtype == np.uint8 else np.int8)
    cout = w_shape[0]
    scalar = st.sampled_from([(), (1,)])
    per_channel = draw(st.booleans())
    w_param = (cout,) if per_channel else draw(scalar)
    if per_channel and draw(st.booleans()):  # onnxruntime's usual per-channel form: symmetric int8 weights
        w_zero = np.zeros(w_param, w_dtype)
    else:
        w_zero = _integer(draw, w_param, w_dtype)
    inputs = [_integer(draw, x_shape, x_dtype), _scale_array(draw, draw(scalar)), _integer(draw, draw(scalar), x_dtype),
              _integer(draw, w_shape, w_dtype), _scale_array(draw, w_param), w_zero,
              _scale_array(draw, draw(scalar)), _integer(draw, draw(scalar), y_dtype)]
    if draw(st.booleans()):
        inputs.append(draw(hnp.arrays(np.int32, (cout,), elements=st.integers(-(2**16), 2**16))))
    return Example(inputs, attrs, constant_inputs=tuple(range(1, len(inputs))))


CASES = [
    OpCase("QuantizeLinear", _quantize),
    OpCase("DequantizeLinear", _dequantize),
    OpCase("DynamicQuantizeLinear", lambda opset: _dynamic_quantize()),
    OpCase("MatMulInteger", lambda opset: _matmul_integer()),
    OpCase("QLinearMatMul", _qlinear_matmul),
    OpCase("ConvInteger", lambda opset: _conv_integer()),
    OpCase("QLinearConv", lambda opset: _qlinear_conv()),
]
