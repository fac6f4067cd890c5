"""Small helpers around the onnx package: reading files safely, tensors, attributes and tensor types.

``read_model`` is the one way a model enters cml. What it returns is self-contained: external data
is read (only from the model's own folder, see ``inline_external_data``), sparse initializers are
dense, and every text field is valid UTF-8. Later steps never touch the file system.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import helper, numpy_helper

from .errors import ModelLoadError, OutOfMemoryError

ModelSource = "str | os.PathLike[str] | bytes | onnx.ModelProto"

#: A sparse initializer is refused when its dense form would be larger (bytes).
MAX_DENSE_BYTES = 1 << 31

_PACKED_BITS = {getattr(onnx.TensorProto, name, None): bits for name, bits in (
    ("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2), ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))}
_PACKED_BITS.pop(None, None)


def read_model(source: Any, base_dir: str | os.PathLike[str] | None = None) -> onnx.ModelProto:
    """Return a self-contained ModelProto from a path, serialized bytes or a ModelProto.

    External data is read from ``base_dir``: by default the folder of the model file; a model given
    as bytes or a ModelProto has no folder, so one that keeps tensors in external files needs
    ``base_dir``. A ModelProto given here is never modified (a copy is made when needed).

    Raises:
        ModelLoadError: the file is missing, not a regular file, unreadable, or not a valid
            serialized ONNX model; a text field is not UTF-8; external data is unsafe or
            inconsistent (see ``inline_external_data``); a sparse initializer is invalid.
        OutOfMemoryError: a sparse initializer's dense form does not fit in memory.
    """
    if isinstance(source, onnx.ModelProto):
        what = "the given ModelProto"
        model = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            what = "the given bytes"
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            what = f"file {os.fspath(source)!r}"
            data = read_regular_file(os.fspath(source), what)
            if base_dir is None:
                base_dir = os.path.dirname(os.path.abspath(os.fspath(source)))
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
    check_text(model, what)
    external = [t for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external or model.graph.sparse_initializer:
        if model is source:
            model = onnx.ModelProto()
            model.CopyFrom(source)
        if external:
            if base_dir is None:
                raise ModelLoadError(
                    f"{what} keeps tensor {external[0].name!r} in the external file "
                    f"{_external_entries(external[0]).get('location', '')!r}, but a model given as bytes or a "
                    "ModelProto has no folder to read it from: pass base_dir=<the folder holding the data "
                    "files> to load_model, or load the model by its path"
                )
            inline_external_data(model, os.fspath(base_dir))
        densify_sparse_initializers(model)
    return model


def read_regular_file(path: str, what: str, offset: int = 0, length: int | None = None) -> bytes:
    """Return ``length`` bytes (all, when ``None``) of the regular file ``path`` from ``offset``.

    Devices, FIFOs, sockets and directories are refused before anything is read (a FIFO is opened
    without blocking).

    Raises:
        ModelLoadError: the file cannot be opened, is not a regular file, or is shorter than
            ``offset + length``; the message names ``what``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {what}: {exc.strerror or exc}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ModelLoadError(f"cannot read {what}: it is {_file_kind(info.st_mode)}, not a regular file")
    with os.fdopen(fd, "rb") as f:
        size = info.st_size
        if length is None:
            length = max(size - offset, 0)
        if offset > size or length > size - offset:
            raise ModelLoadError(
                f"{what} is {size} bytes long, but {length} bytes are expected at offset {offset}; "
                "the file is truncated or does not belong to this model"
            )
        f.seek(offset)
        try:
            data = f.read(length)
        except OSError as exc:
            raise ModelLoadError(f"cannot read {what}: {exc.strerror or exc}") from exc
    if len(data) != length:
        raise ModelLoadError(f"cannot read {what}: got {len(data)} of {length} bytes (changed while reading?)")
    return data


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


# -- text fields --------------------------------------------------------------------------------


