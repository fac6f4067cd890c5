"""Subgraphs (If, Loop, Scan bodies) in the interpreter, sequence and optional values, and what
quantization does with them."""

import numpy as np
import pytest
from cml_core.testing import assert_close, run_onnxruntime
from cml_core.testing.checks import assert_same_value
from onnx import TensorProto, helper, numpy_helper

from cml_core import InputError, QuantizationError, load_model

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _tensor(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _same_as_onnxruntime(model, *inputs):
    module = load_model(model)
    got = module.run(*inputs)
    names = [vi.name for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}]
    expected = run_onnxruntime(model, dict(zip(names, inputs)))
    for name, value in zip(module.output_names, expected):
        assert_same_value(got[name], value, what=name)
    return module


def _accumulating_body(outer):
    """Loop body: v_out = v + ``outer`` (an outer-scope value), condition passed through, scan output v_out."""
    return helper.make_graph(
        [helper.make_node("Add", ["v", outer], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["v_out"], ["scan_out"])],
        "body",
        [_vi("i", I64, []), _vi("cond_in", B, []), _vi("v", F, [3])],
        [_vi("cond_out", B, []), _vi("v_out", F, [3]), _vi("scan_out", F, [3])])


def _loop_model(trip_count=None, with_cond=True):
    """x -> w = 2x -> r = Relu(x) -> Loop(v starts at x, adds w each step) -> (v, scans, r)."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["w"]),
             helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Loop", ["trip" if trip_count is not None else "", "cond" if with_cond else "", "x"],
                              ["v_final", "scans"], body=_accumulating_body("w"), name="loop")]
    inits = [_tensor("two", np.float32(2)), _tensor("cond", np.array(True))]
    if trip_count is not None:
        inits.append(_tensor("trip", np.int64(trip_count)))
    return _model(nodes, [_vi("x", F, [3])],
                  [_vi("v_final", F, [3]), _vi("scans", F, ["n", 3]), _vi("r", F, [3])], inits)


X = np.array([1.0, -2.0, 0.5], np.float32)


def test_a_body_reads_a_value_of_the_outer_graph():
    module = _same_as_onnxruntime(_loop_model(3), X)
    loop = next(b for b in module.nodes if b.node.op_type == "Loop")
    assert loop.free_names == ("w",) and "w" in loop.reads
    np.testing.assert_allclose(module(X)[0], X + 3 * 2 * X)


@pytest.mark.parametrize("trip_count", [0, 1, 4])
def test_loop_trip_counts_including_none_at_all(trip_count):
    module = _same_as_onnxruntime(_loop_model(trip_count), X)
    v_final, scans, _ = module(X)
    assert scans.shape == (trip_count, 3) and scans.dtype == np.float32
    assert_close(v_final, (X + trip_count * 2 * X).astype(np.float32))


def test_loop_without_a_condition_runs_its_trip_count():
    """With the condition input omitted the body's condition output is ignored: a for loop, as the Loop
    spec's table of modes says. onnxruntime 1.32 stops on the body's condition instead (one iteration
    here), and the reference evaluator runs none (it reads the omitted condition as false): the spec decides."""
    body = _accumulating_body("w")
    body.node[1].CopyFrom(helper.make_node("Constant", [], ["cond_out"], value=_tensor("f", np.array(False))))
    model = _loop_model(3, with_cond=False)
    model.graph.node[2].attribute[0].g.CopyFrom(body)
    v_final, scans, _ = load_model(model)(X)
    assert scans.shape == (3, 3)
    assert_close(v_final, (X + 3 * 2 * X).astype(np.float32))
    assert_close(run_onnxruntime(model, {"x": X})[1], scans[:1])


def test_a_value_only_a_body_reads_lives_until_its_node_runs_and_is_freed_then():
    module = load_model(_loop_model(2))
    graph = module.graph
    steps = {b.node.op_type: i for i, b in enumerate(module.nodes)}
    freed_at = {name: i for i, names in enumerate(graph._dead_after) for name in names}
    assert steps["Mul"] < steps["Relu"] < steps["Loop"]
    assert freed_at["w"] == steps["Loop"]  # not after Relu, the last node that reads it directly
    seen = []
    module.run(X, observe=lambda name, value: seen.append(name))
    assert seen == ["w", "r", "v_final", "scans"]


def test_nested_loop_inside_an_if_reads_the_main_graph():
    """If (on an input) whose then-branch runs a Loop whose body reads ``w`` from two graphs up."""
    then_branch = helper.make_graph(
        [helper.make_node("Loop", ["trip", "", "x"], ["t_v", "t_scans"], body=_accumulating_body("w"))],
        "then", [], [_vi("t_v", F, [3])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["w"], ["e_v"])], "else", [], [_vi("e_v", F, [3])])
    model = _model(
        [helper.make_node("Mul", ["x", "two"], ["w"]),
         helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch, name="if")],
        [_vi("x", F, [3]), _vi("flag", B, [])], [_vi("y", F, [3])],
        [_tensor("two", np.float32(2)), _tensor("trip", np.int64(2))])
    for flag in (True, False):
        module = _same_as_onnxruntime(model, X, np.array(flag))
    assert set(module.nodes[-1].free_names) == {"x", "w", "trip"}  # the Loop's trip count is a main-graph constant


def _gemm_relu_if(condition):
    """If(condition) whose then-branch is Gemm(x, W, b) -> Relu and else-branch a Neg of x."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    then_branch = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="gemm"),
         helper.make_node("Relu", ["h"], ["t_y"], name="relu")],
        "then", [], [_vi("t_y", F, ["n", 3])], [_tensor("W", w), _tensor("b", b)])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["e_y"])], "else", [], [_vi("e_y", F, ["n", 4])])
    nodes = [helper.make_node("Greater", ["one", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch, name="if")]
    inits = [_tensor("one", np.float32(1)), _tensor("zero", np.float32(0 if condition else 2))]
    plain = _model([helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="gemm"),
                    helper.make_node("Relu", ["h"], ["y"], name="relu")],
                   [_vi("x", F, ["n", 4])], [_vi("y", F, ["n", 3])], [_tensor("W", w), _tensor("b", b)])
    return _model(nodes, [_vi("x", F, ["n", 4])], [_vi("y", F, ["n", 3] if condition else ["n", 4])], inits), plain


