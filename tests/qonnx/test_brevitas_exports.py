"""Brevitas QAT models exported to QONNX run through cml exactly as Brevitas runs them in torch.

Each model gets a few training steps on random data (so the activation quantizers have collected
their ranges), is put in eval mode, exported, loaded with ``cml_core.load_model``, and its
``NumpyModule`` output compared with the Brevitas model's own forward pass. The QONNX ops compute
in float32 in the order Brevitas does, so the only differences allowed are float32 rounding in the
standard ops between quantizers (Gemm and Conv sum in a different order than torch).
"""

import functools

import numpy as np
import onnx
import pytest
import torch
from cml_core.testing import assert_close

from cml_core import UnsupportedOpError, load_model

qnn = pytest.importorskip("brevitas.nn", reason="brevitas builds the QAT models (installed by ./dev)")
from brevitas.export import export_onnx_qcdq, export_qonnx  # noqa: E402
from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst  # noqa: E402

QONNX = "qonnx.custom_op.general"
BITS = [2, 3, 4]


class MLP(torch.nn.Module):
    input_shape = (8,)

    def __init__(self, bits):
        super().__init__()
        self.quant_input = qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)
        self.fc1 = qnn.QuantLinear(8, 16, bias=True, weight_bit_width=bits, return_quant_tensor=True)
        self.relu1 = qnn.QuantReLU(bit_width=bits, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(16, 12, bias=True, weight_bit_width=bits, return_quant_tensor=True)
        self.relu2 = qnn.QuantReLU(bit_width=bits, return_quant_tensor=True)
        self.fc3 = qnn.QuantLinear(12, 3, bias=True, weight_bit_width=bits)

    def forward(self, x):
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(self.quant_input(x))))))


class CNN(torch.nn.Module):
    """Two convolutions with an average pool between them whose sum Brevitas requantizes with Trunc."""

    input_shape = (1, 8, 8)

    def __init__(self, bits):
        super().__init__()
        self.quant_input = qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)
        self.conv1 = qnn.QuantConv2d(1, 4, 3, weight_bit_width=bits, return_quant_tensor=True)
        self.relu1 = qnn.QuantReLU(bit_width=bits, return_quant_tensor=True)
        self.pool = qnn.TruncAvgPool2d(2, bit_width=bits, return_quant_tensor=True)
        self.conv2 = qnn.QuantConv2d(4, 6, 3, weight_bit_width=bits, return_quant_tensor=True)
        self.relu2 = qnn.QuantReLU(bit_width=bits, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(6, 3, bias=True, weight_bit_width=bits)

    def forward(self, x):
        y = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(self.quant_input(x))))))
        return self.fc(y.flatten(1))


class BinaryMLP(torch.nn.Module):
    """Binary weights and activations: Brevitas exports their quantizers as BipolarQuant.

    The first layer sums an odd number of +-1 x +-0.1 products, so no pre-activation is 0: with an even fan-in a
    quarter of them are (4 products of each sign), and float32 leaves such a sum at 0 or +-1.5e-8 by the order it
    adds in (torch's and this library's differ by CPU), which the sign activation turns into a step of 2.
    """

    input_shape = (9,)

    def __init__(self, bits=1):
        super().__init__()
        self.quant_input = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)
        self.fc1 = qnn.QuantLinear(9, 16, bias=False, weight_quant=SignedBinaryWeightPerTensorConst,
                                   return_quant_tensor=True)
        self.act1 = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(16, 3, bias=True, weight_quant=SignedBinaryWeightPerTensorConst)

    def forward(self, x):
        return self.fc2(self.act1(self.fc1(self.quant_input(x))))


ARCHITECTURES = {"mlp": MLP, "cnn": CNN, "binary_mlp": BinaryMLP}


@functools.cache
def trained(arch, bits):
    """A model after a few SGD steps on random data, in eval mode, and a batch to run it on."""
    torch.manual_seed(1000 * bits + len(arch))
    model = ARCHITECTURES[arch](bits)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(8):
        x = 2 * torch.randn(32, *model.input_shape)
        loss = (model(x) - torch.randn(32, 3)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, 2 * torch.randn(64, *model.input_shape)


def brevitas_output(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "value", out).numpy()  # a QuantTensor when the last layer returns one


def max_difference(got, expected):
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))


CASES = [("mlp", b) for b in BITS] + [("cnn", b) for b in BITS] + [("binary_mlp", 1)]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("arch, bits", CASES)
def test_qonnx_export_runs_like_brevitas(arch, bits, exporter, tmp_path, record_property):
    model, x = trained(arch, bits)
    path = tmp_path / f"{arch}_{bits}.onnx"
    # the batch is fixed by the export; its values do not matter, an eval-mode model has fixed ranges
    export_qonnx(model, input_t=x, export_path=str(path), dynamo=exporter == "dynamo")

    exported = onnx.load(path)
    opsets = {o.domain: o.version for o in exported.opset_import}
    assert opsets[QONNX] == 2, "Brevitas 0.13 writes its QONNX ops at domain version 2"
    ops = {n.op_type for n in exported.graph.node if n.domain == QONNX}
    expected_ops = {"BipolarQuant"} if arch == "binary_mlp" else {"Quant", "Trunc"} if arch == "cnn" else {"Quant"}
    assert ops == expected_ops

    expected = brevitas_output(model, x)
    got = load_model(path)(x.numpy())
    record_property("max_difference", max_difference(got, expected))
    assert_close(got, expected, what=f"{arch} at {bits} bits ({exporter})")
    assert len(np.unique(got)) > 3, "degenerate model: the comparison would prove little"


@pytest.mark.parametrize("arch, bits", [c for c in CASES if c[0] != "binary_mlp"])
def test_qcdq_export_loads(arch, bits, tmp_path):
    model, x = trained(arch, bits)
    path = tmp_path / f"{arch}_{bits}_qcdq.onnx"
    export_onnx_qcdq(model, input_t=x, export_path=str(path))
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    try:
        module = load_model(path)
    except UnsupportedOpError as exc:
        missing = {op_type for _, op_type, _, _ in exc.missing}
        if missing <= {"QuantizeLinear", "DequantizeLinear"}:
            pytest.xfail(f"cml_ops_std does not register {sorted(missing)} yet: {exc}")
        raise
    assert module(x.numpy()).shape == brevitas_output(model, x).shape
