"""Property-test cases for the image and detection ops (cml_ops_std/image.py)."""

import dataclasses

import numpy as np
from cml_core.testing import Example, OpCase, float32s, float_arrays
from hypothesis import strategies as st

SCALES = [0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
# scales whose interpolation weights are small fractions (what the quantized twin keeps exact)
NICE_SCALES = [0.5, 1.0, 2.0, 3.0, 4.0]
COORDINATE_MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_crop_and_resize"]


def _image(draw, min_side=1, max_side=4, low=-5.0, high=5.0):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(min_side, max_side)),
             draw(st.integers(min_side, max_side)))
    return draw(float_arrays(shape, min_value=low, max_value=high))


@st.composite
def _resize(draw, opset, quantizable=False):
    x = _image(draw)
    if opset < 11:
        mode = draw(st.sampled_from(["nearest", "linear"]))
        scales = np.array([1, 1] + [draw(st.sampled_from(NICE_SCALES if quantizable else SCALES)) for _ in range(2)],
                          np.float32)
        return Example([x, scales], {"mode": mode}, constant_inputs=(1,))
    mode = draw(st.sampled_from(["nearest", "linear", "cubic"]))
    coordinate_mode = draw(st.sampled_from(COORDINATE_MODES + (["half_pixel_symmetric"] if opset >= 19 else [])
                                           + (["tf_half_pixel_for_nn"] if opset == 11 else [])))
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinate_mode}
    if mode == "nearest":
        attrs["nearest_mode"] = draw(st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]))
    if mode == "cubic":
        attrs["cubic_coeff_a"] = draw(st.sampled_from([-0.75, -0.5]))
        attrs["exclude_outside"] = draw(st.integers(0, 1))
    axes = [2, 3]
    if opset >= 18 and draw(st.booleans()):
        axes = draw(st.sampled_from([[2, 3], [3, 2], [3], [-1, -2]]))
        attrs["axes"] = axes
    if opset >= 18 and mode != "nearest" and draw(st.booleans()):
        attrs["antialias"] = 1

    n_axes = len(axes)
    roi = None
    if coordinate_mode == "tf_crop_and_resize":
        starts = [draw(st.sampled_from([0.0, 0.25, -0.25])) for _ in range(n_axes)]
        ends = [draw(st.sampled_from([1.0, 0.75, 1.25])) for _ in range(n_axes)]
        if "axes" not in attrs:  # a start and an end for every axis
            starts, ends = [0.0] * (x.ndim - n_axes) + starts, [1.0] * (x.ndim - n_axes) + ends
        roi = np.array(starts + ends, np.float32)
        attrs["extrapolation_value"] = draw(float32s(-3, 3))
    if quantizable or draw(st.booleans()):
        scales = np.array([draw(st.sampled_from(NICE_SCALES if quantizable else SCALES)) for _ in range(n_axes)],
                          np.float32)
        if coordinate_mode == "align_corners":
            # a fractional target length: the backend data divide by it, onnxruntime by the floored output length
            scales = np.array([s if float(s * x.shape[a]).is_integer() else 2.0 for s, a in zip(scales, axes)],
                              np.float32)
        scales = np.array([s if s * x.shape[a] >= 1 else 2.0 for s, a in zip(scales, axes)], np.float32)
        if "axes" not in attrs:  # scales for every axis
            full = np.ones(x.ndim, np.float32)
            full[axes] = scales
            scales = full
        sizes = None
    else:
        sizes = np.array([draw(st.integers(1, 6)) for _ in range(n_axes)], np.int64)
        # the policy over every axis would rescale N and C too; onnxruntime ignores it with negative axes; it makes
        # a fractional target length (see align_corners above) and changes which lengths stay (see the roi below)
        if opset >= 18 and n_axes > 1 and "axes" in attrs and min(axes) >= 0 \
                and coordinate_mode not in ("align_corners", "tf_crop_and_resize"):
            attrs["keep_aspect_ratio_policy"] = draw(st.sampled_from(["stretch", "not_larger", "not_smaller"]))
        if "axes" not in attrs:
            full = np.array(x.shape, np.int64)
            full[axes] = sizes
            sizes = full
        scales = None
    if roi is not None:
        # onnxruntime copies an axis whose length does not change, ignoring its roi: keep those rois whole
        lengths = (sizes[-n_axes:] if sizes is not None else
                   [int(np.floor(x.shape[a] * s)) for a, s in zip(axes, scales[-n_axes:])])
        half = roi.size // 2
        for i, (a, length) in enumerate(zip(axes, lengths)):
            if length == x.shape[a]:
                roi[half - n_axes + i], roi[-n_axes + i] = 0.0, 1.0
    if roi is None and opset == 11:
        roi = np.zeros(0, np.float32)
    if scales is None and opset == 11:
        scales = np.zeros(0, np.float32)
    return Example([x, roi, scales, sizes], attrs, constant_inputs=(1, 2, 3))


