"""Quantized twins of the ONNX-ML models.

- ``QuantizedLinearClassifier`` / ``QuantizedLinearRegressor``: the scores are an integer matrix product
  of the requantized features with the quantized coefficients, intercepts folded in as integers.
- ``QuantizedTreeEnsemble``: every distinct (feature, comparison, threshold) of the forest is one lookup
  on the quantized feature (the threshold compared on the feature's own integer grid, so a comparison is
  exact for the quantized feature; an input quantized per feature is compared on each column's own grid); a clear 0/±1 matrix product counts, per leaf, the conditions of its
  path that hold; an equality lookup per leaf marks the leaf reached; the leaves' quantized weights are
  summed as integers (one clear matrix product).

Both leave the post transform and the final convention of the op (two-class expansion, base values) to
the output's float mapping, which the client applies after decryption: it must be element-wise, so an
output whose columns mix several scores (SOFTMAX, SOFTMAX_ZERO) is refused. The label output is the
argmax of the scores, which no element-wise mapping gives: it is decoded by the client from the whole
row of scores (its integers are the score accumulator itself), so it must be a model output, as it is
in every skl2onnx and onnxmltools export.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ElementwiseOp, LinearOp, QuantContext, QValue
from cml_core.quantization.quantizers import UniformQuantizer
from cml_core.signature import REQUIRED
from numpy.typing import NDArray


class PerFeatureElementwiseOp(ElementwiseOp):
    """An element-wise op whose constants differ per feature (Scaler, Imputer): the composed float
    mapping depends on the position, so it is marked non-uniform (a layout op after it requantizes
    first, and the lookup that consumes it is per position)."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        out = super().encrypted_forward(ctx, inputs)
        return out if out.is_affine else dataclasses.replace(out, uniform=False)


def _with_defaults(op: LinearOp) -> dict[str, Any]:
    defaults = {k: v for k, v in op.signature.attributes.items() if v is not REQUIRED}
    return {**defaults, **op.attributes}


def _column_sources(finish: Callable[[NDArray[Any]], tuple[NDArray[Any], ...]], output: int,
                    n_columns: int) -> list[int] | None:
    """For each column of output ``output`` of ``finish`` (a function of the score matrix), the one score
    column it depends on, found by perturbing each score column of random score rows; None when an output
    column depends on several score columns (a row-wise transform: SOFTMAX, SOFTMAX_ZERO)."""
    rng = np.random.default_rng(0)
    probes = rng.normal(0.0, 2.0, size=(4, n_columns))
    base = np.asarray(finish(probes)[output], dtype=np.float64)
    sources: list[set[int]] = [set() for _ in range(base.shape[1])]
    for k in range(n_columns):
        moved = probes.copy()
        moved[:, k] += rng.uniform(0.5, 1.5, size=4)
        changed = ~np.isclose(np.asarray(finish(moved)[output], dtype=np.float64), base, rtol=1e-6, atol=1e-9)
        for j in np.flatnonzero(changed.any(axis=0)):
            sources[j].add(k)
    if any(len(s) > 1 for s in sources):
        return None
    return [min(s) if s else 0 for s in sources]


