"""Calibration in chunks, integer outputs, inputs outside what calibration saw, degenerate calibrations, input types."""

import warnings

import ml_dtypes
import numpy as np
import onnx
import pytest
from cml_core.demo import load_example
from cml_core.errors import CalibrationWarning, OutOfMemoryError, SaturationWarning
from cml_core.quantization import QuantizedModule, QuantizedOp, UniformQuantizer, calibration, context
from onnx import helper, numpy_helper

from cml_core import InputError, QuantizationError, load_model

F = onnx.TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10))


def _constant(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _attention_like_model():
    """MatMul -> Softmax -> MatMul -> (output, ReduceLogSumExp, ReduceSumSquare).

    Softmax and ReduceLogSumExp fit quantizers of intermediates during calibration, one after the
    other: what chunked calibration must get right. (ReduceSumSquare, exact on its quantized input,
    fits none.)
    """
    rng = np.random.default_rng(0)
    inits = [_constant("w1", rng.normal(size=(6, 8)).astype(np.float32)),
             _constant("w2", rng.normal(size=(8, 5)).astype(np.float32)),
             _constant("axes", np.array([1], dtype=np.int64))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["s"], name="scores"),
             helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "w2"], ["y"], name="mix"),
             helper.make_node("ReduceLogSumExp", ["y", "axes"], ["l"], name="lse", keepdims=1),
             helper.make_node("ReduceSumSquare", ["y", "axes"], ["e"], name="energy", keepdims=1)]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["n", 6])],
                  [helper.make_tensor_value_info("y", F, ["n", 5]), helper.make_tensor_value_info("l", F, ["n", 1]),
                   helper.make_tensor_value_info("e", F, ["n", 1])], inits)


def _normalized_model():
    """MatMul -> LayerNormalization -> MatMul."""
    rng = np.random.default_rng(1)
    inits = [_constant("w1", rng.normal(size=(6, 8)).astype(np.float32)),
             _constant("gamma", rng.uniform(0.5, 1.5, size=8).astype(np.float32)),
             _constant("beta", rng.normal(size=8).astype(np.float32)),
             _constant("w2", rng.normal(size=(8, 3)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="proj"),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], name="norm", axis=-1),
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="out")]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["n", 6])],
                  [helper.make_tensor_value_info("y", F, ["n", 3])], inits)


def _gemm_relu_model():
    rng = np.random.default_rng(1)
    inits = [_constant("w", rng.normal(size=(4, 3)).astype(np.float32)),
             _constant("b", rng.normal(size=3).astype(np.float32)),
             _constant("w2", rng.normal(size=(3, 2)).astype(np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["n", 4])],
                  [helper.make_tensor_value_info("y", F, ["n", 2])], inits, opset=14)


def _fitted_state(qmodule):
    """Every quantizer ops fitted during calibration, by (node, key)."""
    return {(op.bound.name, key): value for op in qmodule.ops for key, value in op.state.items()
            if isinstance(value, UniformQuantizer)}


def _assert_same_calibration(a, b, *data):
    assert a.float_ranges == b.float_ranges
    assert a.input_quantizers == b.input_quantizers
    assert _fitted_state(a) == _fitted_state(b)
    assert a.sites == b.sites and a.accumulators == b.accumulators
    assert a.bitwidth_report() == b.bitwidth_report()
    for x in data:
        qa = a.quantized_forward(a.quantize_input(x))
        qb = b.quantized_forward(b.quantize_input(x))
        for ya, yb in zip(qa if isinstance(qa, tuple) else (qa,), qb if isinstance(qb, tuple) else (qb,)):
            np.testing.assert_array_equal(ya, yb)
        for ya, yb in zip(*(m.dequantize_output(*(q if isinstance(q, tuple) else (q,))) for m, q in ((a, qa), (b, qb)))):
            np.testing.assert_array_equal(ya, yb)


