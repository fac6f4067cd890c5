"""Build one-node ONNX models and run them here and in onnxruntime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper

from ..numpy_module import load_model
from ..registry import OpRegistry

#: onnxruntime refuses IR versions newer than it knows; models built here declare this one.
ORT_MAX_IR_VERSION = 10


@dataclass(frozen=True)
class OptionalInput:
    """An optional-typed input for ``make_node_model``: ``value`` is an array or ``None`` (an empty
    optional); ``dtype`` and ``ndim`` give its element type when it is empty."""

    value: NDArray[Any] | None
    dtype: Any
    ndim: int = 0


def make_node_model(
    op_type: str,
    inputs: Sequence[Any],
    attributes: dict[str, Any] | None = None,
    *,
    opset: int,
    domain: str = "",
    constant_inputs: Sequence[int] = (),
    n_outputs: int = 1,
    ir_version: int = ORT_MAX_IR_VERSION,
) -> onnx.ModelProto:
    """A model holding one node of ``op_type``.

    ``inputs[i]`` is an array (a graph input, or an initializer when ``i`` is in
    ``constant_inputs``), a non-empty list of arrays (a sequence, whose elements have the first
    array's dtype and rank), an ``OptionalInput`` (an optional value) or ``None`` for an omitted
    optional input. A constant sequence or optional is made in the model from initializers, by a
    SequenceConstruct or Optional node ahead of the op's (they fold at load). Attributes may hold
    subgraphs (``onnx.GraphProto``). Returns a checked model whose inputs are named ``x0, x1,
    ...`` and outputs ``y0, y1, ...``; outputs inferred to be sequences or optionals are declared
    so.
    """
    graph_inputs, initializers, names, producers = [], [], [], []
    for i, value in enumerate(inputs):
        if value is None:
            names.append("")
            continue
        name = f"x{i}"
        names.append(name)
        if isinstance(value, OptionalInput):
            element = helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(np.dtype(value.dtype)),
                                                    [f"{name}_{d}" for d in range(value.ndim)])
            if i not in constant_inputs:
                graph_inputs.append(helper.make_value_info(name, helper.make_optional_type_proto(element)))
            elif value.value is None:
                producers.append(helper.make_node("Optional", [], [name], type=element))
            else:
                initializers.append(numpy_helper.from_array(np.asarray(value.value), f"{name}_value"))
                producers.append(helper.make_node("Optional", [f"{name}_value"], [name]))
            continue
        if isinstance(value, list):
            if not value:
                raise ValueError(f"input {i}: a sequence input must be a non-empty list")
            first = np.asarray(value[0])
            if i in constant_inputs:
                parts = [f"{name}_{j}" for j in range(len(value))]
                initializers.extend(numpy_helper.from_array(np.asarray(v), part) for v, part in zip(value, parts))
                producers.append(helper.make_node("SequenceConstruct", parts, [name]))
            else:
                graph_inputs.append(helper.make_tensor_sequence_value_info(
                    name, helper.np_dtype_to_tensor_dtype(first.dtype), [f"{name}_{d}" for d in range(first.ndim)]))
            continue
        arr = np.asarray(value)
        if i in constant_inputs:
            initializers.append(numpy_helper.from_array(arr, name))
        else:
            elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, elem, arr.shape))
    while names and names[-1] == "":
        names.pop()
    outputs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outputs, domain=domain, **(attributes or {}))
    graph = helper.make_graph(
        [*producers, node], f"one_{op_type}", graph_inputs,
        [helper.make_empty_tensor_value_info(o) for o in outputs], initializer=initializers,
    )
    opsets = [helper.make_opsetid("", opset if not domain else 18)]
    if domain:
        opsets.append(helper.make_opsetid(domain, opset))
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
    inferred = onnx.shape_inference.infer_shapes(model)
    # declare output types when inference found them (onnxruntime wants typed outputs)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    untyped = []
    for out in model.graph.output:
        inferred_type = known[out.name].type if out.name in known else None
        structured = inferred_type is not None and inferred_type.WhichOneof("value") in ("sequence_type", "optional_type")
        if inferred_type is not None and (structured or inferred_type.tensor_type.HasField("shape")):
            out.CopyFrom(known[out.name])
        else:
            untyped.append(out)
    if untyped:
        # data-dependent output shapes (e.g. Reshape by a non-constant shape), custom domains, or old
        # versions whose schemas infer nothing: declare rank and type as ONNX's reference evaluator (or,
        # where it has no implementation, the registered one) computes them, leaving every dim symbolic
        values = None
        if not domain:
            from onnx.reference import ReferenceEvaluator

            try:
                values = list(ReferenceEvaluator(model).run(None, feeds_of(model, inputs)))
            except Exception:  # noqa: BLE001  (no implementation of this version in the evaluator)
                values = None
        if values is None:
            from ..plugins import get_registry

            impl = get_registry().resolve(domain or "", op_type, opset)
            context = {"_num_outputs": n_outputs} if "_num_outputs" in impl.signature.context else {}
            out = impl.function(*[None if v is None else _feed(v) for v in inputs], **(attributes or {}), **context)
            values = list(out) if isinstance(out, tuple) else [out]
        for out, value in zip(model.graph.output, values):
            if out in untyped:
                elem = helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype)
                out.CopyFrom(helper.make_tensor_value_info(out.name, elem, [f"{out.name}_{d}" for d in range(np.ndim(value))]))
    return model


def feeds_of(model: onnx.ModelProto, inputs: Sequence[Any]) -> dict[str, Any]:
    """Map the model's graph input names to the corresponding non-constant arrays (lists of them for sequences)."""
    wanted = {vi.name for vi in model.graph.input}
    return {f"x{i}": _feed(v) for i, v in enumerate(inputs) if v is not None and f"x{i}" in wanted}


def _feed(value: Any) -> Any:
    if isinstance(value, OptionalInput):
        return None if value.value is None else np.asarray(value.value)
    if isinstance(value, list):
        return [np.asarray(e) for e in value]
    return np.asarray(value)


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
    """Outputs of ``model`` in onnxruntime, graph optimizations off (a test-time reference)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def run_cml(
    model: onnx.ModelProto, feeds: dict[str, NDArray[Any]], registry: OpRegistry | None = None
) -> list[NDArray[Any]]:
    """Outputs of ``model`` through ``load_model`` (outputs always as a list)."""
    module = load_model(model, registry)
    values = module.run(*[feeds[name] for name in module.input_names])
    return [values[name] for name in module.output_names]
