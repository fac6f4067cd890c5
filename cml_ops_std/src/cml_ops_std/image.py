"""Image and detection ops: Resize, Upsample, GridSample, AffineGrid, Col2Im, RoiAlign, MaxRoiPool, MaxUnpool,
NonMaxSuppression, DeformConv and GlobalLpPool.

Resize and Upsample are separable: each resized axis gets a constant matrix (output positions by input
positions) of interpolation weights, applied one axis after the other. The quantized twin applies the same
matrices to the integers, with the weights scaled to exact integers.
"""

import math

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ConstantOnlyOp, LayoutOp, LinearOp, backend

from ._opset import OPS

# -- Resize / Upsample ---------------------------------------------------------------------------------

_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_crop_and_resize"}
# coordinate modes only some versions define: tf_half_pixel_for_nn in Resize-11, half_pixel_symmetric from Resize-19
_COORDINATE_MODES_11 = _COORDINATE_MODES | {"tf_half_pixel_for_nn"}
_COORDINATE_MODES_19 = _COORDINATE_MODES | {"half_pixel_symmetric"}
_NEAREST_MODES = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"}


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _source_coordinates(coordinate_mode, out_len, in_len, scale, roi_pair):
    """Input coordinate of each output position along one axis, and which positions fall outside the input
    (tf_crop_and_resize only; None otherwise). ``scale`` is the axis' scale factor as given (or sizes / input),
    ``out_len`` the output length (the floor of ``scale * in_len`` for a given scale)."""
    y = np.arange(out_len, dtype=np.float64)
    outside = None
    if coordinate_mode == "align_corners":
        # the ONNX backend data divide by the target length before flooring (input length * scale), which
        # onnxruntime does not (it divides by the output length); both agree when that product is whole
        target = scale * in_len
        x = np.zeros(out_len) if target == 1 else y * (in_len - 1) / (target - 1)
    elif coordinate_mode == "asymmetric":
        x = y / scale
    elif coordinate_mode == "tf_half_pixel_for_nn":
        x = (y + 0.5) / scale
    elif coordinate_mode == "tf_crop_and_resize":
        start, end = roi_pair
        if out_len == 1:
            x = np.full(out_len, (start + end) * (in_len - 1) / 2)
        else:
            x = start * (in_len - 1) + y * (end - start) * (in_len - 1) / (out_len - 1)
        outside = (x < 0) | (x > in_len - 1)
    elif coordinate_mode == "pytorch_half_pixel":
        x = np.zeros(out_len) if out_len == 1 else (y + 0.5) / scale - 0.5
    elif coordinate_mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif coordinate_mode == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / (scale * in_len))
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"unknown coordinate_transformation_mode {coordinate_mode!r}")
    return x, outside


def _cubic_kernel(distance, a):
    """Keys' cubic convolution kernel with coefficient ``a``."""
    d = np.abs(distance)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


class _AxisResampling:
    """How one axis is resized: ``matrix[out, in]`` of weights, the nearest ``indices`` (nearest mode), and the
    output positions that take the extrapolation value (``outside``, or None)."""

    def __init__(self, matrix, indices, outside):
        self.matrix = matrix
        self.indices = indices
        self.outside = outside


def _axis_resampling(in_len, out_len, scale, *, mode, coordinate_mode, nearest_mode, cubic_coeff_a,
                     exclude_outside, antialias, roi_pair):
    """The resampling of one axis from ``in_len`` to ``out_len`` positions.

    Nearest picks one input per output; linear and cubic weigh the taps around the source coordinate by their
    kernel. With ``antialias`` and a shrinking scale the kernel is stretched by 1 / scale (more taps, each weighed
    at its distance times the scale) and each row renormalized, a low-pass filter before the sampling. Taps past
    the edges repeat the edge value, or with ``exclude_outside`` drop out (the row renormalized)."""
    x, outside = _source_coordinates(coordinate_mode, out_len, in_len, scale, roi_pair)
    # the left neighbour and the fraction past it, in (0, 1]: an exact coordinate counts as 1 past its left
    base = np.ceil(x) - 1
    ratio = x - base
    matrix = np.zeros((out_len, in_len))
    rows = np.arange(out_len)
    if mode == "nearest":
        if nearest_mode == "round_prefer_floor":
            right = ratio > 0.5
        elif nearest_mode == "round_prefer_ceil":
            right = ratio >= 0.5
        elif nearest_mode == "floor":
            right = ratio == 1
        elif nearest_mode == "ceil":
            right = np.ones(out_len, dtype=bool)
        else:
            raise ValueError(f"unknown nearest_mode {nearest_mode!r}")
        indices = np.clip(base + right, 0, in_len - 1).astype(np.int64)
        matrix[rows, indices] = 1.0
    elif mode in ("linear", "cubic"):
        reach = 1 if mode == "linear" else 2
        stretch = min(scale, 1.0) if antialias else 1.0
        first = math.floor(-reach / stretch) + 1
        offsets = np.arange(first, 2 - first)
        distances = (offsets[None, :] - ratio[:, None]) * stretch
        if mode == "linear":
            weights = np.clip(1 - np.abs(distances), 0, 1)
        else:
            weights = _cubic_kernel(distances, cubic_coeff_a)
        if antialias and stretch < 1:
            weights = weights / weights.sum(axis=1, keepdims=True)
        taps = base[:, None].astype(np.int64) + offsets[None, :]
        if exclude_outside:
            weights = np.where((taps < 0) | (taps >= in_len), 0.0, weights)
            total = weights.sum(axis=1, keepdims=True)
            weights = weights / np.where(total == 0, 1.0, total)
        np.add.at(matrix, (np.repeat(rows, taps.shape[1]), np.clip(taps, 0, in_len - 1).reshape(-1)),
                  weights.reshape(-1))
        indices = None
    else:
        raise ValueError(f"unknown mode {mode!r}: expected nearest, linear or cubic")
    if outside is not None:
        if not outside.any():
            outside = None
        else:
            matrix[outside] = 0.0
    return _AxisResampling(matrix, indices, outside)


