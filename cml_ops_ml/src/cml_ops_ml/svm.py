"""SVMClassifier and SVMRegressor, in libsvm's (support vectors) or liblinear's (coefficients) form."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._opset import ML_DOMAIN, OPS
from ._scores import (
    COMPLEMENT,
    SIGNED,
    as_matrix,
    check_transform,
    labels_array,
    logistic,
    probit,
    transform_columns,
    two_class_scores,
)
from .quantized_svm import QuantizedSVMClassifier, QuantizedSVMRegressor

KERNELS = ("LINEAR", "POLY", "RBF", "SIGMOID")


def kernel(x: NDArray[Any], vectors: NDArray[Any], kernel_type: str, kernel_params: list[float] | None,
           constant: float) -> NDArray[Any]:
    """(samples, vectors) kernel values in float32; ``constant`` is added to a LINEAR kernel."""
    if kernel_type not in KERNELS:
        raise ValueError(f"kernel_type {kernel_type!r} is not one of {list(KERNELS)}")
    gamma, coef0, degree = (np.float32(p) for p in (list(kernel_params or []) + [0.0, 0.0, 0.0])[:3])
    if kernel_type == "RBF":
        diff = x[:, None, :] - vectors[None, :, :]
        return np.exp(-gamma * (diff * diff).sum(axis=2, dtype=np.float32)).astype(np.float32)
    dot = (x @ vectors.T).astype(np.float32)
    if kernel_type == "LINEAR":
        return (dot + np.float32(constant)).astype(np.float32)
    inner = (gamma * dot + coef0).astype(np.float32)
    if kernel_type == "POLY":
        return np.power(inner, degree).astype(np.float32)
    return np.tanh(inner).astype(np.float32)


def pairwise_coupling(pairs: NDArray[Any], n_classes: int) -> NDArray[Any]:
    """Class probabilities from pairwise ones (libsvm's second method), in float32, per sample.

    ``pairs[i, j]`` is the probability of class i against class j.
    """
    q = np.zeros((n_classes, n_classes), dtype=np.float32)
    for i in range(n_classes):
        for j in range(n_classes):
            if j != i:
                q[i, i] += pairs[j, i] * pairs[j, i]
                q[i, j] = -pairs[j, i] * pairs[i, j]
    p = np.full(n_classes, np.float32(1) / np.float32(n_classes), dtype=np.float32)
    eps = np.float32(0.005) / np.float32(n_classes)
    for _ in range(100):
        qp = (q @ p).astype(np.float32)
        pqp = np.float32(p @ qp)
        if np.max(np.abs(qp - pqp)) < eps:
            break
        for i in range(n_classes):
            diff = np.float32((-qp[i] + pqp) / q[i, i])
            p[i] += diff
            pqp = np.float32((pqp + diff * (diff * q[i, i] + np.float32(2) * qp[i])) / (1 + diff) / (1 + diff))
            qp = ((qp + diff * q[i, :]) / (1 + diff)).astype(np.float32)
            p = (p / (1 + diff)).astype(np.float32)
    return p


def platt_probabilities(decision: NDArray[Any], prob_a: NDArray[Any], prob_b: NDArray[Any],
                        n_classes: int) -> NDArray[Any]:
    """Class probabilities (samples, classes) in float32 from one-vs-one decision values (samples, pairs;
    pairs i < j in libsvm's order): each pair's Platt scaling ``1 - logistic(decision * a + b)``, clipped
    to [1e-7, 1 - 1e-7], then ``pairwise_coupling`` per sample.

    Raises:
        IndexError: ``prob_a`` or ``prob_b`` has fewer values than there are pairs.
    """
    decision = np.asarray(decision, dtype=np.float32)
    a = np.asarray(prob_a, dtype=np.float32)
    b = np.asarray(prob_b, dtype=np.float32)
    probabilities = np.zeros((decision.shape[0], n_classes), dtype=np.float32)
    for n in range(decision.shape[0]):
        pairs = np.zeros((n_classes, n_classes), dtype=np.float32)
        index = 0
        for i in range(n_classes - 1):
            for j in range(i + 1, n_classes):
                value = np.float32(1) - logistic(decision[n, index] * a[index] + b[index])
                value = np.clip(value, np.float32(1e-7), np.float32(1) - np.float32(1e-7))
                pairs[i, j], pairs[j, i] = value, np.float32(1) - value
                index += 1
        probabilities[n] = pairwise_coupling(pairs, n_classes)
    return probabilities


@OPS.op("SVMClassifier", since=1, domain=ML_DOMAIN, quantized=QuantizedSVMClassifier)
def svm_classifier(x: NDArray[Any], /, *, classlabels_ints: list[int] | None = None,
                   classlabels_strings: list[str] | None = None, coefficients: list[float] | None = None,
                   kernel_params: list[float] | None = None, kernel_type: str = "LINEAR",
                   post_transform: str = "NONE", prob_a: list[float] | None = None, prob_b: list[float] | None = None,
                   rho: list[float] | None = None, support_vectors: list[float] | None = None,
                   vectors_per_class: list[int] | None = None) -> tuple[NDArray[Any], NDArray[Any]]:
    """SVM classifier: (labels, scores). With support vectors: one-vs-one decision values and votes
    (or, with ``prob_a``/``prob_b``, class probabilities by pairwise coupling); without: one linear
    score per class."""
    check_transform(post_transform)
    labels: list[Any] = list(classlabels_strings) if classlabels_strings else list(classlabels_ints or [])
    if not labels:
        raise ValueError("SVMClassifier needs classlabels_ints or classlabels_strings")
    if not coefficients:
        raise ValueError("SVMClassifier needs its coefficients")
    n_classes = len(labels)
    features = as_matrix(x)
    coef = np.asarray(coefficients, dtype=np.float32)
    rho_values = np.asarray(rho or [0.0], dtype=np.float32)
    all_positive = bool((coef >= 0).all())
    counts = [int(v) for v in (vectors_per_class or [])]
    n_vectors = sum(counts)
    have_proba = bool(prob_a)
    if n_vectors == 0:
        weights = coef.reshape(n_classes, -1)
        if weights.shape[1] != features.shape[1]:
            raise ValueError(f"coefficients of {weights.shape[1]} features for an input of {features.shape[1]}")
        scores = kernel(features, weights, "LINEAR", None, float(rho_values[0]))
        return liblinear_outputs(scores, labels, all_positive, post_transform)
    vectors = np.asarray(support_vectors or [], dtype=np.float32)
    if vectors.size % n_vectors or vectors.size // n_vectors != features.shape[1]:
        raise ValueError(f"{vectors.size} support vector values do not make {n_vectors} vectors of "
                         f"{features.shape[1]} features")
    if len(counts) != n_classes:
        raise ValueError(f"vectors_per_class has {len(counts)} entries for {n_classes} classes")
    n_pairs = n_classes * (n_classes - 1) // 2
    if coef.size < (n_classes - 1) * n_vectors or rho_values.size < n_pairs:
        raise ValueError("coefficients or rho are too short for the classes and support vectors")
    coef = coef[:(n_classes - 1) * n_vectors].reshape(n_classes - 1, n_vectors)
    k = kernel(features, vectors.reshape(n_vectors, -1), kernel_type, kernel_params, 0.0).astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    decision = np.zeros((features.shape[0], n_pairs), dtype=np.float64)
    pair = 0
    for i in range(n_classes - 1):
        for j in range(i + 1, n_classes):
            si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
            total = (k[:, si] * coef[j - 1, si].astype(np.float64)).sum(axis=1)
            decision[:, pair] = total + (k[:, sj] * coef[i, sj].astype(np.float64)).sum(axis=1) + float(rho_values[pair])
            pair += 1
    a = np.asarray(prob_a or [], dtype=np.float32)
    b = np.asarray(prob_b or [], dtype=np.float32)
    if have_proba and (a.size < n_pairs or b.size < n_pairs):
        raise ValueError("prob_a and prob_b need one value per pair of classes")
    return libsvm_outputs(decision, labels, post_transform, a, b)


def liblinear_outputs(scores: NDArray[Any], labels: list[Any], all_positive: bool,
                      post_transform: str) -> tuple[NDArray[Any], NDArray[Any]]:
    """An SVMClassifier's (labels, scores) from liblinear's per-class scores (samples, classes): the best
    class (two classes: the second when its score passes 0, or 0.5 when every coefficient is positive),
    and the scores through ``post_transform``. The float op and the client's decoding of the quantized one."""
    scores = np.asarray(scores, dtype=np.float32)
    best = np.argmax(scores, axis=1)
    top = scores[np.arange(len(best)), best]
    if len(labels) == 2:
        positive = (top >= 0.5) if all_positive else (top > 0)
        chosen = [labels[1] if pos else labels[b] for pos, b in zip(positive, best)]
    else:
        chosen = [labels[b] for b in best]
    if len(labels) == 1:
        out = probit(scores) if post_transform == "PROBIT" else scores
    else:
        out = transform_columns(scores, post_transform)
    return _labels(chosen, labels), out


def libsvm_outputs(decision: NDArray[Any], labels: list[Any], post_transform: str, prob_a: NDArray[Any],
                   prob_b: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """An SVMClassifier's (labels, scores) from libsvm's one-vs-one decision values (samples, pairs; the
    votes are taken on them as given, the scores in float32): the label of the most votes; Platt scaling and
    pairwise coupling when ``prob_a`` holds values; else the decision values (two classes: expanded to two
    columns). The float op and the client's decoding of the quantized one.

    Raises:
        ValueError: PROBIT on two classes without probabilities (onnxruntime writes no second score).
    """
    n_classes = len(labels)
    samples = decision.shape[0]
    votes = np.zeros((samples, n_classes), dtype=np.int64)
    pair = 0
    for i in range(n_classes - 1):
        for j in range(i + 1, n_classes):
            votes[np.arange(samples), np.where(decision[:, pair] > 0, i, j)] += 1
            pair += 1
    chosen = [labels[k] for k in np.argmax(votes, axis=1)]
    values = np.asarray(decision, dtype=np.float32)
    if prob_a.size:
        return _labels(chosen, labels), transform_columns(platt_probabilities(values, prob_a, prob_b, n_classes),
                                                          post_transform)
    if n_classes > 2:
        return _labels(chosen, labels), transform_columns(values, post_transform)
    if post_transform == "PROBIT":
        raise ValueError("PROBIT on a two-class SVM without probabilities leaves the second score undefined "
                         "(onnxruntime writes no value there)")
    expansion = SIGNED if post_transform == "NONE" else COMPLEMENT
    return _labels(chosen, labels), two_class_scores(values[:, 0], post_transform, expansion)


def _labels(chosen: list[Any], labels: list[Any]) -> NDArray[Any]:
    if chosen:
        return labels_array(chosen)
    return np.zeros(0, dtype=object if isinstance(labels[0], str) else np.int64)


@OPS.op("SVMRegressor", since=1, domain=ML_DOMAIN, quantized=QuantizedSVMRegressor)
def svm_regressor(x: NDArray[Any], /, *, coefficients: list[float] | None = None,
                  kernel_params: list[float] | None = None, kernel_type: str = "LINEAR", n_supports: int = 0,
                  one_class: int = 0, post_transform: str = "NONE", rho: list[float] | None = None,
                  support_vectors: list[float] | None = None) -> NDArray[Any]:
    """SVM regression (or one-class SVM: +1 / -1): (samples, 1) float32."""
    check_transform(post_transform)
    features = as_matrix(x)
    coef = np.asarray(coefficients or [], dtype=np.float32)
    constant = float(np.asarray(rho or [0.0], dtype=np.float32)[0])
    if n_supports > 0:
        vectors = np.asarray(support_vectors or [], dtype=np.float32)
        if vectors.size != n_supports * features.shape[1] or coef.size < n_supports:
            raise ValueError(f"support vectors or coefficients do not match {n_supports} vectors of "
                             f"{features.shape[1]} features")
        k = kernel(features, vectors.reshape(n_supports, -1), kernel_type, kernel_params, 0.0)
        score = (k.astype(np.float64) @ coef[:n_supports].astype(np.float64) + constant).astype(np.float32)
    else:
        if coef.size != features.shape[1]:
            raise ValueError(f"{coef.size} coefficients for {features.shape[1]} features")
        score = kernel(features, coef[None, :], "LINEAR", None, constant)[:, 0]
    if one_class:
        score = np.where(score > 0, np.float32(1), np.float32(-1))
    elif post_transform == "PROBIT":
        score = probit(score)
    return score.astype(np.float32)[:, None]
