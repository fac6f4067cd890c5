"""Fused ops quantized through the function bodies ONNX defines for them (Attention as MatMul, Softmax, MatMul)."""

import numpy as np
import onnx
import pytest
from cml_core.expansion import expand_nodes
from onnx import TensorProto, helper

from cml_core import load_model


def _attention_model(is_causal=0):
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, ["n", 2, 3, 4])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, ["n", 2, 5, 4])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, ["n", 2, 5, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 3, 4])
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attention", is_causal=is_causal)
    graph = helper.make_graph([node], "g", [q, k, v], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def _samples(n, seed):
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(-2, 2, (n, 2, length, 4)).astype(np.float32) for length in (3, 5, 5))


def test_the_expanded_body_computes_what_the_fused_op_does():
    model = _attention_model()
    expanded = expand_nodes(model, lambda node: node.op_type == "Attention")
    assert "Attention" not in {n.op_type for n in expanded.graph.node}
    onnx.checker.check_model(expanded)
    x = _samples(4, 0)
    np.testing.assert_allclose(load_model(expanded)(*x), load_model(model)(*x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_quantizes_through_its_body_and_converges_with_bits(is_causal):
    """A causal body masks the scores above the diagonal with -inf: masking values, kept apart from the scores."""
    module = load_model(_attention_model(is_causal))
    x = _samples(8, 2)
    # calibrated on the evaluated samples too: no intermediate is clipped, so what remains is quantization
    calibration = tuple(np.concatenate([c, e]) for c, e in zip(_samples(32, 1), x))
    y = module(*x)
    errors = {}
    for n_bits in (6, 10):
        qmodule = module.quantize(calibration, n_bits=n_bits)
        assert "Attention" not in {op.bound.node.op_type for op in qmodule.ops}
        errors[n_bits] = float(np.max(np.abs(qmodule(*x) - y)))
    # four more bits divide the quantization step by 16: the error follows it (no error floor)
    assert errors[10] < errors[6] / 4, errors
