"""Malformed models and inputs fail with cml's typed errors, naming the node, tensor or input at fault."""

import cml_core.numpy_module
import numpy as np
import onnx
import pytest
from cml_core.cli import main as cli
from cml_core.errors import OutOfMemoryError
from cml_core.signature import StaticInput
from onnx import helper, numpy_helper

from cml_core import (
    InputError,
    ModelLoadError,
    NodeExecutionError,
    NumpyModule,
    OpRegistry,
    OpSet,
    load_model,
)

T = onnx.TensorProto
F = T.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=14, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _add_w(w, shape=(2,)):
    return _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [_vi("x", list(shape))],
                  [_vi("y", list(shape))], [w])


# -- corrupt contents ---------------------------------------------------------------------------


def test_text_that_is_not_utf8_is_refused(tmp_path):
    data = _model([helper.make_node("Relu", ["x"], ["yy"], name="act")], [_vi("x", [2])],
                  [_vi("yy", [2])]).SerializeToString()
    bad = data.replace(b"yy", b"y\xff")
    with pytest.raises(ModelLoadError, match=r"text field model\.graph\.node\[0\]\.output\[0\] is not valid UTF-8"):
        load_model(bad)
    path = tmp_path / "m.onnx"
    path.write_bytes(bad)
    assert cli(["inspect", str(path)]) == 1


def test_string_attribute_that_is_not_utf8_names_the_node():
    model = _model([helper.make_node("Pad", ["x", "p"], ["y"], name="pad")], [_vi("x", [2])], [_vi("y", [4])],
                   [numpy_helper.from_array(np.array([1, 1]), "p")])
    model.graph.node[0].attribute.append(helper.make_attribute("mode", b"\xff\xfe"))
    with pytest.raises(ModelLoadError, match=r"node 'pad' \(Pad\): attribute 'mode' holds text that is not UTF-8"):
        load_model(model)


@pytest.mark.parametrize("extra,match", [
    (b"\0\0\0\0", r"initializer 'w' declares dims \[2\] of float32 \(8 bytes\) but holds 12 bytes"),
    (None, r"tensor name: w\) raw_data size \(4 bytes\) is too small"),  # the ONNX checker finds this one
])
def test_raw_data_longer_or_shorter_than_the_dims(extra, match):
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    w.raw_data = w.raw_data + extra if extra else w.raw_data[:4]
    with pytest.raises(ModelLoadError, match=match):
        load_model(_add_w(w))


def test_typed_data_that_does_not_fill_the_dims():
    w = onnx.TensorProto(name="w", data_type=F, dims=[2], float_data=[1.0, 2.0, 3.0])
    with pytest.raises(ModelLoadError, match=r"initializer 'w' \(dims \[2\], float32\) cannot be read"):
        load_model(_add_w(w))


def test_declared_size_beyond_the_data_is_refused_without_allocating():
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    w.dims[:] = [10**6, 10**6]  # 4 TB declared, 8 bytes held
    with pytest.raises(ModelLoadError, match=r"tensor name: w\) raw_data size \(8 bytes\) is too small"):
        load_model(_add_w(w))


def test_unknown_tensor_data_type():
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    w.data_type = 115
    with pytest.raises(ModelLoadError, match=r"initializer 'w' has element type 115, which onnx .* does not know"):
        load_model(_add_w(w))


@pytest.mark.parametrize("make,match", [
    (lambda: _vi("x", [2], elem=0), r"graph input 'x' has no element type \(UNDEFINED\)"),
    (lambda: _vi("x", [2], elem=123), r"graph input 'x' has element type 123"),
    (lambda: helper.make_value_info("x", helper.make_map_type_proto(T.FLOAT, helper.make_tensor_type_proto(F, [2]))),
     r"graph input 'x' is a map with float32 keys"),
    (lambda: helper.make_sparse_tensor_value_info("x", F, [2]), r"graph input 'x' is a sparse tensor"),
    (lambda: helper.make_value_info("x", onnx.TypeProto()), r"graph input 'x' is untyped"),
])
def test_graph_inputs_that_are_not_dense_tensors(make, match):
    # (sequences and optionals are values the interpreter runs: tests/core/test_control_flow.py; maps
    # with integer or string keys too: tests/ml/test_map_values.py)
    model = _model([helper.make_node("Identity", ["x"], ["y"])], [make()], [_vi("y", [2])])
    with pytest.raises(ModelLoadError, match=match):
        load_model(model)


