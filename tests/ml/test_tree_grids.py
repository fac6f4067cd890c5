"""Tree ensembles quantize their input over the thresholds' spans (``QuantizedOp.decision_ranges``): each feature's
grid covers its lowest to highest threshold with a step to spare, so a value beyond keeps its side of every
threshold when clipped, and every sample farther than half a step from the thresholds is decided as in float."""

import warnings

import numpy as np
import pytest

pytest.importorskip("skl2onnx")

from cml_core.fhe.models import export_sklearn  # noqa: E402
from cml_core.quantization.quantizers import PerFeatureQuantizer  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor  # noqa: E402

from cml_core import load_model  # noqa: E402

# leaf values are probabilities (or, for the regression tree, the 0/1 labels' means): all in [0, 1], summed
# (averaged over a forest) without a post transform, so each output errs by at most half a leaf-weight step
ESTIMATORS = {
    "tree": lambda: DecisionTreeClassifier(max_depth=5, random_state=0),
    "forest": lambda: RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0),
    "regression tree": lambda: DecisionTreeRegressor(max_depth=4, random_state=0),
}


@pytest.fixture(scope="module")
def data():
    x, y = load_breast_cancer(return_X_y=True)
    return x.astype(np.float32), y  # raw features: spans from 0.05 to about 2500


def _thresholds(estimator, n_features):
    trees = [estimator] if hasattr(estimator, "tree_") else list(np.ravel(estimator.estimators_))
    found = [[] for _ in range(n_features)]
    for tree in trees:
        for feature, threshold in zip(tree.tree_.feature, tree.tree_.threshold):
            if feature >= 0:
                found[feature].append(np.float32(threshold))  # the export's thresholds are float32
    return found


@pytest.mark.parametrize("n_bits", [4, 6])
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_tree_inputs_are_gridded_over_the_thresholds_and_decided_as_in_float(name, n_bits, data):
    x, y = data
    estimator = ESTIMATORS[name]().fit(x, y)
    module = load_model(export_sklearn(estimator, x))
    qmodule = module.quantize(x, n_bits=n_bits)
    (quantizer,) = qmodule.input_quantizers
    assert isinstance(quantizer, PerFeatureQuantizer)
    scales, zero_points = np.asarray(quantizer.scales), np.asarray(quantizer.zero_points)
    grid_low, grid_high = scales * (0 - zero_points), scales * (2**n_bits - 1 - zero_points)
    thresholds = _thresholds(estimator, x.shape[1])
    near = np.zeros(len(x), dtype=bool)  # samples within half a step of one of their feature's thresholds
    for j, ts in enumerate(thresholds):
        if not ts:  # a feature no tree reads: its codes are never looked at
            continue
        # every threshold strictly inside the grid: a clipped value keeps its side of all of them
        assert grid_low[j] < min(ts) and max(ts) < grid_high[j]
        distance = np.min(np.abs(x[:, j, None].astype(np.float64) - np.asarray(ts, np.float64)[None, :]), axis=1)
        near |= distance <= 0.5 * scales[j] * (1 + 1e-6)
    wider = x * 1.5  # beyond the calibration data: clipped to the grid, with no warning (clipping is exact)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for sample_set in (x, wider):
            expected, got = module(sample_set), qmodule(sample_set)
            far = ~near if sample_set is x else np.ones(len(x), dtype=bool)
            if sample_set is wider:  # only samples whose every read feature is far from its thresholds
                for j, ts in enumerate(thresholds):
                    if ts:
                        distance = np.min(np.abs(wider[:, j, None].astype(np.float64) -
                                                 np.asarray(ts, np.float64)[None, :]), axis=1)
                        far &= distance > 0.5 * scales[j] * (1 + 1e-6)
            assert far.any()
            # leaf weights are quantized symmetrically on n_bits: half a step of the largest, 1
            bound = 0.5 / (2 ** (n_bits - 1) - 1) + 1e-6
            if isinstance(expected, tuple):  # classifier: label and probabilities
                np.testing.assert_allclose(got[1][far], expected[1][far], atol=bound)
                clear = far & (np.abs(expected[1][:, 1] - 0.5) > bound)  # labels no weight rounding can flip
                np.testing.assert_array_equal(got[0][clear], expected[0][clear])
            else:
                np.testing.assert_allclose(got[far], expected[far], atol=bound)
