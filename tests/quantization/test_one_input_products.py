"""Softmax and LayerNormalization without their two-input lookups, where that errs no more.

A two-input lookup runs on its operands' bits packed (``2 * n``) and is never rounded: at n_bits 6 a
transformer block's softmax and normalizations each needed 12-bit lookups. Softmax's value is a function of
one integer when the row's ``log(sum)`` is counted in (a fraction of) the input's steps; a normalization's
product of each deviation by its row's normalizer is made exactly from two narrower lookups and left to the
next lookup, which rounds it. Each is chosen when it errs on the calibration data no more than the
two-input lookup, and, where the two-input lookup would read more bits than the rounding asks for (or 16),
the one-input way that errs least; these tests compare both against the float model.
"""

import numpy as np
import pytest
from cml_ops_std.normalization import QuantizedNormalization
from cml_ops_std.reductions import QuantizedSoftmax
from onnx import TensorProto, helper, numpy_helper

from cml_core import load_model


def _model(nodes, in_shape, out_shape, initializers, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in initializers.items()])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10))


def _attention(tokens=8, features=16, seed=0, mask=None, score_std=1.0, after_softmax=()):
    """Softmax over scores ``x @ w`` of ``tokens`` positions (standard deviation about ``score_std``; ``mask`` added to
    them), times values ``x @ v``; ``after_softmax``: nodes between the two (from ``p`` to ``read``) and their
    constants, as pairs."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"]), helper.make_node("MatMul", ["x", "v"], ["values"])]
    weights = {"w": rng.normal(0, score_std / np.sqrt(features), (features, tokens)),
               "v": rng.normal(0, 1 / np.sqrt(features), (features, features))}
    if mask is not None:
        nodes.append(helper.make_node("Add", ["s", "m"], ["masked"]))
        weights["m"] = np.asarray(mask, np.float32)
    nodes.append(helper.make_node("Softmax", ["masked" if mask is not None else "s"], ["p"], axis=-1))
    for node, constants in after_softmax:
        nodes.append(node)
        weights.update(constants)
    nodes.append(helper.make_node("MatMul", ["read" if after_softmax else "p", "values"], ["y"]))
    module = _model(nodes, ["n", tokens, features], ["n", tokens, features], weights)
    return module, rng.normal(size=(200, tokens, features)).astype(np.float32)


def _self_attention_scores(tokens=17, features=16, seed=0, weight_std=0.05):
    """Softmax over encrypted scores ``(x @ wq) @ (x @ wk)^T`` of ``tokens`` positions (both projections of
    standard deviation ``weight_std / sqrt(features)``: at 0.05, an attention at initialization, nearly uniform), times
    a clear matrix."""
    rng = np.random.default_rng(seed)
    weights = {"wq": rng.normal(0, weight_std / np.sqrt(features), (features, features)),
               "wk": rng.normal(0, weight_std / np.sqrt(features), (features, features)),
               "c": rng.normal(size=(tokens, features))}
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "c"], ["y"])]
    module = _model(nodes, ["n", tokens, features], ["n", tokens, features], weights)
    return module, rng.normal(size=(200, tokens, features)).astype(np.float32)


def _normalization(tokens=8, features=32, seed=0):
    """LayerNormalization (scale and bias per feature) of rows of different scales."""
    rng = np.random.default_rng(seed)
    module = _model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)],
                    ["n", tokens, features], ["n", tokens, features],
                    {"g": rng.uniform(0.5, 1.5, features), "b": rng.normal(0, 0.1, features)})
    x = rng.normal(size=(200, tokens, features)) * rng.uniform(0.5, 2.0, (200, tokens, 1))
    return module, x.astype(np.float32)


def _packed(qmodule, op_type):
    return [site for site in qmodule.sites.values() if site.op_type == op_type and site.packed_bits is not None]


@pytest.mark.parametrize("n_bits, rounding", [(6, None), (6, 6), (8, None)])
def test_softmax_is_a_one_input_lookup_as_accurate_as_the_two_input_one(monkeypatch, n_bits, rounding):
    module, x = _attention()
    expected = module(x)
    qmodule = module.quantize(x, n_bits=n_bits, rounding_threshold_bits=rounding)
    [softmax] = [op for op in qmodule.ops if "refinement" in op.state]
    assert softmax.state["refinement"] is not None and not _packed(qmodule, "Softmax")
    [shifted] = [site for site in qmodule.sites.values() if site.op_type == "Softmax" and site.exact]
    assert shifted.input_bits < 2 * n_bits and shifted.lsbs_removed == 0
    monkeypatch.setattr(QuantizedSoftmax, "MAX_REFINEMENT", -1)  # no refinement tried: the two-input lookup
    two_input = module.quantize(x, n_bits=n_bits, rounding_threshold_bits=rounding)
    assert len(_packed(two_input, "Softmax")) == 1
    # chosen on the softmax's own largest error; through the product with the values, the mean error of the
    # two ways differs by the noise of their roundings (within 1% on these data)
    assert np.abs(qmodule(x) - expected).mean() <= 1.01 * np.abs(two_input(x) - expected).mean()


def test_scores_too_coarse_for_a_narrow_shift_keep_the_two_input_lookup():
    """Scores of standard deviation 3 at n_bits 6: the row's log(sum) in steps fine enough to err as little
    as the two-input lookup would need about as many bits as it packs."""
    module, x = _attention(score_std=3.0)
    qmodule = module.quantize(x, n_bits=6)
    assert [op.state["refinement"] for op in qmodule.ops if "refinement" in op.state] == [None]
    assert len(_packed(qmodule, "Softmax")) == 1


@pytest.mark.parametrize("n_bits", [4, 6, 8])
def test_a_masked_key_gets_probability_zero(n_bits):
    """An attention mask (-inf) on key 2: its probability is exactly 0 in the integer program (its gap capped,
    then shifted), so the other queries' outputs do not change when that token's input does (its row of
    scores and its values do)."""
    module, x = _attention(tokens=4, features=8, mask=[0.0, 0.0, -np.inf, 0.0])
    qmodule = module.quantize(x, n_bits=n_bits)
    [way] = [op.state["refinement"] for op in qmodule.ops if "refinement" in op.state]
    assert way is not None and not _packed(qmodule, "Softmax")  # gaps capped, then shifted
    changed = x.copy()
    changed[:, 2] = np.random.default_rng(5).normal(size=changed[:, 2].shape)
    before, after = (qmodule.quantized_forward(qmodule.quantize_input(v)) for v in (x, changed))
    others = [0, 1, 3]
    assert not np.array_equal(before[:, 2], after[:, 2])
    np.testing.assert_array_equal(before[:, others], after[:, others])


def test_layer_normalization_under_rounding_multiplies_in_integers_and_errs_no_more(monkeypatch):
    module, x = _normalization()
    expected = module(x)
    qmodule = module.quantize(x, n_bits=6, rounding_threshold_bits=6)
    [norm] = [op for op in qmodule.ops if "normalizer" in op.state]
    assert norm.state["normalizer"] is not None and not _packed(qmodule, "LayerNormalization")
    products = [site for site in qmodule.sites.values() if site.op_type == "LayerNormalization" and site.exact]
    assert len(products) == 2 and max(site.input_bits for site in products) < 12
    monkeypatch.setattr(QuantizedNormalization, "MAX_NORMALIZER_EXTRA_BITS", -1)  # no grid tried: two-input
    two_input = module.quantize(x, n_bits=6, rounding_threshold_bits=6)
    assert len(_packed(two_input, "LayerNormalization")) == 1
    assert np.abs(qmodule(x) - expected).mean() <= np.abs(two_input(x) - expected).mean()


def test_layer_normalization_without_rounding_keeps_its_two_input_lookup():
    """Unrounded, the product's integers would reach the next lookup on ``2 * n`` bits: no gain."""
    module, x = _normalization()
    qmodule = module.quantize(x, n_bits=6)
    assert len(_packed(qmodule, "LayerNormalization")) == 1


