"""Property-test cases for the losses (NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss) and the
optimizers of ai.onnx.preview.training (Adagrad, Adam, Momentum).

onnxruntime judges the losses; it has no kernel for the training domain in its default build, where
the ONNX reference evaluator judges. Labels and the step count T are integers: they are
initializers, as in a model, so the quantized tests see the float inputs encrypted (and refused).
"""

import numpy as np
from cml_core.testing import Example, OpCase, float32s, float_arrays
from hypothesis import strategies as st

TRAINING = "ai.onnx.preview.training"

_SUMMED_LOSS = (
    "onnxruntime's float32 kernels sum the per-position losses (and weights) in float32: a mean or sum near zero "
    "between terms of a few units carries their rounding, beyond the float32 tolerance relative to the result; "
    "cml sums in float64 and rounds once"
)
FLOAT64_ORACLE = {"NegativeLogLikelihoodLoss": _SUMMED_LOSS, "SoftmaxCrossEntropyLoss": _SUMMED_LOSS}


@st.composite
def _classification(draw, opset):
    """(values [N, C, d...], labels [N, d...], optional weights [C]) with attributes."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    classes = draw(st.integers(1, 4))
    batch = draw(st.integers(1, 3))
    extra = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    values = draw(float_arrays((batch, classes, *extra), dtype, -5, 5))
    attributes = {}
    ignore_index = draw(st.none() | st.integers(-2, classes + 1))
    if ignore_index is not None:
        attributes["ignore_index"] = ignore_index
    label_values = st.integers(0, classes - 1)
    if ignore_index is not None:
        label_values = label_values | st.just(ignore_index)
    labels = np.array(draw(st.lists(label_values, min_size=batch * int(np.prod(extra, dtype=np.int64)),
                                    max_size=batch * int(np.prod(extra, dtype=np.int64)))),
                      dtype=draw(st.sampled_from([np.int64, np.int32]))).reshape((batch, *extra))
    inputs = [values, labels]
    if draw(st.booleans()):
        inputs.append(draw(float_arrays((classes,), dtype, 0.1, 2)))
    if draw(st.booleans()):
        attributes["reduction"] = draw(st.sampled_from(["none", "sum", "mean"]))
    return inputs, attributes


@st.composite
def _negative_log_likelihood(draw, opset):
    inputs, attributes = draw(_classification(opset))
    return Example(inputs, attributes, constant_inputs=(1,))


@st.composite
def _softmax_cross_entropy(draw, opset):
    inputs, attributes = draw(_classification(opset))
    return Example(inputs, attributes, constant_inputs=(1,), n_outputs=draw(st.integers(1, 2)))


@st.composite
def _optimizer(draw, opset, groups, attributes):
    """R, T and ``groups`` groups of tensors (one tensor per optimized parameter in each), the last
    groups being accumulated squares (never negative) where ``groups`` names them "H"."""
    rate_dtype = draw(st.sampled_from([np.float32, np.float64]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    count = draw(st.integers(1, 3))
    if count > 1:
        dtype = np.float32  # the reference evaluator returns float32 for several Adam tensors whatever their type
    # rank 1 or more: on 0-d tensors the reference evaluator promotes float32 to float64 (numpy scalar rules)
    shapes = [tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))) for _ in range(count)]
    tensors = []
    for name in groups:
        low, high = (0.0, 4.0) if name == "H" else (-2.0, 2.0)
        tensors.extend(draw(float_arrays(shape, dtype, low, high)) for shape in shapes)
    rate = np.array(draw(float32s(0.01, 1.0)), dtype=rate_dtype)
    step = np.array(draw(st.integers(0, 5)), dtype=np.int64)
    constant = (1,) if draw(st.booleans()) else (0, 1)
    return Example([rate, step, *tensors], draw(attributes), constant_inputs=constant,
                   n_outputs=(len(groups) - 1) * count)


def _optional(**strategies):
    """Attributes each drawn or left to their default."""
    return st.fixed_dictionaries({}, optional=strategies)


_ADAGRAD = _optional(decay_factor=float32s(0.0, 0.5), epsilon=float32s(1e-7, 1e-2),
                     norm_coefficient=float32s(0.0, 0.5))
_ADAM = _optional(alpha=float32s(0.5, 0.99), beta=float32s(0.5, 0.999), epsilon=float32s(1e-7, 1e-2),
                  norm_coefficient=float32s(0.0, 0.5), norm_coefficient_post=float32s(0.0, 0.5))
_MOMENTUM = st.fixed_dictionaries({"alpha": float32s(0.0, 0.99), "beta": float32s(0.0, 1.0),
                                   "mode": st.sampled_from(["standard", "nesterov"]),
                                   "norm_coefficient": float32s(0.0, 0.5)})

CASES = [
    OpCase("NegativeLogLikelihoodLoss", _negative_log_likelihood),
    OpCase("SoftmaxCrossEntropyLoss", _softmax_cross_entropy),
    OpCase("Adagrad", lambda opset: _optimizer(opset, ("X", "G", "H"), _ADAGRAD), domain=TRAINING),
    OpCase("Adam", lambda opset: _optimizer(opset, ("X", "G", "V", "H"), _ADAM), domain=TRAINING),
    OpCase("Momentum", lambda opset: _optimizer(opset, ("X", "G", "V"), _MOMENTUM), domain=TRAINING),
]
