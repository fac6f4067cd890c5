"""N-dimensional convolution with full ONNX semantics, exact on integers too."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided


def resolve_pads(auto_pad, in_shape, kernel_shape, strides, dilations, pads):
    """Explicit pads ``[begin..., end...]`` for ``auto_pad`` (NOTSET keeps ``pads``)."""
    n = len(kernel_shape)
    if auto_pad in ("", "NOTSET"):
        return list(pads) if pads is not None else [0] * (2 * n)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    begin, end = [], []
    for size, k, s, d in zip(in_shape, kernel_shape, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def windows(x, kernel_shape, strides, dilations, pads, pad_value=0):
    """A strided view ``(N, C, *out, *kernel)`` of the padded ``x`` (no copy beyond padding)."""
    n = len(kernel_shape)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)], constant_values=pad_value)
    out_shape = [
        (padded.shape[2 + i] - (kernel_shape[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(n)
    ]
    if any(o <= 0 for o in out_shape):
        raise ValueError(f"kernel {list(kernel_shape)} does not fit the padded input {padded.shape[2:]}")
    st = padded.strides
    view = as_strided(
        padded,
        shape=padded.shape[:2] + tuple(out_shape) + tuple(kernel_shape),
        strides=st[:2] + tuple(st[2 + i] * strides[i] for i in range(n)) + tuple(st[2 + i] * dilations[i] for i in range(n)),
        writeable=False,
    )
    return view


COLUMN_BUDGET = 1 << 20  # im2col elements built at once: a few samples at a time stay in cache


def output_shape(size, kernel_shape, strides, dilations, pads):
    """Spatial output shape of a window op with explicit pads."""
    n = len(kernel_shape)
    out = [(size[a] + pads[a] + pads[a + n] - (kernel_shape[a] - 1) * dilations[a] - 1) // strides[a] + 1
           for a in range(n)]
    if any(o <= 0 for o in out):
        padded = [size[a] + pads[a] + pads[a + n] for a in range(n)]
        raise ValueError(f"kernel {list(kernel_shape)} does not fit the padded input {padded}")
    return out


def columns(x, kernel_shape, strides, dilations, pads):
    """im2col: ``(N, C, *kernel, *out)`` with zeros where a window reaches into the padding.

    Filled with one strided slice copy per kernel position, which beats gathering from a strided
    view of a padded copy.
    """
    size = x.shape[2:]
    out = output_shape(size, kernel_shape, strides, dilations, pads)
    cols = np.zeros((*x.shape[:2], *kernel_shape, *out), dtype=x.dtype)
    for position in itertools.product(*(range(k) for k in kernel_shape)):
        source, target = [slice(None)] * 2, [slice(None)] * 2 + list(position)
        for a, step in enumerate(strides):
            offset = position[a] * dilations[a] - pads[a]
            # outputs o whose input index o * step + offset lies inside the input
            first = max(0, -(offset // step))
            stop = min(out[a], (size[a] - 1 - offset) // step + 1)
            if stop <= first:
                break
            source.append(slice(first * step + offset, (stop - 1) * step + offset + 1, step))
            target.append(slice(first, stop))
        else:
            cols[tuple(target)] = x[tuple(source)]
    return cols, out


def conv_nd(x, w, b=None, *, strides, pads, dilations, group):
    """ONNX Conv with explicit pads; exact for integer dtypes (used by the quantized twin).

    Many small samples (a batch of digits) go batch-last; large ones take per-sample im2col.
    """
    channels, out_channels = x.shape[1], w.shape[0]
    if channels % group or out_channels % group or w.shape[1] * group != channels:
        raise ValueError(f"group={group} does not divide {channels} input / {out_channels} output channels "
                         f"for weight of shape {w.shape}")
    kernel_shape = w.shape[2:]
    weight = w.reshape(group, out_channels // group, -1)
    out = output_shape(x.shape[2:], kernel_shape, strides, dilations, pads)
    per_sample = channels * math.prod(kernel_shape) * math.prod(out)
    if x.shape[0] >= BATCH_LAST_MIN_BATCH and per_sample <= BATCH_LAST_MAX_COLUMNS:
        return _conv_batch_last(x, weight, b, kernel_shape, out, strides, dilations, pads)
    else:
        step = max(1, COLUMN_BUDGET // max(per_sample, 1))
        parts = []
        for i in range(0, max(x.shape[0], 1), step):
            cols, _ = columns(x[i : i + step], kernel_shape, strides, dilations, pads)
            # one batched product over (batch, group): (Mg, Cg*K) @ (Cg*K, P) -> (n, G, Mg, P), NCHW order
            cols = cols.reshape(cols.shape[0], group, -1, math.prod(out))
            parts.append(np.matmul(weight, cols).reshape(cols.shape[0], out_channels, *out))
        y = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if b is not None:
        y += np.asarray(b, dtype=y.dtype).reshape((1, -1) + (1,) * len(out))
    return y


BATCH_LAST_MIN_BATCH = 8  # the batch is the innermost axis of every copy: it must not be tiny
BATCH_LAST_MAX_COLUMNS = 8192  # im2col elements per sample, so the whole batch's columns stay small


@functools.lru_cache(maxsize=256)
def _window_slices(kernel_shape, out, strides, dilations):
    """Per kernel position: (index into the columns, index into the batch-last padded input)."""
    n = len(kernel_shape)
    plan = []
    for position in itertools.product(*(range(k) for k in kernel_shape)):
        start = [position[a] * dilations[a] for a in range(n)]
        source = (slice(None), *(slice(start[a], start[a] + (out[a] - 1) * strides[a] + 1, strides[a]) for a in range(n)))
        plan.append(((slice(None), *position), source))
    return tuple(plan)


def _conv_batch_last(x, weight, b, kernel_shape, out, strides, dilations, pads):
    """Convolution with the batch as the innermost axis.

    Every im2col copy then moves rows of a whole batch, and one product covers every sample. The
    result is an NCHW view of batch-last memory; a following convolution reads it without a copy.
    """
    n = len(kernel_shape)
    batch, channels, size = x.shape[0], x.shape[1], x.shape[2:]
    source = np.moveaxis(x, 0, -1)  # (C, *size, N)
    if any(pads):
        padded = np.zeros((channels, *(size[a] + pads[a] + pads[a + n] for a in range(n)), batch), dtype=x.dtype)
        padded[(slice(None), *(slice(pads[a], pads[a] + size[a]) for a in range(n)))] = source
        source = padded
    cols = np.empty((channels, *kernel_shape, *out, batch), dtype=x.dtype)
    for target, window in _window_slices(tuple(kernel_shape), tuple(out), tuple(strides), tuple(dilations)):
        cols[target] = source[window]
    group, per_group = weight.shape[:2]
    # (G, Mg, Cg*K) @ (G, Cg*K, P*N) -> (G, Mg, P*N) = (M, *out, N)
    y = np.matmul(weight, cols.reshape(group, weight.shape[2], -1)).reshape(group * per_group, *out, batch)
    if b is not None:
        y += np.asarray(b, dtype=y.dtype).reshape((-1,) + (1,) * (n + 1))
    return np.moveaxis(y, -1, 0)


def conv_attributes(x_shape, w_shape, auto_pad, dilations, kernel_shape, pads, strides):
    """(kernel_shape, strides, dilations, explicit pads) with ONNX defaults filled in."""
    n = len(w_shape) - 2
    kernel_shape = list(kernel_shape) if kernel_shape is not None else list(w_shape[2:])
    strides = list(strides) if strides is not None else [1] * n
    dilations = list(dilations) if dilations is not None else [1] * n
    pads = resolve_pads(auto_pad, x_shape[2:], kernel_shape, strides, dilations, pads)
    return kernel_shape, strides, dilations, pads