def test_layer_normalization_at_8_bits_multiplies_in_integers_where_16_packed_bits_would_not_compile(monkeypatch):
    """At n_bits 8 the two-input lookup would pack 16 bits, which does not compile: the product is made in
    integers even without rounding when it errs no more (its reader is what automatic rounding narrows)."""
    module, x = _normalization()
    expected = module(x)
    qmodule = module.quantize(x, n_bits=8)
    assert not _packed(qmodule, "LayerNormalization")
    assert [op.state["normalizer"] for op in qmodule.ops if "normalizer" in op.state] != [None]
    monkeypatch.setattr(QuantizedNormalization, "MAX_NORMALIZER_EXTRA_BITS", -1)  # no grid tried: two-input
    two_input = module.quantize(x, n_bits=8)
    assert len(_packed(two_input, "LayerNormalization")) == 1
    assert np.abs(qmodule(x) - expected).mean() <= np.abs(two_input(x) - expected).mean()


def test_under_rounding_a_normalization_multiplies_in_integers_even_where_that_errs_more(monkeypatch):
    """A class token's row (standard deviation 0.02 beside rows of 0.5 to 2): the normalizer's 6-bit grid errs
    more on the normalization's own output than the two-input lookup (largest error 0.35 against 0.14 here), but
    that lookup would read 12 packed bits where 6 were asked for. The model's output errs no more for it."""
    module, x = _normalization()
    x[:, 0] *= 0.02
    expected = module(x)
    monkeypatch.setattr(QuantizedNormalization, "MAX_NORMALIZER_EXTRA_BITS", 0)  # the 6-bit grid only
    qmodule = module.quantize(x, n_bits=6, rounding_threshold_bits=6)
    assert [op.state["normalizer"] for op in qmodule.ops if "normalizer" in op.state] == [6]
    assert not _packed(qmodule, "LayerNormalization") and qmodule.bitwidth_report().max_lookup_bits < 12
    monkeypatch.setattr(QuantizedNormalization, "MAX_NORMALIZER_EXTRA_BITS", -1)  # no grid tried: two-input
    two_input = module.quantize(x, n_bits=6, rounding_threshold_bits=6)
    assert len(_packed(two_input, "LayerNormalization")) == 1
    assert np.abs(qmodule(x) - expected).mean() <= np.abs(two_input(x) - expected).mean()


