"""Property-test cases for the numeric ops: Einsum, Det, bitwise ops, BitCast, windows, MelWeightMatrix, DFT, STFT."""

import numpy as np
from cml_core.testing import Example, OpCase, broadcastable_shapes, float_arrays, int_arrays, shapes
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto

# -- Einsum -------------------------------------------------------------------------------------

LETTERS = "abcde"  # onnxruntime refuses upper-case labels, which the spec allows


@st.composite
def _einsum_equation(draw, max_operands=3):
    """(equation, operand shapes): terms of up to three letters (repeats make diagonals), an optional
    ellipsis over the same zero to two dims in every term (size 1 broadcasts), explicit or implicit output. No spaces (onnxruntime
    refuses them; the backend cases have them)."""
    sizes = {letter: draw(st.integers(1, 3)) for letter in LETTERS}
    n = draw(st.integers(1, max_operands))
    ellipsis_shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2))) if draw(st.booleans()) else None
    terms, operand_shapes = [], []
    for _ in range(n):
        term = draw(st.lists(st.sampled_from(LETTERS), min_size=1 if not terms else 0, max_size=3))
        shape = [sizes[c] for c in term]
        text = "".join(term)
        if ellipsis_shape is not None and draw(st.booleans()):
            dims = [d if draw(st.booleans()) else 1 for d in ellipsis_shape]
            at = draw(st.integers(0, len(term)))
            text = "".join(term[:at]) + "..." + "".join(term[at:])
            shape = shape[:at] + dims + shape[at:]
        terms.append(text)
        operand_shapes.append(tuple(shape))
    used = sorted({c for t in terms for c in t if c != "."})
    has_ellipsis = any("..." in t for t in terms)
    if draw(st.booleans()):
        output = draw(st.permutations(used)) if used else []
        output = output[: draw(st.integers(0, len(output)))]
        text = "".join(output)
        if has_ellipsis:
            at = draw(st.integers(0, len(text)))
            text = text[:at] + "..." + text[at:]
        equation = ",".join(terms) + "->" + text
    else:
        equation = ",".join(terms)
    return equation, operand_shapes


@st.composite
def _einsum(draw, opset, quantizable=False):
    equation, operand_shapes = draw(_einsum_equation())
    if quantizable:
        # constants hold -m, 0, m only: a symmetric weight quantizer keeps them exactly at any width
        inputs, constant = [], []
        encrypted = draw(st.integers(0, len(operand_shapes) - 1))
        for i, shape in enumerate(operand_shapes):
            if i == encrypted or draw(st.booleans()):
                inputs.append(draw(float_arrays(shape, np.float32, -3, 3)))
            else:
                magnitude = np.float32(draw(st.sampled_from([0.5, 1.0, 2.0])))
                signs = draw(hnp.arrays(np.int8, shape, elements=st.integers(-1, 1)))
                inputs.append(signs.astype(np.float32) * magnitude)
                constant.append(i)
        return Example(inputs, {"equation": equation}, constant_inputs=tuple(constant))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
    if np.dtype(dtype).kind == "f":
        inputs = [draw(float_arrays(shape, dtype, -3, 3)) for shape in operand_shapes]
    else:
        inputs = [draw(int_arrays(shape, dtype, -5, 5)) for shape in operand_shapes]
    constant = tuple(i for i in range(len(inputs)) if draw(st.booleans()))
    return Example(inputs, {"equation": equation}, constant_inputs=constant)


# -- Det, bitwise, BitCast ----------------------------------------------------------------------


@st.composite
def _det(draw, opset):
    n = draw(st.integers(1, 4))
    batch = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    x = draw(float_arrays(batch + (n, n), draw(st.sampled_from([np.float32, np.float64])), -2, 2))
    return Example([x])


INTEGERS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


def _full_range(dtype):
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max))


@st.composite
def _bitwise(draw, opset, unary=False):
    dtype = draw(st.sampled_from(INTEGERS))
    shape_list = [draw(shapes())] if unary else draw(broadcastable_shapes(2))
    inputs = [draw(hnp.arrays(np.dtype(dtype), shape, elements=_full_range(dtype))) for shape in shape_list]
    constant = draw(st.sampled_from([(), (len(inputs) - 1,)])) if not unary else ()
    return Example(inputs, constant_inputs=constant)


