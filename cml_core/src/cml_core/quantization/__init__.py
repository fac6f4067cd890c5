"""Post-training quantization: calibration, quantized op families and the QuantizedModule."""

from .base import ConstantOnlyOp, ElementwiseOp, LayoutOp, LinearOp, QuantizedOp, ShapeOp
from .context import QuantContext
from .function_body import FunctionBodyOp
from .module import BitWidthReport, QuantizedModule, quantize_module
from .quantizers import QuantizedArray, UniformQuantizer
from .values import QValue

__all__ = [
    "BitWidthReport",
    "ConstantOnlyOp",
    "ElementwiseOp",
    "FunctionBodyOp",
    "LayoutOp",
    "LinearOp",
    "QValue",
    "QuantContext",
    "QuantizedArray",
    "QuantizedModule",
    "QuantizedOp",
    "ShapeOp",
    "UniformQuantizer",
    "quantize_module",
]
