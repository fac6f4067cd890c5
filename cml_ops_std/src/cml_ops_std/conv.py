"""N-dimensional convolution with full ONNX semantics, exact on integers too."""

from __future__ import annotations

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


def conv_nd(x, w, b=None, *, strides, pads, dilations, group):
    """ONNX Conv with explicit pads; exact for integer dtypes (used by the quantized twin)."""
    n = w.ndim - 2
    view = windows(x, w.shape[2:], strides, dilations, pads)
    channels, out_channels = x.shape[1], w.shape[0]
    if channels % group or out_channels % group or w.shape[1] * group != channels:
        raise ValueError(f"group={group} does not divide {channels} input / {out_channels} output channels "
                         f"for weight of shape {w.shape}")
    cg, mg = channels // group, out_channels // group
    kernel_axes = tuple(range(2 + n, 2 + 2 * n))
    parts = []
    for g in range(group):
        xg = view[:, g * cg : (g + 1) * cg]
        wg = w[g * mg : (g + 1) * mg]
        # contract channels and kernel positions: (N, *out, Mg)
        parts.append(np.tensordot(xg, wg, axes=((1,) + kernel_axes, (1,) + tuple(range(2, 2 + n)))))
    y = np.concatenate(parts, axis=-1) if group > 1 else parts[0]
    y = np.moveaxis(y, -1, 1)
    if b is not None:
        y = y + np.asarray(b).reshape((1, -1) + (1,) * n)
    return y


def conv_attributes(x_shape, w_shape, auto_pad, dilations, kernel_shape, pads, strides):
    """(kernel_shape, strides, dilations, explicit pads) with ONNX defaults filled in."""
    n = len(w_shape) - 2
    kernel_shape = list(kernel_shape) if kernel_shape is not None else list(w_shape[2:])
    strides = list(strides) if strides is not None else [1] * n
    dilations = list(dilations) if dilations is not None else [1] * n
    pads = resolve_pads(auto_pad, x_shape[2:], kernel_shape, strides, dilations, pads)
    return kernel_shape, strides, dilations, pads
