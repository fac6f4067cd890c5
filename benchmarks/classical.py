"""Classical machine learning in FHE: scikit-learn models through skl2onnx and Hummingbird ``gemm``.

Run by ``python -m benchmarks --only classical``. On scikit-learn's bundled breast-cancer and digits
data (and diabetes for a regression tree), split 70/30 with ``random_state=0`` and standardized with a
``StandardScaler`` fitted on the training split, each model is exported two ways: skl2onnx
(``export_sklearn``, the ``ai.onnx.ml`` ops of ``cml-ops-ml``) and Hummingbird's ``gemm`` tree
implementation (plain ONNX ops; only the scores output is kept, the label is the client's argmax).
For each export: the float ``NumpyModule`` against onnxruntime, then for ``n_bits`` 6, 5, 4 (stopping
below the first setting that loses more than a point against float): quantization, compilation on
the training split, simulation on the whole test split, and a few test samples encrypted one by one.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from cml_core.fhe import circuit_summary
from cml_core.quantization.context import MAX_LOOKUP_BITS

from cml_core import CmlError, choose_rounding, load_model

#: above this circuit complexity, encrypted execution is left out (as in the FHE section)
EXECUTE_LIMIT = 3e11
#: simulated runs averaged when approximate rounding was chosen (it is randomized)
SIM_REPEATS = 3
#: ``n_bits`` tried in turn; the quick run keeps the first
N_BITS = (6, 5, 4)
TEST_SIZE = 0.3


def _estimators() -> dict[str, tuple[str, Callable[[], Any]]]:
    """Model name -> (task, constructor)."""
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    return {
        "LogisticRegression": ("classification", lambda: LogisticRegression(max_iter=5000)),
        "LinearSVC": ("classification", lambda: LinearSVC(random_state=0)),
        "DecisionTreeClassifier(max_depth=5)": (
            "classification", lambda: DecisionTreeClassifier(max_depth=5, random_state=0)),
        "RandomForestClassifier(n_estimators=20, max_depth=4)": (
            "classification", lambda: RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0)),
        "GradientBoostingClassifier(n_estimators=20)": (
            "classification", lambda: GradientBoostingClassifier(n_estimators=20, random_state=0)),
        "DecisionTreeRegressor(max_depth=4)": (
            "regression", lambda: DecisionTreeRegressor(max_depth=4, random_state=0)),
    }


TREES = ("DecisionTree", "RandomForest", "GradientBoosting")


def dataset(name: str) -> dict[str, np.ndarray]:
    """The bundled data set, split 70/30 (``random_state=0``), features standardized on the training split."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    load = {"breast-cancer": datasets.load_breast_cancer, "digits": datasets.load_digits,
            "diabetes": datasets.load_diabetes}[name]
    x, y = load(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=0)
    scaler = StandardScaler().fit(x_train)
    return {"x_train": scaler.transform(x_train).astype(np.float32), "x_test": scaler.transform(x_test).astype(np.float32),
            "y_train": y_train, "y_test": y_test}


# -- exports -----------------------------------------------------------------------------------------------
def export_skl2onnx(estimator: Any, x_train: np.ndarray) -> tuple[bytes, bytes, str | None]:
    """(model to compare, model to quantize, note): ``export_sklearn``; where it raises, skl2onnx's
    ``to_onnx`` without options, the error kept as a note."""
    from cml_core.fhe.models import SKLEARN_TARGET_OPSET, export_sklearn

    try:
        exported = export_sklearn(estimator, x_train)
        return exported, exported, None
    except Exception as exc:  # noqa: BLE001 - recorded in the row
        from skl2onnx import to_onnx

        note = f"export_sklearn raised {type(exc).__name__}: {str(exc).rstrip('.')}; exported with skl2onnx.to_onnx without options"
        exported = to_onnx(estimator, x_train[:1], target_opset=SKLEARN_TARGET_OPSET).SerializeToString()
        return exported, exported, note


def hummingbird_gemm(estimator: Any, x_train: np.ndarray) -> tuple[bytes, bytes, str | None]:
    """(whole export to compare, scores-only export to quantize, note) with Hummingbird ``gemm``: the label of a
    binary linear model is a Greater, Cast and Gather of the scores, so only the scores are quantized."""
    from cml_core.fhe.models import export_hummingbird

    whole = export_hummingbird(estimator, x_train, "gemm")
    return whole, export_hummingbird(estimator, x_train, "gemm", scores_only=True), None


ROADS: dict[str, Callable[[Any, np.ndarray], tuple[bytes, bytes, str | None]]] = {
    "skl2onnx": export_skl2onnx, "hummingbird gemm": hummingbird_gemm}


# -- scores --------------------------------------------------------------------------------------------------
def _outputs(values: Any) -> list[np.ndarray]:
    return [np.asarray(v) for v in values] if isinstance(values, tuple | list) else [np.asarray(values)]


def scores_of(values: Any) -> np.ndarray:
    """The scores (last output) as a (samples, columns) float array."""
    last = _outputs(values)[-1]
    return np.asarray(last, dtype=np.float64).reshape(len(last), -1)