def _resize_plan(shape, roi, scales, sizes, *, mode="nearest", coordinate_mode="half_pixel",
                 nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=0, antialias=0, axes=None,
                 keep_aspect_ratio_policy="stretch", legacy_nearest=False, coordinate_modes=_COORDINATE_MODES_19):
    """(output shape, {axis: _AxisResampling}) of a Resize; identity axes are left out. ``coordinate_modes``: the
    coordinate_transformation_mode values the op's version defines."""
    rank = len(shape)
    mode, coordinate_mode = _text(mode), _text(coordinate_mode)
    nearest_mode, keep_aspect_ratio_policy = _text(nearest_mode), _text(keep_aspect_ratio_policy)
    if coordinate_mode not in coordinate_modes:
        raise ValueError(f"coordinate_transformation_mode {coordinate_mode!r} is not one of this Resize version's "
                         f"{sorted(coordinate_modes)}")
    if axes is None:
        axes = list(range(rank))
    else:
        axes = [int(a) + rank if int(a) < 0 else int(a) for a in axes]
        if any(a < 0 or a >= rank for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"axes {axes} are not distinct axes of a rank-{rank} input")
    scales = None if scales is None or np.asarray(scales).size == 0 else np.asarray(scales, np.float64).reshape(-1)
    sizes = None if sizes is None or np.asarray(sizes).size == 0 else np.asarray(sizes, np.int64).reshape(-1)
    if (scales is None) == (sizes is None):
        raise ValueError("Resize needs exactly one of scales and sizes")
    given = scales if scales is not None else sizes
    if given.size != len(axes):
        raise ValueError(f"{'scales' if sizes is None else 'sizes'} has {given.size} values for {len(axes)} axes")
    roi = None if roi is None or np.asarray(roi).size == 0 else np.asarray(roi, np.float64).reshape(-1)
    if coordinate_mode == "tf_crop_and_resize":
        if roi is None or roi.size != 2 * len(axes):
            raise ValueError(f"tf_crop_and_resize needs a roi of {2 * len(axes)} values (starts then ends)")
    out_shape = list(shape)
    axis_scale = {}
    if scales is not None:
        if np.any(scales <= 0):
            raise ValueError(f"scales must be positive, got {scales.tolist()}")
        for a, s in zip(axes, scales):
            axis_scale[a] = float(s)
            out_shape[a] = int(np.floor(shape[a] * s))
    else:
        if np.any(sizes < 0):
            raise ValueError(f"sizes must not be negative, got {sizes.tolist()}")
        if keep_aspect_ratio_policy == "stretch":
            for a, n in zip(axes, sizes):
                axis_scale[a] = float(n) / shape[a] if shape[a] else 1.0
                out_shape[a] = int(n)
        elif keep_aspect_ratio_policy in ("not_larger", "not_smaller"):
            ratios = [float(n) / shape[a] for a, n in zip(axes, sizes)]
            common = min(ratios) if keep_aspect_ratio_policy == "not_larger" else max(ratios)
            for a in axes:
                axis_scale[a] = common
                out_shape[a] = int(common * shape[a] + 0.5)
        else:
            raise ValueError(f"unknown keep_aspect_ratio_policy {keep_aspect_ratio_policy!r}")
    plan = {}
    for i, a in enumerate(axes):
        roi_pair = (0.0, 1.0) if roi is None else (float(roi[i]), float(roi[len(axes) + i]))
        scale = axis_scale[a]
        if math.isclose(scale, 1.0) and out_shape[a] == shape[a] and math.isclose(roi_pair[0], 0.0) \
                and math.isclose(roi_pair[1], 1.0):
            continue
        if shape[a] == 0 or out_shape[a] == 0:
            if out_shape[a] and not shape[a]:
                raise ValueError(f"cannot resize the empty axis {a} to {out_shape[a]}")
            plan[a] = _AxisResampling(np.zeros((out_shape[a], shape[a])),
                                      np.zeros(out_shape[a], np.int64) if mode == "nearest" else None, None)
            continue
        axis_nearest = nearest_mode
        if legacy_nearest:  # Upsample and Resize-10: floor when enlarging, ceil when shrinking
            axis_nearest = "ceil" if scale < 1 else "floor"
        plan[a] = _axis_resampling(shape[a], out_shape[a], scale, mode=mode, coordinate_mode=coordinate_mode,
                                   nearest_mode=axis_nearest, cubic_coeff_a=float(cubic_coeff_a),
                                   exclude_outside=exclude_outside, antialias=antialias, roi_pair=roi_pair)
    return tuple(out_shape), plan


def _along(mask, axis, ndim):
    return mask.reshape((1,) * axis + (-1,) + (1,) * (ndim - axis - 1))


def _outside_mask(out_shape, plan):
    """Output positions taking the extrapolation value (any axis' coordinate outside the input), or None."""
    mask = None
    for axis, resampling in plan.items():
        if resampling.outside is not None:
            along = np.broadcast_to(_along(resampling.outside, axis, len(out_shape)), out_shape)
            mask = along if mask is None else mask | along
    return mask


def _apply_matrix(data, matrix, axis):
    """``matrix`` (out, in) applied along ``axis`` of ``data`` (numpy arrays or traced integers)."""
    ndim = len(data.shape)
    order = [a for a in range(ndim) if a != axis] + [axis]
    moved = np.transpose(data, order) if order != list(range(ndim)) else data
    product = np.matmul(moved, np.ascontiguousarray(matrix.T))
    back = np.argsort(order)
    return np.transpose(product, back) if order != list(range(ndim)) else product


def _run_resize(x, plan, out_shape, extrapolation_value, mode):
    """The float Resize of ``x`` by its plan, in ``x``'s dtype."""
    if mode == "nearest" and all(r.outside is None for r in plan.values()):
        result = x
        for axis, resampling in plan.items():
            result = np.take(result, resampling.indices, axis=axis)
        return result
    result = x.astype(np.float64)
    for axis, resampling in plan.items():
        result = _apply_matrix(result, resampling.matrix, axis)
    mask = _outside_mask(out_shape, plan)
    if mask is not None:
        result = np.where(mask, float(extrapolation_value), result)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        result = np.clip(np.rint(result), info.min, info.max)
    if x.dtype == np.bool_:
        return result != 0
    return result.astype(x.dtype)


