"""Cast, CastLike and Dropout beyond the shared op cases: every ONNX element type, strings, the
float 8 saturation rules, FLOAT8E8M0 rounding, the old versions (Cast-1, Dropout-1/6/7), seeded
training Dropout, and the quantized forms (integer casts inside a lookup, refusals).

The oracle is onnxruntime where its Python binding can hold the types (numpy's own types and
strings), the ONNX reference evaluator otherwise (bfloat16, float 8, int4/uint4, int2/uint2,
float4e2m1), as ``checks.run_reference`` does when onnxruntime has no kernel.
"""

import ml_dtypes
import numpy as np
import pytest
from cml_core.testing import float32s, float_arrays, make_node_model, run_cml, shapes
from cml_core.testing.models import feeds_of, run_onnxruntime
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from cml_core import QuantizationError, load_model

NUMPY_TYPES = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
               np.uint32, np.uint64, np.bool_]
ML_TYPES = [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2,
            ml_dtypes.float8_e5m2fnuz, ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2,
            ml_dtypes.float4_e2m1fn]
FLOAT8 = [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz]
#: the Cast version each ml_dtypes type arrives with
SINCE = {ml_dtypes.bfloat16: 13, **{t: 19 for t in FLOAT8}, ml_dtypes.int4: 21, ml_dtypes.uint4: 21,
         ml_dtypes.float4_e2m1fn: 23, ml_dtypes.int2: 25, ml_dtypes.uint2: 25}


def _ml_types(opset):
    return [t for t in ML_TYPES if SINCE[t] <= opset]


def _code(dtype):
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _oracle(model, inputs):
    """onnxruntime for numpy types and strings; the reference evaluator when a value is of ml_dtypes."""
    values = [np.asarray(v) for v in inputs if v is not None]
    wanted = {o.type.tensor_type.elem_type for o in model.graph.output}
    ml_types = {np.dtype(t) for t in ML_TYPES + [ml_dtypes.float8_e8m0fnu]}
    if not any(v.dtype in ml_types for v in values) and not wanted & {_code(t) for t in ml_types}:
        return run_onnxruntime(model, feeds_of(model, inputs))
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds_of(model, inputs))]


def _assert_same(got, expected, what):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype}, expected {expected.dtype}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    if expected.dtype == object:
        assert got.tolist() == expected.tolist(), what
        return
    wide = np.int64 if expected.dtype.kind in "iub" or expected.dtype.name in ("int4", "uint4", "int2", "uint2") \
        else np.float64
    g, e = got.astype(wide), expected.astype(wide)
    np.testing.assert_array_equal(g, e, err_msg=what)
    if wide is np.float64:
        zeros = e == 0
        np.testing.assert_array_equal(np.signbit(g[zeros]), np.signbit(e[zeros]), err_msg=f"{what}: sign of zero")


def _check(op_type, inputs, attributes, opset, constant_inputs=(), n_outputs=1):
    model = make_node_model(op_type, inputs, attributes, opset=opset, constant_inputs=constant_inputs,
                            n_outputs=n_outputs)
    got = run_cml(model, feeds_of(model, inputs))
    expected = _oracle(model, inputs)
    for i, (g, e) in enumerate(zip(got, expected)):
        _assert_same(g, e, f"{op_type}-{opset} output {i}")
    return got


@st.composite
def _values(draw, dtype, shape=None, finite=True, low=-1e6, high=1e6):
    """Values of ``dtype``: floats spanning the float 8 ranges (and beyond), or any integer."""
    shape = draw(shapes(max_dims=3)) if shape is None else shape
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return draw(hnp.arrays(np.bool_, shape))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return draw(hnp.arrays(dtype, shape, elements=st.integers(int(info.min), int(info.max))))
    width = {2: 16, 4: 32}.get(dtype.itemsize, 64) if dtype.kind == "f" else 32
    source = dtype if dtype.kind == "f" else np.dtype(np.float32)
    with np.errstate(over="ignore"):
        exact = [v for v in (0.0, -0.0, 0.5, 448.0, 464.0, 57344.0, 61440.0, 240.0, 6.0, 7.0, 2.0**-10, 2.0**-24, 1e6)
                 if low <= v <= high and float(source.type(v)) == v]
    special = st.sampled_from(exact + ([] if finite else [np.inf, -np.inf, np.nan]))
    limit = min(high, float(np.finfo(np.float16).max)) if dtype == np.float16 else high
    elements = st.floats(max(low, -limit), limit, width=width, allow_nan=False, allow_subnormal=False) | special \
        | special.map(lambda v: -v)
    return draw(hnp.arrays(source, shape, elements=elements)).astype(dtype)