@st.composite
def _upsample(draw, opset, quantizable=False):
    x = _image(draw)
    scales = [1.0, 1.0] + [draw(st.sampled_from([1.0, 2.0, 3.0] if quantizable else [1.0, 1.5, 2.0, 3.0]))
                           for _ in range(2)]
    attrs = {"mode": draw(st.sampled_from(["nearest", "linear"]))}
    if opset < 9:
        return Example([x], dict(attrs, scales=scales))
    return Example([x, np.array(scales, np.float32)], attrs, constant_inputs=(1,))


@st.composite
def _grid_sample(draw, opset):
    volumetric = opset >= 20 and draw(st.booleans())
    modes = ["nearest", "linear"] if volumetric else ["nearest", "linear", "cubic"]
    mode = draw(st.sampled_from(modes))
    if opset < 20:
        mode = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, mode)
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    spatial = [draw(st.integers(1, 4)) for _ in range(3 if volumetric else 2)]
    out_spatial = [draw(st.integers(1, 3)) for _ in spatial]
    # values and coordinates on coarse binary lattices: every weight and product is exact in float32, so
    # float32 kernels summing in another order agree exactly (outputs that are small differences of large
    # terms otherwise differ beyond the float32 tolerance)
    x = np.array(draw(st.lists(st.integers(-20, 20), min_size=n * c * int(np.prod(spatial)),
                               max_size=n * c * int(np.prod(spatial)))), np.float32).reshape(n, c, *spatial) / 4
    size = n * int(np.prod(out_spatial)) * len(spatial)
    grid = np.array(draw(st.lists(st.integers(-6, 6), min_size=size, max_size=size)), np.float32) / 4
    grid = grid.reshape(n, *out_spatial, len(spatial))
    attrs = {"mode": mode, "padding_mode": draw(st.sampled_from(["zeros", "border", "reflection"])),
             "align_corners": draw(st.integers(0, 1))}
    return Example([x, grid], attrs, constant_inputs=draw(st.sampled_from([(), (1,)])))


@st.composite
def _affine_grid(draw, opset):
    volumetric = draw(st.booleans())
    n = draw(st.integers(1, 2))
    align_corners = draw(st.integers(0, 1))
    # a single position with align_corners: onnxruntime places it at 1, the reference evaluator at -1, PyTorch
    # (and cml) at 0
    spatial = [draw(st.integers(1 + align_corners, 4)) for _ in range(3 if volumetric else 2)]
    theta = draw(float_arrays((n, len(spatial), len(spatial) + 1), min_value=-2, max_value=2))
    size = np.array([n, draw(st.integers(1, 3)), *spatial], np.int64)
    return Example([theta, size], {"align_corners": align_corners}, constant_inputs=(1,))


@st.composite
def _col2im(draw, opset):
    rank = draw(st.integers(1, 3))
    block = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [draw(st.integers(1, 2)) for _ in range(rank)]
    strides = [draw(st.integers(1, 2)) for _ in range(rank)]
    pads = [draw(st.integers(0, 1)) for _ in range(2 * rank)]
    image = [draw(st.integers(max(1, (b - 1) * d + 1 - pads[i] - pads[i + rank]), 5))
             for i, (b, d) in enumerate(zip(block, dilations))]
    counts = [(image[i] + pads[i] + pads[i + rank] - (block[i] - 1) * dilations[i] - 1) // strides[i] + 1
              for i in range(rank)]
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    x = draw(float_arrays((n, c * int(np.prod(block)), int(np.prod(counts))), min_value=-5, max_value=5))
    attrs = {"dilations": dilations, "strides": strides, "pads": pads}
    return Example([x, np.array(image, np.int64), np.array(block, np.int64)], attrs, constant_inputs=(1, 2))


