"""Interpret an ONNX graph with the numpy implementations that plugins register."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx.defs
from numpy.typing import NDArray
from onnx import numpy_helper

from .errors import (
    CmlError,
    InputError,
    ModelLoadError,
    NodeExecutionError,
    OpSignatureError,
    UnsupportedOpError,
)
from .known_plugins import install_hint
from .onnx_utils import attribute_value, read_model, tensor_dtype, value_info_shape
from .plugins import get_registry
from .registry import OpImpl, OpRegistry, normalize_domain

if TYPE_CHECKING:
    from .quantization.module import QuantizedModule


@dataclass
class BoundNode:
    """A graph node with its implementation chosen and its attributes read."""

    node: onnx.NodeProto
    impl: OpImpl
    attributes: dict[str, Any]
    index: int

    @property
    def name(self) -> str:
        return self.node.name or f"#{self.index}"

    @property
    def where(self) -> str:
        """How error messages name this node."""
        return f"node {self.name!r} ({self.impl.display_name})"

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

    def call(self, values: list[Any]) -> tuple[Any, ...]:
        """Run the numpy implementation on ``values`` (``None`` for omitted inputs)."""
        out = self.impl.function(*values[: self._arity], **self._kwargs)
        if not isinstance(out, tuple):
            return (out,)
        n = len(self.outputs)
        if len(out) < n and any(self.outputs[len(out):]):
            raise NodeExecutionError(f"{self.where}: implementation returned {len(out)} outputs, node has {n}")
        return out[:n]


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, numpy dtype and declared shape (None for free dims)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | str | None, ...] | None


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {normalize_domain(o.domain): int(o.version) for o in model.opset_import}


class NumpyModule:
    """An ONNX model ready to run as numpy.

    Build it with ``load_model``. Calling it with one array per graph input returns one array, or
    a tuple of arrays when the graph has several outputs.
    """

    def __init__(self, model: onnx.ModelProto, registry: OpRegistry | None = None) -> None:
        self.registry = registry if registry is not None else get_registry()
        self.onnx_model = _prepare(model)
        graph = self.onnx_model.graph
        self.opsets = _opsets(self.onnx_model)
        self._check_opsets()
        self.constants: dict[str, NDArray[Any]] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer
        }
        self.inputs = [
            TensorSpec(vi.name, tensor_dtype(vi.type.tensor_type.elem_type), value_info_shape(vi))
            for vi in graph.input
            if vi.name not in self.constants
        ]
        self.outputs = [
            TensorSpec(vi.name, tensor_dtype(vi.type.tensor_type.elem_type), value_info_shape(vi))
            for vi in graph.output
        ]
        self.nodes = self._bind_nodes()
        self._fold_constants()
        self._dead_after = self._compute_dead_after()

    # -- public ---------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def __call__(self, *inputs: Any) -> Any:
        """Run the model. Returns one array, or a tuple when the graph has several outputs.

        Raises:
            InputError: wrong number of inputs, or an input whose rank, fixed dims or dtype do not
                match the graph's declaration.
            NodeExecutionError: an op failed; the message names the node.
        """
        values = self.run(*inputs)
        outs = tuple(values[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def run(self, *inputs: Any, keep_intermediates: bool = False) -> dict[str, NDArray[Any]]:
        """Evaluate the graph; returns tensor name -> value for the outputs (or every tensor)."""
        env: dict[str, Any] = dict(self.constants)
        env.update(zip(self.input_names, self.check_inputs(inputs)))
        env[""] = None  # omitted optional inputs
        for bound, dead in zip(self.nodes, self._dead_after):
            values = [env[name] for name in bound.inputs]
            try:
                results = bound.call(values)
            except CmlError:
                raise
            except Exception as exc:  # an op implementation failed on these values
                shapes = [getattr(v, "shape", None) for v in values]
                raise NodeExecutionError(
                    f"{bound.where} failed on inputs of shapes {shapes}: {type(exc).__name__}: {exc}"
                ) from exc
            env.update(zip(bound.outputs, results))
            if not keep_intermediates:
                for name in dead:
                    del env[name]
        if keep_intermediates:
            env.pop("", None)
            return env
        # an op may return a view with another memory layout: outputs are handed over C-contiguous
        return {name: _contiguous(env[name]) for name in self.output_names}

    def check_inputs(self, inputs: Sequence[Any]) -> list[NDArray[Any]]:
        """Validate call-time inputs against the graph inputs and cast them to the declared dtype.

        Raises:
            InputError: naming the input and what is wrong.
        """
        if len(inputs) != len(self.inputs):
            raise InputError(
                f"the model takes {len(self.inputs)} input(s) {self.input_names}, got {len(inputs)}"
            )
        checked = []
        for spec, value in zip(self.inputs, inputs):
            arr = np.asarray(value)
            if arr.dtype != spec.dtype:
                if arr.dtype.kind in "fiub" and spec.dtype.kind in "fc" or np.can_cast(arr.dtype, spec.dtype, "same_kind"):
                    arr = arr.astype(spec.dtype)
                else:
                    raise InputError(f"input {spec.name!r} must be {spec.dtype}, got {arr.dtype}")
            if spec.shape is not None:
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
            checked.append(arr)
        return checked

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

    def _bind_nodes(self) -> list[BoundNode]:
        bound: list[BoundNode] = []
        missing: Counter[tuple[str, str, int]] = Counter()
        for index, node in enumerate(self.onnx_model.graph.node):
            domain = normalize_domain(node.domain)
            opset = self.opsets.get(domain)
            if opset is None:
                raise ModelLoadError(f"node {node.name or index!r} ({node.op_type}) uses domain "
                                     f"{domain!r}, which the model does not import")
            impl = self.registry.find(domain, node.op_type, opset)
            if impl is None:
                missing[(domain, node.op_type, opset)] += 1
                continue
            where = f"node {node.name or '#' + str(index)!r} ({impl.display_name})"
            attributes = {a.name: attribute_value(a, where) for a in node.attribute}
            try:  # arity and attributes are checked here, so errors surface at load, not at first call
                bound.append(BoundNode(node, impl, attributes, index))
            except OpSignatureError as exc:
                raise ModelLoadError(str(exc)) from exc
        if missing:
            raise _missing_ops_error(missing, self.registry)
        return bound

    def _fold_constants(self) -> None:
        """Evaluate at load every node whose inputs are all constants."""
        kept = []
        for bound in self.nodes:
            names = [n for n in bound.node.input if n]
            if all(n in self.constants for n in names):
                values = [self.constants[n] if n else None for n in bound.node.input]
                try:
                    results = bound.call(values)
                except CmlError:
                    raise
                except Exception as exc:  # a constant subgraph that cannot be evaluated
                    raise ModelLoadError(f"{bound.where}: cannot fold constant inputs: {exc}") from exc
                for name, value in zip(bound.node.output, results):
                    if name:
                        self.constants[name] = np.asarray(value)
            else:
                kept.append(bound)
        self.nodes = kept
        used = {n for b in self.nodes for n in b.node.input} | set(self.output_names)
        self.constants = {k: v for k, v in self.constants.items() if k in used}

    def _compute_dead_after(self) -> list[tuple[str, ...]]:
        """Per node, the intermediates no later node (nor the graph output) needs: freed after it runs."""
        last: dict[str, int] = {}
        for step, bound in enumerate(self.nodes):
            for name in bound.inputs:
                if name and name not in self.constants:
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


def _contiguous(value: Any) -> Any:
    if isinstance(value, np.ndarray) and not value.flags.c_contiguous:
        return np.ascontiguousarray(value)
    return value


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


def _prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"the ONNX checker rejects the model: {exc}") from exc
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # shape inference is a help, not a requirement (custom domains, etc.)
        return model


def load_model(source: Any, registry: OpRegistry | None = None) -> NumpyModule:
    """Load an ONNX model (path, bytes or ``onnx.ModelProto``) as a ``NumpyModule``.

    The model is checked, shape-inferred and constant-folded; every op is resolved against the
    installed plugins.

    Raises:
        ModelLoadError: unreadable, corrupt or invalid model; opset newer than onnx knows.
        UnsupportedOpError: one error listing every op no installed plugin provides.
    """
    return NumpyModule(read_model(source), registry)
