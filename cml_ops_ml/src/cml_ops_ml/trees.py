"""Tree ensembles: TreeEnsembleClassifier and TreeEnsembleRegressor (since 1 and 3) and TreeEnsemble (since 5).

Every form is read into one ``Forest``: split nodes (feature, threshold, comparison, the next node or leaf on
either side) and leaves carrying weights per target or class. Samples walk all trees at once, one level
per step; the reached leaves' weights are then aggregated as onnxruntime does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    probit,
    transform_columns,
    two_class_scores,
)
from .quantized import QuantizedTreeEnsemble

#: comparison codes, in TreeEnsemble's (since 5) numbering of ``nodes_modes``
MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5,
         "BRANCH_MEMBER": 6}
AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")
TRANSFORM_CODES = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")


@dataclass
class Forest:
    """Trees as flat arrays. A successor ``>= 0`` is a split node, ``-1 - k`` is leaf ``k``."""

    feature: NDArray[np.int64]
    threshold: NDArray[Any]
    mode: NDArray[np.int64]
    true_next: NDArray[np.int64]
    false_next: NDArray[np.int64]
    missing_true: NDArray[np.bool_]
    roots: NDArray[np.int64]  # per tree, a split node or a leaf (same encoding as successors)
    leaf_weights: NDArray[Any]  # (leaves, targets)
    leaf_scored: NDArray[np.bool_]  # (leaves, targets): whether the leaf gives the target any weight
    members: list[frozenset[float]] = field(default_factory=list)  # per node, the set of BRANCH_MEMBER

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def decisions(self, x: NDArray[Any]) -> NDArray[np.bool_]:
        """(samples, nodes): whether each split node sends each sample to its true side."""
        values = x[:, self.feature]
        th = self.threshold[None, :]
        mode = self.mode[None, :]
        with np.errstate(invalid="ignore"):
            out = np.select(
                [mode == 0, mode == 1, mode == 2, mode == 3, mode == 4, mode == 5],
                [values <= th, values < th, values >= th, values > th, values == th, values != th],
                default=False)
        if (self.mode == 6).any():
            for node in np.flatnonzero(self.mode == 6):
                out[:, node] = np.isin(values[:, node], list(self.members[node]))
        return out | (self.missing_true[None, :] & np.isnan(values))

    def leaves(self, x: NDArray[Any]) -> NDArray[np.int64]:
        """(samples, trees): the leaf each tree sends each sample to."""
        go_true = self.decisions(x)
        state = np.broadcast_to(self.roots, (x.shape[0], self.n_trees)).copy()
        rows = np.arange(x.shape[0])[:, None]
        for _ in range(len(self.feature) + 1):
            inner = state >= 0
            if not inner.any():
                return -1 - state
            node = np.where(inner, state, 0)
            step = np.where(go_true[rows, node], self.true_next[node], self.false_next[node])
            state = np.where(inner, step, state)
        raise ValueError("the trees contain a cycle")

    def aggregate(self, x: NDArray[Any], function: str, dtype: Any) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """(scores, scored), each (samples, targets): the leaf weights aggregated over the trees in tree
        order, in ``dtype``, and whether any tree gave the target a weight."""
        reached = self.leaves(x)
        weights = self.leaf_weights.astype(dtype)
        n, targets = x.shape[0], weights.shape[1]
        scores = np.zeros((n, targets), dtype=dtype)
        scored = np.zeros((n, targets), dtype=bool)
        for tree in range(self.n_trees):
            w, has = weights[reached[:, tree]], self.leaf_scored[reached[:, tree]]
            if function in ("SUM", "AVERAGE"):
                scores = np.where(has, scores + w, scores).astype(dtype)
            elif function == "MIN":
                scores = np.where(has & (~scored | (w < scores)), w, scores)
            else:
                scores = np.where(has & (~scored | (w > scores)), w, scores)
            scored |= has
        return scores, scored


def _as_list(values: Any, tensor: Any, what: str) -> list[Any] | None:
    if values is not None and len(values) and tensor is not None and np.size(tensor):
        raise ValueError(f"{what} and {what}_as_tensor are both set; give one")
    if tensor is not None and np.size(tensor):
        return list(np.asarray(tensor).ravel())
    return None if values is None else list(values)


#: forests parsed lately, keyed by the identity of the attribute lists they were parsed from (a node's
#: attributes are the same objects at every call; calibration calls the op once per sample)
_PARSED: dict[tuple[Any, ...], tuple[tuple[Any, ...], Forest]] = {}
_PARSED_KEPT = 8


def forest_from_nodes(**attributes: Any) -> Forest:
    """The ``Forest`` of TreeEnsembleClassifier/Regressor attributes (nodes identified by (tree, node id)),
    parsed once per set of attribute objects (see ``_parse_forest`` for the arguments)."""
    names = sorted(attributes)
    values = tuple(attributes[n] for n in names)
    key = tuple(id(v) for v in values)
    kept = _PARSED.get(key)
    if kept is not None and all(a is b for a, b in zip(kept[0], values)):
        return kept[1]
    forest = _parse_forest(**attributes)
    if all(isinstance(v, (list, tuple, np.ndarray)) and len(v) for v in values
           if v is not None and not isinstance(v, (int, type, np.dtype))):
        if len(_PARSED) >= _PARSED_KEPT:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = (values, forest)  # holds the attribute objects: their ids stay theirs
    return forest


def _parse_forest(*, nodes_treeids: list[int], nodes_nodeids: list[int], nodes_featureids: list[int],
                  nodes_values: list[float], nodes_modes: list[str], nodes_truenodeids: list[int],
                  nodes_falsenodeids: list[int], nodes_missing_value_tracks_true: list[int] | None,
                  weight_treeids: list[int], weight_nodeids: list[int], weight_ids: list[int],
                  weights: list[float], n_targets: int, threshold_dtype: Any) -> Forest:
    count = len(nodes_nodeids)
    lengths = {"nodes_treeids": len(nodes_treeids), "nodes_featureids": len(nodes_featureids),
               "nodes_values": len(nodes_values), "nodes_modes": len(nodes_modes),
               "nodes_truenodeids": len(nodes_truenodeids), "nodes_falsenodeids": len(nodes_falsenodeids)}
    wrong = {k: v for k, v in lengths.items() if v != count}
    if wrong or count == 0:
        raise ValueError(f"the node attributes must all have one entry per node ({count} node ids): {wrong}")
    if len({len(weight_treeids), len(weight_nodeids), len(weight_ids), len(weights)}) != 1:
        raise ValueError("the leaf weight attributes (tree ids, node ids, target or class ids, weights) differ in length")
    unknown = sorted(set(nodes_modes) - set(MODES) - {"LEAF"})
    if unknown:
        raise ValueError(f"unknown node modes {unknown}")
    position = {(int(t), int(n)): i for i, (t, n) in enumerate(zip(nodes_treeids, nodes_nodeids))}
    if len(position) != count:
        raise ValueError("two nodes share a (tree id, node id)")
    is_leaf = np.array([m == "LEAF" for m in nodes_modes])
    leaf_index = np.cumsum(is_leaf) - 1
    split_index = np.cumsum(~is_leaf) - 1

    def target(tree: int, node_id: int) -> int:
        i = position.get((int(tree), int(node_id)))
        if i is None:
            raise ValueError(f"tree {tree} points to node {node_id}, which it does not have")
        return int(-1 - leaf_index[i]) if is_leaf[i] else int(split_index[i])

    splits = np.flatnonzero(~is_leaf)
    tracks = list(nodes_missing_value_tracks_true or [])
    if tracks and len(tracks) != count:
        raise ValueError("nodes_missing_value_tracks_true must have one entry per node")
    members_of: dict[int, list[int]] = {}
    for i, t in enumerate(nodes_treeids):
        members_of.setdefault(int(t), []).append(i)
    roots = []
    for tree in sorted(members_of):
        ids = members_of[tree]
        pointed = {(tree, int(nodes_truenodeids[i])) for i in ids if not is_leaf[i]}
        pointed |= {(tree, int(nodes_falsenodeids[i])) for i in ids if not is_leaf[i]}
        tops = [i for i in ids if (tree, int(nodes_nodeids[i])) not in pointed]
        if len(tops) != 1:
            raise ValueError(f"tree {tree} has {len(tops)} root nodes")
        roots.append(target(tree, int(nodes_nodeids[tops[0]])))
    n_leaves = int(is_leaf.sum())
    leaf_weights = np.zeros((n_leaves, n_targets), dtype=np.float64)
    scored = np.zeros((n_leaves, n_targets), dtype=bool)
    for tree, node_id, target_id, weight in zip(weight_treeids, weight_nodeids, weight_ids, weights):
        where = target(tree, node_id)
        if where >= 0:
            raise ValueError(f"a weight is attached to node {node_id} of tree {tree}, which is not a leaf")
        if not 0 <= int(target_id) < n_targets:
            raise ValueError(f"weight for target or class {target_id}, outside [0, {n_targets})")
        leaf_weights[-1 - where, int(target_id)] += weight
        scored[-1 - where, int(target_id)] = True
    features = np.asarray(nodes_featureids, dtype=np.int64)[splits]
    return Forest(
        feature=features,
        threshold=np.asarray(nodes_values, dtype=np.float32).astype(threshold_dtype)[splits],
        mode=np.array([MODES[nodes_modes[i]] for i in splits], dtype=np.int64),
        true_next=np.array([target(nodes_treeids[i], nodes_truenodeids[i]) for i in splits], dtype=np.int64),
        false_next=np.array([target(nodes_treeids[i], nodes_falsenodeids[i]) for i in splits], dtype=np.int64),
        missing_true=np.array([bool(tracks[i]) if tracks else False for i in splits], dtype=bool),
        roots=np.asarray(roots, dtype=np.int64), leaf_weights=leaf_weights, leaf_scored=scored,
        members=[frozenset() for _ in splits])


def _features(x: NDArray[Any], forest: Forest) -> NDArray[Any]:
    features = as_matrix(x, np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
    if len(forest.feature) and forest.feature.max() >= features.shape[1]:
        raise ValueError(f"a node reads feature {forest.feature.max()}, the input has {features.shape[1]}")
    return features


def _threshold_dtype(x: NDArray[Any]) -> Any:
    return np.float64 if np.asarray(x).dtype == np.float64 else np.float32


def classify(forest: Forest, features: NDArray[Any], labels: list[Any], base_values: list[float] | None,
             post_transform: str, all_positive: bool, binary_case: bool) -> tuple[NDArray[Any], NDArray[Any]]:
    """(labels, scores) of a tree ensemble classifier, with onnxruntime's conventions for base values
    and two classes."""
    sums, scored = forest.aggregate(features, "SUM", np.float32)
    return classifier_outputs(sums, scored, labels, base_values, post_transform, all_positive, binary_case)


def classifier_outputs(sums: NDArray[Any], scored: NDArray[np.bool_], labels: list[Any],
                       base_values: list[float] | None, post_transform: str, all_positive: bool,
                       binary_case: bool) -> tuple[NDArray[Any], NDArray[Any]]:
    """(labels, scores) from the per-class weight sums and whether each class was scored."""
    base = [np.float32(b) for b in (base_values or [])]
    n_classes = len(labels)
    sums, scored = sums.copy(), scored.copy()
    if n_classes > 2:
        for k, b in enumerate(base[:n_classes]):
            sums[:, k] = np.where(scored[:, k], sums[:, k] + b, b)
            scored[:, k] = True
        masked = np.where(scored, sums, -np.inf)
        best = np.argmax(masked, axis=1)
        chosen = [labels[i] for i in best]
        values = np.where(scored, sums, np.float32(0))
        out = labels_array(chosen) if chosen else labels_array(labels)[:0]
        return out, transform_columns(values, post_transform)
    if n_classes != 2:
        raise ValueError(f"a tree ensemble classifier needs at least two class labels, got {n_classes}")
    p0, p1 = sums[:, 0], sums[:, 1]
    has0, has1 = scored[:, 0], scored[:, 1]
    single = np.zeros(len(p0), dtype=bool)
    signed_default = False
    if len(base) == 2:
        p1 = np.where(has1, base[1] + p0, p1 + base[1]).astype(np.float32)
        p0 = np.where(has1, -p1, p0 + base[0]).astype(np.float32)
    elif len(base) == 1:
        p0 = (p0 + base[0]).astype(np.float32)
        single = ~has1
    elif not base:
        signed_default = True
        single = ~has1
    positive = np.where(has1, p1, np.where(has0, p0, np.float32(0)))
    if binary_case:
        threshold = np.float32(0.5) if all_positive else np.float32(0)
        winner = positive > threshold
        expansion = np.where(winner, 0, 1) if all_positive else np.where(winner, 2, 3)
        chosen = [labels[1] if w else labels[0] for w in winner]
    else:
        winner = positive > 0
        expansion = np.full(len(p0), 3 if signed_default else -1)
        strings = isinstance(labels[0], str)
        chosen = [(labels[1] if strings else 1) if w else (labels[0] if strings else 0) for w in winner]
    v0, v1 = np.where(has0, p0, np.float32(0)), np.where(has1, p1, np.float32(0))
    if len(base) == 2 and has1.size:
        v1 = np.where(has1, p1, v1)
    scores = transform_columns(np.stack([v0, v1], axis=1), post_transform) if len(v0) else np.zeros((0, 2), np.float32)
    if single.any():
        rows = np.flatnonzero(single)
        if post_transform == "PROBIT" or (expansion[rows] < 0).any():
            raise ValueError("a sample reaches no weight for the second class, and this post transform leaves its "
                             "score undefined (onnxruntime writes no value there)")
        one = v0[rows]
        complement = two_class_scores(one, post_transform, COMPLEMENT)
        signed = two_class_scores(one, post_transform, SIGNED)
        scores[rows] = np.where((expansion[rows] <= 1)[:, None], complement, signed)
    out = labels_array(chosen) if chosen else labels_array(labels)[:0]
    return out, scores


def _classifier_flags(class_ids: list[int], class_weights: list[float], n_classes: int) -> tuple[bool, bool]:
    all_positive = all(w >= 0 for w in class_weights)
    return all_positive, n_classes == 2 and len(set(int(c) for c in class_ids)) == 1


def _tree_classifier(x: NDArray[Any], *, base_values: list[float] | None, class_ids: list[int] | None,
                     class_nodeids: list[int] | None, class_treeids: list[int] | None,
                     class_weights: list[float] | None, classlabels_int64s: list[int] | None,
                     classlabels_strings: list[str] | None, nodes_falsenodeids: list[int] | None,
                     nodes_featureids: list[int] | None, nodes_hitrates: list[float] | None,
                     nodes_missing_value_tracks_true: list[int] | None, nodes_modes: list[str] | None,
                     nodes_nodeids: list[int] | None, nodes_treeids: list[int] | None,
                     nodes_truenodeids: list[int] | None, nodes_values: list[float] | None,
                     post_transform: str) -> tuple[NDArray[Any], NDArray[Any]]:
    check_transform(post_transform)
    labels = list(classlabels_strings) if classlabels_strings else list(classlabels_int64s or [])
    forest = classifier_forest(x, class_ids=class_ids, class_nodeids=class_nodeids, class_treeids=class_treeids,
                               class_weights=class_weights, n_classes=len(labels),
                               nodes_falsenodeids=nodes_falsenodeids, nodes_featureids=nodes_featureids,
                               nodes_missing_value_tracks_true=nodes_missing_value_tracks_true,
                               nodes_modes=nodes_modes, nodes_nodeids=nodes_nodeids, nodes_treeids=nodes_treeids,
                               nodes_truenodeids=nodes_truenodeids, nodes_values=nodes_values)
    all_positive, binary_case = _classifier_flags(class_ids or [], class_weights or [], len(labels))
    return classify(forest, _features(x, forest), labels, base_values, post_transform, all_positive, binary_case)


def classifier_forest(x: Any, *, class_ids: Any, class_nodeids: Any, class_treeids: Any, class_weights: Any,
                      n_classes: int, nodes_falsenodeids: Any, nodes_featureids: Any,
                      nodes_missing_value_tracks_true: Any, nodes_modes: Any, nodes_nodeids: Any,
                      nodes_treeids: Any, nodes_truenodeids: Any, nodes_values: Any) -> Forest:
    """The ``Forest`` of a TreeEnsembleClassifier's attributes."""
    return forest_from_nodes(
        nodes_treeids=nodes_treeids or [], nodes_nodeids=nodes_nodeids or [],
        nodes_featureids=nodes_featureids or [], nodes_values=nodes_values or [], nodes_modes=nodes_modes or [],
        nodes_truenodeids=nodes_truenodeids or [], nodes_falsenodeids=nodes_falsenodeids or [],
        nodes_missing_value_tracks_true=nodes_missing_value_tracks_true,
        weight_treeids=class_treeids or [], weight_nodeids=class_nodeids or [], weight_ids=class_ids or [],
        weights=class_weights or [], n_targets=n_classes, threshold_dtype=_threshold_dtype(x))


