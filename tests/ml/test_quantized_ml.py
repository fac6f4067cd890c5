"""Quantized twins of the ONNX-ML models against their float models on scikit-learn's bundled data.

Bounds come from measurements at the settings below (fixed seeds, deterministic calibration): digits'
64 features share one range (0..16), so the per-tensor input quantizer keeps every tree comparison
exact at 8 bits; breast cancer's features span five orders of magnitude, so those models are trained
on standardized features (with raw features one 8-bit input quantizer cannot resolve the small
features: measured 80% label agreement for the depth-5 tree).
"""

import warnings

import numpy as np
import pytest

from cml_core import load_model

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

from sklearn import datasets  # noqa: E402
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor  # noqa: E402


def _data(name, standardize=False):
    loader = {"breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits,
              "diabetes": datasets.load_diabetes, "iris": datasets.load_iris}[name]
    x, y = loader(return_X_y=True)
    if standardize:
        x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), y


def _modules(model, x, y, n_bits=8):
    from skl2onnx import to_onnx

    model.fit(x, y)
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if hasattr(final, "predict_proba") else None
    module = load_model(to_onnx(model, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module, module.quantize(x, n_bits=n_bits)


#: (model, data, standardized, least label agreement at 8 bits; measured value in the comment)
CLASSIFIERS = {
    "decision_tree_digits": (lambda: DecisionTreeClassifier(max_depth=5, random_state=0), "digits", False, 0.99),  # 1.0
    "random_forest_digits": (lambda: RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0),
                             "digits", False, 0.99),  # 0.9994
    "decision_tree_breast_cancer": (lambda: DecisionTreeClassifier(max_depth=5, random_state=0), "breast_cancer",
                                    True, 0.99),  # 0.9912
    "gradient_boosting_breast_cancer": (lambda: GradientBoostingClassifier(n_estimators=20, random_state=0),
                                        "breast_cancer", True, 0.99),  # 0.9912
    "logistic_regression_breast_cancer": (lambda: LogisticRegression(max_iter=5000), "breast_cancer", True,
                                          0.99),  # 1.0
    "scaler_logistic_regression": (lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                                   "breast_cancer", True, 0.99),  # 1.0
}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_quantized_classifier_agrees_with_float(name):
    make, data, standardize, least = CLASSIFIERS[name]
    x, y = _data(data, standardize)
    module, qmodule = _modules(make(), x, y)
    labels, probabilities = module(x)
    q_labels, q_probabilities = qmodule(x)
    assert q_labels.dtype == labels.dtype and q_probabilities.dtype == probabilities.dtype
    assert np.mean(q_labels == labels) >= least


@pytest.mark.parametrize("name", ["decision_tree_digits", "gradient_boosting_breast_cancer"])
def test_quantized_trees_are_exact_with_fine_inputs(name):
    """At 16 bits (finer than any threshold gap of these models' features) every comparison is the float
    model's: the labels agree on every sample and the scores within the leaf weights' quantization."""
    make, data, standardize, _ = CLASSIFIERS[name]
    x, y = _data(data, standardize)
    module, qmodule = _modules(make(), x, y, n_bits=16)
    labels, probabilities = module(x)
    q_labels, q_probabilities = qmodule(x)
    np.testing.assert_array_equal(q_labels, labels)
    np.testing.assert_allclose(q_probabilities, probabilities, atol=1e-4)


#: share of samples whose quantized prediction is within 1% of the output range of the float one (measured 0.9864)
MEASURED_TREE_REGRESSOR_AGREEMENT = 0.98


def test_quantized_regressors_agree_with_float():
    x, y = _data("diabetes")
    module, qmodule = _modules(DecisionTreeRegressor(max_depth=6, random_state=0), x, y)
    same_leaf = np.abs(module(x) - qmodule(x)) <= 0.01 * np.ptp(module(x))
    assert np.mean(same_leaf) >= MEASURED_TREE_REGRESSOR_AGREEMENT
    module, qmodule = _modules(LinearRegression(), x, y)
    assert np.abs(module(x) - qmodule(x)).max() <= 0.01 * np.ptp(module(x))



@pytest.mark.parametrize("name", ["gradient_boosting_iris", "logistic_regression_digits"])
def test_row_wise_post_transforms_are_finished_by_the_client(name):
    """A multi-class model's SOFTMAX mixes the scores of a row: the encrypted program ends at the raw scores and
    the probabilities are decoded from whole decrypted rows, like the label."""
    make, data, standardize = {
        "gradient_boosting_iris": (lambda: GradientBoostingClassifier(n_estimators=5, random_state=0), "iris", True),
        "logistic_regression_digits": (lambda: LogisticRegression(max_iter=5000), "digits", False)}[name]
    x, y = _data(data, standardize=standardize)
    module, qmodule = _modules(make(), x, y)
    post = {a.name: a.s for n in module.onnx_model.graph.node for a in n.attribute if a.name == "post_transform"}
    assert post["post_transform"] == b"SOFTMAX"
    labels, probabilities = module(x)
    q_labels, q_probabilities = qmodule(x)
    np.testing.assert_allclose(q_probabilities.sum(axis=1), 1.0, rtol=1e-6)  # a softmax of each whole row
    # 8-bit scores: each probability moves by at most the scores' error times its slope (below 1/2)
    assert np.abs(q_probabilities - probabilities).max() < 0.05
    assert np.mean(q_labels == labels) >= 0.98
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodule = module.quantize(x, n_bits=4)
        qmodule.compile(x)
    simulated, clear = qmodule.forward(x[:3], fhe="simulate"), qmodule.forward(x[:3])
    for got, expected in zip(simulated, clear):
        np.testing.assert_array_equal(got, expected)
