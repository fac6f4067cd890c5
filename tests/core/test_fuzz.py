"""Mutation fuzzing of model files: whatever the bytes, only cml's own errors come out.

A few small models are mutated, (a) as bytes and (b) field by field in the protobuf (dims, data
types, raw data, attributes, names, opsets, external-data entries, invalid UTF-8), then loaded,
called on an input of the declared shape, quantized and inspected with ``cml inspect``. Only
``CmlError`` subclasses may escape, and ``cml inspect`` must answer with an exit code.

The run is bounded and deterministic (fixed seeds). ``CML_FUZZ_ITERATIONS`` sets the number of
mutants per (model, mutation kind), 400 by default; a larger value is for hunting locally.
Memory is capped while mutants run, so a mutant asking for a huge tensor meets a ``MemoryError``
instead of the machine's limit.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import traceback
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
from cml_core.cli import main as cli
from onnx import helper, numpy_helper

from cml_core import CmlError, load_model

ITERATIONS = int(os.environ.get("CML_FUZZ_ITERATIONS", "400"))
#: memory a mutant may take beyond what the process already maps
MEMORY_HEADROOM = 3 << 30
#: inputs larger than this (elements) are not built: the test would be the one asking for the memory
MAX_INPUT_ELEMENTS = 1 << 20
F = onnx.TensorProto.FLOAT


# -- the models ---------------------------------------------------------------------------------


def _init(rng, name, shape, scale=0.5):
    return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)


def _mlp():
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1, alpha=1.0)]
    inits = [_init(rng, "w1", (16, 8)), _init(rng, "b1", (16,)), _init(rng, "w2", (3, 16)), _init(rng, "b2", (3,))]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", F, ["n", 8])],
                              [helper.make_tensor_value_info("y", F, ["n", 3])], inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 14)])


def _cnn():
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "k", "kb"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1],
                              dilations=[1, 1], kernel_shape=[3, 3], group=1),
             helper.make_node("Relu", ["c"], ["r"], name="act"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1)]
    inits = [_init(rng, "k", (4, 1, 3, 3)), _init(rng, "kb", (4,)), _init(rng, "w", (3, 64)), _init(rng, "b", (3,))]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", F, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", F, ["n", 3])], inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 14)])


def _reshape_concat():
    """Reshape by a constant, Concat with a sparse constant, Transpose, MatMul and Add."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
             helper.make_node("Concat", ["r", "extra"], ["c"], name="concat", axis=1),
             helper.make_node("Transpose", ["c"], ["t"], name="transpose", perm=[0, 2, 1]),
             helper.make_node("Flatten", ["t"], ["f"], name="flat", axis=1),
             helper.make_node("MatMul", ["f", "w"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    inits = [numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "shape"), _init(rng, "w", (9, 4)),
             _init(rng, "b", (4,))]
    graph = helper.make_graph(nodes, "reshape_concat", [helper.make_tensor_value_info("x", F, [2, 6])],
                              [helper.make_tensor_value_info("y", F, [2, 4])], inits)
    extra = np.zeros((2, 1, 3), np.float32)
    extra[0, 0, 1], extra[1, 0, 2] = 0.5, -1.5
    graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([0.5, -1.5], np.float32), "extra"),
        numpy_helper.from_array(np.array([1, 5], np.int64), ""), [2, 1, 3]))
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 14)])


MODELS = {"mlp": _mlp, "cnn": _cnn, "reshape_concat": _reshape_concat}
#: families whose quantize path is checked too (see the module docstring of the report for the others)
QUANTIZE_CHECKED = {"mlp", "cnn", "reshape_concat"}