@OPS.op("TreeEnsembleClassifier", since=1, domain=ML_DOMAIN, quantized=QuantizedTreeEnsemble)
def tree_ensemble_classifier_1(x: NDArray[Any], /, *, base_values: list[float] | None = None,
                               class_ids: list[int] | None = None, class_nodeids: list[int] | None = None,
                               class_treeids: list[int] | None = None, class_weights: list[float] | None = None,
                               classlabels_int64s: list[int] | None = None,
                               classlabels_strings: list[str] | None = None,
                               nodes_falsenodeids: list[int] | None = None, nodes_featureids: list[int] | None = None,
                               nodes_hitrates: list[float] | None = None,
                               nodes_missing_value_tracks_true: list[int] | None = None,
                               nodes_modes: list[str] | None = None, nodes_nodeids: list[int] | None = None,
                               nodes_treeids: list[int] | None = None, nodes_truenodeids: list[int] | None = None,
                               nodes_values: list[float] | None = None,
                               post_transform: str = "NONE") -> tuple[NDArray[Any], NDArray[Any]]:
    """Tree ensemble classifier: (labels, scores)."""
    return _tree_classifier(
        x, base_values=base_values, class_ids=class_ids, class_nodeids=class_nodeids, class_treeids=class_treeids,
        class_weights=class_weights, classlabels_int64s=classlabels_int64s, classlabels_strings=classlabels_strings,
        nodes_falsenodeids=nodes_falsenodeids, nodes_featureids=nodes_featureids, nodes_hitrates=nodes_hitrates,
        nodes_missing_value_tracks_true=nodes_missing_value_tracks_true, nodes_modes=nodes_modes,
        nodes_nodeids=nodes_nodeids, nodes_treeids=nodes_treeids, nodes_truenodeids=nodes_truenodeids,
        nodes_values=nodes_values, post_transform=post_transform)