def test_an_if_whose_condition_is_known_at_load_becomes_its_branch():
    model, _ = _gemm_relu_if(True)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    module = _same_as_onnxruntime(model, x)
    assert [b.node.op_type for b in module.nodes] == ["Gemm", "Relu"]
    assert list(module.nodes[-1].node.output) == ["y"]


def test_a_folded_if_quantizes_like_the_plain_ops_it_became():
    model, plain = _gemm_relu_if(True)
    x = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    q_if, q_plain = load_model(model).quantize(x, n_bits=6), load_model(plain).quantize(x, n_bits=6)
    np.testing.assert_array_equal(q_if(x), q_plain(x))
    np.testing.assert_array_equal(q_if.quantize_input(x), q_plain.quantize_input(x))


def test_control_flow_on_constants_only_is_folded_and_quantizes():
    """A Loop over constants only (its body reading a constant of the main graph) folds at load."""
    model = _model(
        [helper.make_node("Loop", ["trip", "cond", "start"], ["offset", "scans"], body=_accumulating_body("step")),
         helper.make_node("Add", ["x", "offset"], ["y"])],
        [_vi("x", F, ["n", 3])], [_vi("y", F, ["n", 3])],
        [_tensor("trip", np.int64(2)), _tensor("cond", np.array(True)), _tensor("start", np.zeros(3, np.float32)),
         _tensor("step", np.array([0.5, 1.0, -1.0], np.float32))])
    module = load_model(model)
    assert [b.node.op_type for b in module.nodes] == ["Add"]
    x = np.random.default_rng(3).normal(size=(20, 3)).astype(np.float32)
    assert_close(module(x), x + np.array([1.0, 2.0, -2.0], np.float32))
    module.quantize(x, n_bits=8)


def test_quantization_refuses_a_loop_on_encrypted_values():
    x = np.random.default_rng(4).normal(size=(10, 3)).astype(np.float32)
    with pytest.raises(QuantizationError, match=r"node 'loop' \(Loop\) cannot run on encrypted values.*constant trip "
                                                r"count"):
        load_model(_loop_model(2)).quantize(x[0], n_bits=8)


