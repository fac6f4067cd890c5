"""A CNN quantized by onnxruntime's quantize_static (QDQ, per tensor and per channel) quantizes with the
model's own activation quantizers and compiles; simulation equals the clear integer program."""

import numpy as np
import pytest

from cml_core import load_model

torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")

pytestmark = pytest.mark.fhe


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 2, 3)
        self.conv2 = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.fc = torch.nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


class Samples(quantization.CalibrationDataReader):
    def __init__(self, x):
        self.samples = iter([{"x": x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.samples, None)


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_static_qdq_cnn_quantizes_and_compiles(per_channel, tmp_path):
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(40, 1, 6, 6)).astype(np.float32)
    float_path, qdq_path = tmp_path / "cnn.onnx", tmp_path / "cnn_qdq.onnx"
    torch.onnx.export(SmallCNN().eval(), torch.tensor(x[:1]), str(float_path), input_names=["x"], output_names=["y"],
                      opset_version=13, dynamo=False, dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    quantization.quantize_static(str(float_path), str(qdq_path), Samples(x[:16]),
                                 quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    module = load_model(qdq_path)
    exact = module.quantize(x, n_bits=8)
    # the activations use onnxruntime's uint8 quantizers, the input its own grid, the weights their
    # int8 integers and scales (per channel too): the integer program gives the QDQ model's numbers
    assert exact.stated_quantizers and all(q.n_bits <= 8 for q in exact.stated_quantizers.values())
    assert exact.snapped_inputs == {"x"}
    weights = {op.bound.name: op.state["W" if "W" in op.state else "B"] for op in exact.ops
               if op.bound.node.op_type in ("Conv", "Gemm")}
    assert len(weights) == 3 and all((np.ndim(scale) > 0) == per_channel for _, scale in weights.values())
    np.testing.assert_array_equal(exact(x), module(x))
    # its 8-bit codes make accumulators too wide to look up without rounding
    qmodule = module.quantize(x, n_bits=8, rounding_threshold_bits=6)
    assert np.mean(qmodule(x).argmax(1) == module(x).argmax(1)) >= 0.9
    qmodule.compile(x)
    q = qmodule.quantize_input(x[:3])
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), qmodule.quantized_forward(q))