def _integer_matrix(matrix):
    """(integer matrix, divisor) with ``matrix == integers / divisor``: the smallest divisor up to 4096 that makes
    the weights whole (they are for the usual scales and modes). Otherwise (antialiasing, exclude_outside with
    renormalized rows) the weights are rounded to multiples of 2**-16, each row keeping its exact sum, so a constant
    region stays exactly constant; a weight moves by at most 2**-16, far below the resolution of quantized weights
    elsewhere (Conv, Gemm)."""
    for divisor in range(1, 4097):
        scaled = matrix * divisor
        whole = np.rint(scaled)
        if np.all(np.abs(scaled - whole) <= 1e-6):
            return whole.astype(np.int64), divisor
    divisor = 1 << 16
    scaled = matrix * divisor
    integers = np.floor(scaled)
    # give the rounding remainders to the largest fractional parts, so each row sums to its rounded exact sum
    shortfall = (np.rint(scaled.sum(axis=1)) - integers.sum(axis=1)).astype(np.int64)
    order = np.argsort(-(scaled - integers), axis=1, kind="stable")
    for row, count in enumerate(shortfall):
        integers[row, order[row, :count]] += 1
    return integers.astype(np.int64), divisor


class QuantizedResize(LinearOp):
    """Resize/Upsample: nearest moves integers (a layout); linear and cubic apply each axis' weight matrix, scaled
    to integers, to the integers (a linear op); extrapolated positions are a constant folded into the
    accumulator."""

    def plan(self, shape, inputs):
        raise NotImplementedError

    def encrypted_forward(self, ctx, inputs):
        if self.encrypted_positions(inputs) != [0]:
            raise QuantizationError(f"{self.where}: only the data input of a resize may be encrypted "
                                    "(roi, scales and sizes must be constants)")
        source = inputs[0]
        out_shape, plan, mode, extrapolation_value = self.plan(source.shape,
                                                               [None if v is None else v.data for v in inputs])
        if mode == "nearest" and all(r.outside is None for r in plan.values()):
            return LayoutOp.encrypted_forward(self, ctx, inputs)
        q = ctx.requantize(source)
        acc = self.centered(q)
        divisor = 1
        for axis, resampling in plan.items():
            key = f"integer weights of axis {axis} for shape {tuple(source.shape)}"
            if key not in self.state:
                self.state[key] = _integer_matrix(resampling.matrix)
            integers, axis_divisor = self.state[key]
            acc = _apply_matrix(acc, integers, axis)
            divisor *= axis_divisor
        scale = q.scale / divisor
        mask = _outside_mask(out_shape, plan)
        float_bias = None
        if mask is not None:
            bias = np.where(mask, float(extrapolation_value), 0.0)
            units = self.integer_bias("extrapolation", bias, scale)
            if units is None:
                float_bias = bias
            else:
                acc = acc + units
        return self.accumulator(ctx, acc, scale, float_bias)


class QuantizedResize10(QuantizedResize):
    def plan(self, shape, values):
        mode = _text(self.attributes.get("mode", "nearest"))
        out_shape, plan = _resize_plan(shape, None, values[1], None, mode=mode, coordinate_mode="asymmetric",
                                       legacy_nearest=True)
        return out_shape, plan, mode, 0.0


class QuantizedUpsample7(QuantizedResize):
    def plan(self, shape, values):
        mode = _text(self.attributes.get("mode", "nearest"))
        out_shape, plan = _resize_plan(shape, None, self.attributes["scales"], None, mode=mode,
                                       coordinate_mode="asymmetric", legacy_nearest=True)
        return out_shape, plan, mode, 0.0


class QuantizedResize11(QuantizedResize):
    def plan(self, shape, values):
        since = self.bound.impl.since_version
        coordinate_modes = (_COORDINATE_MODES_11 if since == 11 else _COORDINATE_MODES_19 if since >= 19
                            else _COORDINATE_MODES)
        a = self.attributes
        values = list(values) + [None] * (4 - len(values))
        mode = _text(a.get("mode", "nearest"))
        out_shape, plan = _resize_plan(
            shape, values[1], values[2], values[3], mode=mode,
            coordinate_mode=a.get("coordinate_transformation_mode", "half_pixel"),
            nearest_mode=a.get("nearest_mode", "round_prefer_floor"), cubic_coeff_a=a.get("cubic_coeff_a", -0.75),
            exclude_outside=a.get("exclude_outside", 0), antialias=a.get("antialias", 0), axes=a.get("axes"),
            keep_aspect_ratio_policy=a.get("keep_aspect_ratio_policy", "stretch"), coordinate_modes=coordinate_modes)
        return out_shape, plan, mode, a.get("extrapolation_value", 0.0)


def _legacy_resize(x, scales, mode):
    mode = _text(mode)
    if mode not in ("nearest", "linear"):
        raise ValueError(f"unknown mode {mode!r}: expected nearest or linear")
    scales = np.asarray(scales, np.float64).reshape(-1)
    if scales.size != x.ndim:
        raise ValueError(f"scales has {scales.size} values for a rank-{x.ndim} input")
    out_shape, plan = _resize_plan(x.shape, None, scales, None, mode=mode, coordinate_mode="asymmetric",
                                   legacy_nearest=True)
    return _run_resize(x, plan, out_shape, 0.0, mode)


@OPS.op("Upsample", since=7, quantized=QuantizedUpsample7)
def upsample_7(x, /, *, mode="nearest", scales):
    if any(s < 1 for s in scales):
        raise ValueError(f"Upsample scales must be at least 1, got {list(scales)}")
    return _legacy_resize(x, scales, mode)


@OPS.op("Upsample", since=9, quantized=QuantizedResize10)
def upsample_9(x, scales, /, *, mode="nearest"):
    if np.any(np.asarray(scales) < 1):
        raise ValueError(f"Upsample scales must be at least 1, got {np.asarray(scales).tolist()}")
    return _legacy_resize(x, scales, mode)


@OPS.op("Resize", since=10, quantized=QuantizedResize10)
def resize_10(x, scales, /, *, mode="nearest"):
    return _legacy_resize(x, scales, mode)


def _resize(x, roi, scales, sizes, *, mode, coordinate_transformation_mode, nearest_mode, cubic_coeff_a,
            exclude_outside, extrapolation_value, antialias=0, axes=None, keep_aspect_ratio_policy="stretch",
            coordinate_modes=_COORDINATE_MODES):
    mode = _text(mode)
    out_shape, plan = _resize_plan(x.shape, roi, scales, sizes, mode=mode,
                                   coordinate_mode=coordinate_transformation_mode, nearest_mode=nearest_mode,
                                   cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                                   antialias=antialias, axes=axes, keep_aspect_ratio_policy=keep_aspect_ratio_policy,
                                   coordinate_modes=coordinate_modes)
    return _run_resize(x, plan, out_shape, extrapolation_value, mode)