def test_graph_output_of_undefined_type():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2])], [_vi("y", [2], elem=0)])
    with pytest.raises(ModelLoadError, match=r"graph output 'y' has no element type"):
        load_model(model)


def _with_sparse(sparse):
    model = _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    model.graph.sparse_initializer.append(sparse)
    return model


@pytest.mark.parametrize("indices", [np.array([1, 5], np.int64), np.array([[0, 1], [1, 2]], np.int64)])
def test_sparse_initializer_is_made_dense(indices):
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "w"),
                                       numpy_helper.from_array(indices, ""), [2, 3])
    dense = np.zeros((2, 3), np.float32)
    dense[0, 1], dense[1, 2] = 1.5, -2.0
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(load_model(_with_sparse(sparse))(x), x + dense)
    np.testing.assert_array_equal(NumpyModule(_with_sparse(sparse))(x), x + dense)  # built without read_model


@pytest.mark.parametrize("indices,dims,match", [
    (np.array([1, 9], np.int64), [2, 3], r"sparse initializer 'w': an index lies outside the 6 elements"),
    (np.array([[0, 1], [2, 0]], np.int64), [2, 3], r"sparse initializer 'w': an index lies outside the dims"),
    (np.array([1, 2], np.int32), [2, 3], r"sparse initializer 'w': indices must be int64"),
    (np.array([1, 2], np.int64), [2**40, 2**20], r"sparse initializer 'w': the dense form .* is larger than"),
])
def test_invalid_sparse_initializers(indices, dims, match):
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "w"),
                                       numpy_helper.from_array(indices, ""), dims)
    with pytest.raises((ModelLoadError, OutOfMemoryError), match=match):
        load_model(_with_sparse(sparse))


# -- invalid attributes, found at load ----------------------------------------------------------

W = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "W")


@pytest.mark.parametrize("attributes,match", [
    ({"dilations": [0, 0]}, r"node 'conv' \(Conv\): .*dilations"),
    ({"strides": [1, 0]}, r"node 'conv' \(Conv\): .*strides"),
    ({"pads": [-1, 0, 0, 0]}, r"node 'conv' \(Conv\): .*pads"),
    ({"kernel_shape": [2, 2]}, r"node 'conv' \(Conv\): kernel_shape=\[2, 2\] disagrees with the weight's kernel \[3, 3\]"),
    ({"group": 0}, r"node 'conv' \(Conv\): group=0 must be at least 1"),
    ({"group": 3}, r"node 'conv' \(Conv\): group=3 does not divide the weight's 2 output channels"),
    ({"auto_pad": "MIDDLE"}, r"node 'conv' \(Conv\): auto_pad='MIDDLE' is not one of"),
])
def test_invalid_conv_attributes_are_refused_at_load(attributes, match, tmp_path):
    model = _model([helper.make_node("Conv", ["x", "W"], ["y"], name="conv", **attributes)], [_vi("x", [1, 1, 8, 8])],
                   [_vi("y", ["a", "b", "c", "d"])], [W])
    with pytest.raises(ModelLoadError, match=match):
        load_model(model)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert cli(["inspect", str(path)]) == 1


def test_flatten_axis_out_of_range_names_the_unnamed_node():
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Flatten", ["r"], ["y"], axis=-9)],
                   [_vi("x", [1, 1, 8, 8])], [_vi("y", ["a", "b"])])
    with pytest.raises(ModelLoadError, match=r"node '#1' \(Flatten\): Invalid value\(-5\) for attribute 'axis'"):
        load_model(model)


