"""Masking values (an attention mask's -inf, or float32's lowest value) quantized apart from the data they mask.

A mask adds a huge negative value to the scores of the positions it hides: fitted as one range, the scores would
keep a few integers. Calibration sets the masking values aside, the tensor's quantizer keeps its data's
resolution and one more bit below it for the masking values, and a Softmax gives them probability 0 exactly.
"""

import numpy as np
import pytest
from cml_core.quantization.quantizers import MASK_LEVEL, UniformQuantizer
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from cml_core import load_model, load_quantized

LOWEST = float(np.finfo(np.float32).min)


def _masked_softmax(fill, op="Softmax"):
    """y = op(x + Where(keep, 0, fill)) over the last axis: x float scores, keep 0/1 integers."""
    nodes = [helper.make_node("Cast", ["keep"], ["b"], to=TensorProto.BOOL),
             helper.make_node("Where", ["b", "zero", "fill"], ["m"]),
             helper.make_node("Add", ["x", "m"], ["s"]),
             helper.make_node(op, ["s"], ["y"], axis=-1)]
    graph = helper.make_graph(
        nodes, "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6]),
                          helper.make_tensor_value_info("keep", TensorProto.INT64, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero"),
         numpy_helper.from_array(np.asarray(fill, np.float32), "fill")])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10))


def _scores_and_mask(seed, n, spread):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, 6)) * spread).astype(np.float32)
    keep = rng.integers(0, 2, (n, 6))
    keep[np.arange(n), rng.integers(0, 6, n)] = 1  # every row keeps a position (all -inf is NaN in float)
    return x, keep


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([-np.inf, LOWEST]), st.sampled_from([0.05, 1.0, 8.0]),
       st.sampled_from([6, 8, 10]))
def test_masked_softmax_gives_masked_positions_zero_and_keeps_the_scores_resolution(seed, fill, spread, n_bits):
    module = _masked_softmax(fill)
    x, keep = _scores_and_mask(seed, 40, spread)
    qmodule = module.quantize((x, keep), n_bits=n_bits)
    expected, got = module(x, keep), qmodule(x, keep)
    assert np.all(got[keep == 0] == 0)
    # each probability errs by the scores' step (exp's slope is at most the probability, below 1) and a few
    # output steps; with the mask in the scores' range the step would be float32's range over 2**n_bits
    span = float(x.max() - x.min())
    bound = 2 * span / (2**n_bits - 1) + 4 / (2**n_bits - 1)
    assert np.max(np.abs(got - expected)) <= bound


@pytest.mark.parametrize("fill", [-np.inf, LOWEST])
def test_masked_log_softmax_gives_masked_positions_the_mask_value(fill):
    module = _masked_softmax(fill, "LogSoftmax")
    x, keep = _scores_and_mask(3, 40, 1.0)
    qmodule = module.quantize((x, keep), n_bits=10)
    expected, got = module(x, keep), qmodule(x, keep)
    np.testing.assert_array_equal(got[keep == 0], expected[keep == 0])
    assert np.max(np.abs(got[keep == 1] - expected[keep == 1])) < 0.05


def test_masking_quantizer_keeps_data_integers_apart_from_the_mask():
    q = UniformQuantizer.masking(-2.0, 3.0, 8, LOWEST)
    assert q.n_bits == 9 and q.first_value_code == 256
    codes = q.quant([-np.inf, LOWEST, -MASK_LEVEL, -2.0, 3.0, -2.5, 9.0])
    np.testing.assert_array_equal(codes[:3], 0)  # masking values: the lowest integer
    assert codes[3] == 256 and codes[4] == 511 and codes[5] == 256 and codes[6] == 511  # data clipped to its range
    np.testing.assert_allclose(q.dequant(codes), [LOWEST] * 3 + [-2.0, 3.0, -2.0, 3.0], rtol=1e-12)
    assert q.quant_counting([-np.inf, -2.005, -2.5, 9.0])[1] == 2  # -2.5 and 9 saturate; a mask, a tenth of a step do not
    one = UniformQuantizer.masking(0.0, 0.0, 8, -np.inf)  # a mask of 0 or -inf needs one bit
    assert one.n_bits == 1
    np.testing.assert_array_equal(one.dequant(one.quant([0.0, -np.inf])), [0.0, -np.inf])


def test_a_saved_masked_softmax_loads_with_its_masking_quantizers(tmp_path):
    module = _masked_softmax(LOWEST)
    x, keep = _scores_and_mask(5, 30, 1.0)
    qmodule = module.quantize((x, keep), n_bits=3)
    qmodule.compile((x, keep))
    folder = qmodule.save(tmp_path / "masked")
    loaded = load_quantized(folder)
    np.testing.assert_array_equal(loaded(x, keep), qmodule(x, keep))
    simulated = qmodule(x[:4], keep[:4], fhe="simulate")
    np.testing.assert_array_equal(simulated, qmodule(x[:4], keep[:4]))
    assert np.all(simulated[keep[:4] == 0] == 0)


def test_token_ids_read_their_own_embedding_rows_outside_the_calibration_range_and_at_any_n_bits():
    table = np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["ids", "flat"], ["r"]), helper.make_node("Gather", ["table", "r"], ["y"])],
        "embed", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 4])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10))
    calibration = np.random.default_rng(1).integers(10, 50, (20, 3))
    ids = np.array([[0, 99, 5], [60, 10, 49]])
    for n_bits in (4, 8):  # 100 rows need 7 bits: the ids take them whatever n_bits (an index rounded is wrong)
        qmodule = module.quantize((calibration,), n_bits=n_bits)
        (quantizer,) = qmodule.input_quantizers
        assert (quantizer.n_bits, quantizer.scale, quantizer.zero_point) == (7, 1.0, 0)
        step = (table.max() - table.min()) / (2**n_bits - 1)
        np.testing.assert_allclose(qmodule(ids), module(ids), atol=step / 2 + 1e-6)