def check_text(model: onnx.ModelProto, what: str) -> None:
    """Refuse a model whose text fields (names, op types, domains, ...) are not valid UTF-8.

    protobuf hands such a field back as bytes, which later breaks lookups and messages.

    Raises:
        ModelLoadError: naming the field and its bytes.
    """
    bad = _first_bad_text(model, "model")
    if bad is not None:
        path, value = bad
        raise ModelLoadError(f"{what}: text field {path} is not valid UTF-8 ({value[:60]!r}); the file is corrupt "
                             "or was written by a broken exporter: re-export the model")


def _first_bad_text(message: Any, path: str) -> tuple[str, bytes] | None:
    for field in message.DESCRIPTOR.fields:
        if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue  # raw bytes and numbers are never decoded
        if field.is_repeated:
            values = list(getattr(message, field.name))
        elif message.HasField(field.name):
            values = [getattr(message, field.name)]
        else:
            continue
        for i, value in enumerate(values):
            where = f"{path}.{field.name}" + (f"[{i}]" if field.is_repeated else "")
            if field.type == FieldDescriptor.TYPE_STRING:
                if isinstance(value, bytes):
                    return where, value
            else:
                found = _first_bad_text(value, where)
                if found is not None:
                    return found
    return None


# -- tensors ------------------------------------------------------------------------------------


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, sparse parts, attribute tensors, subgraphs, functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sparse in attr.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def tensor_dtype(elem_type: int, what: str = "a tensor") -> np.dtype[Any]:
    """numpy dtype of an ONNX tensor element type.

    Raises:
        ModelLoadError: the type is undefined (0) or unknown to the installed onnx; names ``what``.
    """
    if elem_type == onnx.TensorProto.UNDEFINED:
        raise ModelLoadError(f"{what} has no element type (UNDEFINED); re-export the model with typed tensors")
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            f"{what} has element type {elem_type}, which onnx {onnx.__version__} does not know; the file is "
            "corrupt or needs a newer onnx"
        ) from exc


def storage_bytes(data_type: int, count: int, what: str) -> int:
    """Bytes that ``count`` elements of ``data_type`` take in ``raw_data`` (sub-byte types packed).

    Raises:
        ModelLoadError: the type is unknown, or strings (which have no fixed size).
    """
    if data_type == onnx.TensorProto.STRING:
        raise ModelLoadError(f"{what} holds strings, which cannot be stored as raw or external data")
    bits = _PACKED_BITS.get(data_type) or tensor_dtype(data_type, what).itemsize * 8
    return (count * bits + 7) // 8


def _element_count(tensor: onnx.TensorProto, what: str) -> int:
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{what} has negative dimensions {dims}; the file is corrupt")
    return math.prod(dims)


def tensor_array(tensor: onnx.TensorProto, what: str | None = None) -> np.ndarray[Any, Any]:
    """A TensorProto as a numpy array, after checking that its data matches its type and dims.

    Raises:
        ModelLoadError: unknown element type, negative dims, data longer or shorter than the dims
            say, data still in an external file (load the model with ``read_model``), or any
            other inconsistency; the message names the tensor.
        OutOfMemoryError: the array does not fit in memory.
    """
    what = what or f"tensor {tensor.name!r}"
    dtype = tensor_dtype(tensor.data_type, what)
    count = _element_count(tensor, what)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ModelLoadError(
            f"{what} keeps its data in an external file; load the model with load_model(path) or pass "
            "base_dir= so that the data is read from the model's folder"
        )
    if tensor.HasField("segment"):
        raise ModelLoadError(f"{what} is a segment of a larger tensor, which is not supported")
    if tensor.HasField("raw_data"):
        want = storage_bytes(tensor.data_type, count, what)
        got = len(tensor.raw_data)
        if got != want:
            raise ModelLoadError(
                f"{what} declares dims {list(tensor.dims)} of {dtype} ({want} bytes) but holds {got} bytes of "
                "data; the file is corrupt or was edited inconsistently"
            )
    try:
        return numpy_helper.to_array(tensor)
    except MemoryError as exc:
        raise OutOfMemoryError(f"{what} ({list(tensor.dims)}, {dtype}) does not fit in memory") from exc
    except Exception as exc:  # onnx's conversion: reshape mismatches, undecodable strings, ...
        raise ModelLoadError(
            f"{what} (dims {list(tensor.dims)}, {dtype}) cannot be read: {type(exc).__name__}: {exc}"
        ) from exc


