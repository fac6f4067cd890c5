"""The float path's kernels (prepared convolutions and products, tables, in-place forms) against onnxruntime
and exact math, on the shapes and memory layouts each of their paths takes."""

import math

import numpy as np
import pytest
from cml_core.testing import assert_close, make_node_model, run_onnxruntime
from cml_core.testing.models import feeds_of

from cml_core import get_registry, load_model

RNG = np.random.default_rng(7)


def _conv_kernel(x, w, b, attributes):
    """What runs a one-node Conv model (weight and bias constants): its prepared kernel, or its implementation
    when it has none (grouped convolutions); and onnxruntime's output."""
    inputs = [x, w] + ([b] if b is not None else [])
    model = make_node_model("Conv", inputs, attributes, opset=11, constant_inputs=tuple(range(1, len(inputs))))
    node = load_model(model).nodes[0]
    prepared = attributes.get("group", 1) == 1 or w.shape[1] == 1 and w.shape[0] == attributes["group"]
    assert (node.kernel is not None) == prepared
    kernel = node.kernel or (lambda *values: node.call(list(values))[0])
    return kernel, run_onnxruntime(model, feeds_of(model, inputs))[0]


def _summation_bound(x, w, b, attributes):
    """Per output, how far two correct float32 convolutions adding their products in other orders may
    differ (see tests/ops/test_ops_vs_onnxruntime.py)."""
    from cml_ops_std.conv import conv_attributes, conv_nd

    _, strides, dilations, pads = conv_attributes(x.shape, w.shape, attributes.get("auto_pad", "NOTSET"),
                                                  attributes.get("dilations"), None, attributes.get("pads"),
                                                  attributes.get("strides"))
    magnitudes = conv_nd(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                         None if b is None else np.abs(b).astype(np.float64), strides=strides, pads=pads,
                         dilations=dilations, group=attributes.get("group", 1))
    return (np.prod(w.shape[1:]) + 1) * np.finfo(np.float32).eps * magnitudes + 1e-6


