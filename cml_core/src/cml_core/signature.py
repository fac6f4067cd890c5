"""Read an op implementation's Python signature as its ONNX contract.

Parameters before ``/`` are required inputs, parameters between ``/`` and ``*`` are optional inputs
(default ``None``), ``*inputs`` is a variadic input, and keyword-only parameters after ``*`` are
attributes carrying their ONNX names and defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import OpSignatureError

REQUIRED = inspect.Parameter.empty
#: keyword-only parameters the core fills from the node itself rather than from an attribute
CONTEXT_PARAMETERS = {"_num_outputs": "number of outputs the node declares"}


@dataclass(frozen=True)
class OpSignature:
    """Inputs and attributes of an op, as read from its numpy implementation."""

    required_inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...]
    variadic_input: str | None
    attributes: dict[str, Any]  # name -> default (``REQUIRED`` when the attribute has no default)
    context: tuple[str, ...] = ()  # context parameters the implementation asks for (CONTEXT_PARAMETERS)

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the fixed (non-variadic) inputs, required first."""
        return self.required_inputs + self.optional_inputs

    @property
    def min_inputs(self) -> int:
        """Least number of inputs a node must give."""
        return len(self.required_inputs) + (1 if self.variadic_input else 0)

    @property
    def max_inputs(self) -> int | None:
        """Most inputs a node may give, ``None`` when unbounded (variadic)."""
        return None if self.variadic_input else len(self.input_names)

    @classmethod
    def of(cls, function: Callable[..., Any]) -> OpSignature:
        """Parse ``function``'s signature.

        Raises:
            OpSignatureError: a parameter kind does not fit the contract (``**kwargs``, an
                optional input without a ``None`` default, an input after a variadic input).
        """
        required: list[str] = []
        optional: list[str] = []
        variadic: str | None = None
        attributes: dict[str, Any] = {}
        name = getattr(function, "__qualname__", repr(function))
        for param in inspect.signature(function).parameters.values():
            kind = param.kind
            if kind is inspect.Parameter.POSITIONAL_ONLY:
                if param.default is not REQUIRED:
                    if param.default is not None:
                        raise OpSignatureError(f"{name}: optional input {param.name!r} must default to None")
                    optional.append(param.name)
                elif optional:
                    raise OpSignatureError(f"{name}: required input {param.name!r} follows optional inputs")
                else:
                    required.append(param.name)
            elif kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
                if param.default is not None:
                    raise OpSignatureError(
                        f"{name}: {param.name!r} sits between '/' and '*', so it is an optional input "
                        "and must default to None; put required inputs before '/' and attributes after '*'"
                    )
                optional.append(param.name)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if optional:
                    raise OpSignatureError(f"{name}: a variadic input cannot follow optional inputs")
                variadic = param.name
            elif kind is inspect.Parameter.KEYWORD_ONLY:
                if param.name in CONTEXT_PARAMETERS:
                    continue
                if param.name.startswith("_"):
                    raise OpSignatureError(
                        f"{name}: unknown context parameter {param.name!r}; known: {sorted(CONTEXT_PARAMETERS)}"
                    )
                attributes[param.name] = param.default
            else:
                raise OpSignatureError(f"{name}: **{param.name} is not allowed; list every attribute by name")
        context = tuple(p for p in inspect.signature(function).parameters if p in CONTEXT_PARAMETERS)
        return cls(tuple(required), tuple(optional), variadic, attributes, context)

    def bind(
        self, inputs: list[Any], attributes: dict[str, Any], *, where: str
    ) -> tuple[list[Any], dict[str, Any]]:
        """Return (positional args, keyword args) to call the implementation with.

        ``inputs`` holds one entry per node input, ``None`` for an omitted optional one.

        Raises:
            OpSignatureError: too few/many inputs, an unknown attribute or a missing required one;
                the message starts with ``where`` (the node and its op).
        """
        n = len(inputs)
        if n < len(self.required_inputs) or any(x is None for x in inputs[: len(self.required_inputs)]):
            raise OpSignatureError(
                f"{where}: needs inputs {list(self.required_inputs)}, got {n} input(s)"
            )
        limit = self.max_inputs
        if limit is not None and n > limit:
            raise OpSignatureError(f"{where}: takes at most {limit} inputs {list(self.input_names)}, got {n}")
        unknown = sorted(set(attributes) - set(self.attributes))
        if unknown:
            raise OpSignatureError(
                f"{where}: unsupported attribute(s) {unknown}; supported: {sorted(self.attributes)}"
            )
        missing = [k for k, d in self.attributes.items() if d is REQUIRED and k not in attributes]
        if missing:
            raise OpSignatureError(f"{where}: required attribute(s) {missing} not set")
        if self.variadic_input is None:
            # trailing omitted optionals are simply not passed; keep positions for earlier ones
            args = list(inputs)
            while args and args[-1] is None and len(args) > len(self.required_inputs):
                args.pop()
        else:
            args = list(inputs)
        return args, dict(attributes)


@dataclass(frozen=True)
class StaticInput:
    """What is known of a node input when the model is loaded, before any call.

    ``shape`` holds one entry per axis (an int when fixed, ``None`` when it depends on the call) or
    is ``None`` when even the rank is unknown; ``value`` is the array when the input is an
    initializer (checks run before constant folding: the output of a ``Constant`` node has ``None``).
    """

    shape: tuple[int | None, ...] | None
    value: np.ndarray[Any, Any] | None = None


#: A load-time check an op may declare next to its implementation (``OpSet.op(..., validate=...)``).
#: It is called once per node with one ``StaticInput`` per node input (``None`` for an omitted
#: optional one) and the node's attributes, defaults filled in. It raises ``ValueError`` with a
#: message saying which value is wrong and what is allowed; the core adds the node's name.
Validator = Callable[[Sequence[StaticInput | None], dict[str, Any]], None]

#: A load-time preparation an op may declare (``OpSet.op(..., prepare=...)``): called once per node after
#: constant folding, with one ``StaticInput`` per node input (constants hold their value) and the node's
#: attributes, defaults filled in. It returns a kernel that computes what the implementation computes for
#: this node, or ``None`` to keep the implementation. The interpreter calls the kernel with the node's
#: inputs alone (positionally, attributes bound) when it runs the graph, the constant inputs being the
#: values it was prepared from: what depends only on them and the attributes (a weight's layout, a
#: convolution's algorithm) is then done once, not at every call.
Preparer = Callable[[Sequence[StaticInput | None], dict[str, Any]], Callable[..., Any] | None]


class Subgraph(Protocol):
    """What an implementation receives for a GRAPH attribute (If's branches, Loop's and Scan's body).

    The interpreter binds the subgraph at load, like the main graph, and hands it over with the
    outer-scope values it reads. Declare the attribute as a required keyword-only parameter
    (``*, body: Subgraph``). Calling it with one value per subgraph input (arrays, lists for
    sequences, ``None`` for an empty optional) runs it and returns its outputs as a tuple.
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    #: per output, the element dtype and shape the subgraph declares (``None`` where it does not)
    output_types: tuple[tuple[np.dtype[Any] | None, tuple[int | str | None, ...] | None], ...]

    def __call__(self, *inputs: Any) -> tuple[Any, ...]: ...
