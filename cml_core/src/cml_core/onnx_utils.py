"""Small helpers around the onnx package: reading files, attributes and tensor types."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelLoadError

ModelSource = "str | os.PathLike[str] | bytes | onnx.ModelProto"


def read_model(source: Any) -> onnx.ModelProto:
    """Return a ModelProto from a path, serialized bytes or a ModelProto.

    Raises:
        ModelLoadError: the file is missing, unreadable, or not a valid serialized ONNX model.
    """
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        what = "the given bytes"
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        what = f"file {os.fspath(source)!r}"
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {what}: {exc.strerror or exc}") from exc
    else:
        raise ModelLoadError(
            f"load_model expects a path, bytes or onnx.ModelProto, got {type(source).__name__}"
        )
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, not part of onnx's public API
        raise ModelLoadError(
            f"{what} is not a valid ONNX model (corrupt or truncated, {len(data)} bytes): {exc}"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{what} holds no ONNX graph (empty or not an ONNX file)")
    return model


def attribute_value(attr: onnx.AttributeProto, where: str) -> Any:
    """An attribute as a Python/numpy value: strings decoded, tensors as arrays, lists as lists."""
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise ModelLoadError(f"{where}: attribute {attr.name!r} holds a subgraph, which is not supported")
    if attr.ref_attr_name:
        raise ModelLoadError(f"{where}: attribute {attr.name!r} refers to a function attribute")
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, onnx.SparseTensorProto):
        raise ModelLoadError(f"{where}: sparse tensor attribute {attr.name!r} is not supported")
    if isinstance(value, list):
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
    return value


def tensor_dtype(elem_type: int) -> np.dtype[Any]:
    """numpy dtype of an ONNX tensor element type."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def value_info_shape(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    """Declared shape: ints for fixed dims, names for symbolic ones, None for unknown; None if no shape."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)
