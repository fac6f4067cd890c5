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
    out_shape = output_shape(x.shape[2:], kernel_shape, strides, dilations, pads)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)], constant_values=pad_value)
    st = padded.strides
    view = as_strided(
        padded,
        shape=padded.shape[:2] + tuple(out_shape) + tuple(kernel_shape),
        strides=st[:2] + tuple(st[2 + i] * strides[i] for i in range(n)) + tuple(st[2 + i] * dilations[i] for i in range(n)),
        writeable=False,
    )
    return view


COLUMN_BUDGET = 1 << 20  # im2col elements built at once: a few samples at a time stay in cache
BATCH_LAST_MIN_BATCH = 8  # batch-last makes the batch the innermost axis of every copy: not tiny
BATCH_LAST_MAX_COLUMNS = 8192  # im2col elements per sample, so a whole batch's columns stay small


def output_shape(size, kernel_shape, strides, dilations, pads):
    """Spatial output shape of a window op with explicit pads."""
    n = len(kernel_shape)
    out = [(size[a] + pads[a] + pads[a + n] - (kernel_shape[a] - 1) * dilations[a] - 1) // strides[a] + 1
           for a in range(n)]
    if any(o <= 0 for o in out):
        padded = [size[a] + pads[a] + pads[a + n] for a in range(n)]
        raise ValueError(f"kernel {list(kernel_shape)} does not fit the padded input {padded}")
    return out


@functools.lru_cache(maxsize=256)
def _window_slices(lead, kernel_shape, out, strides, dilations):
    """Per kernel position: (index into the columns, index into the padded input).

    ``lead`` axes come before the spatial ones; any axes after them are taken whole.
    """
    whole = (slice(None),) * lead
    plan = []
    for position in itertools.product(*(range(k) for k in kernel_shape)):
        window = tuple(slice(p * d, p * d + (o - 1) * s + 1, s)
                       for p, d, o, s in zip(position, dilations, out, strides))
        plan.append((whole + position, whole + window))
    return tuple(plan)


def _im2col(source, lead, kernel_shape, out, strides, dilations, pads):
    """Columns ``(*lead axes, *kernel, *out, *trailing axes)`` of ``source``'s spatial axes.

    ``source`` has ``lead`` axes, then the spatial axes, then possibly more (the batch, when it is
    last). One strided slice copy per kernel position.
    """
    n = len(kernel_shape)
    size = source.shape[lead : lead + n]
    if any(pads):
        padded = np.zeros((*source.shape[:lead], *(size[a] + pads[a] + pads[a + n] for a in range(n)),
                           *source.shape[lead + n :]), dtype=source.dtype)
        padded[(slice(None),) * lead + tuple(slice(pads[a], pads[a] + size[a]) for a in range(n))] = source
        source = padded
    cols = np.empty((*source.shape[:lead], *kernel_shape, *out, *source.shape[lead + n :]), dtype=source.dtype)
    for target, window in _window_slices(lead, tuple(kernel_shape), tuple(out), tuple(strides), tuple(dilations)):
        cols[target] = source[window]
    return cols