def _with_external_data(model, folder):
    """The model with its dense initializers in ``weights.bin`` in ``folder`` (written there)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    offset, blob = 0, b""
    for tensor in model.graph.initializer:
        data = numpy_helper.to_array(tensor).tobytes()
        tensor.ClearField("raw_data")
        for key, value in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(len(data)))):
            tensor.external_data.add(key=key, value=value)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        blob += data
        offset += len(data)
    (folder / "weights.bin").write_bytes(blob)
    return model


# -- mutations ----------------------------------------------------------------------------------

INTS = [-(2**63), -(2**31), -9, -2, -1, 0, 1, 2, 3, 7, 64, 2**31 - 1, 2**40]
SMALL = [-1, 0, 1, 2, 3, 4]
TYPES = list(range(0, 27)) + [115]
OPS = ["Relu", "Conv", "Gemm", "Flatten", "Reshape", "Concat", "MaxPool", "Softmax", "Transpose", "Add", "Identity",
       "Squeeze", "Wobble"]


def _pick_tensor(r, model):
    tensors = list(model.graph.initializer)
    for sparse in model.graph.sparse_initializer:
        tensors += [sparse.values, sparse.indices]
    return r.choice(tensors) if tensors else None


def _mutate_dims(r, model):
    t = _pick_tensor(r, model)
    if t is None:
        return "no tensor"
    if t.dims and r.random() < 0.8:
        i = r.randrange(len(t.dims))
        t.dims[i] = r.choice(INTS[1:-1] + [t.dims[i] + 1, t.dims[i] - 1])
    else:
        t.dims.append(r.choice([1, 2, 0]))
    return f"dims of {t.name!r} -> {list(t.dims)}"


def _mutate_data_type(r, model):
    t = _pick_tensor(r, model)
    if t is None:
        return "no tensor"
    t.data_type = r.choice(TYPES)
    return f"data_type of {t.name!r} -> {t.data_type}"


def _mutate_raw_data(r, model):
    t = _pick_tensor(r, model)
    if t is None or not t.HasField("raw_data"):
        return "no raw data"
    n = r.choice([1, 2, 3, 4, 8, 100])
    t.raw_data = t.raw_data[:-n] if r.random() < 0.5 else t.raw_data + bytes(n)
    return f"raw_data of {t.name!r} -> {len(t.raw_data)} bytes"


def _mutate_attribute(r, model):
    node = r.choice(list(model.graph.node))
    if not node.attribute or r.random() < 0.15:
        name = r.choice(["axis", "perm", "alpha", "kernel_shape", "pads", "strides", "bogus"])
        node.attribute.append(helper.make_attribute(name, r.choice([3, -9, [1, 2], 0.5, "SAME_UPPER"])))
        return f"{node.name}: attribute {name} added"
    attr = r.choice(list(node.attribute))
    choice = r.randrange(7)
    plausible = r.random() < 0.5  # a small value of the right type gets past the checker more often
    if choice == 0:
        attr.i = r.choice(SMALL if plausible else INTS)
    elif choice == 1 and attr.ints:
        attr.ints[r.randrange(len(attr.ints))] = r.choice(SMALL if plausible else INTS)
    elif choice == 2:
        attr.ints.append(r.choice(INTS))
    elif choice == 3:
        attr.f = r.choice([0.0, -1.0, float("nan"), float("inf"), 1e30])
    elif choice == 4:
        attr.s = r.choice([b"\xff\xfe", b"", b"SAME_LOWER", b"VALID", b"x" * 50])
    elif choice == 5:
        attr.type = r.choice(range(0, 15))
    else:
        node.attribute.remove(attr)
        return f"{node.name}: attribute {attr.name} removed"
    return f"{node.name}: attribute {attr.name} mutated ({choice})"


def _mutate_names(r, model):
    node = r.choice(list(model.graph.node))
    names = [n for nd in model.graph.node for n in list(nd.input) + list(nd.output)]
    names += [i.name for i in model.graph.initializer] + ["", "nowhere"]
    if node.input and r.random() < 0.6:
        i = r.randrange(len(node.input))
        node.input[i] = r.choice(names)
        return f"{node.name}: input {i} -> {node.input[i]!r}"
    if r.random() < 0.5:
        node.input.append(r.choice(names))
        return f"{node.name}: extra input"
    node.output[0] = r.choice(names)
    return f"{node.name}: output -> {node.output[0]!r}"


def _mutate_op(r, model):
    node = r.choice(list(model.graph.node))
    node.op_type = r.choice(OPS)
    if r.random() < 0.2:
        node.domain = r.choice(["com.acme", "ai.onnx", "ai.onnx.ml"])
    return f"{node.name}: op -> {node.domain}::{node.op_type}"


def _mutate_opset(r, model):
    if r.random() < 0.8:
        model.opset_import[0].version = r.choice([1, 6, 7, 9, 11, 12, 13, 14, 17, 18, 21, 22, 23, 26, 1000, -1])
        return f"opset -> {model.opset_import[0].version}"
    model.ir_version = r.choice([0, 1, 3, 7, 10, 11, 12, 13, 99])
    return f"ir_version -> {model.ir_version}"


def _mutate_graph_io(r, model):
    vi = r.choice(list(model.graph.input) + list(model.graph.output))
    choice = r.randrange(5)
    if choice == 0:
        vi.type.tensor_type.elem_type = r.choice(TYPES)
    elif choice == 1 and vi.type.tensor_type.shape.dim:
        dim = r.choice(list(vi.type.tensor_type.shape.dim))
        if r.random() < 0.5:
            dim.dim_value = r.choice(INTS[2:-1])
        else:
            dim.dim_param = r.choice(["n", "m", "N", ""])
    elif choice == 2:
        vi.type.tensor_type.shape.dim.add().dim_value = r.choice([1, 2, 3])
    elif choice == 3:
        vi.type.CopyFrom(helper.make_sequence_type_proto(helper.make_tensor_type_proto(F, [2])))
    else:
        vi.name = r.choice(["y", "x", "r", "zz"])
    return f"graph io {vi.name!r} mutated ({choice})"


def _mutate_external(r, model):
    tensors = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not tensors:
        return "no external data"
    t = r.choice(tensors)
    entry = r.choice(list(t.external_data))
    values = {"location": ["../weights.bin", "/etc/passwd", "", "weights.bin", "missing.bin", "sub/../weights.bin",
                           "/dev/zero", "."],
              "offset": ["0", "-1", "abc", "4", str(2**40), ""],
              "length": ["0", "-4", "x", "4", str(2**40), "12"]}.get(entry.key, ["0"])
    entry.value = r.choice(values)
    if r.random() < 0.1:
        t.data_location = onnx.TensorProto.DEFAULT
    return f"external data {entry.key} of {t.name!r} -> {entry.value!r}"


def _mutate_sparse(r, model):
    if not model.graph.sparse_initializer:
        return "no sparse initializer"
    sparse = model.graph.sparse_initializer[0]
    choice = r.randrange(3)
    if choice == 0 and sparse.dims:
        sparse.dims[r.randrange(len(sparse.dims))] = r.choice(INTS[2:-1])
    elif choice == 1:
        indices = np.array([1, 5], np.int64)
        indices[r.randrange(2)] = r.choice(INTS[1:-1])
        sparse.indices.CopyFrom(numpy_helper.from_array(indices, ""))
    else:
        sparse.indices.CopyFrom(numpy_helper.from_array(np.array([[0, 0, 1], [1, 0, 2]], np.int64), ""))
    return f"sparse initializer mutated ({choice})"


def _mutate_values(r, model):
    """Change numbers inside a constant (a Reshape target, a weight): NaN, infinity, huge, zero, negative."""
    t = _pick_tensor(r, model)
    if t is None or t.data_location == onnx.TensorProto.EXTERNAL:
        return "no tensor held in the model"
    try:
        array = numpy_helper.to_array(t).copy()
    except Exception:  # an earlier mutation broke it; the loader will say so
        return "unreadable tensor"
    if not array.size or array.dtype.kind not in "fi":
        return "no values"
    pool = [0, -1, 1, 2, 7, 2**31] if array.dtype.kind == "i" else [0.0, -1.0, float("nan"), float("inf"), 1e38, 1e-40]
    for _ in range(r.choice([1, 1, 3])):
        array.flat[r.randrange(array.size)] = r.choice(pool)
    t.CopyFrom(numpy_helper.from_array(array, t.name))
    return f"values of {t.name!r} -> {array.reshape(-1)[:6].tolist()}"


def _mutate_value_info(r, model):
    """Declare a type or shape for an intermediate tensor, right or wrong (shape inference merges these)."""
    names = [n for node in model.graph.node for n in node.output if n]
    name = r.choice(names)
    elem = r.choice([F, F, onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE, 0])
    shape = r.choice([None, [], ["n"], ["n", 3], [2, 3], [-1, 5], ["a", "b", "c", "d"], [2**40]])
    if r.random() < 0.15:
        model.graph.value_info.append(helper.make_tensor_sequence_value_info(name, F, shape))
    else:
        model.graph.value_info.append(helper.make_tensor_value_info(name, elem, shape))
    return f"value_info {name!r}: {elem} {shape}"


def _mutate_structure(r, model):
    nodes = model.graph.node
    if r.random() < 0.5 and len(nodes) > 1:
        i = r.randrange(len(nodes))
        del nodes[i]
        return f"node {i} removed"
    i = r.randrange(len(nodes))
    nodes.insert(r.randrange(len(nodes) + 1), onnx.NodeProto.FromString(nodes[i].SerializeToString()))
    return f"node {i} duplicated"


PROTO_MUTATIONS = [_mutate_dims, _mutate_data_type, _mutate_raw_data, _mutate_attribute, _mutate_names, _mutate_op,
                   _mutate_opset, _mutate_graph_io, _mutate_external, _mutate_sparse, _mutate_values, _mutate_value_info,
                   _mutate_structure]


def _bad_utf8(r, data, model):
    """Replace one name's last byte by 0xff in the serialized model (same length: the framing stays valid)."""
    names = sorted({n.encode() for nd in model.graph.node for n in [nd.name, *nd.input, *nd.output] if n})
    name = r.choice(names)
    at = data.find(name)
    return data if at < 0 else data[: at + len(name) - 1] + b"\xff" + data[at + len(name):]


