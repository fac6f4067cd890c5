"""Circuit cost of the multi-input non-linear ops (4-bit, one sample): python -m benchmarks.op_costs"""

import numpy as np
import onnx
from cml_core.fhe import circuit_summary
from onnx import helper, numpy_helper

from cml_core import load_model


def model(node, in_shape, out_shape, inits=()):
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
rng = np.random.default_rng(0)
cases = [
  ("Softmax over 8", model(helper.make_node("Softmax", ["x"], ["y"]), ["n", 8], ["n", 8]), (8,)),
  ("LogSoftmax over 8", model(helper.make_node("LogSoftmax", ["x"], ["y"]), ["n", 8], ["n", 8]), (8,)),
  ("LayerNormalization over 8", model(helper.make_node("LayerNormalization", ["x", "s"], ["y"]), ["n", 8], ["n", 8],
       [numpy_helper.from_array(np.ones(8, np.float32), "s")]), (8,)),
  ("MaxPool 2x2 on 1x4x4", model(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]), ["n", 1, 4, 4], ["n", 1, 2, 2]), (1, 4, 4)),
  ("ReduceMax over 8", model(helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=1), ["n", 8], ["n", 1],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")]), (8,)),
]
for name, m, shape in cases:
    x = rng.normal(size=(100, *shape)).astype(np.float32)
    q = load_model(m).quantize(x, n_bits=4)
    q.compile(x)
    s = circuit_summary(q.fhe_circuit)
    print(f"| {name} | {q.lookup_count} | {s['pbs']} | {s['max_bit_width']} | {s['complexity']:.3g} |", flush=True)
