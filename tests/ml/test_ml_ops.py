"""Every ai.onnx.ml op against onnxruntime on one-node models, and every signature against onnx.defs."""

import numpy as np
import onnx
import onnx.defs
import pytest
from cml_core.signature import REQUIRED
from cml_core.testing import check_op, make_node_model, run_onnxruntime
from cml_core.testing.models import feeds_of
from hypothesis import given, settings
from hypothesis import strategies as st

from cml_core import get_registry, load_model

ML = "ai.onnx.ml"
IMPLS = [i for i in get_registry() if i.provider.distribution == "cml-ops-ml"]


def test_every_ml_op_is_registered():
    names = {i.op_type for i in IMPLS}
    expected = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain == ML}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: f"{i.op_type}-{i.since_version}")
def test_signature_matches_the_onnx_schema(impl):
    schema = onnx.defs.get_schema(impl.op_type, impl.since_version, ML)
    assert schema.since_version == impl.since_version
    sig = impl.signature
    if schema.inputs[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        assert sig.variadic_input is not None
    else:
        assert len(sig.required_inputs) == len(schema.inputs)
    assert set(sig.attributes) == set(schema.attributes)
    for name, attr in schema.attributes.items():
        default = onnx.helper.get_attribute_value(attr.default_value) if attr.default_value.name else None
        ours = sig.attributes[name]
        if attr.required:
            assert ours is REQUIRED, name
        elif default is None:
            assert ours is None, name
        else:
            default = default.decode() if isinstance(default, bytes) else default
            assert (np.float32(ours) == np.float32(default)) if isinstance(default, float) else ours == default, name


TRANSFORMS = ["NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT"]
floats = st.floats(-3, 3, width=32)


def _x(data, features, rows=(1, 6)):
    n = data.draw(st.integers(*rows))
    return np.asarray(data.draw(st.lists(floats, min_size=n * features, max_size=n * features)),
                      dtype=np.float32).reshape(n, features)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_linear_classifier(data):
    features = data.draw(st.integers(1, 4))
    classes = data.draw(st.integers(1, 4))
    labels = list(range(classes if classes > 1 else data.draw(st.sampled_from([0, 2]))))
    transform = data.draw(st.sampled_from(TRANSFORMS))
    if classes == 1 and len(labels) == 2 and transform == "PROBIT":
        transform = "NONE"
    attrs = {"coefficients": data.draw(st.lists(floats, min_size=classes * features, max_size=classes * features)),
             "intercepts": data.draw(st.lists(floats, min_size=classes, max_size=classes)),
             "post_transform": transform}
    if labels:
        attrs["classlabels_ints"] = labels
    x = _x(data, features)
    atol = 1e-5
    if transform == "PROBIT":
        coefficients = np.asarray(attrs["coefficients"], np.float64).reshape(classes, features)
        scores = x.astype(np.float64) @ coefficients.T + np.asarray(attrs["intercepts"], np.float64)
        atol = max(atol, float(np.max(_probit_rounding(scores), initial=0.0)))
    check_op("LinearClassifier", [x], attrs, opset=1, domain=ML, n_outputs=2, atol=atol)


def _probit_rounding(scores):
    """How far two float32 evaluations of onnxruntime's closed-form PROBIT may differ: its inner
    ``sqrt(v * v - v2) - v`` cancels (``v`` near 4.3, the difference near ``-v2 / (2 v)``), so a few float32
    roundings of ``v`` (``4 * eps * v``) move its square root by that over twice the root, times sqrt(2),
    at most about 1e-3 for a score at 0.5 (seen: -0.039184 against onnxruntime's -0.039172 for a score of
    0.484). A wrong transform differs by far more."""
    u = np.clip(2 * scores - 1, -1 + 1e-7, 1 - 1e-7)
    log = np.log((1 - u) * (1 + u))
    v = 2 / (np.pi * 0.147) + 0.5 * log
    rounding = 4 * np.finfo(np.float32).eps * np.abs(v)
    inner = np.maximum(-v + np.sqrt(v * v - log / 0.147), rounding)  # float32 resolves it no finer
    return np.sqrt(2) * rounding / (2 * np.sqrt(inner))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_linear_regressor(data):
    features, targets = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    attrs = {"coefficients": data.draw(st.lists(floats, min_size=targets * features, max_size=targets * features)),
             "intercepts": data.draw(st.lists(floats, min_size=targets, max_size=targets)),
             "targets": targets, "post_transform": data.draw(st.sampled_from(["NONE", "SOFTMAX", "LOGISTIC"]))}
    check_op("LinearRegressor", [_x(data, features)], attrs, opset=1, domain=ML, atol=1e-5)


def _random_tree(data, features, tree_id, first_leaf):
    """Nodes of one random tree (breadth first), its leaves numbered from ``first_leaf``."""
    depth = data.draw(st.integers(1, 3))
    nodes, leaves = [], []
    frontier = [(0, 0)]
    next_id = 1
    while frontier:
        node_id, level = frontier.pop(0)
        if level == depth or (level and data.draw(st.booleans())):
            nodes.append((tree_id, node_id, 0, 0.0, "LEAF", 0, 0))
            leaves.append(node_id)
            continue
        mode = data.draw(st.sampled_from(["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT"]))
        nodes.append((tree_id, node_id, data.draw(st.integers(0, features - 1)),
                      float(np.float32(data.draw(floats))), mode, next_id, next_id + 1))
        frontier += [(next_id, level + 1), (next_id + 1, level + 1)]
        next_id += 2
    return nodes, leaves


def _forest_attributes(data, features, n_targets, prefix):
    trees = data.draw(st.integers(1, 3))
    nodes, weights = [], []
    for t in range(trees):
        tree_nodes, leaves = _random_tree(data, features, t, 0)
        nodes += tree_nodes
        for leaf in leaves:
            for target in range(n_targets):
                weights.append((t, leaf, target, float(np.float32(data.draw(floats)))))
    columns = list(zip(*nodes))
    attrs = {"nodes_treeids": list(columns[0]), "nodes_nodeids": list(columns[1]),
             "nodes_featureids": list(columns[2]), "nodes_values": list(columns[3]), "nodes_modes": list(columns[4]),
             "nodes_truenodeids": list(columns[5]), "nodes_falsenodeids": list(columns[6])}
    w = list(zip(*weights))
    attrs.update({f"{prefix}_treeids": list(w[0]), f"{prefix}_nodeids": list(w[1]), f"{prefix}_ids": list(w[2]),
                  f"{prefix}_weights": list(w[3])})
    return attrs


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_tree_ensemble_regressor(data):
    features, targets = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    attrs = _forest_attributes(data, features, targets, "target")
    attrs.update(n_targets=targets, aggregate_function=data.draw(st.sampled_from(["SUM", "AVERAGE", "MIN", "MAX"])),
                 post_transform=data.draw(st.sampled_from(["NONE", "SOFTMAX", "LOGISTIC"])))
    if data.draw(st.booleans()):
        attrs["base_values"] = data.draw(st.lists(floats, min_size=targets, max_size=targets))
    opset = data.draw(st.sampled_from([1, 3]))
    check_op("TreeEnsembleRegressor", [_x(data, features)], attrs, opset=opset, domain=ML, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_tree_ensemble_classifier(data):
    features, classes = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 4))
    attrs = _forest_attributes(data, features, classes, "class")
    attrs.update(classlabels_int64s=list(range(classes)),
                 post_transform=data.draw(st.sampled_from(["NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO"])))
    if data.draw(st.booleans()):
        attrs["base_values"] = data.draw(st.lists(floats, min_size=classes, max_size=classes))
    opset = data.draw(st.sampled_from([1, 3]))
    check_op("TreeEnsembleClassifier", [_x(data, features)], attrs, opset=opset, domain=ML, n_outputs=2, atol=1e-5)


