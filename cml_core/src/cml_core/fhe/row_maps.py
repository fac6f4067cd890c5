"""Outputs a saved client decodes from whole rows of integers.

An ONNX-ML classifier's label is the argmax of its scores, and a SOFTMAX post transform normalizes each row:
neither is a function of each integer alone, so neither is an affine map or a table. The integer program
ends at the score accumulator, whose columns are affine (``row_scores``: per column, the score of integer
``q`` is ``scale[k] * q + offset[k]``, attached by the op to the output's mapping). At save time the rule the
output follows is found among a few and checked against the op's own decoding on integer rows (the
calibration data's and rows spread over the integers' range): a softmax of the scores, the label of the
argmax of the scores, or the label of the argmax of another output (a binary classifier's probabilities).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def softmax(scores: NDArray[Any]) -> NDArray[Any]:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def probe_rows(low: int, high: int, columns: int, calibration: NDArray[Any] | None, count: int = 256) -> NDArray[Any]:
    """Integer rows to check a rule on: the calibration rows, then rows spread over [low, high], then each
    column alone at the top and the others at the bottom (every class the argmax at least once)."""
    rng = np.random.default_rng(0)
    parts = [] if calibration is None else [np.asarray(calibration, dtype=np.int64).reshape(-1, columns)]
    parts.append(rng.integers(low, high + 1, size=(count, columns)))
    for high_first in (True, False):
        corners = np.full((columns, columns), low if high_first else high, dtype=np.int64)
        np.fill_diagonal(corners, high if high_first else low)
        parts.append(corners)
    return np.concatenate(parts)


def labels_of(decoded: NDArray[Any], chosen: NDArray[Any], classes: int) -> NDArray[Any] | None:
    """The label of each class index when ``decoded[i]`` is always the label of ``chosen[i]``; None otherwise."""
    labels: list[Any] = [None] * classes
    for label, k in zip(decoded.tolist(), chosen.tolist()):
        if labels[k] is None:
            labels[k] = label
        elif labels[k] != label:
            return None
    if any(v is None for v in labels):
        return None
    return np.asarray(labels, dtype=decoded.dtype)


def find_rule(decode: Any, rows: NDArray[Any], own: NDArray[Any] | None,
              sources: list[tuple[int, Any, NDArray[Any]]]) -> dict[str, Any] | None:
    """The rule ``decode`` (a row-decoded output's mapping) follows on the integer ``rows``, as a description
    with its arrays (``kind``: ``softmax``, ``argmax`` or ``argmax_of``), or None when none does. ``own``: the
    output's integers on the calibration data; ``sources``: (output index, its per-element mapping, its
    integers on the same data) of the outputs an argmax may read."""
    scale, offset = (np.asarray(a, dtype=np.float64) for a in decode.row_scores)
    expected = np.asarray(decode(rows))
    scores = scale * rows + offset
    if expected.shape == rows.shape and expected.dtype.kind == "f":
        # the op computes in its output's float type (float32): equal to its rounding
        if np.allclose(softmax(scores).astype(expected.dtype), expected, rtol=1e-5, atol=1e-7):
            return {"kind": "softmax", "scale": scale, "offset": offset}
        return None
    if expected.shape != rows.shape[:1]:
        return None
    labels = labels_of(expected, scores.argmax(axis=-1), rows.shape[1])
    if labels is not None:
        return {"kind": "argmax", "scale": scale, "offset": offset, "labels": labels}
    if own is None or not len(own):
        return None
    wanted = np.asarray(decode(np.asarray(own)))
    for index, mapping, integers in sources:
        floats = np.asarray(mapping(np.asarray(integers)))
        if floats.ndim != 2 or len(floats) != len(wanted):
            continue
        labels = labels_of(wanted, floats.argmax(axis=-1), floats.shape[1])
        if labels is not None:
            return {"kind": "argmax_of", "source": index, "labels": labels}
    return None


def apply_rule(rule: dict[str, Any], q: NDArray[Any], floats: list[NDArray[Any] | None]) -> NDArray[Any]:
    """The output's floats (or labels) for its integers ``q``; ``floats``: the outputs decoded so far."""
    kind = rule["kind"]
    if kind == "argmax_of":
        source = floats[int(rule["source"])]
        assert source is not None
        return np.asarray(np.asarray(rule["labels"])[np.asarray(source).argmax(axis=-1)])
    scores = rule["scale"] * np.asarray(q, dtype=np.float64) + rule["offset"]
    if kind == "softmax":
        return softmax(scores)
    return np.asarray(np.asarray(rule["labels"])[scores.argmax(axis=-1)])
