"""Compilation with concrete-python: simulation equals clear integers, encryption equals simulation."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from cml_core import BitWidthError, compile_onnx_model, compile_torch_model, load_model

from .. import models

pytestmark = pytest.mark.fhe


def _model(nodes, inits, in_shape, out_shape, inputs=("x",)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, in_shape) for n in inputs],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)


RNG = np.random.default_rng(0)
FAMILIES = {
    # univariate chain after a linear op: Gemm -> Tanh -> Mul by constant -> Gemm
    "linear+univariate": (_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
         helper.make_node("Mul", ["t", "c"], ["m"]), helper.make_node("Gemm", ["m", "w2"], ["y"])],
        {"w": RNG.normal(size=(3, 4)), "b": RNG.normal(size=4), "c": np.array(1.5), "w2": RNG.normal(size=(4, 2))},
        ["n", 3], ["n", 2]), (3,)),
    # two encrypted operands: one multi-input lookup
    "encrypted-encrypted": (_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "x"], ["y"])], {},
        ["n", 4], ["n", 4]), (4,)),
    # convolution then a layout op
    "conv+layout": (_model(
        [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Reshape", ["r", "s"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"])],
        {"k": RNG.normal(size=(2, 1, 3, 3)), "s": np.array([-1, 32]), "w": RNG.normal(size=(32, 3))},
        ["n", 1, 4, 4], ["n", 3]), (1, 4, 4)),
}
FAMILIES["pooling"] = (_model(
    [helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], pads=[1, 1, 0, 0]),
     helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
     helper.make_node("GlobalMaxPool", ["x"], ["g"]),
     helper.make_node("GlobalAveragePool", ["a"], ["h"]),
     helper.make_node("Add", ["h", "g"], ["y"])], {}, ["n", 2, 4, 4], ["n", 2, 1, 1]), (2, 4, 4))
FAMILIES["layout"] = (_model(
    [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
     helper.make_node("Slice", ["t", "starts", "ends", "axes", "steps"], ["s"]),
     helper.make_node("Gather", ["s", "idx"], ["g"], axis=2),  # (n, 2, 2)
     helper.make_node("Pad", ["g", "pads"], ["p"]),
     helper.make_node("Concat", ["p", "p"], ["c"], axis=1),
     helper.make_node("Split", ["c"], ["c1", "c2"], axis=1),
     helper.make_node("Unsqueeze", ["c1", "ax"], ["u"]),
     helper.make_node("Squeeze", ["u", "ax"], ["q"]),
     helper.make_node("Flatten", ["q"], ["f"]),
     helper.make_node("Gemm", ["f", "w"], ["y"])],
    {"starts": np.array([0]), "ends": np.array([4]), "axes": np.array([1]), "steps": np.array([2]),
     "idx": np.array([1, 0]), "pads": np.array([0, 1, 0, 0, 0, 1]), "ax": np.array([1]),
     "w": RNG.normal(size=(9, 2))},
    ["n", 2, 4], ["n", 2]), (2, 4))
for name in ("layout",):
    for init in FAMILIES[name][0].graph.initializer:
        if init.name != "w":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.int64), init.name))
FAMILIES["conv+layout"][0].graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([-1, 32], np.int64), "s"))


HEAVY = {"conv+layout", "pooling"}  # larger circuits: key generation takes a minute or more


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in HEAVY else f for f in FAMILIES])
def test_simulation_equals_clear_and_execution_equals_simulation(family):
    model, shape = FAMILIES[family]
    x = np.random.default_rng(1).uniform(-1, 1, size=(40, *shape)).astype(np.float32)
    qmodule = compile_onnx_model(model, x, n_bits=3)
    q = qmodule.quantize_input(x)
    clear = qmodule.quantized_forward(q)
    simulated = qmodule.quantized_forward(q, fhe="simulate")
    np.testing.assert_array_equal(simulated, clear)
    executed = qmodule.quantized_forward(q[:2], fhe="execute")
    np.testing.assert_array_equal(executed, simulated[:2])
    np.testing.assert_array_equal(qmodule.forward(x[:2], fhe="execute"), qmodule.forward(x[:2]))
    # lookups in the integer program are programmable bootstraps in the circuit, and only they are
    pbs = qmodule.fhe_circuit.statistics["programmable_bootstrap_count"]
    assert (pbs > 0) == (qmodule.lookup_count > 0 or family == "pooling")


def test_bit_width_error_names_the_node_and_the_ways_out():
    x_train, _, _, _ = models.digits()
    qmodule = load_model(models.digits_mlp("ReLU")).quantize(x_train, n_bits=8)
    with pytest.raises(BitWidthError, match=r"node '/1/Relu' \(Relu\) needs a 1[7-9]-bit.*rounding_threshold_bits"):
        qmodule.compile(x_train[:100])


def test_compile_torch_model_and_progress(capsys):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = np.random.default_rng(0).uniform(-1, 1, size=(30, 4)).astype(np.float32)
    qmodule = compile_torch_model(net, x, n_bits=3, rounding_threshold_bits=3)
    assert capsys.readouterr().err == ""
    expected = net(torch.tensor(x)).detach().numpy()
    got = qmodule.forward(x, fhe="simulate")
    assert np.max(np.abs(got - expected)) < 0.5 * np.abs(expected).max()
    qmodule.compile(x, verbose=True)
    qmodule.forward(x[:1], fhe="execute")
    err = capsys.readouterr().err
    assert "compiled" in err and "keys ready" in err and "encrypted sample 1/1" in err