def test_flatten_axis_out_of_range_for_a_rank_known_only_at_call():
    """Reshape by a non-constant shape hides the rank from inference: the op itself refuses the axis."""
    model = _model([helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Flatten", ["r"], ["y"], axis=-9)],
                   [_vi("x", [4]), _vi("s", ["k"], elem=T.INT64)], [_vi("y", ["a", "b"])])
    module = load_model(model)
    with pytest.raises(NodeExecutionError, match=r"node '#1' \(Flatten\) .*axis=-9 is outside \[-2, 2\]"):
        module(np.ones(4, np.float32), np.array([2, 2], np.int64))


def test_lrn_without_a_window_is_refused_at_load():
    model = _model([helper.make_node("LRN", ["x"], ["y"], size=0)], [_vi("x", [1, 3, 2, 2])], [_vi("y", [1, 3, 2, 2])])
    with pytest.raises(ModelLoadError, match=r"node '#0' \(LRN\): size=0 must be at least 1"):
        load_model(model)


@pytest.mark.parametrize("axis,match", [(5, "outside the data's 3 axes|Unexpected axis value: 5"),
                                        (0, "size 2: only axes of size 1|must be 1 instead of 2")])
def test_squeeze_of_an_axis_that_is_not_there_is_refused_at_load(axis, match):
    model = _model([helper.make_node("Squeeze", ["x", "a"], ["y"])], [_vi("x", [2, 1, 3])], [_vi("y", ["p", "q"])],
                   [numpy_helper.from_array(np.array([axis], np.int64), "a")])
    with pytest.raises(ModelLoadError, match=rf"node '#0' \(Squeeze\).*({match})"):
        load_model(model)


def test_a_plugin_declares_a_load_time_check():
    seen = []

    def check(inputs, attributes):
        seen.append((inputs, attributes))
        if attributes["scale"] <= 0:
            raise ValueError(f"scale={attributes['scale']} must be positive")

    ops = OpSet()

    @ops.op("Scale", since=1, domain="com.acme", validate=check)
    def scale(x, k, /, *, scale=1.0, offset=0.0):
        return x * k * scale + offset

    registry = OpRegistry()
    registry.add(ops)
    k = numpy_helper.from_array(np.array([2.0], np.float32), "k")

    def model(**attributes):
        return _model([helper.make_node("Scale", ["x", "k"], ["y"], name="s", domain="com.acme", **attributes)],
                      [_vi("x", ["n", 2])], [_vi("y", ["n", 2])], [k], extra_opsets=[helper.make_opsetid("com.acme", 1)])

    load_model(model(scale=3.0), registry)
    (x_info, k_info), attributes = seen[-1]
    assert x_info == StaticInput((None, 2), None)
    assert k_info.shape == (1,) and k_info.value.tolist() == [2.0]
    assert attributes == {"scale": 3.0, "offset": 0.0}  # defaults filled in
    with pytest.raises(ModelLoadError, match=r"node 's' \(com.acme::Scale\): scale=-1.0 must be positive"):
        load_model(model(scale=-1.0), registry)


def test_a_failing_load_time_check_is_reported_as_such():
    def check(inputs, attributes):
        raise KeyError("oops")

    registry = OpRegistry()
    registry.register("Relu", 14, lambda x, /: np.maximum(x, 0), validate=check)
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(ModelLoadError, match=r"node 'r' \(Relu\): the load-time check from <local> failed: KeyError"):
        load_model(model, registry)


# -- call time ----------------------------------------------------------------------------------


def _identity(elem):
    return load_model(_model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", [2], elem)], [_vi("y", [2], elem)]))


@pytest.mark.parametrize("elem,value,match", [
    (T.INT8, [300, 1], r"input 'x' \(int8\) got 300, outside its range \[-128, 127\]"),
    (T.INT8, np.array([-129, 1], np.int64), r"got -129, outside its range"),
    (T.UINT8, np.array([-1, 1], np.int16), r"input 'x' \(uint8\) got -1, outside its range \[0, 255\]"),
    (T.INT8, [1.5, 1], r"input 'x' \(int8\) got the non-integer value 1.5"),
    (T.INT8, [np.nan, 1], r"input 'x' \(int8\) got nan; integer inputs take finite whole numbers only"),
    (T.INT64, [np.inf, 1], r"input 'x' \(int64\) got inf"),
    (T.INT64, [2.0**63, 1], r"outside its range"),
    (T.INT8, ["a", "b"], r"input 'x' must be int8, got <U1"),
    (T.BOOL, [1, 0], r"input 'x' must be bool, got int64"),
])
def test_values_an_integer_input_cannot_hold(elem, value, match):
    with pytest.raises(InputError, match=match):
        _identity(elem)(value)


@pytest.mark.parametrize("elem,value,expected", [
    (T.INT8, [3.0, -128.0], np.array([3, -128], np.int8)),
    (T.INT8, np.array([127, 0], np.int64), np.array([127, 0], np.int8)),
    (T.INT32, [True, False], np.array([1, 0], np.int32)),
    (T.FLOAT, [1, 2], np.array([1, 2], np.float32)),
])
def test_lossless_conversions_are_accepted(elem, value, expected):
    out = _identity(elem)(value)
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


def test_ragged_input():
    with pytest.raises(InputError, match=r"input 'x' is not a rectangular array of numbers"):
        load_model(_model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2, "m"])], [_vi("y", [2, "m"])]))(
            [[1.0], [2.0, 3.0]])