def _boxes(draw, count, height, width):
    """``count`` boxes (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, on a quarter-pixel lattice around the image."""
    rows = []
    for _ in range(count):
        x1, x2 = sorted(draw(st.integers(-2, 4 * width + 2)) / 4 for _ in range(2))
        y1, y2 = sorted(draw(st.integers(-2, 4 * height + 2)) / 4 for _ in range(2))
        rows.append([x1, y1, x2, y2])
    return np.array(rows, np.float32).reshape(count, 4)


@st.composite
def _roi_align(draw, opset):
    x = _image(draw, 2, 5)
    count = draw(st.integers(1, 3))
    rois = _boxes(draw, count, x.shape[2], x.shape[3])
    batch = np.array([draw(st.integers(0, x.shape[0] - 1)) for _ in range(count)], np.int64)
    attrs = {"output_height": draw(st.integers(1, 3)), "output_width": draw(st.integers(1, 3)),
             "sampling_ratio": draw(st.integers(0, 2)), "spatial_scale": draw(st.sampled_from([1.0, 0.5])),
             "mode": draw(st.sampled_from(["avg", "max"]))}
    if opset >= 16:
        attrs["coordinate_transformation_mode"] = draw(st.sampled_from(["half_pixel", "output_half_pixel"]))
    return Example([x, rois, batch], attrs, constant_inputs=draw(st.sampled_from([(2,), (1, 2)])))


@st.composite
def _max_roi_pool(draw, opset):
    x = _image(draw, 2, 5)
    count = draw(st.integers(1, 3))
    boxes = np.round(_boxes(draw, count, x.shape[2], x.shape[3]))
    batch = np.array([[draw(st.integers(0, x.shape[0] - 1))] for _ in range(count)], np.float32)
    rois = np.concatenate([batch, boxes], axis=1).astype(np.float32)
    attrs = {"pooled_shape": [draw(st.integers(1, 3)), draw(st.integers(1, 3))],
             "spatial_scale": draw(st.sampled_from([1.0, 0.5]))}
    return Example([x, rois], attrs, constant_inputs=draw(st.sampled_from([(), (1,)])))


@st.composite
def _max_unpool(draw, opset):
    rank = draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    pooled = [draw(st.integers(1, 3)) for _ in range(rank)]
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    x = draw(float_arrays((n, c, *pooled), min_value=-5, max_value=5))
    # non-overlapping windows (strides = kernel): one chosen position in each, as a MaxPool picks
    unpooled = [p * k for p, k in zip(pooled, kernel)]
    indices = np.zeros(x.shape, np.int64)
    for position in np.ndindex(*x.shape):
        spatial = [position[2 + i] * kernel[i] + draw(st.integers(0, kernel[i] - 1)) for i in range(rank)]
        indices[position] = np.ravel_multi_index((position[0], position[1], *spatial), (n, c, *unpooled))
    attrs = {"kernel_shape": kernel, "strides": kernel}
    inputs = [x, indices]
    if draw(st.booleans()):
        inputs.append(np.array([n, c, *unpooled], np.int64))
    return Example(inputs, attrs, constant_inputs=(1, 2))


