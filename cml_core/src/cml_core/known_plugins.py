"""Which first-party plugin distribution provides an op, to suggest a ``pip install`` line.

A test checks this table against the registry built from the installed first-party plugins.
"""

from __future__ import annotations

KNOWN_PLUGINS: dict[str, frozenset[str]] = {
    "cml-ops-std": frozenset(
        "Add And ArgMax ArgMin AveragePool BatchNormalization BitShift Cast CastLike Clip Concat Constant "
        "ConstantOfShape Conv ConvTranspose Div Dropout Equal Expand Flatten Gather GatherElements Gemm "
        "GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual Hardmax Identity InstanceNormalization LRN "
        "LayerNormalization Less LessOrEqual LogSoftmax LpPool MatMul Max MaxPool Mean Min Mod Mul Not Or Pad "
        "Pow ReduceL1 ReduceL2 ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum "
        "ReduceSumSquare Reshape Shape Size Slice Softmax Split Squeeze Sub Sum Tile Transpose Unsqueeze "
        "Where Xor".split()
    ),
    "cml-ops-activations": frozenset(
        "Abs Acos Acosh Asin Asinh Atan Atanh Ceil Celu Cos Cosh Elu Erf Exp Floor Gelu HardSigmoid HardSwish "
        "IsInf IsNaN LeakyRelu Log Mish Neg PRelu Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh "
        "Softplus Softsign Sqrt Tan Tanh ThresholdedRelu".split()
    ),
}


def install_hint(domain: str, op_type: str) -> str | None:
    """``pip install <dist>`` for a first-party plugin that provides the op, else ``None``."""
    if domain:
        return None
    for dist, ops in KNOWN_PLUGINS.items():
        if op_type in ops:
            return f"pip install {dist}"
    return None
