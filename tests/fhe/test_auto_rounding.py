"""Defaults compile: with no rounding set, lookups wider than 16 bits get the fewest bits that keep agreement with
the float model on the calibration data, reported by a RoundingWarning."""

import numpy as np
import pytest
from cml_core.demo import load_example
from cml_core.quantization.auto_rounding import AUTO_ROUNDING_DROP, too_wide_lookups
from onnx import TensorProto, helper, numpy_helper

from cml_core import BitWidthError, RoundingWarning, load_model


@pytest.fixture(scope="module")
def digits():
    model, data = load_example()
    return load_model(model), data


def _agreement(qmodule, module, x):
    return float(np.mean(qmodule(x).argmax(1) == module(x).argmax(1)))


def test_default_settings_compile_with_rounding_chosen_and_reported(digits):
    module, data = digits
    x = data["x_train"][:300]
    qmodule = module.quantize(x)  # n_bits 8, no rounding
    assert too_wide_lookups(qmodule)  # as it stands it cannot compile
    unrounded = _agreement(qmodule, module, x)
    with pytest.warns(RoundingWarning, match=r"rounded to \d+ bits \(exact\)"):
        qmodule.compile(x)
    choice = qmodule.auto_rounding
    assert choice is not None and set(choice.bits.values()) <= set(range(2, 17))
    assert qmodule.bitwidth_report().max_lookup_bits <= 16 and not too_wide_lookups(qmodule)
    # the agreement it reports is the rounded module's, within the documented drop of the unrounded one
    assert choice.agreement == pytest.approx(_agreement(qmodule, module, x))
    assert choice.unrounded_agreement == pytest.approx(unrounded)
    assert choice.agreement >= unrounded - AUTO_ROUNDING_DROP - 1e-12
    # one bit fewer everywhere would miss the target (the choice is the cheapest uniform one), unless at the floor
    fewest = min(choice.bits.values())
    if fewest > 2:
        qmodule.set_rounding({k: v - 1 for k, v in choice.bits.items()}, "exact")
        assert _agreement(qmodule, module, x) < unrounded - AUTO_ROUNDING_DROP
        qmodule.set_rounding(dict(choice.bits), "exact")
        qmodule.compile(x)
    q = qmodule.quantize_input(data["x_test"][:3])
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), qmodule.quantized_forward(q))


def test_auto_at_quantize_rounds_before_compile_and_leaves_a_model_that_fits_alone(digits):
    module, data = digits
    x = data["x_train"][:300]
    with pytest.warns(RoundingWarning):
        qmodule = module.quantize(x, rounding_threshold_bits="auto")
    assert qmodule.auto_rounding is not None and not too_wide_lookups(qmodule)
    small = module.quantize(x, n_bits=3, rounding_threshold_bits="auto")  # 3-bit lookups all fit: nothing to do
    assert small.auto_rounding is None and all(v is None for v in small.rounding_bits().values())


def test_a_multi_input_lookup_too_wide_is_named_not_rounded():
    # x * y of two encrypted 12-bit inputs is one two-input lookup of 24 bits: no rounding can narrow it
    graph = helper.make_graph([helper.make_node("Mul", ["x", "y"], ["z"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 2]) for n in ("x", "y")],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 2])])
    module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (20, 2)).astype(np.float32), rng.uniform(-1, 1, (20, 2)).astype(np.float32)
    qmodule = module.quantize((x, y), n_bits=12)
    with pytest.raises(BitWidthError, match=r"'Mul'|Mul"):
        qmodule.compile((x, y))
    assert qmodule.auto_rounding is None


def test_auto_rounding_of_a_regression_scores_r2(digits):
    module, data = digits
    x = data["x_train"][:200]
    # the first class score alone, as a regression output
    table = numpy_helper.from_array(np.array([0], np.int64), "first")
    model = module.onnx_model
    graph = helper.make_graph(
        [*model.graph.node, helper.make_node("Gather", [model.graph.output[0].name, "first"], ["score"], axis=1)],
        "regression", list(model.graph.input), [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])],
        [*model.graph.initializer, table])
    regression = load_model(helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version))
    with pytest.warns(RoundingWarning, match=r"R\^2"):
        qmodule = regression.quantize(x, rounding_threshold_bits="auto")
    choice = qmodule.auto_rounding
    expected = regression(x).ravel()
    r2 = 1 - np.sum((qmodule(x).ravel() - expected) ** 2) / np.sum((expected - expected.mean()) ** 2)
    assert choice.metric == "R^2" and choice.agreement == pytest.approx(r2)
    assert choice.agreement >= choice.unrounded_agreement - AUTO_ROUNDING_DROP - 1e-12


def test_an_accumulator_centred_into_16_bits_is_still_rounded():
    """A lopsided accumulator (17 bits as it is, 16 once centred by a constant) feeding a lookup: adding a
    constant leaves an encrypted value's bit width as it was, so concrete-python sees a 17-bit lookup and
    refused the circuit at the defaults; automatic rounding counts those bits and rounds it."""
    from cml_core.quantization.context import bits_for_range

    rng = np.random.default_rng(3)
    w = np.abs(rng.normal(size=(2, 2))) + 0.5
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Sigmoid", ["h"], ["s"]),
         helper.make_node("MatMul", ["s", "v"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(w.astype(np.float32), "w"), numpy_helper.from_array(np.float32([-1.0, 0.5]), "b"),
         numpy_helper.from_array(np.ones((2, 2), np.float32), "v")])
    module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10))
    x = rng.uniform(0.2, 1, (100, 2)).astype(np.float32)
    qmodule = module.quantize(x)  # n_bits 8, no rounding
    [site] = qmodule.sites.values()
    assert bits_for_range(site.low, site.high) == 17 and site.lookup_bits == 16
    assert site.encrypted_bits == 17 and too_wide_lookups(qmodule)
    with pytest.warns(RoundingWarning):
        qmodule.compile(x)
    [site] = qmodule.sites.values()
    assert site.lsbs_removed > 0 and qmodule.auto_rounding is not None
    q = qmodule.quantize_input(x[:10])
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), qmodule.quantized_forward(q))