@st.composite
def _non_max_suppression(draw, opset):
    batches, classes, count = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 5))
    corners = np.stack([_boxes(draw, count, 4, 4) for _ in range(batches)])  # (x1, y1, x2, y2)
    center = draw(st.integers(0, 1))
    if center:
        boxes = np.concatenate([(corners[..., :2] + corners[..., 2:]) / 2, corners[..., 2:] - corners[..., :2]],
                               axis=-1)
    else:
        boxes = corners[..., [1, 0, 3, 2]]
        if draw(st.booleans()):  # the other diagonal
            boxes = boxes[..., [2, 3, 0, 1]]
    # distinct scores on a lattice, so the order is the same in every implementation
    scores = np.array(draw(st.permutations(range(batches * classes * count))), np.float32).reshape(
        batches, classes, count) / 16
    inputs = [boxes.astype(np.float32), scores, np.array([draw(st.integers(0, 4))], np.int64),
              np.array([draw(st.sampled_from([0.0, 0.2, 0.5, 0.9]))], np.float32)]
    if draw(st.booleans()):
        inputs.append(np.array([draw(st.sampled_from([0.03, 0.3, 1.03]))], np.float32))
    return Example(inputs, {"center_point_box": center}, constant_inputs=(2, 3, 4))


@st.composite
def _deform_conv(draw, opset):
    n = draw(st.integers(1, 2))
    group, offset_group = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    channels = group * offset_group * draw(st.integers(1, 2))
    out_channels = group * draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 2)) for _ in range(2)]
    dilations = [draw(st.integers(1, 2)) for _ in range(2)]
    strides = [draw(st.integers(1, 2)) for _ in range(2)]
    pads = [draw(st.integers(0, 1)) for _ in range(4)]
    spatial = [draw(st.integers((k - 1) * d + 1, 4)) for k, d in zip(kernel, dilations)]
    out = [(spatial[i] + pads[i] + pads[i + 2] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
           for i in range(2)]
    x = draw(float_arrays((n, channels, *spatial), min_value=-3, max_value=3))
    w = draw(float_arrays((out_channels, channels // group, *kernel), min_value=-2, max_value=2))
    offsets = draw(float_arrays((n, offset_group * kernel[0] * kernel[1] * 2, *out), min_value=-2, max_value=2))
    inputs = [x, w, offsets]
    if draw(st.booleans()):
        inputs.append(draw(float_arrays((out_channels,), min_value=-2, max_value=2)))
        if draw(st.booleans()):
            inputs.append(draw(float_arrays((n, offset_group * kernel[0] * kernel[1], *out), min_value=0, max_value=1)))
    attrs = {"group": group, "offset_group": offset_group, "dilations": dilations, "strides": strides, "pads": pads}
    if draw(st.booleans()):
        attrs["kernel_shape"] = kernel
    return Example(inputs, attrs, constant_inputs=draw(st.sampled_from([(), (1,)])))


@st.composite
def _global_lp_pool(draw, opset):
    rank = draw(st.integers(3, 5))
    shape = [draw(st.integers(1, 2)), draw(st.integers(1, 3))] + [draw(st.integers(1, 3)) for _ in range(rank - 2)]
    x = draw(float_arrays(tuple(shape), min_value=-3, max_value=3))
    p = draw(st.integers(1, 3))
    return Example([x], {"p": float(p) if opset < 2 else p})


# GlobalLpPool-1 takes p as a float where 2 takes an int; nothing runs version 1: judged at 2 with p as an int
ORACLE_AT = {("GlobalLpPool", 1): (2, lambda example: dataclasses.replace(
    example, attributes={**example.attributes, "p": int(example.attributes["p"])}))}


KNOWN_DISAGREEMENTS = {
    ("Col2Im", 18): "onnxruntime misplaces the blocks of 1-D images with dilations: image_shape [3], block_shape [2], "
                    "dilations [2], two channels of ones: its second channel is [1, 0, 0], where the specification "
                    "(and the reference evaluator) sum the block at positions 0 and 2 into [1, 0, 1]; 2-D images agree",
}

CASES = [
    OpCase("Resize", lambda opset: _resize(opset), quantizable=lambda opset: _resize(opset, quantizable=True)),
    OpCase("Upsample", lambda opset: _upsample(opset), quantizable=lambda opset: _upsample(opset, quantizable=True)),
    OpCase("GridSample", _grid_sample),
    OpCase("AffineGrid", _affine_grid),
    OpCase("Col2Im", _col2im),
    OpCase("RoiAlign", _roi_align),
    OpCase("MaxRoiPool", _max_roi_pool),
    OpCase("MaxUnpool", _max_unpool),
    OpCase("NonMaxSuppression", _non_max_suppression),
    OpCase("DeformConv", _deform_conv),
    OpCase("GlobalLpPool", _global_lp_pool),
]


def _resize_summation_bound(impl, example):
    """Per output, the float32 rounding two correct kernels may differ by: summing the taps in their own order
    and precision, (taps + 1) * eps * sum(|weight| * |x|), and weights from source coordinates computed in
    float32 (see below) times sum(|x|) over the taps. onnxruntime's float32 kernel sums cubic taps
    (renormalized when exclude_outside=1) in float32; an output near -0.0093 made of taps near 4 carries their
    rounding (a derandomized fresh-clone run drew asymmetric cubic 2x2 -> 5x5 upsampling: 0.742268 against
    0.742271, 1.8e-4 relative on -0.009261). A wrong weight or coordinate still differs by a whole tap."""
    from cml_ops_std import image

    x = example.inputs[0]
    if x is None or x.dtype != np.float32:
        return None
    attributes = dict(example.attributes)
    mode = attributes.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    inputs = list(example.inputs) + [None] * (4 - len(example.inputs))
    roi, scales, sizes = (inputs[1:4] if impl.since_version >= 11 else (None, inputs[1], None))
    options = {k: attributes[k] for k in ("cubic_coeff_a", "exclude_outside", "antialias", "axes",
                                          "keep_aspect_ratio_policy") if k in attributes}
    coordinate = attributes.get("coordinate_transformation_mode", "half_pixel" if impl.since_version >= 11
                                else "asymmetric")
    every_mode = image._COORDINATE_MODES_11 | image._COORDINATE_MODES_19
    eps = float(np.finfo(np.float32).eps)

    def plan_of(shift=0.0):
        """The resize plan with every source coordinate moved by ``shift`` times its float32 rounding."""
        exact = image._source_coordinates

        def moved(coordinate_mode, out_len, in_len, scale, roi_pair):
            x, outside = exact(coordinate_mode, out_len, in_len, scale, roi_pair)
            return x + shift * eps * (np.abs(x) + in_len + 1), outside

        image._source_coordinates = moved
        try:
            return image._resize_plan(x.shape, roi, scales, sizes, mode=mode, coordinate_mode=coordinate,
                                      nearest_mode=attributes.get("nearest_mode", "round_prefer_floor"),
                                      coordinate_modes=every_mode, **options)
        finally:
            image._source_coordinates = exact

    if mode == "nearest":
        # a source coordinate on a rounding boundary (an integer for floor and ceil, a half for the round modes)
        # computed in float32 lands on either side of it (half_pixel_symmetric from 3 to 1: exactly 1.0, where
        # onnxruntime's float32 gives 0.99999994 and floors it to 0): either neighbour is a correct pick there
        (shape, below), (_, above) = plan_of(-4.0), plan_of(4.0)
        extrapolation = float(attributes.get("extrapolation_value", 0.0))
        low = image._run_resize(x.astype(np.float64), below, shape, extrapolation, mode)
        high = image._run_resize(x.astype(np.float64), above, shape, extrapolation, mode)
        return np.abs(low - high)
    _, plan = plan_of()
    magnitude, reach, taps, coordinate_error = np.abs(x.astype(np.float64)), np.abs(x.astype(np.float64)), 1, 0.0
    for axis, resampling in plan.items():
        matrix = np.abs(resampling.matrix)
        magnitude = image._apply_matrix(magnitude, matrix, axis)
        reach = image._apply_matrix(reach, (matrix > 0).astype(np.float64), axis)
        taps *= int(np.max(np.count_nonzero(matrix, axis=1), initial=1))
        # a source coordinate computed in float32 errs by up to eps * (its size + 1); a tap's weight moves by
        # that times the kernel's slope (at most 2 for cubic, times the widening of an antialiased kernel)
        widening = max(1.0, x.shape[axis] / max(matrix.shape[0], 1)) if attributes.get("antialias") else 1.0
        coordinate_error += 2 * widening * eps * (x.shape[axis] + 1)
    return (taps + 1) * eps * magnitude + coordinate_error * reach + 1e-6


SUMMATION_BOUNDS = {"Resize": _resize_summation_bound}