@pytest.mark.parametrize("opset", [13, 19, 21, 23, 24, 25])
@given(data=st.data())
def test_cast_between_numpy_types_and_to_ml_types(opset, data):
    """Numeric casts against onnxruntime, casts into ml_dtypes types against the reference evaluator."""
    targets = NUMPY_TYPES + _ml_types(opset)
    target = np.dtype(data.draw(st.sampled_from(targets)))
    source = np.dtype(data.draw(st.sampled_from(NUMPY_TYPES)))
    finite = target.kind in "biu" or target.name in ("int4", "uint4", "int2", "uint2")
    x = data.draw(_values(source, finite=finite or source.kind != "f"))
    if target.kind in "iu" and source.kind == "f":
        # out-of-range floats to integers are undefined: keep them in the target's range
        info = np.iinfo(target)
        x = np.clip(np.nan_to_num(x), info.min, min(info.max, 2.0**53)).astype(source)
        assume(np.all((np.trunc(x.astype(np.float64)) >= info.min) & (np.trunc(x.astype(np.float64)) <= info.max)))
    attributes = {"to": _code(target)}
    if opset >= 19 and target in [np.dtype(t) for t in FLOAT8] and data.draw(st.booleans()):
        # onnxruntime refuses the attribute on other targets
        attributes["saturate"] = data.draw(st.sampled_from([0, 1]))
    _check("Cast", [x], attributes, opset)


@pytest.mark.parametrize("opset", [19, 21, 23, 24, 25])
@given(data=st.data())
def test_castlike_from_ml_types(opset, data):
    """CastLike out of bfloat16, float 8 and the sub-byte types, to floats and integers."""
    sources = _ml_types(opset)
    source = np.dtype(data.draw(st.sampled_from(sources)))
    # the reference evaluator cannot cast between two sub-byte integer types (ml_dtypes has no such cast)
    floats = [t for t in sources if "int" not in np.dtype(t).name]
    target = np.dtype(data.draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int8] + floats)))
    x = data.draw(_values(np.float32, low=-100, high=100, finite=True)).astype(source)
    _check("CastLike", [x, np.zeros(1, dtype=target)], {}, opset, constant_inputs=(1,))


@pytest.mark.parametrize("target", FLOAT8, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("saturate", [0, 1])
def test_float8_saturation_table(target, saturate):
    """The tables of the Cast specification: with saturate, infinities and overflows become the
    largest finite value; without it, NaN (E4M3FN and the FNUZ types) or infinity (E5M2)."""
    from cml_ops_std.conversion import cast_array

    largest = float(ml_dtypes.finfo(target).max)
    x = np.array([np.inf, -np.inf, 1e6, -1e6, np.nan, -0.0, largest], dtype=np.float32)
    got = cast_array(x, target, saturate).astype(np.float32)
    fnuz = "fnuz" in np.dtype(target).name
    if saturate:
        expected = [largest, -largest, largest, -largest, np.nan, 0.0 if fnuz else -0.0, largest]
    elif np.dtype(target) == np.dtype(ml_dtypes.float8_e5m2):
        expected = [np.inf, -np.inf, np.inf, -np.inf, np.nan, -0.0, largest]
    else:
        expected = [np.nan, np.nan, np.nan, np.nan, np.nan, 0.0 if fnuz else -0.0, largest]
    np.testing.assert_array_equal(got, np.array(expected, np.float32))
    assert np.signbit(got[5]) == np.signbit(np.float32(expected[5]))


@given(x=float_arrays(shapes(min_dims=1), np.float32, 2.0**-100, 2.0**100),
       round_mode=st.sampled_from(["up", "down", "nearest"]))
def test_cast_to_float8e8m0_rounding(x, round_mode):
    """Powers of two: up, down, or nearest (ties up), against the reference evaluator on normal
    positive values (its zero, infinity and subnormal rules are not the specification's; it fails on
    0-d tensors)."""
    _check("Cast", [np.abs(x)], {"to": TensorProto.FLOAT8E8M0, "round_mode": round_mode, "saturate": 1}, 24)


def test_float8e8m0_special_values():
    """The specification's table: saturate + up, and non-saturate + nearest."""
    from cml_ops_std.conversion import cast_array

    x = np.array([0.0, np.nan, np.inf, 2.0**128, 2.0**-130, 3.0, 0.75], dtype=np.float64)
    up = cast_array(x, ml_dtypes.float8_e8m0fnu, 1, "up").view(np.uint8)
    assert up.tolist() == [0, 255, 254, 254, 0, 129, 127]
    nearest = cast_array(x, ml_dtypes.float8_e8m0fnu, 0, "nearest").view(np.uint8)
    assert nearest.tolist() == [255, 255, 255, 255, 255, 129, 127]
    down = cast_array(np.array([3.0, 0.75]), ml_dtypes.float8_e8m0fnu, 1, "down").view(np.uint8)
    assert down.tolist() == [128, 126]


@given(data=st.data())
def test_cast_to_and_from_strings(data):
    """Numbers to strings (%.8g, NaN, INF, -INF) and back, against onnxruntime."""
    source = np.dtype(data.draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_])))
    x = data.draw(_values(source, finite=False, low=-(2.0**100), high=2.0**100))
    strings = _check("Cast", [x], {"to": TensorProto.STRING}, 13)[0]
    back = np.dtype(data.draw(st.sampled_from([np.float32, np.float64] if source.kind == "f" else
                                              [np.float32, np.float64, np.int64, np.int32])))
    _check("Cast", [strings], {"to": _code(back)}, 13)