def decoded_outputs(ctx: QuantContext, where: str, acc: Any, column_float: Callable[[NDArray[Any], int], NDArray[Any]],
                    n_columns: int, finish: Callable[[NDArray[Any]], tuple[NDArray[Any], ...]],
                    label_output: int | None) -> tuple[QValue, ...]:
    """The node's outputs over the score accumulator ``acc`` (samples, score columns).

    ``column_float(codes, k)`` is the float score of column ``k`` for integers ``codes``; ``finish``
    maps a float score matrix to the node's outputs. Each output column that is a function of one score
    column is that column's integers with an element-wise float mapping. The label output (index
    ``label_output``) and the outputs of a row-wise post transform (SOFTMAX of a multi-class model) are
    decoded from whole rows of scores: the encrypted program ends at the scores and the client finishes
    them; another op cannot read such an output on encrypted values.
    """
    n_outputs = len(finish(np.zeros((1, n_columns))))
    outputs: list[QValue] = []
    for index in range(n_outputs):
        sources = None if index == label_output else _column_sources(finish, index, n_columns)
        if sources is None:
            what = "the label output" if index == label_output else "an output of a row-wise post transform"

            def decode(q: NDArray[Any], index: int = index, what: str = what) -> NDArray[Any]:
                q = np.asarray(q)
                if q.ndim != 2 or q.shape[1] != n_columns:
                    raise QuantizationError(f"{where}: {what} is decoded from whole rows of {n_columns} scores by "
                                            "the client; it cannot be read by another op on encrypted values")
                scores = np.stack([column_float(q[:, k], k) for k in range(n_columns)], axis=1)
                return np.asarray(finish(scores)[index])

            # the scores each integer column stands for, affine per column: lets a saved client decode the row
            # (see cml_core.fhe.row_maps)
            zero = np.array([column_float(np.zeros(1), k)[0] for k in range(n_columns)], dtype=np.float64)
            one = np.array([column_float(np.ones(1), k)[0] for k in range(n_columns)], dtype=np.float64)
            decode.row_scores = (one - zero, zero)  # type: ignore[attr-defined]
            outputs.append(QValue.lazy(acc, decode, False))
            continue
        selection = np.zeros((n_columns, len(sources)), dtype=np.int64)
        selection[sources, np.arange(len(sources))] = 1
        data = acc if sources == list(range(n_columns)) else acc @ selection

        def to_float(q: NDArray[Any], sources: list[int] = sources, index: int = index) -> NDArray[Any]:
            q = np.asarray(q)
            flat = q.reshape(-1, q.shape[-1])
            out = np.empty(flat.shape, dtype=np.float64)
            for j, k in enumerate(sources):
                scores = np.repeat(column_float(flat[:, j], k)[:, None], n_columns, axis=1)
                for other in range(n_columns):
                    if other != k:
                        scores[:, other] = column_float(flat[:, j], other)
                out[:, j] = np.asarray(finish(scores)[index], dtype=np.float64)[:, j]
            return out.reshape(q.shape)

        outputs.append(QValue.lazy(data, to_float, False))
    return tuple(outputs)


class _LinearModel(LinearOp):
    """Shared by the linear classifier and regressor: integer scores ``(x - z) @ W_q.T + b_q``."""

    #: a per-feature input's scales and zero points fold into the coefficients: one grid per feature is free
    folds_feature_scales = True

    def integer_scores(self, ctx: QuantContext, x: QValue, coefficients: Any, intercepts: Any,
                       n_outputs: int) -> tuple[Any, float, NDArray[Any] | None]:
        """(accumulator, its scale, a float bias kept outside the integers or None)."""
        if len(x.shape) != 2:
            raise QuantizationError(f"{self.where}: the quantized model takes a (samples, features) input, "
                                    f"got shape {x.shape}")
        weights = np.asarray(coefficients, dtype=np.float64).reshape(n_outputs, -1)
        if x.is_per_feature and x.feature_scales is not None and x.feature_scales.size == weights.shape[1]:
            # (q - z) @ (W * s).T: each feature's scale folded into its coefficients, no lookup
            ctx.read_per_feature(x)
            w_int, w_scale = self.weights(ctx, "coefficients per feature", weights * x.feature_scales[None, :])
            acc = (x.data - x.feature_zero_points) @ np.transpose(w_int)
            scale = float(w_scale)
        else:
            w_int, w_scale = self.weights(ctx, "coefficients", weights)
            q = ctx.requantize(x)
            acc = self.centered(q) @ np.transpose(w_int)
            scale = float(q.scale) * float(w_scale)
        float_bias = None
        if intercepts:
            bias = self.integer_bias("intercepts", np.asarray(intercepts, dtype=np.float64), scale)
            if bias is None:
                float_bias = np.asarray(intercepts, dtype=np.float64)
            else:
                acc = acc + bias
        ctx.record_accumulator(acc)
        return acc, scale, float_bias