def _mutate_bytes(r, data):
    data = bytearray(data)
    for _ in range(r.choice([1, 1, 2, 4, 8])):
        kind = r.randrange(5)
        at = r.randrange(len(data)) if data else 0
        if kind == 0 and data:
            data[at] = r.randrange(256)
        elif kind == 1 and data:
            data[at] ^= 1 << r.randrange(8)
        elif kind == 2:
            data[at:at] = bytes(r.randrange(256) for _ in range(r.randrange(1, 8)))
        elif kind == 3:
            del data[at : at + r.randrange(1, 16)]
        else:
            data = data[: r.randrange(len(data) + 1)]
    return bytes(data)


def mutants(family, kind, count, folder):
    """``count`` (description, serialized model) pairs; ``folder`` holds the family's external data file."""
    r = random.Random(f"{family}-{kind}")
    base = MODELS[family]()
    external = _with_external_data(base, folder)
    for i in range(count):
        model = onnx.ModelProto.FromString((external if i % 4 == 3 else base).SerializeToString())
        if kind == "bytes":
            yield f"#{i} bytes", _mutate_bytes(r, model.SerializeToString())
            continue
        steps = [r.choice(PROTO_MUTATIONS)(r, model) for _ in range(r.choice([1, 1, 2, 3]))]
        data = model.SerializeToString()
        if r.random() < 0.08:
            data = _bad_utf8(r, data, model)
            steps.append("a name made invalid UTF-8")
        yield f"#{i} " + "; ".join(steps), data


