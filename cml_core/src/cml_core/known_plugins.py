"""Which first-party plugin distribution provides an op, to suggest a ``pip install`` line.

A test checks this table against the registry built from the installed first-party plugins.
"""

from __future__ import annotations

KNOWN_PLUGINS: dict[str, frozenset[str]] = {
    "cml-ops-std": frozenset(
        "Add Clip Constant Conv Div Equal Flatten Gemm Greater Identity Less MatMul Mul Not Reshape Sub".split()
    ),
    "cml-ops-activations": frozenset(
        "Abs Acos Acosh Asin Asinh Atan Atanh Celu Cos Cosh Elu Erf Exp HardSigmoid LeakyRelu Log "
        "Relu Selu Sigmoid Sin Sinh Softplus Tan Tanh ThresholdedRelu".split()
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
