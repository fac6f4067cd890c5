"""``compile_sklearn_model``: a fitted scikit-learn estimator exported with skl2onnx, quantized and compiled in
one call, on scikit-learn's bundled breast-cancer data (raw features: 30 columns spanning 0.05 to about 2500,
which the automatic per-feature input quantization gives one grid each).

Label agreement of the quantized module with the estimator on the 569 samples it was fitted and calibrated
on, measured at n_bits 6 (fixed seeds, deterministic calibration): LogisticRegression 0.893 (a logistic
regression fitted on raw features leans on the wide columns, see tests/quantization/test_per_feature_inputs.py),
DecisionTreeClassifier of depth 4 0.982, a StandardScaler + LogisticRegression pipeline (the Scaler runs per
feature on the encrypted integers) 0.998.
"""

import sys
import warnings

import numpy as np
import pytest

from cml_core import ModelLoadError, compile_sklearn_model

pytest.importorskip("skl2onnx")

from sklearn import datasets  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

#: (estimator, least label agreement with the estimator at n_bits 6; the measured value in the comment)
ESTIMATORS = {
    "logistic_regression": (lambda: LogisticRegression(max_iter=5000), 0.88),  # 0.8928
    "decision_tree": (lambda: DecisionTreeClassifier(max_depth=4, random_state=0), 0.97),  # 0.9824
    "scaler_logistic_regression": (lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                                   0.99),  # 0.9982
    # no probabilities: exported without a ZipMap option, its scores picked by an ArrayFeatureExtractor (skl2onnx
    # cannot convert it at the end of a Pipeline: it asks the final step for a ZipMap option LinearSVC lacks)
    "linear_svc": (lambda: LinearSVC(), 0.92),  # 0.9279 (raw features, like the logistic regression above)
}


@pytest.fixture(scope="module")
def data():
    x, y = datasets.load_breast_cancer(return_X_y=True)
    return x.astype(np.float32), y


@pytest.mark.fhe
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_compiled_estimator_simulates_like_the_clear_program_and_agrees_with_the_estimator(name, data):
    make, least = ESTIMATORS[name]
    x, y = data
    estimator = make().fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodule = compile_sklearn_model(estimator, x, n_bits=6)
    samples = x[:5]
    simulated = qmodule.forward(samples, fhe="simulate")
    clear = qmodule.forward(samples)
    assert len(simulated) == len(clear) == 2  # the label and the probabilities, no ZipMap
    for got, expected in zip(simulated, clear):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    labels, probabilities = qmodule(x)
    assert probabilities.shape[0] == len(x)
    assert np.mean(np.asarray(labels).ravel() == estimator.predict(x)) >= least


def test_an_unfitted_estimator_is_refused(data):
    x, _ = data
    with pytest.raises(ModelLoadError, match="not fitted"):
        compile_sklearn_model(LogisticRegression(), x, n_bits=6)


def test_missing_skl2onnx_names_the_extra_to_install(data, monkeypatch):
    x, y = data
    estimator = DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, y)
    monkeypatch.setitem(sys.modules, "skl2onnx", None)
    with pytest.raises(ModelLoadError, match=r'pip install "cml-ops-ml\[sklearn\]"'):
        compile_sklearn_model(estimator, x, n_bits=6)


@pytest.mark.fhe
def test_choose_rounding_scores_a_classifier_on_its_probabilities_not_its_label(data):
    """A skl2onnx classifier's first output is its 1-D label: the score is taken on the probabilities."""
    from cml_core.fhe.models import export_sklearn
    from sklearn.tree import DecisionTreeClassifier

    from cml_core import choose_rounding, load_model

    x, y = data
    module = load_model(export_sklearn(DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y), x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodule = module.quantize(x, n_bits=5)
        choice = choose_rounding(qmodule, x, x[:100], y[:100], method="exact")
    assert choice.reference_score == pytest.approx(np.mean(module(x[:100])[1].argmax(1) == y[:100]))
    assert choice.score >= choice.target