# -- chunked calibration ----------------------------------------------------------------------------
@pytest.mark.parametrize("rounding", [None, 4])
def test_chunked_calibration_equals_one_chunk(rounding):
    module = _attention_like_model()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(23, 6)).astype(np.float32)
    fresh = rng.normal(scale=0.5, size=(9, 6)).astype(np.float32)
    whole = module.quantize(x, n_bits=6, rounding_threshold_bits=rounding, calibration_chunk_size=23)
    assert whole.calibration_passes == 1 and whole.calibration_chunk_size == 23
    assert len(_fitted_state(whole)) == 5  # Softmax (2) and ReduceLogSumExp (3)
    for size in (1, 4, 22, None):
        chunked = module.quantize(x, n_bits=6, rounding_threshold_bits=rounding, calibration_chunk_size=size)
        _assert_same_calibration(whole, chunked, x, fresh)
        if size is not None and size < 23:
            assert chunked.calibration_passes > 1  # the chain of fitted quantizers took several passes


@pytest.mark.parametrize("rounding", [None, 4])
def test_chunked_calibration_of_layer_normalization_equals_one_chunk(rounding):
    module = _normalized_model()
    x = np.random.default_rng(18).normal(size=(19, 6)).astype(np.float32)
    whole = module.quantize(x, n_bits=6, rounding_threshold_bits=rounding, calibration_chunk_size=19)
    chunked = module.quantize(x, n_bits=6, rounding_threshold_bits=rounding, calibration_chunk_size=1)
    _assert_same_calibration(whole, chunked, x)


@pytest.mark.parametrize("min_span", [0.0, 3.0, 50.0])
def test_fitted_quantizer_over_chunks_equals_one_chunk(min_span):
    module = _gemm_relu_model()
    op = module.quantize(np.random.default_rng(20).normal(size=(2, 4)).astype(np.float32)).ops[1]
    values = np.random.default_rng(19).normal(scale=4, size=(3, 10))
    values[1, 4] = np.nan  # not finite: left out
    values[2] = np.inf  # a chunk without a finite value
    config = context.QuantConfig(6, 6, 6, 6)

    def fitted(chunks, recorder):
        op.state.clear()
        ctx = context.QuantContext(config, {}, {}, {}, {}, True, calibration=recorder)
        for part in chunks:
            try:
                return op.fitted_quantizer(ctx, "k", part, min_span=min_span)
            except context.PendingRange:
                continue
        assert not recorder.end_pass()
        return op.fitted_quantizer(ctx, "k", chunks[0], min_span=min_span)

    chunked = fitted(list(values), context.IntegerCalibration(3))
    assert fitted([values], context.IntegerCalibration(1)) == chunked
    finite = values[np.isfinite(values)]
    low, high = finite.min(), finite.max()
    widen = max(0.0, min_span - (high - low)) / 2
    assert chunked == UniformQuantizer.fit(low - widen, high + widen, 6)


def test_float_ranges_are_those_of_the_float_model_on_each_sample():
    module = _attention_like_model()
    x = np.random.default_rng(17).normal(size=(12, 6)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=6)
    per_sample = [module.run(x[i : i + 1], keep_intermediates=True) for i in range(len(x))]
    expected = {name: (min(float(np.min(v[name])) for v in per_sample), max(float(np.max(v[name])) for v in per_sample))
                for name in per_sample[0] if name not in module.constants}
    # probabilities are quantized from 0 (their op's ``output_floor``), whatever the calibration data reached
    for bound in module.nodes:
        if bound.node.op_type == "Softmax":
            low, high = expected[bound.node.output[0]]
            expected[bound.node.output[0]] = (min(low, 0.0), high)
    assert qmodule.float_ranges == expected


def test_set_rounding_after_chunked_calibration_equals_one_chunk():
    module = _attention_like_model()
    x = np.random.default_rng(3).normal(size=(17, 6)).astype(np.float32)
    whole = module.quantize(x, n_bits=6, calibration_chunk_size=17).set_rounding(4)
    chunked = module.quantize(x, n_bits=6, calibration_chunk_size=3).set_rounding(4)
    _assert_same_calibration(whole, chunked, x)


def test_chunked_calibration_of_the_shipped_digits_model_equals_one_chunk():
    model, data = load_example()
    module = load_model(model)
    x = data["x_train"][:300]
    settings = {"n_bits": {"model_inputs": 5, "op_inputs": 6, "op_weights": 6}, "rounding_threshold_bits": 5}
    whole = module.quantize(x, calibration_chunk_size=len(x), **settings)
    chunked = module.quantize(x, calibration_chunk_size=7, **settings)
    _assert_same_calibration(whole, chunked, x, data["x_test"])


