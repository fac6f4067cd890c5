"""load_model and NumpyModule: sources, bad files, unsupported ops, call-time checks, execution."""

import io

import numpy as np
import onnx
import pytest
from cml_core.demo import load_example
from onnx import helper, numpy_helper

from cml_core import (
    InputError,
    ModelLoadError,
    NodeExecutionError,
    OpRegistry,
    UnsupportedOpError,
    get_registry,
    load_model,
)

F = onnx.TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=14, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, ir_version=10,
                             opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def test_sources_path_bytes_proto(tmp_path):
    data, _ = load_example()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    x = np.random.default_rng(0).uniform(0, 1, (3, 64)).astype(np.float32)
    outs = [load_model(src)(x) for src in (path, str(path), data, onnx.load_from_string(data))]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    module = load_model(data)
    assert module.input_names == ["x"] and module.output_names == ["logits"]
    assert isinstance(module.onnx_model, onnx.ModelProto)


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "missing.onnx", "cannot read"),
    (lambda p: p, "cannot read"),  # a directory
    (lambda p: (p / "rand.onnx").write_bytes(np.random.default_rng(0).bytes(300)) and p / "rand.onnx",
     "not a valid ONNX model|holds no ONNX graph"),
    (lambda p: (p / "trunc.onnx").write_bytes(load_example()[0][:5000]) and p / "trunc.onnx", "corrupt or truncated"),
    (lambda p: (p / "empty.onnx").write_bytes(b"") or p / "empty.onnx", "holds no ONNX graph"),
])
def test_bad_files_give_a_clear_error(tmp_path, make, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(make(tmp_path))


def test_wrong_source_type():
    with pytest.raises(ModelLoadError, match="expects a path, bytes or onnx.ModelProto, got int"):
        load_model(42)


def test_checker_failure_and_too_new_opset():
    bad = _model([helper.make_node("Relu", ["nowhere"], ["y"])], [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(ModelLoadError, match="checker"):
        load_model(bad)
    new = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2])], [_vi("y", [2])],
                 opset=onnx.defs.onnx_opset_version() + 5)
    with pytest.raises(ModelLoadError, match="newer than"):
        load_model(new)


def test_every_missing_op_in_one_error_with_install_hints():
    nodes = [helper.make_node("Softmax", ["x"], ["a"]), helper.make_node("Softmax", ["a"], ["b"]),
             helper.make_node("Wobble", ["b"], ["c"], domain="com.acme"), helper.make_node("Relu", ["c"], ["y"])]
    model = _model(nodes, [_vi("x", [2])], [_vi("y", [2])], extra_opsets=[helper.make_opsetid("com.acme", 3)])
    # an empty registry, as if no plugin were installed
    with pytest.raises(UnsupportedOpError) as info:
        load_model(model, OpRegistry())
    text = str(info.value)
    assert "3 op(s)" in text and "Softmax (opset 14, 2 nodes)" in text and "com.acme::Wobble (opset 3, 1 node)" in text
    assert "pip install cml-ops-activations" in text
    assert sorted(info.value.missing) == [("", "Relu", 14, 1), ("", "Softmax", 14, 2), ("com.acme", "Wobble", 3, 1)]


def test_bad_attribute_or_arity_is_found_at_load():
    def wobble(x, /, *, scale=1.0):
        return x * scale

    registry = OpRegistry()
    registry.register("Wobble", 1, wobble, domain="com.acme")
    opsets = [helper.make_opsetid("com.acme", 1)]
    model = _model([helper.make_node("Wobble", ["x"], ["y"], domain="com.acme", alpha=0.5)], [_vi("x", [2])],
                   [_vi("y", [2])], extra_opsets=opsets)
    with pytest.raises(ModelLoadError, match=r"node '#0' \(com.acme::Wobble\): unsupported attribute\(s\) \['alpha'\]"):
        load_model(model, registry)
    model = _model([helper.make_node("Wobble", ["x", "x"], ["y"], domain="com.acme")], [_vi("x", [2])],
                   [_vi("y", [2])], extra_opsets=opsets)
    with pytest.raises(ModelLoadError, match="takes at most 1 inputs"):
        load_model(model, registry)


