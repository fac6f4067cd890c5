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
    padded = _pad_like(x, pads, pad_value)
    st = padded.strides
    view = as_strided(
        padded,
        shape=padded.shape[:2] + tuple(out_shape) + tuple(kernel_shape),
        strides=st[:2] + tuple(st[2 + i] * strides[i] for i in range(n)) + tuple(st[2 + i] * dilations[i] for i in range(n)),
        writeable=False,
    )
    return view


def _pad_like(x, pads, value=0):
    """``x`` (N, C, *spatial) inside ``value``s, ``pads`` (begins, then ends) around its spatial axes; the
    copy keeps ``x``'s memory order (a channels-last array stays channels-last)."""
    n = len(pads) // 2
    shape = x.shape[:2] + tuple(x.shape[2 + a] + pads[a] + pads[a + n] for a in range(n))
    order = sorted(range(x.ndim), key=lambda axis: -abs(x.strides[axis])) if x.ndim else []
    padded = np.full([shape[axis] for axis in order], value, dtype=x.dtype).transpose(np.argsort(order))
    padded[(slice(None), slice(None)) + tuple(slice(pads[a], pads[a] + x.shape[2 + a]) for a in range(n))] = x
    return padded


COLUMN_BUDGET = 1 << 20  # im2col elements built at once: a few samples at a time stay in cache
#: channels-last im2col elements per product of ``_conv_channels_last``: columns that stay in the CPU's
#: cache (1 MiB of float32) keep BLAS near its peak (32 output channels of a 3x3 convolution over 32
#: channels: 123 GFLOP/s on 1024 positions at a time, 92 on 3640, 80 on 131072)
CHANNELS_LAST_COLUMNS = 1 << 18
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


def _im2col(source, lead, kernel_shape, out, strides, dilations, pads, into=None):
    """Columns ``(*lead axes, *kernel, *out, *trailing axes)`` of ``source``'s spatial axes.

    ``source`` has ``lead`` axes, then the spatial axes, then possibly more (the batch, when it is
    last). One strided slice copy per kernel position, into the array ``into`` when given (of that
    shape: a buffer reused across calls spares the page faults of fresh memory).
    """
    n = len(kernel_shape)
    size = source.shape[lead : lead + n]
    if any(pads):
        padded = np.zeros((*source.shape[:lead], *(size[a] + pads[a] + pads[a + n] for a in range(n)),
                           *source.shape[lead + n :]), dtype=source.dtype)
        padded[(slice(None),) * lead + tuple(slice(pads[a], pads[a] + size[a]) for a in range(n))] = source
        source = padded
    cols = np.empty((*source.shape[:lead], *kernel_shape, *out, *source.shape[lead + n :]), dtype=source.dtype) \
        if into is None else into
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
    if per_sample > COLUMN_BUDGET and x.shape[0] and out[0] > 1:
        y = _conv_row_bands(x, weight, kernel_shape, out, strides, dilations, pads)
    else:
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


