"""One call from an ONNX model or a PyTorch module to a compiled QuantizedModule."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..quantization.module import QuantizedModule


def compile_onnx_model(model: Any, calibration_x: Any, n_bits: Any = 8, rounding_threshold_bits: Any = None,
                       p_error: float | None = None, global_p_error: float | None = None,
                       configuration: Any = None, verbose: bool = False,
                       base_dir: str | os.PathLike[str] | None = None) -> QuantizedModule:
    """Load, quantize and compile an ONNX model (path, bytes or ModelProto); returns the QuantizedModule.

    ``base_dir`` is the folder of the external data of a model given as bytes or ModelProto (see
    ``load_model``).

    Raises:
        ModelLoadError, UnsupportedOpError: from ``load_model``.
        QuantizationError: from ``quantize`` (``BitWidthError`` for a lookup over 16 bits).
        CompileError: concrete-python cannot compile the integer program.
    """
    from ..numpy_module import load_model

    qmodule = load_model(model, base_dir=base_dir).quantize(calibration_x, n_bits=n_bits, rounding_threshold_bits=rounding_threshold_bits)
    qmodule.compile(calibration_x, p_error=p_error, global_p_error=global_p_error, configuration=configuration,
                    verbose=verbose)
    return qmodule


def export_torch(torch_module: Any, example_x: Any, opset_version: int = 14) -> bytes:
    """Serialized ONNX of ``torch_module`` (``torch.onnx.export`` with ``dynamo=False``, dynamic batch)."""
    import torch

    inputs = example_x if isinstance(example_x, tuple) else (example_x,)
    tensors = tuple(torch.as_tensor(np.asarray(x[:1], dtype=np.float32)) for x in inputs)
    names = [f"input_{i}" for i in range(len(tensors))]
    buffer = io.BytesIO()
    torch_module.eval()
    torch.onnx.export(torch_module, tensors, buffer,  # type: ignore[arg-type]  # a binary buffer works
                      dynamo=False, opset_version=opset_version, input_names=names,
                      output_names=["output"], dynamic_axes={n: {0: "batch"} for n in names + ["output"]})
    return buffer.getvalue()


def compile_torch_model(torch_module: Any, calibration_x: Any, n_bits: Any = 8, rounding_threshold_bits: Any = None,
                        p_error: float | None = None, global_p_error: float | None = None,
                        configuration: Any = None, verbose: bool = False, opset_version: int = 14) -> QuantizedModule:
    """Export a PyTorch module to ONNX and compile it like ``compile_onnx_model``."""
    return compile_onnx_model(export_torch(torch_module, calibration_x, opset_version), calibration_x, n_bits=n_bits,
                              rounding_threshold_bits=rounding_threshold_bits, p_error=p_error,
                              global_p_error=global_p_error, configuration=configuration, verbose=verbose)
