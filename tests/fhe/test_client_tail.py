"""Post-processing only the client can run (ArgMax of scores, Cast of the label) leaves the encrypted program:
quantization splits it off, the client runs it on the decrypted scores, in memory and after deployment."""

import numpy as np
import pytest
from cml_core.deploy import Client, Server
from onnx import TensorProto, helper, numpy_helper

from cml_core import QuantizationError, load_model, load_quantized


def _classifier(label_feeds_more=False):
    """x -> Gemm -> Relu -> Gemm = scores; ArgMax(scores) -> Cast = label (float). With ``label_feeds_more``
    the label also feeds a Gemm, which holds weights: those cannot go to the client."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 6)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["index"], axis=1, keepdims=1),
             helper.make_node("Cast", ["index"], ["label"], to=TensorProto.FLOAT)]
    outputs = [helper.make_tensor_value_info("label", TensorProto.FLOAT, ["n", 1]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3])]
    if label_feeds_more:
        inits.append(numpy_helper.from_array(np.ones((1, 2), np.float32), "w3"))
        nodes.append(helper.make_node("Gemm", ["label", "w3"], ["more"]))
        outputs.append(helper.make_tensor_value_info("more", TensorProto.FLOAT, ["n", 2]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              outputs, inits)
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


def test_the_label_is_computed_by_the_client_from_the_decrypted_scores():
    module = _classifier()
    x = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=8)
    assert [n.op_type for n in qmodule.client_tail.model.graph.node] == ["ArgMax", "Cast"]
    assert {op.bound.node.op_type for op in qmodule.ops} == {"Gemm", "Relu"}
    label, scores = qmodule(x)
    np.testing.assert_array_equal(label, scores.argmax(axis=1, keepdims=True).astype(np.float32))
    float_label, _ = module(x)
    assert np.mean(label == float_label) >= 0.97  # 8 bits: a few samples near a tie may flip


def test_weights_after_a_clear_only_op_keep_it_refused():
    module = _classifier(label_feeds_more=True)
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    with pytest.raises(QuantizationError, match=r"'ArgMax'|\(ArgMax\)"):
        module.quantize(x, n_bits=8)


@pytest.mark.fhe
def test_the_deployed_client_runs_the_tail_on_the_decrypted_scores(tmp_path):
    module = _classifier()
    x = np.random.default_rng(1).normal(size=(100, 4)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=4, rounding_threshold_bits=4)
    qmodule.compile(x)
    simulated = qmodule.forward(x[:3], fhe="simulate")
    folder = qmodule.save(tmp_path / "deploy")
    client = Client(folder, keys=tmp_path / "keys")
    out = Server(folder).run(client.encrypt(x[:3]), client.evaluation_keys())
    label, scores = client.decrypt(out)
    np.testing.assert_array_equal(label, simulated[0])
    np.testing.assert_array_equal(scores, simulated[1])
    loaded = load_quantized(folder)
    np.testing.assert_array_equal(loaded(x)[0], qmodule(x)[0])


def _softmax_model(attention=False):
    """x -> MatMul -> Softmax = probabilities -> ArgMax = label; with ``attention`` the probabilities feed a
    MatMul (weights), as an attention's do: that Softmax must stay encrypted."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1)]
    outputs = [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 4])]
    if attention:
        inits.append(numpy_helper.from_array(rng.normal(size=(4, 2)).astype(np.float32), "v"))
        nodes.append(helper.make_node("MatMul", ["p", "v"], ["y"]))
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])]
    else:
        nodes.append(helper.make_node("ArgMax", ["p"], ["label"], axis=-1, keepdims=0))
        outputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              outputs, inits)
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


def test_a_softmax_of_the_final_scores_runs_on_the_client():
    module = _softmax_model()
    x = np.random.default_rng(3).normal(size=(100, 6)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=6)
    assert [n.op_type for n in qmodule.client_tail.model.graph.node] == ["Softmax", "ArgMax"]
    assert qmodule.lookup_count == 0  # the encrypted program is the matrix product alone
    probabilities, label = qmodule(x)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)  # the client's float softmax
    np.testing.assert_array_equal(label, probabilities.argmax(axis=1))
    # scores within one 6-bit step of the float scores move each probability by less than that step
    expected = module(x)[0]
    step = float(np.ptp(module.run(x, keep_intermediates=True)["s"])) / 63
    assert np.abs(probabilities - expected).max() <= step
    qmodule.compile(x)
    for got, clear in zip(qmodule.forward(x[:3], fhe="simulate"), qmodule.forward(x[:3])):
        np.testing.assert_array_equal(got, clear)


def test_a_softmax_whose_probabilities_feed_weights_stays_encrypted():
    module = _softmax_model(attention=True)
    x = np.random.default_rng(3).normal(size=(100, 6)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=6)
    assert qmodule.client_tail is None and qmodule.lookup_count > 0