def _channels_last(x):
    """``x`` with the same values, its memory channels-last (what a prepared convolution may return)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


CONVOLUTIONS = [
    # (x shape, w shape, attributes): pointwise, general, batch-last, depthwise banded / narrow, grouped
    ((2, 6, 9, 11), (5, 6, 1, 1), {}),
    ((1, 6, 9, 11), (5, 6, 1, 1), {"strides": [2, 3]}),
    ((2, 5, 12, 13), (7, 5, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 3, 20, 17), (8, 3, 7, 7), {"pads": [3, 2, 3, 1], "strides": [2, 2]}),
    ((1, 4, 15, 15), (6, 4, 3, 2), {"dilations": [2, 3], "pads": [2, 1, 1, 3]}),
    ((1, 4, 15, 16), (6, 4, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((9, 2, 6, 6), (3, 2, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 6, 40, 41), (5, 6, 3, 5), {"strides": [1, 2], "pads": [1, 2, 1, 2], "dilations": [2, 1]}),  # row bands
    ((1, 3, 20, 18), (64, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # many channels: channels-last
    ((1, 16, 9, 10), (8, 16, 3, 3), {"pads": [1, 0, 1, 2]}),  # an NCHW input copied channels-last
    ((2, 12, 30, 29), (12, 1, 3, 3), {"group": 12, "pads": [1, 1, 1, 1]}),
    ((1, 16, 40, 41), (16, 1, 5, 5), {"group": 16, "pads": [2, 2, 2, 2], "strides": [2, 2]}),
    ((1, 8, 23, 26), (8, 1, 7, 7), {"group": 8, "pads": [3, 3, 3, 3]}),
    ((1, 8, 23, 26), (8, 1, 3, 3), {"group": 8, "dilations": [2, 2], "pads": [2, 1, 2, 3]}),
    ((1, 8, 23, 26), (8, 1, 3, 3), {"group": 8, "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((2, 40, 7, 7), (40, 1, 5, 5), {"group": 40, "pads": [2, 2, 2, 2]}),
    # depthwise over many channels: sums over a channels-last window view
    ((2, 64, 9, 10), (64, 1, 3, 3), {"group": 64, "pads": [1, 1, 1, 1]}),
    ((1, 72, 15, 14), (72, 1, 5, 5), {"group": 72, "pads": [2, 2, 2, 2], "strides": [2, 2]}),
    ((1, 96, 11, 13), (96, 1, 3, 3), {"group": 96, "dilations": [2, 3], "pads": [2, 0, 1, 3]}),
    ((1, 80, 8, 9), (80, 1, 3, 2), {"group": 80, "strides": [1, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 6, 10, 10), (12, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1]}),
    ((1, 8, 10, 10), (6, 4, 3, 3), {"group": 2}),
]


@pytest.mark.parametrize("x_shape, w_shape, attributes", CONVOLUTIONS)
@pytest.mark.parametrize("bias", [False, True])
def test_prepared_convolutions_match_onnxruntime_in_either_layout(x_shape, w_shape, attributes, bias):
    x = RNG.uniform(-3, 3, x_shape).astype(np.float32)
    w = RNG.uniform(-3, 3, w_shape).astype(np.float32)
    b = RNG.uniform(-3, 3, w_shape[0]).astype(np.float32) if bias else None
    kernel, expected = _conv_kernel(x, w, b, attributes)
    bound = _summation_bound(x, w, b, attributes)
    for layout in (x, _channels_last(x)):
        got = kernel(layout, w, *([b] if bias else []))
        assert got.dtype == np.float32
        assert_close(np.ascontiguousarray(got), expected, what=f"Conv {x_shape} {w_shape} {attributes}", atol=bound)
    np.testing.assert_array_equal(layout, x)  # the input is left as it was


@pytest.mark.parametrize("channels", [4, 64])
def test_depthwise_convolution_keeps_infinities_where_they_are_read(channels):
    x = RNG.uniform(-1, 1, (1, channels, 20, 24)).astype(np.float32)
    x[0, 1, 5, 7] = np.inf
    w = RNG.uniform(0.5, 1, (channels, 1, 3, 3)).astype(np.float32)
    kernel, expected = _conv_kernel(x, w, None, {"group": channels, "pads": [1, 1, 1, 1]})
    got = np.ascontiguousarray(kernel(x, w))
    assert np.isinf(got).sum() == 9 and not np.isnan(got).any()
    assert_close(got, expected)


@pytest.mark.parametrize("batch", [1, 2, 7, 256])
def test_prepared_gemm_bias_rows_and_columns(batch):
    a = RNG.normal(size=(batch, 32)).astype(np.float32)
    b = RNG.normal(size=(32, 32)).astype(np.float32)
    for c in (RNG.normal(size=(32,)), RNG.normal(size=(1, 32)), RNG.normal(size=(batch, 1)),
              RNG.normal(size=(batch, 32))):
        c = c.astype(np.float32)
        for attributes in ({}, {"transB": 1, "alpha": 0.5, "beta": 2.0}):
            inputs = [a, b, c]
            model = make_node_model("Gemm", inputs, attributes, opset=13, constant_inputs=(1, 2))
            module = load_model(model)
            assert module.nodes[0].kernel is not None
            expected = run_onnxruntime(model, feeds_of(model, inputs))[0]
            for _ in range(2):  # the second call reads the bias matrix made by the first
                assert_close(module(a), expected, what=f"Gemm {c.shape} {attributes}", atol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_a_few_rows_against_a_large_constant_matrix(rows):
    a = RNG.normal(size=(rows, 300)).astype(np.float32)
    b = RNG.normal(size=(300, 260)).astype(np.float32)  # above LARGE_MATRIX: a row at a time up to FEW_ROWS
    c = RNG.normal(size=(260,)).astype(np.float32)
    gemm = make_node_model("Gemm", [a, b.T.copy(), c], {"transB": 1}, opset=13, constant_inputs=(1, 2))
    matmul = make_node_model("MatMul", [a.reshape(rows, 1, 300), b], opset=13, constant_inputs=(1,))
    for model, x in ((gemm, a), (matmul, a.reshape(rows, 1, 300))):
        module = load_model(model)
        assert module.nodes[0].kernel is not None
        expected = run_onnxruntime(model, feeds_of(model, [x]))[0]
        assert_close(module(x), expected, atol=1e-4)


def test_matmul_of_a_strided_view_by_a_constant_matrix():
    a = RNG.normal(size=(2, 5, 6, 8)).astype(np.float32)
    b = RNG.normal(size=(8, 3)).astype(np.float32)
    module = load_model(make_node_model("MatMul", [a, b], opset=13, constant_inputs=(1,)))
    view = np.ascontiguousarray(a.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    assert_close(module.nodes[0].kernel(view, b), np.matmul(a, b), atol=1e-5)


def _op(op_type):
    return max((i for i in get_registry() if i.op_type == op_type and not i.domain), key=lambda i: i.since_version)


def test_gelu_tables_keep_float32_accuracy_everywhere():
    x = np.concatenate([np.linspace(-12, 12, 400_001), [-3.0, -3 + 2**-12, 5.5, 5.5 + 2**-11, 30, 1e6, -1e6, 0.0]])
    x = x.astype(np.float32)
    wide = x.astype(np.float64)
    with np.errstate(over="ignore"):
        exact = {"none": 0.5 * wide * np.array([math.erfc(-v / math.sqrt(2)) for v in wide]),
                 "tanh": wide / (1 + np.exp(-2 * math.sqrt(2 / math.pi) * (wide + 0.044715 * wide**3)))}
    gelu = _op("Gelu")
    for approximate, expected in exact.items():
        got = gelu.function(x, approximate=approximate)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-6, atol=1e-30, err_msg=approximate)
        inplace = x.copy()
        assert gelu.inplace(inplace, approximate=approximate) is inplace
        np.testing.assert_array_equal(inplace, got)
    special = np.array([np.inf, np.nan, -0.0], np.float32)
    np.testing.assert_array_equal(gelu.function(special), [np.inf, np.nan, 0.0])


def test_gelu_of_a_transposed_view_in_place():
    x = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    view = np.ascontiguousarray(x.transpose(2, 0, 1)).transpose(1, 2, 0)
    expected = _op("Gelu").function(x)
    assert _op("Gelu").inplace(view) is view
    np.testing.assert_array_equal(view, expected)


def test_erf_table_is_absolutely_accurate_in_float32():
    x = np.concatenate([np.linspace(-6, 6, 200_001), [np.inf, -np.inf, 1e-30, -1e-30, 0.0]]).astype(np.float32)
    expected = np.array([math.erf(v) for v in x.astype(np.float64)])
    got = _op("Erf").function(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1.2e-7)
    np.testing.assert_allclose(got[-3:-1], expected[-3:-1], rtol=1e-6)  # tiny arguments keep their digits
    assert np.isnan(_op("Erf").function(np.array([np.nan], np.float32))).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_relatively_accurate_and_quiet_where_exp_overflows(dtype):
    x = np.array([-1000, -100, -20, -1, 0, 1, 20, 100, 1000, np.inf, -np.inf], dtype)
    wide = x.astype(np.float64)
    with np.errstate(over="ignore"):
        expected = np.where(wide >= 0, 1 / (1 + np.exp(-np.abs(wide))), np.exp(-np.abs(wide)) / (1 + np.exp(-np.abs(wide))))
    sigmoid = _op("Sigmoid")
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # numpy's default ignores underflow
        for got in (sigmoid.function(x), sigmoid.inplace(x.copy())):
            assert got.dtype == dtype
            tiny = np.finfo(dtype).tiny
            np.testing.assert_allclose(np.where(expected < tiny, 0, got), np.where(expected < tiny, 0, expected),
                                       rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("op_type", ["Relu", "HardSigmoid", "HardSwish", "Tanh", "Sigmoid", "Softmax"])
def test_in_place_forms_equal_the_implementations(op_type):
    impl = _op(op_type)
    x = RNG.normal(scale=4, size=(3, 5, 7)).astype(np.float32)
    expected = impl.function(x)
    copy = x.copy()
    assert impl.inplace(copy) is copy
    np.testing.assert_array_equal(copy, expected)


def test_max_pool_by_kernel_position_equals_the_window_reduction():
    from cml_ops_std.conv import windows
    from cml_ops_std.pooling import _tap_maximum

    x = RNG.normal(size=(2, 3, 11, 12)).astype(np.float32)
    x[0, 1, 3, 4] = np.nan
    for layout in (x, _channels_last(x)):
        view = windows(layout, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], pad_value=-np.inf)
        np.testing.assert_array_equal(_tap_maximum(view, 2), view.max(axis=(-2, -1)))


@pytest.mark.parametrize("op_type", ["Sigmoid", "HardSigmoid"])
def test_gated_forms_equal_the_input_times_the_implementation(op_type):
    impl = _op(op_type)
    x = RNG.normal(scale=4, size=(2, 3, 5, 7)).astype(np.float32)
    x[0, 0, 0, :3] = [np.inf, -np.inf, np.nan]
    for layout in (x, _channels_last(x)):
        with np.errstate(invalid="ignore"):  # the input times its float32 gate, exactly
            expected = layout.astype(np.float64) * impl.function(layout).astype(np.float64)
        got = layout.copy(order="K")
        with np.errstate(invalid="ignore"):
            assert impl.gated(got) is got
        np.testing.assert_allclose(got, expected, rtol=2 * np.finfo(np.float32).eps, atol=1e-37)


@pytest.mark.parametrize("shape", [(1, 5, 6, 7), (3, 4, 9), (2, 3, 2, 2, 3)])
def test_global_average_pool_sums_either_layout_accurately(shape):
    x = RNG.normal(loc=1, size=shape).astype(np.float32)
    x[0, 0].flat[0] = np.inf
    pool = _op("GlobalAveragePool").function
    expected = x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    layouts = [x, np.ascontiguousarray(np.moveaxis(x, 1, -1)).transpose(0, -1, *range(1, x.ndim - 1)), x[:, ::-1]]
    for layout, want in zip(layouts, (expected, expected, expected[:, ::-1])):
        got = pool(layout)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float32).eps)


def test_depthwise_windows_a_few_samples_at_a_time(monkeypatch):
    from cml_ops_std import conv

    x = RNG.uniform(-3, 3, (5, 64, 9, 8)).astype(np.float32)
    w = RNG.uniform(-3, 3, (64, 1, 3, 3)).astype(np.float32)
    b = RNG.uniform(-3, 3, 64).astype(np.float32)
    attributes = {"group": 64, "pads": [1, 1, 1, 1], "strides": [2, 1]}
    kernel, expected = _conv_kernel(x, w, b, attributes)
    monkeypatch.setattr(conv, "DEPTHWISE_WINDOW_BUDGET", 2 * 11 * 10 * 64)  # two padded samples
    assert_close(np.ascontiguousarray(kernel(x, w, b)), expected, atol=_summation_bound(x, w, b, attributes))


@pytest.mark.parametrize("x_shape, slope_shape", [((2, 2), (2, 1)), ((2, 2), (2,)), ((1, 3, 4, 5), (3,)),
                                                  ((1, 3, 4, 3), (3,)), ((2, 3, 4), (3, 1))])
@pytest.mark.parametrize("opset", [1, 6])
def test_legacy_prelu_slope_follows_the_reference_evaluator(x_shape, slope_shape, opset):
    """Before opset 7 (no onnxruntime kernel), a slope broadcasts as numpy does when it can, else per channel."""
    from onnx.reference import ReferenceEvaluator

    x = -RNG.uniform(0.5, 1.0, x_shape).astype(np.float32)
    slope = RNG.uniform(0.0, 1.0, slope_shape).astype(np.float32)
    model = make_node_model("PRelu", [x, slope], {}, opset=opset, constant_inputs=(1,))
    expected = ReferenceEvaluator(model).run(None, feeds_of(model, [x, slope]))[0]
    np.testing.assert_array_equal(load_model(model)(x), expected)