# -- external data ------------------------------------------------------------------------------


def _external_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def external_data_path(base_dir: str, location: str, what: str) -> str:
    """The real path of an external data file, which must lie inside ``base_dir``.

    Raises:
        ModelLoadError: ``location`` is empty, absolute, climbs with ``..``, or (through a
            symbolic link) resolves outside ``base_dir``.
    """
    if not location or "\0" in location:
        raise ModelLoadError(f"{what}: external data location {location!r} is not a file name")
    parts = re.split(r"[\\/]", location)
    if os.path.isabs(location) or location[:1] in "/\\" or re.match(r"^[A-Za-z]:", location):
        raise ModelLoadError(
            f"{what}: external data location {location!r} is an absolute path; a model may only read data "
            "files from its own folder. Re-save the model with relative locations"
        )
    if ".." in parts:
        raise ModelLoadError(
            f"{what}: external data location {location!r} climbs out of the model's folder with '..'; a model "
            "may only read data files from its own folder"
        )
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root:
        raise ModelLoadError(
            f"{what}: external data location {location!r} resolves to {path!r} (through a symbolic link), "
            f"outside the model's folder {root!r}; copy the data file into that folder"
        )
    return path


def inline_external_data(model: onnx.ModelProto, base_dir: str) -> None:
    """Read every tensor kept in an external file into the tensor itself (in place).

    Only files inside ``base_dir`` are read, and only regular ones; offsets and lengths are
    checked against the file and against the size the tensor's dims and type call for.

    Raises:
        ModelLoadError: naming the tensor, for a location that is unsafe (see
            ``external_data_path``), missing or not a regular file; a malformed offset or length;
            a range past the end of the file; or a length that does not match the tensor.
    """
    if not os.path.isdir(base_dir):
        raise ModelLoadError(f"base_dir {base_dir!r} for the model's external data is not a directory")
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        what = f"tensor {tensor.name!r}"
        entries = _external_entries(tensor)
        location = entries.get("location", "")
        path = external_data_path(base_dir, location, what)
        offset, length = (_external_int(entries, key, what) for key in ("offset", "length"))
        want = storage_bytes(tensor.data_type, _element_count(tensor, what), what)
        if length is not None and length != want:
            raise ModelLoadError(
                f"{what} declares dims {list(tensor.dims)} ({want} bytes) but its external data entry says "
                f"{length} bytes; the model and its data file {location!r} do not match"
            )
        data = read_regular_file(path, f"external data file {location!r} of {what} (in {base_dir})", offset or 0, want)
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def _external_int(entries: dict[str, str], key: str, what: str) -> int | None:
    text = entries.get(key)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ModelLoadError(f"{what}: external data {key} {text!r} is not a non-negative integer")
    return value


# -- sparse initializers ------------------------------------------------------------------------


def densify_sparse_initializers(model: onnx.ModelProto) -> None:
    """Replace each sparse initializer by the equivalent dense one (in place).

    Raises:
        ModelLoadError: naming the tensor, when values or indices do not match the declared dims.
        OutOfMemoryError: the dense tensor would be larger than ``MAX_DENSE_BYTES`` or memory.
    """
    graph = model.graph
    dense = [sparse_to_dense(sparse) for sparse in graph.sparse_initializer]
    del graph.sparse_initializer[:]
    graph.initializer.extend(dense)


