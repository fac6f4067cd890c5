"""Maps and sequences of maps as graph inputs and outputs: skl2onnx classifiers with their ZipMap, and
CastMap / DictVectorizer models taking a map, against onnxruntime; map inputs checked at call."""

import numpy as np
import onnx
import pytest
from cml_core.testing import make_node_model, run_onnxruntime
from onnx import TensorProto, helper

from cml_core import InputError, load_model

ML = "ai.onnx.ml"


def _map_type(key: int, value: int, sequence: bool = False) -> onnx.TypeProto:
    map_type = helper.make_map_type_proto(key, helper.make_tensor_type_proto(value, None))
    return helper.make_sequence_type_proto(map_type) if sequence else map_type


def _map_input_model(op_type: str, key: int, value: int, output: int, **attributes) -> onnx.ModelProto:
    """One ``op_type`` node reading the graph input ``x``, a map from ``key`` to ``value`` tensors."""
    node = helper.make_node(op_type, ["x"], ["y"], domain=ML, **attributes)
    graph = helper.make_graph([node], f"one_{op_type}", [helper.make_value_info("x", _map_type(key, value))],
                              [helper.make_tensor_value_info("y", output, [None, None])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, 3)],
                             ir_version=10)


def assert_same_maps(got, expected, what: str = "output") -> None:
    """Lists of dicts: the same keys (of the same Python type) in each, values within float32 rounding."""
    assert isinstance(got, list), f"{what}: {type(got).__name__}, expected a list of dicts"
    assert len(got) == len(expected), f"{what}: {len(got)} maps, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert isinstance(g, dict), f"{what}[{i}] is a {type(g).__name__}"
        assert list(g) == list(e), f"{what}[{i}]: keys {list(g)}, expected {list(e)}"
        assert [type(k) for k in g] == [type(k) for k in e], f"{what}[{i}]: key types differ"
        np.testing.assert_allclose([g[k] for k in e], [e[k] for k in e], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{what}[{i}]")


# -- ZipMap outputs of skl2onnx exports ---------------------------------------------------------


def _iris():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_iris(return_X_y=True)
    return x.astype(np.float32), y


def _classifier(name: str):
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    return {"logistic_regression": lambda: LogisticRegression(max_iter=5000),
            "decision_tree": lambda: DecisionTreeClassifier(max_depth=4, random_state=0)}[name]()


def _zipmap_export(name: str, string_labels: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """The classifier fitted on iris and exported by skl2onnx with its default ZipMap output."""
    skl2onnx = pytest.importorskip("skl2onnx")
    x, y = _iris()
    labels = np.array(["setosa", "versicolor", "virginica"])[y] if string_labels else y
    model = _classifier(name).fit(x, labels)
    onnx_model = skl2onnx.to_onnx(model, x[:1], target_opset={"": 17, ML: 3})
    assert onnx_model.graph.node[-1].op_type == "ZipMap"
    return onnx_model, x


@pytest.mark.parametrize("string_labels", [False, True], ids=["int_labels", "string_labels"])
@pytest.mark.parametrize("name", ["logistic_regression", "decision_tree"])
def test_zipmap_export_matches_onnxruntime(name, string_labels):
    onnx_model, x = _zipmap_export(name, string_labels)
    module = load_model(onnx_model)
    key = "string" if string_labels else "int64"
    assert [s.describe() for s in module.outputs] == [key, f"sequence of map({key} -> float32)"]
    assert not module.outputs[1].is_tensor
    expected_labels, expected_probabilities = run_onnxruntime(onnx_model, {module.input_names[0]: x})
    labels, probabilities = module(x)
    np.testing.assert_array_equal(labels, expected_labels)
    assert labels.dtype == expected_labels.dtype
    assert_same_maps(probabilities, expected_probabilities, "output_probability")
    assert len(probabilities) == len(x)


def test_a_zipmap_export_quantizes_with_its_zipmap_run_by_the_client():
    onnx_model, x = _zipmap_export("decision_tree", False)
    # the probabilities output alone (skl2onnx casts the label, which the tree's twin decodes from whole rows)
    graph = onnx_model.graph
    kept = [n for n in graph.node if n.op_type != "Cast"]
    del graph.node[:]
    graph.node.extend(kept)
    outputs = [o for o in graph.output if o.name != "output_label"]
    del graph.output[:]
    graph.output.extend(outputs)
    module = load_model(onnx_model)
    qmodule = module.quantize(x, n_bits=8)
    assert "ZipMap" in {n.op_type for n in qmodule.client_tail.model.graph.node}
    maps, float_maps = qmodule(x), module(x)
    assert isinstance(maps, list) and len(maps) == len(x) and set(maps[0]) == set(float_maps[0])
    decided = [max(m, key=m.get) for m in maps]
    assert np.mean(np.array(decided) == np.array([max(m, key=m.get) for m in float_maps])) >= 0.97


@pytest.mark.parametrize("labels", [{"classlabels_int64s": [3, 7, 11]}, {"classlabels_strings": ["a", "b", "c"]}],
                         ids=["int64", "string"])
def test_zipmap_node_in_a_model_matches_onnxruntime(labels):
    scores = np.array([[0.25, 0.5, 0.25], [1.0, 0.0, -2.0]], np.float32)
    model = make_node_model("ZipMap", [scores], labels, opset=1, domain=ML)
    expected = run_onnxruntime(model, {"x0": scores})[0]
    assert_same_maps(load_model(model)(scores), expected)


# -- map inputs: CastMap and DictVectorizer ------------------------------------------------------

T = TensorProto
MAP_INPUT_CASES = {
    "castmap_dense": (("CastMap", T.INT64, T.FLOAT, T.FLOAT, {}), {2: 1.5, 0: 3.0, 7: -1.25}),
    "castmap_sparse": (("CastMap", T.INT64, T.FLOAT, T.FLOAT, {"map_form": "SPARSE", "max_map": 5}),
                       {2: 1.5, 0: 3.0, 9: 4.0}),
    "castmap_to_int64": (("CastMap", T.INT64, T.FLOAT, T.INT64, {"cast_to": "TO_INT64"}), {2: 1.5, 0: 3.0}),
    "castmap_to_string": (("CastMap", T.INT64, T.FLOAT, T.STRING, {"cast_to": "TO_STRING"}),
                          {2: 1.5, 0: -3.25, 1: 1e10}),
    "dictvectorizer_string_keys": (("DictVectorizer", T.STRING, T.FLOAT, T.FLOAT,
                                    {"string_vocabulary": ["a", "b", "c"]}), {"b": 2.0, "q": 1.0, "a": -0.5}),
    "dictvectorizer_int64_keys": (("DictVectorizer", T.INT64, T.FLOAT, T.FLOAT,
                                   {"int64_vocabulary": [1, 5, 9]}), {5: 3.5, 9: 4.0, 2: 7.0}),
}


@pytest.mark.parametrize("case", sorted(MAP_INPUT_CASES))
def test_map_input_model_matches_onnxruntime(case):
    (op_type, key, value, output, attributes), feed = MAP_INPUT_CASES[case]
    model = _map_input_model(op_type, key, value, output, **attributes)
    expected = run_onnxruntime(model, {"x": feed})[0]
    module = load_model(model)
    assert module.inputs[0].describe() == f"map({'string' if key == T.STRING else 'int64'} -> float32)"
    got = module(feed)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if got.dtype == object:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_map_input_values_take_the_declared_dtype():
    """Integer values given for a map of doubles become float64, and DictVectorizer keeps that dtype."""
    model = _map_input_model("DictVectorizer", T.STRING, T.DOUBLE, T.DOUBLE, string_vocabulary=["a", "b"])
    module = load_model(model)
    (checked,) = module.check_inputs([{"a": 3, "z": 4}])
    assert checked == {"a": 3.0, "z": 4.0} and all(type(v) is np.float64 for v in checked.values())
    out = module({"a": 3, "z": 4})
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[3.0, 0.0]])


