"""Property-test cases for control flow (If, Loop, Scan): small bodies built in the strategies.

The bodies read outer-scope values (the node's own graph inputs) as well as their own inputs.
"""

import numpy as np
from cml_core.testing import Example, OpCase, float_arrays, shapes
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _constant(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


@st.composite
def _if(draw, opset):
    """If on a boolean scalar; each branch gives a constant of its own and reads the outer condition."""
    shape = draw(shapes(max_dims=2, max_side=3))
    then_value, else_value = draw(float_arrays(shape)), draw(float_arrays(shape))

    def branch(prefix, value, op):
        nodes = [_constant(f"{prefix}_c", value), helper.make_node(op, ["x0"], [f"{prefix}_o"])]
        declared = [helper.make_tensor_value_info(f"{prefix}_c", F, list(shape)),
                    helper.make_tensor_value_info(f"{prefix}_o", TensorProto.BOOL, [])]
        return helper.make_graph(nodes, f"{prefix}_branch", [], declared)

    cond = np.array(draw(st.booleans()))
    return Example([cond], {"then_branch": branch("then", then_value, "Identity"),
                            "else_branch": branch("else", else_value, "Not")},
                   constant_inputs=draw(st.sampled_from([(), (0,)])), n_outputs=2)


@st.composite
def _loop(draw, opset):
    """Loop with a trip count and/or a condition: the carried value adds the outer ``x2`` each step,
    the body's condition is ``i < stop``, and the scan output stacks each step's value. At least one
    iteration runs and the condition is given: the reference evaluator, which declares the outputs
    ONNX's inference leaves without a shape, cannot stack a scan output of no iterations and reads
    an omitted condition as false (loops of no iterations and without a condition are checked
    against onnxruntime in tests/core/test_control_flow.py)."""
    # onnxruntime runs Loop from opset 11 on; the reference evaluator, its stand-in before, joins scan
    # outputs with vstack, which stacks along a new axis only for 1-D values: 1-D values there
    rank = st.integers(0, 2) if opset >= 11 else st.just(1)
    x = draw(float_arrays(rank.flatmap(lambda r: shapes(r, r, max_side=3)), min_value=-5, max_value=5))
    # Less takes integers from opset 9 on: before, the condition is passed through and the trip count stops
    trip = np.array(draw(st.integers(1, 4)), np.int64) if opset < 9 or draw(st.booleans()) else None
    cond = np.array(True)
    condition = (helper.make_node("Less", ["i", "stop"], ["cond_out"]) if opset >= 9
                 else helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    stop = np.array(draw(st.integers(0, 4)), np.int64)
    body = helper.make_graph(
        [condition,
         helper.make_node("Add", ["v", "x2"], ["v_out"]),
         helper.make_node("Mul", ["v_out", "v"], ["scan_out"])],
        "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", F, list(x.shape))],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", F, list(x.shape)),
         helper.make_tensor_value_info("scan_out", F, list(x.shape))],
        [numpy_helper.from_array(stop, "stop")])
    constant = draw(st.sampled_from([(), (0, 1)]))
    return Example([trip, cond, x], {"body": body}, constant_inputs=constant, n_outputs=2)


@st.composite
def _scan(draw, opset):
    """Scan (opset 9+) of one state and one scan input over any axis, in either direction; the body
    accumulates the slices into the state and emits the slice plus the outer initial state."""
    slice_shape = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    length = draw(st.integers(1, 4))
    rank = len(slice_shape) + 1
    axis = draw(st.integers(-rank, rank - 1) if opset >= 11 else st.integers(0, rank - 1))
    x_shape = list(slice_shape)
    x_shape.insert(axis % rank, length)
    state = draw(float_arrays(slice_shape))
    xs = draw(float_arrays(tuple(x_shape)))
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "x_t"], ["s_out"]),
         helper.make_node("Add", ["x_t", "x0"], ["y_t"])],
        "scan_body",
        [helper.make_tensor_value_info("s", F, list(slice_shape)),
         helper.make_tensor_value_info("x_t", F, list(slice_shape))],
        [helper.make_tensor_value_info("s_out", F, list(slice_shape)),
         helper.make_tensor_value_info("y_t", F, list(slice_shape))])
    out_axis = draw(st.integers(-rank, rank - 1) if opset >= 11 else st.integers(0, rank - 1))
    attributes = {"body": body, "num_scan_inputs": 1, "scan_input_axes": [axis],
                  "scan_input_directions": [draw(st.integers(0, 1))],
                  "scan_output_axes": [out_axis], "scan_output_directions": [draw(st.integers(0, 1))]}
    if opset == 8:
        return _scan_8(draw)
    return Example([state, xs], attributes, n_outputs=2)


def _scan_8(draw):
    """Scan-8: a batch of states and sequences, with or without per-entry lengths."""
    batch, length, width = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    state = draw(float_arrays((batch, width)))
    xs = draw(float_arrays((batch, length, width)))
    lens = draw(st.none() | st.lists(st.integers(1, length), min_size=batch, max_size=batch))
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "x_t"], ["s_out"]),
         helper.make_node("Mul", ["x_t", "s"], ["y_t"])],
        "scan_body",
        [helper.make_tensor_value_info("s", F, [width]), helper.make_tensor_value_info("x_t", F, [width])],
        [helper.make_tensor_value_info("s_out", F, [width]), helper.make_tensor_value_info("y_t", F, [width])])
    attributes = {"body": body, "num_scan_inputs": 1, "directions": [draw(st.integers(0, 1))]}
    sequence_lens = None if lens is None else np.array(lens, np.int64)
    return Example([sequence_lens, state, xs], attributes, n_outputs=2)


CASES = [
    OpCase("If", _if),
    OpCase("Loop", _loop),
    OpCase("Scan", _scan),
]