def test_under_rounding_softmax_takes_the_narrower_shift_that_errs_least(monkeypatch):
    """Scores of standard deviation 3 at n_bits 6 with 6-bit rounding: no shift errs as little as the two-input
    lookup (test_scores_too_coarse_for_a_narrow_shift_keep_the_two_input_lookup), which would read 12 packed bits;
    the finest shift is taken instead, on fewer bits, and the model's output errs no more for it."""
    module, x = _attention(score_std=3.0)
    expected = module(x)
    qmodule = module.quantize(x, n_bits=6, rounding_threshold_bits=6)
    assert [op.state["refinement"] for op in qmodule.ops if "refinement" in op.state] == [(4, None)]
    assert not _packed(qmodule, "Softmax") and qmodule.bitwidth_report().max_lookup_bits < 12
    monkeypatch.setattr(QuantizedSoftmax, "MAX_REFINEMENT", -1)  # no refinement tried: the two-input lookup
    two_input = module.quantize(x, n_bits=6, rounding_threshold_bits=6)
    assert len(_packed(two_input, "Softmax")) == 1
    assert np.abs(qmodule(x) - expected).mean() <= np.abs(two_input(x) - expected).mean()


def test_probabilities_sit_on_a_grid_from_zero_which_narrows_their_product_with_the_values(monkeypatch):
    """Seventeen probabilities near 1/17 each (an attention at initialization) at n_bits 8: on a grid fitted to
    their band (0.046 to 0.074 here) the probabilities' integers lie far above its zero point, and their product
    with the values took 20 bits; on a grid from 0 (where a masked or far key's probability lies) 18 bits. The
    model's output errs as much (within the 1% that separates two roundings)."""
    module, x = _attention(tokens=17, score_std=0.05)
    expected = module(x)
    qmodule = module.quantize(x, n_bits=8)
    [softmax] = [op for op in qmodule.ops if "refinement" in op.state]
    monkeypatch.setattr(type(softmax), "output_floor", None)  # the grid fitted to the calibrated band
    banded = module.quantize(x, n_bits=8)
    assert qmodule.float_ranges["p"][0] == 0.0 and banded.float_ranges["p"][0] > 0.04

    def product_bits(q):
        [row] = [r for r in q.bitwidth_report() if r.kind == "accumulator" and r.node == q.producers["y"][0]]
        return row.bits

    assert product_bits(qmodule) <= product_bits(banded) - 2
    assert np.abs(qmodule(x) - expected).mean() <= 1.01 * np.abs(banded(x) - expected).mean()