SAME_WIDTH = {
    1: (np.int8, np.uint8, np.bool_),
    2: (np.int16, np.uint16, np.float16),
    4: (np.int32, np.uint32, np.float32),
    8: (np.int64, np.uint64, np.float64),
}


@st.composite
def _bitcast_of_floats(draw, opset):
    """Finite, non-empty float tensors read as integers (what an encrypted input could be)."""
    source = np.dtype(draw(st.sampled_from([np.float16, np.float32, np.float64])))
    target = np.dtype(draw(st.sampled_from([t for t in SAME_WIDTH[source.itemsize] if t not in (np.bool_, source.type)])))
    from onnx import helper

    x = draw(float_arrays(shapes(min_dims=1), source))
    return Example([x], {"to": helper.np_dtype_to_tensor_dtype(target)})


@st.composite
def _bitcast(draw, opset):
    width = draw(st.sampled_from(sorted(SAME_WIDTH)))
    source = np.dtype(draw(st.sampled_from(SAME_WIDTH[width])))
    target = np.dtype(draw(st.sampled_from([t for t in SAME_WIDTH[width] if t != np.bool_])))
    shape = draw(shapes(max_dims=3))
    if source == np.bool_:
        x = draw(hnp.arrays(np.bool_, shape))
    else:
        bits = np.dtype(f"u{width}")
        x = draw(hnp.arrays(bits, shape, elements=_full_range(bits))).view(source)
    from onnx import helper

    return Example([x], {"to": helper.np_dtype_to_tensor_dtype(target)})


# -- windows, mel filters -----------------------------------------------------------------------

OUTPUT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)


@st.composite
def _window(draw, opset, constant=False):
    periodic = draw(st.sampled_from([0, 1]))
    size = np.array(draw(st.integers(1 if periodic else 2, 12)), dtype=draw(st.sampled_from([np.int32, np.int64])))
    attributes = {}
    if draw(st.booleans()):
        attributes["periodic"] = periodic
    elif periodic == 0:
        attributes["periodic"] = 0
    if draw(st.booleans()):
        attributes["output_datatype"] = draw(st.sampled_from(OUTPUT_TYPES))
    return Example([size], attributes, constant_inputs=(0,) if constant else draw(st.sampled_from([(), (0,)])))