@OPS.op("TreeEnsembleClassifier", since=3, domain=ML_DOMAIN, quantized=QuantizedTreeEnsemble)
def tree_ensemble_classifier_3(x: NDArray[Any], /, *, base_values: list[float] | None = None,
                               base_values_as_tensor: NDArray[Any] | None = None,
                               class_ids: list[int] | None = None, class_nodeids: list[int] | None = None,
                               class_treeids: list[int] | None = None, class_weights: list[float] | None = None,
                               class_weights_as_tensor: NDArray[Any] | None = None,
                               classlabels_int64s: list[int] | None = None,
                               classlabels_strings: list[str] | None = None,
                               nodes_falsenodeids: list[int] | None = None, nodes_featureids: list[int] | None = None,
                               nodes_hitrates: list[float] | None = None,
                               nodes_hitrates_as_tensor: NDArray[Any] | None = None,
                               nodes_missing_value_tracks_true: list[int] | None = None,
                               nodes_modes: list[str] | None = None, nodes_nodeids: list[int] | None = None,
                               nodes_treeids: list[int] | None = None, nodes_truenodeids: list[int] | None = None,
                               nodes_values: list[float] | None = None,
                               nodes_values_as_tensor: NDArray[Any] | None = None,
                               post_transform: str = "NONE") -> tuple[NDArray[Any], NDArray[Any]]:
    """Tree ensemble classifier, whose thresholds, weights and base values may be given as tensors."""
    return _tree_classifier(
        x, base_values=_as_list(base_values, base_values_as_tensor, "base_values"), class_ids=class_ids,
        class_nodeids=class_nodeids, class_treeids=class_treeids,
        class_weights=_as_list(class_weights, class_weights_as_tensor, "class_weights"),
        classlabels_int64s=classlabels_int64s, classlabels_strings=classlabels_strings,
        nodes_falsenodeids=nodes_falsenodeids, nodes_featureids=nodes_featureids,
        nodes_hitrates=_as_list(nodes_hitrates, nodes_hitrates_as_tensor, "nodes_hitrates"),
        nodes_missing_value_tracks_true=nodes_missing_value_tracks_true, nodes_modes=nodes_modes,
        nodes_nodeids=nodes_nodeids, nodes_treeids=nodes_treeids, nodes_truenodeids=nodes_truenodeids,
        nodes_values=_as_list(nodes_values, nodes_values_as_tensor, "nodes_values"), post_transform=post_transform)


