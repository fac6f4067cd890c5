"""A model input read only through decisions on thresholds (a tree ensemble's comparisons, Hummingbird's
comparisons behind its feature-selection product) is quantized by counting the thresholds each value passes
(``DecisionQuantizer``): every decision is taken exactly as in float, on the bits the most-cut feature needs,
whatever the feature's scale and however far a value lies beyond the calibration data."""

import warnings

import numpy as np
import pytest
from cml_core.quantization.quantizers import DecisionQuantizer
from hypothesis import given, settings
from hypothesis import strategies as st

skl2onnx = pytest.importorskip("skl2onnx")

from cml_core.fhe.models import export_sklearn  # noqa: E402
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


def _thresholds(model_bytes, n_features):
    """Per feature, the thresholds the export decides on (skl2onnx writes float32 ones, rounded to keep
    float32 inputs on the side scikit-learn's float64 comparison puts them)."""
    import onnx

    found = [set() for _ in range(n_features)]
    for node in onnx.load_from_string(model_bytes).graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            a = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
            for feature, value, mode in zip(a["nodes_featureids"], a["nodes_values"], a["nodes_modes"]):
                if mode != b"LEAF":
                    found[feature].add(float(np.float32(value)))
    return found


@pytest.mark.parametrize("n_bits", [4, 6])
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_tree_inputs_count_the_thresholds_and_are_decided_as_in_float(name, n_bits, data):
    x, y = data
    estimator = ESTIMATORS[name]().fit(x, y)
    exported = export_sklearn(estimator, x)
    module = load_model(exported)
    qmodule = module.quantize(x, n_bits=n_bits)
    (quantizer,) = qmodule.input_quantizers
    assert isinstance(quantizer, DecisionQuantizer)
    thresholds = _thresholds(exported, x.shape[1])
    most = max(len(ts) for ts in thresholds)
    assert quantizer.n_bits == min(n_bits, max(1, int(np.ceil(np.log2(most + 1)))))
    # a feature keeps all its thresholds when they fit; only those samples whose every read feature kept
    # them all are sure to be decided as in float
    exact = [set(kept) == ts for kept, ts in zip(quantizer.thresholds, thresholds)]
    if n_bits == 6:
        assert all(exact)
    rng = np.random.default_rng(0)
    beyond = np.concatenate([x * 3.0, -x, x + rng.normal(0, 1, x.shape).astype(np.float32) * x.std(axis=0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is clipped: no saturation warning, however far the values
        for samples in (x, beyond.astype(np.float32)):
            expected, got = module(samples), qmodule(samples)
            # samples whose value on every feature that lost thresholds sits on the side of each lost one
            # that its representative float does (every skl2onnx comparison here is x <= t)
            represented = quantizer.dequant(quantizer.quant(samples))
            decided = np.ones(len(samples), dtype=bool)
            for j, ts in enumerate(thresholds):
                for t in ts - set(quantizer.thresholds[j]):
                    decided &= (samples[:, j] <= t) == (represented[:, j] <= t)
            assert decided.mean() > 0.5
            # leaf weights on an op_weights-bit grid over [0, 1]: half a step
            bound = 0.5 / (2**n_bits - 1) + 1e-6
            if isinstance(expected, tuple):  # classifier: label and probabilities
                np.testing.assert_allclose(got[1][decided], expected[1][decided], atol=bound)
                clear = decided & (np.abs(expected[1][:, 1] - 0.5) > bound)  # labels no weight rounding can flip
                np.testing.assert_array_equal(got[0][clear], expected[0][clear])
            else:
                np.testing.assert_allclose(got[decided], expected[decided], atol=bound)


def test_a_feature_with_more_thresholds_than_codes_keeps_those_misplacing_fewest_samples():
    rng = np.random.default_rng(1)
    column = np.concatenate([rng.normal(0, 0.1, 900), rng.uniform(-5, 5, 100)])
    cuts = [[(float(t), False) for t in np.linspace(-4.5, 4.5, 40)]]
    quantizer = DecisionQuantizer.fit(cuts, column[:, None], n_bits=3)
    assert quantizer.n_bits == 3 and len(quantizer.thresholds[0]) == 7
    # the dense middle keeps its cuts: the samples there are the many
    middle = [t for t, _ in cuts[0] if abs(t) < 0.2]
    assert set(middle) <= set(quantizer.thresholds[0])


_finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_finite, st.booleans()), min_size=1, max_size=12),
       st.lists(_finite, min_size=1, max_size=40), st.integers(1, 5))
def test_decision_codes_count_passed_cuts_and_their_floats_decide_alike(cuts, values, n_bits):
    """Property: a value's integer counts the cuts it passes (x >= t inclusive, x > t strict), and the float
    the integer stands for passes exactly the kept cuts the value passes, in float64 and in float32."""
    data = np.asarray(values, dtype=np.float32)[:, None]
    probes = np.concatenate([data[:, 0], [t for t, _ in cuts]]).astype(np.float32)  # values on the thresholds too
    quantizer = DecisionQuantizer.fit([cuts], data, n_bits)
    kept = list(zip(quantizer.thresholds[0], quantizer.inclusive[0]))
    assert len(kept) <= 2**n_bits - 1
    if len(set(cuts)) <= 2**n_bits - 1:
        assert set(kept) == {(float(t), bool(i)) for t, i in cuts}
    codes = quantizer.quant(probes[:, None])[:, 0]
    floats = quantizer.dequant(codes[:, None])[:, 0]

    def passed(v):
        return np.array([[x >= t if inc else x > t for t, inc in kept] for x in v], dtype=bool).reshape(len(v), -1)

    np.testing.assert_array_equal(codes, passed(probes.astype(np.float64)).sum(axis=1))
    for represented in (floats, floats.astype(np.float32).astype(np.float64)):
        np.testing.assert_array_equal(passed(represented), passed(probes.astype(np.float64)))


@pytest.mark.fhe
def test_a_tree_with_threshold_counting_inputs_deploys(data, tmp_path):
    """The client quantizes by counting thresholds (saved with the model, no scale to send): a regression
    forest saved, loaded back and run client/server gives the simulation's outputs, and the decisions of
    the float model even far beyond the calibration data."""
    from cml_core.deploy import Client, Server
    from sklearn.ensemble import RandomForestRegressor

    from cml_core import load_quantized

    x, y = data
    estimator = RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0).fit(x, y)
    module = load_model(export_sklearn(estimator, x))
    qmodule = module.quantize(x, n_bits=6)
    qmodule.compile(x[:100])
    folder = qmodule.save(tmp_path / "deploy")
    loaded = load_quantized(folder)
    assert loaded.input_quantizers == qmodule.input_quantizers
    samples = np.concatenate([x[:2], x[2:3] * 4.0])  # one far beyond the calibration data
    client = Client(folder, keys=tmp_path / "keys")
    decrypted = client.decrypt(Server(folder).run(client.encrypt(samples), client.evaluation_keys()))
    np.testing.assert_array_equal(decrypted, qmodule.forward(samples, fhe="simulate"))
    # leaf values (averages of 0/1 labels) on a 6-bit grid over [0, 1]: half a step
    np.testing.assert_allclose(decrypted, module(samples), atol=0.5 / 63 + 1e-6)