def test_default_chunk_size_follows_the_memory_budget(monkeypatch):
    module = _gemm_relu_model()
    x = np.random.default_rng(4).normal(size=(40, 4)).astype(np.float32)
    assert module.quantize(x).calibration_chunk_size == 40  # a small model: everything in one chunk
    # the most elements one sample holds alive: its 4 inputs, then 3 of h, then (h dropped) 3 of r
    peak = 4 + 3 + 3
    monkeypatch.setattr(calibration, "CHUNK_MEMORY_BUDGET", 6 * peak * calibration.BYTES_PER_LIVE_ELEMENT)
    reference = module.quantize(x, calibration_chunk_size=40)
    small = module.quantize(x)
    assert small.calibration_chunk_size == 6
    _assert_same_calibration(reference, small, x)


def test_calibration_never_holds_more_than_a_chunk_of_samples(monkeypatch):
    module = _attention_like_model()
    x = np.random.default_rng(5).normal(size=(20, 6)).astype(np.float32)
    float_rows, integer_rows, kept = [], [], []
    original_run = type(module).run

    def spy_run(self, *inputs, keep_intermediates=False, observe=None):
        kept.append(keep_intermediates)
        float_rows.extend(np.shape(a)[0] for a in inputs)

        def seen(name, value):
            float_rows.append(np.shape(value)[0])
            if observe is not None:
                observe(name, value)

        return original_run(self, *inputs, keep_intermediates=keep_intermediates, observe=seen)

    original_forward = QuantizedOp.forward

    def spy_forward(self, ctx, inputs):
        integer_rows.extend(np.shape(v.data)[0] for v in inputs if v is not None and not v.is_constant)
        return original_forward(self, ctx, inputs)

    monkeypatch.setattr(type(module), "run", spy_run)
    monkeypatch.setattr(QuantizedOp, "forward", spy_forward)
    module.quantize(x, n_bits=6, calibration_chunk_size=3)
    assert not any(kept)
    assert float_rows and max(float_rows) == 1  # the float model, one sample at a time
    assert integer_rows and max(integer_rows) == 3  # the integer program, one chunk at a time


def test_inputs_that_cannot_be_split_are_calibrated_in_one_piece():
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    module = _model(nodes, [helper.make_tensor_value_info("x", F, [5, 3])],
                    [helper.make_tensor_value_info("y", F, [5, 2])],
                    [_constant("w", rng.normal(size=(3, 2)).astype(np.float32))])
    x = rng.normal(size=(5, 3)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=8, calibration_chunk_size=1)  # a fixed first axis is not a batch
    assert qmodule.calibration_chunk_size == 0 and qmodule.calibration_passes == 1
    np.testing.assert_allclose(qmodule(x), module(x), atol=0.1)


@pytest.mark.parametrize("size", [0, -2, 2.5, True, "4"])
def test_bad_chunk_size(size):
    with pytest.raises(QuantizationError, match="calibration_chunk_size"):
        _gemm_relu_model().quantize(np.ones((4, 4), np.float32), calibration_chunk_size=size)


def test_memory_error_in_the_integer_pass_names_the_node_and_the_chunk_size(monkeypatch):
    module = _gemm_relu_model()
    x = np.random.default_rng(7).normal(size=(32, 4)).astype(np.float32)

    def no_memory(self, data):
        raise MemoryError

    monkeypatch.setattr(context.QuantContext, "record_accumulator", no_memory)
    with pytest.raises(OutOfMemoryError, match=r"node 'fc1' \(Gemm\).*calibration_chunk_size.*now 16") as info:
        module.quantize(x, calibration_chunk_size=16)
    assert isinstance(info.value, MemoryError)


def test_memory_error_in_the_float_pass_names_the_node(monkeypatch):
    module = _gemm_relu_model()

    def no_memory(values):
        raise MemoryError

    monkeypatch.setattr(module.nodes[1], "call", no_memory)
    with pytest.raises(OutOfMemoryError, match=r"calibration ran out of memory.*one sample at a time.*node 'act'"):
        module.quantize(np.ones((8, 4), np.float32))


