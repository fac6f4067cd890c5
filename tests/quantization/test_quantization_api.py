"""QuantizedArray, settings, calibration data checks and the integer program's structure."""

import numpy as np
import onnx
import pytest
from cml_core.quantization import UniformQuantizer, context
from cml_core.quantization.context import bits_for_range, centring_offset
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from cml_core import QuantizationError, QuantizedArray, load_model


def test_quantized_array_roundtrip_error_is_at_most_half_a_step():
    values = np.linspace(-3.0, 5.0, 101)
    for n_bits in (2, 4, 8):
        qa = QuantizedArray(n_bits, values)
        assert qa.qvalues.min() >= 0 and qa.qvalues.max() <= 2**n_bits - 1
        assert np.max(np.abs(qa.dequant() - values)) <= qa.scale / 2 + 1e-12


def test_quantized_array_signed_symmetric():
    values = np.array([-2.0, -1.0, 0.0, 0.5, 2.0])
    qa = QuantizedArray(4, values, is_signed=True, is_symmetric=True)
    assert qa.zero_point == 0
    assert qa.qvalues.tolist() == [-7, -4, 0, 2, 7]


def test_quantized_array_from_known_integers():
    qa = QuantizedArray.from_integers(4, [0, 3, 15], scale=0.5, zero_point=3)
    np.testing.assert_allclose(qa.dequant(), [-1.5, 0.0, 6.0])
    assert qa.update_values([1.0]).tolist() == [5]
    with pytest.raises(QuantizationError, match="outside"):
        QuantizedArray.from_integers(4, [16], scale=1.0, zero_point=0)


@pytest.mark.parametrize("values", [[], [np.nan, 1.0], [np.inf]])
def test_quantized_array_rejects_unusable_values(values):
    with pytest.raises(QuantizationError):
        QuantizedArray(8, np.array(values, dtype=np.float64))


def test_constant_range_is_exact():
    q = UniformQuantizer.fit(2.5, 2.5, 4)
    assert q.dequant(q.quant(np.full(3, 2.5))).tolist() == [2.5, 2.5, 2.5]


def _gemm_relu_model(batch="n"):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b")
    w2 = numpy_helper.from_array(rng.normal(size=(3, 2)).astype(np.float32), "w2")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 2])], [w, b, w2])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=10))


@pytest.mark.parametrize("n_bits", [0, 25, 2.5, "8", {"op_inputs": 8}, {"op_inputs": 8, "op_weights": 8, "bogus": 1}])
def test_bad_n_bits(n_bits):
    with pytest.raises(QuantizationError):
        _gemm_relu_model().quantize(np.ones((4, 4), np.float32), n_bits=n_bits)


@pytest.mark.parametrize("rounding", [0, {"method": "exact"}, {"n_bits": 6, "method": "sloppy"}])
def test_bad_rounding(rounding):
    with pytest.raises(QuantizationError):
        _gemm_relu_model().quantize(np.ones((4, 4), np.float32), n_bits=6, rounding_threshold_bits=rounding)


@pytest.mark.parametrize("data,match", [
    (np.ones((4, 5), np.float32), "shape"),
    (np.ones((0, 4), np.float32), "empty"),
    (np.array([[np.nan, 0, 0, 0]], np.float32), "NaN"),
    (np.array([[np.inf, 0, 0, 0]], np.float32), "NaN or infinity"),
    ((np.ones((2, 4)), np.ones((2, 4))), "1 input"),
])
def test_bad_calibration_data(data, match):
    with pytest.raises(Exception, match=match) as info:
        _gemm_relu_model().quantize(data, n_bits=8)
    assert info.type.__module__.startswith("cml_core")


def test_constant_intermediate_tensor_is_handled():
    # all-zero inputs: every tensor is constant over calibration; no NaN may appear
    module = _gemm_relu_model()
    x = np.zeros((5, 4), np.float32)
    qmodule = module.quantize(x, n_bits=6)
    y = qmodule(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, module(x), atol=0.05 * (np.abs(module(x)).max() + 1e-3))