def finish_regression(scores: NDArray[Any], scored: NDArray[np.bool_], function: str, n_trees: int,
                      base_values: list[float] | None, post_transform: str, dtype: Any) -> NDArray[Any]:
    """The regression output from the aggregated leaf weights, as onnxruntime finishes it: the average
    divides by the number of trees, base values are added (one per target, or one for a single
    target), a single target only takes PROBIT."""
    n_targets = scores.shape[1]
    base = np.asarray(base_values or [], dtype=dtype)
    values = np.where(scored, scores, 0).astype(dtype)
    if function == "AVERAGE":
        values = (values / dtype(n_trees)).astype(dtype)
    if n_targets == 1:
        if base.size == 1:
            values = (values + base[0]).astype(dtype)
        return probit(values).astype(dtype) if post_transform == "PROBIT" else values
    if base.size == n_targets:
        values = (values + base).astype(dtype)
    return transform_columns(values, post_transform).astype(dtype)


def _tree_regressor(x: NDArray[Any], *, aggregate_function: str, base_values: list[float] | None,
                    n_targets: int | None, nodes_falsenodeids: list[int] | None, nodes_featureids: list[int] | None,
                    nodes_missing_value_tracks_true: list[int] | None, nodes_modes: list[str] | None,
                    nodes_nodeids: list[int] | None, nodes_treeids: list[int] | None,
                    nodes_truenodeids: list[int] | None, nodes_values: list[float] | None, post_transform: str,
                    target_ids: list[int] | None, target_nodeids: list[int] | None,
                    target_treeids: list[int] | None, target_weights: list[float] | None) -> NDArray[Any]:
    check_transform(post_transform)
    if aggregate_function not in AGGREGATES:
        raise ValueError(f"aggregate_function {aggregate_function!r} is not one of {list(AGGREGATES)}")
    targets = int(n_targets) if n_targets else 1
    forest = forest_from_nodes(
        nodes_treeids=nodes_treeids or [], nodes_nodeids=nodes_nodeids or [],
        nodes_featureids=nodes_featureids or [], nodes_values=nodes_values or [], nodes_modes=nodes_modes or [],
        nodes_truenodeids=nodes_truenodeids or [], nodes_falsenodeids=nodes_falsenodeids or [],
        nodes_missing_value_tracks_true=nodes_missing_value_tracks_true,
        weight_treeids=target_treeids or [], weight_nodeids=target_nodeids or [], weight_ids=target_ids or [],
        weights=target_weights or [], n_targets=targets, threshold_dtype=_threshold_dtype(x))
    scores, scored = forest.aggregate(_features(x, forest), aggregate_function, np.float32)
    return finish_regression(scores, scored, aggregate_function, forest.n_trees, base_values, post_transform,
                             np.float32)