# -- map inputs checked at call -----------------------------------------------------------------


@pytest.fixture(scope="module")
def int_key_module():
    return load_model(_map_input_model("CastMap", T.INT64, T.FLOAT, T.FLOAT))


@pytest.fixture(scope="module")
def string_key_module():
    return load_model(_map_input_model("DictVectorizer", T.STRING, T.FLOAT, T.FLOAT, string_vocabulary=["a"]))


@pytest.mark.parametrize(("value", "message"), [
    ([{0: 1.0}], r"'x' is a map\(int64 -> float32\): pass a dict, got list"),
    (None, "pass a dict, got None"),
    ({"a": 1.0}, r"int64 keys, got the key 'a' \(str\)"),
    ({1.5: 1.0}, r"int64 keys, got the key 1.5 \(float\)"),
    ({True: 1.0}, r"int64 keys, got the key True \(bool\)"),
    ({2**70: 1.0}, "outside the int64 range"),
    ({0: "one"}, r"input 'x\[0\]' must be float32, got <U3"),
    ({0: [1.0, 2.0]}, r"'x\[0\]'.* single values, got shape \(2,\)"),
])
def test_int_key_map_input_errors(int_key_module, value, message):
    with pytest.raises(InputError, match=message):
        int_key_module(value)


@pytest.mark.parametrize(("value", "message"), [
    ({1: 1.0}, r"map\(string -> float32\)\) has string keys, got the key 1 \(int\)"),
    ({b"a": 1.0}, r"string keys, got the key b'a' \(bytes\)"),
    ({"a": np.nan * 1j}, r"input 'x\[\"a\"\]' must be float32, got complex128"),
])
def test_string_key_map_input_errors(string_key_module, value, message):
    with pytest.raises(InputError, match=message):
        string_key_module(value)