def test_a_where_giving_back_every_probability_costs_nothing_and_a_narrower_clip_is_applied():
    """torch's scaled-dot-product attention exports ``Where(IsNaN(p), 0, p)`` after the softmax: it gives back every
    value of the probabilities' grid, so the product reads the softmax's integers themselves, as without it, where
    a lookup would have put them on a grid of the Where's own calibrated range. A Clip below the largest
    probability does change values: it keeps its lookup and follows the float model as closely."""
    plain, x = _attention()
    where = [(helper.make_node("IsNaN", ["p"], ["nan"]), {}),
             (helper.make_node("Where", ["nan", "zero", "p"], ["read"]), {"zero": np.zeros((), np.float32)})]
    through, _ = _attention(after_softmax=where)
    q_plain, q_through = plain.quantize(x, n_bits=6), through.quantize(x, n_bits=6)
    np.testing.assert_array_equal(q_through.quantized_forward(q_through.quantize_input(x)),
                                  q_plain.quantized_forward(q_plain.quantize_input(x)))
    assert not [row for row in q_through.bitwidth_report() if row.tensor == "read"]
    clip = [(helper.make_node("Clip", ["p", "low", "high"], ["read"]),
             {"low": np.zeros((), np.float32), "high": np.full((), 0.3, np.float32)})]
    clipped, _ = _attention(after_softmax=clip)
    q_clipped = clipped.quantize(x, n_bits=6)
    assert [row for row in q_clipped.bitwidth_report() if row.tensor == "read" and row.kind == "lookup"]
    expected = clipped(x)
    assert not np.allclose(expected, plain(x), atol=0.05)  # the clip changes the model's output
    assert np.abs(q_clipped(x) - expected).mean() <= np.abs(q_plain(x) - plain(x)).mean()


def test_an_attention_whose_where_passes_the_probabilities_through_is_saved_and_loaded(tmp_path):
    """The pass-through is found again from the saved grids: the loaded module gives the same integers, with no
    lookup for the Where either."""
    from cml_core import load_quantized

    where = [(helper.make_node("IsNaN", ["p"], ["nan"]), {}),
             (helper.make_node("Where", ["nan", "zero", "p"], ["read"]), {"zero": np.zeros((), np.float32)})]
    module, x = _attention(after_softmax=where)
    qmodule = module.quantize(x, n_bits=4, rounding_threshold_bits=4)
    qmodule.compile(x[:50])
    loaded = load_quantized(qmodule.save(tmp_path / "attention"))
    q = loaded.quantize_input(x)
    np.testing.assert_array_equal(loaded.quantized_forward(q), qmodule.quantized_forward(qmodule.quantize_input(x)))
    assert not [row for row in loaded.bitwidth_report() if row.tensor == "read"]
    np.testing.assert_array_equal(loaded.quantized_forward(q[:4], fhe="simulate"), loaded.quantized_forward(q[:4]))


def test_a_nearly_uniform_attention_compiles_at_6_bits_with_6_bit_rounding():
    """Scores of standard deviation 0.1 (an attention at initialization): probabilities near 1/8 each. Under a
    rounding the exponentials are looked up on the rounding's bits, not n + log2(K): the lookup of their sum keeps
    only those bits anyway. With 9-bit exponentials concrete-python found no parameters for this circuit (its
    optimizer display: 14-bit integers, largest norm 2^7); now it compiles, and simulating it gives the clear
    integer program's results."""
    module, x = _attention(score_std=0.1)
    qmodule = module.quantize(x, n_bits=6, rounding_threshold_bits=6)
    [total] = [site for key, site in qmodule.sites.items() if key.endswith(":log_sum")]
    assert total.input_bits <= 9  # eight exponentials of at most 63 (on 9 bits each, they summed to 12 bits)
    qmodule.compile(x[:40])
    q = qmodule.quantize_input(x[:8])
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), qmodule.quantized_forward(q))


def test_a_nearly_uniform_softmax_of_encrypted_scores_compiles_at_6_bits_with_6_bit_rounding():
    """Seventeen probabilities near 1/17 each: every row's log-sum is about log(17), 1,507 to 1,571 in the shifted
    way's units. Those integers were added to each element's gap as they were, so the lookup of the shifted integer
    read a 7-bit span of 11-bit integers: concrete-python looks such a value up on its 7 bits by first multiplying
    it by a power of two (its noise too), and found no parameters for this circuit (optimizer display: 17-bit integers, largest
    norm 2^7; now 2^6). The log-sums are now looked up less the lowest seen on calibration:
    the shifted integers are 7-bit ones (the lowest log-sum is that of unrounded sums: a rounded sum's can be one
    lower), the circuit compiles, and simulating it gives the clear program's results."""
    module, x = _self_attention_scores()
    qmodule = module.quantize(x, n_bits=6, rounding_threshold_bits=6)
    [shifted] = [row for row in qmodule.bitwidth_report() if row.tensor.endswith(":shifted_log")]
    assert -(2**6) <= shifted.low and shifted.high < 2**6  # 7-bit integers (1,507 to 1,571 before)
    qmodule.compile(x[:40])
    q = qmodule.quantize_input(x[:8])
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), qmodule.quantized_forward(q))
