"""Encrypted data read at encrypted integer indices (GatherElements, Gather): a sum of two-input lookups,
one per position the indices can name; exact wherever the indices are."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from cml_core import load_model


def _model(nodes, inputs, output, out_shape, initializers=None, opset=13):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10))


def _float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _quantized_inputs(qmodule, inputs):
    """The inputs as the quantized model sees them (each through its input quantizer)."""
    q = qmodule.quantize_input(*inputs)
    q = q if isinstance(q, tuple) else (q,)
    return [quantizer.dequant(v).astype(np.float32) for quantizer, v in zip(qmodule.input_quantizers, q)]


def _away_from_integers(values, margin=1e-3):
    """Where ``values`` are not within ``margin`` of a whole number: there a Cast to an integer type is the same
    in float32 and in float64."""
    values = np.asarray(values, dtype=np.float64)
    return np.abs(values - np.rint(values)) > margin


@st.composite
def _data_and_indices(draw):
    """Encrypted data (n, size) and float indices in [-size, size) placed mid-way between integers."""
    n = draw(st.integers(2, 6))
    size = draw(st.integers(1, 6))
    count = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    data = rng.uniform(-3, 3, (n, size)).astype(np.float32)
    indices = (rng.integers(-size, size, (n, count)) + 0.5).astype(np.float32)
    return data, indices


def _gather_elements_of_cast(axis=1):
    return _model([helper.make_node("Floor", ["z"], ["f"]),
                   helper.make_node("Cast", ["f"], ["i"], to=TensorProto.INT64),
                   helper.make_node("GatherElements", ["x", "i"], ["y"], axis=axis)],
                  [_float_input("x", ["n", "k"]), _float_input("z", ["n", "t"])], "y", ["n", "t"])


@settings(max_examples=25, deadline=None)
@given(_data_and_indices(), st.sampled_from([4, 6, 8]))
def test_gather_elements_at_encrypted_indices_equals_the_float_model_on_quantized_inputs(example, n_bits):
    data, indices = example
    module = _gather_elements_of_cast()
    qmodule = module.quantize((data, indices), n_bits=n_bits)
    data_hat, indices_hat = _quantized_inputs(qmodule, (data, indices))
    exact = _away_from_integers(indices_hat)
    expected = module(data_hat, indices_hat)
    np.testing.assert_array_equal(qmodule(data, indices)[exact], expected[exact])


@settings(max_examples=15, deadline=None)
@given(_data_and_indices())
def test_gather_elements_needs_one_lookup_per_index_in_the_calibrated_range(example):
    data, indices = example
    module = _gather_elements_of_cast()
    qmodule = module.quantize((data, indices), n_bits=8)
    size = data.shape[1]
    span = np.arange(np.floor(indices.min()), np.floor(indices.max()) + 1)  # every index the calibrated range holds
    named = np.unique(np.clip(np.where(span < 0, span + size, span), 0, size - 1))
    if len(named) == 1:  # a single candidate is a layout
        assert qmodule.lookup_count == 0
    else:  # one per candidate, and one giving each index its candidate's rank when the rank needs fewer bits
        assert len(named) <= qmodule.lookup_count <= len(named) + 1


def test_indices_computed_from_the_data_itself():
    """x -> Round(x * 2 + 2) clipped to the axis -> Cast: the indices and the data share one encrypted input."""
    size = 5
    module = _model([helper.make_node("Mul", ["x", "two"], ["a"]),
                     helper.make_node("Add", ["a", "two"], ["b"]),
                     helper.make_node("Round", ["b"], ["r"]),
                     helper.make_node("Clip", ["r", "low", "high"], ["c"]),
                     helper.make_node("Cast", ["c"], ["i"], to=TensorProto.INT64),
                     helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1)],
                    [_float_input("x", ["n", size])], "y", ["n", size],
                    {"two": np.float32(2.0), "low": np.float32(0.0), "high": np.float32(size - 1)})
    x = np.random.default_rng(0).uniform(-1.2, 1.2, (60, size)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=8)
    (x_hat,) = _quantized_inputs(qmodule, (x,))
    exact = np.all(_away_from_integers(x_hat * 2 + 2 + 0.5, 1e-3), axis=1)  # no row with an index at a rounding tie
    np.testing.assert_array_equal(qmodule(x)[exact], module(x_hat)[exact])
    assert exact.mean() > 0.9


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_gather_elements_along_any_axis_but_the_batch(axis):
    rng = np.random.default_rng(1)
    data = rng.uniform(-2, 2, (5, 3, 4)).astype(np.float32)
    indices = (rng.integers(0, data.shape[axis], (5, 3, 4)) + 0.5).astype(np.float32)
    module = _model([helper.make_node("Floor", ["z"], ["f"]),
                     helper.make_node("Cast", ["f"], ["i"], to=TensorProto.INT64),
                     helper.make_node("GatherElements", ["x", "i"], ["y"], axis=axis)],
                    [_float_input("x", ["n", 3, 4]), _float_input("z", ["n", 3, 4])], "y", ["n", 3, 4])
    qmodule = module.quantize((data, indices), n_bits=8)
    data_hat, indices_hat = _quantized_inputs(qmodule, (data, indices))
    np.testing.assert_array_equal(qmodule(data, indices), module(data_hat, indices_hat))


def test_a_constant_table_at_encrypted_indices_is_read_position_by_position():
    table = np.arange(12, dtype=np.float32).reshape(3, 4) * 0.25 - 1
    module = _model([helper.make_node("Cast", ["z"], ["i"], to=TensorProto.INT64),
                     helper.make_node("GatherElements", ["t", "i"], ["y"], axis=1)],
                    [_float_input("z", [3, 2])], "y", [3, 2], {"t": table})
    z = (np.random.default_rng(3).integers(0, 4, (3, 2)) + 0.5).astype(np.float32)
    qmodule = module.quantize(z, n_bits=8)
    np.testing.assert_array_equal(qmodule(z), module(z))


@pytest.mark.parametrize("data_shape, axis, out_shape", [((5,), 0, ["n", 3]), ((2, 5), 1, [2, "n", 3])])
def test_gather_of_encrypted_data_at_encrypted_indices(data_shape, axis, out_shape):
    rng = np.random.default_rng(4)
    module = _model([helper.make_node("Floor", ["z"], ["f"]),
                     helper.make_node("Cast", ["f"], ["i"], to=TensorProto.INT64),
                     helper.make_node("Gather", ["x", "i"], ["y"], axis=axis)],
                    [_float_input("x", list(data_shape)), _float_input("z", ["n", 3])], "y", out_shape)
    data = rng.uniform(-2, 2, data_shape).astype(np.float32)
    indices = (rng.integers(-5, 5, (7, 3)) + 0.5).astype(np.float32)
    qmodule = module.quantize((data, indices), n_bits=8)
    data_hat, indices_hat = _quantized_inputs(qmodule, (data, indices))
    np.testing.assert_array_equal(qmodule(data, indices), module(data_hat, indices_hat))


def test_an_index_beyond_the_calibrated_range_reads_the_nearest_one_seen():
    data = np.array([[1.0, 2.0, 3.0, 4.0]] * 4, np.float32)
    module = _gather_elements_of_cast()
    calibration = np.array([[1.5], [2.5], [1.5], [2.5]], np.float32)
    qmodule = module.quantize((data, calibration), n_bits=8)
    beyond = np.array([[0.5], [3.5], [1.5], [2.5]], np.float32)  # indices 0 and 3: beyond calibration
    np.testing.assert_allclose(qmodule(data, beyond).ravel(), [2.0, 3.0, 2.0, 3.0], atol=0.05)


@pytest.mark.fhe
def test_gather_elements_at_encrypted_indices_compiles():
    rng = np.random.default_rng(5)
    data = rng.uniform(-2, 2, (30, 3)).astype(np.float32)
    indices = (rng.integers(0, 3, (30, 2)) + 0.5).astype(np.float32)
    module = _gather_elements_of_cast()
    qmodule = module.quantize((data, indices), n_bits=3)
    qmodule.compile((data, indices))
    np.testing.assert_array_equal(qmodule.forward(data[:3], indices[:3], fhe="simulate"),
                                  qmodule.forward(data[:3], indices[:3]))


@pytest.mark.fhe
def test_a_saved_selection_loads_and_runs_as_it_did(tmp_path):
    from cml_core.fhe.deploy import load_quantized

    rng = np.random.default_rng(6)
    data = rng.uniform(-2, 2, (30, 6)).astype(np.float32)
    indices = (rng.integers(0, 6, (30, 2)) + 0.5).astype(np.float32)
    qmodule = _gather_elements_of_cast().quantize((data, indices), n_bits=3)
    qmodule.compile((data, indices))
    qmodule.save(tmp_path / "model")
    restored = load_quantized(tmp_path / "model")
    np.testing.assert_array_equal(restored.forward(data, indices), qmodule.forward(data, indices))
    np.testing.assert_array_equal(restored.forward(data[:2], indices[:2], fhe="simulate"),
                                  qmodule.forward(data[:2], indices[:2]))
