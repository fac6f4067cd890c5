"""Score post-transforms and the two-class conventions of the ONNX-ML classifiers, as onnxruntime
computes them (float32 arithmetic, its closed-form inverse error function for PROBIT)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")
SQRT2 = np.float32(1.41421356)
#: the constant of the inverse error function approximation onnxruntime uses (Winitzki's ``a``)
ERFINV_A = np.float32(0.147)
PI = np.float32(3.14159)


def check_transform(name: str) -> str:
    """``name`` when it is an ONNX-ML post transform; a ValueError listing them otherwise."""
    if name not in TRANSFORMS:
        raise ValueError(f"post_transform {name!r} is not one of {list(TRANSFORMS)}")
    return name


def logistic(x: NDArray[Any]) -> NDArray[Any]:
    """``1 / (1 + exp(-x))`` computed on ``|x|`` and mirrored, in float32."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        v = np.float32(1) / (np.float32(1) + np.exp(-np.abs(x)))
    return np.where(x < 0, np.float32(1) - v, v).astype(np.float32)


def erfinv(x: NDArray[Any]) -> NDArray[Any]:
    """The closed-form approximation of the inverse error function onnxruntime's PROBIT uses."""
    x = np.asarray(x, dtype=np.float32)
    sign = np.where(x < 0, np.float32(-1), np.float32(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        log = np.log((np.float32(1) - x) * (np.float32(1) + x))
        v = np.float32(2) / (PI * ERFINV_A) + np.float32(0.5) * log
        v2 = np.float32(1) / ERFINV_A * log
        return (sign * np.sqrt(-v + np.sqrt(v * v - v2))).astype(np.float32)


def probit(x: NDArray[Any]) -> NDArray[Any]:
    """``sqrt(2) * erfinv(2x - 1)`` with that approximation."""
    return (SQRT2 * erfinv(np.float32(2) * np.asarray(x, dtype=np.float32) - np.float32(1))).astype(np.float32)


def softmax(scores: NDArray[Any]) -> NDArray[Any]:
    """Row-wise softmax of a 2-D float32 array."""
    scores = np.asarray(scores, dtype=np.float32)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True, dtype=np.float32)).astype(np.float32)


def softmax_zero(scores: NDArray[Any]) -> NDArray[Any]:
    """Row-wise softmax in which (near-)zero scores stay zero instead of counting as ``exp(0)``."""
    scores = np.asarray(scores, dtype=np.float32)
    top = scores.max(axis=1, keepdims=True)
    nonzero = np.abs(scores) > np.float32(1e-7)
    with np.errstate(over="ignore"):
        e = np.where(nonzero, np.exp(scores - top), scores * np.exp(-top))
        total = np.where(nonzero, e, np.float32(0)).sum(axis=1, keepdims=True, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (e / total).astype(np.float32)


def transform_columns(scores: NDArray[Any], transform: str) -> NDArray[Any]:
    """``transform`` applied to a 2-D array of scores with two or more columns."""
    if transform == "SOFTMAX":
        return softmax(scores)
    if transform == "SOFTMAX_ZERO":
        return softmax_zero(scores)
    if transform == "LOGISTIC":
        return logistic(scores)
    if transform == "PROBIT":
        return probit(scores)
    return np.asarray(scores, dtype=np.float32)


#: how a single score becomes the two columns of a two-class output (onnxruntime's ``add_second_class``)
COMPLEMENT, SIGNED = "complement", "signed"


def two_class_scores(score: NDArray[Any], transform: str, expansion: str | None) -> NDArray[Any]:
    """The score output for one score column ``score`` (shape (N,)).

    PROBIT transforms the score and keeps one column. Otherwise ``expansion`` decides:
    ``COMPLEMENT`` gives ``[1 - s, s]`` (``s`` first through the logistic under LOGISTIC), ``SIGNED`` gives ``[logistic(-s), logistic(s)]`` under
    LOGISTIC and ``[-s, s]`` otherwise, ``None`` keeps the raw score as one column (the other
    transforms do not apply to a single score).
    """
    score = np.asarray(score, dtype=np.float32)
    if transform == "PROBIT":
        return probit(score)[:, None]
    if expansion == COMPLEMENT:
        positive = logistic(score) if transform == "LOGISTIC" else score
        return np.stack([np.float32(1) - positive, positive], axis=1).astype(np.float32)
    if expansion == SIGNED:
        if transform == "LOGISTIC":
            return np.stack([logistic(-score), logistic(score)], axis=1)
        return np.stack([-score, score], axis=1).astype(np.float32)
    return score[:, None]


def labels_array(labels: list[Any]) -> NDArray[Any]:
    """Class labels as an ONNX-ML output: int64, or an object array of ``str``."""
    if labels and isinstance(labels[0], str):
        out = np.empty(len(labels), dtype=object)
        out[:] = labels
        return out
    return np.asarray(labels, dtype=np.int64)


def as_matrix(x: NDArray[Any], dtype: Any = np.float32) -> NDArray[Any]:
    """The input as a (samples, features) array of ``dtype``: a 1-D input is one sample."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("the input must have at least one dimension")
    if x.ndim == 1:
        x = x[None, :]
    elif x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    return x.astype(dtype, copy=False)