@st.composite
def _mel(draw, opset, constant=False):
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    sample_rate = draw(st.sampled_from([8000, 16000, 22050]))
    length = draw(st.integers(8, 128))
    lower = draw(st.integers(0, 2000)) / 4
    upper = draw(st.integers(4 * lower + 800, 2 * sample_rate)) / 4
    # onnxruntime refuses an upper edge whose own bin lies beyond the spectrum, even when no band reaches it
    upper = min(upper, np.floor(4 * (length // 2 + 0.5) * sample_rate / (length + 1)) / 4)
    edge_type = draw(st.sampled_from([np.float32, np.float64]))
    inputs = [np.array(draw(st.integers(1, 10)), dtype), np.array(length, dtype), np.array(sample_rate, dtype),
              np.array(lower, edge_type), np.array(upper, edge_type)]
    attributes = {"output_datatype": draw(st.sampled_from(OUTPUT_TYPES))} if draw(st.booleans()) else {}
    everything = (0, 1, 2, 3, 4)
    return Example(inputs, attributes, constant_inputs=everything if constant else draw(st.sampled_from([(), everything])))


# -- DFT, STFT ----------------------------------------------------------------------------------


@st.composite
def _dft(draw, opset):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    inverse = draw(st.sampled_from([0, 1]))
    onesided = draw(st.sampled_from([0, 1]))
    parts = (2 if inverse else 1) if onesided else draw(st.sampled_from([1, 2]))
    signal = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    batch = (draw(st.integers(1, 3)),)
    x = draw(float_arrays(batch + signal + (parts,), dtype, -4, 4))
    rank = x.ndim
    axis = draw(st.integers(1, rank - 2))
    if draw(st.booleans()):
        axis -= rank
    inputs, attributes = [x], {}
    if inverse:
        attributes["inverse"] = 1
    if onesided:
        attributes["onesided"] = 1
    length = None
    if draw(st.booleans()):
        length = np.array(draw(st.integers(1, 8)), dtype=draw(st.sampled_from([np.int32, np.int64])))
    if inverse and onesided and length is None and x.shape[axis] < 2:
        length = np.array(1, np.int64)  # the default length 2 * (n - 1) would be 0
    if opset < 20:
        attributes["axis"] = axis
        inputs.append(length)
    else:
        inputs += [length, np.array(axis, np.int64) if draw(st.booleans()) or axis != -2 else None]
    while inputs[-1] is None:
        inputs.pop()
    return Example(inputs, attributes, constant_inputs=tuple(range(1, len(inputs))))


@st.composite
def _stft(draw, opset):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    onesided = draw(st.sampled_from([0, 1]))
    parts = 1 if onesided else draw(st.sampled_from([1, 2]))
    length = draw(st.integers(1, 16))
    signal = draw(float_arrays((draw(st.integers(1, 2)), length, parts), dtype, -4, 4))
    frame_length = draw(st.integers(1, length))
    step_type = draw(st.sampled_from([np.int32, np.int64]))
    inputs = [signal, np.array(draw(st.integers(1, 4)), step_type)]
    window = draw(float_arrays((frame_length,), dtype, 0, 1)) if draw(st.booleans()) else None
    give_length = window is None or draw(st.booleans())
    inputs += [window, np.array(frame_length, step_type) if give_length else None]
    while inputs[-1] is None:
        inputs.pop()
    attributes = {} if onesided and draw(st.booleans()) else {"onesided": onesided}
    return Example(inputs, attributes, constant_inputs=tuple(i for i in range(1, len(inputs)) if inputs[i] is not None))


CASES = [
    OpCase("Einsum", _einsum, quantizable=lambda opset: _einsum(opset, quantizable=True)),
    OpCase("Det", _det),
    OpCase("BitwiseAnd", _bitwise),
    OpCase("BitwiseOr", _bitwise),
    OpCase("BitwiseXor", _bitwise),
    OpCase("BitwiseNot", lambda opset: _bitwise(opset, unary=True)),
    OpCase("BitCast", _bitcast, quantizable=_bitcast_of_floats),
    OpCase("HannWindow", _window, quantizable=lambda opset: _window(opset, constant=True)),
    OpCase("HammingWindow", _window, quantizable=lambda opset: _window(opset, constant=True)),
    OpCase("BlackmanWindow", _window, quantizable=lambda opset: _window(opset, constant=True)),
    OpCase("MelWeightMatrix", _mel, quantizable=lambda opset: _mel(opset, constant=True)),
    OpCase("DFT", _dft),
    OpCase("STFT", _stft),
]

_FLOAT64 = ("onnxruntime's float32 kernel accumulates in float32 (products and sums of several terms, or "
            "trigonometric sums), which moves results near 0 beyond the float32 tolerance; cml sums in float64 "
            "and rounds once")
FLOAT64_ORACLE = {"Einsum": _FLOAT64, "Det": _FLOAT64, "DFT": _FLOAT64, "STFT": _FLOAT64}

_WINDOW_IN_FLOAT32 = ("onnxruntime computes a double window in float32 and widens it (errors of 2e-8 where the "
                      "float64 tolerance is 1e-10); the ONNX reference evaluator computes it in float64")
KNOWN_DISAGREEMENTS = {(op, 17): _WINDOW_IN_FLOAT32 for op in ("HannWindow", "HammingWindow", "BlackmanWindow")}
_INVERSE_DFT = ("onnxruntime's inverse transforms disagree with the specification: its one-sided inverse (IRFFT) of "
                "bins with imaginary parts is not the inverse real transform (bins [1+1j, 1+1j, 1+1j] at length 3 "
                "give [1, 0, 0], the spec and numpy [1, -0.577, 0.577]), its 1-point IRFFT reads the wrong bin, and "
                "its float64 inverse is off by 3e-8 (float32 twiddles); the ONNX reference evaluator follows the spec")
KNOWN_DISAGREEMENTS.update({("DFT", 17): _INVERSE_DFT, ("DFT", 20): _INVERSE_DFT})