def test_strings_with_special_literals_and_castlike():
    from cml_ops_std.conversion import cast_array

    text = np.array(["+INF", "inf", "-Inf", "NaN", "1e-5", " 2.5 ", "1E8"], dtype=object)
    got = cast_array(text, np.float32)
    np.testing.assert_array_equal(got, np.array([np.inf, np.inf, -np.inf, np.nan, 1e-5, 2.5, 1e8], np.float32))
    assert cast_array(np.array(["300", "-7", "2.7"], dtype=object), np.uint8).tolist() == [44, 249, 2]
    assert cast_array(np.array(["true", "0", "FALSE", "3"], dtype=object), np.bool_).tolist() == [True, False, False,
                                                                                                   True]
    with pytest.raises(ValueError, match="not a number"):
        cast_array(np.array(["Hello"], dtype=object), np.float32)
    like = _check("CastLike", [np.array([1.5, -np.inf], np.float32), np.array(["a"], dtype=object)], {}, 15,
                  constant_inputs=(1,))[0]
    assert like.tolist() == ["1.5", "-INF"]


@given(x=float_arrays(dtype=np.float32), target=st.sampled_from(["FLOAT", "DOUBLE", "INT32", "INT64", "BOOL",
                                                                 "float16", "Uint8"]))
def test_cast_1_takes_the_type_name(x, target):
    """Cast-1 names the type; it converts like Cast-6 (onnxruntime has no Cast-1 kernel)."""
    if target.upper() == "UINT8":
        x = np.abs(x)
    model = make_node_model("Cast", [x], {"to": getattr(TensorProto, target.upper())}, opset=6)
    expected = run_onnxruntime(model, feeds_of(model, [x]))[0]
    old = helper.make_model(
        helper.make_graph([helper.make_node("Cast", ["x0"], ["y0"], to=target)], "cast1",
                          [helper.make_tensor_value_info("x0", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y0", _code(expected.dtype), x.shape)]),
        opset_imports=[helper.make_opsetid("", 1)], ir_version=3)
    _assert_same(load_model(old).run(x)["y0"], expected, "Cast-1")


def test_cast_1_refuses_an_unknown_name():
    from cml_ops_std.conversion import cast_1

    with pytest.raises(ValueError, match="not an ONNX element type name"):
        cast_1(np.zeros(2, np.float32), to="REAL")


# -- Dropout ------------------------------------------------------------------------------------


def _old_dropout_model(opset, attributes, n_outputs, shape):
    outputs = [helper.make_tensor_value_info("y0", TensorProto.FLOAT, shape)]
    if n_outputs == 2:
        outputs.append(helper.make_tensor_value_info("y1", TensorProto.FLOAT, shape))
    node = helper.make_node("Dropout", ["x0"], [o.name for o in outputs], **attributes)
    graph = helper.make_graph([node], "dropout", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, shape)],
                              outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=3)


@pytest.mark.parametrize("opset", [1, 6, 7])
@given(x=float_arrays(shapes(min_dims=1)), ratio=float32s(0, 0.9), n_outputs=st.sampled_from([1, 2]))
def test_old_dropout_in_inference_is_the_identity(opset, x, ratio, n_outputs):
    """Dropout-1/6 with is_test=1 and Dropout-7: the data unchanged, the mask ones of the data's type;
    the data output against onnxruntime's Dropout-7."""
    attributes = {"ratio": ratio} | ({"is_test": 1} if opset < 7 else {})
    if opset == 1:
        attributes["consumed_inputs"] = [0]
    outputs = load_model(_old_dropout_model(opset, attributes, n_outputs, x.shape)).run(x)
    reference = make_node_model("Dropout", [x], {"ratio": ratio}, opset=7)
    _assert_same(outputs["y0"], run_onnxruntime(reference, feeds_of(reference, [x]))[0], f"Dropout-{opset}")
    if n_outputs == 2:
        _assert_same(outputs["y1"], np.ones(x.shape, np.float32), f"Dropout-{opset} mask")


@pytest.mark.parametrize("opset", [1, 6])
def test_old_training_dropout_is_refused_unless_the_ratio_is_zero(opset):
    from cml_core.errors import CmlError

    x = np.ones((2, 3), np.float32)
    module = load_model(_old_dropout_model(opset, {"ratio": 0.5}, 1, x.shape))
    with pytest.raises(CmlError, match="is_test=0 is training-mode dropout"):
        module.run(x)
    module = load_model(_old_dropout_model(opset, {"ratio": 0.0}, 1, x.shape))
    np.testing.assert_array_equal(module.run(x)["y0"], x)


@pytest.mark.parametrize("opset", [12, 13, 22])
@given(x=float_arrays(shapes(min_dims=1)), ratio=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
       seed=st.integers(0, 2**31 - 1), n_outputs=st.sampled_from([1, 2]))
def test_seeded_training_dropout_matches_the_reference(opset, x, ratio, seed, n_outputs):
    """training_mode true with a seed: the mask is numpy's RandomState(seed) draw, as the ONNX reference
    evaluator (and the backend cases) make it; a zero ratio keeps everything."""
    inputs = [x, np.array(ratio, np.float32), np.array(True)]
    model = make_node_model("Dropout", inputs, {"seed": seed}, opset=opset, constant_inputs=(1, 2),
                            n_outputs=n_outputs)
    got = run_cml(model, feeds_of(model, inputs))
    expected = ReferenceEvaluator(model).run(None, feeds_of(model, inputs))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=0)
        assert g.dtype == e.dtype