def score(task: str, scores: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (argmax of the scores; a single column is a decision value, positive for class 1), or R^2."""
    if task == "regression":
        return 1 - float(np.sum((y - scores[:, 0]) ** 2)) / float(np.sum((y - np.mean(y)) ** 2))
    labels = (scores[:, 0] > 0).astype(np.int64) if scores.shape[1] == 1 else scores.argmax(1)
    return float(np.mean(labels == y))


def float_vs_onnxruntime(model_bytes: bytes, x: np.ndarray) -> tuple[float, float | None]:
    """Max absolute difference of the scores of ``load_model`` and onnxruntime, and label agreement when the
    model has a label output (an integer output beside the scores)."""
    import onnxruntime as ort

    ours = _outputs(load_model(model_bytes)(x))
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    theirs = [np.asarray(v) for v in session.run(None, {session.get_inputs()[0].name: x})]
    diff = float(np.max(np.abs(scores_of(tuple(ours)) - scores_of(tuple(theirs)))))
    labels = [(a, b) for a, b in zip(ours[:-1], theirs[:-1]) if a.dtype.kind in "iu"]
    agreement = float(np.mean(labels[0][0].reshape(-1) == labels[0][1].reshape(-1))) if labels else None
    return diff, agreement


# -- one row -------------------------------------------------------------------------------------------------
def _first_output_score(task: str, first: np.ndarray, y: np.ndarray) -> float:
    """``choose_rounding``'s score of a module's first output: a label output, or the scores."""
    if first.dtype.kind in "iu":
        return float(np.mean(first.reshape(-1) == y))
    return score(task, scores_of(first), y)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).split('. Ways out')[0]}"


def _encrypted(qmodule: Any, x: np.ndarray, samples: int, row: dict[str, Any]) -> None:
    """Keys, then ``samples`` samples encrypted one by one (median time), compared with the simulation."""
    start = time.perf_counter()
    qmodule.fhe_circuit.keygen(force=False)
    row["keygen_s"] = time.perf_counter() - start
    q = qmodule.quantize_input(x[:samples])
    parts, seconds = [], []
    for i in range(samples):
        start = time.perf_counter()
        parts.append(_outputs(qmodule.quantized_forward(q[i : i + 1], fhe="execute")))
        seconds.append(time.perf_counter() - start)
    encrypted = [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
    simulated = _outputs(qmodule.quantized_forward(q, fhe="simulate"))
    row["seconds_per_encrypted_sample"] = statistics.median(seconds)
    row["seconds_per_encrypted_sample_runs"] = seconds
    row["encrypted_samples"] = samples
    row["encrypted_equals_simulated"] = all(np.array_equal(e, s) for e, s in zip(encrypted, simulated))


def measure(task: str, module: Any, data: dict[str, np.ndarray], n_bits: int, samples: int,
            row: dict[str, Any]) -> None:
    """Quantize at ``n_bits`` (rounding chosen by ``choose_rounding`` only where a lookup would exceed
    ``MAX_LOOKUP_BITS``), compile on the training split, simulate the test split, run a few samples encrypted."""
    x_train, x_test, y_train, y_test = data["x_train"], data["x_test"], data["y_train"], data["y_test"]
    qmodule = module.quantize(x_train, n_bits=n_bits)
    row["quantized_score"] = score(task, scores_of(qmodule(x_test)), y_test)
    row["max_lookup_bits"] = qmodule.bitwidth_report().max_lookup_bits
    start = time.perf_counter()
    if row["max_lookup_bits"] > MAX_LOOKUP_BITS:  # tuned on the training split, never on the test split
        choice = choose_rounding(qmodule, x_train, x_train, max_drop=0.01,
                                 score=lambda first: _first_output_score(task, first, y_train))
        row["rounding"] = choice.bits
        row["max_lookup_bits_rounded"] = qmodule.bitwidth_report().max_lookup_bits
    else:
        qmodule.compile(x_train)
    row["compile_s"] = time.perf_counter() - start
    row.update(circuit_summary(qmodule.fhe_circuit))
    repeats = 1 if qmodule.config.rounding_exact or "rounding" not in row else SIM_REPEATS
    runs = [score(task, scores_of(qmodule.forward(x_test, fhe="simulate")), y_test) for _ in range(repeats)]
    row["simulated_score"] = float(np.mean(runs))
    row["within_1pt"] = bool(row["simulated_score"] >= row["float_score"] - 0.01)
    if row["complexity"] <= EXECUTE_LIMIT:
        _encrypted(qmodule, x_test, samples, row)


def classical_path(samples: int, quick: bool) -> list[dict[str, Any]]:
    """One row per (data set, model, export road, n_bits); see the module docstring."""
    cases = [("breast-cancer", name) for name, (task, _) in _estimators().items() if task == "classification"]
    if not quick:
        cases += [("digits", name) for name, (task, _) in _estimators().items() if task == "classification"]
    cases.append(("diabetes", "DecisionTreeRegressor(max_depth=4)"))
    rows: list[dict[str, Any]] = []
    for data_name, model_name in cases:
        task, make = _estimators()[model_name]
        data = dataset(data_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator = make().fit(data["x_train"], data["y_train"])
        for road, export in ROADS.items():
            base: dict[str, Any] = {"dataset": data_name, "model": model_name, "road": road,
                                    "metric": "R^2" if task == "regression" else "accuracy"}
            try:
                compared, quantizable, note = export(estimator, data["x_train"])
            except Exception as exc:  # noqa: BLE001 - an export that fails is a row with its error
                rows.append({**base, "error": _first_line(exc)})
                print(rows[-1], flush=True)
                continue
            if note:
                base["note"] = note
            base["float_vs_ort"], base["label_agreement"] = float_vs_onnxruntime(compared, data["x_test"])
            module = load_model(quantizable)
            base["float_score"] = score(task, scores_of(module(data["x_test"])), data["y_test"])
            for n_bits in N_BITS[:1] if quick else N_BITS:
                row = {**base, "n_bits": n_bits}
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        measure(task, module, data, n_bits, samples, row)
                except CmlError as exc:
                    row["error"] = _first_line(exc)
                rows.append(row)
                print(row, flush=True)
                if not row.get("within_1pt"):  # fewer bits would not do better
                    break
    return rows
