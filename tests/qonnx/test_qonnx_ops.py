"""Property tests of the QONNX ops against the specification's formulas (``spec.py``).

onnxruntime has no kernels for these domains, so the oracle is the spec written out element by
element. Both compute the same float32 operations, and rounding is exact on both sides, so results
must be equal, not close.
"""

import numpy as np
import pytest
from cml_core.testing import ORT_MAX_IR_VERSION, check_op
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

from cml_core import ModelLoadError, NodeExecutionError, load_model

from . import spec

QONNX = "qonnx.custom_op.general"
BREVITAS = "onnx.brevitas"
MODES = sorted(spec.DECIMAL_MODES)
# Brevitas 0.13 imports qonnx.custom_op.general at version 2; older exports import onnx.brevitas at 1
QUANT_TARGETS = [("Quant", QONNX, 1), ("Quant", QONNX, 2), ("IntQuant", QONNX, 2), ("Quant", BREVITAS, 1)]
F = np.float32


def exact(*args, **kwargs):
    return check_op(*args, rtol=0.0, atol=0.0, **kwargs)


@st.composite
def x_and_operand_shapes(draw, n_operands):
    """An input shape, and for each operand a shape that broadcasts onto it: a scalar, one entry
    per channel of one axis (ones elsewhere, same rank), or any mix of ones and the input's sides."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4))
    operand_shapes = []
    for _ in range(n_operands):
        kind = draw(st.sampled_from(["scalar", "channel", "mixed"] if shape else ["scalar"]))
        if kind == "scalar":
            operand_shapes.append(draw(st.sampled_from([(), (1,)] if shape else [()])))
        elif kind == "channel":
            axis = draw(st.integers(0, len(shape) - 1))
            operand_shapes.append(tuple(side if i == axis else 1 for i, side in enumerate(shape)))
        else:
            kept = draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
            rank = draw(st.integers(0, len(shape)))  # trailing axes only: numpy/ONNX broadcasting
            full = tuple(side if keep else 1 for side, keep in zip(shape, kept))
            operand_shapes.append(full[len(full) - rank:])
    return shape, operand_shapes


def scales(shape, min_exponent=-6, max_exponent=6):
    """Positive float32 scales spread over orders of magnitude (as ``2**e * m``)."""
    element = st.tuples(st.integers(min_exponent, max_exponent), st.floats(1.0, 2.0, width=32)).map(
        lambda em: float(F(np.ldexp(em[1], em[0]))))
    return hnp.arrays(F, shape, elements=element)


def powers_of_two(shape, low=-4, high=4):
    return hnp.arrays(F, shape, elements=st.integers(low, high).map(lambda e: float(np.ldexp(1.0, e))))


def zero_points(shape):
    """Zero points: whole numbers (what Brevitas writes), halves, or any float in [-4, 4]."""
    whole = st.integers(-4, 4).map(float)
    halves = st.integers(-8, 8).map(lambda k: k / 2)
    anything = st.floats(-4, 4, width=32, allow_subnormal=False)
    return st.sampled_from([whole, halves, anything]).flatmap(lambda e: hnp.arrays(F, shape, elements=e))


def bit_width_arrays(low, high):
    """A scalar bit width, as float32 (Brevitas) or int32 (the spec allows both)."""
    return st.tuples(st.integers(low, high), st.sampled_from([F, np.int32])).map(lambda b: np.array(b[0], b[1]))


@st.composite
def inputs_on_grid(draw, shape, scale, zeropt):
    """x such that x / scale + zeropt lands on whole numbers and exact halves (the ties)."""
    halves = draw(hnp.arrays(np.int32, shape, elements=st.integers(-600, 600)))
    return np.asarray((halves / F(2) - zeropt) * scale, F)


@st.composite
def quant_cases(draw, low_bits=1, high_bits=16):
    shape, (scale_shape, zero_shape) = draw(x_and_operand_shapes(2))
    ties = draw(st.booleans())
    if ties:  # power-of-two scales keep x / scale exact, so halves stay halves
        scale = draw(powers_of_two(scale_shape))
        zeropt = draw(hnp.arrays(F, zero_shape, elements=st.integers(-8, 8).map(lambda k: k / 2)))
        x = draw(inputs_on_grid(shape, scale, zeropt))
    else:
        scale = draw(scales(scale_shape))
        zeropt = draw(zero_points(zero_shape))
        x = draw(hnp.arrays(F, shape, elements=st.floats(-1000, 1000, width=32, allow_subnormal=False)))
    bits = draw(bit_width_arrays(low_bits, high_bits))
    attributes = {"signed": draw(st.sampled_from([0, 1])), "narrow": draw(st.sampled_from([0, 1])),
                  "rounding_mode": draw(st.sampled_from(MODES + [m.lower() for m in MODES]))}
    constant = draw(st.booleans())  # scale, zero point and bit width as initializers, or fed at call time
    return [x, scale, zeropt, bits], attributes, constant


@pytest.mark.parametrize("op_type, domain, opset", QUANT_TARGETS)
@given(case=quant_cases())
def test_quant_matches_the_spec(op_type, domain, opset, case):
    inputs, attributes, constant = case
    exact(op_type, inputs, attributes, opset=opset, domain=domain, constant_inputs=[1, 2, 3] if constant else [],
          reference=spec.quant)


@given(case=quant_cases(1, 8))
def test_quant_at_small_bit_widths_matches_the_spec(case):
    inputs, attributes, constant = case
    exact("Quant", inputs, attributes, opset=2, domain=QONNX, constant_inputs=[1, 2, 3] if constant else [],
          reference=spec.quant)


@pytest.mark.parametrize("mode_index, mode", list(enumerate(spec.TABLE_MODES)))
def test_rounding_modes_reproduce_the_spec_table(mode_index, mode):
    values = np.array(list(spec.SPEC_TABLE), F)
    expected = np.array([row[mode_index] for row in spec.SPEC_TABLE.values()], F)
    for rounding_mode in (mode, mode.lower()):
        got = exact("Quant", [values, np.array(1, F), np.array(0, F), np.array(8, F)],
                    {"rounding_mode": rounding_mode}, opset=2, domain=QONNX, constant_inputs=[1, 2, 3],
                    reference=spec.quant)
        np.testing.assert_array_equal(got[0], expected, err_msg=mode)


def test_quant_ranges_at_every_signed_narrow_combination():
    x = np.arange(-300, 301, dtype=F)  # beyond every 8-bit range, so both ends clip
    for signed, narrow, low, high in [(1, 0, -128, 127), (1, 1, -127, 127), (0, 0, 0, 255), (0, 1, 0, 254)]:
        got = exact("Quant", [x, np.array(1, F), np.array(0, F), np.array(8, F)],
                    {"signed": signed, "narrow": narrow}, opset=2, domain=QONNX, constant_inputs=[1, 2, 3],
                    reference=spec.quant)[0]
        assert (got.min(), got.max()) == (low, high)
    one_bit = exact("Quant", [x, np.array(1, F), np.array(0, F), np.array(1, F)], {"signed": 1}, opset=2,
                    domain=QONNX, constant_inputs=[1, 2, 3], reference=spec.quant)[0]
    assert set(one_bit.tolist()) == {-1.0, 0.0}  # one signed bit: {-1, 0}; bipolar values are BipolarQuant's


@pytest.mark.parametrize("domain", [QONNX, BREVITAS])
@given(data=st.data())
def test_bipolar_quant_matches_the_spec(domain, data):
    shape, (scale_shape,) = data.draw(x_and_operand_shapes(1))
    x = data.draw(hnp.arrays(F, shape, elements=st.floats(-10, 10, width=32, allow_subnormal=False)
                             | st.sampled_from([0.0, -0.0])))
    scale = data.draw(scales(scale_shape))
    constant = data.draw(st.booleans())
    exact("BipolarQuant", [x, scale], opset=1 if domain == BREVITAS else 2, domain=domain,
          constant_inputs=[1] if constant else [], reference=spec.bipolar_quant)


@st.composite
def trunc_cases(draw, version):
    shape, (scale_shape, zero_shape) = draw(x_and_operand_shapes(2))
    in_bits = draw(st.integers(2, 16))
    out_bits = draw(st.integers(1, in_bits))
    signed = draw(st.sampled_from([0, 1]))
    narrow = draw(st.sampled_from([0, 1]))
    scale = draw(st.one_of(powers_of_two(scale_shape), scales(scale_shape)))
    zeropt = draw(hnp.arrays(F, zero_shape, elements=st.integers(-3, 3).map(float)))
    # the input is on its grid: integers of in_bits bits (a little float error on top at times)
    low, high = spec.min_int(signed, 0, in_bits), spec.max_int(signed, 0, in_bits)
    ints = draw(hnp.arrays(np.int32, shape, elements=st.integers(low, high)))
    x = np.asarray((ints - zeropt) * scale, F)
    if draw(st.booleans()):
        x = np.asarray(x * F(1 + 2e-7), F)
    mode = draw(st.sampled_from(MODES + [m.lower() for m in MODES]))
    kind = draw(st.sampled_from([F, np.int32]))
    if version == 1:
        inputs = [x, scale, zeropt, np.array(in_bits, kind), np.array(out_bits, kind)]
        attributes = {"rounding_mode": mode}
    else:
        # Brevitas writes the output scale scale * 2^(in_bits - out_bits); any power-of-two ratio is allowed
        shift = draw(st.integers(-2, in_bits - out_bits + 2))
        out_scale = np.asarray(scale * F(2.0**shift), F)
        if draw(st.booleans()):
            out_scale = np.asarray(out_scale * F(1 + 1e-6), F)  # not exactly a power of two: log2 is rounded
        inputs = [x, scale, zeropt, np.array(in_bits, kind), out_scale, np.array(out_bits, kind)]
        attributes = {"rounding_mode": mode, "signed": signed, "narrow": narrow}
    constant = draw(st.booleans())
    return inputs, attributes, constant


@pytest.mark.parametrize("domain, opset", [(QONNX, 1), (BREVITAS, 1)])
@given(case=trunc_cases(version=1))
def test_trunc_v1_matches_the_spec(domain, opset, case):
    inputs, attributes, constant = case
    exact("Trunc", inputs, attributes, opset=opset, domain=domain,
          constant_inputs=list(range(1, len(inputs))) if constant else [], reference=spec.trunc_v1)


@given(case=trunc_cases(version=2))
def test_trunc_v2_matches_the_spec(case):
    inputs, attributes, constant = case
    exact("Trunc", inputs, attributes, opset=2, domain=QONNX,
          constant_inputs=list(range(1, len(inputs))) if constant else [], reference=spec.trunc_v2)


def test_trunc_v2_drops_low_bits_like_brevitas_docstring_example():
    # Brevitas's TruncIntQuant example: scale 0.01, 8 -> 4 bits, output scale 0.16, rounding ROUND
    x = np.array([0.04, -0.05, 0.31, -0.44], F)
    got = exact("Trunc", [x, np.array(0.01, F), np.array(0, F), np.array(8, F), np.array(0.16, F), np.array(4, F)],
                {"rounding_mode": "ROUND"}, opset=2, domain=QONNX, constant_inputs=[1, 2, 3, 4, 5],
                reference=spec.trunc_v2)[0]
    np.testing.assert_allclose(got, [0.0, -0.0, 0.32, -0.48], rtol=1e-6)


# --- refused nodes ------------------------------------------------------------------------------


def _load(op_type, inputs, attributes=None, constant=(1, 2, 3), opset=2):
    # make_node_model runs the op to type its output, which a bad node cannot do: declare it here
    names = [f"x{i}" for i in range(len(inputs))]
    node = helper.make_node(op_type, names, ["y"], domain=QONNX, **(attributes or {}))
    feeds = [helper.make_tensor_value_info(n, TensorProto.FLOAT, v.shape)
             for i, (n, v) in enumerate(zip(names, inputs)) if i not in constant]
    initializers = [numpy_helper.from_array(v, n) for i, (n, v) in enumerate(zip(names, inputs)) if i in constant]
    graph = helper.make_graph([node], "bad", feeds, [helper.make_tensor_value_info("y", TensorProto.FLOAT, X.shape)],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(QONNX, opset)],
                              ir_version=ORT_MAX_IR_VERSION)
    return load_model(model)


X = np.zeros((2, 3), F)


@pytest.mark.parametrize("inputs, attributes, message", [
    ([X, np.array(1, F), np.array(0, F), np.array(4, F)], {"rounding_mode": "STOCHASTIC"}, "rounding_mode 'STOCHASTIC'"),
    ([X, np.array(1, F), np.array(0, F), np.array(4, F)], {"signed": 2}, "signed=2 must be 0 or 1"),
    ([X, np.array(1, F), np.array(0, F), np.array(2.5, F)], {}, "whole number of bits"),
    ([X, np.array(1, F), np.array(0, F), np.array(0, F)], {}, "at least 1"),
    ([X, np.array(1, F), np.array(0, F), np.array([4, 4], F)], {}, "single number"),
    ([X, np.array(0, F), np.array(0, F), np.array(4, F)], {}, "scale must not be zero"),
    ([X, np.ones(2, F), np.array(0, F), np.array(4, F)], {}, "does not broadcast"),
    ([X, np.array(1, F), np.zeros((4, 2, 3), F), np.array(4, F)], {}, "more axes"),
])
def test_bad_quant_nodes_are_refused_at_load(inputs, attributes, message):
    with pytest.raises(ModelLoadError, match=message):
        _load("Quant", inputs, attributes)


def test_bad_trunc_nodes_are_refused_at_load():
    inputs = [X, np.array(1, F), np.array(0, F), np.array(8, F), np.array(16, F), np.array(4, F)]
    with pytest.raises(ModelLoadError, match="out_scale must not be zero"):
        _load("Trunc", inputs[:4] + [np.array(0, F)] + inputs[5:], constant=(1, 2, 3, 4, 5))
    with pytest.raises(ModelLoadError, match="rounding_mode 'DPU'"):
        _load("Trunc", inputs, {"rounding_mode": "DPU"}, constant=(1, 2, 3, 4, 5))
    with pytest.raises(ModelLoadError, match="unsupported attribute"):  # version 1 has no signed/narrow
        _load("Trunc", inputs[:4] + inputs[5:], {"signed": 0}, constant=(1, 2, 3, 4), opset=1)


def test_bad_bit_width_fed_at_call_time_is_an_execution_error():
    module = _load("Quant", [X, np.array(1, F), np.array(0, F), np.array(4, F)], constant=(1, 2))
    np.testing.assert_array_equal(module(X, np.array(4, F)), X)
    with pytest.raises(NodeExecutionError, match="whole number of bits"):
        module(X, np.array(3.5, F))