@OPS.op("TreeEnsembleRegressor", since=1, domain=ML_DOMAIN, quantized=QuantizedTreeEnsemble)
def tree_ensemble_regressor_1(x: NDArray[Any], /, *, aggregate_function: str = "SUM",
                              base_values: list[float] | None = None, n_targets: int | None = None,
                              nodes_falsenodeids: list[int] | None = None, nodes_featureids: list[int] | None = None,
                              nodes_hitrates: list[float] | None = None,
                              nodes_missing_value_tracks_true: list[int] | None = None,
                              nodes_modes: list[str] | None = None, nodes_nodeids: list[int] | None = None,
                              nodes_treeids: list[int] | None = None, nodes_truenodeids: list[int] | None = None,
                              nodes_values: list[float] | None = None, post_transform: str = "NONE",
                              target_ids: list[int] | None = None, target_nodeids: list[int] | None = None,
                              target_treeids: list[int] | None = None,
                              target_weights: list[float] | None = None) -> NDArray[Any]:
    """Tree ensemble regressor: (samples, targets) float32."""
    return _tree_regressor(
        x, aggregate_function=aggregate_function, base_values=base_values, n_targets=n_targets,
        nodes_falsenodeids=nodes_falsenodeids, nodes_featureids=nodes_featureids,
        nodes_missing_value_tracks_true=nodes_missing_value_tracks_true, nodes_modes=nodes_modes,
        nodes_nodeids=nodes_nodeids, nodes_treeids=nodes_treeids, nodes_truenodeids=nodes_truenodeids,
        nodes_values=nodes_values, post_transform=post_transform, target_ids=target_ids,
        target_nodeids=target_nodeids, target_treeids=target_treeids, target_weights=target_weights)


