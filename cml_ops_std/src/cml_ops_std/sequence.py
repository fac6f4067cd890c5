"""Sequence and optional values: Sequence*, SplitToSequence, ConcatFromSequence, Optional*.

A sequence is a Python list of arrays, an empty optional is ``None``. Ops never change a list they
are given: Loop bodies and other readers may still hold it.
"""

from __future__ import annotations

import numpy as np
from cml_core.quantization import ConstantOnlyOp
from cml_core.signature import Subgraph

from ._opset import OPS


def _sequence(value, what="the input sequence"):
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} must be a sequence (a list of tensors), got {type(value).__name__}")
    return list(value)


def _position(position, length, *, end_allowed, what="position"):
    """``position`` as an index into a sequence of ``length``: negative counts from the end; the range
    is [-length, length - 1], or [-length, length] when ``end_allowed`` (insertion)."""
    arr = np.asarray(position)
    if arr.size != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be one integer, got {arr.dtype} of shape {arr.shape}")
    index = int(arr.reshape(-1)[0])
    high = length if end_allowed else length - 1
    if not -length <= index <= high:
        raise ValueError(f"{what} {index} is outside [{-length}, {high}] for a sequence of {length} tensor(s)")
    return index + length if index < 0 else index


@OPS.op("SequenceConstruct", since=11, quantized=ConstantOnlyOp)
def sequence_construct(*inputs):
    """The sequence of the input tensors, in order."""
    dtypes = {np.asarray(x).dtype for x in inputs}
    if len(dtypes) > 1:
        raise ValueError(f"the tensors of a sequence must share one type, got {sorted(map(str, dtypes))}")
    return [np.asarray(x) for x in inputs]


@OPS.op("SequenceEmpty", since=11, quantized=ConstantOnlyOp)
def sequence_empty(*, dtype=None):
    """An empty sequence (its element type, ``dtype``, matters only to the model's type checks)."""
    return []


@OPS.op("SequenceAt", since=11, quantized=ConstantOnlyOp)
def sequence_at(input_sequence, position, /):
    """The tensor at ``position`` (negative counts from the end)."""
    items = _sequence(input_sequence)
    return items[_position(position, len(items), end_allowed=False)]


@OPS.op("SequenceInsert", since=11, quantized=ConstantOnlyOp)
def sequence_insert(input_sequence, tensor, /, position=None):
    """A new sequence with ``tensor`` inserted at ``position`` (default: at the end)."""
    items = _sequence(input_sequence)
    if items and np.asarray(tensor).dtype != np.asarray(items[0]).dtype:
        raise ValueError(f"cannot insert a {np.asarray(tensor).dtype} tensor into a sequence of "
                         f"{np.asarray(items[0]).dtype} tensors")
    index = len(items) if position is None else _position(position, len(items), end_allowed=True)
    return [*items[:index], np.asarray(tensor), *items[index:]]


@OPS.op("SequenceErase", since=11, quantized=ConstantOnlyOp)
def sequence_erase(input_sequence, /, position=None):
    """A new sequence without the tensor at ``position`` (default: the last)."""
    items = _sequence(input_sequence)
    index = _position(-1 if position is None else position, len(items), end_allowed=False)
    return items[:index] + items[index + 1:]


@OPS.op("SequenceLength", since=11, quantized=ConstantOnlyOp)
def sequence_length(input_sequence, /):
    """The number of tensors in the sequence, as an int64 scalar."""
    return np.array(len(_sequence(input_sequence)), dtype=np.int64)


