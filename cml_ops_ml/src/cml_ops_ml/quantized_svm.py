"""Quantized twins of SVMClassifier and SVMRegressor with a linear kernel.

With a LINEAR kernel (or a POLY kernel of degree 1, ``gamma * <x, v> + coef0``) the decision function is
linear in the features: each one-vs-one decision value of a libsvm classifier is
``sum over its two classes' support vectors of dual coefficient * k(x, v) + rho``, that is ``x @ w + b``
with ``w`` the dual coefficients times the support vectors summed. The twins compute those values as
integer scores (a ``_LinearModel``: a per-feature input's scales folded into ``w``; the classifier's
score columns each on their own weight scale), and leave the rest of the op to the client, as
``QuantizedLinearClassifier`` does (``decoded_outputs``): the label (the vote
of the one-vs-one decisions, or the argmax of liblinear's per-class scores), Platt scaling and pairwise
coupling of ``prob_a``/``prob_b``, and the post transform are computed from the whole decrypted row of
decision values. The encrypted program ends at the decision values: no lookup.

Other kernels (RBF, SIGMOID, POLY of a higher degree) are not linear in the features: a kernel value per
support vector would be a lookup on a product or a distance of encrypted features, and their sum is as
wide as the support vectors are many. They are refused, naming the node and the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import QuantContext, QValue
from cml_core.signature import REQUIRED
from numpy.typing import NDArray

from ._scores import probit
from .quantized import _LinearModel, decoded_outputs


def _attributes(op: _LinearModel) -> dict[str, Any]:
    defaults = {k: v for k, v in op.signature.attributes.items() if v is not REQUIRED}
    return {**defaults, **op.attributes}


def _affine_kernel(where: str, kernel_type: str, kernel_params: Sequence[float] | None) -> tuple[float, float]:
    """(a, c) with ``k(x, v) = a * <x, v> + c`` for the kernels that are affine in ``<x, v>``.

    Raises:
        QuantizationError: any other kernel, naming the node, the kernel and the way out.
    """
    gamma, coef0, degree = (float(np.float32(p)) for p in (list(kernel_params or []) + [0.0, 0.0, 0.0])[:3])
    if kernel_type == "LINEAR":
        return 1.0, 0.0
    if kernel_type == "POLY" and degree == 1.0:
        return gamma, coef0
    detail = f"kernel_type {kernel_type}" + (f" of degree {degree:g}" if kernel_type == "POLY" else "")
    raise QuantizationError(
        f"{where}: an SVM with {detail} has no quantized form: its kernel is not linear in the features (a "
        "lookup per support vector on encrypted products or distances). Train it with kernel='linear' "
        "(SVC/SVR(kernel='linear')) or use LinearSVC/LinearSVR, whose scores are an integer matrix product")


def _support_form(where: str, coefficients: Any, support_vectors: Any, counts: list[int],
                  n_features: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(dual coefficients (rows, vectors), support vectors (vectors, features)) in float64."""
    n_vectors = sum(counts)
    vectors = np.asarray(support_vectors or [], dtype=np.float32).astype(np.float64)
    if vectors.size != n_vectors * n_features:
        raise QuantizationError(f"{where}: {vectors.size} support vector values do not make {n_vectors} vectors "
                                f"of {n_features} features")
    coef = np.asarray(coefficients, dtype=np.float32).astype(np.float64)
    return coef, vectors.reshape(n_vectors, n_features)