def test_training_dropout_on_encrypted_values_is_refused():
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3)).astype(np.float32)
    inputs = [x, np.array(0.5, np.float32), np.array(True)]
    module = load_model(make_node_model("Dropout", inputs, {"seed": 0}, opset=13, constant_inputs=(1, 2)))
    with pytest.raises(QuantizationError, match="only inference"):
        module.quantize(x, n_bits=8)
    inputs[1] = np.array(0.0, np.float32)
    module = load_model(make_node_model("Dropout", inputs, {"seed": 0}, opset=13, constant_inputs=(1, 2)))
    qmodule = module.quantize(x, n_bits=8)
    assert np.max(np.abs(qmodule(x) - x)) <= 2 / 255


# -- quantized casts ----------------------------------------------------------------------------


def _chain(nodes, inits, opset=18):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10))


def test_integer_casts_and_bitwise_ops_compose_into_one_lookup():
    """float -> Cast(uint8) -> BitwiseAnd(0b1100) -> BitwiseXor(3) -> Cast(float): one function of the
    input's integers (at most one lookup)."""
    nodes = [helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT8),
             helper.make_node("BitwiseAnd", ["u", "mask"], ["m"]),
             helper.make_node("BitwiseXor", ["m", "three"], ["v"]),
             helper.make_node("Cast", ["v"], ["y"], to=TensorProto.FLOAT)]
    inits = [helper.make_tensor("mask", TensorProto.UINT8, [], [12]),
             helper.make_tensor("three", TensorProto.UINT8, [], [3])]
    module = _chain(nodes, inits)
    x = np.random.default_rng(0).uniform(0, 15, (50, 3)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=8)
    x_hat = qmodule.input_quantizers[0].dequant(qmodule.quantize_input(x)).astype(np.float32)
    expected = module(x_hat)
    assert qmodule.lookup_count <= 1
    step = 15 / 255  # the output's range [3, 15] at 8 bits, halved
    assert np.max(np.abs(qmodule(x) - expected)) <= step


def test_cast_of_an_encrypted_value_to_strings_is_refused():
    nodes = [helper.make_node("Cast", ["x"], ["s"], to=TensorProto.STRING),
             helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)]
    module = _chain(nodes, [])
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3)).astype(np.float32)
    np.testing.assert_allclose(module(x), x, rtol=1e-7)
    with pytest.raises(QuantizationError, match="to strings"):
        module.quantize(x, n_bits=8)


@given(x=float_arrays(shapes(min_dims=1), np.float32, -500, 500), target=st.sampled_from(FLOAT8 + [ml_dtypes.bfloat16]))
def test_cast_through_float8_inside_a_quantized_model(x, target):
    """float -> Cast(float 8) -> Cast(float): the round trip is an element-wise function, quantized
    as a lookup; against the float model on the quantized input."""
    nodes = [helper.make_node("Cast", ["x"], ["q"], to=_code(target)),
             helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
    module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    assume(np.ptp(x) > 0)
    qmodule = module.quantize(x, n_bits=8)
    x_hat = qmodule.input_quantizers[0].dequant(qmodule.quantize_input(x)).astype(np.float32)
    expected = module(x_hat)
    low, high = qmodule.float_ranges["y"]
    assert np.max(np.abs(qmodule(x) - expected)) <= (high - low) / 255 / 2 + 1e-5 * max(abs(low), abs(high))