def test_shared_symbolic_dimension_must_agree():
    module = load_model(_model([helper.make_node("Add", ["a", "b"], ["y"])], [_vi("a", ["N", 2]), _vi("b", ["N", 2])],
                               [_vi("y", ["N", 2])]))
    with pytest.raises(InputError, match=r"inputs 'a' and 'b' share dimension 'N'.*'a' has N=3 \(axis 0\), 'b' has N=1"):
        module(np.ones((3, 2), np.float32), np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(module(np.ones((3, 2), np.float32), np.ones((3, 2), np.float32)), np.full((3, 2), 2.0))


def test_a_dimension_repeated_within_one_input():
    module = load_model(_model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["n", "n"])], [_vi("y", ["n", "n"])]))
    with pytest.raises(InputError, match=r"inputs 'x' and 'x' share dimension 'n'.*n=2 \(axis 0\).*n=3 \(axis 1\)"):
        module(np.ones((2, 3), np.float32))


def test_memory_error_in_an_op_names_the_node():
    def hungry(x, /):
        raise MemoryError("Unable to allocate 40.0 GiB")

    registry = OpRegistry()
    registry.register("Relu", 14, hungry)
    module = load_model(_model([helper.make_node("Relu", ["x"], ["y"], name="big")], [_vi("x", [2])], [_vi("y", [2])]),
                        registry)
    with pytest.raises(OutOfMemoryError, match=r"node 'big' \(Relu\) ran out of memory .*smaller batch") as info:
        module(np.ones(2, np.float32))
    assert isinstance(info.value, MemoryError)


def test_memory_error_making_an_output_contiguous_names_it(monkeypatch):
    registry = OpRegistry()
    registry.register("Transpose", 13, lambda x, /, *, perm=None: x.T)
    module = load_model(_model([helper.make_node("Transpose", ["x"], ["y"], name="t")], [_vi("x", [2, 3])],
                               [_vi("y", [3, 2])]), registry)

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate")

    monkeypatch.setattr(cml_core.numpy_module.np, "ascontiguousarray", no_memory)
    with pytest.raises(OutOfMemoryError, match=r"output 'y' \(made by node 't' \(Transpose\), shape \(3, 2\)\).*smaller batch"):
        module(np.ones((2, 3), np.float32))


def test_memory_error_while_folding_a_constant():
    registry = OpRegistry()

    def hungry(shape, /, *, value=None):
        raise MemoryError("Unable to allocate 8 EiB")

    registry.register("ConstantOfShape", 9, hungry)
    registry.register("Add", 14, lambda a, b, /: a + b)
    shape = numpy_helper.from_array(np.array([2**31, 2**31], np.int64), "s")
    model = _model([helper.make_node("ConstantOfShape", ["s"], ["c"], name="fill"),
                    helper.make_node("Add", ["x", "c"], ["y"])], [_vi("x", [1])], [_vi("y", ["a", "b"])], [shape])
    with pytest.raises(OutOfMemoryError, match=r"node 'fill' \(ConstantOfShape\): its constant result does not fit"):
        load_model(model, registry)
