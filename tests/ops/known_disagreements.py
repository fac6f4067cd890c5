"""Where the default oracle cannot judge an op, and what judges it instead, with the reason.

``KNOWN_DISAGREEMENTS``: (op type, since-version) -> reason. onnxruntime disagrees with the ONNX
specification; the ONNX reference evaluator is the oracle.

``FLOAT64_ORACLE``: op type -> reason. The oracle's float32 kernel is less accurate than the float32
tolerance (relative to each output value) assumes, so float32 examples are compared with the oracle
run on the same model in float64, its results rounded to float32. cml computes these ops in float64
and rounds once, so the comparison is tighter than against the float32 kernel, not looser.

``UINT8_ONNXRUNTIME``: (op type, since-version) -> the operands to shift. Only on a CPU where onnxruntime's
integer kernels with an int8 operand saturate (``ONNXRUNTIME_SATURATES_U8S8``): onnxruntime runs the same
example with every int8 operand and its zero point moved up by 128 into uint8 (``v - z`` is unchanged, so is the
result), where its uint8 x uint8 kernels are exact; an int8 output is moved back down. Each entry lists
(operand, its zero point) input positions and the output's zero point position (None: an int32 output).
"""

KNOWN_DISAGREEMENTS = {
    ("Dropout", 10): "onnxruntime returns an all-false mask in inference; the spec (and the ONNX reference "
                     "evaluator) keep every element, so the mask is all true",
}

_QUANTIZE_LINEAR = (
    "onnxruntime divides float16 (and bfloat16) inputs by the scale in float32, where ONNX says the scale's type "
    "(or the precision attribute) sets the division's precision: a float16 quotient such as 301.4 becomes 301.5 "
    "and rounds to 302, onnxruntime gives 301 (seen on 3 to 4 of 50 values with int16 outputs). Its Python binding "
    "also cannot return float8 (e4m3fn comes back as raw uint8 bits), int4/uint4, int2/uint2 or float4e2m1 "
    "tensors, and it has no kernel for some of them; uint8/int8/int16/uint16 from float32 agree with it"
)
KNOWN_DISAGREEMENTS.update({("QuantizeLinear", version): _QUANTIZE_LINEAR for version in (19, 21, 23, 24, 25, 28)})
KNOWN_DISAGREEMENTS[("DequantizeLinear", 28)] = (
    "onnxruntime 1.32 has no DequantizeLinear-28 kernel; with a float16 output_dtype its session fails to build (a "
    "type error on a Cast it inserts itself) instead of reporting NOT_IMPLEMENTED, which would fall back to the "
    "reference evaluator on its own"
)

_FLOAT32_STATISTICS = (
    "onnxruntime's float32 kernel computes a group's mean and variance in float32, which loses digits when the "
    "mean is large next to the spread (errors of 4e-5 relative on outputs near 1 were seen), and adds the bias "
    "to the scaled value in float32, so an output near 0 between terms near 1 carries the terms' rounding "
    "(a relative error of 2e-2 on 2.3e-3, seen under a random seed)"
)
FLOAT64_ORACLE = {
    "InstanceNormalization": _FLOAT32_STATISTICS,
    "LayerNormalization": _FLOAT32_STATISTICS,
    "ReduceLogSumExp": (
        "onnxruntime's float32 kernel sums the exponentials in float32: when one term is near 1 and the others "
        "are tiny, each addition rounds at float32's 6e-8 and the log of a sum near 1 turns that absolute error "
        "into a large relative one (a random seed drew one 0 and 47 values of -7: exact log-sum-exp 0.0419654, "
        "onnxruntime 0.041963, a relative error of 5e-5)"
    ),
}


def _onnxruntime_saturates_u8s8() -> bool:
    """Whether this CPU's onnxruntime sums uint8 x int8 products through saturating 16-bit intermediates (x86
    kernels without VNNI): 255 * 127 + 255 * 127 is 64770 exactly, 32767 once saturated."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 2]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [2, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result = session.run(None, {"a": np.full((1, 2), 255, np.uint8), "b": np.full((2, 1), 127, np.int8)})[0]
    return int(result[0, 0]) != 64770


ONNXRUNTIME_SATURATES_U8S8 = _onnxruntime_saturates_u8s8()
UINT8_ONNXRUNTIME: dict = {}
if ONNXRUNTIME_SATURATES_U8S8:
    # (the ONNX reference evaluator is no oracle for them: it shapes QLinearConv's per-channel scales and
    # ConvInteger's per-channel zero points for 2-D convolutions only, and QLinearMatMul adds the output zero
    # point before rounding, so 0.5 + 1 rounds to 2 where ONNX's round-then-add gives 1)
    UINT8_ONNXRUNTIME.update({("MatMulInteger", 10): (((0, 2), (1, 3)), None),
                              ("ConvInteger", 10): (((0, 2), (1, 3)), None),
                              ("QLinearMatMul", 10): (((0, 2), (3, 5)), 7),
                              ("QLinearMatMul", 21): (((0, 2), (3, 5)), 7),
                              ("QLinearConv", 10): (((0, 2), (3, 5)), 7)})
