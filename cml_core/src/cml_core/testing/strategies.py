"""Hypothesis strategies for op inputs, and the ``OpCase`` record tying an op to its strategy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray


@dataclass
class Example:
    """One drawn test case of an op: its inputs, attributes and which inputs are initializers.

    An input is an array, ``None`` (omitted), a list of arrays (a sequence) or an
    ``OptionalInput``; attributes may hold subgraphs (``onnx.GraphProto``).
    """

    inputs: list[Any]
    attributes: dict[str, Any] = field(default_factory=dict)
    constant_inputs: tuple[int, ...] = ()
    n_outputs: int = 1


@dataclass
class OpCase:
    """How to test one op: ``examples(opset)`` returns a strategy of ``Example``.

    ``domain`` is the op's ONNX domain. ``quantizable(opset)``, when given, returns the examples
    the op's quantized twin can be compared on: encrypted (non-constant) inputs float and finite,
    inside the op's domain even after quantization moves them by half a step, one output, and a
    non-empty finite result. Give it when many of ``examples`` fall outside that (integer dtypes,
    NaN inputs, empty slices, values outside the domain), so the quantized tests draw valid cases
    instead of filtering most of them out.
    """

    op_type: str
    examples: Callable[[int], st.SearchStrategy[Example]]
    domain: str = ""
    quantizable: Callable[[int], st.SearchStrategy[Example]] | None = None

    def quantizable_examples(self, opset: int) -> st.SearchStrategy[Example]:
        """``quantizable(opset)`` when the case has one, else ``examples(opset)``."""
        return (self.quantizable or self.examples)(opset)


def shapes(min_dims: int = 0, max_dims: int = 4, min_side: int = 1, max_side: int = 5) -> st.SearchStrategy[tuple[int, ...]]:
    """Array shapes with bounded rank and sides (small, so examples stay fast)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(n: int = 2, min_dims: int = 0, max_dims: int = 4, max_side: int = 5) -> st.SearchStrategy[tuple[tuple[int, ...], ...]]:
    """``n`` shapes that broadcast together (numpy/ONNX multidirectional broadcasting)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=n, min_dims=min_dims, max_dims=max_dims, max_side=max_side
    ).map(lambda s: s.input_shapes)


_WIDTHS: dict[int, Literal[16, 32, 64]] = {2: 16, 4: 32, 8: 64}


def float_arrays(
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
    dtype: Any = np.float32,
    min_value: float = -10.0,
    max_value: float = 10.0,
) -> st.SearchStrategy[NDArray[Any]]:
    """Finite float arrays in ``[min_value, max_value]``, no subnormals."""
    kind = np.dtype(dtype).type
    return hnp.arrays(
        np.dtype(dtype),
        shapes() if shape is None else shape,
        elements=st.floats(float(kind(min_value)), float(kind(max_value)), width=_WIDTHS[np.dtype(dtype).itemsize],
                           allow_subnormal=False, allow_nan=False, allow_infinity=False),
    )


def float32s(min_value: float, max_value: float) -> st.SearchStrategy[float]:
    """Floats representable in float32 (as ONNX float attributes are) within the bounds."""
    low, high = float(np.float32(min_value)), float(np.float32(max_value))
    if low < min_value:
        low = float(np.nextafter(np.float32(low), np.float32(np.inf)))
    if high > max_value:
        high = float(np.nextafter(np.float32(high), np.float32(-np.inf)))
    return st.floats(low, high, width=32, allow_subnormal=False)


def int_arrays(shape: Any = None, dtype: Any = np.int64, min_value: int = -50, max_value: int = 50) -> st.SearchStrategy[NDArray[Any]]:
    """Integer arrays in ``[min_value, max_value]``."""
    return hnp.arrays(np.dtype(dtype), shapes() if shape is None else shape,
                      elements=st.integers(min_value, max_value))


def bool_arrays(shape: Any = None) -> st.SearchStrategy[NDArray[Any]]:
    return hnp.arrays(np.bool_, shapes() if shape is None else shape)


def one_of_dtypes(dtypes: Sequence[Any]) -> st.SearchStrategy[np.dtype[Any]]:
    return st.sampled_from([np.dtype(d) for d in dtypes])
