"""An example cml plugin: ``com.example.cml::ScaledTanh``, y = alpha * tanh(beta * x).

Everything a plugin needs: an ``OpSet``, one numpy function per op whose signature is the op's
contract, a quantized family, and the ``cml_register_ops`` hook named in the ``cml.ops`` entry
point of ``pyproject.toml``.
"""

import numpy as np
from cml_core.quantization import ElementwiseOp

from cml_core import OpSet, hookimpl

DOMAIN = "com.example.cml"
OPS = OpSet()


@OPS.op("ScaledTanh", since=1, domain=DOMAIN, quantized=ElementwiseOp)
def scaled_tanh(x, /, *, alpha=1.0, beta=1.0):
    return (alpha * np.tanh(beta * x)).astype(x.dtype)


@hookimpl
def cml_register_ops(registry):
    registry.add(OPS)