@OPS.op("Resize", since=11, quantized=QuantizedResize11)
def resize_11(x, roi, scales, /, sizes=None, *, coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75,
              exclude_outside=0, extrapolation_value=0.0, mode="nearest", nearest_mode="round_prefer_floor"):
    return _resize(x, roi, scales, sizes, mode=mode, coordinate_transformation_mode=coordinate_transformation_mode,
                   nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                   extrapolation_value=extrapolation_value, coordinate_modes=_COORDINATE_MODES_11)


@OPS.op("Resize", since=13, quantized=QuantizedResize11)
def resize_13(x, /, roi=None, scales=None, sizes=None, *, coordinate_transformation_mode="half_pixel",
              cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, mode="nearest",
              nearest_mode="round_prefer_floor"):
    return _resize(x, roi, scales, sizes, mode=mode, coordinate_transformation_mode=coordinate_transformation_mode,
                   nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                   extrapolation_value=extrapolation_value)


def _resize_18(x, roi, scales, sizes, coordinate_modes, *, antialias, axes, coordinate_transformation_mode,
               cubic_coeff_a, exclude_outside, extrapolation_value, keep_aspect_ratio_policy, mode, nearest_mode):
    return _resize(x, roi, scales, sizes, mode=mode, coordinate_transformation_mode=coordinate_transformation_mode,
                   nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                   extrapolation_value=extrapolation_value, antialias=antialias, axes=axes,
                   keep_aspect_ratio_policy=keep_aspect_ratio_policy, coordinate_modes=coordinate_modes)


@OPS.op("Resize", since=18, quantized=QuantizedResize11)
def resize_18(x, /, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
              coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
              extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
              nearest_mode="round_prefer_floor"):
    return _resize_18(x, roi, scales, sizes, _COORDINATE_MODES, antialias=antialias, axes=axes,
                      coordinate_transformation_mode=coordinate_transformation_mode, cubic_coeff_a=cubic_coeff_a,
                      exclude_outside=exclude_outside, extrapolation_value=extrapolation_value,
                      keep_aspect_ratio_policy=keep_aspect_ratio_policy, mode=mode, nearest_mode=nearest_mode)


@OPS.op("Resize", since=19, quantized=QuantizedResize11)
def resize(x, /, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
           coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
           extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
           nearest_mode="round_prefer_floor"):
    return _resize_18(x, roi, scales, sizes, _COORDINATE_MODES_19, antialias=antialias, axes=axes,
                      coordinate_transformation_mode=coordinate_transformation_mode, cubic_coeff_a=cubic_coeff_a,
                      exclude_outside=exclude_outside, extrapolation_value=extrapolation_value,
                      keep_aspect_ratio_policy=keep_aspect_ratio_policy, mode=mode, nearest_mode=nearest_mode)


# -- GridSample / AffineGrid ---------------------------------------------------------------------------

def _reflect(values, low, high):
    """``values`` reflected at the borders ``low`` and ``high`` until they lie between them."""
    span = high - low
    if span <= 0:
        return np.full_like(values, low)
    below, above = values < low, values > high
    distance = np.where(below, low - values, np.where(above, values - high, 0.0))
    folds = np.trunc(distance / span)
    rest = distance - folds * span
    even = folds % 2 == 0
    from_below = np.where(even, low + rest, high - rest)
    from_above = np.where(even, high - rest, low + rest)
    return np.where(below, from_below, np.where(above, from_above, values))


def _grid_taps(coordinate, size, mode):
    """(tap indices, weights) along one axis for each sampling coordinate; taps on a new last axis."""
    if mode == "nearest":
        return np.trunc(coordinate).astype(np.int64)[..., None], np.ones(coordinate.shape + (1,))
    left = np.floor(coordinate)
    fraction = coordinate - left
    if mode == "linear":
        offsets = np.arange(0, 2)
        weights = np.stack([1 - fraction, fraction], axis=-1)
    else:
        offsets = np.arange(-1, 3)
        weights = _cubic_kernel(offsets - fraction[..., None], -0.75)
    return left.astype(np.int64)[..., None] + offsets, weights


def _grid_sample(x, grid, mode, padding_mode, align_corners):
    mode, padding_mode = _text(mode), _text(padding_mode)
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    if mode not in ("nearest", "linear", "cubic"):
        raise ValueError(f"unknown GridSample mode {mode!r}")
    if padding_mode not in ("zeros", "border", "reflection"):
        raise ValueError(f"unknown padding_mode {padding_mode!r}: expected zeros, border or reflection")
    spatial = x.shape[2:]
    n_spatial = len(spatial)
    if grid.ndim != n_spatial + 2 or grid.shape[-1] != n_spatial or grid.shape[0] != x.shape[0]:
        raise ValueError(f"grid of shape {grid.shape} does not fit an input of shape {x.shape}: expected "
                         f"(N, *output spatial, {n_spatial})")
    out_shape = (x.shape[0], x.shape[1], *grid.shape[1:-1])
    if int(np.prod(out_shape)) == 0:
        return np.zeros(out_shape, dtype=x.dtype)
    normalized = grid.astype(np.float64)[..., ::-1]  # the last grid component addresses the first spatial axis
    taps, weights, borders = [], [], []
    for axis, size in enumerate(spatial):
        n = normalized[..., axis]
        if align_corners:
            coordinate, low, high = (n + 1) / 2 * (size - 1), 0.0, size - 1.0
        else:
            coordinate, low, high = ((n + 1) * size - 1) / 2, -0.5, size - 0.5
        if mode == "nearest":
            coordinate = np.rint(coordinate)
        # linear and nearest bring the coordinate inside; cubic keeps it and brings each tap inside (as PyTorch)
        if padding_mode == "border" and mode != "cubic":
            coordinate = np.where((coordinate < low) | (coordinate > high), np.clip(coordinate, 0, size - 1),
                                  coordinate)
        elif padding_mode == "reflection" and mode != "cubic":
            coordinate = _reflect(coordinate, low, high)
        indices, axis_weights = _grid_taps(coordinate, size, mode)
        taps.append(indices)
        weights.append(axis_weights)
        borders.append((low, high))
    batch = np.arange(x.shape[0]).reshape((-1,) + (1,) * (grid.ndim - 2))
    data = np.moveaxis(x, 1, -1).astype(np.float64)  # (N, *spatial, C)
    result = np.zeros(grid.shape[:-1] + (x.shape[1],))
    for combination in np.ndindex(*[t.shape[-1] for t in taps]):
        weight = np.ones(grid.shape[:-1])
        valid = np.ones(grid.shape[:-1], dtype=bool)
        index = [batch]
        for axis, k in enumerate(combination):
            i = taps[axis][..., k]
            size = spatial[axis]
            weight = weight * weights[axis][..., k]
            if padding_mode == "zeros":
                valid &= (i >= 0) & (i < size)
                i = np.clip(i, 0, size - 1)
            elif padding_mode == "border":
                i = np.clip(i, 0, size - 1)
            else:
                i = np.trunc(_reflect(i.astype(np.float64), *borders[axis])).astype(np.int64)
                i = np.clip(i, 0, size - 1)
            index.append(i)
        result += (weight * valid)[..., None] * data[tuple(index)]
    return np.moveaxis(result, -1, 1).astype(x.dtype)