# -- running a mutant ---------------------------------------------------------------------------


def _inputs(module, rng, batch):
    arrays = []
    for spec in module.inputs:
        shape = [batch if not isinstance(d, int) else d for d in (spec.shape or (batch,))]
        if any(d < 0 for d in shape) or np.prod(shape, dtype=float) > MAX_INPUT_ELEMENTS:
            return None
        if spec.dtype.kind == "f":
            arrays.append(rng.normal(size=shape).astype(spec.dtype))
        elif spec.dtype.kind in "iu":
            arrays.append(rng.integers(0, 3, size=shape).astype(spec.dtype))
        elif spec.dtype.kind == "b":
            arrays.append(rng.random(size=shape) < 0.5)
        else:
            return None
    return arrays


def _untyped(stage, description, exc):
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames)
                  if "site-packages" not in f.filename), "?")
    return stage, type(exc).__name__, where, description, f"{type(exc).__name__}: {str(exc)[:200]}"


def run_mutant(description, data, path, family, rng):
    """Untyped failures of one mutant: (stage, exception type, innermost project frame, mutant, message)."""
    path.write_bytes(data)
    failures = []
    module = None
    try:
        module = load_model(path)
    except CmlError:
        pass
    except Exception as exc:  # noqa: BLE001 (the point of the test)
        failures.append(_untyped("load", description, exc))
    if module is not None:
        inputs = _inputs(module, rng, 2)
        if inputs is not None:
            try:
                module(*inputs)
            except CmlError:
                pass
            except Exception as exc:  # noqa: BLE001
                failures.append(_untyped("call", description, exc))
        calibration = _inputs(module, rng, 8)
        if calibration is not None and family in QUANTIZE_CHECKED:
            try:
                module.quantize(calibration[0] if len(calibration) == 1 else tuple(calibration), n_bits=4)
            except CmlError:
                pass
            except Exception as exc:  # noqa: BLE001
                failures.append(_untyped("quantize", description, exc))
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli(["inspect", str(path)])
        if code not in (0, 1, 2) or (code == 0) != (module is not None) or "internal error" in err.getvalue():
            failures.append(("inspect", f"exit {code}", "cli", description, err.getvalue()[:300]))
    except BaseException as exc:  # noqa: BLE001 (SystemExit included: main must return)
        failures.append(_untyped("inspect", description, exc))
    return failures


