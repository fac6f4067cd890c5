"""Gather of a constant table at encrypted integer indices: a table lookup on the indices' integers."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from cml_core import load_model


def _model(nodes, inputs, output, initializers, out_shape, opset=13):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10))


def _float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _indices_between_integers(rng, n, size):
    """Floats k + 0.5: quantizing them moves them far less than to the next integer, so their Cast is exact."""
    return (rng.integers(0, size, (n, 3)) + 0.5).astype(np.float32)


@pytest.mark.parametrize("n_bits", [6, 8])
def test_cast_indices_read_a_constant_vector_exactly(n_bits):
    table = np.array([0.25, -1.5, 3.0, 7.75, -0.125], dtype=np.float32)
    module = _model([helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
                     helper.make_node("Gather", ["t", "i"], ["y"], axis=0)],
                    [_float_input("x", ["n", 3])], "y", {"t": table}, ["n", 3])
    x = _indices_between_integers(np.random.default_rng(0), 40, table.size)
    qmodule = module.quantize(x, n_bits=n_bits)
    np.testing.assert_array_equal(qmodule(x), module(x))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cast_indices_read_rows_or_columns_of_a_constant_matrix_exactly(axis):
    table = np.arange(12, dtype=np.float32).reshape(4, 3) * 0.5 - 2
    size = table.shape[axis]
    module = _model([helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
                     helper.make_node("Gather", ["t", "i"], ["y"], axis=axis)],
                    [_float_input("x", ["n", 3])], "y", {"t": table},
                    ["n", 3, 3] if axis == 0 else [4, "n", 3])
    x = _indices_between_integers(np.random.default_rng(1), 30, size)
    qmodule = module.quantize(x, n_bits=8)
    np.testing.assert_array_equal(qmodule(x), module(x))


def test_an_integer_model_input_indexes_a_constant_table_exactly():
    table = np.linspace(-3, 3, 10, dtype=np.float32)
    module = _model([helper.make_node("Gather", ["t", "i"], ["y"], axis=0)],
                    [helper.make_tensor_value_info("i", TensorProto.INT64, ["n", 2])], "y", {"t": table}, ["n", 2])
    indices = np.random.default_rng(2).integers(-10, 10, (50, 2))  # negative ones count from the end
    qmodule = module.quantize(indices, n_bits=8)
    np.testing.assert_array_equal(qmodule(indices), module(indices))


def test_a_tree_walk_of_gathers_composes_into_one_lookup():
    """Hummingbird's tree traversal: the next node is read from constant arrays at the current node's
    index; gathers of integers compose, and only the float output needs a lookup."""
    lefts = np.array([1, 3, 5, 3, 4, 5, 6], dtype=np.int64)
    values = np.array([0.0, 0.0, 0.0, -1.0, 2.0, 0.5, 4.0], dtype=np.float32)
    module = _model([helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
                     helper.make_node("Gather", ["lefts", "i"], ["j"], axis=0),
                     helper.make_node("Gather", ["lefts", "j"], ["k"], axis=0),
                     helper.make_node("Gather", ["values", "k"], ["y"], axis=0)],
                    [_float_input("x", ["n", 3])], "y", {"lefts": lefts, "values": values}, ["n", 3])
    x = _indices_between_integers(np.random.default_rng(3), 40, lefts.size)
    qmodule = module.quantize(x, n_bits=8)
    np.testing.assert_array_equal(qmodule(x), module(x))
    assert qmodule.lookup_count <= 1


def test_encrypted_data_at_constant_indices_stays_a_layout():
    module = _model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)],
                    [_float_input("x", ["n", 4])], "y", {"i": np.array([3, 0, -1], np.int64)}, ["n", 3])
    x = np.random.default_rng(4).uniform(-1, 1, (20, 4)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=8)
    x_hat = qmodule.input_quantizers[0].dequant(qmodule.quantize_input(x))
    np.testing.assert_allclose(qmodule(x), module(x_hat.astype(np.float32)), atol=1e-6)
    assert qmodule.lookup_count == 0