@OPS.op("GridSample", since=16, quantized=ConstantOnlyOp)
def grid_sample_16(x, grid, /, *, align_corners=0, mode="bilinear", padding_mode="zeros"):
    if x.ndim != 4:
        raise ValueError(f"GridSample-16 takes a 4-D input (N, C, H, W), got shape {x.shape}")
    return _grid_sample(x, grid, mode, padding_mode, align_corners)


@OPS.op("GridSample", since=(20, 22), quantized=ConstantOnlyOp)
def grid_sample(x, grid, /, *, align_corners=0, mode="linear", padding_mode="zeros"):
    return _grid_sample(x, grid, mode, padding_mode, align_corners)


@OPS.op("AffineGrid", since=20, quantized=ConstantOnlyOp)
def affine_grid(theta, size, /, *, align_corners=0):
    size = [int(s) for s in np.asarray(size).reshape(-1)]
    if len(size) not in (4, 5):
        raise ValueError(f"AffineGrid size must be (N, C, H, W) or (N, C, D, H, W), got {size}")
    spatial = size[2:]
    n_spatial = len(spatial)
    if theta.shape != (size[0], n_spatial, n_spatial + 1):
        raise ValueError(f"theta of shape {theta.shape} does not fit size {size}: expected "
                         f"({size[0]}, {n_spatial}, {n_spatial + 1})")
    axes = []
    for length in spatial:
        if align_corners:
            # a single position is the centre, as in PyTorch's affine_grid (implementations differ here)
            axes.append(np.linspace(-1.0, 1.0, length) if length > 1 else np.zeros(length))
        else:
            axes.append((2 * np.arange(length) + 1) / length - 1)
    mesh = np.meshgrid(*axes, indexing="ij")
    # homogeneous points with the last spatial axis first (x, y[, z], 1)
    points = np.stack([m.reshape(-1) for m in mesh[::-1]] + [np.ones(int(np.prod(spatial)))], axis=0)
    grid = np.matmul(theta.astype(np.float64), points)  # (N, n_spatial, points)
    return np.moveaxis(grid, 1, -1).reshape(size[0], *spatial, n_spatial).astype(theta.dtype)


# -- Col2Im --------------------------------------------------------------------------------------------