#: onnxruntime reads TreeEnsemble's post_transform codes in its own enum order (NONE, LOGISTIC, SOFTMAX, ...),
#: not the spec's (NONE, SOFTMAX, LOGISTIC, ...): a model asking for SOFTMAX (1) gets LOGISTIC there. cml follows
#: the spec; the check runs onnxruntime on the code that means the same transform to it.
ORT_TRANSFORM_CODE = {0: 0, 1: 2, 2: 1, 3: 3, 4: 4}


def _tree_ensemble_5_attributes(aggregate, transform):
    return {"aggregate_function": aggregate, "post_transform": transform, "n_targets": 2,
            "tree_roots": [0, 2], "nodes_featureids": [0, 1, 1],
            "nodes_modes": onnx.numpy_helper.from_array(np.array([0, 3, 6], dtype=np.uint8)),
            "nodes_splits": onnx.numpy_helper.from_array(np.array([1.0, 0.5, 0.0], dtype=np.float32)),
            "membership_values": onnx.numpy_helper.from_array(np.array([0.0, 3.0], dtype=np.float32)),
            "nodes_truenodeids": [0, 1, 3], "nodes_trueleafs": [1, 1, 1],
            "nodes_falsenodeids": [1, 2, 4], "nodes_falseleafs": [0, 1, 1],
            "leaf_targetids": [0, 1, 0, 1, 0], "leaf_weights": onnx.numpy_helper.from_array(
                         np.array([1.5, -2.0, 0.25, 3.0, 0.75], dtype=np.float32))}


