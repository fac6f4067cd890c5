"""Replace nodes by the ONNX function bodies their schemas define (Attention as MatMul, Softmax, MatMul ...).

An op whose fused form has no integer twin can still be quantized when ONNX defines it as a function of
simpler ops: the node is swapped for that body, with the node's inputs, outputs and attributes wired in, and
the simpler ops quantize one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
from onnx import helper

from .errors import QuantizationError


def function_body(node: onnx.NodeProto, opset: int, input_types: list[onnx.TypeProto]) -> onnx.FunctionProto | None:
    """The function body ONNX defines for ``node`` at ``opset`` (``None`` when its schema defines none).

    Context-dependent bodies (Attention, LayerNormalization, RMSNormalization ...) are built for the node's
    attributes and ``input_types``; plain ones are taken for the highest function version not above ``opset``.
    """
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None
    proto = onnx.FunctionProto()
    # these OpSchema members are missing from onnx's type stubs
    plain = [v for v in schema.function_opset_versions if v <= opset]  # type: ignore[attr-defined]
    dependent = [v for v in schema.context_dependent_function_opset_versions  # type: ignore[attr-defined]
                 if v <= opset]
    if dependent:
        raw = schema.get_context_dependent_function_with_opset_version(  # type: ignore[attr-defined]
            max(dependent), node.SerializeToString(), [t.SerializeToString() for t in input_types])
    elif plain:
        raw = schema.get_function_with_opset_version(max(plain))  # type: ignore[attr-defined]
    else:
        return None
    proto.ParseFromString(raw)
    return proto if proto.node else None


def _attribute_values(node: onnx.NodeProto, function: onnx.FunctionProto) -> dict[str, onnx.AttributeProto]:
    """The node's attributes, with the function's defaults (and the schema's) for those it leaves out."""
    values = {a.name: a for a in function.attribute_proto}
    try:
        schema = onnx.defs.get_schema(node.op_type, domain=node.domain)
        for name, attribute in schema.attributes.items():
            if attribute.default_value.name:
                values.setdefault(name, attribute.default_value)
    except onnx.defs.SchemaError:
        pass
    values.update({a.name: a for a in node.attribute})
    return values


def _wired(node: onnx.NodeProto, function: onnx.FunctionProto, prefix: str) -> list[onnx.NodeProto]:
    """The body's nodes with its formal inputs and outputs renamed to the node's, its internal tensors
    prefixed, and attribute references replaced by the node's values."""
    names = {formal: (node.input[i] if i < len(node.input) else "") for i, formal in enumerate(function.input)}
    names.update({formal: node.output[i] for i, formal in enumerate(function.output)
                  if i < len(node.output) and node.output[i]})
    attributes = _attribute_values(node, function)

    def rename(name: str) -> str:
        if not name:
            return ""
        return names.get(name, prefix + name)

    wired = []
    for inner in function.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        del copy.input[:]
        copy.input.extend(rename(n) for n in inner.input)
        del copy.output[:]
        copy.output.extend(rename(n) for n in inner.output)
        copy.name = prefix + (inner.name or inner.op_type)
        del copy.attribute[:]
        for attribute in inner.attribute:
            if attribute.ref_attr_name:
                given = attributes.get(attribute.ref_attr_name)
                if given is None:
                    continue  # an optional attribute the node leaves out: the inner op's default applies
                resolved = onnx.AttributeProto()
                resolved.CopyFrom(given)
                resolved.name = attribute.name
                copy.attribute.append(resolved)
            elif attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise QuantizationError(
                    f"node {node.name or node.op_type!r} ({node.op_type}): its function body holds a subgraph, "
                    "which cannot be expanded for quantization")
            else:
                copy.attribute.append(attribute)
        wired.append(copy)
    return wired


def _typed_casts(nodes: list[onnx.NodeProto], types: dict[str, onnx.TypeProto]) -> list[onnx.NodeProto]:
    """``nodes`` with each CastLike whose target is a tensor of known type made a Cast to that type.

    Bodies take their constants to the input's type with CastLike(constant, input): as a Cast, the
    constant no longer depends on the (encrypted) input and folds at load.
    """
    out = []
    for node in nodes:
        like = types.get(node.input[1]) if node.op_type == "CastLike" and len(node.input) > 1 else None
        if like is not None and like.WhichOneof("value") == "tensor_type" and like.tensor_type.elem_type:
            cast = helper.make_node("Cast", [node.input[0]], list(node.output), name=node.name,
                                    to=like.tensor_type.elem_type)
            saturate = [a for a in node.attribute if a.name == "saturate"]
            cast.attribute.extend(saturate)
            node = cast
        out.append(node)
    return out


def _types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Tensor name -> its type, as shape inference finds them (initializers typed from their data)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {vi.name: vi.type for vi in [*graph.input, *graph.value_info, *graph.output]}
    for init in graph.initializer:
        types.setdefault(init.name, helper.make_tensor_type_proto(init.data_type, list(init.dims)))
    return types


def expand_nodes(model: onnx.ModelProto, wanted: Callable[[onnx.NodeProto], bool]) -> onnx.ModelProto:
    """A copy of ``model`` whose top-level nodes for which ``wanted(node)`` holds are replaced by their ONNX
    function bodies (one level: a body's own function ops stay as they are).

    Raises:
        QuantizationError: a wanted node has no function body in ONNX.
    """
    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    opsets = {o.domain or "": o.version for o in expanded.opset_import}
    types = _types(expanded)
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(model.graph.node):
        if not wanted(node):
            nodes.append(node)
            continue
        empty = onnx.TypeProto()
        body = function_body(node, opsets.get(node.domain or "", 1), [types.get(n, empty) for n in node.input])
        if body is None:
            raise QuantizationError(
                f"node {node.name or node.op_type!r} ({node.op_type}): ONNX defines no function body for it to "
                "quantize through; export the model with this op written as simpler ops")
        for imported in body.opset_import:
            domain = imported.domain or ""
            opsets[domain] = max(opsets.get(domain, 0), imported.version)
        nodes.extend(_wired(node, body, f"{node.name or node.op_type}/{index}/"))
    del expanded.graph.node[:]
    expanded.graph.node.extend(nodes)
    del expanded.opset_import[:]
    expanded.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    typed = _typed_casts(list(expanded.graph.node), _types(expanded))
    del expanded.graph.node[:]
    expanded.graph.node.extend(typed)
    return expanded


def expansion_targets(nodes: Any, family: type) -> set[str]:
    """Output names identifying the bound ``nodes`` whose quantized family is ``family`` (or a subclass)."""
    return {b.node.output[0] for b in nodes
            if b.impl.quantized is not None and issubclass(b.impl.quantized, family) and b.node.output}