def _two_in_two_out():
    nodes = [helper.make_node("Add", ["a", "b"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "k"], ["p"], name="mul"),
             helper.make_node("Add", ["k", "k"], ["kk"], name="fold_me"),
             helper.make_node("Mul", ["p", "kk"], ["q"], name="scale")]
    k = numpy_helper.from_array(np.array([2.0], np.float32), "k")
    return _model(nodes, [_vi("a", ["n", 3]), _vi("b", ["n", 3])], [_vi("p", ["n", 3]), _vi("q", ["n", 3])], [k])


def test_multi_input_output_constant_folding_and_freeing():
    module = load_model(_two_in_two_out())
    assert [b.name for b in module.nodes] == ["add", "relu", "mul", "scale"]  # fold_me ran at load
    np.testing.assert_array_equal(module.constants["kk"], [4.0])
    a = np.array([[1, -2, 3]], np.float32)
    b = np.array([[1, 1, -5]], np.float32)
    p, q = module(a, b)
    np.testing.assert_array_equal(p, 2 * np.maximum(a + b, 0))
    np.testing.assert_array_equal(q, 8 * np.maximum(a + b, 0))
    assert set(module.run(a, b)) == {"p", "q"}
    assert {"s", "r", "p", "q"} <= set(module.run(a, b, keep_intermediates=True))


@pytest.mark.parametrize("args,match", [
    ((np.ones((1, 3), np.float32),), "takes 2 input"),
    ((np.ones((1, 3, 1), np.float32), np.ones((1, 3), np.float32)), "input 'a' must have rank 2"),
    ((np.ones((1, 4), np.float32), np.ones((1, 3), np.float32)), r"input 'a' must have shape \(n, 3\).*axis 1"),
    ((np.array([["a", "b", "c"]]), np.ones((1, 3), np.float32)), "input 'a' must be float32"),
])
def test_call_time_input_errors(args, match):
    with pytest.raises(InputError, match=match):
        load_model(_two_in_two_out())(*args)


def test_an_op_failing_names_the_node():
    def explode(x, /):
        raise FloatingPointError("kaboom")

    registry = OpRegistry()
    registry.register("Relu", 14, explode)
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="act")], [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(NodeExecutionError, match=r"node 'act' \(Relu\) failed on inputs of shapes \[\(2,\)\]: .*kaboom"):
        load_model(model, registry)(np.ones(2, np.float32))


def test_graph_output_that_is_an_input_or_a_constant():
    c = numpy_helper.from_array(np.array([1.5], np.float32), "c")
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2])], [_vi("x", [2]), _vi("c", [1]), _vi("y", [2])],
                   [c])
    x = np.array([-1, 2], np.float32)
    out_x, out_c, out_y = load_model(model)(x)
    np.testing.assert_array_equal(out_x, x)
    np.testing.assert_array_equal(out_c, [1.5])
    np.testing.assert_array_equal(out_y, [0, 2])


def _ort(model_bytes, x):
    from cml_core.testing import run_onnxruntime

    return run_onnxruntime(onnx.load_from_string(model_bytes), {onnx.load_from_string(model_bytes).graph.input[0].name: x})[0]


def _export(net, x, opset):
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.tensor(x),), buffer, dynamo=False, opset_version=opset, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return buffer.getvalue()


@pytest.mark.parametrize("opset", [13, 14, 17])
def test_torch_mlp_and_cnn_match_onnxruntime(opset):
    import torch
    from torch import nn

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Tanh(),
                        nn.Linear(8, 3))
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    rng = np.random.default_rng(0)
    for net, x in ((mlp, rng.normal(size=(7, 10))), (cnn, rng.normal(size=(5, 2, 8, 8)))):
        x = x.astype(np.float32)
        data = _export(net, x, opset)
        np.testing.assert_allclose(load_model(data)(x), _ort(data, x), rtol=1e-5, atol=1e-5)


def test_registry_is_shared():
    assert get_registry() is get_registry()