def _col2im_geometry(image_shape, block_shape, strides, pads, dilations):
    n = len(image_shape)
    strides = list(strides) if strides else [1] * n
    dilations = list(dilations) if dilations else [1] * n
    pads = list(pads) if pads else [0] * (2 * n)
    if len(strides) != n or len(dilations) != n or len(pads) != 2 * n or len(block_shape) != n:
        raise ValueError(f"Col2Im: image_shape {image_shape}, block_shape {block_shape}, strides, dilations "
                         "and pads disagree on the number of spatial axes")
    counts = []
    for i in range(n):
        span = dilations[i] * (block_shape[i] - 1) + 1
        counts.append((image_shape[i] + pads[i] + pads[i + n] - span) // strides[i] + 1)
    return strides, dilations, pads, counts


def _col2im(x, image_shape, block_shape, strides, pads, dilations):
    """Sum of the blocks' columns placed at their sliding positions (the adjoint of im2col)."""
    image_shape = [int(v) for v in np.asarray(image_shape).reshape(-1)]
    block_shape = [int(v) for v in np.asarray(block_shape).reshape(-1)]
    strides, dilations, pads, counts = _col2im_geometry(image_shape, block_shape, strides, pads, dilations)
    n = len(image_shape)
    block_size = int(np.prod(block_shape))
    if x.ndim != 3 or x.shape[1] % max(block_size, 1) or x.shape[2] != int(np.prod(counts)):
        raise ValueError(f"Col2Im input of shape {x.shape} does not fit block_shape {block_shape} and "
                         f"{int(np.prod(counts))} sliding positions")
    channels = x.shape[1] // block_size
    columns = x.reshape(x.shape[0], channels, *block_shape, *counts)
    padded = [image_shape[i] + pads[i] + pads[i + n] for i in range(n)]
    out = np.zeros((x.shape[0], channels, *padded), dtype=x.dtype)
    for offset in np.ndindex(*block_shape):
        index = [slice(None), slice(None)]
        for i in range(n):
            start = offset[i] * dilations[i]
            index.append(slice(start, start + (counts[i] - 1) * strides[i] + 1, strides[i]))
        out[tuple(index)] += columns[(slice(None), slice(None)) + offset]
    crop = (slice(None), slice(None)) + tuple(slice(pads[i], pads[i] + image_shape[i]) for i in range(n))
    return out[crop]


class QuantizedCol2Im(LinearOp):
    """Col2Im with constant shapes: a sum of shifted copies of the centred integers (a linear map)."""

    def encrypted_forward(self, ctx, inputs):
        if self.encrypted_positions(inputs) != [0]:
            raise QuantizationError(f"{self.where}: only the columns of a Col2Im may be encrypted; image_shape and "
                                    "block_shape must be constants")
        q = ctx.requantize(inputs[0])
        return self.accumulator(ctx, _linear_map(self, q, inputs), q.scale)


def _linear_map(op, q, inputs):
    """The op's numpy implementation applied to the centred integers of ``q`` (other inputs as constants); on
    traced integers, as a product with the matrix the implementation gives on basis vectors (it must be linear
    and keep the batch axis)."""
    rest = [None if v is None else v.data for v in inputs[1:]]
    centered = op.centered(q)

    def apply(values):
        return op.call_numpy([values] + rest)

    if backend.is_traced(centered):
        return backend.by_selection_matrix(centered, apply)
    return apply(np.asarray(centered, np.int64))


@OPS.op("Col2Im", since=18, quantized=QuantizedCol2Im)
def col2im(x, image_shape, block_shape, /, *, dilations=None, pads=None, strides=None):
    return _col2im(x, image_shape, block_shape, strides, pads, dilations)


# -- RoiAlign / MaxRoiPool -----------------------------------------------------------------------------

def _roi_align(x, rois, batch_indices, *, half_pixel, mode, output_height, output_width, sampling_ratio,
               spatial_scale):
    mode = _text(mode)
    if mode not in ("avg", "max"):
        raise ValueError(f"unknown RoiAlign mode {mode!r}: expected avg or max")
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4:
        raise ValueError(f"RoiAlign takes X (N, C, H, W) and rois (R, 4), got {x.shape} and {rois.shape}")
    batch_indices = np.asarray(batch_indices).reshape(-1)
    if batch_indices.size != rois.shape[0]:
        raise ValueError(f"{rois.shape[0]} rois but {batch_indices.size} batch indices")
    if np.any((batch_indices < 0) | (batch_indices >= x.shape[0])):
        raise ValueError(f"batch indices {batch_indices.tolist()} outside the batch of {x.shape[0]}")
    height, width = x.shape[2:]
    out = np.zeros((rois.shape[0], x.shape[1], output_height, output_width))
    offset = 0.5 if half_pixel else 0.0
    for r, roi in enumerate(rois.astype(np.float64)):
        start_w, start_h, end_w, end_h = roi * spatial_scale - offset
        roi_w, roi_h = end_w - start_w, end_h - start_h
        if not half_pixel:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / output_height, roi_w / output_width
        grid_h = int(sampling_ratio) if sampling_ratio > 0 else int(np.ceil(roi_h / output_height))
        grid_w = int(sampling_ratio) if sampling_ratio > 0 else int(np.ceil(roi_w / output_width))
        count = max(grid_h * grid_w, 1)
        if grid_h * grid_w == 0:  # an empty roi samples nothing: its bins stay 0
            continue
        ys = start_h + np.arange(output_height)[:, None] * bin_h + (np.arange(grid_h)[None, :] + 0.5) * bin_h / grid_h
        xs = start_w + np.arange(output_width)[:, None] * bin_w + (np.arange(grid_w)[None, :] + 0.5) * bin_w / grid_w
        y_low, y_high, y_frac, y_in = _roi_axis(ys.reshape(-1), height)
        x_low, x_high, x_frac, x_in = _roi_axis(xs.reshape(-1), width)
        image = x[int(batch_indices[r])].astype(np.float64)  # (C, H, W)
        inside = (y_in[:, None] & x_in[None, :]).astype(np.float64)
        corners = [
            ((1 - y_frac)[:, None] * (1 - x_frac)[None, :], y_low, x_low),
            ((1 - y_frac)[:, None] * x_frac[None, :], y_low, x_high),
            (y_frac[:, None] * (1 - x_frac)[None, :], y_high, x_low),
            (y_frac[:, None] * x_frac[None, :], y_high, x_high),
        ]
        # (C, samples along y, samples along x) per corner
        terms = [weight * inside * image[:, ys_[:, None], xs_[None, :]] for weight, ys_, xs_ in corners]
        shape = (x.shape[1], output_height, grid_h, output_width, grid_w)
        if mode == "avg":
            out[r] = sum(terms).reshape(shape).sum(axis=(2, 4)) / count
        else:
            out[r] = np.max(np.maximum.reduce(terms).reshape(shape), axis=(2, 4))
    return out.astype(x.dtype)


def _roi_axis(coordinates, size):
    """Bilinear neighbours along one axis for RoiAlign samples: (low, high, fraction, inside)."""
    inside = (coordinates >= -1.0) & (coordinates <= size)
    c = np.maximum(coordinates, 0.0)
    low = np.trunc(c).astype(np.int64)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    c = np.where(at_end, low, c)
    return low, high, c - low, inside


@OPS.op("RoiAlign", since=10, quantized=ConstantOnlyOp)
def roi_align_10(x, rois, batch_indices, /, *, mode="avg", output_height=1, output_width=1, sampling_ratio=0,
                 spatial_scale=1.0):
    return _roi_align(x, rois, batch_indices, half_pixel=False, mode=mode, output_height=output_height,
                      output_width=output_width, sampling_ratio=sampling_ratio, spatial_scale=spatial_scale)


@OPS.op("RoiAlign", since=(16, 22), quantized=ConstantOnlyOp)
def roi_align(x, rois, batch_indices, /, *, coordinate_transformation_mode="half_pixel", mode="avg",
              output_height=1, output_width=1, sampling_ratio=0, spatial_scale=1.0):
    coordinate_transformation_mode = _text(coordinate_transformation_mode)
    if coordinate_transformation_mode not in ("half_pixel", "output_half_pixel"):
        raise ValueError(f"unknown coordinate_transformation_mode {coordinate_transformation_mode!r}: expected "
                         "half_pixel or output_half_pixel")
    return _roi_align(x, rois, batch_indices, half_pixel=coordinate_transformation_mode == "half_pixel",
                      mode=mode, output_height=output_height, output_width=output_width,
                      sampling_ratio=sampling_ratio, spatial_scale=spatial_scale)


def _round_half_away(value):
    return np.sign(value) * np.floor(np.abs(value) + 0.5)


@OPS.op("MaxRoiPool", since=(1, 22), quantized=ConstantOnlyOp)
def max_roi_pool(x, rois, /, *, pooled_shape, spatial_scale=1.0):
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"MaxRoiPool takes X (N, C, H, W) and rois (R, 5), got {x.shape} and {rois.shape}")
    pooled_h, pooled_w = (int(v) for v in pooled_shape)
    height, width = x.shape[2:]
    out = np.zeros((rois.shape[0], x.shape[1], pooled_h, pooled_w), dtype=x.dtype)
    for r, roi in enumerate(rois.astype(np.float64)):
        batch = int(roi[0])
        if batch < 0 or batch >= x.shape[0]:
            raise ValueError(f"roi {r} names batch {batch}, outside the batch of {x.shape[0]}")
        start_w, start_h, end_w, end_h = (int(v) for v in _round_half_away(roi[1:] * spatial_scale))
        bin_h = max(end_h - start_h + 1, 1) / pooled_h
        bin_w = max(end_w - start_w + 1, 1) / pooled_w
        for ph in range(pooled_h):
            h0 = min(max(int(np.floor(ph * bin_h)) + start_h, 0), height)
            h1 = min(max(int(np.ceil((ph + 1) * bin_h)) + start_h, 0), height)
            for pw in range(pooled_w):
                w0 = min(max(int(np.floor(pw * bin_w)) + start_w, 0), width)
                w1 = min(max(int(np.ceil((pw + 1) * bin_w)) + start_w, 0), width)
                if h1 > h0 and w1 > w0:
                    out[r, :, ph, pw] = x[batch, :, h0:h1, w0:w1].max(axis=(1, 2))
    return out


