"""Hummingbird's three tree strategies (gemm, tree_trav, perf_tree_trav) exported to ONNX: they load, match
onnxruntime, quantize and compile.

The features are standardized before training so that one input quantizer suits them all. Only the
scores (probabilities, or the regression value) are kept: the label output is an ArgMax of them, which
the client computes from the decrypted scores.
"""

import functools
import warnings

import numpy as np
import pytest

hummingbird_ml = pytest.importorskip("hummingbird.ml")
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from cml_core.fhe.models import export_hummingbird  # noqa: E402
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor  # noqa: E402

from cml_core import QuantizationError, load_model  # noqa: E402

STRATEGIES = ("gemm", "tree_trav", "perf_tree_trav")
ESTIMATORS = {
    "tree": ("classification", lambda: DecisionTreeClassifier(max_depth=5, random_state=0)),
    "forest": ("classification", lambda: RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0)),
    "boosting": ("classification", lambda: GradientBoostingClassifier(n_estimators=20, random_state=0)),
    "regression tree": ("regression", lambda: DecisionTreeRegressor(max_depth=4, random_state=0)),
}
ENSEMBLES = {"forest", "boosting"}
COMPILED = {"small tree": ("classification", lambda: DecisionTreeClassifier(max_depth=4, random_state=0))}


@functools.cache
def _dataset(task):
    load = {"classification": sklearn_datasets.load_breast_cancer, "regression": sklearn_datasets.load_diabetes,
            "digits": sklearn_datasets.load_digits}[task]
    x, y = load(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train).astype(np.float32), scaler.transform(x_test).astype(np.float32), y_train, y_test


@functools.cache
def _estimator(name):
    task, make = {**ESTIMATORS, **COMPILED}[name]
    x_train, _, y_train, _ = _dataset(task)
    return make().fit(x_train, y_train)


@functools.cache
def _export(name, strategy):
    task, _ = {**ESTIMATORS, **COMPILED}[name]
    x_train = _dataset(task)[0]
    return export_hummingbird(_estimator(name), x_train, strategy, scores_only=True)


def _module(name, strategy):
    import onnx

    return load_model(onnx.load_from_string(_export(name, strategy)))


def _scores(values):
    return np.asarray(values, dtype=np.float64).reshape(len(values), -1)


def _cases():
    return [pytest.param(name, strategy, id=f"{name}-{strategy}") for name in ESTIMATORS for strategy in STRATEGIES]


@pytest.mark.parametrize("name, strategy", _cases())
def test_export_loads_and_matches_onnxruntime_and_scikit_learn(name, strategy):
    task, _ = ESTIMATORS[name]
    _, x_test, _, _ = _dataset(task)
    module = _module(name, strategy)
    ours = _scores(module(x_test))
    session = ort.InferenceSession(_export(name, strategy), providers=["CPUExecutionProvider"])
    theirs = _scores(session.run(None, {session.get_inputs()[0].name: x_test})[0])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    estimator = _estimator(name)
    expected = estimator.predict_proba(x_test) if task == "classification" else estimator.predict(x_test)
    np.testing.assert_allclose(ours, _scores(expected), rtol=1e-5, atol=1e-5)


def _quantized_cases():
    cases = []
    for name in ESTIMATORS:
        for strategy in STRATEGIES:
            marks = ()
            if name in ENSEMBLES and strategy == "perf_tree_trav":
                marks = pytest.mark.xfail(strict=True, reason=(
                    "perf_tree_trav reads its node tables with GatherElements on encrypted data and indices "
                    "(two-input lookups of 10-12 bits): at n_bits 6 the walks of 20 trees take wrong paths"))
            cases.append(pytest.param(name, strategy, id=f"{name}-{strategy}", marks=marks))
    return cases


def _score(task, y, predictions):
    """Accuracy, or R² for a regression."""
    if task == "classification":
        return float(np.mean(predictions.argmax(1) == y))
    return 1 - float(np.sum((y - predictions[:, 0]) ** 2)) / float(np.sum((y - y.mean()) ** 2))


# Measured at n_bits 6 (calibrated on the training split, scored on the 171 / 133 test samples), the loss
# against the float model: tree 1.2 points of accuracy (2 samples), forest and boosting (gemm) 0.6 (1
# sample), regression tree 1.8 (tree walks) to 4.7 (gemm) points of R². The loss comes from the one input
# quantizer all 30 features share (a sample moves across a threshold): every strategy takes the same
# paths, see test_quantized_paths_are_the_float_paths_on_quantized_inputs. gemm loses more R² on the
# regression because its leaf values are 6-bit weights, where a tree walk reads them exactly.
MAX_LOSS = {"classification": 0.02, "regression": 0.06}


