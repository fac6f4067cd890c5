"""Prepared kernels, in-place forms and chained steps: the float path's shortcuts never change a result,
never write over an array someone else holds, and keep every intermediate visible to observers."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from cml_core import ModelLoadError, NodeExecutionError, OpRegistry, OpSet, OpSignatureError, load_model

F = onnx.TensorProto.FLOAT
ACME = [helper.make_opsetid("com.acme", 1)]


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 14), *ACME])


def _vi(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


def _node(op, inputs, outputs, **attributes):
    return helper.make_node(op, inputs, outputs, domain="com.acme", name=outputs[0], **attributes)


class Calls:
    """An op set whose ops count how they ran: ``Twice`` (with an in-place form), ``Scale`` (prepared from its
    constant factor), ``Same`` (returns its input itself), ``Peek`` (returns a view of its input), ``AddTo``
    (a binary op with an in-place form) and ``Fail``."""

    def __init__(self):
        self.inplace, self.prepared, self.kernel_calls = [], [], 0
        ops = OpSet()

        @ops.op("Twice", 1, domain="com.acme")
        def twice(x, /):
            return x * 2

        def twice_into(x, /):
            self.inplace.append(x)
            return np.multiply(x, 2, out=x)

        ops.attach(twice, inplace=twice_into)

        def prepare_scale(inputs, attributes):
            factor = inputs[1].value
            if factor is None:
                return None
            if attributes["check"] and factor.size != 1:
                raise ValueError(f"the factor must hold one value, got {factor.size}")
            self.prepared.append((factor.copy(), dict(attributes)))

            def scale_constant(x, f, /):
                self.kernel_calls += 1
                return x * factor

            return scale_constant

        @ops.op("Scale", 1, domain="com.acme", prepare=prepare_scale)
        def scale(x, f, /, *, check=1):
            return x * f

        @ops.op("Same", 1, domain="com.acme")
        def same(x, /):
            return x

        @ops.op("Peek", 1, domain="com.acme")
        def peek(x, /):
            return x[...]

        @ops.op("AddTo", 1, domain="com.acme")
        def add_to(a, b, /):
            return a + b

        def add_to_into(a, b, /):
            self.inplace.append(a)
            return np.add(a, b, out=a)

        ops.attach(add_to, inplace=add_to_into)

        @ops.op("Fail", 1, domain="com.acme")
        def fail(x, /):
            raise ValueError("no")

        self.registry = OpRegistry()
        self.registry.add(ops)


def test_attach_gives_forms_to_declared_ops_only():
    ops = OpSet()

    @ops.op("Twice", 1, domain="com.acme")
    def twice(x, /):
        return x * 2

    with pytest.raises(ValueError, match="no op of this set is implemented by"):
        ops.attach(lambda x: x, inplace=twice)

    def wrong(x, /, *, alpha=1.0):
        return x

    ops.attach(twice, inplace=wrong)
    with pytest.raises(OpSignatureError, match="in-place form of Twice must take the inputs and attributes"):
        OpRegistry().add(ops)


def test_a_prepared_kernel_is_made_once_with_constants_and_defaults_and_used_at_every_call():
    calls = Calls()
    factor = numpy_helper.from_array(np.array(3.0, np.float32), "f")
    model = _model([_node("Scale", ["x", "f"], ["y"])], [_vi("x", [2])], [_vi("y", [2])], [factor])
    module = load_model(model, calls.registry)
    assert len(calls.prepared) == 1 and calls.prepared[0][1] == {"check": 1}
    for _ in range(2):
        np.testing.assert_array_equal(module(np.array([1, 2], np.float32)), [3, 6])
    assert calls.kernel_calls == 2
    observed = module.run(np.array([1, 2], np.float32), keep_intermediates=True)  # the observing loop too
    np.testing.assert_array_equal(observed["y"], [3, 6])
    assert calls.kernel_calls == 3


def test_a_preparation_that_refuses_the_node_names_it_at_load():
    calls = Calls()
    factor = numpy_helper.from_array(np.array([1, 2], np.float32), "f")
    model = _model([_node("Scale", ["x", "f"], ["y"])], [_vi("x", [2])], [_vi("y", [2])], [factor])
    with pytest.raises(ModelLoadError, match=r"node 'y' \(com.acme::Scale\): the factor must hold one value, got 2"):
        load_model(model, calls.registry)


def test_in_place_only_over_arrays_no_one_else_holds():
    calls = Calls()
    nodes = [_node("Twice", ["x"], ["a"]),  # x is the caller's: never written over
             _node("Twice", ["a"], ["b"]),  # a is read again below: not written over
             _node("Twice", ["a"], ["c"]),  # a dies here and only env holds it: written over
             _node("Same", ["b"], ["d"]),  # d is b itself, which e's step still sees as b... until b dies there
             _node("Twice", ["d"], ["e"]),
             _node("Peek", ["c"], ["v"]),  # a view of c, which stays alive (read by g)
             _node("Twice", ["v"], ["f"]),
             _node("AddTo", ["c", "e"], ["g"]),
             _node("AddTo", ["g", "f"], ["y"])]
    model = _model(nodes, [_vi("x", [3])], [_vi("y", [3]), _vi("b", [3])])
    module = load_model(model, calls.registry)
    x = np.array([1, 2, 3], np.float32)
    y, b = module(x)
    np.testing.assert_array_equal(x, [1, 2, 3])
    # a = 2x, b = c = 4x, e = 8x (b stays an output: e's step must not write over it), f = 8x, g = 12x, y = 20x
    np.testing.assert_array_equal(b, 4 * x)
    np.testing.assert_array_equal(y, 20 * x)
    assert calls.inplace, "no in-place form ran"
    assert all(not np.shares_memory(held, x) and not np.shares_memory(held, b) for held in calls.inplace)


def test_chained_steps_give_the_same_values_and_observers_see_every_intermediate():
    calls = Calls()
    nodes = [_node("Twice", ["x"], ["a"]), _node("Twice", ["a"], ["b"]), _node("AddTo", ["b", "k"], ["c"]),
             _node("Twice", ["c"], ["y"])]
    k = numpy_helper.from_array(np.array([1, 1, 1], np.float32), "k")
    module = load_model(_model(nodes, [_vi("x", [3])], [_vi("y", [3])], [k]), calls.registry)
    assert len(module.graph._steps) == 1  # Twice, then Twice, AddTo and Twice over its fresh result
    x = np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(module(x), 2 * (4 * x + 1))
    np.testing.assert_array_equal(x, [1, 2, 3])
    np.testing.assert_array_equal(module.constants["k"], [1, 1, 1])
    seen = {}
    module.run(x, observe=lambda name, value: seen.setdefault(name, value.copy()))
    assert sorted(seen) == ["a", "b", "c", "y"]
    np.testing.assert_array_equal(seen["b"], 4 * x)


def test_a_chained_step_does_not_write_over_what_its_head_returns_of_its_input():
    calls = Calls()
    nodes = [_node("Twice", ["x"], ["a"]), _node("Peek", ["a"], ["p"]), _node("Twice", ["p"], ["q"]),
             _node("AddTo", ["q", "a"], ["y"])]
    module = load_model(_model(nodes, [_vi("x", [3])], [_vi("y", [3])]), calls.registry)
    x = np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(module(x), 6 * x)


def test_an_error_in_a_chained_step_names_the_nodes_run_together():
    calls = Calls()
    nodes = [_node("Fail", ["x"], ["a"]), _node("Twice", ["a"], ["y"])]
    module = load_model(_model(nodes, [_vi("x", [3])], [_vi("y", [3])]), calls.registry)
    with pytest.raises(NodeExecutionError, match=r"node 'a' \(com.acme::Fail\) \(run with node 'y'"):
        module(np.ones(3, np.float32))


def _std_model(nodes, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 14)])


def _silu(x):
    x = x.astype(np.float64)
    with np.errstate(over="ignore"):
        return x / (1 + np.exp(-x))


@pytest.mark.parametrize("order", [("x", "s"), ("s", "x")])
def test_a_gate_of_its_own_input_runs_as_one_step_and_leaves_the_callers_array_alone(order):
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", list(order), ["y"])]
    module = load_model(_std_model(nodes, [_vi("x", [2, 5])], [_vi("y", [2, 5])]))
    assert len(module.graph._steps) == 1
    x = np.array([[-1e4, -90, -3, -0.5, 0], [1e-30, 0.5, 3, 90, np.inf]], np.float32)
    kept = x.copy()
    np.testing.assert_allclose(module(x), _silu(x), rtol=2e-7, atol=1e-37)
    np.testing.assert_array_equal(x, kept)


def test_a_gate_chains_after_its_producer_and_never_writes_over_a_value_read_later():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["s"]), helper.make_node("Mul", ["a", "s"], ["b"]),  # over a
             helper.make_node("Neg", ["b"], ["c"]),
             helper.make_node("HardSigmoid", ["c"], ["h"], alpha=0.25, beta=0.375),
             helper.make_node("Mul", ["h", "c"], ["d"]),
             helper.make_node("Add", ["d", "c"], ["y"])]  # c is read again: its gate runs on a copy
    module = load_model(_std_model(nodes, [_vi("x", [3, 4])], [_vi("y", [3, 4])]))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32) * 4
    a = np.maximum(x, 0)
    c = -_silu(a)
    expected = c * np.clip(0.25 * c + 0.375, 0, 1) + c
    np.testing.assert_allclose(module(x), expected, rtol=1e-6, atol=1e-7)
    assert any(len(step.tails) >= 2 for step in module.graph._steps)  # Relu, then Sigmoid and Mul
    seen = {}
    module.run(x, observe=lambda name, value: seen.setdefault(name, value.copy()))
    assert sorted(seen) == ["a", "b", "c", "d", "h", "s", "y"]


def test_a_gated_form_must_take_the_ops_inputs_and_attributes():
    ops = OpSet()

    @ops.op("Gate", 1, domain="com.acme")
    def gate(x, /, *, alpha=1.0):
        return x * alpha

    ops.attach(gate, gated=lambda x, /: x)
    with pytest.raises(OpSignatureError, match="gated form of Gate must take the inputs and attributes"):
        OpRegistry().add(ops)
