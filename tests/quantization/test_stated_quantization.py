"""Models that state their own quantization (QuantizeLinear -> Clip -> DequantizeLinear, weights as
DequantizeLinear of integers): quantize() keeps the model's integers, scales and bit widths."""

import warnings

import numpy as np
import onnx
import pytest
from cml_core.deploy import Client
from cml_core.testing import run_onnxruntime
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from cml_core import CalibrationWarning, QuantizationError, load_model, load_quantized

INT_RANGES = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127)}
NUMPY = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8}


def _qdq(name, source, scale, zero_point, dtype, clip, nodes, inits):
    """source -> QuantizeLinear -> (Clip) -> DequantizeLinear -> name."""
    inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
              numpy_helper.from_array(np.array(zero_point, NUMPY[dtype]), f"{name}_z")]
    nodes.append(helper.make_node("QuantizeLinear", [source, f"{name}_s", f"{name}_z"], [f"{name}_q"]))
    codes = f"{name}_q"
    if clip is not None:
        inits += [numpy_helper.from_array(np.array(clip[0], NUMPY[dtype]), f"{name}_lo"),
                  numpy_helper.from_array(np.array(clip[1], NUMPY[dtype]), f"{name}_hi")]
        nodes.append(helper.make_node("Clip", [codes, f"{name}_lo", f"{name}_hi"], [f"{name}_c"]))
        codes = f"{name}_c"
    nodes.append(helper.make_node("DequantizeLinear", [codes, f"{name}_s", f"{name}_z"], [name]))