# -- integer outputs --------------------------------------------------------------------------------
def _integer_add_model(dtype):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return _model([helper.make_node("Add", ["a", "b"], ["y"], name="add")],
                  [helper.make_tensor_value_info("a", elem, ["n", 3]), helper.make_tensor_value_info("b", elem, ["n", 3])],
                  [helper.make_tensor_value_info("y", elem, ["n", 3])], opset=14)


def test_integer_outputs_round_to_nearest():
    module = _integer_add_model(np.int64)
    rng = np.random.default_rng(8)
    a, b = rng.integers(0, 256, size=(2, 200, 3))
    a[0, 0], b[0, 0], a[1, 0], b[1, 0] = 0, 0, 255, 255
    # 8-bit inputs over [0, 255] are exact; the 9-bit output over [0, 510] errs by at most half a step (< 0.5)
    qmodule = module.quantize((a, b), n_bits={"model_inputs": 8, "op_inputs": 9, "op_weights": 8})
    expected = module(a, b)
    y = qmodule(a, b)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, expected)


def test_integer_outputs_out_of_the_type_saturate_with_a_warning():
    module = _integer_add_model(np.int8)
    rng = np.random.default_rng(9)
    a, b = rng.integers(-60, 61, size=(2, 50, 3)).astype(np.int8)
    qmodule = module.quantize((a, b), n_bits=8)
    qz = qmodule._outputs[0]
    beyond = np.array([[0, 1, 255], [-300, 400, 128]])  # integers far outside the calibrated output range
    floats = qz.to_float(beyond)
    with pytest.warns(SaturationWarning, match=r"output 'y' is declared int8: \d+ value\(s\) outside \[-128, 127\]"):
        y = qmodule.dequantize_output(beyond)
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, np.clip(np.rint(floats), -128, 127))  # never wrapped around
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qmodule(a, b)  # in-range outputs: no warning


# -- inputs the quantized model cannot represent --------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused(bad):
    module = _gemm_relu_model()
    x = np.random.default_rng(10).normal(size=(6, 4)).astype(np.float32)
    qmodule = module.quantize(x)
    x_bad = x.copy()
    x_bad[1, 2] = x_bad[4, 0] = x_bad[5, 3] = bad
    with np.errstate(invalid="ignore"):
        assert not np.all(np.isfinite(module(x_bad)))  # the float model does not give finite outputs either
    for call in (qmodule, qmodule.forward, qmodule.quantize_input):
        with pytest.raises(InputError, match=r"input 'x' holds 3 NaN or infinite value\(s\) \(of 24\)"):
            call(x_bad)


def test_inputs_outside_the_calibrated_range_warn_once_per_call():
    model, data = load_example()
    module = load_model(model)
    qmodule = module.quantize(data["x_train"], n_bits={"model_inputs": 5, "op_inputs": 6, "op_weights": 6})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qmodule(data["x_test"])  # the same kind of data: nothing to say
    x = data["x_test"] * 10 - 4
    qz = qmodule.input_quantizers[0]
    half = qz.scale / 2
    expected = int(np.sum((x < qz.dequant(qz.q_min) - half) | (x > qz.dequant(qz.q_max) + half)))
    low, high = qmodule.float_ranges["input"] if "input" in qmodule.float_ranges else qmodule.float_ranges[
        module.input_names[0]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodule(x)
    saturation = [w for w in caught if issubclass(w.category, SaturationWarning)]
    assert len(saturation) == 1
    message = str(saturation[0].message)
    assert f"{expected} of {x.size} values of input {module.input_names[0]!r}" in message
    assert f"[{low:.6g}, {high:.6g}]" in message
    assert saturation[0].filename == __file__  # points at the caller


def test_saturation_warning_names_every_saturated_input_in_one_warning():
    module = _integer_add_model(np.float32)
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(2, 30, 3)).astype(np.float32)
    qmodule = module.quantize((a, b))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodule(a * 100, b * 100)
    assert len(caught) == 1 and issubclass(caught[0].category, SaturationWarning)
    assert "input 'a'" in str(caught[0].message) and "input 'b'" in str(caught[0].message)


