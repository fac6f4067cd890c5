"""Integer primitives of the quantized forward, run either on numpy arrays or on FHE tracers.

Quantized ops call these instead of a backend directly, so plugins stay backend-agnostic: on numpy
arrays they compute in int64; on concrete-python tracers they emit the matching FHE operation.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray


def is_traced(value: Any) -> bool:
    """True when ``value`` is a concrete-python tracer (the forward is being compiled)."""
    module = type(value).__module__
    return module.startswith("concrete.")


def _fhe() -> Any:
    from concrete import fhe

    return fhe


def lookup(data: Any, function: Callable[[NDArray[Any]], NDArray[Any]]) -> Any:
    """Apply the element-wise integer ``function`` as one table lookup.

    ``function`` maps an int64 array (of ``data``'s shape) to an int64 array of the same shape; it
    may depend on the position (a per-element table).
    """
    if is_traced(data):
        return _fhe().univariate(function)(data)
    return function(np.asarray(data, dtype=np.int64))


#: whether multi-input lookups refresh their encrypted operands first (see ``refreshed_operands``)
_REFRESH_OPERANDS = contextvars.ContextVar("refresh_multi_lookup_operands", default=False)


@contextlib.contextmanager
def refreshed_operands() -> Iterator[None]:
    """Within this block, a traced multi-input lookup bootstraps each encrypted operand first (an identity
    lookup: one more PBS per element). Packing an operand that also feeds other ops ties their cryptographic
    parameters together; a residual stream read both by a LayerNormalization (a sum weighing it by the row
    length) and by the residual's two-input lookup left concrete-python no parameters at all, which a fresh
    copy for the lookup restores."""
    token = _REFRESH_OPERANDS.set(True)
    try:
        yield
    finally:
        _REFRESH_OPERANDS.reset(token)


def multi_lookup(function: Callable[..., NDArray[Any]], *data: Any) -> Any:
    """Apply ``function`` of several encrypted integer tensors as one lookup on their packed bits."""
    if any(is_traced(d) for d in data):
        fhe = _fhe()
        if _REFRESH_OPERANDS.get():
            data = tuple(fhe.refresh(d) if is_traced(d) else d for d in data)
        return fhe.multivariate(function)(*data)
    return function(*[np.asarray(d, dtype=np.int64) for d in data])


def quarter_square(v: NDArray[Any]) -> NDArray[Any]:
    """``floor(v * v / 4)``: for integers ``a`` and ``b``, ``a * b`` is ``quarter_square(a + b) -
    quarter_square(a - b)`` exactly (``a + b`` and ``a - b`` are both even or both odd)."""
    v = np.asarray(v, dtype=np.int64)
    return (v * v) >> 2  # type: ignore[no-any-return]


def factor_pairs(a: Any, b: Any) -> tuple[Any, Any, tuple[bool, bool]]:
    """For ``a @ b`` (numpy's broadcasting and 1-D rules): every ``a[..., i, k] + b[..., k, j]`` and
    every ``a[..., i, k] - b[..., k, j]`` as tensors of shape (..., i, k, j); and whether the
    product drops the axis numpy adds to a 1-D ``a`` and to a 1-D ``b``."""
    vector_a, vector_b = len(a.shape) == 1, len(b.shape) == 1
    a = a.reshape((1, *a.shape)) if vector_a else a
    b = b.reshape((*b.shape, 1)) if vector_b else b
    left = a.reshape((*a.shape, 1))
    right = b.reshape((*b.shape[:-2], 1, *b.shape[-2:]))
    return left + right, left - right, (vector_a, vector_b)


def matmul_by_squares(a: Any, b: Any, sum_offset: int, difference_offset: int) -> Any:
    """``a @ b`` of two integer tensors as ``sum_k quarter_square(a_ik + b_kj) - quarter_square(a_ik -
    b_kj)``: two lookups per term, on the sums and differences shifted by the given offsets (a
    constant that centres their range, taken back by the table). Exact for any integers."""
    sums, differences, (vector_a, vector_b) = factor_pairs(a, b)

    def shifted(data: Any, offset: int) -> Any:
        if not offset:
            return lookup(data, quarter_square)
        return lookup(data + offset, lambda v: quarter_square(v - offset))

    out = np.sum(shifted(sums, sum_offset) - shifted(differences, difference_offset), axis=-2)
    if vector_b:
        out = out.reshape(tuple(out.shape[:-1]))
    if vector_a:
        out = out.reshape((*out.shape[:-2], out.shape[-1]))
    return out


def broadcast(data: Any, *shapes: tuple[int, ...]) -> Any:
    """``data`` broadcast to the common shape of itself and ``shapes`` (unchanged when it has it)."""
    target = np.broadcast_shapes(tuple(data.shape), *shapes)
    if tuple(target) == tuple(data.shape):
        return data
    return np.broadcast_to(data, target)


def pad_zeros(data: Any, widths: list[tuple[int, int]]) -> Any:
    """``data`` padded with zeros, ``widths[axis] = (before, after)``."""
    if not is_traced(data):
        return np.pad(np.asarray(data), widths)
    fhe = _fhe()
    for axis, (before, after) in enumerate(widths):
        if before or after:
            blocks = []
            for count in (before, after):
                shape = list(data.shape)
                shape[axis] = count
                blocks.append(fhe.zeros(tuple(shape)) if count else None)
            data = np.concatenate(tuple(b for b in (blocks[0], data, blocks[1]) if b is not None), axis=axis)
    return data


def by_selection_matrix(data: Any, layout: Callable[[NDArray[Any]], Any]) -> Any:
    """Apply a layout function (moving/copying elements) to a traced tensor as a product with its 0/1
    selection matrix, for layouts the backend cannot trace directly. The matrix is read from the layout of
    every basis vector at once, stacked on the batch axis; a layout that reads the batch axis itself (its
    indices computed for the traced sample, as exported attention masks' GatherND) gets them one at a time."""
    sample_shape = tuple(data.shape[1:])
    size = int(np.prod(sample_shape))
    basis = np.eye(size, dtype=np.int64).reshape((size, *sample_shape))
    moved = np.asarray(layout(basis))
    if moved.shape[:1] != (size,) and data.shape[0] == 1:
        moved = np.concatenate([np.asarray(layout(basis[e : e + 1])) for e in range(size)])
    matrix = moved.reshape(size, -1)
    out = np.matmul(data.reshape((data.shape[0], size)), matrix)
    return out.reshape((data.shape[0], *moved.shape[1:]))


def round_bits(data: Any, lsbs_to_remove: int, exact: bool = True) -> Any:
    """Round ``data`` to a multiple of ``2**lsbs_to_remove`` (ties upward), keeping its scale.

    In FHE this drops the low bits before a lookup, so the lookup runs on fewer bits.
    """
    if lsbs_to_remove <= 0:
        return data
    if is_traced(data):
        fhe = _fhe()
        exactness = fhe.Exactness.EXACT if exact else fhe.Exactness.APPROXIMATE
        return fhe.round_bit_pattern(data, lsbs_to_remove=lsbs_to_remove, exactness=exactness)
    arr = np.asarray(data, dtype=np.int64)
    half = 1 << (lsbs_to_remove - 1)
    return ((arr + half) >> lsbs_to_remove) << lsbs_to_remove


def conv(
    data: Any, weight: NDArray[Any], bias: NDArray[Any] | None, *, pads: list[int], strides: list[int],
    dilations: list[int], group: int, clear_conv: Callable[..., NDArray[Any]],
) -> Any:
    """Integer convolution (ONNX Conv semantics, explicit pads).

    On numpy arrays ``clear_conv(x, w, b, strides=..., pads=..., dilations=..., group=...)``
    computes it (the plugin's own implementation, exact on int64).
    """
    if is_traced(data):
        # Convolution is linear: its matrix is the convolution of each basis vector. Run it as one
        # encrypted-by-clear matrix product (the backend's native conv does not lower here).
        sample_shape = tuple(data.shape[1:])
        size = int(np.prod(sample_shape))
        basis = np.eye(size, dtype=np.int64).reshape((size, *sample_shape))
        columns = clear_conv(basis, weight, None, strides=strides, pads=pads, dilations=dilations, group=group)
        out_shape = columns.shape[1:]
        matrix = columns.reshape(size, -1)
        flat = data.reshape((data.shape[0], size))
        out = np.matmul(flat, matrix).reshape((data.shape[0], *out_shape))
        if bias is not None:
            out = out + np.asarray(bias).reshape((1, -1) + (1,) * (len(out_shape) - 1))
        return out
    return clear_conv(np.asarray(data, dtype=np.int64), weight, bias, strides=strides, pads=pads,
                      dilations=dilations, group=group)


def _maximum_of(parts: list[Any]) -> Any:
    while len(parts) > 1:  # a balanced tree: fewer sequential encrypted maximums
        parts = [np.maximum(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def window_max(data: Any, kernel: list[int], strides: list[int], dilations: list[int],
               pads: list[int]) -> Any:
    """Maximum over pooling windows (ONNX geometry, explicit pads); pads are filled with 0, so
    ``data`` must be non-negative (unsigned quantized integers)."""
    n = len(kernel)
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)]
    padded = pad_zeros(data, widths) if any(pads) else data
    spatial = [int(s) for s in padded.shape[2:]]
    out = [(spatial[i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(n)]
    parts = []
    for offset in np.ndindex(*kernel):
        index = [slice(None), slice(None)]
        for i in range(n):
            start = offset[i] * dilations[i]
            index.append(slice(start, start + (out[i] - 1) * strides[i] + 1, strides[i]))
        parts.append(padded[tuple(index)])
    return _maximum_of(parts)


def reduce_max(data: Any, axes: tuple[int, ...]) -> Any:
    """Maximum over ``axes`` (kept with size 1), as a tree of element-wise maximums."""
    if not is_traced(data):
        return np.max(np.asarray(data), axis=axes, keepdims=True)
    parts = [data]
    for axis in axes:
        parts = [p[tuple(slice(i, i + 1) if a == axis else slice(None) for a in range(len(p.shape)))]
                 for p in parts for i in range(int(p.shape[axis]))]
    return _maximum_of(parts)


def maxpool(data: Any, *, kernel_shape: list[int], strides: list[int], pads: list[int],
            dilations: list[int], clear_maxpool: Callable[..., NDArray[Any]]) -> Any:
    """Integer max pooling; ``clear_maxpool`` computes it on numpy arrays."""
    if is_traced(data):
        return _fhe().maxpool(data, kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations)
    return clear_maxpool(np.asarray(data, dtype=np.int64), kernel_shape=kernel_shape, strides=strides,
                         pads=pads, dilations=dilations)