@OPS.op("SplitToSequence", since=(11, 24), quantized=ConstantOnlyOp)
def split_to_sequence(input, split=None, /, *, axis=0, keepdims=1):  # noqa: A002  (the ONNX name)
    """``input`` cut along ``axis``: into pieces of one (the axis dropped unless ``keepdims``) when
    ``split`` is omitted, of ``split`` each (the last one shorter) when it is a scalar, or of the
    listed lengths when it is 1-D."""
    x = np.asarray(input)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is outside the rank {x.ndim} of the input")
    axis %= x.ndim
    length = x.shape[axis]
    if split is None:
        pieces = np.split(x, length, axis=axis) if length else []
        return [np.squeeze(p, axis=axis) for p in pieces] if not keepdims else pieces
    sizes = np.asarray(split)
    if sizes.dtype.kind not in "iu":
        raise ValueError(f"split must hold integers, got {sizes.dtype}")
    if sizes.ndim == 0:
        step = int(sizes)
        if step <= 0:
            raise ValueError(f"split {step} must be positive")
        bounds = list(range(step, length, step))
    else:
        if sizes.ndim != 1 or (sizes < 0).any() or int(sizes.sum()) != length:
            raise ValueError(f"split {sizes.tolist()} must be non-negative lengths summing to the axis' {length}")
        bounds = np.cumsum(sizes)[:-1].tolist()
    return np.split(x, bounds, axis=axis)


@OPS.op("ConcatFromSequence", since=11, quantized=ConstantOnlyOp)
def concat_from_sequence(input_sequence, /, *, axis, new_axis=0):
    """The sequence's tensors joined along ``axis`` (stacked along a new ``axis`` when ``new_axis``)."""
    items = [np.asarray(x) for x in _sequence(input_sequence)]
    if not items:
        raise ValueError("cannot concatenate an empty sequence")
    rank = items[0].ndim + (1 if new_axis else 0)
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is outside [{-rank}, {rank - 1}] for tensors of rank {items[0].ndim}")
    if new_axis:
        return np.stack(items, axis=axis % rank)
    if rank == 0:
        raise ValueError("cannot concatenate scalars without new_axis=1")
    return np.concatenate(items, axis=axis % rank)


@OPS.op("SequenceMap", since=17, quantized=ConstantOnlyOp)
def sequence_map(input_sequence, /, *additional_inputs, body: Subgraph):
    """``body`` applied to each position: the i-th tensor of ``input_sequence`` and of each additional
    sequence (an additional tensor is passed whole every time); one output sequence per body output."""
    items = _sequence(input_sequence)
    for extra in additional_inputs:
        if isinstance(extra, (list, tuple)) and len(extra) != len(items):
            raise ValueError(f"the additional sequences must have the input sequence's {len(items)} tensors, "
                             f"got one of {len(extra)}")
    outputs = [[] for _ in body.output_names]
    for i, item in enumerate(items):
        args = [extra[i] if isinstance(extra, (list, tuple)) else extra for extra in additional_inputs]
        for collected, value in zip(outputs, body(item, *args)):
            collected.append(np.asarray(value))
    return tuple(outputs)


@OPS.op("Optional", since=(15, 28), quantized=ConstantOnlyOp)
def optional(input=None, /, *, type=None):  # noqa: A002  (the ONNX names)
    """An optional holding ``input``, or an empty one (``None``) when the input is omitted."""
    return input


@OPS.op("OptionalHasElement", since=15, quantized=ConstantOnlyOp)
def optional_has_element_15(input, /):  # noqa: A002  (the ONNX name)
    """Whether the optional holds a value, as a boolean scalar."""
    return np.array(input is not None)


@OPS.op("OptionalHasElement", since=(18, 28), quantized=ConstantOnlyOp)
def optional_has_element(input=None, /):  # noqa: A002  (the ONNX name)
    """Whether the input (an optional, a tensor or a sequence; omitted means empty) holds a value."""
    return np.array(input is not None)


@OPS.op("OptionalGetElement", since=(15, 18, 28), quantized=ConstantOnlyOp)
def optional_get_element(input, /):  # noqa: A002  (the ONNX name)
    """The value the optional holds (a tensor or sequence passes through); an empty optional is an error."""
    if input is None:
        raise ValueError("the optional is empty: it holds no element to get")
    return input
