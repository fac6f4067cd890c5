"""scikit-learn models exported by skl2onnx: ``load_model`` gives onnxruntime's outputs on the same file."""

import numpy as np
import pytest
from cml_core.testing import assert_close, run_onnxruntime

from cml_core import load_model

sklearn = pytest.importorskip("sklearn")
skl2onnx = pytest.importorskip("skl2onnx")

from sklearn import datasets  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402
from sklearn.svm import SVC, LinearSVC  # noqa: E402
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor  # noqa: E402


def _data(name):
    loader = {"breast_cancer": datasets.load_breast_cancer, "iris": datasets.load_iris,
              "digits": datasets.load_digits, "diabetes": datasets.load_diabetes}[name]
    x, y = loader(return_X_y=True)
    return x.astype(np.float32), y


def _export(model, x, zipmap=False):
    from skl2onnx import to_onnx

    opsets = {"": 17, "ai.onnx.ml": 3}
    if zipmap:
        return to_onnx(model, x[:1], target_opset=opsets)
    try:
        return to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset=opsets)
    except NameError:  # a model without probabilities takes no zipmap option
        return to_onnx(model, x[:1], target_opset=opsets)


MODELS = {
    "logistic_regression": (lambda: LogisticRegression(max_iter=5000), "iris"),
    "logistic_regression_binary": (lambda: LogisticRegression(max_iter=5000), "breast_cancer"),
    "linear_svc": (lambda: LinearSVC(max_iter=5000), "iris"),
    "svc_rbf": (lambda: SVC(kernel="rbf", decision_function_shape="ovo"), "iris"),
    "svc_rbf_probability": (lambda: SVC(kernel="rbf", probability=True, random_state=0), "iris"),
    "decision_tree": (lambda: DecisionTreeClassifier(max_depth=5, random_state=0), "breast_cancer"),
    "decision_tree_multiclass": (lambda: DecisionTreeClassifier(max_depth=5, random_state=0), "digits"),
    "random_forest": (lambda: RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0), "digits"),
    "gradient_boosting": (lambda: GradientBoostingClassifier(n_estimators=20, random_state=0), "breast_cancer"),
    "gradient_boosting_multiclass": (lambda: GradientBoostingClassifier(n_estimators=20, random_state=0), "iris"),
    "decision_tree_regressor": (lambda: DecisionTreeRegressor(max_depth=6, random_state=0), "diabetes"),
    "scaler_logistic_regression": (lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                                   "breast_cancer"),
}


def _compare(onnx_model, feeds):
    expected = run_onnxruntime(onnx_model, feeds)
    module = load_model(onnx_model)
    got = module.run(*[feeds[name] for name in module.input_names])
    got = [got[name] for name in module.output_names]
    assert len(got) == len(expected)
    for name, g, e in zip(module.output_names, got, expected):
        e = np.asarray(e)
        if e.dtype.kind in "OUS" or e.dtype.kind in "iu":
            np.testing.assert_array_equal(np.asarray(g).astype(e.dtype), e, err_msg=name)
            assert np.asarray(g).dtype.kind == ("O" if e.dtype.kind in "OUS" else e.dtype.kind)
        else:
            assert_close(g, e, what=name, atol=1e-5)
    return got


@pytest.mark.filterwarnings("ignore:Attribute `prob:FutureWarning")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_matches_onnxruntime(name):
    make, data = MODELS[name]
    x, y = _data(data)
    model = make().fit(x, y)
    onnx_model = _export(model, x)
    _compare(onnx_model, {onnx_model.graph.input[0].name: x})


def test_string_labels_match_onnxruntime():
    x, y = _data("iris")
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    for model in (LogisticRegression(max_iter=5000), DecisionTreeClassifier(max_depth=4, random_state=0)):
        onnx_model = _export(model.fit(x, names), x)
        got = _compare(onnx_model, {onnx_model.graph.input[0].name: x})
        assert got[0].dtype == object and set(got[0]) <= set(names)


def test_one_hot_encoder_pipeline_matches_onnxruntime():
    from skl2onnx import to_onnx

    rng = np.random.default_rng(0)
    categories = rng.integers(0, 4, size=(120, 2)).astype(np.int64)
    numbers = rng.normal(size=(120, 3)).astype(np.float32)
    y = (categories[:, 0] + (numbers[:, 0] > 0)) % 3
    x = np.concatenate([categories.astype(np.float32), numbers], axis=1)
    pipeline = make_pipeline(
        ColumnTransformer([("categories", OneHotEncoder(handle_unknown="ignore"), [0, 1]),
                           ("numbers", StandardScaler(), [2, 3, 4])]),
        LogisticRegression(max_iter=5000)).fit(x, y)
    onnx_model = to_onnx(pipeline, x[:1], options={id(pipeline.steps[-1][1]): {"zipmap": False}},
                         target_opset={"": 17, "ai.onnx.ml": 3})
    ops = {n.op_type for n in onnx_model.graph.node}
    assert "OneHotEncoder" in ops
    _compare(onnx_model, {onnx_model.graph.input[0].name: x})