def test_map_input_accepts_numpy_keys_and_an_empty_map(int_key_module, string_key_module):
    (checked,) = int_key_module.check_inputs([{np.int32(4): np.float64(0.5), 1: 2}])
    assert checked == {4: 0.5, 1: 2.0}
    assert [type(k) for k in checked] == [int, int] and all(type(v) is np.float32 for v in checked.values())
    np.testing.assert_array_equal(int_key_module({np.int64(2): 1.5, 0: 3}), [[3.0, 1.5]])
    (checked,) = string_key_module.check_inputs([{np.str_("a"): 1.0}])
    assert checked == {"a": 1.0} and type(next(iter(checked))) is str
    np.testing.assert_array_equal(string_key_module({}), np.zeros((1, 1), np.float32))


def test_sequence_of_maps_input_is_checked_per_map():
    """A graph input that is a sequence of maps (handed straight to the output) takes a list of dicts."""
    sequence = _map_type(T.STRING, T.FLOAT, sequence=True)
    graph = helper.make_graph([], "pass", [helper.make_value_info("x", sequence)], [helper.make_value_info("x", sequence)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, 3)],
                              ir_version=10)
    module = load_model(model)
    assert module.inputs[0].describe() == "sequence of map(string -> float32)"
    got = module([{"a": 1, "b": 2.5}, {}])
    assert got == [{"a": 1.0, "b": 2.5}, {}] and type(got[0]["a"]) is np.float32
    with pytest.raises(InputError, match=r"pass a list of dicts, got dict"):
        module({"a": 1.0})
    with pytest.raises(InputError, match=r"input 'x\[1\]' is a map\(string -> float32\): pass a dict, got int"):
        module([{"a": 1.0}, 3])
    with pytest.raises(InputError, match=r"'x\[0\]'.* string keys, got the key 0"):
        module([{0: 1.0}])


def test_map_with_unsupported_keys_or_values_is_refused_at_load():
    from cml_core import ModelLoadError

    for map_type, message in (
        (helper.make_map_type_proto(T.FLOAT, helper.make_tensor_type_proto(T.FLOAT, None)), "float32 keys"),
        (helper.make_map_type_proto(T.INT64, helper.make_sequence_type_proto(
            helper.make_tensor_type_proto(T.FLOAT, None))), "values are not tensors"),
    ):
        vi = helper.make_value_info("x", map_type)
        graph = helper.make_graph([], "pass", [vi], [vi])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
        with pytest.raises(ModelLoadError, match=message):
            load_model(model)
