"""Preprocessing ops of ONNX-ML: scaling, normalizing, thresholding, selecting and encoding features."""

from __future__ import annotations

from typing import Any

import numpy as np
from cml_core.quantization import ConstantOnlyOp, ElementwiseOp, LayoutOp
from numpy.typing import NDArray

from ._opset import ML_DOMAIN, OPS
from ._scores import as_matrix
from .quantized import PerFeatureElementwiseOp
from .quantized_preprocessing import QuantizedLabelEncoder, QuantizedNormalizer, QuantizedOneHotEncoder


def _per_feature(values: list[float] | None, n_features: int, name: str, fill: float) -> NDArray[np.float32]:
    if not values:
        return np.full(n_features, fill, dtype=np.float32)
    arr = np.asarray(values, dtype=np.float32)
    if arr.size not in (1, n_features):
        raise ValueError(f"{name} has {arr.size} values; give one, or one per feature ({n_features})")
    return np.broadcast_to(arr, (n_features,))


@OPS.op("Scaler", since=1, domain=ML_DOMAIN, quantized=PerFeatureElementwiseOp)
def scaler(x: NDArray[Any], /, *, offset: list[float] | None = None, scale: list[float] | None = None) -> NDArray[Any]:
    """``(X - offset) * scale`` per feature (the last axis), as float32."""
    x = np.asarray(x)
    features = x.shape[-1] if x.ndim else 1
    off = _per_feature(offset, features, "offset", 0.0)
    sc = _per_feature(scale, features, "scale", 1.0)
    return ((x.astype(np.float32) - off) * sc).astype(np.float32)


NORMS = ("MAX", "L1", "L2")