def test_three_steps_equal_forward_and_integers_are_integers():
    module = _gemm_relu_model()
    x = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    qmodule = module.quantize(x, n_bits={"model_inputs": 8, "op_inputs": 6, "op_weights": 6, "model_outputs": 8})
    q = qmodule.quantize_input(x)
    assert q.dtype == np.int64 and q.min() >= 0 and q.max() <= 255
    qy = qmodule.quantized_forward(q)
    assert qy.dtype.kind == "i"
    np.testing.assert_array_equal(qmodule.dequantize_output(qy), qmodule(x))
    assert qmodule.lookup_count == 1  # Gemm -> Relu -> requantize: one lookup
    report = qmodule.bitwidth_report()
    assert [(r.node, r.kind) for r in report] == [("fc1", "accumulator"), ("act", "lookup"), ("fc2", "accumulator")]
    assert "fc1" in str(report)


def test_rounding_lowers_lookup_bits():
    module = _gemm_relu_model()
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    plain = module.quantize(x, n_bits=8).bitwidth_report()
    rounded = module.quantize(x, n_bits=8, rounding_threshold_bits=5).bitwidth_report()
    lookup = [r for r in rounded if r.kind == "lookup"][0]
    assert plain.max_lookup_bits > 5
    assert lookup.lookup_bits <= 6 and lookup.lsbs_removed == plain.max_lookup_bits - 5


@pytest.mark.parametrize("bits", [3, 5, None])
def test_set_rounding_equals_quantizing_with_that_rounding(bits):
    module = _gemm_relu_model()
    x = np.random.default_rng(2).normal(size=(200, 4)).astype(np.float32)
    fresh = module.quantize(x, n_bits=8, rounding_threshold_bits=bits)
    changed = module.quantize(x, n_bits=8, rounding_threshold_bits=6).set_rounding(bits)
    assert changed.bitwidth_report() == fresh.bitwidth_report()
    assert np.array_equal(changed.quantized_forward(changed.quantize_input(x)),
                          fresh.quantized_forward(fresh.quantize_input(x)))


def test_set_rounding_per_lookup_and_bad_keys():
    module = _gemm_relu_model()
    x = np.random.default_rng(2).normal(size=(200, 4)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=8)
    qmodule.set_rounding({"act": 4}, method="approximate")  # by node name
    assert qmodule.rounding_bits() == {"r": 4} and not qmodule.config.rounding_exact
    assert "rounding=4 approximate" in repr(qmodule)
    with pytest.raises(QuantizationError, match="no rounded lookup named"):
        qmodule.set_rounding({"nope": 4})
    with pytest.raises(QuantizationError, match="positive int"):
        qmodule.set_rounding(0)
    with pytest.raises(QuantizationError, match="method"):
        qmodule.set_rounding(4, method="sloppy")


@given(st.integers(-5000, 5000), st.integers(0, 20000), st.one_of(st.none(), st.integers(2, 8)))
def test_centring_offset_keeps_the_grid_and_never_widens(low, width, rounding_bits):
    high = low + width
    offset = centring_offset(low, high, rounding_bits)
    after = bits_for_range(low + offset, high + offset)
    assert after <= bits_for_range(low, high)
    if rounding_bits is None:  # exact centring: the fewest signed bits that hold width + 1 values
        assert after <= max(2, width.bit_length())
    else:  # a multiple of the rounding step, so the rounding grid does not move
        assert offset % (1 << max(0, max(2, width.bit_length()) - rounding_bits)) == 0


def test_centring_gives_the_fewest_lookup_bits_and_leaves_the_integers_alone(monkeypatch):
    module = _gemm_relu_model()
    x = np.random.default_rng(3).normal(loc=2.0, size=(300, 4)).astype(np.float32)  # lopsided ReLU inputs
    centred = module.quantize(x, n_bits=8)
    monkeypatch.setattr(context, "centring_offset", lambda low, high, bits: 0)
    plain = module.quantize(x, n_bits=8)
    site_c, site_p = centred.sites["r"], plain.sites["r"]
    assert site_c.offset != 0 and site_p.lookup_bits == bits_for_range(site_p.low, site_p.high)
    assert site_c.lookup_bits == max(2, (site_c.high - site_c.low).bit_length()) <= site_p.lookup_bits
    np.testing.assert_array_equal(centred.quantized_forward(centred.quantize_input(x)),
                                  plain.quantized_forward(plain.quantize_input(x)))
