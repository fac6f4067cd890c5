"""Interpret an ONNX graph with the numpy implementations that plugins register."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx.defs
import onnx.shape_inference
from numpy.typing import NDArray

from .errors import (
    CmlError,
    InputError,
    ModelLoadError,
    NodeExecutionError,
    OpSignatureError,
    OutOfMemoryError,
    UnsupportedOpError,
)
from .known_plugins import install_hint
from .onnx_utils import (
    attribute_value,
    read_model,
    tensor_array,
    value_info_map_key,
    value_info_shape,
    value_info_type,
)
from .plugins import get_registry
from .registry import ONNX_DOMAIN, OpImpl, OpRegistry, normalize_domain
from .signature import REQUIRED, StaticInput

if TYPE_CHECKING:
    from .quantization.module import QuantizedModule


@dataclass
class BoundNode:
    """A graph node with its implementation chosen and its attributes read.

    A GRAPH attribute is held as its ``BoundGraph``; ``free_names`` lists the outer-scope values
    those subgraphs read, which the node reads too (``reads``): they are kept alive until it runs
    and handed to its subgraphs when it runs.
    """

    node: onnx.NodeProto
    impl: OpImpl
    attributes: dict[str, Any]
    index: int
    #: where the node's graph sits, for messages ("" in the main graph)
    scope: str = ""

    @property
    def name(self) -> str:
        return self.node.name or f"#{self.index}"

    @property
    def where(self) -> str:
        """How error messages name this node."""
        return f"node {self.name!r} ({self.impl.display_name})" + (f" in {self.scope}" if self.scope else "")

    def __post_init__(self) -> None:
        # check arity and attributes once; calls then pass the inputs straight through
        self.impl.signature.bind([object() if n else None for n in self.node.input], self.attributes,
                                 where=self.where)
        n = len(self.node.input)
        if self.impl.signature.variadic_input is None:
            while n > len(self.impl.signature.required_inputs) and not self.node.input[n - 1]:
                n -= 1
        self._arity = n
        self.inputs = tuple(self.node.input[:n])  # "" marks an omitted optional input
        self.outputs = tuple(self.node.output)
        context = {"_num_outputs": len(self.outputs)} if "_num_outputs" in self.impl.signature.context else {}
        self._kwargs = {**self.attributes, **context}
        self.subgraphs = {k: v for k, v in self.attributes.items() if isinstance(v, BoundGraph)}
        self.free_names = tuple(dict.fromkeys(n for g in self.subgraphs.values() for n in g.free_names))
        self.reads = tuple(dict.fromkeys([*(n for n in self.inputs if n), *self.free_names]))
        #: the kernel the op's ``prepare`` made for this node (see ``signature.Preparer``), if any
        self.kernel: Callable[..., Any] | None = None

    def call(self, values: list[Any], scope: dict[str, Any] | None = None) -> tuple[Any, ...]:
        """Run the numpy implementation on ``values`` (``None`` for omitted inputs).

        ``scope`` holds the values of ``free_names`` (what the node's subgraphs read from outside).
        """
        kwargs = self._kwargs
        if self.subgraphs:
            outer = scope or {}
            kwargs = {**kwargs, **{k: g.bind({n: outer[n] for n in g.free_names}) for k, g in self.subgraphs.items()}}
        return self.outputs_of(self.impl.function(*values[: self._arity], **kwargs))

    def run(self, values: list[Any], scope: dict[str, Any] | None = None) -> tuple[Any, ...]:
        """``call`` as the graph runs it: with the kernel prepared for the node when there is one, which
        reads the constants it was prepared from (``values`` must hold the graph's own)."""
        if self.kernel is None:
            return self.call(values) if scope is None else self.call(values, scope)
        return self.outputs_of(self.kernel(*values[: self._arity]))

    def outputs_of(self, out: Any) -> tuple[Any, ...]:
        """The node's outputs from what its implementation returned (one value or a tuple)."""
        if not isinstance(out, tuple):
            out = (out,)
        n = len(self.outputs)
        if len(out) < n and any(self.outputs[len(out):]):
            missing = [name for name in self.outputs[len(out):] if name]
            raise NodeExecutionError(
                f"{self.where}: its implementation computes {len(out)} output(s); the node also asks for "
                f"{missing}, which is not supported"
            )
        return tuple(out[:n])

    def renamed(self, names: dict[str, str], node_name: str | None = None) -> BoundNode:
        """This node with its input and output names mapped through ``names`` (a copy), and named
        ``node_name`` when given."""
        node = onnx.NodeProto()
        node.CopyFrom(self.node)
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
        if node_name is not None:
            node.name = node_name
        return BoundNode(node, self.impl, self.attributes, self.index, self.scope)


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype and declared shape (None for free dims).

    ``containers`` says what holds the tensors, outermost first: ``()`` for a tensor,
    ``("sequence",)`` for a list of tensors, ``("optional",)`` for a tensor or ``None``,
    ``("optional", "sequence")`` for a list or ``None``, ``("map",)`` for a dict from ``key_dtype``
    keys to values, ``("sequence", "map")`` for a list of such dicts; ``dtype`` and ``shape`` are
    then the element tensors' (a map's values').
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | str | None, ...] | None
    containers: tuple[str, ...] = ()
    #: the keys' dtype when the value is or holds a map (int64, or object for strings)
    key_dtype: np.dtype[Any] | None = None

    @property
    def is_tensor(self) -> bool:
        return not self.containers

    def describe(self) -> str:
        """The type in words: ``float32``, ``sequence of float32``, ``optional sequence of int64``,
        ``sequence of map(int64 -> float32)`` (string keys and values read ``string``)."""
        words = [c if c == "optional" else f"{c} of" for c in self.containers if c != "map"]
        element = _dtype_word(self.dtype)
        if "map" in self.containers:
            element = f"map({_dtype_word(self.key_dtype)} -> {element})"
        return " ".join([*words, element])


def _dtype_word(dtype: np.dtype[Any] | None) -> str:
    return "string" if dtype is not None and dtype.kind == "O" else str(dtype)


def _declared_type(vi: onnx.ValueInfoProto) -> tuple[np.dtype[Any] | None, tuple[int | str | None, ...] | None]:
    """The element dtype and shape ``vi`` declares, ``(None, None)`` when it declares no usable type."""
    try:
        _, dtype, shape = value_info_type(vi, repr(vi.name))
    except ModelLoadError:
        return None, None
    return dtype, shape


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {normalize_domain(o.domain): int(o.version) for o in model.opset_import}


@dataclass
class _Binding:
    """What every graph of one model is bound with: the registry, the model's opsets, and the ops
    found missing so far (reported together once every graph is bound)."""

    registry: OpRegistry
    opsets: dict[str, int]
    missing: Counter[tuple[str, str, int]]


class _ScopedSubgraph:
    """A ``BoundGraph`` with the outer-scope values it reads: what an op gets for a GRAPH attribute."""

    def __init__(self, graph: BoundGraph, scope: dict[str, Any]) -> None:
        self.graph = graph
        self.scope = scope
        self.input_names = tuple(graph.input_names)
        self.output_names = tuple(graph.output_names)
        self.output_types = graph.output_types

    def __call__(self, *inputs: Any) -> tuple[Any, ...]:
        return self.graph.evaluate(inputs, self.scope)

    def __repr__(self) -> str:
        return f"Subgraph(inputs={list(self.input_names)}, outputs={list(self.output_names)})"


class BoundGraph:
    """A graph whose nodes are bound to implementations: a model's main graph or a node's subgraph.

    Binding checks each node (arity, attributes, the op's load-time check), binds the GRAPH
    attributes of its nodes as ``BoundGraph``s themselves, folds the nodes whose inputs (and
    outer-scope reads) are all constants, inlines each If whose condition is then known (its
    chosen branch's nodes take its place), lets ops prepare their nodes' kernels, and plans
    how the nodes run and when each intermediate is freed. A subgraph's ``free_names`` are the
    values it reads from enclosing graphs.
    """

    def __init__(self, graph: onnx.GraphProto, binding: _Binding, outer_shapes: dict[str, Any],
                 where: str = "") -> None:
        """Bind ``graph``; ``outer_shapes`` holds the static shapes of the enclosing graphs' values and
        ``where`` says, for messages, which attribute of which node the graph is ("" for the main graph)."""
        self.where = where
        self.constants: dict[str, Any] = {
            init.name: tensor_array(init, f"initializer {init.name!r}" + (f" in {where}" if where else ""))
            for init in graph.initializer}
        self.input_names = [vi.name for vi in graph.input if vi.name not in self.constants]
        self.output_names = [vi.name for vi in graph.output]
        self.output_types = tuple(_declared_type(vi) for vi in graph.output)
        self.folded_from: dict[str, tuple[BoundNode, list[Any], int]] = {}
        self.free_names: tuple[str, ...] = ()
        shapes = dict(outer_shapes)
        shapes.update(self._static_shapes(graph))
        self.nodes = self._bind_nodes(graph, binding, shapes)
        self._dead_after: list[tuple[str, ...]] = []
        self._steps: list[_Step] = []
        if binding.missing:
            return  # the model is refused once every graph is bound: nothing to prepare
        self._fold_constants()
        self._prepare_kernels(shapes)
        self.free_names = self._find_free_names()
        self._dead_after = self._compute_dead_after()
        self._steps = self._compile_steps()

    def bind(self, scope: dict[str, Any]) -> _ScopedSubgraph:
        """This graph with the outer-scope values it reads, ready for an op to call."""
        return _ScopedSubgraph(self, scope)

    # -- running --------------------------------------------------------------------------------
    def evaluate(self, inputs: Sequence[Any], scope: dict[str, Any]) -> tuple[Any, ...]:
        """The graph's outputs for ``inputs`` (one per graph input) and its outer-scope values."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.where} takes {len(self.input_names)} input(s) {self.input_names}, "
                             f"got {len(inputs)}")
        env = dict(self.constants)
        env.update(scope)
        env.update(zip(self.input_names, inputs))
        self.execute(env)
        return tuple(env[name] for name in self.output_names)

    def execute(self, env: dict[str, Any], keep_intermediates: bool = False,
                observe: Callable[[str, Any], None] | None = None) -> None:
        """Run every node on ``env`` (name -> value, holding the inputs and constants), in place.

        Intermediates no later node (nor the graph's outputs) reads are removed as soon as
        possible, unless ``keep_intermediates``. ``observe(name, value)`` sees each produced value.
        Without either, nodes run as compiled at load (``_compile_steps``): in-place forms write over
        arrays no one else holds, and chains of element-wise ops run with the node that feeds them.
        """
        env[""] = None  # omitted optional inputs
        if not keep_intermediates and observe is None:
            self._run_steps(env)
            return
        for bound, dead in zip(self.nodes, self._dead_after):
            values = [env[name] for name in bound.inputs]
            try:
                results = bound.run(values, {n: env[n] for n in bound.free_names}) if bound.free_names \
                    else bound.run(values)
            except CmlError:
                raise
            except MemoryError as exc:
                raise OutOfMemoryError(
                    f"{bound.where} ran out of memory on inputs of shapes {_shapes(values)}; run a smaller batch "
                    "(fewer samples per call)"
                ) from exc
            except Exception as exc:  # an op implementation failed on these values
                raise NodeExecutionError(
                    f"{bound.where} failed on inputs of shapes {_shapes(values)}: {type(exc).__name__}: {exc}"
                ) from exc
            env.update(zip(bound.outputs, results))
            if observe is not None:
                for name, value in zip(bound.outputs, results):
                    if name:
                        observe(name, value)
            if not keep_intermediates:
                for name in dead:
                    env.pop(name, None)

    def _run_steps(self, env: dict[str, Any]) -> None:
        """``execute`` without observing nor keeping intermediates: each node's kernel straight on ``env``,
        in place where its op allows it and its first input is an array only ``env`` holds."""
        step: _Step | None = None
        values: list[Any] = []
        refcount = sys.getrefcount
        read = env.__getitem__
        try:
            for step in self._steps:
                values = list(map(read, step.inputs))
                if step.inplace is not None:
                    first = values[0]
                    # held by env, values, first and getrefcount's argument only, and its memory by no other
                    # array (a view's base is held by the view alone): no one else sees it
                    if type(first) is np.ndarray and refcount(first) == 4 and first.flags.writeable and (
                            first.base is None or _sole_base(first.base)):
                        del first
                        result = step.inplace(*values)
                    else:
                        del first
                        assert step.kernel is not None  # a step with an in-place form has a kernel too
                        result = step.kernel(*values)
                elif step.kernel is not None:
                    result = step.kernel(*values)
                else:  # a node with subgraphs, which read values of this scope
                    result = step.bound.call(values, {n: env[n] for n in step.bound.free_names})
                if step.output is not None and type(result) is not tuple:
                    env[step.output] = result
                else:
                    env.update(zip(step.bound.outputs, step.bound.outputs_of(result)))
                del result
                for name in step.dead:
                    env.pop(name, None)
        except CmlError:
            raise
        except MemoryError as exc:
            assert step is not None
            raise OutOfMemoryError(
                f"{step.where} ran out of memory on inputs of shapes {_shapes(values)}; run a smaller batch "
                "(fewer samples per call)"
            ) from exc
        except Exception as exc:  # an op implementation failed on these values
            if step is None:
                raise
            raise NodeExecutionError(
                f"{step.where} failed on inputs of shapes {_shapes(values)}: {type(exc).__name__}: {exc}"
            ) from exc

    # -- binding --------------------------------------------------------------------------------
    def _bind_nodes(self, graph: onnx.GraphProto, binding: _Binding,
                    shapes: dict[str, tuple[int | None, ...] | None]) -> list[BoundNode]:
        bound: list[BoundNode] = []
        for index, node in enumerate(graph.node):
            domain = normalize_domain(node.domain)
            opset = binding.opsets.get(domain)
            label = f"node {node.name or '#' + str(index)!r}"
            if opset is None:
                raise ModelLoadError(f"{label} ({node.op_type})" + (f" in {self.where}" if self.where else "")
                                     + f" uses domain {domain!r}, which the model does not import")
            impl = binding.registry.find(domain, node.op_type, opset)
            if impl is None:
                binding.missing[(domain, node.op_type, opset)] += 1
            where = f"{label} ({impl.display_name if impl else node.op_type})" + (f" in {self.where}" if self.where else "")
            attributes = {a.name: attribute_value(a, where) for a in node.attribute}
            for name, value in attributes.items():
                if isinstance(value, onnx.GraphProto):
                    attributes[name] = BoundGraph(value, binding, shapes, f"attribute {name!r} of {where}")
            if impl is None:
                continue
            try:  # arity and attributes are checked here, so errors surface at load, not at first call
                bound.append(BoundNode(node, impl, attributes, index, self.where))
            except OpSignatureError as exc:
                raise ModelLoadError(str(exc)) from exc
            self._validate(bound[-1], shapes)
        return bound

    def _static_shapes(self, graph: onnx.GraphProto) -> dict[str, tuple[int | None, ...] | None]:
        """Tensor name -> shape known before any call (symbolic dims as ``None``)."""
        shapes: dict[str, tuple[int | None, ...] | None] = {}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            shape = value_info_shape(vi)
            shapes[vi.name] = None if shape is None else tuple(d if isinstance(d, int) else None for d in shape)
        shapes.update({name: tuple(np.shape(value)) for name, value in self.constants.items()})
        return shapes

    def _validate(self, bound: BoundNode, shapes: dict[str, tuple[int | None, ...] | None]) -> None:
        """Run the op's load-time check (``validate=`` at registration) on the node, if it has one."""
        check = bound.impl.validate
        if check is None:
            return
        inputs = [StaticInput(shapes.get(name), self.constants.get(name)) if name else None
                  for name in bound.node.input]
        defaults = {k: v for k, v in bound.impl.signature.attributes.items() if v is not REQUIRED}
        try:
            check(inputs, {**defaults, **bound.attributes})
        except CmlError:
            raise
        except ValueError as exc:
            raise ModelLoadError(f"{bound.where}: {exc}") from exc
        except Exception as exc:  # a plugin's check that itself failed
            provider = bound.impl.provider.distribution
            raise ModelLoadError(
                f"{bound.where}: the load-time check from {provider} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _prepare_kernels(self, shapes: dict[str, tuple[int | None, ...] | None]) -> None:
        """Let each op that declares ``prepare`` make its node's kernel, now that constants are known."""
        for bound in self.nodes:
            prepare = bound.impl.prepare
            if prepare is None or bound.subgraphs:
                continue
            inputs = [StaticInput(_static_shape(self.constants[name]) if name in self.constants else shapes.get(name),
                                  self.constants.get(name)) if name else None
                      for name in bound.inputs]
            defaults = {k: v for k, v in bound.impl.signature.attributes.items() if v is not REQUIRED}
            try:
                bound.kernel = prepare(inputs, {**defaults, **bound._kwargs})
            except CmlError:
                raise
            except ValueError as exc:
                raise ModelLoadError(f"{bound.where}: {exc}") from exc
            except Exception as exc:  # a plugin's preparation that itself failed
                provider = bound.impl.provider.distribution
                raise ModelLoadError(
                    f"{bound.where}: the load-time preparation from {provider} failed: {type(exc).__name__}: {exc}"
                ) from exc

    def _compile_steps(self) -> list[_Step]:
        """What ``_run_steps`` runs: per node, its kernel (prepared, or the implementation with its
        attributes bound) and its op's in-place form where its first input dies there. A node whose only
        output feeds only an op with an in-place form, as that op's first input (an activation, a bias
        or residual Add, a gate's Mul), runs that op in the same step, over its fresh result: a chain
        like Conv, Add, Relu is one step, and its intermediates never reach ``env``. A node whose op has a
        gated form and whose result only a Mul by the node's own input reads (``x * sigmoid(x)``) runs
        that form for both nodes (``_gates``), and chains like an in-place op."""
        nodes = self.nodes
        readers: dict[str, list[int]] = {}
        for index, bound in enumerate(nodes):
            for name in bound.reads:
                readers.setdefault(name, []).append(index)
        made_at = {name: index for index, bound in enumerate(nodes) for name in bound.outputs if name}
        gates = self._gates(readers)
        groups: list[list[int]] = []
        taken: set[int] = set()
        for index in range(len(nodes)):
            if index not in taken:
                groups.append(self._chain_from(index, readers, made_at, taken, gates))
        # what each group reads from env, and where each value is read last
        reads = [list(dict.fromkeys(n for i in group for n in nodes[i].reads
                                    if n not in {nodes[j].outputs[0] for j in group[:-1]}))
                 for group in groups]
        last: dict[str, int] = {}
        for at, (group, names) in enumerate(zip(groups, reads)):
            for name in names:
                if name not in self.constants:
                    last[name] = at
            for name in nodes[group[-1]].outputs:
                if name and name not in last:
                    last[name] = at
        keep = set(self.output_names)
        dead: list[list[str]] = [[] for _ in groups]
        for name, at in last.items():
            if name not in keep:
                dead[at].append(name)
        return [self._step(group, gates, tuple(names)) for group, names in zip(groups, dead)]

    def _gates(self, readers: dict[str, list[int]]) -> dict[int, int]:
        """Per node that gates its own input (a unary op with a gated form whose result only a Mul of
        that result by the node's input reads), the index of that Mul."""
        gates = {}
        for index, bound in enumerate(self.nodes):
            if bound.impl.gated is None or bound.subgraphs or bound._arity != 1 or len(bound.outputs) != 1:
                continue
            x, out = bound.inputs[0], bound.outputs[0]
            if not x or not out or out in self.output_names or len(readers.get(out, ())) != 1:
                continue
            mul = self.nodes[readers[out][0]]
            if (mul.impl.domain == ONNX_DOMAIN and mul.impl.op_type == "Mul" and not mul.free_names
                    and len(mul.outputs) == 1 and mul.outputs[0] and sorted(mul.inputs) == sorted((x, out))):
                gates[index] = readers[out][0]
        return gates

    def _chain_from(self, index: int, readers: dict[str, list[int]], made_at: dict[str, int],
                    taken: set[int], gates: dict[int, int]) -> list[int]:
        """The node ``index`` and the in-place ops that can run right after it in one step (see
        ``_compile_steps``): each reads the previous one's only output, which nothing else reads, and
        its other inputs exist before the chain starts. A gate (``_gates``) is its node and its Mul."""
        nodes = self.nodes
        chain = [index]
        if index in gates:
            chain.append(gates[index])
            taken.add(gates[index])
        while True:
            head = nodes[chain[-1]]
            out = head.outputs[0] if len(head.outputs) == 1 else ""
            if not out or head.subgraphs or out in self.output_names:
                return chain
            gate = readers.get(out, [])[:1]
            if len(readers.get(out, ())) == 2 and gate[0] in gates and readers[out] == [gate[0], gates[gate[0]]]:
                chain += [gate[0], gates[gate[0]]]  # a gate of this output: it dies there
                taken.update(chain[-2:])
                continue
            if len(readers.get(out, ())) != 1:
                return chain
            after = readers[out][0]
            tail = nodes[after]
            others = tail.inputs[1 : tail._arity]
            if (tail.impl.inplace is None or tail.subgraphs or len(tail.outputs) != 1 or not tail.outputs[0]
                    or not tail.inputs or tail.inputs[0] != out or out in others
                    or any(made_at.get(n, -1) >= index for n in others if n)):
                return chain
            chain.append(after)
            taken.add(after)

    def _step(self, group: list[int], gates: dict[int, int], dead: tuple[str, ...]) -> _Step:
        chain = [self.nodes[i] for i in group]
        head = chain[0]
        kernel: Callable[..., Any] | None = head.kernel
        if kernel is None and not head.subgraphs:
            kernel = functools.partial(head.impl.function, **head._kwargs) if head._kwargs else head.impl.function
        first = head.inputs[0] if head.inputs else ""
        inplace = head.impl.inplace
        if group[0] in gates:  # the gated form over the input (a copy of it unless it dies here)
            inplace = _gated_form(head)
            kernel = _over_copy(inplace)
        if inplace is None or head.subgraphs or not first or first not in dead or first in head.inputs[1:]:
            inplace = None
        elif head._kwargs and group[0] not in gates:
            inplace = functools.partial(inplace, **head._kwargs)
        inputs = head.inputs[: head._arity]
        tails = chain[1:]
        links = group[2:] if group[0] in gates else group[1:]
        if links:
            forms = []
            muls = {gates[i] for i in links if i in gates}
            for i in links:
                tail = self.nodes[i]
                if i in muls:
                    continue
                if i in gates:
                    gated = _gated_form(tail)
                    forms.append((_over_copy(gated), gated, 0))
                    continue
                tail_kernel = tail.kernel or functools.partial(tail.impl.function, **tail._kwargs)
                assert tail.impl.inplace is not None
                forms.append((tail_kernel, functools.partial(tail.impl.inplace, **tail._kwargs),
                              tail._arity - 1))
                inputs += tail.inputs[1 : tail._arity]
            assert kernel is not None
            kernel = _chained(kernel, head._arity, forms)
            inplace = None if inplace is None else _chained(inplace, head._arity, forms)
        last = chain[-1]
        single = last.outputs[0] if len(last.outputs) == 1 and last.outputs[0] else None
        return _Step(head, inputs, kernel, inplace, single, dead, tuple(tails))

    def _fold_constants(self) -> None:
        """Evaluate at load every node whose inputs and outer-scope reads are all constants.

        An If whose condition is constant (but whose branches read values known only at call
        time) is replaced by the nodes of the branch it takes. ``folded_from`` keeps, for
        constants folded by an op whose quantized class has a ``stated_constant`` hook, the node
        and its input values (quantization asks the hook).
        """
        pending = list(reversed(self.nodes))
        kept = []
        while pending:
            bound = pending.pop()
            if all(n in self.constants for n in bound.reads):
                self._fold(bound)
                continue
            branch = self._constant_branch(bound)
            if branch is None:
                kept.append(bound)
            else:
                pending.extend(reversed(branch))
        self.nodes = kept
        used = {n for b in self.nodes for n in b.reads} | set(self.output_names)
        self.constants = {k: v for k, v in self.constants.items() if k in used}

    def _fold(self, bound: BoundNode) -> None:
        values = [self.constants[n] if n else None for n in bound.node.input]
        try:
            results = bound.call(values, {n: self.constants[n] for n in bound.free_names}) if bound.free_names \
                else bound.call(values)
        except CmlError:
            raise
        except MemoryError as exc:
            raise OutOfMemoryError(
                f"{bound.where}: its constant result does not fit in memory (inputs of shapes "
                f"{_shapes(values)}); the model asks for a huge constant"
            ) from exc
        except Exception as exc:  # a constant subgraph that cannot be evaluated
            raise ModelLoadError(f"{bound.where}: cannot fold constant inputs: {exc}") from exc
        states = getattr(bound.impl.quantized, "stated_constant", None) is not None
        for index, (name, value) in enumerate(zip(bound.node.output, results)):
            if name:
                self.constants[name] = value if isinstance(value, (list, tuple)) or value is None else np.asarray(value)
                if states:  # the op can say which integers this constant stands for
                    self.folded_from[name] = (bound, values, index)

    def _constant_branch(self, bound: BoundNode) -> list[BoundNode] | None:
        """For an If whose condition is a constant, the nodes of the branch it takes, their outputs
        renamed to the If's (the branch's constants join this graph's); ``None`` otherwise, or when
        a branch output cannot simply be renamed (it is an outer value, or listed twice)."""
        if bound.impl.op_type != "If" or bound.impl.domain or bound.inputs[0] not in self.constants:
            return None
        condition = self.constants[bound.inputs[0]]
        if not isinstance(condition, np.ndarray) or condition.size != 1:
            return None
        taken = "then_branch" if bool(condition.reshape(-1)[0]) else "else_branch"
        branch = bound.subgraphs.get(taken)
        if branch is None or len(branch.output_names) != len(bound.outputs):
            return None
        made_by_nodes = {n for b in branch.nodes for n in b.outputs if n}
        read_inside = {n for b in branch.nodes for n in b.free_names}
        renames: dict[str, str] = {}
        constants: dict[str, Any] = {}
        for inner, outer in zip(branch.output_names, bound.outputs):
            if not outer:
                continue
            if inner in made_by_nodes and inner not in renames and inner not in read_inside:
                renames[inner] = outer
            elif inner in branch.constants:
                constants[outer] = branch.constants[inner]
            elif inner in self.constants:
                constants[outer] = self.constants[inner]
            else:
                return None
        self.constants.update(branch.constants)
        self.constants.update(constants)
        self.folded_from.update(branch.folded_from)
        inlined = []
        for inner in branch.nodes:  # an unnamed node is named after the If (its "#index" is the branch's)
            name = None if inner.node.name else f"{bound.name}/{taken}#{inner.index}"
            touched = renames.keys() & {*inner.inputs, *inner.outputs}
            inlined.append(inner.renamed(renames, name) if touched or name is not None else inner)
        return inlined

    def _find_free_names(self) -> tuple[str, ...]:
        """The values this graph reads that it does not define (its inputs, constants, node outputs)."""
        defined = set(self.input_names) | set(self.constants) | {""}
        free: dict[str, None] = {}
        for bound in self.nodes:
            free.update((n, None) for n in bound.reads if n not in defined)
            defined.update(bound.outputs)
        free.update((n, None) for n in self.output_names if n not in defined)
        return tuple(free)

    def _compute_dead_after(self) -> list[tuple[str, ...]]:
        """Per node, the intermediates no later node (nor the graph output) needs: freed after it runs."""
        last: dict[str, int] = {}
        for step, bound in enumerate(self.nodes):
            for name in bound.reads:
                if name not in self.constants:
                    last[name] = step
            for name in bound.outputs:  # an output nobody reads dies where it is made
                if name and name not in last:
                    last[name] = step
        keep = set(self.output_names)
        dead: list[list[str]] = [[] for _ in self.nodes]
        for name, step in last.items():
            if name not in keep:
                dead[step].append(name)
        return [tuple(names) for names in dead]


@dataclass(frozen=True, slots=True)
class _Step:
    """One node as ``BoundGraph._run_steps`` runs it."""

    bound: BoundNode
    inputs: tuple[str, ...]
    #: the node's kernel taking its inputs alone; ``None`` for a node with subgraphs (run by ``bound.call``)
    kernel: Callable[..., Any] | None
    #: the op's in-place form (attributes bound), when the node's first input dies at this node
    inplace: Callable[..., Any] | None
    #: the name of the node's only output, ``None`` when it has several
    output: str | None
    #: the values no later node reads, freed after this one
    dead: tuple[str, ...]
    #: the in-place ops run after ``bound`` in this step, on its result (see ``BoundGraph._compile_steps``)
    tails: tuple[BoundNode, ...] = ()

    @property
    def where(self) -> str:
        return self.bound.where + (f" (run with {', '.join(t.where for t in self.tails)})" if self.tails else "")


def _chained(head: Callable[..., Any], arity: int,
             tails: Sequence[tuple[Callable[..., Any], Callable[..., Any], int]]) -> Callable[..., Any]:
    """A kernel running ``head`` on its first ``arity`` arguments, then each tail (kernel, in-place form,
    number of other inputs) on the result and its next arguments: in place when no one else holds
    the result (``head`` may return a view of an input)."""
    def chained(*args: Any) -> Any:
        result = head(*args[:arity])
        if type(result) is tuple:
            result = result[0]
        at = arity
        for kernel, inplace, count in tails:
            # held by this frame and getrefcount's argument only
            if type(result) is np.ndarray and sys.getrefcount(result) == 2 and result.flags.writeable and (
                    result.base is None or _sole_base(result.base)):
                result = inplace(result, *args[at : at + count])
            else:
                result = kernel(result, *args[at : at + count])
            at += count
        return result

    return chained


def _gated_form(bound: BoundNode) -> Callable[..., Any]:
    """The node's gated form (see ``OpSet.op``) with its attributes bound."""
    assert bound.impl.gated is not None
    return functools.partial(bound.impl.gated, **bound._kwargs)


def _over_copy(form: Callable[..., Any]) -> Callable[[Any], Any]:
    """A unary form that writes over its argument, run on a copy of it (in its memory layout)."""
    def over_copy(x: Any) -> Any:
        return form(np.copy(x, order="K") if isinstance(x, np.ndarray) else x)

    return over_copy


def _sole_base(base: Any) -> bool:
    """Whether ``base``, the base of an array, owns its memory and is held by that array alone."""
    # the array's reference, this frame's and getrefcount's argument
    return type(base) is np.ndarray and base.base is None and sys.getrefcount(base) == 3


def _static_shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, np.ndarray) else None


class NumpyModule:
    """An ONNX model ready to run as numpy.

    Build it with ``load_model``. Calling it with one value per graph input (an array; a list of
    arrays for a sequence input; ``None`` or the value for an optional one; a dict for a map, a
    list of dicts for a sequence of maps) returns one value, or a tuple when the graph has several
    outputs (a ZipMap output is a list of dicts, as onnxruntime gives it).
    """

    def __init__(self, model: onnx.ModelProto, registry: OpRegistry | None = None) -> None:
        """Check, shape-infer, bind and constant-fold ``model`` (as returned by ``read_model``).

        Raises:
            ModelLoadError: the ONNX checker or shape inference rejects the model, an op's load-time
                check rejects a node, a tensor or attribute is inconsistent, or a graph input or
                output is neither a tensor, a sequence, an optional nor a map (of integer or string
                keys to tensors); the message names the node or tensor.
            UnsupportedOpError: one error listing every op no installed plugin provides.
            OutOfMemoryError: a constant or folded value does not fit in memory.
        """
        self.registry = registry if registry is not None else get_registry()
        try:
            self._load(model)
        except CmlError:
            raise
        except MemoryError as exc:
            raise OutOfMemoryError(f"loading the model ran out of memory: {exc}; a constant is too large") from exc

    def _load(self, model: onnx.ModelProto) -> None:
        if model.graph.sparse_initializer:  # built by hand rather than by read_model: make it dense first
            model = read_model(model)
        # graph inputs and outputs as declared, read first: a wrong one is named better here than by inference
        constant_names = {init.name for init in model.graph.initializer}
        self.inputs = [tensor_spec(vi, "graph input") for vi in model.graph.input if vi.name not in constant_names]
        self.outputs = [tensor_spec(vi, "graph output") for vi in model.graph.output]
        self.onnx_model = _prepare(model)
        self.opsets = _opsets(self.onnx_model)
        self._check_opsets()
        binding = _Binding(self.registry, self.opsets, Counter())
        self.graph = BoundGraph(self.onnx_model.graph, binding, {})
        if binding.missing:
            raise _missing_ops_error(binding.missing, self.registry)
        graph = self.onnx_model.graph
        #: values of the main graph known (declared or inferred) to be sequences, optionals or maps: name -> kind
        kinds = {"sequence_type": "a sequence", "optional_type": "an optional", "map_type": "a map"}
        self.value_kinds = {vi.name: kinds[kind] for vi in [*graph.input, *graph.value_info, *graph.output]
                            if (kind := vi.type.WhichOneof("value")) in kinds}
        self._producers = {name: bound.where for bound in self.nodes for name in bound.outputs if name}

    @property
    def nodes(self) -> list[BoundNode]:
        """The main graph's nodes left to run at call time (constant ones are folded), in order."""
        return self.graph.nodes

    @property
    def constants(self) -> dict[str, Any]:
        """Values known at load (initializers and folded results) that the nodes or outputs read."""
        return self.graph.constants

    @property
    def folded_from(self) -> dict[str, tuple[BoundNode, list[Any], int]]:
        return self.graph.folded_from

    # -- public ---------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def __call__(self, *inputs: Any) -> Any:
        """Run the model. Returns one value, or a tuple when the graph has several outputs.

        Raises:
            InputError: wrong number of inputs, or an input whose rank, dims or values do not fit
                the graph's declaration (see ``check_inputs``).
            NodeExecutionError: an op failed; the message names the node.
            OutOfMemoryError: a node ran out of memory; the message names it.
        """
        outs = self._evaluate(inputs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run(self, *inputs: Any, keep_intermediates: bool = False,
            observe: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
        """Evaluate the graph; returns tensor name -> value for the outputs (or every tensor).

        ``observe(name, value)``, when given, is called with each tensor a node produces as soon as
        it is produced (before tensors no later node needs are freed).

        Raises:
            InputError, NodeExecutionError, OutOfMemoryError: as for calling the module.
        """
        if not keep_intermediates and observe is None:
            return dict(zip(self.output_names, self._evaluate(inputs)))
        env: dict[str, Any] = dict(self.constants)
        env.update(zip(self.input_names, self.check_inputs(inputs)))
        self.graph.execute(env, keep_intermediates, observe)
        if keep_intermediates:
            env.pop("", None)
            return env
        return dict(zip(self.output_names, self._contiguous_outputs(env)))

    def _evaluate(self, inputs: Sequence[Any]) -> list[Any]:
        """The graph's outputs for ``inputs``, in order (``run`` without observing)."""
        env: dict[str, Any] = dict(self.graph.constants)
        env.update(zip([s.name for s in self.inputs], check_input_arrays(self.inputs, inputs)))
        self.graph.execute(env)
        return self._contiguous_outputs(env)

    def _contiguous_outputs(self, env: dict[str, Any]) -> list[Any]:
        """The outputs in ``env``: an op may return a view with another memory layout, and outputs are handed
        over C-contiguous."""
        outputs = []
        for spec in self.outputs:
            try:
                outputs.append(_contiguous(env[spec.name]))
            except MemoryError as exc:
                name = spec.name
                made_by = self._producers.get(name, "a graph input or constant")
                raise OutOfMemoryError(
                    f"output {name!r} (made by {made_by}, shape {_shapes([env[name]])[0]}) does not fit in memory "
                    "once copied to a contiguous array; run a smaller batch (fewer samples per call)"
                ) from exc
        return outputs

    def check_inputs(self, inputs: Sequence[Any]) -> list[Any]:
        """Validate call-time inputs against the graph inputs and cast them to the declared dtype.

        Any real number type converts to a float input (rounded to its precision, as a cast
        does); integers and booleans convert to an integer input only when every value fits its range; floats to an integer
        input only when every value is a whole number in range (``3.0`` for int8, never ``1.5``,
        ``300``, NaN or infinity). A symbolic dimension named by several axes (``"N"`` in two
        inputs) must have one size in the call. A sequence input takes a list (or tuple) of
        arrays, each checked like a tensor input of the element type and rank; an optional input
        takes ``None`` or its value; a map input takes a dict whose keys are ints (in the range
        of the key type) or strs, as the model declares, and whose values are single values,
        each checked like a tensor input of the value type.

        Returns:
            One value per graph input: an array of the declared dtype, a list of them, a dict, or
            ``None``.

        Raises:
            InputError: naming the input and what is wrong: count, rank, a fixed or shared
                dimension, a dtype that cannot be converted, a value out of range, nested lists
                that are not rectangular, a sequence input that is not a list, a map input that is
                not a dict, or a map key of the wrong type or out of range.
        """
        return check_input_arrays(self.inputs, inputs)

    def quantize(self, calibration_data: Any, n_bits: Any = 8, **options: Any) -> QuantizedModule:
        """Calibrate on ``calibration_data`` and return an integer-only ``QuantizedModule``.

        See ``cml_core.quantization.quantize_module`` for the options.
        """
        from .quantization.module import quantize_module

        return quantize_module(self, calibration_data, n_bits=n_bits, **options)

    def __repr__(self) -> str:
        return f"NumpyModule(inputs={self.input_names}, outputs={self.output_names}, nodes={len(self.nodes)})"

    # -- loading --------------------------------------------------------------------------------
    def _check_opsets(self) -> None:
        newest = onnx.defs.onnx_opset_version()
        default = self.opsets.get("")
        if default is not None and default > newest:
            raise ModelLoadError(
                f"the model uses ONNX opset {default}, newer than the {newest} the installed onnx "
                f"{onnx.__version__} defines; upgrade onnx or export the model at opset {newest} or below"
            )


def _contiguous(value: Any) -> Any:
    if isinstance(value, np.ndarray) and not value.flags.c_contiguous:
        return np.ascontiguousarray(value)
    if isinstance(value, list):
        return [_contiguous(v) for v in value]
    return value


def _shapes(values: Sequence[Any]) -> list[Any]:
    return [[_shapes([e])[0] for e in v] if isinstance(v, list) else f"map of {len(v)}" if isinstance(v, dict)
            else getattr(v, "shape", None) for v in values]


def tensor_spec(vi: onnx.ValueInfoProto, role: str) -> TensorSpec:
    """The ``TensorSpec`` of a graph input or output (``role`` names which, for messages).

    Raises:
        ModelLoadError: the value is not a tensor, a sequence, an optional or a map of tensors, or its
            element type is undefined or unknown.
    """
    what = f"{role} {vi.name!r}"
    containers, dtype, shape = value_info_type(vi, what)
    return TensorSpec(vi.name, dtype, shape, containers, value_info_map_key(vi, what))


def check_input_arrays(specs: Sequence[TensorSpec], inputs: Sequence[Any]) -> list[Any]:
    """``inputs`` checked against the graph inputs ``specs`` and cast (see ``NumpyModule.check_inputs``)."""
    if len(inputs) != len(specs):
        raise InputError(
            f"the model takes {len(specs)} input(s) {[s.name for s in specs]}, got {len(inputs)}"
        )
    checked = []
    sizes: dict[str, tuple[str, int, int]] = {}  # symbolic dim -> (input, axis, size) where first seen
    for spec, value in zip(specs, inputs):
        if spec.containers:
            checked.append(_structured_input(spec, value, spec.containers))
            continue
        arr = _input_array(spec, value)
        _check_shape(spec, arr, sizes)
        checked.append(arr)
    return checked


def _structured_input(spec: TensorSpec, value: Any, containers: tuple[str, ...]) -> Any:
    """A sequence input as a list of checked values, an optional one as ``None`` or its checked value,
    a map as a dict of checked keys and values."""
    if not containers:
        element = dataclasses.replace(spec, containers=())
        arr = _input_array(element, value)
        _check_shape(element, arr, None)
        return arr
    if containers[0] == "optional":
        return None if value is None else _structured_input(spec, value, containers[1:])
    if containers[0] == "map":
        return _map_input(spec, value)
    if not isinstance(value, (list, tuple)):
        got = "None" if value is None else type(value).__name__
        items = "dicts" if containers[1:] == ("map",) else "arrays"
        raise InputError(f"input {spec.name!r} is a {spec.describe()}: pass a list of {items}, got {got}")
    return [_structured_input(dataclasses.replace(spec, name=f"{spec.name}[{i}]", containers=containers[1:]), item,
                              containers[1:]) for i, item in enumerate(value)]


def _map_input(spec: TensorSpec, value: Any) -> dict[Any, Any]:
    """A map input as a dict whose keys are Python ints or strs and whose values have the declared
    dtype (a numpy scalar, a str for strings, an array when the values' shape is declared non-scalar)."""
    if not isinstance(value, Mapping):
        got = "None" if value is None else type(value).__name__
        raise InputError(f"input {spec.name!r} is a {spec.describe()}: pass a dict, got {got}")
    element = dataclasses.replace(spec, containers=())
    checked: dict[Any, Any] = {}
    for key, item in value.items():
        checked_key = _map_key(spec, key)
        at = dataclasses.replace(element, name=f'{spec.name}["{key}"]' if isinstance(key, str) else f"{spec.name}[{key}]")
        arr = _input_array(at, item)
        if spec.shape is None and arr.ndim:
            raise InputError(f"input {at.name!r}: the values of a {spec.describe()} are single values, got shape "
                             f"{arr.shape}")
        _check_shape(at, arr, None)
        checked[checked_key] = arr[()] if arr.ndim == 0 else arr
    return checked


def _map_key(spec: TensorSpec, key: Any) -> Any:
    """A map input's key as a Python str (string keys) or int (integer keys, within the key dtype's range)."""
    key_dtype = spec.key_dtype
    where = f"input {spec.name!r} ({spec.describe()})"
    if key_dtype is None or key_dtype.kind == "O":
        if not isinstance(key, str):
            raise InputError(f"{where} has string keys, got the key {key!r} ({type(key).__name__})")
        return str(key)
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
        raise InputError(f"{where} has {key_dtype} keys, got the key {key!r} ({type(key).__name__})")
    info = np.iinfo(key_dtype)
    if not info.min <= int(key) <= info.max:
        raise InputError(f"{where} got the key {key}, outside the {key_dtype} range [{info.min}, {info.max}]")
    return int(key)


def _check_shape(spec: TensorSpec, arr: NDArray[Any], sizes: dict[str, tuple[str, int, int]] | None) -> None:
    """Refuse an array whose rank or fixed dims differ from ``spec``'s; symbolic dims shared by several
    inputs must agree (``sizes`` remembers them; ``None`` for a sequence's elements, which may differ)."""
    if spec.shape is None:
        return
    if arr.ndim != len(spec.shape):
        raise InputError(
            f"input {spec.name!r} must have rank {len(spec.shape)} (shape {_fmt(spec.shape)}), "
            f"got shape {arr.shape}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
        if isinstance(want, int) and want != got:
            raise InputError(
                f"input {spec.name!r} must have shape {_fmt(spec.shape)}, got {arr.shape} "
                f"(axis {axis}: expected {want})"
            )
        if isinstance(want, str) and want and sizes is not None:
            first, first_axis, size = sizes.setdefault(want, (spec.name, axis, got))
            if size != got:
                raise InputError(
                    f"inputs {first!r} and {spec.name!r} share dimension {want!r}, which must have one "
                    f"size: {first!r} has {want}={size} (axis {first_axis}), {spec.name!r} has "
                    f"{want}={got} (axis {axis}); give them the same size"
                )


def _input_array(spec: TensorSpec, value: Any) -> NDArray[Any]:
    """``value`` as an array of ``spec.dtype``, converted only when nothing is lost (see ``check_inputs``)."""
    try:
        arr = np.asarray(value)
    except MemoryError as exc:
        raise OutOfMemoryError(f"input {spec.name!r} does not fit in memory as an array") from exc
    except (ValueError, TypeError) as exc:  # ragged nested lists, objects numpy cannot read
        raise InputError(
            f"input {spec.name!r} is not a rectangular array of numbers ({exc}); nested lists must all have "
            f"the same length at each level"
        ) from exc
    want, have = spec.dtype, arr.dtype
    if have == want:
        return arr
    if want.kind in "iu" and have.kind in "iuf":
        _check_integer_values(spec, arr)
    elif want.kind in "iu":
        if have.kind != "b":
            raise InputError(f"input {spec.name!r} must be {want}, got {have}")
    elif not (want.kind in "fc" and have.kind in "fiub" or np.can_cast(have, want, "same_kind")):
        raise InputError(f"input {spec.name!r} must be {want}, got {have}")
    try:
        return arr.astype(want)
    except MemoryError as exc:
        raise OutOfMemoryError(f"input {spec.name!r} of shape {arr.shape} does not fit in memory as {want}") from exc


def _check_integer_values(spec: TensorSpec, arr: NDArray[Any]) -> None:
    """Refuse values an integer input cannot hold exactly: NaN, infinity, fractions, out of range."""
    info = np.iinfo(spec.dtype)
    where = f"input {spec.name!r} ({spec.dtype})"
    if arr.size == 0:
        return
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(f"{where} got {arr[bad].flat[0]}; integer inputs take finite whole numbers only")
        fractional = arr != np.round(arr)
        if fractional.any():
            raise InputError(
                f"{where} got the non-integer value {arr[fractional].flat[0]}; round the values first, or give "
                f"the input as {spec.dtype}"
            )
    low, high = arr.min(), arr.max()
    for value in (low, high):
        if not info.min <= (int(value) if arr.dtype.kind in "iu" else float(value)) <= info.max:
            raise InputError(
                f"{where} got {value}, outside its range [{info.min}, {info.max}]; scale or clip the values to fit"
            )


def _fmt(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _missing_ops_error(missing: Counter[tuple[str, str, int]], registry: OpRegistry) -> UnsupportedOpError:
    lines = []
    hints = set()
    for (domain, op_type, opset), count in sorted(missing.items()):
        name = f"{domain}::{op_type}" if domain else op_type
        have = registry.versions(domain, op_type)
        why = f"installed since-versions {have} do not cover it" if have else "no installed plugin provides it"
        line = f"  - {name} (opset {opset}, {count} node{'s' * (count > 1)}): {why}"
        hint = install_hint(domain, op_type)
        if hint and not have:
            line += f"; `{hint}` provides it"
            hints.add(hint)
        lines.append(line)
    message = f"the model uses {len(missing)} op(s) that no installed plugin supports:\n" + "\n".join(lines)
    if hints:
        message += "\nInstall the missing plugins: " + "; ".join(sorted(hints))
    return UnsupportedOpError(message, [(d, o, v, c) for (d, o, v), c in sorted(missing.items())])


#: models at least this large (serialized) are checked and shape-inferred without their large tensors'
#: bytes: protobuf cannot serialize a message over 2 GiB, and the checker and inference serialize it
SKELETON_BYTES = 2**31 - 2**24
#: tensors at least this large are set aside for that (shape tensors, which inference reads, stay)
SKELETON_TENSOR_BYTES = 2**16


def _prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model checked and shape-inferred (strictly: an inconsistent node is an error here).

    A model too large for protobuf to serialize (over 2 GiB with its weights, which external data
    allows; the checker and inference serialize it) is checked on its skeleton: its large
    initializers stand aside as typed graph inputs of the same shapes while the checker and shape
    inference run, and the inferred shapes are written into the model. ``model`` is read_model's own
    copy, so it may be changed here.

    Raises:
        ModelLoadError: the checker or shape inference rejects the model; naming each node at fault.
    """
    # the tensors' bytes decide (protobuf cannot even size, or copy, a message over 2 GiB)
    if sum(len(t.raw_data) for t in model.graph.initializer) < SKELETON_BYTES:
        return _check_and_infer(model)
    large = [t for t in model.graph.initializer if len(t.raw_data) >= SKELETON_TENSOR_BYTES]
    aside = [t.raw_data for t in large]
    for tensor in large:
        tensor.raw_data = b""
    try:  # the model without those bytes is small: its skeleton takes typed inputs in their place
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(model)
    finally:
        for tensor, data in zip(large, aside):
            tensor.raw_data = data
    del aside
    names = {t.name for t in large}
    kept = [t for t in skeleton.graph.initializer if t.name not in names]
    stand_ins = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                 for t in skeleton.graph.initializer if t.name in names]
    del skeleton.graph.initializer[:]
    skeleton.graph.initializer.extend(kept)
    skeleton.graph.input.extend(stand_ins)
    inferred = _check_and_infer(skeleton)
    graph = model.graph
    del graph.value_info[:]
    graph.value_info.extend(inferred.graph.value_info)
    del graph.output[:]
    graph.output.extend(inferred.graph.output)
    return model


def _check_and_infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError, or ValueError for a model over protobuf's 2 GiB
        raise ModelLoadError(f"the ONNX checker rejects the model: {exc}") from exc
    # unnamed nodes get the names error messages use ("#index") so that ONNX's errors name them too
    unnamed = [i for i, node in enumerate(model.graph.node) if not node.name]
    named = model
    if unnamed:
        named = onnx.ModelProto()
        named.CopyFrom(model)
        for i in unnamed:
            named.graph.node[i].name = f"#{i}"
    try:
        inferred = onnx.shape_inference.infer_shapes(named, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        # a function body that reads an attribute the node leaves at its default (MeanVarianceNormalization's
        # axes) fails onnx's inference: the same nodes with their defaults written out infer
        explicit = _with_default_attributes(named)
        try:
            inferred = onnx.shape_inference.infer_shapes(explicit, check_type=True, strict_mode=True,
                                                         data_prop=True)
        except Exception:  # noqa: BLE001  (the first error is the one to report)
            raise ModelLoadError(_inference_message(str(exc))) from exc
    except Exception:  # onnx failing for another reason: run without inferred shapes
        return model
    for i in unnamed:
        inferred.graph.node[i].ClearField("name")
    return inferred


def _with_default_attributes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose top-level nodes state every attribute their schema gives a default."""
    explicit = onnx.ModelProto()
    explicit.CopyFrom(model)
    opsets = {o.domain or "": o.version for o in model.opset_import}
    for node in explicit.graph.node:
        domain = node.domain or ""
        if domain == "ai.onnx":
            domain = ""
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
        except onnx.defs.SchemaError:
            continue
        present = {a.name for a in node.attribute}
        for name, attribute in schema.attributes.items():
            default = attribute.default_value
            if name not in present and default is not None and default.name:
                node.attribute.append(default)
    return explicit


_INFERENCE_ERROR = re.compile(r"\(op_type:([^,)]*)(?:, node name: (.*?))?\): (?:\[\w+\] )?(.*)")


def _inference_message(text: str) -> str:
    found = [f"node {name!r} ({op})" + f": {problem.strip()}" if name else f"a {op} node: {problem.strip()}"
             for op, name, problem in _INFERENCE_ERROR.findall(text)]
    detail = "\n  ".join(found) if found else text.strip()
    return (f"ONNX shape inference rejects the model:\n  {detail}\nFix the node's attributes or its input shapes "
            "and types (or re-export the model)")


def load_model(
    source: Any, registry: OpRegistry | None = None, *, base_dir: str | os.PathLike[str] | None = None
) -> NumpyModule:
    """Load an ONNX model (path, bytes or ``onnx.ModelProto``) as a ``NumpyModule``.

    The model is checked, strictly shape-inferred (an inconsistent node is an error; when onnx's
    inference fails for any other reason, the model is used without inferred shapes) and
    constant-folded; every op is resolved against the installed plugins and each node passes its op's load-time check. Tensors kept in external
    files are read from the model file's own folder, never from outside it; a model given as bytes
    or a ModelProto that has such tensors needs ``base_dir`` (the folder holding the data files).

    Returns:
        The module, ready to call.

    Raises:
        ModelLoadError: unreadable, corrupt or invalid model; opset newer than onnx knows; unsafe
            or inconsistent external data; a node whose attributes or input shapes are invalid.
        UnsupportedOpError: one error listing every op no installed plugin provides.
        OutOfMemoryError: a constant of the model does not fit in memory.
    """
    return NumpyModule(read_model(source, base_dir), registry)