@pytest.mark.parametrize("name, strategy", _quantized_cases())
def test_quantized_scores_keep_the_float_accuracy(name, strategy):
    task, _ = ESTIMATORS[name]
    x_train, x_test, _, y_test = _dataset(task)
    module = _module(name, strategy)
    qmodule = module.quantize(x_train, n_bits=6)
    float_score = _score(task, y_test, _scores(module(x_test)))
    quantized_score = _score(task, y_test, _scores(qmodule(x_test)))
    assert quantized_score >= float_score - MAX_LOSS[task], (float_score, quantized_score)


@pytest.mark.parametrize("name, strategy", [case for case in _quantized_cases()
                                            if ESTIMATORS[case.values[0]][0] == "classification"])
def test_quantized_paths_are_the_float_paths_on_quantized_inputs(name, strategy):
    """The integer program decides as the float model does on the inputs it sees (each through the input
    quantizer): the tree structure itself is exact (comparisons, path counts, node indices)."""
    x_train, x_test, _, _ = _dataset("classification")
    x_all = np.concatenate([x_train, x_test])
    module = _module(name, strategy)
    qmodule = module.quantize(x_train, n_bits=6)
    seen = qmodule.input_quantizers[0].dequant(qmodule.quantize_input(x_all)).astype(np.float32)
    same = _scores(qmodule(x_all)).argmax(1) == _scores(module(seen)).argmax(1)
    assert same.mean() >= 0.99, same.mean()  # a few samples within rounding of a leaf-score tie or threshold


@pytest.mark.parametrize("name", sorted(ENSEMBLES))
@pytest.mark.parametrize("strategy", ["tree_trav", "perf_tree_trav"])
def test_tree_walks_of_ensembles_with_exact_node_indices(name, strategy):
    """With operation bits enough for the node indices (10: 20 trees of at most 31 nodes), the tree walks
    take exactly the paths the float model takes on the quantized inputs."""
    x_train, x_test, y_train, y_test = _dataset("classification")
    x_all = np.concatenate([x_train, x_test])
    module = _module(name, strategy)
    qmodule = module.quantize(x_train, n_bits={"model_inputs": 6, "op_inputs": 10, "op_weights": 6,
                                                "model_outputs": 8})
    seen = qmodule.input_quantizers[0].dequant(qmodule.quantize_input(x_all)).astype(np.float32)
    assert np.array_equal(_scores(qmodule(x_all)).argmax(1), _scores(module(seen)).argmax(1))


def test_gemm_needs_no_more_bits_than_the_features():
    """gemm's tree structure: one comparison lookup on the inputs' 6 bits, 1-bit casts, path counts of a few
    bits. (The boosting's sigmoid then reads the sum of its 20 trees' scores: a 9-bit lookup of the output
    function, not of the trees.)"""
    x_train = _dataset("classification")[0]
    for name in ("tree", "forest", "boosting"):
        qmodule = _module(name, "gemm").quantize(x_train, n_bits=6)
        lookups = [row for row in qmodule.bitwidth_report() if row.kind == "lookup"]
        structure = {row.op_type: row.lookup_bits for row in lookups if row.op_type in ("LessOrEqual", "Equal")}
        assert structure["LessOrEqual"] <= 6 and structure["Equal"] <= 4, (name, structure)
        assert all(row.lookup_bits == 1 for row in lookups if row.op_type == "Cast"), name
        assert max(row.lookup_bits for row in lookups if row.op_type != "Concat") <= 6, name


def test_a_collapsed_tree_is_refused_naming_its_output():
    """At 1 bit the boosting's leaf values all round to one weight, so its scores are one value for every
    sample: refused, where it used to give that value silently."""
    x_train = _dataset("classification")[0]
    with pytest.raises(QuantizationError, match="quantization collapsed it"):
        _module("boosting", "gemm").quantize(x_train, n_bits=1)


def _compile_and_simulate(strategy, n_bits):
    x_train = _dataset("classification")[0]
    qmodule = _module("small tree", strategy).quantize(x_train, n_bits=n_bits)
    qmodule.compile(x_train[:50])
    samples = x_train[:3]
    np.testing.assert_array_equal(qmodule.forward(samples, fhe="simulate"), qmodule.forward(samples))
    return qmodule


@pytest.mark.fhe
def test_gemm_tree_compiles_and_simulates_like_the_clear_program():
    _compile_and_simulate("gemm", 6)


@pytest.mark.fhe
@pytest.mark.slow
def test_perf_tree_trav_tree_compiles_and_simulates_like_the_clear_program():
    """A tree of depth 4 at n_bits 4: a comparison of a feature with a threshold read at the node index is a
    two-input lookup on both their bits; at 6 bits (12-bit lookups) no cryptographic parameters are found.
    About 20 s to compile and 20 s to simulate three samples."""
    _compile_and_simulate("perf_tree_trav", 4)


