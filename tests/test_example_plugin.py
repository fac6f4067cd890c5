"""The example third-party plugin, installed with pip, is found through its entry point and works
like any first-party op: loaded, run, quantized, listed."""

import numpy as np
import onnx
from cml_core.plugins import get_plugin_manager
from onnx import helper

from cml_core import get_registry, load_model


def _model():
    nodes = [helper.make_node("ScaledTanh", ["x"], ["t"], domain="com.example.cml", alpha=2.0, beta=0.5),
             helper.make_node("Relu", ["t"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 14),
                                                                  helper.make_opsetid("com.example.cml", 1)])


def test_discovered_through_its_entry_point():
    impl = get_registry().find("com.example.cml", "ScaledTanh", 1)
    assert impl is not None, "cml-ops-example is not installed (pip install -e examples/cml-ops-example)"
    assert impl.provider.distribution == "cml-ops-example"
    assert impl.provider.version == "0.1.0"
    assert any(p.distribution == "cml-ops-example" and p.error is None for p in get_plugin_manager().plugins)


def test_custom_op_loads_runs_and_quantizes():
    x = np.linspace(-3, 3, 30, dtype=np.float32).reshape(10, 3)
    module = load_model(_model())
    expected = np.maximum(2.0 * np.tanh(0.5 * x.astype(np.float64)), 0)
    np.testing.assert_allclose(module(x), expected, rtol=1e-6, atol=1e-6)
    qmodule = module.quantize(x, n_bits=8)
    assert np.max(np.abs(qmodule(x) - expected)) < 3 * 2 / 255  # a few input steps times the slope