def _conv_row_bands(x, weight, kernel_shape, out, strides, dilations, pads):
    """The convolution of samples too large for one im2col in cache: each sample's output is made a band of
    rows (first spatial axis) at a time, from the im2col of the input rows that band reads."""
    n = len(kernel_shape)
    if any(pads):
        size = x.shape[2:]
        padded = np.zeros((*x.shape[:2], *(size[a] + pads[a] + pads[a + n] for a in range(n))), dtype=x.dtype)
        padded[(slice(None), slice(None)) + tuple(slice(pads[a], pads[a] + size[a]) for a in range(n))] = x
        x = padded
    group, group_out, _ = weight.shape
    rest = math.prod(out[1:])
    per_row = x.shape[1] * math.prod(kernel_shape) * rest
    rows = max(1, min(out[0], COLUMN_BUDGET // 4 // max(per_row, 1)))
    y = np.empty((x.shape[0], group * group_out, *out), dtype=np.result_type(x, weight))
    span = (kernel_shape[0] - 1) * dilations[0] + 1
    buffer = np.empty((1, x.shape[1], *kernel_shape, rows, *out[1:]), dtype=x.dtype)
    for sample in range(x.shape[0]):
        for r0 in range(0, out[0], rows):
            r1 = min(out[0], r0 + rows)
            slab = x[sample : sample + 1, :, r0 * strides[0] : (r1 - 1) * strides[0] + span]
            into = buffer if r1 - r0 == rows else np.empty((1, x.shape[1], *kernel_shape, r1 - r0, *out[1:]), x.dtype)
            cols = _im2col(slab, 2, kernel_shape, [r1 - r0, *out[1:]], strides, dilations, [0] * (2 * n), into)
            if group == 1:
                product = np.matmul(weight[0], cols.reshape(-1, (r1 - r0) * rest))  # (M, rows * rest)
            else:
                product = np.matmul(weight, cols.reshape(group, -1, (r1 - r0) * rest))  # (G, Mg, rows * rest)
            y[sample, :, r0:r1] = product.reshape(-1, r1 - r0, *out[1:])
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


# -- prepared float kernels (the float path; the quantized twin keeps ``conv_nd``) ---------------------------

#: output columns per block of the banded products of a depthwise convolution (``_depthwise_banded``)
DEPTHWISE_BLOCK = 8
#: up to this output width, a depthwise convolution with a small kernel (3 wide) sums its taps over
#: channels-last columns instead
DEPTHWISE_NARROW = 8
#: padded input elements a depthwise convolution works on at once (a few channels, in cache)
DEPTHWISE_BUDGET = 1 << 17
#: from this many channels on, a depthwise convolution sums its taps over a channels-last window view
#: (``_depthwise_windows``): numpy's inner loop then runs over the channels, long enough to pay
DEPTHWISE_WINDOW_CHANNELS = 64
#: padded input elements ``_depthwise_windows`` copies channels-last at once (whole samples, 16 MiB of float32)
DEPTHWISE_WINDOW_BUDGET = 1 << 22


def prepare_conv(inputs, attributes):
    """Conv's load-time preparation (see ``cml_core.signature.Preparer``): a kernel for a 2-D float
    convolution whose weight (and bias) are constants; ``None`` otherwise.

    The weight is laid out once for the products each kind of convolution makes: pointwise
    convolutions are one product against the weight matrix, depthwise ones sums over a channels-last
    window view when they have many channels (``_depthwise_windows``), else per-channel banded products
    (``_depthwise_banded``) or tap sums (``_depthwise_taps``), the others (group 1) im2col products
    written channels-last (``_conv_channels_last``; many small samples keep ``conv_nd``'s batch-last
    path). Grouped convolutions keep the implementation.
    Results may be NCHW views of channels-last memory, which the next convolution reads as such.
    Geometry that depends on the input's size (auto_pad) is worked out per call.
    """
    x, w, b = (list(inputs) + [None, None])[:3]
    if w is None or w.value is None or (b is not None and b.value is None):
        return None
    weight = w.value
    if weight.ndim != 4 or weight.dtype not in (np.float32, np.float64):
        return None
    bias = None if b is None else np.asarray(b.value, dtype=weight.dtype)
    group = attributes["group"]
    out_channels, group_channels, kh, kw = weight.shape
    kernel_shape, strides, dilations, _ = conv_attributes((0, 0, 0, 0), weight.shape, "NOTSET",
                                                          attributes["dilations"], attributes["kernel_shape"],
                                                          None, attributes["strides"])
    auto_pad, pads = attributes["auto_pad"], attributes["pads"]

    def geometry(x):
        return resolve_pads(auto_pad, x.shape[2:], kernel_shape, strides, dilations, pads)

    def generic(x):
        return conv_nd(x, weight, bias, strides=strides, pads=geometry(x), dilations=dilations,
                       group=group).astype(x.dtype, copy=False)

    def fits(x):
        return x.dtype == weight.dtype and x.ndim == 4 and x.shape[1] == group_channels * group

    if group == 1 and kh == kw == 1 and auto_pad in ("", "NOTSET", "VALID") and not any(pads or ()):
        matrix = np.ascontiguousarray(weight.reshape(out_channels, group_channels))
        transposed = np.ascontiguousarray(matrix.T)

        def pointwise(x, w, b=None, /):
            if not fits(x):
                return generic(x)
            return _pointwise(x[:, :, :: strides[0], :: strides[1]] if strides != [1, 1] else x, matrix, transposed,
                              bias)

        return pointwise

    if group == 1:
        # (C * kh * kw, M) for columns read channel-first, (kh * kw * C, M) for columns read channels-last
        by_channel = np.ascontiguousarray(weight.reshape(out_channels, -1).T)
        by_position = np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(-1, out_channels))

        def convolution(x, w, b=None, /):
            if not fits(x):
                return generic(x)
            explicit = geometry(x)
            out = output_shape(x.shape[2:], kernel_shape, strides, dilations, explicit)
            if x.shape[0] >= BATCH_LAST_MIN_BATCH and x.shape[1] * kh * kw * math.prod(out) <= BATCH_LAST_MAX_COLUMNS:
                return generic(x)  # many small samples: conv_nd's batch-last products
            if strides[0] == 1 and x.shape[1] >= KERNEL_ROW_CHANNELS and channels_last(x) is None:
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # for products per kernel row
            return _conv_channels_last(x, by_channel, by_position, bias, (kh, kw), out, strides, dilations, explicit)

        return convolution

    if not (group_channels == 1 and group == out_channels):
        return None  # grouped: conv_nd's products per group
    taps = np.ascontiguousarray(weight.reshape(out_channels, kh * kw).T)  # (K, C): a tap's weights per channel
    bands: dict[int, np.ndarray] = {}  # per block width, the banded matrices of ``_depthwise_banded``

    def depthwise(x, w, b=None, /):
        if not fits(x):
            return generic(x)
        explicit = geometry(x)
        out = output_shape(x.shape[2:], kernel_shape, strides, dilations, explicit)
        if out_channels >= DEPTHWISE_WINDOW_CHANNELS:
            return _depthwise_windows(x, taps.reshape(kh, kw, -1), out, strides, dilations, explicit, bias)
        if (out[1] <= DEPTHWISE_NARROW and kw <= 3) or not np.isfinite(x.sum()):
            y = _depthwise_taps(x, taps, (kh, kw), out, strides, dilations, explicit)
        else:
            block = _block_width(out[1])
            if block not in bands:
                bands[block] = _bands(weight, block, strides[1], dilations[1])
            y = _depthwise_banded(np.ascontiguousarray(x), bands[block], (kh, kw), out, strides, dilations, explicit)
        if bias is not None:
            y += bias.reshape(-1, 1, 1)
        return y

    return depthwise


def channels_last(x):
    """``x`` (N, C, H, W) as its channels-last array (N, H, W, C) when that is how its memory is laid out
    (an NCHW view of channels-last memory), else ``None``."""
    view = x.transpose(0, 2, 3, 1)
    return view if view.flags.c_contiguous and not x.flags.c_contiguous else None


def _pointwise(x, matrix, transposed, bias):
    """A 1x1 convolution with channels-last results: ``(N*H*W, C) @ (C, M)`` for channels-last inputs,
    ``(H*W, C) @ (C, M)`` per sample (transposed operand) for NCHW ones, ``(M, C) @ (C, H*W)`` per sample
    (an NCHW result) for other layouts."""
    n, c, h, w = x.shape
    last = channels_last(x)
    if last is not None:
        y = np.matmul(last.reshape(-1, c), transposed)
        if bias is not None:
            y += bias
        return y.reshape(n, h, w, -1).transpose(0, 3, 1, 2)
    if x.flags.c_contiguous:  # as fast as the NCHW product, and what a depthwise convolution next reads best
        y = np.matmul(x.reshape(n, c, h * w).transpose(0, 2, 1), transposed)
        if bias is not None:
            y += bias
        return y.reshape(n, h, w, -1).transpose(0, 3, 1, 2)
    y = np.matmul(matrix, x.reshape(n, c, h * w))
    if bias is not None:
        y += bias.reshape(-1, 1)
    return y.reshape(n, -1, h, w)


def _conv_channels_last(x, by_channel, by_position, bias, kernel, out, strides, dilations, pads):
    """A 2-D convolution (group 1) as im2col products written channels-last: each product is
    ``columns (positions, K) @ weight (K, M)``, the orientation BLAS runs fastest when M is small, and its
    result is a block of rows of the (N, H, W, M) output. Channels-last inputs are read channels-last:
    one product per kernel row when the stride down the rows is 1 (``_conv_by_kernel_rows``; for one
    sample, or samples of at least ``KERNEL_ROW_POSITIONS`` outputs), else im2col products over several
    samples whose copies move whole runs of ``kw * C`` values; the others channel-first. Returns the
    NCHW view of the channels-last result, or an NCHW result (``_conv_channel_first``)."""
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    m = by_channel.shape[1]
    y = np.empty((n, out[0], out[1], m), dtype=x.dtype)
    last = channels_last(x)
    k = c * kh * kw
    positions = max(1, COLUMN_BUDGET // 4 // k)  # output positions per product
    if last is not None and sh == 1 and (n == 1 or out[0] * out[1] >= KERNEL_ROW_POSITIONS):
        _conv_by_kernel_rows(last, y, by_position.reshape(kh, kw * c, m), out, sw, dilations, pads)
    elif last is not None:
        # at least SHARED_WEIGHT_POSITIONS: a large weight (512 channels in and out, 9 MiB) is read from
        # memory once per product, for as many samples as fit (resnet18's last stages at batch 2)
        positions = max(SHARED_WEIGHT_POSITIONS, CHANNELS_LAST_COLUMNS // k)
        per_sample = out[0] * out[1]
        if per_sample <= positions:
            samples, rows = min(n, max(1, positions // per_sample)), out[0]
        else:  # bands of rows of one sample, as even as they can be
            samples, rows = 1, max(1, positions // out[1])
            rows = -(-out[0] // -(-out[0] // rows))
        h, w = x.shape[2:]
        # a few samples at a time inside zeros (only the interior is written), then their columns: per
        # kernel row one copy of windows over the padded rows (kw * C values each when dw == 1)
        padded = np.zeros((samples, h + pads[0] + pads[2], w + pads[1] + pads[3], c), dtype=x.dtype)
        ps = tuple(v // x.itemsize for v in padded.strides)
        buffer = np.empty((samples, rows, out[1], kh, kw * c if dw == 1 else kw, c if dw != 1 else 1), x.dtype)
        for s0 in range(0, n, samples):
            s1 = min(n, s0 + samples)
            padded[: s1 - s0, pads[0] : pads[0] + h, pads[1] : pads[1] + w] = last[s0:s1]
            for r0 in range(0, out[0], rows):
                r1 = min(out[0], r0 + rows)
                cols = buffer[: s1 - s0, : r1 - r0]
                shape = (s1 - s0, r1 - r0, out[1])
                for i in range(kh):
                    top = (r0 * sh + i * dh) * ps[1]
                    if dw == 1:  # the kernel row's taps are one run of kw * C values
                        cols[:, :, :, i, :, 0] = _strided(padded, top, (*shape, kw * c),
                                                          (ps[0], sh * ps[1], sw * ps[2], 1))
                    else:
                        for j in range(kw):
                            cols[:, :, :, i, j, :] = _strided(padded, top + j * dw * ps[2], (*shape, c),
                                                              (ps[0], sh * ps[1], sw * ps[2], 1))
                np.matmul(cols.reshape(-1, k), by_position, out=y[s0:s1, r0:r1].reshape(-1, m))
    else:
        padded = _padded(x, pads) if any(pads) else x
        per_sample = out[0] * out[1]
        rows = out[0] if per_sample <= positions else max(1, positions // out[1])
        buffer = np.empty((c, kh, kw, rows, out[1]), x.dtype)
        if m < DEPTHWISE_WINDOW_CHANNELS and n < BATCH_LAST_MIN_BATCH:
            return _conv_channel_first(padded, by_channel.T, bias, buffer, kernel, out, strides, dilations)
        for sample in range(n):
            for r0 in range(0, out[0], rows):
                r1 = min(out[0], r0 + rows)
                cols = _band_columns(padded, sample, r0, r1, buffer, kernel, out, strides, dilations)
                np.matmul(cols.reshape(k, -1).T, by_channel, out=y[sample, r0:r1].reshape(-1, m))
    if bias is not None:
        y += bias
    return y.transpose(0, 3, 1, 2)


def _band_columns(padded, sample, r0, r1, buffer, kernel, out, strides, dilations):
    """The im2col columns ``(C, kh, kw, rows, out_w)`` of output rows ``r0:r1`` of one sample of an NCHW input,
    written into ``buffer`` when the band is a whole one."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    c = padded.shape[1]
    cols = buffer if r1 - r0 == buffer.shape[3] else np.empty((c, kh, kw, r1 - r0, out[1]), padded.dtype)
    for i in range(kh):
        for j in range(kw):
            top, left = r0 * sh + i * dh, j * dw
            cols[:, i, j] = padded[sample, :, top : top + (r1 - r0 - 1) * sh + 1 : sh,
                                   left : left + (out[1] - 1) * sw + 1 : sw]
    return cols


def _conv_channel_first(padded, matrix, bias, buffer, kernel, out, strides, dilations):
    """A 2-D convolution (group 1) of an NCHW input into an NCHW result, ``weight (M, K) @ columns (K, positions)``
    a band of rows of one sample at a time. For few output channels and samples (the stem of a mobile
    network, whose result a depthwise convolution of as few channels reads next): the product costs a
    quarter more than the channels-last one, the depthwise convolution's banded products then read
    NCHW without transposing the result (efficientnet_b0 and mobilenet_v3_small 1-4% faster)."""
    n = padded.shape[0]
    m, k = matrix.shape
    rows = buffer.shape[3]
    y = np.empty((n, m, out[0], out[1]), dtype=padded.dtype)
    for sample in range(n):
        for r0 in range(0, out[0], rows):
            r1 = min(out[0], r0 + rows)
            cols = _band_columns(padded, sample, r0, r1, buffer, kernel, out, strides, dilations)
            np.matmul(matrix, cols.reshape(k, -1), out=y[sample, :, r0:r1].reshape(m, -1))
    if bias is not None:
        y += bias.reshape(-1, 1, 1)
    return y


#: output positions per product of ``_conv_by_kernel_rows`` (a few kernel rows' columns stay in cache)
KERNEL_ROW_POSITIONS = 256
#: output positions a channels-last im2col product covers at least, whatever its columns' size
SHARED_WEIGHT_POSITIONS = 512
#: an NCHW input of at least this many channels is copied channels-last for ``_conv_by_kernel_rows``
KERNEL_ROW_CHANNELS = 16


def _conv_by_kernel_rows(last, y, weights, out, sw, dilations, pads):
    """A 2-D convolution of stride 1 down the rows, channels-last (``last`` (N, H, W, C) into ``y``
    (N, *out, M)), as one product per kernel row: per sample, the padded input is copied once per
    kernel column into ``expanded`` (Hp, out W, kw, C), whose rows ``o + i * dh`` are then the columns
    of kernel row ``i`` for output row ``o``, contiguous: ``(positions, kw * C) @ weights[i]``, summed
    over the kernel rows. ``kw`` copies of the input instead of im2col's ``kh * kw``."""
    n, h, w, c = last.shape
    kh, kwc, m = weights.shape
    kw, dh, dw = kwc // c, dilations[0], dilations[1]
    rows = max(1, min(out[0], KERNEL_ROW_POSITIONS // out[1]))
    rows = -(-out[0] // -(-out[0] // rows))  # bands as even as they can be
    padded = np.zeros((h + pads[0] + pads[2], w + pads[1] + pads[3], c), dtype=last.dtype)
    expanded = np.empty((padded.shape[0], out[1], kw, c), dtype=last.dtype)
    part = np.empty((rows * out[1], m), dtype=y.dtype)
    for sample in range(n):
        padded[pads[0] : pads[0] + h, pads[1] : pads[1] + w] = last[sample]
        for j in range(kw):
            expanded[:, :, j] = padded[:, j * dw : j * dw + (out[1] - 1) * sw + 1 : sw]
        for r0 in range(0, out[0], rows):
            r1 = min(out[0], r0 + rows)
            target = y[sample, r0:r1].reshape(-1, m)
            for i in range(kh):
                columns = expanded[r0 + i * dh : r1 + i * dh].reshape(-1, kwc)
                if i == 0:
                    np.matmul(columns, weights[0], out=target)
                else:
                    np.matmul(columns, weights[i], out=part[: len(target)])
                    target += part[: len(target)]


def _strided(base, offset, shape, strides):
    """A view of the C-contiguous array ``base`` from element ``offset`` on, with ``shape`` and ``strides``
    in elements (windows that may overlap; numpy's ``as_strided`` costs ten times as much to make)."""
    size = base.itemsize
    return np.ndarray(shape, base.dtype, buffer=base, offset=offset * size, strides=tuple(v * size for v in strides))


def _padded(x, pads, width=None):
    """``x`` (N, C, H, W) inside zeros: ``pads`` (top, left, bottom, right), at least ``width`` columns."""
    n, c, h, w = x.shape
    columns = max(w + pads[1] + pads[3], width or 0)
    padded = np.zeros((n, c, h + pads[0] + pads[2], columns), dtype=x.dtype)
    padded[:, :, pads[0] : pads[0] + h, pads[1] : pads[1] + w] = x
    return padded


def _block_width(width):
    """Output columns per banded block: the width itself when narrow, else a divisor of it near
    ``DEPTHWISE_BLOCK`` (no cropping), else ``DEPTHWISE_BLOCK``."""
    if width <= DEPTHWISE_BLOCK:
        return width
    for block in (DEPTHWISE_BLOCK, 7, 9, 10, 6, 11, 12, 14):
        if width % block == 0:
            return block
    return DEPTHWISE_BLOCK


def _bands(weight, block, stride, dilation):
    """Per channel and kernel row, the matrix taking ``span`` input columns to ``block`` output columns:
    ``(C, kh, span, block)``, ``span = (block - 1) * stride + (kw - 1) * dilation + 1``."""
    channels, _, kh, kw = weight.shape
    span = (block - 1) * stride + (kw - 1) * dilation + 1
    bands = np.zeros((channels, kh, span, block), dtype=weight.dtype)
    for column in range(block):
        for j in range(kw):
            bands[:, :, column * stride + j * dilation, column] = weight[:, 0, :, j]
    return bands


def _depthwise_banded(x, bands, kernel, out, strides, dilations, pads):
    """A depthwise convolution as products: each kernel row is, per channel, a product of the input rows
    (cut into overlapping blocks of ``span`` columns) with a banded matrix (``_bands``). The zeros of the
    bands cost flops but the products run in BLAS. The input must be finite (a zero times an infinity
    would reach outputs that do not read it). A few channels at a time, in buffers reused from one to
    the next (fresh memory costs its page faults)."""
    n, c, h, w = x.shape
    (kh, _), (sh, sw), (dh, _) = kernel, strides, dilations
    block, span = bands.shape[3], bands.shape[2]
    blocks = -(-out[1] // block)
    height = h + pads[0] + pads[2]
    width = max(w + pads[1] + pads[3], (blocks * block - 1) * sw + span - (block - 1) * sw)
    y = np.empty((n, c, out[0], blocks * block), dtype=x.dtype)
    chunk = max(1, min(c, DEPTHWISE_BUDGET // (height * width)))
    padded = np.zeros((chunk, height, width), dtype=x.dtype)  # only the interior is ever written
    if sh == 1:  # per channel, the blocked rows, cut once: each kernel row reads a run of them
        rows = np.empty((chunk, height, blocks, span), dtype=x.dtype)
        part = np.empty((chunk, out[0] * blocks, block), dtype=x.dtype)
    else:  # per channel and output row, the blocks every kernel row reads, side by side: one product
        rows = np.empty((chunk, out[0], blocks, kh, span), dtype=x.dtype)
        tall = bands.reshape(c, kh * span, block)
    for sample in range(n):
        for c0 in range(0, c, chunk):
            k = min(c, c0 + chunk) - c0
            source = padded[:k]
            source[:, pads[0] : pads[0] + h, pads[1] : pads[1] + w] = x[sample, c0 : c0 + k]
            st = source.strides
            target = y[sample, c0 : c0 + k].reshape(k, out[0] * blocks, block)
            if sh != 1:
                for i in range(kh):
                    rows[:k, :, :, i] = as_strided(source[:, i * dh :], (k, out[0], blocks, span),
                                                   (st[0], sh * st[1], block * sw * st[2], st[2]))
                np.matmul(rows[:k].reshape(k, out[0] * blocks, kh * span), tall[c0 : c0 + k], out=target)
                continue
            rows[:k] = as_strided(source, (k, height, blocks, span), (st[0], st[1], block * sw * st[2], st[2]))
            for i in range(kh):
                read = rows[:k, i * dh : i * dh + out[0]].reshape(k, out[0] * blocks, span)
                if i == 0:
                    np.matmul(read, bands[c0 : c0 + k, i], out=target)
                else:
                    np.matmul(read, bands[c0 : c0 + k, i], out=part[:k])
                    target += part[:k]
    return y if blocks * block == out[1] else y[..., : out[1]]


def _depthwise_windows(x, weights, out, strides, dilations, pads, bias):
    """A depthwise convolution as one sum over a window view: the input copied channels-last inside zeros,
    then ``(N, *out, kh, kw, C)`` windows of it (no copy) contracted with the weights ``(kh, kw, C)`` by
    ``einsum``, whose inner loop runs along the channels. Returns the NCHW view of the channels-last
    result."""
    n, c, h, w = x.shape
    (kh, kw, _), (sh, sw), (dh, dw) = weights.shape, strides, dilations
    height, width = h + pads[0] + pads[2], w + pads[1] + pads[3]
    samples = max(1, min(n, DEPTHWISE_WINDOW_BUDGET // (height * width * c)))  # a bounded copy at a time
    padded = np.zeros((samples, height, width, c), dtype=x.dtype)  # only the interior is ever written
    ps = tuple(v // x.itemsize for v in padded.strides)
    y = np.empty((n, out[0], out[1], c), dtype=x.dtype)
    for s0 in range(0, n, samples):
        k = min(n, s0 + samples) - s0
        padded[:k, pads[0] : pads[0] + h, pads[1] : pads[1] + w] = x[s0 : s0 + k].transpose(0, 2, 3, 1)
        windows = _strided(padded, 0, (k, out[0], out[1], kh, kw, c),
                           (ps[0], sh * ps[1], sw * ps[2], dh * ps[1], dw * ps[2], 1))
        np.einsum("npqijc,ijc->npqc", windows, weights, out=y[s0 : s0 + k])
    if bias is not None:
        y += bias
    return y.transpose(0, 3, 1, 2)


def _depthwise_taps(x, taps, kernel, out, strides, dilations, pads):
    """A depthwise convolution summing, for each output, its taps times their weights: channels-last
    columns ``(N, P, K, C)`` contracted with the weights ``(K, C)``; the result is an NCHW view of
    channels-last memory."""
    n, c = x.shape[:2]
    padded = np.zeros((n, x.shape[2] + pads[0] + pads[2], x.shape[3] + pads[1] + pads[3], c), dtype=x.dtype)
    padded[:, pads[0] : pads[0] + x.shape[2], pads[1] : pads[1] + x.shape[3]] = x.transpose(0, 2, 3, 1)
    cols = np.empty((n, out[0], out[1], kernel[0], kernel[1], c), dtype=x.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            cols[:, :, :, i, j] = padded[:, i * dilations[0] : i * dilations[0] + (out[0] - 1) * strides[0] + 1 : strides[0],
                                         j * dilations[1] : j * dilations[1] + (out[1] - 1) * strides[1] + 1 : strides[1]]
    y = np.einsum("npkc,kc->npc", cols.reshape(n, out[0] * out[1], kernel[0] * kernel[1], c), taps)
    return y.reshape(n, out[0], out[1], c).transpose(0, 3, 1, 2)
