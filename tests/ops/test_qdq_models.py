"""A small float CNN quantized by onnxruntime's tools (QDQ, QOperator, dynamic), run here and in onnxruntime."""

import numpy as np
import pytest

from cml_core import load_model

from .known_disagreements import ONNXRUNTIME_SATURATES_U8S8

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

SHAPE = (1, 1, 8, 8)


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, 3)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.flatten(x, 1))


class RandomData(quantization.CalibrationDataReader):
    def __init__(self, name, n=16, seed=1):
        rng = np.random.default_rng(seed)
        self.samples = iter([{name: rng.normal(size=SHAPE).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.samples, None)


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qdq") / "cnn.onnx"
    torch.onnx.export(SmallCNN().eval(), torch.zeros(SHAPE), str(path), input_names=["x"], output_names=["y"],
                      opset_version=13, dynamo=False)
    return path


# Where onnxruntime's uint8 x int8 kernels saturate (x86 without VNNI), its integer results are not exact and it
# cannot judge a model with full-range int8 weights: the weights are then quantized to 7 bits (its tools'
# reduce_range, meant for such CPUs), whose products with uint8 cannot saturate; cml's ops on full-range int8 are
# judged in the op tests (test_ops_vs_onnxruntime) on such CPUs too.
REDUCE_RANGE = ONNXRUNTIME_SATURATES_U8S8


def _quantized(float_model, kind):
    target = float_model.with_name(f"cnn_{kind}.onnx")
    if kind == "dynamic":
        quantization.quantize_dynamic(str(float_model), str(target), weight_type=quantization.QuantType.QInt8,
                                      reduce_range=REDUCE_RANGE)
        return target
    formats = {"qdq_tensor": (quantization.QuantFormat.QDQ, False),
               "qdq_channel": (quantization.QuantFormat.QDQ, True),
               "qoperator": (quantization.QuantFormat.QOperator, False),
               "qoperator_channel": (quantization.QuantFormat.QOperator, True)}
    quant_format, per_channel = formats[kind.removesuffix("_conv_only")]
    # QOperator turns Gemm into com.microsoft's QGemm, which no plugin provides: "_conv_only" leaves it float
    ops = ["Conv", "Relu"] if kind.endswith("_conv_only") else None
    quantization.quantize_static(str(float_model), str(target), RandomData("x"), quant_format=quant_format,
                                 per_channel=per_channel, activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8, op_types_to_quantize=ops,
                                 reduce_range=REDUCE_RANGE)
    return target


def _onnxruntime_every_tensor(path, x):
    """onnxruntime's value of every tensor of the model (each made a graph output), graph optimizations off."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    known = {o.name for o in model.graph.output}
    produced = {name for node in model.graph.node for name in node.output}  # the tools leave stale value_info
    model.graph.output.extend(vi for vi in model.graph.value_info if vi.name in produced - known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"x": x}))), model


def _accumulation_bound(node, inputs, attributes):
    """For a float Conv or Gemm, per output element, the largest error float32 accumulation may make in any
    order: n * eps * (the op on |inputs|) + eps * |bias|, n the number of products summed, in float64."""
    from cml_ops_std.conv import conv_attributes, conv_nd

    eps = np.finfo(np.float32).eps
    a, b = (np.abs(np.asarray(v, np.float64)) for v in inputs[:2])
    bias = np.abs(np.asarray(inputs[2], np.float64)) if len(inputs) > 2 and inputs[2] is not None else 0.0
    if node.op_type == "Gemm":
        a = a.T if attributes.get("transA") else a
        b = b.T if attributes.get("transB") else b
        return a.shape[1] * eps * (a @ b) + eps * bias
    _, strides, dilations, pads = conv_attributes(
        a.shape, b.shape, attributes.get("auto_pad", b"NOTSET").decode(), attributes.get("dilations"),
        attributes.get("kernel_shape"), attributes.get("pads"), attributes.get("strides"))
    magnitude = conv_nd(a, b, strides=strides, pads=pads, dilations=dilations, group=attributes.get("group", 1))
    bias = np.reshape(bias, (-1,) + (1,) * (magnitude.ndim - 2)) if np.ndim(bias) else bias
    return np.prod(b.shape[1:]) * eps * magnitude + eps * bias


def _check_each_node(model, values):
    """Each node, run here on onnxruntime's values of its inputs, gives onnxruntime's outputs: exactly, but
    for a float Conv or Gemm (within its float32 accumulation bound). Returns the op types checked."""
    from cml_core.testing import make_node_model, run_cml
    from onnx import helper, numpy_helper

    values = {**{t.name: numpy_helper.to_array(t) for t in model.graph.initializer}, **values}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    for node in model.graph.node:
        inputs = [values[name] if name else None for name in node.input]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        one = make_node_model(node.op_type, inputs, attributes, opset=opset, n_outputs=len(node.output),
                              constant_inputs=tuple(range(len(inputs))))
        for name, got in zip(node.output, run_cml(one, {})):
            want = values[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            if node.op_type in ("Conv", "Gemm") and want.dtype.kind == "f":
                bound = _accumulation_bound(node, inputs, attributes)
                assert np.all(np.abs(got.astype(np.float64) - want) <= bound), name
            else:
                np.testing.assert_array_equal(got, want, err_msg=f"{name} ({node.op_type})")
    return {node.op_type for node in model.graph.node}


QUANTIZATION_OPS = {"qdq_tensor": {"QuantizeLinear", "DequantizeLinear"},
                    "qdq_channel": {"QuantizeLinear", "DequantizeLinear"},
                    "qoperator_conv_only": {"QuantizeLinear", "QLinearConv", "DequantizeLinear"},
                    "qoperator_channel_conv_only": {"QuantizeLinear", "QLinearConv", "DequantizeLinear"},
                    "dynamic": {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}}


@pytest.mark.parametrize("kind", list(QUANTIZATION_OPS))
def test_quantized_cnn_matches_onnxruntime(float_model, kind):
    """Node by node on onnxruntime's inputs: quantization ops and every integer result exactly, a float Conv
    or Gemm (summing dequantized products in an order of its own in each library) within float32 rounding.

    End to end, the model's output equals onnxruntime's exactly for these weights and input: none of their float
    Conv or Gemm results falls within its rounding of a quantization tie, where the two libraries' sums could
    round to neighbouring steps.
    """
    path = _quantized(float_model, kind)
    x = np.random.default_rng(2).normal(size=SHAPE).astype(np.float32) * 1.5
    expected, model = _onnxruntime_every_tensor(path, x)
    ops = _check_each_node(model, {"x": x, **expected})
    assert QUANTIZATION_OPS[kind] <= ops, ops
    got = load_model(str(path)).run(x)
    if kind.endswith("_conv_only"):  # the float Gemm's sum is the last step: rounding, no quantization after it
        bound = _accumulation_bound(*_last_gemm(model, {"x": x, **expected}))
        assert np.all(np.abs(got["y"].astype(np.float64) - expected["y"]) <= bound)
    else:
        np.testing.assert_array_equal(got["y"], expected["y"])


def _last_gemm(model, values):
    from onnx import helper, numpy_helper

    values = {**{t.name: numpy_helper.to_array(t) for t in model.graph.initializer}, **values}
    (node,) = [n for n in model.graph.node if n.op_type == "Gemm"]
    return node, [values[n] for n in node.input], {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("kind", ["qoperator", "qoperator_channel"])
def test_qoperator_gemm_needs_com_microsoft_qgemm(float_model, kind):
    """QOperator quantizes Gemm to com.microsoft's QGemm, outside ONNX's standard domain: refused by name."""
    from cml_core import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match="com.microsoft::QGemm"):
        load_model(str(_quantized(float_model, kind)))


def test_qlinear_matmul_multiplier_in_the_scales_bfloat16():
    """Found under a random seed: with bfloat16 scales the multiplier 1.5 * 5.9375 is 8.875 (bfloat16), so
    an accumulator of 12 requantizes to 106 as onnxruntime and the reference evaluator give, not 107."""
    import ml_dtypes
    from cml_core.testing import check_op

    bf16 = ml_dtypes.bfloat16
    inputs = [np.array([0], np.uint8), np.array(1.5, dtype=bf16), np.array(3, np.uint8), np.array([[0, 0]], np.uint8),
              np.array([5.9375, 1], dtype=bf16), np.array([4, 4], np.uint8), np.array(1, dtype=bf16),
              np.array(0, np.uint8)]
    got = check_op("QLinearMatMul", inputs, {}, opset=21, constant_inputs=(1, 2, 4, 5, 6, 7))
    np.testing.assert_array_equal(got[0], np.array([106, 18], np.uint8))