# -- MaxUnpool -----------------------------------------------------------------------------------------

def _max_unpool(x, indices, output_shape, kernel_shape, pads, strides):
    """Values scattered to their flat ``indices`` in the unpooled shape the geometry gives, that shape then
    placed at the start of ``output_shape`` when one is given."""
    n = len(kernel_shape)
    strides = list(strides) if strides else [1] * n
    pads = list(pads) if pads else [0] * (2 * n)
    if x.ndim != n + 2 or indices.shape != x.shape:
        raise ValueError(f"MaxUnpool: X of shape {x.shape} and I of shape {indices.shape} must agree and have "
                         f"{n} spatial axes")
    inferred = list(x.shape[:2]) + [(x.shape[2 + i] - 1) * strides[i] - pads[i] - pads[i + n] + kernel_shape[i]
                                    for i in range(n)]
    total = int(np.prod(inferred))
    flat_indices = np.asarray(indices, np.int64).reshape(-1)
    if np.any((flat_indices < 0) | (flat_indices >= total)):
        raise ValueError(f"MaxUnpool indices must lie in [0, {total}) for the unpooled shape {inferred}")
    unpooled = np.zeros(total, dtype=x.dtype)
    unpooled[flat_indices] = x.reshape(-1)
    unpooled = unpooled.reshape(inferred)
    if output_shape is None:
        return unpooled
    shape = [int(v) for v in np.asarray(output_shape).reshape(-1)]
    if len(shape) != x.ndim or any(s < i for s, i in zip(shape, inferred)):
        raise ValueError(f"MaxUnpool output_shape {shape} is smaller than the unpooled shape {inferred}")
    out = np.zeros(shape, dtype=x.dtype)
    out[tuple(slice(0, i) for i in inferred)] = unpooled
    return out


class QuantizedMaxUnpool(LinearOp):
    """MaxUnpool with constant indices: the centred integers moved to their positions (zeros stay 0)."""

    def encrypted_forward(self, ctx, inputs):
        if self.encrypted_positions(inputs) != [0]:
            raise QuantizationError(f"{self.where}: only the values of a MaxUnpool may be encrypted; its indices "
                                    "and output_shape must be constants")
        q = ctx.requantize(inputs[0])
        rest = [None if v is None else v.data for v in inputs[1:]]
        centered = self.centered(q)
        if not backend.is_traced(centered):
            return self.accumulator(ctx, self.call_numpy([np.asarray(centered, np.int64)] + rest), q.scale)
        # the indices address the whole tensor (batch included): one 0/1 matrix from every input position to
        # its output position, found by unpooling the positions' numbers
        size = int(np.prod(q.shape))
        numbered = self.call_numpy([np.arange(1, size + 1, dtype=np.int64).reshape(q.shape)] + rest)
        targets = np.flatnonzero(numbered)
        matrix = np.zeros((size, numbered.size), dtype=np.int64)
        matrix[numbered.reshape(-1)[targets] - 1, targets] = 1
        moved = np.matmul(centered.reshape((1, size)), matrix).reshape(numbered.shape)
        return self.accumulator(ctx, moved, q.scale)


@OPS.op("MaxUnpool", since=(9, 11, 22), quantized=QuantizedMaxUnpool)
def max_unpool(x, i, /, output_shape=None, *, kernel_shape, pads=None, strides=None):
    return _max_unpool(x, i, output_shape, kernel_shape, pads, strides)


# -- NonMaxSuppression ---------------------------------------------------------------------------------

def _corners(boxes, center_point_box):
    """(y1, x1, y2, x2) with y1 <= y2 and x1 <= x2."""
    boxes = boxes.astype(np.float64)
    if center_point_box:
        xc, yc, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
    return np.stack([np.minimum(boxes[:, 0], boxes[:, 2]), np.minimum(boxes[:, 1], boxes[:, 3]),
                     np.maximum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 1], boxes[:, 3])], axis=1)