def _column_map(scale: float, float_bias: NDArray[Any] | None) -> Callable[[NDArray[Any], int], NDArray[Any]]:
    def column_float(codes: NDArray[Any], k: int) -> NDArray[Any]:
        value = scale * np.asarray(codes, dtype=np.float64)
        return value if float_bias is None else value + float_bias[k]

    return column_float


class QuantizedLinearClassifier(_LinearModel):
    """LinearClassifier: integer scores; labels decoded by the client from the decrypted scores."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> tuple[QValue, ...]:
        from .linear import classifier_labels, linear_classifier_outputs

        x = inputs[0]
        assert x is not None
        a = _with_defaults(self)
        labels = classifier_labels(a.get("classlabels_ints"), a.get("classlabels_strings"))
        intercepts = a.get("intercepts")
        n = len(intercepts) if intercepts else (len(labels) if len(labels) > 2 else 1)
        acc, scale, float_bias = self.integer_scores(ctx, x, a["coefficients"], intercepts, n)

        def finish(scores: NDArray[Any]) -> tuple[NDArray[Any], ...]:
            return linear_classifier_outputs(np.asarray(scores, dtype=np.float32), labels, a["post_transform"])

        return decoded_outputs(ctx, self.where, acc, _column_map(scale, float_bias), n, finish, label_output=0)


class QuantizedLinearRegressor(_LinearModel):
    """LinearRegressor: integer scores with the post transform as the output's float mapping."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        from .linear import linear_regressor

        x = inputs[0]
        assert x is not None
        a = _with_defaults(self)
        targets = int(a["targets"])
        acc, scale, float_bias = self.integer_scores(ctx, x, a["coefficients"], a.get("intercepts"), targets)
        identity = [1.0] + [0.0] * (targets - 1)
        eye = np.eye(targets).ravel().tolist()

        def finish(scores: NDArray[Any]) -> tuple[NDArray[Any], ...]:
            # the regressor applied to the scores themselves: an identity with no intercepts
            return (linear_regressor(np.asarray(scores, dtype=np.float32), coefficients=eye if targets > 1 else identity,
                                     post_transform=a["post_transform"], targets=targets),)

        return decoded_outputs(ctx, self.where, acc, _column_map(scale, float_bias), targets, finish, None)[0]


