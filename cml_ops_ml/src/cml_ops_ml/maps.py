"""The ONNX-ML ops on maps and sequences of maps: ZipMap, CastMap and DictVectorizer.

Maps are Python dicts and sequences Python lists, as onnxruntime's Python API returns them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cml_core.quantization import ConstantOnlyOp
from numpy.typing import NDArray

from ._opset import ML_DOMAIN, OPS


@OPS.op("ZipMap", since=1, domain=ML_DOMAIN, quantized=ConstantOnlyOp)
def zip_map(x: NDArray[Any], /, *, classlabels_int64s: list[int] | None = None,
            classlabels_strings: list[str] | None = None) -> list[dict[Any, float]]:
    """One ``{label: score}`` dict per row of the (samples, classes) float scores."""
    if bool(classlabels_int64s) == bool(classlabels_strings):
        raise ValueError("exactly one of classlabels_int64s and classlabels_strings must be set")
    labels: list[Any] = list(classlabels_strings) if classlabels_strings else [int(v) for v in classlabels_int64s or []]
    scores = np.asarray(x)
    rows = scores.reshape(1, -1) if scores.ndim == 1 else scores
    if rows.ndim != 2 or rows.shape[1] != len(labels):
        raise ValueError(f"scores of shape {scores.shape} for {len(labels)} labels")
    return [dict(zip(labels, (float(v) for v in row))) for row in rows]


CASTS = ("TO_FLOAT", "TO_STRING", "TO_INT64")


@OPS.op("CastMap", since=1, domain=ML_DOMAIN, quantized=ConstantOnlyOp)
def cast_map(x: dict[int, Any], /, *, cast_to: str = "TO_FLOAT", map_form: str = "DENSE",
             max_map: int = 1) -> NDArray[Any]:
    """The map's values in the order of its int64 keys, cast: DENSE lists every value; SPARSE gives
    ``max_map`` slots, the keys' values in their slots and 0 elsewhere. Shape (1, values)."""
    if cast_to not in CASTS:
        raise ValueError(f"cast_to {cast_to!r} is not one of {list(CASTS)}")
    if map_form not in ("DENSE", "SPARSE"):
        raise ValueError(f"map_form {map_form!r} is not DENSE or SPARSE")
    items = sorted((int(k), v) for k, v in dict(x).items())
    if map_form == "SPARSE":
        if max_map <= 0:
            raise ValueError("a SPARSE map needs max_map > 0")
        slots: list[Any] = ["0" if cast_to == "TO_STRING" else 0] * max_map
        for key, value in items:
            if 0 <= key < max_map:
                slots[key] = value
        values = slots
    else:
        values = [v for _, v in items]
    if cast_to == "TO_STRING":
        out = np.empty((1, len(values)), dtype=object)
        out[0, :] = [v if isinstance(v, str) else f"{float(v):f}" for v in values]
        return out
    numbers = np.asarray([float(v) for v in values], dtype=np.float32)
    if cast_to == "TO_INT64":
        return numbers.astype(np.int64)[None, :]
    return numbers[None, :]


@OPS.op("DictVectorizer", since=1, domain=ML_DOMAIN, quantized=ConstantOnlyOp)
def dict_vectorizer(x: dict[Any, Any], /, *, int64_vocabulary: list[int] | None = None,
                    string_vocabulary: list[str] | None = None) -> NDArray[Any]:
    """The map's values at the vocabulary's positions (absent keys give 0), shape (1, vocabulary).

    A sequence of maps gives one row per map. The output has the values' dtype: numpy scalars (as a
    model's map input holds them) keep theirs; Python ints give int64, other numbers float32."""
    vocabulary: list[Any] = list(string_vocabulary) if string_vocabulary else [int(v) for v in int64_vocabulary or []]
    if not vocabulary:
        raise ValueError("DictVectorizer needs int64_vocabulary or string_vocabulary")
    maps = x if isinstance(x, list) else [x]
    values = [v for m in maps for v in dict(m).values()]
    strings = any(isinstance(v, str) for v in values)
    dtype: Any
    if strings:
        dtype = object
    elif values and all(isinstance(v, np.generic) for v in values):
        dtype = np.result_type(*{v.dtype for v in values})
    elif values and all(isinstance(v, (int, np.integer)) for v in values):
        dtype = np.int64
    else:
        dtype = np.float32
    out = np.zeros((len(maps), len(vocabulary)), dtype=dtype)
    if strings:
        out[:] = ""
    position = {k: i for i, k in enumerate(vocabulary)}
    for row, m in enumerate(maps):
        for key, value in dict(m).items():
            i = position.get(key)
            if i is not None:
                out[row, i] = value
    return out