def _overlaps(box, others):
    """Intersection over union of ``box`` with each of ``others`` (0 when either area is not positive)."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    height = np.maximum(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0)
    width = np.maximum(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0)
    intersection = height * width
    union = area + areas - intersection
    valid = (area > 0) & (areas > 0) & (union > 0)
    return np.where(valid, intersection / np.where(union > 0, union, 1.0), 0.0)


def _non_max_suppression(boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold,
                         center_point_box):
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[0] != boxes.shape[0] \
            or scores.shape[2] != boxes.shape[1]:
        raise ValueError(f"NonMaxSuppression takes boxes (B, N, 4) and scores (B, C, N), got {boxes.shape} and "
                         f"{scores.shape}")
    limit = 0 if max_output_boxes_per_class is None or np.asarray(max_output_boxes_per_class).size == 0 \
        else int(np.asarray(max_output_boxes_per_class).reshape(-1)[0])
    iou = 0.0 if iou_threshold is None or np.asarray(iou_threshold).size == 0 \
        else float(np.asarray(iou_threshold).reshape(-1)[0])
    floor = None if score_threshold is None or np.asarray(score_threshold).size == 0 \
        else float(np.asarray(score_threshold).reshape(-1)[0])
    if center_point_box not in (0, 1):
        raise ValueError(f"center_point_box must be 0 or 1, got {center_point_box}")
    selected = []
    if limit > 0:
        for b in range(boxes.shape[0]):
            corners = _corners(boxes[b], center_point_box)
            for c in range(scores.shape[1]):
                class_scores = scores[b, c].astype(np.float64)
                order = np.argsort(-class_scores, kind="stable")
                if floor is not None:
                    order = order[class_scores[order] > floor]
                kept = []
                for candidate in order:
                    if len(kept) >= limit:
                        break
                    if kept and np.any(_overlaps(corners[candidate], corners[kept]) > iou):
                        continue
                    kept.append(int(candidate))
                selected.extend((b, c, k) for k in kept)
    return np.array(selected, dtype=np.int64).reshape(-1, 3)


@OPS.op("NonMaxSuppression", since=(10, 11), quantized=ConstantOnlyOp)
def non_max_suppression(boxes, scores, /, max_output_boxes_per_class=None, iou_threshold=None,
                        score_threshold=None, *, center_point_box=0):
    return _non_max_suppression(boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold,
                                center_point_box)


# -- DeformConv ----------------------------------------------------------------------------------------

def _deform_conv(x, w, offset, b, mask, dilations, group, kernel_shape, offset_group, pads, strides):
    if x.ndim != 4:
        raise ValueError(f"DeformConv supports 2-D images (N, C, H, W); got an input of shape {x.shape}")
    n, channels, height, width = x.shape
    out_channels = w.shape[0]
    kernel = list(kernel_shape) if kernel_shape else list(w.shape[2:])
    kh, kw = kernel
    sh, sw = strides if strides else (1, 1)
    dh, dw = dilations if dilations else (1, 1)
    pads = list(pads) if pads else [0, 0, 0, 0]
    if channels != w.shape[1] * group or out_channels % group:
        raise ValueError(f"DeformConv: X {x.shape}, W {w.shape} and group {group} disagree")
    if channels % offset_group:
        raise ValueError(f"DeformConv: {channels} channels do not split into {offset_group} offset groups")
    oh = (height + pads[0] + pads[2] - ((kh - 1) * dh + 1)) // sh + 1
    ow = (width + pads[1] + pads[3] - ((kw - 1) * dw + 1)) // sw + 1
    if offset.shape != (n, offset_group * kh * kw * 2, oh, ow):
        raise ValueError(f"DeformConv offset of shape {offset.shape}; expected {(n, offset_group * kh * kw * 2, oh, ow)}")
    offsets = offset.astype(np.float64).reshape(n, offset_group, kh, kw, 2, oh, ow)
    if mask is None:
        masks = np.ones((n, offset_group, kh, kw, oh, ow))
    else:
        if mask.shape != (n, offset_group * kh * kw, oh, ow):
            raise ValueError(f"DeformConv mask of shape {mask.shape}; expected {(n, offset_group * kh * kw, oh, ow)}")
        masks = mask.astype(np.float64).reshape(n, offset_group, kh, kw, oh, ow)
    # sampling positions (n, offset_group, kh, kw, oh, ow)
    rows = (np.arange(oh) * sh - pads[0])[None, None, None, None, :, None] \
        + (np.arange(kh) * dh)[None, None, :, None, None, None] + offsets[:, :, :, :, 0]
    cols = (np.arange(ow) * sw - pads[1])[None, None, None, None, None, :] \
        + (np.arange(kw) * dw)[None, None, None, :, None, None] + offsets[:, :, :, :, 1]
    per_group = channels // offset_group
    data = x.astype(np.float64).reshape(n, offset_group, per_group, height, width)
    batch = np.arange(n)[:, None, None, None, None, None]
    groups = np.arange(offset_group)[None, :, None, None, None, None]
    top, left = np.floor(rows), np.floor(cols)
    sampled = np.zeros((n, offset_group, kh, kw, oh, ow, per_group))
    for dy in (0, 1):
        for dx in (0, 1):
            r, c = top + dy, left + dx
            weight = (1 - np.abs(rows - r)) * (1 - np.abs(cols - c))
            valid = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            ri = np.clip(r, 0, height - 1).astype(np.int64)
            ci = np.clip(c, 0, width - 1).astype(np.int64)
            values = data[batch, groups, :, ri, ci]  # (..., per_group)
            sampled += (weight * valid)[..., None] * values
    sampled = sampled * masks[..., None]
    # columns (n, channels, kh, kw, oh, ow)
    columns = np.moveaxis(sampled, -1, 2).reshape(n, channels, kh, kw, oh, ow)
    in_per_group, out_per_group = channels // group, out_channels // group
    out = np.zeros((n, out_channels, oh, ow))
    for g in range(group):
        cols_g = columns[:, g * in_per_group:(g + 1) * in_per_group]
        w_g = w[g * out_per_group:(g + 1) * out_per_group].astype(np.float64)
        out[:, g * out_per_group:(g + 1) * out_per_group] = np.einsum("nckhij,ockh->noij", cols_g, w_g)
    if b is not None:
        out += b.astype(np.float64).reshape(1, -1, 1, 1)
    return out.astype(x.dtype)


@OPS.op("DeformConv", since=(19, 22), quantized=ConstantOnlyOp)
def deform_conv(x, w, offset, /, b=None, mask=None, *, dilations=None, group=1, kernel_shape=None,
                offset_group=1, pads=None, strides=None):
    return _deform_conv(x, w, offset, b, mask, dilations, group, kernel_shape, offset_group, pads, strides)


# -- GlobalLpPool --------------------------------------------------------------------------------------

def _global_lp_pool(x, p):
    powered = np.power(np.abs(x.astype(np.float64)), p)
    return np.power(powered.sum(axis=tuple(range(2, x.ndim)), keepdims=True), 1.0 / p).astype(x.dtype)


@OPS.op("GlobalLpPool", since=1, quantized=ConstantOnlyOp)
def global_lp_pool_1(x, /, *, p=2.0):
    """GlobalLpPool-1: ``p`` is a float attribute (an int from 2 on)."""
    return _global_lp_pool(x, float(p))


@OPS.op("GlobalLpPool", since=(2, 22), quantized=ConstantOnlyOp)
def global_lp_pool(x, /, *, p=2):
    return _global_lp_pool(x, p)
