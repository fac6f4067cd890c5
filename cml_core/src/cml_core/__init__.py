"""cml: run ONNX models as NumPy, quantize them to small integers, and run them on encrypted data."""

from __future__ import annotations

from typing import Any

from .errors import (
    BitWidthError,
    CalibrationWarning,
    CmlError,
    CmlWarning,
    CompileError,
    DeploymentError,
    DuplicateOpError,
    FHEExecutionError,
    InputError,
    ModelLoadError,
    NodeExecutionError,
    OpSignatureError,
    OutOfMemoryError,
    PluginConfigWarning,
    PluginError,
    QuantizationError,
    RoundingWarning,
    SaturationWarning,
    TuningWarning,
    UnsupportedOpError,
)
from .numpy_module import NumpyModule, load_model
from .plugins import get_registry, hookimpl
from .registry import OpRegistry, OpSet

__version__ = "0.1.0"

__all__ = [
    "BitWidthError",
    "CalibrationWarning",
    "CmlError",
    "CmlWarning",
    "CompileError",
    "DeploymentError",
    "DuplicateOpError",
    "FHEExecutionError",
    "InputError",
    "ModelLoadError",
    "NodeExecutionError",
    "NumpyModule",
    "OpRegistry",
    "OpSet",
    "OpSignatureError",
    "OutOfMemoryError",
    "PluginConfigWarning",
    "PluginError",
    "QuantizationError",
    "QuantizedArray",
    "QuantizedModule",
    "RoundingWarning",
    "SaturationWarning",
    "TuningWarning",
    "UnsupportedOpError",
    "choose_p_error",
    "choose_rounding",
    "compile_brevitas_model",
    "compile_onnx_model",
    "compile_sklearn_model",
    "compile_torch_model",
    "get_registry",
    "hookimpl",
    "load_model",
    "load_quantized",
]

_LAZY = {
    "QuantizedArray": ("quantization.quantizers", "QuantizedArray"),
    "QuantizedModule": ("quantization.module", "QuantizedModule"),
    "choose_p_error": ("tuning", "choose_p_error"),
    "choose_rounding": ("tuning", "choose_rounding"),
    "compile_brevitas_model": ("fhe", "compile_brevitas_model"),
    "compile_onnx_model": ("fhe", "compile_onnx_model"),
    "compile_sklearn_model": ("fhe.models", "compile_sklearn_model"),
    "compile_torch_model": ("fhe", "compile_torch_model"),
    "load_quantized": ("fhe.deploy", "load_quantized"),
}


def __getattr__(name: str) -> Any:
    # quantization and FHE pull in heavier imports; load them on first use
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