@contextlib.contextmanager
def memory_cap(headroom):
    """Limit the process's address space to what it maps now plus ``headroom`` (where the OS allows)."""
    try:
        import resource
    except ImportError:  # not on this platform: no cap
        yield
        return
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + headroom if hard == resource.RLIM_INFINITY else min(hard, mapped + headroom)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def fuzz(family, kind, count, folder):
    """Run ``count`` mutants; returns the untyped failures and how each stage ended."""
    rng = np.random.default_rng(0)
    path = folder / "model.onnx"
    failures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the seed model, unmutated, first: it must load, run and quantize (and warms every import)
        seed = run_mutant("seed", MODELS[family]().SerializeToString(), path, family, rng)
        assert not seed, seed
        with memory_cap(MEMORY_HEADROOM):
            for description, data in mutants(family, kind, count, folder):
                failures += run_mutant(description, data, path, family, rng)
    return failures


def _report(failures):
    classes = Counter((stage, name, where) for stage, name, where, _, _ in failures)
    lines = []
    for (stage, name, where), n in classes.most_common():
        example = next(f for f in failures if f[:3] == (stage, name, where))
        lines.append(f"{n}x {stage}: {name} at {where}\n    mutant {example[3]}\n    {example[4]}")
    return "\n".join(lines)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="memory cap needs /proc")
@pytest.mark.parametrize("kind", ["bytes", "proto"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_only_cml_errors_escape(family, kind, tmp_path):
    failures = fuzz(family, kind, ITERATIONS, tmp_path)
    assert not failures, f"{len(failures)} untyped failure(s):\n{_report(failures)}"
