"""Transformer subgraphs as exporters write them: they load, match onnxruntime and quantize."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cml_core import load_model

HIDDEN = 8
EPSILON = 1e-5


def _skip_layer_norm_model(rng):
    """Add(x, skip) -> Add(bias) -> LayerNormalization(gamma, beta): a SkipLayerNorm left unfused."""
    nodes = [helper.make_node("Add", ["x", "skip"], ["h1"]),
             helper.make_node("Add", ["h1", "bias"], ["h2"]),
             helper.make_node("LayerNormalization", ["h2", "gamma", "beta"], ["y"], axis=-1, epsilon=EPSILON)]
    parameters = {"bias": rng.normal(0, 0.5, HIDDEN), "gamma": rng.uniform(0.5, 1.5, HIDDEN),
                  "beta": rng.normal(0, 0.1, HIDDEN)}
    inits = [numpy_helper.from_array(v.astype(np.float32), name) for name, v in parameters.items()]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 4, HIDDEN]) for name in ("x", "skip")]
    graph = helper.make_graph(nodes, "skip_layer_norm", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, HIDDEN])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), parameters


def _error_bound(qmodule, n_bits, h2, gamma):
    """The largest error quantization can cause, from the steps of the quantizers involved.

    Each ``n``-bit rounding moves a value by half its step: the inputs x and skip, their sum h1 (a
    two-input lookup) and the LayerNormalization's requantization of h2 = h1 + bias, so each element of
    h2 is off by at most ``e``. A row normalized as ``z = (h - mean) / std`` then moves by at most
    ``2 e (1 + |z|) / std`` (the deviation by 2e, the deviation's rms likewise). Inside the op the
    deviations are requantized over twice h2's range (another ``e_dev``), the row's log-variance code
    errs by half a step of its span (1/std off by a factor ``exp(step / 4)``) and the normalized value by
    half a step of ``[-max|z|, max|z|]``; gamma scales all of it, and the model output is rounded to
    half a step of its own range.
    """
    levels = 2**n_bits - 1
    steps = {name: (high - low) / levels for name, (low, high) in qmodule.float_ranges.items()}
    e = (steps["x"] + steps["skip"] + steps["h1"] + steps["h2"]) / 2
    e_dev = steps["h2"]
    mean = h2.mean(axis=-1, keepdims=True)
    variance = np.square(h2 - mean).mean(axis=-1, keepdims=True)
    std = np.sqrt(variance + EPSILON)
    z_max = float(np.max(np.abs((h2 - mean) / std)))
    log_variance = np.log(variance + EPSILON)
    log_span = max(float(np.ptp(log_variance)), float(np.log(4.0)))
    in_normalized = (2 * (e + e_dev) * (1 + z_max) / float(std.min()) + z_max * np.expm1(log_span / levels / 4)
                     + z_max / levels)
    return float(np.max(np.abs(gamma))) * in_normalized + steps["y"] / 2


def test_skip_layer_norm_loads_matches_onnxruntime_and_quantizes():
    rng = np.random.default_rng(0)
    model, parameters = _skip_layer_norm_model(rng)
    module = load_model(model)
    x = rng.normal(0, 1, (40, 4, HIDDEN)).astype(np.float32)
    skip = rng.normal(0, 1, (40, 4, HIDDEN)).astype(np.float32)
    y = module(x, skip)

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x, "skip": skip})
    assert y.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)

    h2 = x.astype(np.float64) + skip + parameters["bias"]
    errors = {}
    for n_bits in (8, 10, 12):
        qmodule = module.quantize((x, skip), n_bits=n_bits)
        y_q = qmodule(x, skip)
        assert y_q.shape == y.shape and y_q.dtype == y.dtype
        errors[n_bits] = float(np.max(np.abs(y_q.astype(np.float64) - y)))
        bound = _error_bound(qmodule, n_bits, h2, parameters["gamma"])
        assert errors[n_bits] <= bound, f"{n_bits} bits: error {errors[n_bits]} above the derived bound {bound}"
    assert errors[12] < errors[8] / 4, f"more bits do not shrink the error: {errors}"


@pytest.mark.parametrize("n_bits", [8])
def test_skip_layer_norm_quantized_rows_stay_normalized(n_bits):
    """Each quantized output row, with beta removed and gamma divided out, keeps mean 0 and rms 1 to
    within the derived bound (the op normalizes every row at its own scale)."""
    rng = np.random.default_rng(1)
    model, parameters = _skip_layer_norm_model(rng)
    module = load_model(model)
    x = rng.normal(0, 1, (40, 4, HIDDEN)).astype(np.float32)
    skip = rng.normal(0, 1, (40, 4, HIDDEN)).astype(np.float32)
    qmodule = module.quantize((x, skip), n_bits=n_bits)
    h2 = x.astype(np.float64) + skip + parameters["bias"]
    bound = _error_bound(qmodule, n_bits, h2, parameters["gamma"])
    z = (qmodule(x, skip).astype(np.float64) - parameters["beta"]) / parameters["gamma"]
    per_element = bound / float(np.min(np.abs(parameters["gamma"])))
    assert float(np.max(np.abs(z.mean(axis=-1)))) <= per_element
    assert float(np.max(np.abs(np.sqrt(np.square(z).mean(axis=-1)) - 1))) <= per_element