def sparse_to_dense(sparse: onnx.SparseTensorProto) -> onnx.TensorProto:
    """The dense TensorProto equivalent to a sparse one (same name).

    Raises:
        ModelLoadError: values not 1-D, indices not int64 of shape (NNZ,) or (NNZ, rank), an index
            out of range, or negative dims.
        OutOfMemoryError: the dense tensor would be larger than ``MAX_DENSE_BYTES`` or memory.
    """
    name = sparse.values.name
    what = f"sparse initializer {name!r}"
    dims = [int(d) for d in sparse.dims]
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{what} has negative dimensions {dims}")
    values = tensor_array(sparse.values, f"values of {what}")
    indices = tensor_array(sparse.indices, f"indices of {what}")
    if values.ndim != 1:
        raise ModelLoadError(f"{what}: values must be 1-D, got shape {values.shape}")
    if indices.dtype != np.int64 or indices.shape not in ((len(values),), (len(values), len(dims))):
        raise ModelLoadError(
            f"{what}: indices must be int64 of shape ({len(values)},) or ({len(values)}, {len(dims)}), "
            f"got {indices.dtype} {indices.shape}"
        )
    size = math.prod(dims)
    if size * values.dtype.itemsize > MAX_DENSE_BYTES:
        raise OutOfMemoryError(f"{what}: the dense form {dims} of {values.dtype} is larger than "
                               f"{MAX_DENSE_BYTES >> 20} MiB; cml keeps initializers dense")
    if indices.ndim == 2:
        if indices.size and ((indices < 0).any() or (indices >= np.array(dims)).any()):
            raise ModelLoadError(f"{what}: an index lies outside the dims {dims}")
        flat = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else indices.reshape(-1)
    else:
        flat = indices
        if flat.size and (flat.min() < 0 or flat.max() >= size):
            raise ModelLoadError(f"{what}: an index lies outside the {size} elements of dims {dims}")
    try:
        array = np.zeros(size, dtype=values.dtype)
        array[flat] = values
        return numpy_helper.from_array(array.reshape(dims), name)
    except MemoryError as exc:
        raise OutOfMemoryError(f"{what}: the dense form {dims} of {values.dtype} does not fit in memory") from exc


# -- attributes and value infos -----------------------------------------------------------------


def attribute_value(attr: onnx.AttributeProto, where: str) -> Any:
    """An attribute as a Python/numpy value: strings decoded, tensors as arrays, lists as lists.

    A subgraph attribute (GRAPH) is returned as its ``GraphProto`` (the interpreter binds it), a
    type attribute as its ``TypeProto``.

    Raises:
        ModelLoadError: a list of subgraphs, a sparse tensor or function-reference attribute; an
            unknown attribute type; a string that is not UTF-8; an invalid tensor. The message
            starts with ``where`` and names the attribute.
    """
    if attr.type == onnx.AttributeProto.GRAPHS:
        raise ModelLoadError(f"{where}: attribute {attr.name!r} holds a list of subgraphs, which is not supported")
    if attr.type == onnx.AttributeProto.GRAPH:
        return attr.g
    if attr.ref_attr_name:
        raise ModelLoadError(f"{where}: attribute {attr.name!r} refers to a function attribute")
    try:
        value = helper.get_attribute_value(attr)
    except Exception as exc:  # onnx raises ValueError (and others) for an unknown attribute type
        raise ModelLoadError(f"{where}: attribute {attr.name!r} has an unusable type {attr.type}: {exc}") from exc
    try:
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, list):
            if any(isinstance(v, onnx.TensorProto) for v in value):
                return [tensor_array(v, f"{where}: tensor in attribute {attr.name!r}") for v in value]
            if any(isinstance(v, onnx.SparseTensorProto) for v in value):
                raise ModelLoadError(f"{where}: sparse tensor attribute {attr.name!r} is not supported")
            return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{where}: attribute {attr.name!r} holds text that is not UTF-8 ({exc.object[:40]!r}); "
                             "the file is corrupt: re-export the model") from exc
    if isinstance(value, onnx.TensorProto):
        return tensor_array(value, f"{where}: tensor attribute {attr.name!r}")
    if isinstance(value, onnx.SparseTensorProto):
        raise ModelLoadError(f"{where}: sparse tensor attribute {attr.name!r} is not supported")
    return value  # numbers, and TypeProto values (Optional's ``type``) as they are


