"""Property-test cases for the recurrent layers: RNN, GRU and LSTM.

From opset 7 on onnxruntime is the oracle, for every feature it implements: directions,
sequence_lens (zero lengths included), initial states, peepholes, linear_before_reset,
input_forget, clip and the activation functions with their alpha and beta. It runs only the
sequence-first layout (its kernels refuse ``layout=1``; the batch-first layout is covered by the
ONNX backend cases ``test_*_batchwise``) and only float32 for these ops.

GRU-1, GRU-3 and LSTM-1 are judged by the ONNX reference evaluator (onnxruntime has no kernel
before opset 7), which implements neither sequence_lens, clip, input_forget nor activation
functions other than the defaults: their examples keep to the rest.

Values stay small (inputs in [-1, 1], weights in [-0.5, 0.5], at most 3 steps) so that unbounded
activations (Relu, Affine, Softplus) keep outputs of a few units, where float32 rounding in
onnxruntime stays inside the float32 tolerance. ThresholdedRelu jumps at its threshold, so a
pre-activation rounded to either side of it in float32 and float64 changes an output by the
threshold itself; it is left to the backend cases and not drawn here.
"""

import dataclasses

import numpy as np
from cml_core.testing import Example, OpCase, float32s, float_arrays
from hypothesis import strategies as st

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
ACTIVATIONS_PER_DIRECTION = {"RNN": 1, "GRU": 2, "LSTM": 3}
#: activations drawn for the gates of GRU and LSTM (squashing into [0, 1] or [-1, 1] keeps the gates gates)
GATE_ACTIVATIONS = ["Sigmoid", "HardSigmoid", "Tanh", "Softsign", "ScaledTanh"]
#: activations drawn for RNN and the candidate / output activations of GRU and LSTM
ANY_ACTIVATIONS = GATE_ACTIVATIONS + ["Relu", "Affine", "LeakyRelu", "Elu", "Softplus"]


def _activations(draw, op_type, num_directions):
    names = []
    for _ in range(num_directions):
        for position in range(ACTIVATIONS_PER_DIRECTION[op_type]):
            gate = op_type != "RNN" and position == 0
            names.append(draw(st.sampled_from(GATE_ACTIVATIONS if gate else ANY_ACTIVATIONS)))
    attributes = {"activations": names}
    # every activation that takes an alpha (beta) finds one: ScaledTanh and Affine have no ONNX default
    attributes["activation_alpha"] = [draw(float32s(0.1, 1.0)) for _ in names]
    attributes["activation_beta"] = [draw(float32s(0.1, 1.0)) for _ in names]
    return attributes


@st.composite
def _recurrent(draw, op_type, opset):
    full = opset >= 7
    gates = GATES[op_type]
    direction = draw(st.sampled_from(["forward", "reverse", "bidirectional"]))
    num_directions = 2 if direction == "bidirectional" else 1
    steps, batch = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    input_size, hidden = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    x = draw(float_arrays((steps, batch, input_size), np.float32, -1, 1))
    w = draw(float_arrays((num_directions, gates * hidden, input_size), np.float32, -0.5, 0.5))
    r = draw(float_arrays((num_directions, gates * hidden, hidden), np.float32, -0.5, 0.5))
    inputs = [x, w, r]
    inputs.append(draw(st.none() | float_arrays((num_directions, 2 * gates * hidden), np.float32, -0.5, 0.5)))
    lengths = st.none()
    if full:
        lengths = lengths | st.lists(st.integers(0, steps), min_size=batch, max_size=batch).map(
            lambda v: np.array(v, np.int32))
    inputs.append(draw(lengths))
    state = float_arrays((num_directions, batch, hidden), np.float32, -1, 1)
    inputs.append(draw(st.none() | state))
    if op_type == "LSTM":
        inputs.append(draw(st.none() | state))
        inputs.append(draw(st.none() | float_arrays((num_directions, 3 * hidden), np.float32, -0.5, 0.5)))
    while inputs[-1] is None:
        inputs.pop()
    attributes = {"hidden_size": hidden, "direction": direction}
    if opset == 1 and op_type == "RNN":
        attributes["output_sequence"] = 1  # without it onnx infers no output shapes for RNN-1
    if full and draw(st.booleans()):
        attributes.update(_activations(draw, op_type, num_directions))
    if full and draw(st.booleans()):
        attributes["clip"] = draw(float32s(0.1, 2.0))
    if op_type == "GRU" and opset >= 3 and draw(st.booleans()):
        attributes["linear_before_reset"] = 1
    if op_type == "LSTM" and full and draw(st.booleans()):
        attributes["input_forget"] = 1
    outputs = 3 if op_type == "LSTM" else 2
    least = 2 if (op_type, opset) == ("GRU", 1) else 1  # GRU-1's Y_h is not optional
    n_outputs = draw(st.integers(least, outputs))
    weights = [i for i in (1, 2, 3) if i < len(inputs) and inputs[i] is not None]
    constant = tuple(draw(st.sampled_from([(), tuple(weights)])))
    if len(inputs) > 4 and inputs[4] is not None:
        constant = (*constant, 4)  # lengths are integers: an initializer, as a model would have them
    return Example(inputs, attributes, constant_inputs=constant, n_outputs=n_outputs)


CASES = [OpCase(op, lambda opset, op=op: _recurrent(op, opset)) for op in ("RNN", "GRU", "LSTM")]

# RNN-1 differs from RNN-7 only by output_sequence (whether Y is produced, which the node's outputs say since 7);
# neither onnxruntime nor the reference evaluator runs version 1, and ONNX's converter has no adapter for it
ORACLE_AT = {("RNN", 1): (7, lambda example: dataclasses.replace(
    example, attributes={k: v for k, v in example.attributes.items() if k != "output_sequence"}))}