@OPS.op("TreeEnsembleRegressor", since=3, domain=ML_DOMAIN, quantized=QuantizedTreeEnsemble)
def tree_ensemble_regressor_3(x: NDArray[Any], /, *, aggregate_function: str = "SUM",
                              base_values: list[float] | None = None,
                              base_values_as_tensor: NDArray[Any] | None = None, n_targets: int | None = None,
                              nodes_falsenodeids: list[int] | None = None, nodes_featureids: list[int] | None = None,
                              nodes_hitrates: list[float] | None = None,
                              nodes_hitrates_as_tensor: NDArray[Any] | None = None,
                              nodes_missing_value_tracks_true: list[int] | None = None,
                              nodes_modes: list[str] | None = None, nodes_nodeids: list[int] | None = None,
                              nodes_treeids: list[int] | None = None, nodes_truenodeids: list[int] | None = None,
                              nodes_values: list[float] | None = None,
                              nodes_values_as_tensor: NDArray[Any] | None = None, post_transform: str = "NONE",
                              target_ids: list[int] | None = None, target_nodeids: list[int] | None = None,
                              target_treeids: list[int] | None = None, target_weights: list[float] | None = None,
                              target_weights_as_tensor: NDArray[Any] | None = None) -> NDArray[Any]:
    """Tree ensemble regressor whose thresholds, weights and base values may be given as tensors."""
    _as_list(nodes_hitrates, nodes_hitrates_as_tensor, "nodes_hitrates")
    return _tree_regressor(
        x, aggregate_function=aggregate_function, base_values=_as_list(base_values, base_values_as_tensor, "base_values"),
        n_targets=n_targets, nodes_falsenodeids=nodes_falsenodeids, nodes_featureids=nodes_featureids,
        nodes_missing_value_tracks_true=nodes_missing_value_tracks_true, nodes_modes=nodes_modes,
        nodes_nodeids=nodes_nodeids, nodes_treeids=nodes_treeids, nodes_truenodeids=nodes_truenodeids,
        nodes_values=_as_list(nodes_values, nodes_values_as_tensor, "nodes_values"), post_transform=post_transform,
        target_ids=target_ids, target_nodeids=target_nodeids, target_treeids=target_treeids,
        target_weights=_as_list(target_weights, target_weights_as_tensor, "target_weights"))


