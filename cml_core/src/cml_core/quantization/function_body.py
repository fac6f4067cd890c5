"""The quantized family of fused ops that quantize through the function body ONNX defines for them."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import QuantizationError
from .base import QuantizedOp
from .context import QuantContext
from .values import QValue


class FunctionBodyOp(QuantizedOp):
    """A fused op (Attention, ...) whose integer form is that of the simpler ops ONNX defines it with.

    ``quantize_module`` replaces such nodes by their function bodies (``cml_core.expansion``) before
    calibrating, so each simpler op quantizes with its own twin (Attention: the encrypted products of
    MatMul and the row softmax of Softmax). On constants the op runs as it is.
    """

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        raise QuantizationError(
            f"{self.where}: this fused op quantizes through its ONNX function body, which quantize_module "
            "substitutes for it; quantize the model with quantize_module (NumpyModule.quantize)")
