"""Deployment: a compiled model saved for a server and its clients, whose secret keys never leave them.

``save(qmodule, folder)`` writes four files:

- ``server.zip``: the circuit, as concrete-python's server export through MLIR (it reloads on
  another machine); no key of any kind.
- ``client.zip``: concrete-python's client specs (cryptographic parameters), the input quantizers,
  the output dequantizers and the model's input/output names, dtypes and shapes, as JSON and an
  ``.npz`` read without pickle (a client can open one it downloaded).
- ``model.zip``: the ONNX model and the quantization's parameters, for ``load_quantized``
  (the model's owner keeps it; the server does not need it).
- ``manifest.json``: format, versions of cml, concrete-python and Python, the model id, the
  SHA-256 of each zip, and the model's input/output spec.

A ``Client`` quantizes and encrypts with keys it generates and keeps in its own folder (owner-only
permissions); it hands out evaluation keys, which let a ``Server`` compute but not decrypt. What
crosses between them is bytes in one framing (``pack``/``unpack``) that names the model and the key
each payload belongs to, so a payload meant for another model or key is refused, not run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import stat
import struct
import tempfile
import threading
import warnings
import weakref
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from numpy.typing import NDArray

from ..errors import CmlError, CmlWarning, DeploymentError, InputError
from ..numpy_module import TensorSpec
from .concrete_python import enable_runtime, in_owned_folder, load_concrete
from .program import CircuitProgram, IntegerSpec, Program

if TYPE_CHECKING:
    from ..quantization.module import QuantizedModule

FORMAT = 1
SERVER_ZIP, CLIENT_ZIP, MODEL_ZIP, MANIFEST = "server.zip", "client.zip", "model.zip", "manifest.json"
MAGIC = b"CMLFHE\x00\x01"
#: largest member of an artifact zip read into memory (a model's weights, a circuit's MLIR)
MAX_MEMBER_BYTES = 2**31
#: largest JSON header of a payload
MAX_HEADER_BYTES = 2**16
#: largest table the client keeps to dequantize an output that is not affine in its integers
MAX_TABLE_ENTRIES = 2**22


def versions() -> dict[str, str]:
    """Versions of cml, concrete-python and Python running here."""
    from .. import __version__

    try:
        concrete = metadata.version("concrete-python")
    except metadata.PackageNotFoundError:
        concrete = "not installed"
    return {"cml": __version__, "concrete-python": concrete, "python": platform.python_version()}


def _check_versions(saved: dict[str, str], what: str) -> None:
    here = versions()
    for name in ("cml", "concrete-python"):
        if saved.get(name) != here[name]:
            raise DeploymentError(
                f"{what} was saved by {name} {saved.get(name)!r} but {name} {here[name]!r} runs here; circuits and "
                f"keys are only compatible within one version: install {name}=={saved.get(name)} here, or compile "
                "and save the model again with this one")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- payloads: what crosses between client and server ------------------------------------------

def pack(kind: str, header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    """One payload: magic, a JSON header (``kind``, the caller's fields, the blob sizes), the blobs."""
    head = json.dumps({"kind": kind, **header, "blobs": [len(b) for b in blobs]}, sort_keys=True).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + b"".join(blobs)


def unpack(data: bytes, kind: str) -> tuple[dict[str, Any], list[bytes]]:
    """The header and blobs of a payload made by ``pack``.

    Raises:
        DeploymentError: not such a payload (corrupt, truncated, trailing bytes) or of another kind.
    """
    data = bytes(data)
    what = kind.replace("_", " ")
    if not data.startswith(MAGIC):
        raise DeploymentError(f"not a cml {what} payload (it does not start with cml's marker): corrupt, or "
                              "not made by cml_core.deploy.Client/Server")
    if len(data) < len(MAGIC) + 4:
        raise DeploymentError(f"truncated {what} payload ({len(data)} bytes)")
    (size,) = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if size > MAX_HEADER_BYTES or start + size > len(data):
        raise DeploymentError(f"corrupt or truncated {what} payload: its header claims {size} bytes")
    try:
        header = json.loads(data[start:start + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeploymentError(f"corrupt {what} payload: its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise DeploymentError(f"corrupt {what} payload: its header is not an object")
    if header.get("kind") != kind:
        raise DeploymentError(f"expected a {what} payload, got {str(header.get('kind')).replace('_', ' ')!r}")
    sizes = header.get("blobs")
    if not isinstance(sizes, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                              for n in sizes):
        raise DeploymentError(f"corrupt {what} payload: bad blob sizes in its header")
    body = start + size
    if body + sum(sizes) != len(data):
        state = "truncated" if body + sum(sizes) > len(data) else "followed by unexpected bytes"
        raise DeploymentError(f"{what} payload is {state}: its header announces {sum(sizes)} bytes of data, "
                              f"{len(data) - body} are there")
    blobs, offset = [], body
    for n in sizes:
        blobs.append(data[offset:offset + n])
        offset += n
    return header, blobs


def _field(header: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DeploymentError(f"corrupt {what} payload: its header has no valid {name!r}")
    return value


# -- artifact files -----------------------------------------------------------------------------

def _read_zip(source: str | os.PathLike[str] | bytes, what: str) -> dict[str, bytes]:
    """The members of a zip (a path or its bytes), every one a plain file under ``MAX_MEMBER_BYTES``."""
    try:
        handle = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError as exc:
        raise DeploymentError(f"{what} not found: {source!s}") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise DeploymentError(f"{what} is not a readable zip file ({exc})") from exc
    members: dict[str, bytes] = {}
    with handle:
        for info in handle.infolist():
            if info.is_dir():
                continue
            if info.file_size > MAX_MEMBER_BYTES:
                raise DeploymentError(f"{what}: member {info.filename!r} claims {info.file_size} bytes, more than "
                                      f"the {MAX_MEMBER_BYTES} accepted")
            try:
                members[info.filename] = handle.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # CRC errors, truncation
                raise DeploymentError(f"{what}: member {info.filename!r} is corrupt ({exc})") from exc
    return members


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as handle:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # same bytes for the same content
            info.compress_type = zipfile.ZIP_DEFLATED
            handle.writestr(info, data)
    return buffer.getvalue()


def _npz_bytes(arrays: dict[str, NDArray[Any]]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npz_arrays(data: bytes, what: str) -> dict[str, NDArray[Any]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DeploymentError(f"{what}: its arrays cannot be read without pickle ({exc})") from exc


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeploymentError(f"{what} is not valid JSON ({exc})") from exc


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` whole or not at all (a unique temporary file renamed), with permissions ``mode``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- the model's side: turning a QuantizedModule into artifacts and back -------------------------

@dataclass(frozen=True)
class OutputMap:
    """How a client turns an output's integers into floats: ``scale * q + offset`` per element
    (``kind="affine"``), a table from the integer ``low`` up (``kind="table"``), or a rule over whole rows
    (``kind="rows"``: a classifier's label, SOFTMAX probabilities; see ``row_maps``), which may read the
    floats of another output (``floats``: the outputs decoded before it)."""

    kind: str
    scale: NDArray[Any] | None = None
    offset: NDArray[Any] | None = None
    low: int = 0
    table: NDArray[Any] | None = None
    rule: dict[str, Any] | None = None

    def __call__(self, q: NDArray[Any], floats: list[NDArray[Any] | None] | None = None) -> NDArray[Any]:
        if self.kind == "rows":
            from .row_maps import apply_rule

            assert self.rule is not None
            return apply_rule(self.rule, np.asarray(q, dtype=np.int64), floats or [])
        q = np.asarray(q, dtype=np.int64)
        if self.kind == "affine":
            assert self.scale is not None and self.offset is not None
            return np.asarray(self.scale * q.astype(np.float64) + self.offset)
        assert self.table is not None
        index = np.clip(q - self.low, 0, len(self.table) - 1)
        if self.table.ndim == 1:
            return np.asarray(self.table[index])
        positions = np.indices(q.shape[1:])
        return np.asarray(self.table[(index, *[np.broadcast_to(p, q.shape) for p in positions])])


def _saved_map(entry: dict[str, Any], k: int, arrays: Any) -> OutputMap:
    """The ``OutputMap`` of output ``k`` as ``client.zip`` describes it (``entry``) with its ``arrays``."""
    if entry["map"] == "affine":
        return OutputMap("affine", arrays[f"output{k}_scale"], arrays[f"output{k}_offset"])
    if entry["map"] == "rows":
        rule: dict[str, Any] = {"kind": str(entry["rule"]), "source": int(entry.get("source", -1))}
        for key in ("scale", "offset", "labels"):
            if f"output{k}_{key}" in arrays:
                rule[key] = np.asarray(arrays[f"output{k}_{key}"])
        return OutputMap("rows", rule=rule)
    return OutputMap("table", low=int(entry["low"]), table=arrays[f"output{k}_table"])


def _output_map(value: Any, spec: IntegerSpec, name: str) -> OutputMap:
    """The ``OutputMap`` of an output ``value`` of the integer program (its ``to_float``)."""
    shape = (1, *spec.sample_shape)
    if value.is_affine:
        return OutputMap("affine", np.full(spec.sample_shape, value.scale), np.full(spec.sample_shape,
                                                                                   -value.scale * value.zero_point))
    to_float = value.to_float
    try:
        offset = np.asarray(to_float(np.zeros(shape, np.int64)), np.float64).reshape(spec.sample_shape)
    except (ValueError, CmlError) as exc:
        raise DeploymentError(
            f"output {name!r} is not a function of each of its integers alone: it is decoded from whole rows of "
            "scores (an ONNX-ML classifier's label, or probabilities of a SOFTMAX post transform), which the "
            "saved client cannot do yet. Save a model whose outputs are the scores (for a classifier, the "
            "Hummingbird export, whose label is an ArgMax the client runs: cml_core.fhe.models.export_hummingbird)"
        ) from exc
    scale = np.asarray(to_float(np.ones(shape, np.int64)), np.float64).reshape(spec.sample_shape) - offset
    probes = np.array([spec.low, spec.high, -7, 3, 1000, -1000], dtype=np.int64)
    probes = probes[(probes >= spec.low) & (probes <= spec.high)]
    affine = True
    for p in probes:
        got = np.asarray(to_float(np.full(shape, p, np.int64)), np.float64).reshape(spec.sample_shape)
        if not np.allclose(got, scale * p + offset, rtol=1e-9, atol=1e-12 * (1 + np.abs(got).max(initial=0))):
            affine = False
            break
    if affine:
        return OutputMap("affine", scale, offset)
    levels = spec.high - spec.low + 1
    elements = int(np.prod(spec.sample_shape))
    per_element = not value.uniform
    if levels * (elements if per_element else 1) > MAX_TABLE_ENTRIES:
        raise DeploymentError(
            f"output {name!r} is a non-linear function of {spec.bit_width}-bit integers ({levels} levels"
            f"{f' x {elements} positions' if per_element else ''}): too large a table for the client to dequantize. "
            "End the model with an op that requantizes its output (a lookup), or quantize with fewer bits")
    q = np.arange(spec.low, spec.high + 1, dtype=np.int64).reshape(-1, *([1] * len(spec.sample_shape)))
    table = np.asarray(to_float(np.broadcast_to(q, (levels, *spec.sample_shape))), np.float64)
    if not per_element:  # every position maps alike: one column is the table
        table = table.reshape(levels, -1)[:, 0] if elements else table.reshape(levels)
    return OutputMap("table", low=spec.low, table=table)


def _tail(description: Any, model_bytes: bytes | None, what: str) -> Any:
    """The ``ClientTail`` a saved model describes, or ``None`` when it has none."""
    if description is None:
        return None
    from ..quantization.client_tail import ClientTail

    if model_bytes is None:
        raise DeploymentError(f"{what} describes a client-side tail but lacks tail.onnx: save the model again")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(model_bytes)
        return ClientTail(model, list(description["reads"]), list(description["outputs"]))
    except Exception as exc:  # noqa: BLE001  (a corrupt member: name it)
        raise DeploymentError(f"{what}: its tail.onnx does not load ({exc})") from exc


def _quantizer_json(q: Any) -> dict[str, Any]:
    """A quantizer as JSON: one scale and zero point, (``per_feature``) one of each per feature, or
    (``decisions``) each feature's thresholds and the floats its integers stand for."""
    from ..quantization.quantizers import DecisionQuantizer, PerFeatureQuantizer

    if isinstance(q, DecisionQuantizer):
        return {"n_bits": q.n_bits, "decisions": True,
                "thresholds": [[float(t).hex() for t in ts] for ts in q.thresholds],
                "inclusive": [list(map(bool, inc)) for inc in q.inclusive],
                "representatives": [[float(r).hex() for r in reps] for reps in q.representatives]}
    if isinstance(q, PerFeatureQuantizer):
        return {"n_bits": q.n_bits, "per_feature": True, "scales": [float(v).hex() for v in q.scales],
                "zero_points": list(q.zero_points)}
    out = {"n_bits": q.n_bits, "scale": q.scale, "zero_point": q.zero_point, "is_signed": q.is_signed,
           "is_symmetric": q.is_symmetric}
    if q.floor is not None:
        out["floor"] = float(q.floor).hex()
    return out


def _quantizer(data: dict[str, Any]) -> Any:
    from ..quantization.quantizers import DecisionQuantizer, PerFeatureQuantizer, UniformQuantizer

    if data.get("decisions"):
        return DecisionQuantizer(int(data["n_bits"]),
                                 tuple(tuple(float.fromhex(t) for t in ts) for ts in data["thresholds"]),
                                 tuple(tuple(bool(i) for i in inc) for inc in data["inclusive"]),
                                 tuple(tuple(float.fromhex(r) for r in reps) for reps in data["representatives"]))
    if data.get("per_feature"):
        return PerFeatureQuantizer(int(data["n_bits"]), tuple(float.fromhex(v) for v in data["scales"]),
                                   tuple(int(v) for v in data["zero_points"]))
    floor = data.get("floor")
    return UniformQuantizer(int(data["n_bits"]), float(data["scale"]), int(data["zero_point"]),
                            bool(data["is_signed"]), bool(data["is_symmetric"]),
                            None if floor is None else float.fromhex(floor))


def _zero_codes(quantizer: Any, spec: IntegerSpec) -> NDArray[np.int64]:
    """One sample of a model input's zero points (per feature along its last axis), within its integers."""
    zero_point = getattr(quantizer, "zero_point_array", getattr(quantizer, "zero_point", 0))
    return np.broadcast_to(np.asarray(zero_point, np.int64), (1, *spec.sample_shape)).clip(spec.low, spec.high)


def _dtype_name(dtype: np.dtype[Any]) -> str:
    return np.dtype(dtype).str


def _row_maps(qmodule: QuantizedModule, program: Program, maps: dict[int, OutputMap],
              rowwise: list[int]) -> dict[int, OutputMap]:
    """The ``rows`` maps of the outputs ``rowwise`` (decoded from whole rows of scores), each rule found and
    checked against the output's own decoding (``row_maps.find_rule``).

    Raises:
        DeploymentError: an output follows none of the rules a saved client knows.
    """
    from .row_maps import find_rule, probe_rows

    values, names = qmodule.output_values, qmodule.numpy_module.output_names
    calibration: list[NDArray[Any]] | None = None
    if qmodule._calibration_data:
        q = [qz.quant(a[:256]) for qz, a in zip(qmodule.input_quantizers, qmodule._calibration_data)]
        out = qmodule.quantized_forward(*q)
        calibration = [np.asarray(o) for o in (out if isinstance(out, tuple) else (out,))]
    found: dict[int, OutputMap] = {}
    for i in rowwise:
        spec = program.outputs[i]
        columns = int(np.prod(spec.sample_shape)) if spec.sample_shape else 1
        own = None if calibration is None else calibration[i].reshape(-1, columns)
        rows = probe_rows(spec.low, spec.high, columns, own)
        sources = [] if calibration is None else [(j, maps[j], calibration[j]) for j in sorted(maps)]
        rule = find_rule(values[i].to_float, rows, own, sources)
        if rule is None:
            raise DeploymentError(
                f"output {names[i]!r} is decoded from whole rows of scores by a rule the saved client does not know "
                "(a softmax of the scores, the label of their argmax, or the label of another output's argmax): "
                "save a model whose outputs are the scores")
        found[i] = OutputMap("rows", rule=rule)
    return found


def _client_files(qmodule: QuantizedModule, program: Program, client_specs: bytes) -> dict[str, bytes]:
    module = qmodule.numpy_module
    arrays: dict[str, NDArray[Any]] = {}
    outputs = []
    maps: dict[int, OutputMap] = {}
    rowwise = []
    for i, (spec, value, integers) in enumerate(zip(module.outputs, qmodule.output_values, program.outputs)):
        if hasattr(value.to_float, "row_scores"):
            rowwise.append(i)
        else:
            maps[i] = _output_map(value, integers, spec.name)
    if rowwise:
        maps.update(_row_maps(qmodule, program, dict(maps), rowwise))
    for i, (spec, integers) in enumerate(zip(module.outputs, program.outputs)):
        mapping = maps[i]
        entry: dict[str, Any] = {"name": spec.name, "dtype": _dtype_name(spec.dtype), "integers": integers.as_json(),
                                 "map": mapping.kind}
        if mapping.kind == "affine":
            arrays[f"output{i}_scale"], arrays[f"output{i}_offset"] = mapping.scale, mapping.offset  # type: ignore
        elif mapping.kind == "rows":
            rule = dict(mapping.rule or {})
            entry["rule"] = rule.pop("kind")
            entry["source"] = int(rule.pop("source", -1))
            for key, array in rule.items():  # scale, offset, labels
                arrays[f"output{i}_{key}"] = np.asarray(array)
        else:
            arrays[f"output{i}_table"] = mapping.table  # type: ignore[assignment]
            entry["low"] = mapping.low
        outputs.append(entry)
    inputs = [{"name": spec.name, "dtype": _dtype_name(spec.dtype),
               "shape": None if spec.shape is None else [d if isinstance(d, int) else (d or None) for d in spec.shape],
               "quantizer": _quantizer_json(qz), "range": list(qmodule.float_ranges.get(spec.name, (None, None))),
               "integers": integers.as_json(), "clipped_by_model": spec.name in qmodule.snapped_inputs}
              for spec, qz, integers in zip(module.inputs, qmodule.input_quantizers, program.inputs)]
    description: dict[str, Any] = {"format": FORMAT, "inputs": inputs, "outputs": outputs}
    files = {"client.specs.json": client_specs, "arrays.npz": _npz_bytes(arrays)}
    tail = qmodule.client_tail
    if tail is not None:  # the clear post-processing the client runs on the decrypted outputs
        description["tail"] = {"reads": tail.reads, "outputs": tail.outputs}
        files["tail.onnx"] = tail.model.SerializeToString()
    files["cml.json"] = json.dumps(description, indent=1).encode()
    return files


def _model_id(mlir: bytes, client: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for part in (mlir, client["client.specs.json"], client["cml.json"], client.get("tail.onnx", b"")):
        digest.update(struct.pack(">Q", len(part)) + part)
    for name, array in sorted(_npz_arrays(client["arrays.npz"], "client.zip").items()):
        digest.update(name.encode() + array.dtype.str.encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()[:32]


def save(qmodule: QuantizedModule, path: str | os.PathLike[str]) -> Path:
    """Write ``server.zip``, ``client.zip``, ``model.zip`` and ``manifest.json`` of a compiled
    ``qmodule`` into the folder ``path`` (created if needed; those four files are replaced).

    Returns:
        The folder.

    Raises:
        CmlError: ``qmodule`` is not compiled.
        DeploymentError: an output the client could not dequantize, or a model too large to save.
    """
    program = qmodule.fhe_program
    if program is None:
        raise CmlError("save needs a compiled model: call qmodule.compile(calibration_x) first")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(program, LoadedProgram):
        server_zip, client_specs = program.server_zip, program.client_specs
    else:
        assert isinstance(program, CircuitProgram)
        load_concrete()
        with tempfile.TemporaryDirectory(prefix="cml-save-") as tmp:
            server = _deployable_server(program.circuit)
            server.save(Path(tmp) / SERVER_ZIP, via_mlir=True)
            server_zip = (Path(tmp) / SERVER_ZIP).read_bytes()
            client_specs = server.client_specs.serialize()
    mlir = _read_zip(server_zip, SERVER_ZIP).get("circuit.mlir", b"")
    client = _client_files(qmodule, program, client_specs)
    model_id = _model_id(mlir, client)
    client_zip = _zip_bytes({**client, "model_id": model_id.encode()})
    model_zip = _zip_bytes(_model_files(qmodule, program, model_id))
    module = qmodule.numpy_module
    manifest = {
        "format": FORMAT,
        "model_id": model_id,
        "versions": versions(),
        "files": {SERVER_ZIP: _sha256(server_zip), CLIENT_ZIP: _sha256(client_zip), MODEL_ZIP: _sha256(model_zip)},
        "inputs": [{"name": s.name, "dtype": str(s.dtype), "sample_shape": list(i.sample_shape)}
                   for s, i in zip(module.inputs, program.inputs)],
        "outputs": [{"name": s.name, "dtype": str(s.dtype), "sample_shape": list(o.sample_shape)}
                    for s, o in zip(module.outputs, program.outputs)],
    }
    for name, data in ((SERVER_ZIP, server_zip), (CLIENT_ZIP, client_zip), (MODEL_ZIP, model_zip)):
        _write_atomic(folder / name, data)
    _write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    return folder


def _deployable_server(circuit: Any) -> Any:
    """The execution server of ``circuit`` (built in a folder cml owns, see ``concrete_python``)."""
    enable_runtime(circuit, "execute")
    return circuit.server


# model.zip: the ONNX model and every parameter the quantization fixed

def _encode_state(value: Any, arrays: dict[str, NDArray[Any]], where: str) -> Any:
    from ..quantization.quantizers import UniformQuantizer

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return {"float": float(value).hex()}  # exact, and NaN/inf survive
    if isinstance(value, UniformQuantizer):
        return {"quantizer": _quantizer_json(value)}
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"array": key}
    if isinstance(value, (list, tuple)):
        items = [_encode_state(v, arrays, where) for v in value]
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode_state(v, arrays, where) for k, v in value.items()}}
    raise DeploymentError(f"{where}: a quantization parameter of type {type(value).__name__} cannot be saved; an op's "
                          "state may hold numbers, strings, arrays, quantizers, and lists, tuples and dicts of them")


def _decode_state(value: Any, arrays: dict[str, NDArray[Any]]) -> Any:
    if isinstance(value, list):
        return [_decode_state(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "float" in value:
        return float.fromhex(value["float"])
    if "quantizer" in value:
        return _quantizer(value["quantizer"])
    if "array" in value:
        return arrays[value["array"]]
    if "tuple" in value:
        return tuple(_decode_state(v, arrays) for v in value["tuple"])
    return {k: _decode_state(v, arrays) for k, v in value["dict"].items()}


def _model_files(qmodule: QuantizedModule, program: Program, model_id: str) -> dict[str, bytes]:
    module = qmodule.numpy_module
    try:
        onnx_bytes = module.onnx_model.SerializeToString()
    except ValueError as exc:  # over protobuf's 2 GiB
        raise DeploymentError(f"the model is too large to save in one piece ({exc})") from exc
    arrays: dict[str, NDArray[Any]] = {}
    states = [{"node": op.bound.name, "op_type": op.bound.node.op_type,
               "state": _encode_state(op.state, arrays, op.where)} for op in qmodule.ops]
    c = qmodule.config
    quantization = {
        "format": FORMAT,
        "model_id": model_id,
        "config": asdict(c),
        "float_ranges": {k: [float(a).hex(), float(b).hex()] for k, (a, b) in qmodule.float_ranges.items()},
        "input_quantizers": [_quantizer_json(q) for q in qmodule.input_quantizers],
        "snapped_inputs": sorted(qmodule.snapped_inputs),
        "whole_numbers": sorted(qmodule.whole_numbers),
        "floors": {k: float(v).hex() for k, v in qmodule.floors.items()},
        "index_tensors": sorted(qmodule.index_tensors),
        "sites": {k: asdict(s) for k, s in qmodule.sites.items()},
        "accumulators": {k: asdict(a) for k, a in qmodule.accumulators.items()},
        "ops": states,
        "program": {"inputs": [i.as_json() for i in program.inputs], "outputs": [o.as_json() for o in program.outputs]},
    }
    files = {"model.onnx": onnx_bytes, "state.npz": _npz_bytes(arrays)}
    if qmodule.client_tail is not None:
        quantization["tail"] = {"reads": qmodule.client_tail.reads, "outputs": qmodule.client_tail.outputs}
        files["tail.onnx"] = qmodule.client_tail.model.SerializeToString()
    files["quantization.json"] = json.dumps(quantization).encode()
    return files


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a saved model, checked: format and versions (cml, concrete-python).

    Raises:
        DeploymentError: no manifest, an unknown format, or other versions than those running.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DeploymentError(f"{folder} holds no {MANIFEST}: pass the folder qmodule.save(...) wrote")
    manifest = _json(path.read_bytes(), str(path))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DeploymentError(f"{path}: unknown format {manifest.get('format') if isinstance(manifest, dict) else None!r}"
                              f" (this cml reads format {FORMAT})")
    _check_versions(manifest.get("versions") or {}, f"the model in {folder}")
    return manifest


def _artifact(folder: Path, manifest: dict[str, Any], name: str) -> bytes:
    path = folder / name
    if not path.is_file():
        raise DeploymentError(f"{folder} has no {name}")
    data = path.read_bytes()
    if _sha256(data) != manifest.get("files", {}).get(name):
        raise DeploymentError(f"{path} does not match the hash in {MANIFEST}: the file was changed or damaged "
                              "after saving; save the model again")
    return data


def load_quantized(path: str | os.PathLike[str]) -> QuantizedModule:
    """The ``QuantizedModule`` saved in the folder ``path``, without compiling again.

    ``forward(x, fhe="disable")`` and ``fhe="simulate"`` give what the saved module gave;
    ``"execute"`` generates keys in memory. It has no calibration data: ``compile`` and
    ``set_rounding`` need ``qmodule.recalibrate(calibration_x)`` first.

    Raises:
        DeploymentError: a missing or changed file, another format, or other versions of cml or
            concrete-python than those that saved it.
    """
    from ..numpy_module import load_model
    from ..quantization.context import AccumulatorRecord, LookupSite, QuantConfig
    from ..quantization.module import QuantizedModule

    folder = Path(path)
    manifest = read_manifest(folder)
    model = _read_zip(_artifact(folder, manifest, MODEL_ZIP), MODEL_ZIP)
    client_zip = _artifact(folder, manifest, CLIENT_ZIP)
    server_zip = _artifact(folder, manifest, SERVER_ZIP)
    saved = _json(model["quantization.json"], "model.zip/quantization.json")
    module = load_model(model["model.onnx"])
    producers = {name: (b.name, b.impl.display_name) for b in module.nodes for name in b.node.output if name}
    ops = [b.impl.quantized(b) for b in module.nodes]  # type: ignore[misc]
    saved_ops = saved["ops"]
    if [(s["node"], s["op_type"]) for s in saved_ops] != [(op.bound.name, op.bound.node.op_type) for op in ops]:
        raise DeploymentError(f"{folder}: the model's nodes do not match its saved quantization (installed plugins "
                              "bind the model differently): save it again with the plugins installed here")
    arrays = _npz_arrays(model["state.npz"], "model.zip/state.npz")
    for op, entry in zip(ops, saved_ops):
        op.state.update(_decode_state(entry["state"], arrays))
    config = QuantConfig(**saved["config"])
    ranges = {k: (float.fromhex(a), float.fromhex(b)) for k, (a, b) in saved["float_ranges"].items()}
    qmodule = QuantizedModule(module, config, ranges, [_quantizer(q) for q in saved["input_quantizers"]], ops,
                              producers)
    qmodule.sites.update({k: LookupSite(**s) for k, s in saved["sites"].items()})
    qmodule.snapped_inputs.update(saved.get("snapped_inputs", []))
    qmodule.whole_numbers = frozenset(saved.get("whole_numbers", []))
    qmodule.floors = {k: float.fromhex(v) for k, v in saved.get("floors", {}).items()}
    qmodule.index_tensors = frozenset(saved.get("index_tensors", []))
    qmodule.client_tail = _tail(saved.get("tail"), model.get("tail.onnx"), "model.zip")
    qmodule.accumulators.update({k: AccumulatorRecord(**a) for k, a in saved["accumulators"].items()})
    inputs = [IntegerSpec.from_json(i) for i in saved["program"]["inputs"]]
    outputs = [IntegerSpec.from_json(o) for o in saved["program"]["outputs"]]
    zero = [_zero_codes(qz, spec) for spec, qz in zip(inputs, qmodule.input_quantizers)]
    qmodule.restore_outputs(zero)
    client = _read_zip(client_zip, CLIENT_ZIP)
    qmodule.attach_program(LoadedProgram(server_zip, client["client.specs.json"], inputs, outputs))
    return qmodule


class LoadedProgram(Program):
    """A circuit loaded from ``server.zip``: simulated by a simulation server built from its MLIR, or
    executed with keys generated in memory."""

    circuit = None

    def __init__(self, server_zip: bytes, client_specs: bytes, inputs: list[IntegerSpec],
                 outputs: list[IntegerSpec]) -> None:
        self.server_zip, self.client_specs = server_zip, client_specs
        self.inputs, self.outputs = inputs, outputs
        self._simulation: tuple[Any, Any] | None = None
        self._execution: tuple[Any, Any] | None = None

    def prepare(self, mode: str) -> None:
        fhe = load_concrete()
        if mode == "simulate" and self._simulation is None:
            import jsonpickle

            members = _read_zip(self.server_zip, SERVER_ZIP)
            with warnings.catch_warnings():  # jsonpickle's notice about its next major version
                warnings.simplefilter("ignore", DeprecationWarning)
                saved = jsonpickle.loads(members["configuration.json"].decode())
            configuration = fhe.Configuration().fork(**saved)
            server = _owned(lambda: fhe.Server.create(members["circuit.mlir"].decode(),
                                                      configuration.fork(fhe_simulation=True), is_simulated=True))
            self._simulation = (fhe.Client(server.client_specs, is_simulated=True), server)
        elif mode == "execute" and self._execution is None:
            server = _load_server(fhe, self.server_zip)
            client = fhe.Client(server.client_specs)
            client.keys.generate()
            self._execution = (client, server)

    def simulate(self, *args: Any) -> Any:
        assert self._simulation is not None
        client, server = self._simulation
        return client.simulate_decrypt(server.run(client.simulate_encrypt(*args)))

    def encrypt(self, *args: Any) -> Any:
        assert self._execution is not None
        return self._execution[0].encrypt(*args)

    def run_encrypted(self, encrypted: Any) -> Any:
        assert self._execution is not None
        client, server = self._execution
        return server.run(encrypted, evaluation_keys=client.evaluation_keys)

    def decrypt(self, result: Any) -> Any:
        assert self._execution is not None
        return self._execution[0].decrypt(result)


def _owned(build: Any) -> Any:
    """``build()`` with concrete-python's library folder in a folder removed with the result."""
    result, root = in_owned_folder(build)
    if root is not None:
        weakref.finalize(result, shutil.rmtree, root, ignore_errors=True)
    return result


def _load_server(fhe: Any, server_zip: bytes) -> Any:
    """concrete-python's server from the bytes of ``server.zip`` (its MLIR compiled here)."""
    with tempfile.TemporaryDirectory(prefix="cml-server-") as tmp:
        path = Path(tmp) / SERVER_ZIP
        path.write_bytes(server_zip)

        def build() -> Any:
            return fhe.Server.load(path)

        try:
            return _owned(build)
        except Exception as exc:
            raise DeploymentError(f"concrete-python cannot load the circuit of {SERVER_ZIP}: "
                                  f"{type(exc).__name__}: {exc}") from exc


# -- the client ---------------------------------------------------------------------------------

def default_key_folder(model_id: str) -> Path:
    """``$XDG_CACHE_HOME/cml/keys/<model id>`` (``~/.cache`` without ``XDG_CACHE_HOME``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "cml" / "keys" / model_id


class Client:
    """The side that owns the keys: quantizes and encrypts inputs, decrypts and dequantizes outputs.

    ``artifact`` is ``client.zip`` (a path or its bytes) or the folder ``save`` wrote. ``keys`` is the
    folder of this client's keys (default ``default_key_folder(model_id)``): created owner-only
    (0700), the keyset written owner-only (0600); the secret key is never in anything this class
    returns.
    """

    def __init__(self, artifact: str | os.PathLike[str] | bytes, keys: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(artifact, bytes) and Path(artifact).is_dir():
            artifact = Path(artifact) / CLIENT_ZIP
        members = _read_zip(artifact, CLIENT_ZIP)
        missing = {"client.specs.json", "cml.json", "arrays.npz", "model_id"} - set(members)
        if missing:
            raise DeploymentError(f"{CLIENT_ZIP} lacks {sorted(missing)}: not a cml client artifact")
        self.model_id = members["model_id"].decode(errors="replace")
        spec = _json(members["cml.json"], "client.zip/cml.json")
        if not isinstance(spec, dict) or spec.get("format") != FORMAT:
            raise DeploymentError(f"{CLIENT_ZIP}: unknown format (this cml reads format {FORMAT})")
        arrays = _npz_arrays(members["arrays.npz"], CLIENT_ZIP)
        try:
            self.inputs = [TensorSpec(i["name"], np.dtype(i["dtype"]), None if i["shape"] is None else tuple(i["shape"]))
                           for i in spec["inputs"]]
            self._quantizers = [_quantizer(i["quantizer"]) for i in spec["inputs"]]
            self._ranges = {i["name"]: tuple(i["range"]) for i in spec["inputs"] if None not in i["range"]}
            self.input_integers = [IntegerSpec.from_json(i["integers"]) for i in spec["inputs"]]
            self._clipped_by_model = {i["name"] for i in spec["inputs"] if i.get("clipped_by_model")}
            self.outputs = [(o["name"], np.dtype(o["dtype"])) for o in spec["outputs"]]
            self.output_integers = [IntegerSpec.from_json(o["integers"]) for o in spec["outputs"]]
            self._maps = [_saved_map(o, k, arrays) for k, o in enumerate(spec["outputs"])]
        except (KeyError, TypeError, ValueError) as exc:
            raise DeploymentError(f"{CLIENT_ZIP}: its spec is incomplete or malformed ({exc})") from exc
        self.tail = _tail(spec.get("tail"), members.get("tail.onnx"), CLIENT_ZIP)
        self._client_specs = members["client.specs.json"]
        self.key_folder = Path(keys).expanduser() if keys is not None else default_key_folder(self.model_id)
        self._client: Any = None
        self._evaluation_keys: bytes | None = None

    # keys
    @property
    def _keyset_path(self) -> Path:
        return self.key_folder / "keyset.bin"

    def _concrete_client(self) -> Any:
        if self._client is None:
            fhe = load_concrete()
            try:
                specs = fhe.ClientSpecs.deserialize(self._client_specs)
            except Exception as exc:
                raise DeploymentError(f"{CLIENT_ZIP}: concrete-python cannot read its client specs ({exc})") from exc
            self._client = fhe.Client(specs)
        return self._client

    @property
    def has_keys(self) -> bool:
        """Whether keys are loaded or stored in the key folder."""
        return self._evaluation_keys is not None or self._keyset_path.is_file()

    def generate_keys(self, force: bool = False) -> None:
        """Load this client's keys from its folder, or generate and store them there (``force``:
        generate new ones even if some are stored). Key generation takes seconds to minutes."""
        fhe = load_concrete()
        client = self._concrete_client()
        _private_folder(self.key_folder)
        owner = self.key_folder / "model_id"
        if owner.is_file() and owner.read_text().strip() != self.model_id:
            raise DeploymentError(f"the key folder {self.key_folder} holds keys of model {owner.read_text().strip()}, "
                                  f"not of this model ({self.model_id}); use another folder for this model's keys")
        if self._keyset_path.is_file() and not force:
            _private_file(self._keyset_path)
            try:
                client.keys = fhe.Keys.deserialize(self._keyset_path.read_bytes())
            except Exception as exc:
                raise DeploymentError(f"the keys in {self._keyset_path} cannot be read ({exc}); delete the folder "
                                      "to generate new ones") from exc
        else:
            client.keys.generate(force=True)
            _write_atomic(self._keyset_path, client.keys.serialize(), 0o600)
            _write_atomic(owner, self.model_id.encode(), 0o600)
        self._evaluation_keys = pack("evaluation_keys", {"model": self.model_id},
                                     [client.evaluation_keys.serialize()])

    def _ready(self) -> Any:
        if self._evaluation_keys is None:
            self.generate_keys()
        return self._concrete_client()

    def evaluation_keys(self) -> bytes:
        """The keys a server computes with (and cannot decrypt with): send them once."""
        self._ready()
        assert self._evaluation_keys is not None
        return self._evaluation_keys

    @property
    def key_id(self) -> str:
        """The id of this client's evaluation keys (what a server names them by)."""
        return key_id(self.evaluation_keys())

    # data
    def quantize(self, *x: Any) -> list[NDArray[np.int64]]:
        """The integers of float inputs, as ``QuantizedModule.quantize_input`` makes them."""
        from ..quantization.module import quantize_inputs

        return quantize_inputs(self.inputs, self._quantizers, self._ranges, x, self._clipped_by_model)

    def encrypt(self, *x: Any) -> bytes:
        """Quantize and encrypt one batch per model input; every sample is encrypted on its own."""
        from .compile import samples_of
        from .run import check_integer_inputs

        client = self._ready()
        q = check_integer_inputs([s.name for s in self.inputs], self.input_integers, self.quantize(*x))
        blobs = []
        for sample in (samples_of(q) if len(q[0]) else []):
            values = client.encrypt(*(sample if isinstance(sample, tuple) else (sample,)))
            blobs += [v.serialize() for v in (values if isinstance(values, tuple) else (values,))]
        return pack("ciphertexts", {"model": self.model_id, "key": self.key_id, "samples": len(q[0]),
                                    "per_sample": len(self.inputs)}, blobs)

    def decrypt(self, payload: bytes) -> Any:
        """The float outputs (one array per model output; a tuple when several) of a server's result."""
        fhe = load_concrete()
        client = self._ready()
        header, blobs = unpack(payload, "results")
        self._check_header(header, "results")
        samples = _field(header, "samples", int, "results")
        per = len(self.outputs)
        if _field(header, "per_sample", int, "results") != per or len(blobs) != samples * per:
            raise DeploymentError(f"results payload holds {len(blobs)} values for {samples} samples; this model has "
                                  f"{per} output(s) per sample")
        columns: list[list[NDArray[Any]]] = [[] for _ in range(per)]
        for i in range(samples):
            try:
                values = [fhe.Value.deserialize(b) for b in blobs[i * per:(i + 1) * per]]
                clear = client.decrypt(*values)
            except Exception as exc:
                raise DeploymentError(f"results payload: sample {i} cannot be decrypted with these keys ({exc})") from exc
            for k, v in enumerate(clear if isinstance(clear, tuple) else (clear,)):
                columns[k].append(np.asarray(v, dtype=np.int64).reshape(1, *self.output_integers[k].sample_shape))
        return self.dequantize(*[np.concatenate(c) if c else np.zeros((0, *s.sample_shape), np.int64)
                                 for c, s in zip(columns, self.output_integers)])

    def dequantize(self, *q: Any) -> Any:
        """Floats (in the outputs' dtypes) of the outputs' integers, as ``dequantize_output`` gives them."""
        from ..quantization.module import as_integers

        decoded: list[NDArray[Any] | None] = [None] * len(self._maps)
        # rules over rows may read another output's floats: those come first
        for k in sorted(range(len(self._maps)), key=lambda k: self._maps[k].kind == "rows"):
            decoded[k] = self._maps[k](np.asarray(q[k]), decoded)
        outs = []
        for (name, dtype), floats in zip(self.outputs, decoded):
            assert floats is not None
            if dtype.kind in "iub" and floats.dtype.kind in "iub":  # labels: already the output's values
                outs.append(floats.astype(dtype))
            else:
                outs.append(as_integers(floats, name, dtype) if dtype.kind in "iub" else floats.astype(dtype))
        if self.tail is not None:  # the clear post-processing (an ArgMax of scores, a ZipMap)
            outs = self.tail.finish(dict(zip((name for name, _ in self.outputs), outs)))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _check_header(self, header: dict[str, Any], what: str) -> None:
        model = header.get("model")
        if model != self.model_id:
            raise DeploymentError(f"this {what} payload belongs to model {model!r}, this client to {self.model_id!r}: "
                                  "use the client artifact of the server's model")
        if header.get("key") != self.key_id:
            raise DeploymentError(f"this {what} payload was computed with evaluation keys {header.get('key')!r}, not "
                                  f"this client's ({self.key_id}): it cannot be decrypted with these keys")


def key_id(evaluation_keys: bytes) -> str:
    """The id of an evaluation-keys payload: its SHA-256, so a shared key store agrees on it."""
    return _sha256(evaluation_keys)[:32]


def _private_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o700)
        warnings.warn(CmlWarning(f"the key folder {path} was readable by others (mode {mode:o}): now 0700"),
                      stacklevel=3)


def _private_file(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        warnings.warn(CmlWarning(f"the keyset {path} was readable by others (mode {mode:o}): now 0600"), stacklevel=3)


# -- the server ---------------------------------------------------------------------------------

class ServerKeys:
    """Evaluation keys a server has read (``Server.load_keys``): reusable for any number of runs."""

    def __init__(self, key_id: str, keys: Any, size: int) -> None:
        self.key_id, self.keys, self.size = key_id, keys, size


class Server:
    """The side that computes: runs the circuit of a saved model on ciphertexts with a client's
    evaluation keys. It never holds a secret key or sees a plaintext.

    ``path`` is the folder ``save`` wrote (``manifest.json`` and ``server.zip``; ``client.zip`` to
    hand to clients). ``workers`` samples run at once (default: the number of cores).

    Raises:
        DeploymentError: a missing or changed file, or other versions than those that saved it.
    """

    def __init__(self, path: str | os.PathLike[str], workers: int | None = None) -> None:
        self.folder = Path(path)
        self.manifest = read_manifest(self.folder)
        self.model_id: str = self.manifest["model_id"]
        self.workers = max(1, workers or os.cpu_count() or 1)
        fhe = load_concrete()
        self._fhe = fhe
        self._server = _load_server(fhe, _artifact(self.folder, self.manifest, SERVER_ZIP))
        self._n_inputs = len(self.manifest["inputs"])
        self._n_outputs = len(self.manifest["outputs"])
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        """One pool of ``workers`` threads for every run: concurrent requests share the cores
        (concrete-python releases the GIL while it computes)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="cml-fhe")
            return self._executor

    def client_artifact(self) -> bytes:
        """The bytes of ``client.zip``, checked against the manifest."""
        return _artifact(self.folder, self.manifest, CLIENT_ZIP)

    def load_keys(self, evaluation_keys: bytes) -> ServerKeys:
        """Read a client's evaluation-keys payload.

        Raises:
            DeploymentError: not an evaluation-keys payload, keys of another model, or keys
                concrete-python cannot read.
        """
        header, blobs = unpack(evaluation_keys, "evaluation_keys")
        if header.get("model") != self.model_id:
            raise DeploymentError(f"these evaluation keys are for model {header.get('model')!r}; this server runs "
                                  f"model {self.model_id!r}: generate keys with this model's client artifact")
        if len(blobs) != 1 or not blobs[0]:
            raise DeploymentError("corrupt evaluation keys payload: it must hold one key set")
        try:
            keys = self._fhe.EvaluationKeys.deserialize(blobs[0])
        except Exception as exc:
            raise DeploymentError(f"the evaluation keys cannot be read: corrupt or truncated ({type(exc).__name__}: "
                                  f"{exc})") from exc
        return ServerKeys(key_id(evaluation_keys), keys, len(evaluation_keys))

    def run(self, ciphertexts: bytes, evaluation_keys: bytes | ServerKeys) -> bytes:
        """The encrypted outputs (a results payload) for a ciphertexts payload, run with the keys it
        was made for; the samples run ``workers`` at a time.

        Raises:
            DeploymentError: a payload that is corrupt, truncated, of another model, made for other
                keys, or whose ciphertexts do not fit the circuit.
        """
        keys = evaluation_keys if isinstance(evaluation_keys, ServerKeys) else self.load_keys(evaluation_keys)
        header, blobs = unpack(ciphertexts, "ciphertexts")
        if header.get("model") != self.model_id:
            raise DeploymentError(f"these ciphertexts are for model {header.get('model')!r}; this server runs model "
                                  f"{self.model_id!r}: encrypt with this model's client artifact")
        if header.get("key") != keys.key_id:
            raise DeploymentError(f"these ciphertexts were encrypted for evaluation keys {header.get('key')!r}, not "
                                  f"{keys.key_id!r}: send them with the key id of the client that encrypted them")
        samples = _field(header, "samples", int, "ciphertexts")
        per = self._n_inputs
        if _field(header, "per_sample", int, "ciphertexts") != per or len(blobs) != samples * per:
            raise DeploymentError(f"ciphertexts payload holds {len(blobs)} values for {samples} samples; this model "
                                  f"takes {per} input(s) per sample")

        def one(i: int) -> list[bytes]:
            try:
                values = [self._fhe.Value.deserialize(b) for b in blobs[i * per:(i + 1) * per]]
            except Exception as exc:
                raise DeploymentError(f"sample {i}: a ciphertext cannot be read: corrupt or truncated "
                                      f"({type(exc).__name__}: {exc})") from exc
            try:
                out = self._server.run(*values, evaluation_keys=keys.keys)
            except Exception as exc:
                raise DeploymentError(f"sample {i}: the circuit refused its ciphertexts ({type(exc).__name__}: "
                                      f"{exc}); encrypt with this model's client artifact") from exc
            return [v.serialize() for v in (out if isinstance(out, tuple) else (out,))]

        if self.workers > 1 and samples > 1:
            results = list(self._pool().map(one, range(samples)))
        else:
            results = [one(i) for i in range(samples)]
        return pack("results", {"model": self.model_id, "key": keys.key_id, "samples": samples,
                                "per_sample": self._n_outputs}, [b for r in results for b in r])


def check_sample_count(payload: bytes, limit: int) -> None:
    """Refuse a ciphertexts payload of more than ``limit`` samples (before any is read)."""
    header, _ = unpack(payload, "ciphertexts")
    samples = _field(header, "samples", int, "ciphertexts")
    if samples > limit:
        raise InputError(f"{samples} samples in one request; this server takes at most {limit}")