def forest_v5(x: Any, *, leaf_targetids: list[int], leaf_weights: NDArray[Any], membership_values: Any,
              n_targets: int | None, nodes_falseleafs: list[int], nodes_falsenodeids: list[int],
              nodes_featureids: list[int], nodes_missing_value_tracks_true: list[int] | None,
              nodes_modes: NDArray[Any], nodes_splits: NDArray[Any], nodes_trueleafs: list[int],
              nodes_truenodeids: list[int], tree_roots: list[int]) -> Forest:
    """The ``Forest`` of TreeEnsemble (since 5) attributes: nodes by index, leaves by index."""
    count = len(nodes_featureids)
    modes = np.asarray(nodes_modes).astype(np.int64).ravel()
    splits = np.asarray(nodes_splits).ravel()
    for name, values in (("nodes_modes", modes), ("nodes_splits", splits), ("nodes_truenodeids", nodes_truenodeids),
                         ("nodes_falsenodeids", nodes_falsenodeids), ("nodes_trueleafs", nodes_trueleafs),
                         ("nodes_falseleafs", nodes_falseleafs)):
        if len(values) != count:
            raise ValueError(f"{name} has {len(values)} entries for {count} nodes")
    if ((modes < 0) | (modes > 6)).any():
        raise ValueError(f"nodes_modes holds codes outside 0..6: {sorted(set(modes.tolist()) - set(range(7)))}")
    weights = np.asarray(leaf_weights, dtype=np.float64).ravel()
    if len(leaf_targetids) != len(weights):
        raise ValueError("leaf_targetids and leaf_weights differ in length")
    targets = int(n_targets) if n_targets else (int(max(leaf_targetids)) + 1 if len(leaf_targetids) else 1)
    if len(leaf_targetids) and not 0 <= int(min(leaf_targetids)) <= int(max(leaf_targetids)) < targets:
        raise ValueError(f"leaf_targetids must lie in [0, {targets})")

    def successor(index: int, leaf: int) -> int:
        limit = len(weights) if leaf else count
        if not 0 <= index < limit:
            raise ValueError(f"a node points to {'leaf' if leaf else 'node'} {index}, outside [0, {limit})")
        return -1 - int(index) if leaf else int(index)

    members: list[frozenset[float]] = [frozenset() for _ in range(count)]
    if (modes == 6).any():
        values = np.asarray(membership_values if membership_values is not None else [], dtype=np.float64).ravel()
        groups, current = [], []
        for v in values:
            if np.isnan(v):
                groups.append(frozenset(current))
                current = []
            else:
                current.append(float(v))
        groups.append(frozenset(current))
        member_nodes = np.flatnonzero(modes == 6)
        if len(groups) < len(member_nodes):
            raise ValueError(f"membership_values holds {len(groups)} sets for {len(member_nodes)} BRANCH_MEMBER nodes")
        for node, group in zip(member_nodes, groups):
            members[node] = group
    leaf_matrix = np.zeros((len(weights), targets))
    scored = np.zeros((len(weights), targets), dtype=bool)
    leaf_matrix[np.arange(len(weights)), np.asarray(leaf_targetids, dtype=np.int64)] = weights
    scored[np.arange(len(weights)), np.asarray(leaf_targetids, dtype=np.int64)] = True
    tracks = list(nodes_missing_value_tracks_true or [])
    features = np.asarray(nodes_featureids, dtype=np.int64)
    return Forest(
        feature=features, threshold=splits.astype(_threshold_dtype(x)), mode=modes,
        true_next=np.array([successor(i, leaf) for i, leaf in zip(nodes_truenodeids, nodes_trueleafs)], dtype=np.int64),
        false_next=np.array([successor(i, leaf) for i, leaf in zip(nodes_falsenodeids, nodes_falseleafs)], dtype=np.int64),
        missing_true=np.array([bool(t) for t in tracks] if tracks else [False] * count, dtype=bool),
        roots=np.array([successor(r, 0) for r in tree_roots], dtype=np.int64),
        leaf_weights=leaf_matrix, leaf_scored=scored, members=members)


@OPS.op("TreeEnsemble", since=5, domain=ML_DOMAIN, quantized=QuantizedTreeEnsemble)
def tree_ensemble(x: NDArray[Any], /, *, aggregate_function: int = 1, leaf_targetids: list[int],
                  leaf_weights: NDArray[Any], membership_values: NDArray[Any] | None = None,
                  n_targets: int | None = None, nodes_falseleafs: list[int], nodes_falsenodeids: list[int],
                  nodes_featureids: list[int], nodes_hitrates: NDArray[Any] | None = None,
                  nodes_missing_value_tracks_true: list[int] | None = None, nodes_modes: NDArray[Any],
                  nodes_splits: NDArray[Any], nodes_trueleafs: list[int], nodes_truenodeids: list[int],
                  post_transform: int = 0, tree_roots: list[int]) -> NDArray[Any]:
    """Tree ensemble (since 5): (samples, targets) in the input's float type."""
    if aggregate_function not in range(4):
        raise ValueError(f"aggregate_function {aggregate_function} is not 0 (AVERAGE), 1 (SUM), 2 (MIN) or 3 (MAX)")
    if post_transform not in range(5):
        raise ValueError(f"post_transform {post_transform} is not one of 0..4 {list(TRANSFORM_CODES)}")
    dtype = np.asarray(x).dtype
    if dtype.kind != "f":
        raise ValueError(f"TreeEnsemble takes float inputs, got {dtype}")
    forest = forest_v5(x, leaf_targetids=leaf_targetids, leaf_weights=leaf_weights,
                       membership_values=membership_values, n_targets=n_targets, nodes_falseleafs=nodes_falseleafs,
                       nodes_falsenodeids=nodes_falsenodeids, nodes_featureids=nodes_featureids,
                       nodes_missing_value_tracks_true=nodes_missing_value_tracks_true, nodes_modes=nodes_modes,
                       nodes_splits=nodes_splits, nodes_trueleafs=nodes_trueleafs,
                       nodes_truenodeids=nodes_truenodeids, tree_roots=tree_roots)
    features = as_matrix(x, dtype)
    if len(forest.feature) and forest.feature.max() >= features.shape[1]:
        raise ValueError(f"a node reads feature {forest.feature.max()}, the input has {features.shape[1]}")
    function = AGGREGATES[aggregate_function]
    scores, scored = forest.aggregate(features, function, dtype.type)
    return finish_regression(scores, scored, function, forest.n_trees, None, TRANSFORM_CODES[post_transform],
                             dtype.type)


@dataclass
class TreeModel:
    """A tree ensemble node read for its quantized twin: its forest and how its outputs follow from the
    aggregated leaf weights (``finish(sums, scored)`` returns the node's outputs as a tuple)."""

    forest: Forest
    classifier: bool
    aggregate_function: str
    finish: Any
    transform: str