# -- degenerate calibrations ------------------------------------------------------------------------
def _calibration_warnings(module, x, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qmodule = module.quantize(x, **options)
    return qmodule, [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]


def test_constant_calibration_data_warns():
    _, messages = _calibration_warnings(_gemm_relu_model(), np.full((10, 4), 0.5, np.float32))
    assert len(messages) == 1 and "input 'x' is constant over the calibration data (every value is 0.5)" in messages[0]


def test_an_outlier_dominating_the_range_warns():
    x = np.random.default_rng(12).normal(size=(200, 4)).astype(np.float32)
    x[17, 2] = 1e30
    qmodule, messages = _calibration_warnings(_gemm_relu_model(), x)
    assert len(messages) == 1 and "input 'x'" in messages[0] and "outliers" in messages[0]
    assert "1e+30" in messages[0]


@pytest.mark.parametrize("n_bits,expected,collapses", [
    (1, ["1 bit ('op_inputs')", "1 bit ('op_weights')", "quantized to 1 bit ('model_inputs')"], True),
    ({"model_inputs": 8, "op_inputs": 8, "op_weights": 1}, ["1 bit ('op_weights')"], True),
    ({"model_inputs": 1, "op_inputs": 8, "op_weights": 8}, ["quantized to 1 bit ('model_inputs')"], False),
])
def test_one_bit_settings_warn(n_bits, expected, collapses):
    x = np.random.default_rng(13).normal(size=(50, 4)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if collapses:  # 1-bit weights leave the output one value for every sample: refused, after the warnings
            with pytest.raises(QuantizationError, match="quantization collapsed it"):
                _gemm_relu_model().quantize(x, n_bits=n_bits)
        else:
            _gemm_relu_model().quantize(x, n_bits=n_bits)
    messages = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    assert len(messages) == len(expected)
    for part in expected:
        assert any(part in m for m in messages), (part, messages)


def test_one_bit_inputs_are_fine_for_binary_data():
    x = np.random.default_rng(14).integers(0, 2, size=(50, 4)).astype(np.float32)
    _, messages = _calibration_warnings(_gemm_relu_model(), x, n_bits={"model_inputs": 1, "op_inputs": 8,
                                                                       "op_weights": 8})
    assert messages == []


def test_ordinary_calibrations_do_not_warn():
    model, data = load_example()
    _, messages = _calibration_warnings(load_model(model), data["x_train"],
                                        n_bits={"model_inputs": 5, "op_inputs": 6, "op_weights": 6})
    assert messages == []
    rng = np.random.default_rng(15)
    relu_like = np.maximum(rng.normal(loc=-0.5, size=(2000, 4)), 0).astype(np.float32)  # ~70% zeros
    heavy_tail = rng.lognormal(size=(2000, 4)).astype(np.float32)
    sparse = (rng.random((2000, 4)) < 0.001) * rng.normal(size=(2000, 4)).astype(np.float32)  # nearly all zeros
    for x in (relu_like, heavy_tail, sparse):
        for n_bits in (2, 4, 8):
            _, messages = _calibration_warnings(_gemm_relu_model(), x, n_bits=n_bits)
            assert messages == [], messages


# -- input types ------------------------------------------------------------------------------------
@pytest.mark.parametrize("elem", [onnx.TensorProto.BFLOAT16, onnx.TensorProto.COMPLEX64, onnx.TensorProto.STRING])
def test_inputs_declared_in_an_unquantizable_type_are_refused(elem):
    module = _model([helper.make_node("Identity", ["x"], ["y"])], [helper.make_tensor_value_info("x", elem, ["n", 3])],
                    [helper.make_tensor_value_info("y", elem, ["n", 3])], opset=14)
    with pytest.raises(QuantizationError, match=r"input 'x' is declared .*float32"):
        module.quantize(np.ones((4, 3), np.float32))


@pytest.mark.parametrize("data", [np.ones((4, 4), np.complex64), np.full((4, 4), "a"), np.ones((4, 4), object)])
def test_calibration_data_of_an_unquantizable_type_is_refused(data):
    with pytest.raises(InputError, match=r"input 'x' is given as .*float32"):
        _gemm_relu_model().quantize(data)


def test_bfloat16_calibration_data_for_a_float_input_is_converted():
    x = np.random.default_rng(16).normal(size=(20, 4)).astype(ml_dtypes.bfloat16)
    module = _gemm_relu_model()
    from_bf16 = module.quantize(x)
    from_f32 = module.quantize(x.astype(np.float32))
    assert from_bf16.float_ranges == from_f32.float_ranges
    assert isinstance(from_bf16, QuantizedModule)