def test_quantization_refuses_an_if_on_encrypted_values():
    then_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [_vi("t", F, ["n", 3])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_vi("e", F, ["n", 3])])
    model = _model([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                    helper.make_node("Greater", ["s", "zero"], ["cond"]),
                    helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch, name="if")],
                   [_vi("x", F, ["n", 3])], [_vi("y", F, ["n", 3])], [_tensor("zero", np.float32(0))])
    x = np.random.default_rng(5).normal(size=(10, 3)).astype(np.float32)
    with pytest.raises(QuantizationError, match=r"node 'if' \(If\) cannot run on encrypted values.*no control flow"):
        load_model(model).quantize(x, n_bits=8)


def _sequence_model():
    nodes = [helper.make_node("SplitToSequence", ["x"], ["parts"], axis=1, name="split"),
             helper.make_node("ConcatFromSequence", ["parts"], ["y"], axis=1, name="concat")]
    return _model(nodes, [_vi("x", F, ["n", 3])], [_vi("y", F, ["n", 3])])


def test_quantization_refuses_a_sequence_on_encrypted_values():
    x = np.random.default_rng(6).normal(size=(10, 3)).astype(np.float32)
    module = load_model(_sequence_model())
    assert_close(module(x), x)
    with pytest.raises(QuantizationError, match=r"node 'split' \(SplitToSequence\) cannot run on encrypted values: its "
                                                r"output 'parts' is a sequence.*plain tensors"):
        module.quantize(x, n_bits=8)


def test_quantization_refuses_a_sequence_input():
    model = _model([helper.make_node("SequenceLength", ["xs"], ["n"], name="length"),
                    helper.make_node("Cast", ["n"], ["y"], to=F)],
                   [helper.make_tensor_sequence_value_info("xs", F, [3])], [_vi("y", F, [])])
    module = load_model(model)
    assert module([np.zeros(3, np.float32)] * 2) == 2
    with pytest.raises(QuantizationError, match=r"node 'length' \(SequenceLength\) cannot run on encrypted values: "
                                                r"its input 'xs' is a sequence"):
        module.quantize(([np.zeros(3, np.float32)],), n_bits=8)


def test_sequence_and_optional_inputs_are_checked_at_call():
    seq = helper.make_tensor_sequence_value_info("xs", F, ["k"])
    opt = helper.make_value_info("o", helper.make_optional_type_proto(helper.make_tensor_type_proto(F, [2])))
    model = _model([helper.make_node("SequenceLength", ["xs"], ["n"]),
                    helper.make_node("OptionalHasElement", ["o"], ["has"])],
                   [seq, opt], [_vi("n", I64, []), _vi("has", B, [])], opset=18)
    module = load_model(model)
    assert [s.describe() for s in module.inputs] == ["sequence of float32", "optional float32"]
    n, has = module([np.ones(2), [1.0, 2.0, 3.0]], None)
    assert int(n) == 2 and not has
    assert module([], np.ones(2, np.float32))[1]
    with pytest.raises(InputError, match=r"input 'xs' is a sequence of float32: pass a list of arrays, got ndarray"):
        module(np.ones((2, 3), np.float32), None)
    with pytest.raises(InputError, match=r"input 'xs\[1\]' must have rank 1"):
        module([np.ones(2), np.ones((2, 2))], None)
    with pytest.raises(InputError, match=r"input 'o' must have shape \(2\)"):
        module([np.ones(2)], np.ones(3, np.float32))
    with pytest.raises(InputError, match=r"input 'xs\[0\]' \(float32\)|input 'xs\[0\]' must be float32"):
        module([np.array(["a"])], None)


def test_sequence_and_optional_outputs():
    model = _model([helper.make_node("SplitToSequence", ["x"], ["parts"], axis=0),
                    helper.make_node("Optional", ["x"], ["maybe"])],
                   [_vi("x", F, [3, 2])],
                   [helper.make_tensor_sequence_value_info("parts", F, [1, 2]),
                    helper.make_value_info("maybe", helper.make_optional_type_proto(
                        helper.make_tensor_type_proto(F, [3, 2])))])
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    module = _same_as_onnxruntime(model, x)
    parts, maybe = module(x)
    assert isinstance(parts, list) and len(parts) == 3 and parts[2].tolist() == [[4.0, 5.0]]
    assert_close(maybe, x)