def conv_nd(x, w, b=None, *, strides, pads, dilations, group):
    """ONNX Conv with explicit pads; exact for integer dtypes (used by the quantized twin).

    Many small samples (a batch of digits) are convolved batch-last: every im2col copy then moves
    rows of the whole batch and one product covers every sample; the result is an NCHW view of
    batch-last memory, which a following convolution reads without a copy. Large samples take
    per-sample im2col, a few samples at a time.
    """
    channels, out_channels = x.shape[1], w.shape[0]
    if channels % group or out_channels % group or w.shape[1] * group != channels:
        raise ValueError(f"group={group} does not divide {channels} input / {out_channels} output channels "
                         f"for weight of shape {w.shape}")
    kernel_shape = w.shape[2:]
    weight = w.reshape(group, out_channels // group, -1)  # (G, Mg, Cg*K)
    out = output_shape(x.shape[2:], kernel_shape, strides, dilations, pads)
    per_sample = channels * math.prod(kernel_shape) * math.prod(out)
    if x.shape[0] >= BATCH_LAST_MIN_BATCH and per_sample <= BATCH_LAST_MAX_COLUMNS:
        cols = _im2col(np.moveaxis(x, 0, -1), 1, kernel_shape, out, strides, dilations, pads)  # (C, *K, *out, N)
        y = np.matmul(weight, cols.reshape(group, weight.shape[2], -1)).reshape(out_channels, *out, x.shape[0])
        if b is not None:
            y += np.asarray(b, dtype=y.dtype).reshape(-1, *(1,) * (len(out) + 1))
        return np.moveaxis(y, -1, 0)
    step = max(1, COLUMN_BUDGET // max(per_sample, 1))
    parts = []
    for i in range(0, max(x.shape[0], 1), step):
        cols = _im2col(x[i : i + step], 2, kernel_shape, out, strides, dilations, pads)  # (n, C, *K, *out)
        product = np.matmul(weight, cols.reshape(cols.shape[0], group, -1, math.prod(out)))  # (n, G, Mg, P)
        parts.append(product.reshape(cols.shape[0], out_channels, *out))
    y = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if b is not None:
        y += np.asarray(b, dtype=y.dtype).reshape(-1, *(1,) * len(out))
    return y


def conv_attributes(x_shape, w_shape, auto_pad, dilations, kernel_shape, pads, strides):
    """(kernel_shape, strides, dilations, explicit pads) with ONNX defaults filled in."""
    n = len(w_shape) - 2
    kernel_shape = list(kernel_shape) if kernel_shape is not None else list(w_shape[2:])
    strides = list(strides) if strides is not None else [1] * n
    dilations = list(dilations) if dilations is not None else [1] * n
    pads = resolve_pads(auto_pad, x_shape[2:], kernel_shape, strides, dilations, pads)
    return kernel_shape, strides, dilations, pads


AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def check_conv(inputs, attributes):
    """Load-time check of a Conv node: what ONNX's schema cannot say about attributes and weight."""
    x, w, b = (list(inputs) + [None, None])[:3]
    if attributes["auto_pad"] not in AUTO_PADS:
        raise ValueError(f"auto_pad={attributes['auto_pad']!r} is not one of {list(AUTO_PADS)}")
    group = attributes["group"]
    if group < 1:
        raise ValueError(f"group={group} must be at least 1")
    for name, low in (("dilations", 1), ("strides", 1), ("pads", 0)):
        values = attributes[name]
        if values is not None and any(v < low for v in values):
            raise ValueError(f"{name}={list(values)} must hold values of at least {low}")
    w_shape = w.shape if w is not None else None
    if w_shape is None or None in w_shape:
        return
    if len(w_shape) < 3:
        raise ValueError(f"the weight must have shape (M, C/group, *kernel), got {w_shape}")
    n = len(w_shape) - 2
    for name in ("dilations", "strides", "pads", "kernel_shape"):
        values = attributes[name]
        want = 2 * n if name == "pads" else n
        if values is not None and len(values) != want:
            raise ValueError(f"{name}={list(values)} must hold {want} values for the weight's {n}-D kernel")
    kernel_shape = attributes["kernel_shape"]
    if kernel_shape is not None and list(kernel_shape) != list(w_shape[2:]):
        raise ValueError(f"kernel_shape={list(kernel_shape)} disagrees with the weight's kernel {list(w_shape[2:])} "
                         f"(weight shape {w_shape}); drop the attribute or fix it")
    if w_shape[0] % group:
        raise ValueError(f"group={group} does not divide the weight's {w_shape[0]} output channels")
    channels = x.shape[1] if x is not None and x.shape is not None and len(x.shape) > 1 else None
    if channels is not None and channels != w_shape[1] * group:
        raise ValueError(f"the input has {channels} channels but weight {w_shape} with group={group} "
                         f"expects {w_shape[1] * group}")
    if b is not None and b.shape is not None and tuple(b.shape) not in ((w_shape[0],), (None,)):
        raise ValueError(f"the bias must have shape ({w_shape[0]},), got {b.shape}")