@pytest.mark.fhe
@pytest.mark.slow
def test_tree_trav_tree_compiles_and_simulates_like_the_clear_program():
    """tree_trav's constants are shaped by the batch (computed from Shape of the input), every element
    alike: they treat every position alike at any batch size, so the walk compiles. The node index is
    read by gathers from the node tables: quantized exactly on its own bits. About 90 s here."""
    _compile_and_simulate("tree_trav", 4)


def test_export_with_its_label_output_quantizes_with_the_label_on_the_client():
    """By default ``export_hummingbird`` keeps the label (an ArgMax of the scores): quantization leaves it to
    the client, which derives it from the decrypted scores exactly as the float model does from its own."""
    x_train, x_test, _, _ = _dataset("classification")
    module = load_model(export_hummingbird(_estimator("tree"), x_train))
    assert "ArgMax" in {b.node.op_type for b in module.nodes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodule = module.quantize(x_train, n_bits=6)
    assert qmodule.client_tail is not None
    (labels, _), (q_labels, q_scores) = module(x_test), qmodule(x_test)
    np.testing.assert_array_equal(q_labels, np.asarray(q_scores).reshape(len(x_test), -1).argmax(1))
    assert np.mean(q_labels == labels) >= 0.95


def test_an_estimator_hummingbird_cannot_convert_is_a_load_error():
    from cml_core import ModelLoadError

    with pytest.raises(ModelLoadError, match="Hummingbird cannot convert object"):
        export_hummingbird(object(), _dataset("classification")[0])


LINEAR = {"logistic regression": lambda: LogisticRegression(max_iter=5000),
          "linear svm": lambda: LinearSVC(random_state=0)}


@pytest.mark.parametrize("task", ["classification", "digits"])
@pytest.mark.parametrize("name", sorted(LINEAR))
def test_linear_models_keep_the_float_accuracy_with_no_lookup(name, task):
    """Hummingbird's linear models are a Gemm of the features, then a Sigmoid (and, with several classes, its
    normalization): the scores' Gemm reads the input per feature (its scales folded into the weights), and
    what follows the scores runs on the client. No lookup; measured at n_bits 6 (float / quantized test
    accuracy): breast cancer 0.977 / 0.977 and 0.942 / 0.953, digits 0.961 / 0.963 and 0.948 / 0.944."""
    from cml_core.quantization.quantizers import PerFeatureQuantizer

    x_train, x_test, y_train, y_test = _dataset(task)
    estimator = LINEAR[name]().fit(x_train, y_train)
    module = load_model(export_hummingbird(estimator, x_train, "gemm", scores_only=True))
    qmodule = module.quantize(x_train, n_bits=6)
    assert isinstance(qmodule.input_quantizers[0], PerFeatureQuantizer)
    assert qmodule.client_tail is not None
    assert not [row for row in qmodule.bitwidth_report() if row.kind == "lookup"]
    float_accuracy = _score("classification", y_test, _scores(module(x_test)))
    assert _score("classification", y_test, _scores(qmodule(x_test))) >= float_accuracy - 0.01


@pytest.mark.parametrize("name", ["tree", "regression tree"])
def test_gemm_trees_decide_exactly_as_the_float_model(name):
    """The inputs count each feature's thresholds and gemm's first product copies them to the comparisons:
    every comparison is the float model's, on any sample (here the test split, and the same samples moved
    far beyond the calibration data); a tree's scores then differ from the float model's only by the leaf
    weights' rounding (half a step), where one path taken wrong would move a sample to another leaf."""
    task, _ = ESTIMATORS[name]
    x_train, x_test, _, _ = _dataset(task)
    module = _module(name, "gemm")
    qmodule = module.quantize(x_train, n_bits=6)
    rng = np.random.default_rng(0)
    samples = np.concatenate([x_test, x_test * 5 + rng.normal(0, 3, x_test.shape)]).astype(np.float32)
    expected, got = _scores(module(samples)), _scores(qmodule(samples))
    leaves = np.abs(np.concatenate([np.ravel(v) for k, v in module.constants.items() if "weight_3" in k]))
    step = leaves.max() / (2**5 - 1)  # a MatMul's weights: symmetric, 6 bits
    # the regression's per-tree values are requantized once more (a Reshape of them) over [0, max]: 6 bits
    requantized = leaves.max() / (2**6 - 1) if name == "regression tree" else 0.0
    np.testing.assert_allclose(got, expected, atol=(step + requantized) / 2 * (1 + 1e-6))