def value_info_dtype(vi: onnx.ValueInfoProto, what: str) -> np.dtype[Any]:
    """numpy dtype of a graph input or output, which must be a dense tensor.

    Raises:
        ModelLoadError: naming ``what``, for a sequence, optional, map or sparse tensor, or an
            undefined or unknown element type.
    """
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type":
        described = {"sequence_type": "a sequence", "optional_type": "an optional", "map_type": "a map",
                     "sparse_tensor_type": "a sparse tensor", None: "untyped"}.get(kind, kind)
        raise ModelLoadError(f"{what} is {described}; cml runs models whose inputs and outputs are dense tensors")
    return tensor_dtype(vi.type.tensor_type.elem_type, what)


def value_info_type(vi: onnx.ValueInfoProto, what: str) -> tuple[tuple[str, ...], np.dtype[Any],
                                                                  tuple[int | str | None, ...] | None]:
    """What a graph input or output holds: its containers, outermost first (``"sequence"``,
    ``"optional"``, ``"map"``; none for a plain tensor), and the element tensors' dtype and declared
    shape (a map's values'; ``value_info_map_key`` gives its keys' dtype).

    Raises:
        ModelLoadError: naming ``what``, for a sparse tensor, an untyped value, a map whose keys are
            not integers or strings or whose values are not tensors, or an undefined or unknown
            element type.
    """
    containers: list[str] = []
    type_proto = vi.type
    while True:
        kind = type_proto.WhichOneof("value")
        if kind == "sequence_type":
            containers.append("sequence")
            type_proto = type_proto.sequence_type.elem_type
        elif kind == "optional_type":
            containers.append("optional")
            type_proto = type_proto.optional_type.elem_type
        elif kind == "map_type":
            _map_key_dtype(type_proto.map_type, what)
            containers.append("map")
            type_proto = type_proto.map_type.value_type
            if type_proto.WhichOneof("value") != "tensor_type":
                raise ModelLoadError(f"{what} is a map whose values are not tensors; cml runs maps from integer or "
                                     "string keys to tensor values")
        elif kind == "tensor_type":
            tensor = type_proto.tensor_type
            return tuple(containers), tensor_dtype(tensor.elem_type, what), _tensor_shape(tensor)
        else:
            described = {"sparse_tensor_type": "a sparse tensor", None: "untyped"}.get(kind, kind)
            inside = f" (inside {' of '.join(containers)})" if containers else ""
            raise ModelLoadError(f"{what} is {described}{inside}; cml runs models whose inputs and outputs are "
                                 "tensors, sequences, optional values or maps")


def value_info_map_key(vi: onnx.ValueInfoProto, what: str) -> np.dtype[Any] | None:
    """dtype of the keys of the map a graph input or output is or holds (inside sequences or
    optionals); ``None`` when it holds no map.

    Raises:
        ModelLoadError: naming ``what``, for keys that are neither integers nor strings.
    """
    type_proto = vi.type
    while True:
        kind = type_proto.WhichOneof("value")
        if kind == "sequence_type":
            type_proto = type_proto.sequence_type.elem_type
        elif kind == "optional_type":
            type_proto = type_proto.optional_type.elem_type
        elif kind == "map_type":
            return _map_key_dtype(type_proto.map_type, what)
        else:
            return None


def _map_key_dtype(map_type: onnx.TypeProto.Map, what: str) -> np.dtype[Any]:
    key = tensor_dtype(map_type.key_type, f"the keys of {what}")
    if key.kind not in "iuO":
        raise ModelLoadError(f"{what} is a map with {key} keys; ONNX map keys are integers or strings")
    return key


def value_info_shape(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    """Declared shape: ints for fixed dims, names for symbolic ones, None for unknown; None if no shape."""
    return _tensor_shape(vi.type.tensor_type)


def _tensor_shape(t: onnx.TypeProto.Tensor) -> tuple[int | str | None, ...] | None:
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