@OPS.op("Normalizer", since=1, domain=ML_DOMAIN, quantized=QuantizedNormalizer)
def normalizer(x: NDArray[Any], /, *, norm: str = "MAX") -> NDArray[Any]:
    """Each row divided by its maximum (MAX), the sum of its absolute values (L1) or its Euclidean
    norm (L2), rows whose norm is zero left unchanged; float32."""
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is not one of {list(NORMS)}")
    arr = np.asarray(x)
    rows = as_matrix(arr)
    if norm == "MAX":
        size = rows.max(axis=1, keepdims=True)
    elif norm == "L1":
        size = np.abs(rows).sum(axis=1, keepdims=True, dtype=np.float32)
    else:
        size = np.sqrt((rows * rows).sum(axis=1, keepdims=True, dtype=np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(size != 0, rows / np.where(size != 0, size, 1), rows).astype(np.float32)
    return out.reshape(arr.shape) if arr.ndim == 1 else out


@OPS.op("Binarizer", since=1, domain=ML_DOMAIN, quantized=ElementwiseOp)
def binarizer(x: NDArray[Any], /, *, threshold: float = 0.0) -> NDArray[Any]:
    """1 where ``X > threshold``, 0 where ``X <= threshold`` (NaN stays NaN), in X's type."""
    x = np.asarray(x)
    th = np.asarray(threshold, dtype=np.float32).astype(x.dtype) if x.dtype.kind == "f" else threshold
    with np.errstate(invalid="ignore"):
        return np.where(x > th, 1, np.where(x <= th, 0, x)).astype(x.dtype)


@OPS.op("ArrayFeatureExtractor", since=1, domain=ML_DOMAIN, quantized=LayoutOp)
def array_feature_extractor(x: NDArray[Any], indices: NDArray[Any], /) -> NDArray[Any]:
    """The elements of X at ``indices`` along its last axis (a 1-D X gives one row)."""
    x = x if hasattr(x, "shape") else np.asarray(x)  # integers being compiled keep their own type
    idx = np.asarray(indices).astype(np.int64).ravel()
    if x.ndim == 0:
        raise ValueError("X must have at least one dimension")
    size = x.shape[-1]
    if idx.size == 0:
        raise ValueError("no index given")
    bad = idx[(idx < 0) | (idx >= size)]
    if bad.size:
        raise ValueError(f"index {int(bad[0])} is outside [0, {size - 1}]")
    out = x[..., idx]
    return out[None, :] if x.ndim == 1 else out


@OPS.op("FeatureVectorizer", since=1, domain=ML_DOMAIN, quantized=ConstantOnlyOp)
def feature_vectorizer(*x: NDArray[Any], inputdimensions: list[int] | None = None) -> NDArray[Any]:
    """The inputs side by side as float32 (samples, sum of ``inputdimensions``); each input is cut, or
    padded with zeros, to its declared dimension."""
    dims = list(inputdimensions or [])
    if len(dims) != len(x):
        raise ValueError(f"inputdimensions has {len(dims)} entries for {len(x)} inputs")
    first = np.asarray(x[0])
    n = first.shape[0] if first.ndim > 1 else 1
    parts = []
    for arr, dim in zip(x, dims):
        arr = np.asarray(arr)
        rows = arr.reshape(n, -1) if arr.ndim > 1 else arr.reshape(1, -1)
        if rows.shape[0] != n:
            raise ValueError(f"inputs have {rows.shape[0]} and {n} samples")
        block = np.zeros((n, dim), dtype=np.float32)
        take = min(dim, rows.shape[1])
        block[:, :take] = rows[:, :take]
        parts.append(block)
    return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)


@OPS.op("Imputer", since=1, domain=ML_DOMAIN, quantized=PerFeatureElementwiseOp)
def imputer(x: NDArray[Any], /, *, imputed_value_floats: list[float] | None = None,
            imputed_value_int64s: list[int] | None = None, replaced_value_float: float = 0.0,
            replaced_value_int64: int = 0) -> NDArray[Any]:
    """X with every value equal to the replaced value (NaN matches NaN) set to the imputed value of
    its feature (the last axis)."""
    x = np.asarray(x)
    features = x.shape[-1] if x.ndim else 1
    if x.dtype.kind == "f":
        if not imputed_value_floats:
            raise ValueError("a float input needs imputed_value_floats")
        values = np.asarray(imputed_value_floats, dtype=np.float32).astype(x.dtype)
        replaced = np.asarray(replaced_value_float, dtype=np.float32).astype(x.dtype)
        hit = np.isnan(x) if np.isnan(replaced) else x == replaced
    elif x.dtype.kind in "iu":
        if not imputed_value_int64s:
            raise ValueError("an integer input needs imputed_value_int64s")
        values = np.asarray(imputed_value_int64s, dtype=np.int64).astype(x.dtype)
        hit = x == replaced_value_int64
    else:
        raise ValueError(f"Imputer takes float or integer inputs, got {x.dtype}")
    if values.size not in (1, features):
        raise ValueError(f"{values.size} imputed values; give one, or one per feature ({features})")
    return np.where(hit, np.broadcast_to(values, (features,)), x).astype(x.dtype)


def _string_array(values: Any, shape: tuple[int, ...]) -> NDArray[Any]:
    out = np.empty(shape, dtype=object)
    out.ravel()[:] = list(values) if not isinstance(values, np.ndarray) else values.ravel().tolist()
    return out


def _is_strings(x: NDArray[Any]) -> bool:
    return x.dtype.kind in "OUS"


@OPS.op("OneHotEncoder", since=1, domain=ML_DOMAIN, quantized=QuantizedOneHotEncoder)
def one_hot_encoder(x: NDArray[Any], /, *, cats_int64s: list[int] | None = None,
                    cats_strings: list[str] | None = None, zeros: int = 1) -> NDArray[Any]:
    """One float32 indicator per category, on a new last axis; a value outside the categories gives all
    zeros, or an error when ``zeros`` is 0."""
    x = np.asarray(x)
    if _is_strings(x):
        if not cats_strings:
            raise ValueError("a string input needs cats_strings")
        cats: list[Any] = list(cats_strings)
        keys = np.vectorize(str, otypes=[object])(x) if x.size else x.astype(object)
    else:
        if not cats_int64s:
            raise ValueError("a numeric input needs cats_int64s")
        cats = [int(c) for c in cats_int64s]
        keys = x.astype(np.int64)
    position = {c: i for i, c in enumerate(cats)}
    out = np.zeros(x.shape + (len(cats),), dtype=np.float32)
    flat = out.reshape(-1, len(cats))
    for row, key in enumerate(keys.ravel().tolist()):
        i = position.get(key)
        if i is None:
            if not zeros:
                raise ValueError(f"value {key!r} is not one of the categories, and zeros is 0")
            continue
        flat[row, i] = 1.0
    return out


def _lookup(x: NDArray[Any], mapping: dict[Any, Any], default: Any, out_dtype: Any, key_kind: str) -> NDArray[Any]:
    """Map each element of ``x`` through ``mapping`` (``default`` when absent); float keys match NaN to NaN."""
    flat = x.ravel().tolist()
    nan_value = mapping.get("nan") if key_kind == "f" else None
    values = []
    for key in flat:
        if key_kind == "f" and isinstance(key, float) and np.isnan(key):
            values.append(default if nan_value is None else nan_value)
        else:
            values.append(mapping.get(key, default))
    if out_dtype is object:
        return _string_array(values, x.shape)
    return np.asarray(values, dtype=out_dtype).reshape(x.shape)


@OPS.op("LabelEncoder", since=1, domain=ML_DOMAIN, quantized=ConstantOnlyOp)
def label_encoder_1(x: NDArray[Any], /, *, classes_strings: list[str] | None = None, default_int64: int = -1,
                    default_string: str = "_Unused") -> NDArray[Any]:
    """Strings to their index in ``classes_strings``, or integers to the class string at that index."""
    x = np.asarray(x)
    classes = list(classes_strings or [])
    if _is_strings(x):
        return _lookup(x.astype(object), {c: i for i, c in enumerate(classes)}, default_int64, np.int64, "O")
    return _lookup(x.astype(np.int64), dict(enumerate(classes)), default_string, object, "i")


def _keys_values(keys: Any, values: Any, what: str) -> dict[Any, Any]:
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys and {len(values)} values")
    mapping: dict[Any, Any] = {}
    for k, v in zip(keys, values):
        if isinstance(k, float) and np.isnan(k):
            mapping["nan"] = v
        else:
            mapping[k] = v
    return mapping


def _encode(x: NDArray[Any], keys: list[Any], values: list[Any], default: Any, values_dtype: Any) -> NDArray[Any]:
    x = np.asarray(x)
    if _is_strings(x):
        source, kind = x.astype(object), "O"
        keys = [str(k) for k in keys]
    elif x.dtype.kind == "f":
        source, kind = x, "f"
        keys = [float(np.asarray(k, dtype=x.dtype)) for k in keys]
        source = source.astype(np.float64)
    else:
        source, kind = x, "i"
        keys = [int(k) for k in keys]
    mapping = _keys_values(keys, values, "keys")
    if values_dtype is object:
        return _lookup(source, mapping, default, object, kind)
    return _lookup(source, mapping, default, values_dtype, kind)


def _chosen(options: list[tuple[str, Any]]) -> tuple[str, Any]:
    given = [(name, v) for name, v in options if v is not None and len(v)]
    if len(given) != 1:
        raise ValueError(f"exactly one of {[name for name, _ in options]} must be set, got {[n for n, _ in given]}")
    return given[0]


def _values_and_default(values_floats: Any, values_int64s: Any, values_strings: Any, values_tensor: Any,
                        default_float: float, default_int64: int, default_string: str,
                        default_tensor: Any) -> tuple[list[Any], Any, Any]:
    name, values = _chosen([("values_floats", values_floats), ("values_int64s", values_int64s),
                            ("values_strings", values_strings), ("values_tensor", values_tensor)])
    if name == "values_tensor":
        arr = np.asarray(values)
        dtype: Any = object if arr.dtype.kind in "OUS" else arr.dtype
        if default_tensor is not None:
            default = np.asarray(default_tensor).ravel()[0]
        else:
            default = {"f": default_float, "i": default_int64, "u": default_int64}.get(arr.dtype.kind, default_string)
        return arr.ravel().tolist(), default, dtype
    if name == "values_floats":
        return list(values), np.float32(default_float), np.float32
    if name == "values_int64s":
        return list(values), default_int64, np.int64
    return list(values), default_string, object


@OPS.op("LabelEncoder", since=2, domain=ML_DOMAIN, quantized=QuantizedLabelEncoder)
def label_encoder_2(x: NDArray[Any], /, *, default_float: float = -0.0, default_int64: int = -1,
                    default_string: str = "_Unused", keys_floats: list[float] | None = None,
                    keys_int64s: list[int] | None = None, keys_strings: list[str] | None = None,
                    values_floats: list[float] | None = None, values_int64s: list[int] | None = None,
                    values_strings: list[str] | None = None) -> NDArray[Any]:
    """Each element mapped from its key to the value at the same position, or to the default."""
    _, keys = _chosen([("keys_floats", keys_floats), ("keys_int64s", keys_int64s), ("keys_strings", keys_strings)])
    values, default, dtype = _values_and_default(values_floats, values_int64s, values_strings, None,
                                                 default_float, default_int64, default_string, None)
    return _encode(x, list(keys), values, default, dtype)


@OPS.op("LabelEncoder", since=4, domain=ML_DOMAIN, quantized=QuantizedLabelEncoder)
def label_encoder_4(x: NDArray[Any], /, *, default_float: float = -0.0, default_int64: int = -1,
                    default_string: str = "_Unused", default_tensor: NDArray[Any] | None = None,
                    keys_floats: list[float] | None = None, keys_int64s: list[int] | None = None,
                    keys_strings: list[str] | None = None, keys_tensor: NDArray[Any] | None = None,
                    values_floats: list[float] | None = None, values_int64s: list[int] | None = None,
                    values_strings: list[str] | None = None, values_tensor: NDArray[Any] | None = None) -> NDArray[Any]:
    """LabelEncoder whose keys, values and default may also be tensors (of any key or value type)."""
    name, keys = _chosen([("keys_floats", keys_floats), ("keys_int64s", keys_int64s),
                          ("keys_strings", keys_strings), ("keys_tensor", keys_tensor)])
    key_list = np.asarray(keys).ravel().tolist() if name == "keys_tensor" else list(keys)
    values, default, dtype = _values_and_default(values_floats, values_int64s, values_strings, values_tensor,
                                                 default_float, default_int64, default_string, default_tensor)
    return _encode(x, key_list, values, default, dtype)


@OPS.op("CategoryMapper", since=1, domain=ML_DOMAIN, quantized=ConstantOnlyOp)
def category_mapper(x: NDArray[Any], /, *, cats_int64s: list[int] | None = None, cats_strings: list[str] | None = None,
                    default_int64: int = -1, default_string: str = "_Unused") -> NDArray[Any]:
    """Strings to integers or integers to strings through the pairs (``cats_strings[i]``, ``cats_int64s[i]``)."""
    x = np.asarray(x)
    strings, ints = list(cats_strings or []), [int(v) for v in (cats_int64s or [])]
    if len(strings) != len(ints):
        raise ValueError(f"cats_strings has {len(strings)} entries and cats_int64s {len(ints)}")
    if _is_strings(x):
        return _lookup(x.astype(object), dict(zip(strings, ints)), default_int64, np.int64, "O")
    return _lookup(x.astype(np.int64), dict(zip(ints, strings)), default_string, object, "i")