class QuantizedTreeEnsemble(LinearOp):
    """TreeEnsembleClassifier, TreeEnsembleRegressor and TreeEnsemble in the FHE-friendly form (see the module)."""

    #: each comparison reads its feature on the feature's own grid
    folds_feature_scales = True

    def _model(self, x: QValue) -> Any:
        """The parsed trees: derived from the node's attributes, so kept beside ``state`` (which is saved)."""
        from .trees import tree_model

        model = getattr(self, "_tree_model", None)
        if model is None:
            model = tree_model(self.impl.op_type, self.impl.since_version, _with_defaults(self), np.float32)
            if model.aggregate_function not in ("SUM", "AVERAGE"):
                raise QuantizationError(f"{self.where}: aggregate_function {model.aggregate_function} has no "
                                        "quantized form (SUM and AVERAGE do)")
            self._tree_model = model
        if "scored" not in self.state:
            self.state["scored"] = self._scored_everywhere(model.forest)
        return model

    def decision_cuts(self, index: int, constants: Sequence[Any],
                      shape: tuple[int, ...]) -> list[tuple[NDArray[Any], bool]] | None:
        """Every node's threshold on its feature (NaN on the other features): ``x <= t`` and ``x > t`` are
        decided by whether ``x`` passes ``t`` strictly, ``x < t`` and ``x >= t`` inclusively, an equality
        (or set membership) by both at the value."""
        forest = self._model(None).forest
        n_features = shape[-1] if len(shape) == 2 else 0
        if index != 0 or not len(forest.feature) or forest.feature.max() >= n_features or forest.feature.min() < 0:
            return None
        cuts: list[tuple[NDArray[Any], bool]] = []

        def cut(feature: int, threshold: float, inclusive: bool) -> None:
            at = np.full(n_features, np.nan)
            at[feature] = threshold
            cuts.append((at, inclusive))

        for node, (feature, mode) in enumerate(zip(forest.feature, forest.mode)):
            threshold = float(forest.threshold[node])
            if mode in (0, 3):  # LEQ, GT
                cut(int(feature), threshold, False)
            elif mode in (1, 2):  # LT, GTE
                cut(int(feature), threshold, True)
            else:  # EQ, NEQ, MEMBER: the value itself is an interval of its own
                for value in ([threshold] if mode != 6 else sorted(forest.members[node])):
                    cut(int(feature), float(value), True)
                    cut(int(feature), float(value), False)
        return cuts

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> tuple[QValue, ...] | QValue:
        from .trees import compare

        x = inputs[0]
        assert x is not None
        if len(x.shape) != 2:
            raise QuantizationError(f"{self.where}: the quantized model takes a (samples, features) input, "
                                    f"got shape {x.shape}")
        model = self._model(x)
        forest = model.forest
        splits, path, depth = self._structure(forest)
        if len(forest.feature) and forest.feature.max() >= x.shape[1]:
            raise QuantizationError(f"{self.where}: a node reads feature {forest.feature.max()}, the input has "
                                    f"{x.shape[1]}")
        features = forest.feature[splits]
        selection = np.zeros((x.shape[1], len(splits)), dtype=np.int64)
        selection[features, np.arange(len(splits))] = 1
        split_float: Callable[[NDArray[Any]], NDArray[Any]]
        if x.is_per_feature:
            # each comparison on its feature's own integers: the codes of column j are feature features[j]'s
            q = ctx.read_per_feature(x)
            grid = x.features

            def split_float(codes: NDArray[Any]) -> NDArray[Any]:
                return grid.dequant_features(codes, features)  # type: ignore[no-any-return]
        else:
            q = ctx.requantize(x)
            assert q.to_float is not None
            split_float = q.to_float
        columns = q.data @ selection

        def decisions(codes: NDArray[Any]) -> NDArray[Any]:
            values = np.asarray(split_float(codes), dtype=np.float64)
            return compare(values, forest, splits).astype(np.int64)

        comparisons = ctx.lookup(QValue.lazy(columns, lambda c: c, False, name=f"{self.bound.name}:features"),
                                 decisions, key=f"{self.bound.name}:comparisons")
        counts = comparisons @ path.astype(np.int64)
        needed_true = (path > 0).sum(axis=0)  # a leaf is reached when exactly these hold and no false-needed one

        def reached(codes: NDArray[Any]) -> NDArray[Any]:
            return (np.asarray(codes) == needed_true).astype(np.int64)

        leaves = ctx.lookup(QValue.lazy(counts, lambda c: c, False, name=f"{self.bound.name}:paths"),
                            reached, key=f"{self.bound.name}:leaves")
        weights = forest.leaf_weights
        w_int, scales, zero_points = self._leaf_codes(ctx, weights)
        acc = leaves @ w_int
        ctx.record_accumulator(acc)
        offsets = len(forest.roots) * zero_points  # each tree adds exactly one leaf's zero point per column
        scored = self.state["scored"]
        n_columns = weights.shape[1]

        def column_float(codes: NDArray[Any], k: int) -> NDArray[Any]:
            return scales[k] * (np.asarray(codes, dtype=np.float64) - offsets[k])

        def finish(sums: NDArray[Any]) -> tuple[NDArray[Any], ...]:
            return model.finish(np.asarray(sums), scored)

        outs = decoded_outputs(ctx, self.where, acc, column_float, n_columns, finish,
                               label_output=0 if model.classifier else None)
        return outs if model.classifier else outs[0]

    def _leaf_codes(self, ctx: QuantContext, weights: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
        """(codes, scales, zero points per output column) of the leaf weights: one affine ``op_weights``-bit grid
        over their range and 0, shared by the columns so that equal weights of two classes stay equal (a tie
        keeps the float model's label). Leaf values far from 0 (a regression's targets, probabilities) get the
        whole grid, where a symmetric one spends half of it on values no leaf holds; 0 (a leaf that does not
        weigh a column) stays exact. Every tree reaches exactly one leaf, so the zero points add up to a known
        offset per column."""
        if "leaf codes" not in self.state:
            arr = np.asarray(weights, dtype=np.float64)
            grid = UniformQuantizer.fit(min(float(arr.min()), 0.0), max(float(arr.max()), 0.0), ctx.config.op_weights)
            columns = arr.shape[1]
            self.state["leaf codes"] = (grid.quant(arr), np.full(columns, grid.scale),
                                        np.full(columns, grid.zero_point, dtype=np.int64))
        return self.state["leaf codes"]  # type: ignore[no-any-return]

    def _scored_everywhere(self, forest: Any) -> NDArray[np.bool_]:
        """Which classes or targets every sample gets a weight for: the union over the trees of the set each
        tree's leaves weigh, which must be the same for all leaves of a tree (otherwise onnxruntime's
        conventions for unweighted classes change from sample to sample, and there is no quantized form)."""
        scored = np.zeros(forest.leaf_scored.shape[1], dtype=bool)
        for root in forest.roots:
            sets, stack = [], [int(root)]
            while stack:
                node = stack.pop()
                if node < 0:
                    sets.append(forest.leaf_scored[-1 - node])
                else:
                    stack += [int(forest.true_next[node]), int(forest.false_next[node])]
            if any((s != sets[0]).any() for s in sets):
                raise QuantizationError(f"{self.where}: the leaves of a tree weigh different sets of classes or "
                                        "targets, which changes the output's convention per sample; no quantized form")
            scored |= sets[0]
        return scored

    def _structure(self, forest: Any) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """(a split node per distinct comparison, the (comparisons, leaves) path matrix, each leaf's depth).

        ``path[c, l]`` is +1 when leaf ``l``'s path needs comparison ``c`` true, -1 when it needs it
        false, 0 when the path does not pass it; comparisons on the same (feature, mode, threshold) are
        shared by all trees.
        """
        if "structure" in self.state:
            return self.state["structure"]  # type: ignore[no-any-return]
        distinct: dict[tuple[Any, ...], int] = {}
        representative: list[int] = []
        comparison_of = np.zeros(len(forest.feature), dtype=np.int64)
        for node in range(len(forest.feature)):
            key = (int(forest.feature[node]), int(forest.mode[node]), float(forest.threshold[node]),
                   bool(forest.missing_true[node]), forest.members[node])
            if key not in distinct:
                distinct[key] = len(representative)
                representative.append(node)
            comparison_of[node] = distinct[key]
        n_leaves = forest.leaf_weights.shape[0]
        path = np.zeros((len(representative), n_leaves), dtype=np.int64)
        depth = np.zeros(n_leaves, dtype=np.int64)
        for root in forest.roots:
            stack: list[tuple[int, list[tuple[int, int]]]] = [(int(root), [])]
            while stack:
                node, conditions = stack.pop()
                if node < 0:
                    leaf = -1 - node
                    for comparison, sign in conditions:
                        if path[comparison, leaf] == -sign:
                            raise QuantizationError(f"{self.where}: a path needs one comparison both true and false")
                        path[comparison, leaf] = sign
                    depth[leaf] = int(np.abs(path[:, leaf]).sum())
                    continue
                c = int(comparison_of[node])
                stack.append((int(forest.true_next[node]), conditions + [(c, 1)]))
                stack.append((int(forest.false_next[node]), conditions + [(c, -1)]))
        if len(representative) == 0:
            raise QuantizationError(f"{self.where}: the forest has no split: its output does not depend on the input")
        self.state["structure"] = (np.asarray(representative, dtype=np.int64), path, depth)
        return self.state["structure"]  # type: ignore[no-any-return]
