"""Post-processing the client runs in the clear on the decrypted outputs (ArgMax of scores, label lookups).

Ops of the ``ConstantOnlyOp`` family cannot run on encrypted values (a position, a sort, a sequence). When
such an op and everything computed from it only lead to model outputs, and none of them holds weights,
they need not run on the server: the encrypted program stops at the tensors they read, and the client runs
them as numpy on the decrypted floats. Ops whose family sets ``finishes_on_client`` (a Softmax) follow them
there when they and all that follows only finish model outputs: the server then returns the scores they
read. The split is two ONNX models: the server's (the encrypted program is built from it) and the client's
tail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper

from .base import ConstantOnlyOp, LinearOp, ShapeOp

if TYPE_CHECKING:
    from ..numpy_module import NumpyModule


@dataclass
class ClientTail:
    """The clear part of a split model: ``module`` maps the decrypted tensors named ``reads`` to the model
    outputs it makes; ``outputs`` lists every model output in the model's order."""

    model: onnx.ModelProto
    reads: list[str]
    outputs: list[str]
    module: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.module is None:
            from ..numpy_module import NumpyModule

            self.module = NumpyModule(self.model)

    def finish(self, decrypted: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        """The model's outputs, in order, from the decrypted program outputs (by name)."""
        made = self.module.run(*[decrypted[name] for name in self.module.input_names])
        return [made[name] if name in made else decrypted[name] for name in self.outputs]


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    graph = model.graph
    return {vi.name: vi for vi in [*graph.value_info, *graph.input, *graph.output]}


def _graph_model(module: NumpyModule, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                 outputs: list[onnx.ValueInfoProto], name: str) -> onnx.ModelProto:
    """A model of ``nodes`` with the module's constants they read as initializers."""
    read = {n for node in nodes for n in node.input if n}
    produced = {n for node in nodes for n in node.output if n}
    constants = module.constants
    initializers = [numpy_helper.from_array(np.asarray(constants[n]), n) for n in sorted(read - produced)
                    if n in constants]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    source = module.onnx_model
    return helper.make_model(graph, opset_imports=list(source.opset_import), ir_version=source.ir_version)


def _server_only(bound: Any, constants: dict[str, Any]) -> bool:
    """Whether a node must stay on the server: weights (a linear op reading a floating-point constant),
    products of two computed tensors (attention's scores and values: the model's own computation, not a
    finish; a sum over an axis of one tensor is), refusals that stand, and control flow (its bodies are the
    model's own computation and read the server's tensors)."""
    family = bound.impl.quantized
    if family is None or bool(getattr(bound, "subgraphs", None)) or (
            issubclass(family, ConstantOnlyOp) and not family.client_side):
        return True
    if not issubclass(family, LinearOp):
        return False
    read = [name for name in bound.inputs if name]
    weights = any(name in constants and np.asarray(constants[name]).dtype.kind == "f" for name in read) or any(
        isinstance(value, (list, tuple, np.ndarray)) and np.asarray(value).dtype.kind == "f"
        for value in bound.attributes.values())  # an ONNX-ML model's coefficients, a tree's leaf weights
    return weights or sum(name not in constants for name in read) > 1


def _with_ranks(infos: dict[str, onnx.ValueInfoProto], names: list[str], module: NumpyModule,
                sample: list[Any]) -> None:
    """Give the tensors ``names`` whose inferred type has no shape one of symbolic dims, of the rank the
    module's run on ``sample`` shows (ONNX's inference leaves some ops' outputs, e.g. ai.onnx.ml's, shapeless)."""
    shapeless = [n for n in names if infos[n].type.WhichOneof("value") == "tensor_type"
                 and not infos[n].type.tensor_type.HasField("shape")]
    if not shapeless:
        return
    values = module.run(*sample, keep_intermediates=True)
    for name in shapeless:
        rank = np.ndim(values[name])
        infos[name] = helper.make_tensor_value_info(name, infos[name].type.tensor_type.elem_type,
                                                    [f"{name}:{axis}" for axis in range(rank)])


def split_client_tail(module: NumpyModule, sample: list[Any]) -> tuple[NumpyModule, ClientTail | None]:
    """``module`` split into the server's part and the client's clear tail, or ``(module, None)`` when no
    op needs to run in the clear, or when what would follow it holds weights (a linear op: those stay on
    the server, and the refusal of the clear-only op then names it). ``sample``: inputs of one run, to find
    the rank of tensors whose type ONNX's inference leaves without a shape."""
    from ..numpy_module import NumpyModule

    nodes = module.nodes
    if any(spec.containers for spec in module.inputs):
        return module, None  # sequence or optional inputs: refused as they are (refuse_structured_values)
    consumers: dict[str, list[int]] = {}
    for index, bound in enumerate(nodes):
        for name in bound.inputs:
            if name:
                consumers.setdefault(name, []).append(index)
    # what carries encrypted values: the model's inputs and what nodes compute from them, except shapes
    encrypted = {spec.name for spec in module.inputs}
    stack = []
    for index, bound in enumerate(nodes):
        if not any(name in encrypted for name in bound.inputs):
            continue
        family = bound.impl.quantized
        if family is not None and issubclass(family, ConstantOnlyOp) and family.client_side:
            stack.append(index)
        if family is None or not issubclass(family, ShapeOp):
            encrypted.update(n for n in bound.outputs if n)

    def downstream(seeds: list[int]) -> set[int]:
        reached: set[int] = set()
        pending = list(seeds)
        while pending:
            index = pending.pop()
            if index not in reached:
                reached.add(index)
                for name in nodes[index].outputs:
                    pending.extend(consumers.get(name, []))
        return reached

    tail = downstream(stack)
    if any(_server_only(nodes[i], module.constants) for i in tail):
        return module, None  # weights would reach the client: the clear-only op's refusal names it
    # ops that only finish the outputs (a Softmax of the final scores) run on the client too: the server
    # sends the scores they read, and the client spends nothing encrypted on them
    for index, bound in enumerate(nodes):
        family = bound.impl.quantized
        if index in tail or not getattr(family, "finishes_on_client", False) or \
                not any(name in encrypted for name in bound.inputs):
            continue
        after = downstream([index])
        if not any(_server_only(nodes[i], module.constants) for i in after):
            tail |= after
    if not tail or len(tail) == len(nodes):
        return module, None  # nothing left for the server to compute
    made_by_tail = {n for i in tail for n in nodes[i].outputs if n}
    reads: list[str] = []
    for i in sorted(tail):
        for name in nodes[i].inputs:
            if name and name not in made_by_tail and name not in module.constants and name not in reads:
                reads.append(name)
    infos = _value_infos(module.onnx_model)
    missing = [n for n in reads if n not in infos]
    if missing:  # a tensor of unknown type cannot cross to the client
        return module, None
    outputs = module.output_names
    server_outputs = [n for n in outputs if n not in made_by_tail] + [n for n in reads if n not in outputs]
    _with_ranks(infos, list(dict.fromkeys(reads + server_outputs)), module, sample)
    server = _graph_model(module, [b.node for i, b in enumerate(nodes) if i not in tail],
                          [infos[s.name] for s in module.inputs], [infos[n] for n in server_outputs], "server")
    clear = _graph_model(module, [nodes[i].node for i in sorted(tail)], [infos[n] for n in reads],
                         [infos[n] for n in outputs if n in made_by_tail], "client tail")
    return NumpyModule(server, module.registry), ClientTail(clear, reads, list(outputs))