def _weight(name, codes, scale, nodes, inits):
    inits += [numpy_helper.from_array(codes, f"{name}_q"), numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s")]
    nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s"], [name]))


@st.composite
def activation(draw):
    dtype = draw(st.sampled_from(sorted(INT_RANGES)))
    low, high = INT_RANGES[dtype]
    zero_point = draw(st.integers(low, high)) if dtype == TensorProto.UINT8 else 0
    clip = None
    if draw(st.booleans()):  # a Clip narrowing the codes (Brevitas's QCDQ: 2 to 7 bits)
        bits = draw(st.integers(1, 7))
        lo = 0 if dtype == TensorProto.UINT8 else -(2 ** (bits - 1))
        clip = (lo, lo + 2**bits - 1)
    return 2.0 ** draw(st.integers(-6, 1)), zero_point, dtype, clip  # _qdq's order


@st.composite
def qdq_mlp(draw):
    """x -> QDQ -> Gemm(int8 weights, int32 bias) -> QDQ -> Gemm(int8 weights): scales are powers of two,
    so the float model's arithmetic is exact and the integer program must give the same numbers."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n_in, n_hidden, n_out = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    nodes, inits = [], []
    a = draw(activation())
    _qdq("a", "x", *a, nodes, inits)
    w_scale = 2.0 ** draw(st.integers(-6, 0))
    w_bits = draw(st.integers(2, 8))
    w1 = rng.integers(-(2 ** (w_bits - 1)) + 1, 2 ** (w_bits - 1), size=(n_in, n_hidden)).astype(np.int8)
    _weight("w1", w1, w_scale, nodes, inits)
    b_codes = rng.integers(-50, 50, size=n_hidden).astype(np.int32)
    inits += [numpy_helper.from_array(b_codes, "b_q"), numpy_helper.from_array(np.array(a[0] * w_scale, np.float32), "b_s")]
    nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"]))
    nodes.append(helper.make_node("Gemm", ["a", "w1", "b"], ["h"]))
    hidden = draw(activation())
    _qdq("hd", "h", *hidden, nodes, inits)
    w2 = rng.integers(-7, 8, size=(n_hidden, n_out)).astype(np.int8)
    _weight("w2", w2, 2.0 ** draw(st.integers(-4, 0)), nodes, inits)
    nodes.append(helper.make_node("Gemm", ["hd", "w2"], ["y"]))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    # inputs on the first quantizer's grid, spread over its whole code range
    scale, zero_point, dtype, clip = a
    low, high = clip if clip is not None else INT_RANGES[dtype]
    codes = rng.integers(low, high + 1, size=(40, n_in))
    x = (scale * (codes - zero_point)).astype(np.float32)
    return model, x, a, hidden, (w1, w2)


def _bits(dtype, clip):
    low, high = clip if clip is not None else INT_RANGES[dtype]
    return max(1, (high - low).bit_length()) if low >= 0 else max((-low - 1).bit_length(), high.bit_length()) + 1


@given(case=qdq_mlp(), n_bits=st.sampled_from([8, 5, 3]))
@settings(max_examples=40)
def test_qdq_chain_keeps_the_models_integers(case, n_bits):
    model, x, a, hidden, (w1, w2) = case
    module = load_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # n_bits below a stated width is reported (below)
        qmodule = module.quantize(x, n_bits=max(n_bits, 8 if a[3] is None else _bits(a[2], a[3]) + 1))
    # the weights are the model's integers, not requantized
    assert set(qmodule.stated_constants) >= {"w1", "w2"}
    np.testing.assert_array_equal(qmodule.stated_constants["w1"][0], w1.astype(np.int64))
    # the hidden activation has the model's own quantizer and bit width, whatever n_bits says
    stated = qmodule.stated_quantizers["hd"]
    assert stated.n_bits == _bits(hidden[2], hidden[3])
    assert (stated.scale, stated.zero_point) == (hidden[0], hidden[1])
    # on inputs the first quantizer keeps, the integer program gives the float model's numbers
    np.testing.assert_array_equal(qmodule(x), module(x))


def test_a_narrower_n_bits_than_the_model_states_is_reported_not_applied():
    nodes, inits = [], []
    _qdq("a", "x", 0.25, 0, TensorProto.UINT8, None, nodes, inits)
    nodes.append(helper.make_node("Relu", ["a"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    x = np.random.default_rng(0).uniform(0, 60, (30, 3)).astype(np.float32)
    with pytest.warns(CalibrationWarning, match=r"'a' \(8 bits\).*n_bits applies to the tensors the model leaves"):
        qmodule = module.quantize(x, n_bits=4)
    assert qmodule.stated_quantizers["a"].n_bits == 8


def _chain_into(op_type, extra_inputs, extra_inits, attributes=None):
    nodes, inits = [], list(extra_inits)
    inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes.append(helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]))
    nodes.append(helper.make_node(op_type, ["xq", *extra_inputs], ["y"], **(attributes or {})))
    return nodes, inits


def test_qoperator_and_dynamic_ops_on_encrypted_data_are_refused_naming_the_node():
    w = numpy_helper.from_array(np.ones((3, 2), np.uint8), "w")
    cases = {
        "MatMulInteger": (["w"], [w], TensorProto.INT32),
        "QLinearMatMul": (["s", "z", "w", "s", "wz", "s", "z"], [w, numpy_helper.from_array(np.array(0, np.uint8), "wz")],
                          TensorProto.UINT8),
    }
    x = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    for op_type, (names, extra, out_type) in cases.items():
        nodes, inits = _chain_into(op_type, names, extra)
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                                  [helper.make_tensor_value_info("y", out_type, ["n", 2])], inits)
        module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
        module(x)  # runs in float
        with pytest.raises(QuantizationError, match=rf"node '#1' \({op_type}\).*QDQ format"):
            module.quantize(x, n_bits=6)
    graph = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "ys", "yz"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, ["n", 3])])
    module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    with pytest.raises(QuantizationError, match="computes its scale from the values"):
        module.quantize(x, n_bits=6)


@pytest.mark.fhe
def test_qdq_model_compiles_without_rounding_simulates_and_round_trips(tmp_path):
    """3-bit activations and 3-bit weights: no lookup needs rounding to compile."""
    rng = np.random.default_rng(4)
    nodes, inits = [], []
    _qdq("a", "x", 0.25, 0, TensorProto.INT8, (-4, 3), nodes, inits)
    _weight("w1", rng.integers(-3, 4, size=(4, 6)).astype(np.int8), 0.5, nodes, inits)
    nodes.append(helper.make_node("Gemm", ["a", "w1"], ["h"]))
    _qdq("hd", "h", 0.5, 0, TensorProto.UINT8, (0, 7), nodes, inits)
    _weight("w2", rng.integers(-3, 4, size=(6, 3)).astype(np.int8), 0.5, nodes, inits)
    nodes.append(helper.make_node("Gemm", ["hd", "w2"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    x = rng.normal(size=(50, 4)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=8)
    assert qmodule.bitwidth_report().max_lookup_bits <= 8
    qmodule.compile(x)
    q = qmodule.quantize_input(x[:5])
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), qmodule.quantized_forward(q))
    folder = qmodule.save(tmp_path)
    loaded = load_quantized(folder)
    assert loaded.snapped_inputs == qmodule.snapped_inputs == {"x"}
    # the client quantizes with the model's own input grid, silently clipping what the model clips
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(Client(folder, keys=tmp_path / "keys").quantize(10 * x)[0],
                                      qmodule.quantize_input(10 * x))
    np.testing.assert_array_equal(loaded(x), qmodule(x))
    np.testing.assert_array_equal(loaded.forward(x[:3], fhe="simulate"), qmodule.forward(x[:3], fhe="simulate"))


def test_pytorch_quantized_export_quantizes_to_the_exported_models_outputs():
    """torch.ao's post-training quantization exported to ONNX (QDQ): the model's own quantizers and int8
    weights drive the integer program, which gives onnxruntime's outputs for the export exactly. (The torch
    model itself requantizes in fixed point: with this seed one of its 150 outputs is one step away from
    its own export's, in onnxruntime as here.)"""
    import io

    torch = pytest.importorskip("torch")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(50, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        prepared = prepare_fx(net, get_default_qconfig_mapping("qnnpack"), (x[:1],))
        prepared(x)
        quantized = convert_fx(prepared)
        buffer = io.BytesIO()
        torch.onnx.export(quantized, (x[:1],), buffer, dynamo=False, opset_version=13, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    expected = run_onnxruntime(onnx.load_from_string(buffer.getvalue()), {"x": x.numpy()})[0]
    module = load_model(buffer.getvalue())
    qmodule = module.quantize(x.numpy(), n_bits=8)
    assert qmodule.stated_quantizers and qmodule.stated_constants
    np.testing.assert_array_equal(qmodule(x.numpy()), expected)