class QuantizedSVMClassifier(_LinearModel):
    """SVMClassifier with a linear kernel: integer decision values (one per pair of classes for libsvm's
    form, one per class for liblinear's); labels and probabilities decoded by the client."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> tuple[QValue, ...]:
        x = inputs[0]
        assert x is not None
        a = _attributes(self)
        labels: list[Any] = list(a["classlabels_strings"] or []) or list(a["classlabels_ints"] or [])
        if not labels or not a["coefficients"]:
            raise QuantizationError(f"{self.where}: SVMClassifier needs class labels and coefficients")
        if len(x.shape) != 2:
            raise QuantizationError(f"{self.where}: the quantized model takes a (samples, features) input, "
                                    f"got shape {x.shape}")
        n_features = x.shape[1]
        counts = [int(v) for v in (a["vectors_per_class"] or [])]
        rho = [float(v) for v in np.asarray(a["rho"] or [0.0], dtype=np.float32)]
        if sum(counts) == 0:
            weights, intercepts = self._liblinear(labels, a["coefficients"], rho, n_features)
            finish = _liblinear_finish(labels, bool((np.asarray(a["coefficients"], np.float32) >= 0).all()),
                                       a["post_transform"])
        else:
            weights, intercepts = self._pairs(labels, a, counts, rho, n_features)
            finish = _pairwise_finish(labels, a["post_transform"], a["prob_a"], a["prob_b"])
        n = weights.shape[0]
        acc, scales, float_bias = self._scores_per_column(ctx, x, weights, np.asarray(intercepts, dtype=np.float64))

        def column_float(codes: NDArray[Any], k: int) -> NDArray[Any]:
            value: NDArray[Any] = scales[k] * np.asarray(codes, dtype=np.float64)
            return value if float_bias is None else value + float_bias[k]

        return decoded_outputs(ctx, self.where, acc, column_float, n, finish, label_output=0)

    def _scores_per_column(self, ctx: QuantContext, x: QValue, weights: NDArray[np.float64], intercepts: NDArray[Any]
                           ) -> tuple[Any, NDArray[np.float64], NDArray[Any] | None]:
        """(accumulator, its scale per column, a float bias kept outside the integers or None): each score
        column (one per pair of classes, or per class) with weights quantized on its own scale. The client
        decodes the scores in float, so columns on different scales cost nothing, and a pair whose weights
        are small next to another's keeps its resolution (the vote needs each decision's sign)."""
        if x.is_per_feature and x.feature_scales is not None and x.feature_scales.size == weights.shape[1]:
            ctx.read_per_feature(x)  # (q - z) @ (W * s).T: each feature's scale folded into its coefficients
            w_int, w_scales = self.weights_per_column(ctx, "coefficients per feature",
                                                      np.transpose(weights * x.feature_scales[None, :]))
            acc = (x.data - x.feature_zero_points) @ w_int
            scales = np.asarray(w_scales, dtype=np.float64).reshape(-1)
        else:
            w_int, w_scales = self.weights_per_column(ctx, "coefficients", np.transpose(weights))
            q = ctx.requantize(x)
            acc = self.centered(q) @ w_int
            scales = float(q.scale) * np.asarray(w_scales, dtype=np.float64).reshape(-1)  # type: ignore[arg-type]
        float_bias = None
        bias = self.integer_bias("intercepts", intercepts, scales)
        if bias is None:
            float_bias = intercepts
        else:
            acc = acc + bias
        ctx.record_accumulator(acc)
        return acc, scales, float_bias

    def _liblinear(self, labels: list[Any], coefficients: Any, rho: list[float],
                   n_features: int) -> tuple[NDArray[np.float64], list[float]]:
        weights = np.asarray(coefficients, dtype=np.float32).astype(np.float64).reshape(len(labels), -1)
        if weights.shape[1] != n_features:
            raise QuantizationError(f"{self.where}: coefficients of {weights.shape[1]} features for an input of "
                                    f"{n_features}")
        return weights, [rho[0]] * len(labels)

    def _pairs(self, labels: list[Any], a: dict[str, Any], counts: list[int], rho: list[float],
               n_features: int) -> tuple[NDArray[np.float64], list[float]]:
        """Per pair of classes (i < j, in libsvm's order): the weights and intercept of its decision value."""
        n_classes = len(labels)
        n_pairs = n_classes * (n_classes - 1) // 2
        if len(counts) != n_classes:
            raise QuantizationError(f"{self.where}: vectors_per_class has {len(counts)} entries for {n_classes} "
                                    "classes")
        scale, constant = _affine_kernel(self.where, a["kernel_type"], a["kernel_params"])
        coef, vectors = _support_form(self.where, a["coefficients"], a["support_vectors"], counts, n_features)
        n_vectors = vectors.shape[0]
        if coef.size < (n_classes - 1) * n_vectors or len(rho) < n_pairs:
            raise QuantizationError(f"{self.where}: coefficients or rho are too short for the classes and support "
                                    "vectors")
        coef = coef[:(n_classes - 1) * n_vectors].reshape(n_classes - 1, n_vectors)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        weights = np.zeros((n_pairs, n_features), dtype=np.float64)
        intercepts = []
        pair = 0
        for i in range(n_classes - 1):
            for j in range(i + 1, n_classes):
                si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                dual = np.concatenate([coef[j - 1, si], coef[i, sj]])
                sv = np.concatenate([vectors[si], vectors[sj]])
                weights[pair] = scale * (dual @ sv)
                intercepts.append(rho[pair] + constant * float(dual.sum()))
                pair += 1
        return weights, intercepts


def _liblinear_finish(labels: list[Any], all_positive: bool, post_transform: str) -> Any:
    """The SVMClassifier's outputs from liblinear's per-class scores (samples, classes), as the float op."""

    def finish(scores: NDArray[Any]) -> tuple[NDArray[Any], ...]:
        from .svm import liblinear_outputs  # svm registers its ops with this module's twins

        return liblinear_outputs(scores, labels, all_positive, post_transform)

    return finish


def _pairwise_finish(labels: list[Any], post_transform: str, prob_a: Any, prob_b: Any) -> Any:
    """The SVMClassifier's outputs from libsvm's one-vs-one decision values (samples, pairs), as the float op:
    votes for the label; Platt scaling and pairwise coupling when ``prob_a`` is given; else the decision
    values (two classes: expanded to two columns)."""
    a = np.asarray(prob_a or [], dtype=np.float32)
    b = np.asarray(prob_b or [], dtype=np.float32)
    if len(labels) == 2 and not a.size and post_transform == "PROBIT":
        raise QuantizationError("PROBIT on a two-class SVM without probabilities leaves the second score undefined")

    def finish(decision: NDArray[Any]) -> tuple[NDArray[Any], ...]:
        from .svm import libsvm_outputs

        return libsvm_outputs(np.asarray(decision, dtype=np.float64), labels, post_transform, a, b)

    return finish


class QuantizedSVMRegressor(_LinearModel):
    """SVMRegressor with a linear kernel: one integer score; a one-class SVM's sign (+1 / -1) and PROBIT
    are the score's float mapping, applied by the client."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        x = inputs[0]
        assert x is not None
        a = _attributes(self)
        if len(x.shape) != 2:
            raise QuantizationError(f"{self.where}: the quantized model takes a (samples, features) input, "
                                    f"got shape {x.shape}")
        n_features = x.shape[1]
        constant = float(np.asarray(a["rho"] or [0.0], dtype=np.float32)[0])
        coef = np.asarray(a["coefficients"] or [], dtype=np.float32).astype(np.float64)
        n_supports = int(a["n_supports"])
        if n_supports > 0:
            scale, offset = _affine_kernel(self.where, a["kernel_type"], a["kernel_params"])
            dual, vectors = _support_form(self.where, coef, a["support_vectors"], [n_supports], n_features)
            if dual.size < n_supports:
                raise QuantizationError(f"{self.where}: {dual.size} coefficients for {n_supports} support vectors")
            dual = dual[:n_supports]
            weights = scale * (dual @ vectors)
            constant += offset * float(dual.sum())
        else:
            if coef.size != n_features:
                raise QuantizationError(f"{self.where}: {coef.size} coefficients for {n_features} features")
            weights = coef
        acc, scale_, float_bias = self.integer_scores(ctx, x, weights[None, :], [constant], 1)
        one_class, transform = bool(a["one_class"]), a["post_transform"]

        def column_float(codes: NDArray[Any], k: int) -> NDArray[Any]:
            value = scale_ * np.asarray(codes, dtype=np.float64)
            return value if float_bias is None else value + float_bias[k]

        def finish(scores: NDArray[Any]) -> tuple[NDArray[Any], ...]:
            score = np.asarray(scores, dtype=np.float32)
            if one_class:
                score = np.where(score > 0, np.float32(1), np.float32(-1))
            elif transform == "PROBIT":
                score = probit(score)
            return (score.astype(np.float32),)

        return decoded_outputs(ctx, self.where, acc, column_float, 1, finish, None)[0]