def test_tree_ensemble_5():
    x = np.array([[0.5, -1.0], [2.0, 3.0], [-1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    for aggregate in range(4):
        for transform in (0, 1, 2, 3):
            def reference(*inputs, transform=transform, **attributes):
                return run_onnxruntime_on(inputs, {**attributes, "post_transform": ORT_TRANSFORM_CODE[transform]})

            check_op("TreeEnsemble", [x], _tree_ensemble_5_attributes(aggregate, transform), opset=5, domain=ML,
                     atol=1e-5, reference=reference)


def run_onnxruntime_on(inputs, attributes):
    model = make_node_model("TreeEnsemble", list(inputs), attributes, opset=5, domain=ML)
    return run_onnxruntime(model, feeds_of(model, list(inputs)))


@pytest.mark.parametrize("kernel", ["LINEAR", "POLY", "RBF", "SIGMOID"])
@pytest.mark.parametrize("transform", ["NONE", "SOFTMAX", "LOGISTIC"])
def test_svm(kernel, transform):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    vectors = rng.normal(size=(5, 3)).astype(np.float32)
    attrs = {"kernel_type": kernel, "kernel_params": [0.3, 0.5, 2.0], "support_vectors": vectors.ravel().tolist(),
             "vectors_per_class": [2, 2, 1], "coefficients": rng.normal(size=10).tolist(),
             "rho": rng.normal(size=3).tolist(), "classlabels_ints": [4, 5, 6], "post_transform": transform}
    check_op("SVMClassifier", [x], attrs, opset=1, domain=ML, n_outputs=2, atol=1e-5)
    regressor = {"kernel_type": kernel, "kernel_params": [0.3, 0.5, 2.0], "support_vectors": vectors.ravel().tolist(),
                 "n_supports": 5, "coefficients": rng.normal(size=5).tolist(), "rho": [0.2]}
    check_op("SVMRegressor", [x], regressor, opset=1, domain=ML, atol=1e-5)


CASES = [
    ("Scaler", [np.array([[1, 2, 3], [4, -5, 6]], np.float32)], {"offset": [0.5, 1.0, -1.0], "scale": [2.0, 0.5, 3.0]}),
    ("Scaler", [np.array([[1, 2, 3]], np.float64)], {"offset": [0.5], "scale": [2.0]}),
    ("Normalizer", [np.array([[1, -2, 3], [0, 0, 0], [-4, -1, -2]], np.float32)], {"norm": "MAX"}),
    ("Normalizer", [np.array([[1, -2, 3], [0, 0, 0]], np.float32)], {"norm": "L1"}),
    ("Normalizer", [np.array([[1, -2, 3], [0, 0, 0]], np.float32)], {"norm": "L2"}),
    ("Binarizer", [np.array([[1, -2, 0.5], [0.25, 0, 3]], np.float32)], {"threshold": 0.5}),
    ("ArrayFeatureExtractor", [np.array([[1, 2, 3], [4, 5, 6]], np.float32), np.array([2, 0], np.int64)], {}),
    ("ArrayFeatureExtractor", [np.array([1, 2, 3], np.int64), np.array([1], np.int64)], {}),
    ("Imputer", [np.array([[1, np.nan, 3], [np.nan, 5, 6]], np.float32)],
     {"imputed_value_floats": [9.0, 8.0, 7.0], "replaced_value_float": float("nan")}),
    ("Imputer", [np.array([[1, 0, 3], [0, 5, 6]], np.int64)], {"imputed_value_int64s": [4], "replaced_value_int64": 0}),
    ("OneHotEncoder", [np.array([[1, 3], [2, 7]], np.int64)], {"cats_int64s": [1, 2, 3]}),
    ("OneHotEncoder", [np.array([["a", "b"], ["c", "a"]], object)], {"cats_strings": ["a", "b"]}),
    ("LabelEncoder", [np.array(["a", "c", "b"], object)], {"keys_strings": ["a", "b"], "values_int64s": [4, 5]}),
    ("LabelEncoder", [np.array([1, 2, 7], np.int64)], {"keys_int64s": [1, 2], "values_strings": ["x", "y"],
                                                      "default_string": "z"}),
    ("LabelEncoder", [np.array([1.5, 2.0], np.float32)], {"keys_floats": [1.5], "values_floats": [3.0]}),
    ("CategoryMapper", [np.array(["a", "q"], object)], {"cats_strings": ["a", "b"], "cats_int64s": [5, 6]}),
    ("CategoryMapper", [np.array([6, 8], np.int64)], {"cats_strings": ["a", "b"], "cats_int64s": [5, 6]}),
]


@pytest.mark.parametrize("op, inputs, attrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_preprocessing(op, inputs, attrs):
    opset = 2 if op == "LabelEncoder" else 1
    constant = (1,) if op == "ArrayFeatureExtractor" else ()
    check_op(op, inputs, attrs, opset=opset, domain=ML, constant_inputs=constant)


def test_label_encoder_1_and_4():
    check_op("LabelEncoder", [np.array(["b", "z"], object)], {"classes_strings": ["a", "b"]}, opset=1, domain=ML)
    keys = onnx.numpy_helper.from_array(np.array([3, 4], np.int64))
    values = onnx.numpy_helper.from_array(np.array([0.5, 1.5], np.float32))
    check_op("LabelEncoder", [np.array([4, 9], np.int64)], {"keys_tensor": keys, "values_tensor": values},
             opset=4, domain=ML)


def test_feature_vectorizer():
    a = np.array([[1, 2], [3, 4]], np.float32)
    b = np.array([[5, 7, 8], [6, 9, 1]], np.float32)
    check_op("FeatureVectorizer", [a, b], {"inputdimensions": [2, 2]}, opset=1, domain=ML)


def test_map_ops_directly():
    """The map ops called as functions; ZipMap also in a model against onnxruntime (CastMap and
    DictVectorizer run in models taking map inputs in test_map_values.py)."""
    impl = get_registry().resolve(ML, "ZipMap", 1)
    rows = impl.function(np.array([[0.25, 0.75], [1.0, 0.0]], np.float32), classlabels_int64s=[3, 7])
    assert rows == [{3: 0.25, 7: 0.75}, {3: 1.0, 7: 0.0}]
    rows = impl.function(np.array([[0.5, 0.5]], np.float32), classlabels_strings=["a", "b"])
    assert rows == [{"a": 0.5, "b": 0.5}]
    for scores, labels in ((np.array([[0.25, 0.75], [1.0, 0.0]], np.float32), {"classlabels_int64s": [3, 7]}),
                           (np.array([[0.5, 0.5]], np.float32), {"classlabels_strings": ["a", "b"]})):
        model = make_node_model("ZipMap", [scores], labels, opset=1, domain=ML)
        assert load_model(model)(scores) == run_onnxruntime(model, feeds_of(model, [scores]))[0]
    cast = get_registry().resolve(ML, "CastMap", 1).function
    np.testing.assert_array_equal(cast({2: 1.5, 0: 3.0}), np.array([[3.0, 1.5]], np.float32))
    np.testing.assert_array_equal(cast({2: 1.5, 0: 3.0}, map_form="SPARSE", max_map=4),
                                  np.array([[3.0, 0, 1.5, 0]], np.float32))
    vectorize = get_registry().resolve(ML, "DictVectorizer", 1).function
    np.testing.assert_array_equal(vectorize({"b": 2.0, "q": 1.0}, string_vocabulary=["a", "b"]),
                                  np.array([[0.0, 2.0]], np.float32))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_tree_ensemble_classifier_two_class_conventions(data):
    """Two classes with weights on one class only (onnxruntime's binary case) or on classes some leaves skip,
    with 0, 1 or 2 base values: the conventions onnxruntime applies to each."""
    features = data.draw(st.integers(1, 3))
    attrs = _forest_attributes(data, features, 1, "class")
    weighted = data.draw(st.sampled_from([0, 1]))
    attrs["class_ids"] = [weighted] * len(attrs["class_ids"])
    if data.draw(st.booleans()):
        attrs["class_weights"] = [abs(w) for w in attrs["class_weights"]]
    attrs.update(classlabels_int64s=[0, 1], post_transform=data.draw(st.sampled_from(["NONE", "LOGISTIC"])))
    bases = data.draw(st.integers(0, 2))
    if bases:
        attrs["base_values"] = data.draw(st.lists(floats, min_size=bases, max_size=bases))
    x = _x(data, features)
    impl = get_registry().resolve(ML, "TreeEnsembleClassifier", 1)
    try:
        impl.function(x, **attrs)
    except ValueError:  # a second score onnxruntime leaves undefined: refused, nothing to compare
        return
    check_op("TreeEnsembleClassifier", [x], attrs, opset=1, domain=ML, n_outputs=2, atol=1e-5)


@pytest.mark.parametrize("kernel", ["LINEAR", "RBF", None])
@pytest.mark.parametrize("transform", ["NONE", "SOFTMAX", "LOGISTIC"])
def test_two_class_svm(kernel, transform):
    """Two classes: one decision value (support vectors) or two linear scores (``kernel`` None)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 3)).astype(np.float32)
    if kernel is None:
        attrs = {"kernel_params": [0.0, 0.0, 0.0], "coefficients": rng.normal(size=6).tolist(), "rho": [0.2]}
    else:
        attrs = {"kernel_type": kernel, "kernel_params": [0.3, 0.5, 2.0], "vectors_per_class": [2, 2],
                 "support_vectors": rng.normal(size=12).tolist(), "coefficients": rng.normal(size=4).tolist(),
                 "rho": [0.1]}
    attrs.update(classlabels_ints=[3, 8], post_transform=transform)
    check_op("SVMClassifier", [x], attrs, opset=1, domain=ML, n_outputs=2, atol=1e-5)
