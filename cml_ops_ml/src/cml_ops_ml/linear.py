"""LinearClassifier and LinearRegressor: scores ``X @ coefficients.T + intercepts``, then a post transform."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._opset import ML_DOMAIN, OPS
from ._scores import (
    COMPLEMENT,
    as_matrix,
    check_transform,
    labels_array,
    probit,
    transform_columns,
    two_class_scores,
)
from .quantized import QuantizedLinearClassifier, QuantizedLinearRegressor


def linear_scores(x: NDArray[Any], coefficients: list[float], intercepts: list[float] | None,
                  n_outputs: int | None) -> NDArray[Any]:
    """``X @ W.T + b`` in float32, ``W`` the coefficients as (outputs, features)."""
    features = as_matrix(x)
    coef = np.asarray(coefficients, dtype=np.float32)
    outputs = n_outputs if n_outputs else (len(intercepts) if intercepts else 1)
    if outputs <= 0 or coef.size % outputs or coef.size // outputs != features.shape[1]:
        raise ValueError(f"{coef.size} coefficients do not make {outputs} row(s) of {features.shape[1]} features")
    scores = features @ coef.reshape(outputs, -1).T
    if intercepts:
        if len(intercepts) != outputs:
            raise ValueError(f"{len(intercepts)} intercepts for {outputs} outputs")
        scores = scores + np.asarray(intercepts, dtype=np.float32)
    return scores.astype(np.float32)


def classifier_labels(classlabels_ints: list[int] | None, classlabels_strings: list[str] | None) -> list[Any]:
    """The class labels a classifier declares (strings win when both are given, as in onnxruntime)."""
    return list(classlabels_strings) if classlabels_strings else list(classlabels_ints or [])


def linear_classifier_outputs(raw: NDArray[Any], labels: list[Any], post_transform: str) -> tuple[NDArray[Any], NDArray[Any]]:
    """(labels, scores) from the raw scores (samples, classes) of a LinearClassifier.

    One score column: the positive label (the second declared label, or 1 / "1") where the score
    is above 0; with two declared labels the scores become ``[1 - s, s]`` (``s`` the logistic of the
    score under LOGISTIC, the score itself under the other transforms, as onnxruntime does). Several columns: the
    label of the first largest raw score, and the transformed scores.
    """
    n = raw.shape[1]
    strings = bool(labels) and isinstance(labels[0], str)
    if n == 1:
        if len(labels) == 2:
            negative, positive = labels
        else:
            negative, positive = ("0", "1") if strings else (0, 1)
        chosen = [positive if s > 0 else negative for s in raw[:, 0]]
        if len(labels) == 2:
            if post_transform == "PROBIT":
                raise ValueError("PROBIT with one score column and two class labels leaves the second column "
                                 "undefined (onnxruntime writes no value there)")
            scores = two_class_scores(raw[:, 0], post_transform, COMPLEMENT)
        else:
            scores = probit(raw) if post_transform == "PROBIT" else raw
        return labels_array(chosen) if chosen else np.zeros(0, np.int64 if not strings else object), scores
    if len(labels) != n:
        raise ValueError(f"{len(labels)} class labels for {n} score columns")
    best = np.argmax(raw, axis=1)
    out = labels_array([labels[i] for i in best]) if len(best) else labels_array(labels)[:0]
    return out, transform_columns(raw, post_transform)


@OPS.op("LinearClassifier", since=1, domain=ML_DOMAIN, quantized=QuantizedLinearClassifier)
def linear_classifier(x: NDArray[Any], /, *, coefficients: list[float], classlabels_ints: list[int] | None = None,
                      classlabels_strings: list[str] | None = None, intercepts: list[float] | None = None,
                      multi_class: int = 0, post_transform: str = "NONE") -> tuple[NDArray[Any], NDArray[Any]]:
    """Linear classifier: (labels, scores)."""
    check_transform(post_transform)
    labels = classifier_labels(classlabels_ints, classlabels_strings)
    n_classes = len(intercepts) if intercepts else (len(labels) if len(labels) > 2 else 1)
    raw = linear_scores(x, coefficients, intercepts, n_classes)
    return linear_classifier_outputs(raw, labels, post_transform)


@OPS.op("LinearRegressor", since=1, domain=ML_DOMAIN, quantized=QuantizedLinearRegressor)
def linear_regressor(x: NDArray[Any], /, *, coefficients: list[float] | None = None,
                     intercepts: list[float] | None = None, post_transform: str = "NONE",
                     targets: int = 1) -> NDArray[Any]:
    """Linear regression: ``X @ W.T + b`` (samples, targets), post-transformed when there are several targets
    (a single target only takes PROBIT, as in onnxruntime)."""
    check_transform(post_transform)
    if not coefficients:
        raise ValueError("LinearRegressor needs its coefficients")
    scores = linear_scores(x, coefficients, intercepts, targets)
    if targets == 1:
        return probit(scores) if post_transform == "PROBIT" else scores
    return transform_columns(scores, post_transform)