def tree_model(op_type: str, since: int, attributes: dict[str, Any], dtype: Any) -> TreeModel:
    """The ``TreeModel`` of a tree ensemble node with these attributes (defaults filled in)."""
    x = np.zeros((1, 1), dtype=dtype)
    a = dict(attributes)
    if op_type == "TreeEnsemble":
        forest = forest_v5(x, leaf_targetids=a["leaf_targetids"], leaf_weights=a["leaf_weights"],
                           membership_values=a.get("membership_values"), n_targets=a.get("n_targets"),
                           nodes_falseleafs=a["nodes_falseleafs"], nodes_falsenodeids=a["nodes_falsenodeids"],
                           nodes_featureids=a["nodes_featureids"],
                           nodes_missing_value_tracks_true=a.get("nodes_missing_value_tracks_true"),
                           nodes_modes=a["nodes_modes"], nodes_splits=a["nodes_splits"],
                           nodes_trueleafs=a["nodes_trueleafs"], nodes_truenodeids=a["nodes_truenodeids"],
                           tree_roots=a["tree_roots"])
        function, transform = AGGREGATES[a["aggregate_function"]], TRANSFORM_CODES[a["post_transform"]]
        out_type = np.dtype(dtype).type

        def finish_v5(sums: NDArray[Any], scored: NDArray[np.bool_]) -> tuple[NDArray[Any], ...]:
            return (finish_regression(sums.astype(out_type), scored, function, forest.n_trees, None, transform,
                                      out_type),)

        return TreeModel(forest, False, function, finish_v5, transform)
    tensors = since >= 3

    def pick(name: str) -> Any:
        return _as_list(a.get(name), a.get(f"{name}_as_tensor") if tensors else None, name)

    transform = check_transform(a["post_transform"])
    nodes = {k: a.get(k) for k in ("nodes_falsenodeids", "nodes_featureids", "nodes_missing_value_tracks_true",
                                   "nodes_modes", "nodes_nodeids", "nodes_treeids", "nodes_truenodeids")}
    if op_type == "TreeEnsembleClassifier":
        labels = list(a["classlabels_strings"]) if a.get("classlabels_strings") else list(a.get("classlabels_int64s") or [])
        weights = pick("class_weights") or []
        forest = classifier_forest(x, class_ids=a.get("class_ids"), class_nodeids=a.get("class_nodeids"),
                                   class_treeids=a.get("class_treeids"), class_weights=weights,
                                   n_classes=len(labels), nodes_values=pick("nodes_values"), **nodes)
        all_positive, binary_case = _classifier_flags(a.get("class_ids") or [], weights, len(labels))
        base = pick("base_values")

        def finish_classifier(sums: NDArray[Any], scored: NDArray[np.bool_]) -> tuple[NDArray[Any], ...]:
            flags = np.broadcast_to(scored, sums.shape)
            return classifier_outputs(sums.astype(np.float32), flags, labels, base, transform, all_positive,
                                      binary_case)

        return TreeModel(forest, True, "SUM", finish_classifier, transform)
    function = a["aggregate_function"]
    targets = int(a["n_targets"]) if a.get("n_targets") else 1
    forest = forest_from_nodes(
        nodes_treeids=nodes["nodes_treeids"] or [], nodes_nodeids=nodes["nodes_nodeids"] or [],
        nodes_featureids=nodes["nodes_featureids"] or [], nodes_values=pick("nodes_values") or [],
        nodes_modes=nodes["nodes_modes"] or [], nodes_truenodeids=nodes["nodes_truenodeids"] or [],
        nodes_falsenodeids=nodes["nodes_falsenodeids"] or [],
        nodes_missing_value_tracks_true=nodes["nodes_missing_value_tracks_true"],
        weight_treeids=a.get("target_treeids") or [], weight_nodeids=a.get("target_nodeids") or [],
        weight_ids=a.get("target_ids") or [], weights=pick("target_weights") or [], n_targets=targets,
        threshold_dtype=_threshold_dtype(x))
    base = pick("base_values")

    def finish_regressor(sums: NDArray[Any], scored: NDArray[np.bool_]) -> tuple[NDArray[Any], ...]:
        flags = np.broadcast_to(scored, sums.shape)
        return (finish_regression(sums.astype(np.float32), flags, function, forest.n_trees, base, transform,
                                  np.float32),)

    return TreeModel(forest, False, function, finish_regressor, transform)


def compare(values: NDArray[Any], forest: Forest, nodes: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Whether split node ``nodes[j]`` sends the value ``values[..., j]`` (of its feature) to its true side."""
    th, mode = forest.threshold[nodes], forest.mode[nodes]
    with np.errstate(invalid="ignore"):
        out = np.select([mode == 0, mode == 1, mode == 2, mode == 3, mode == 4, mode == 5],
                        [values <= th, values < th, values >= th, values > th, values == th, values != th],
                        default=False)
    for j in np.flatnonzero(mode == 6):
        out[..., j] = np.isin(values[..., j], list(forest.members[nodes[j]]))
    return out | (forest.missing_true[nodes] & np.isnan(values))
