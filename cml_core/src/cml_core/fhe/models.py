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


def export_brevitas(module: Any, example_x: Any, form: str = "qcdq") -> bytes:
    """Serialized ONNX of a Brevitas QAT ``module`` in QCDQ (QuantizeLinear/Clip/DequantizeLinear,
    ``form="qcdq"``) or QONNX (``Quant`` nodes, ``form="qonnx"``) form, with a free batch dimension.

    Raises:
        CmlError: brevitas is not installed, or ``form`` is neither.
    """
    import tempfile

    import onnx
    import torch

    from ..errors import CmlError

    if form not in ("qcdq", "qonnx"):
        raise CmlError(f"form must be 'qcdq' or 'qonnx', got {form!r}")
    try:
        from brevitas.export import export_onnx_qcdq, export_qonnx
    except ImportError as exc:
        raise CmlError("exporting a Brevitas model needs brevitas and onnxoptimizer: pip install brevitas "
                       "onnxoptimizer (and cml-ops-qonnx for the QONNX form)") from exc
    inputs = example_x if isinstance(example_x, tuple) else (example_x,)
    tensors = tuple(torch.as_tensor(np.asarray(x[:1], dtype=np.float32)) for x in inputs)
    module.eval()
    with tempfile.TemporaryDirectory(prefix="cml-brevitas-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        example = tensors[0] if len(tensors) == 1 else tensors
        if form == "qcdq":
            export_onnx_qcdq(module, input_t=example, export_path=path, dynamo=False)
        else:
            export_qonnx(module, input_t=example, export_path=path, dynamo=False)
        model = onnx.load(path)
    # the exporters fix the batch to the example's: free it, and let shape inference redo the rest
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]
    return bytes(model.SerializeToString())


def compile_brevitas_model(brevitas_module: Any, calibration_x: Any, form: str = "qcdq", n_bits: Any = 8,
                           rounding_threshold_bits: Any = None, p_error: float | None = None,
                           global_p_error: float | None = None, configuration: Any = None,
                           verbose: bool = False) -> QuantizedModule:
    """Export a Brevitas QAT module (``export_brevitas``) and compile it like ``compile_onnx_model``.

    The model's own quantizers (its activations' and weights' scales, zero points and bit widths)
    are kept as they are; ``n_bits`` applies only to tensors the model leaves unquantized. A model
    trained at a few bits usually compiles without ``rounding_threshold_bits``.
    """
    return compile_onnx_model(export_brevitas(brevitas_module, calibration_x, form), calibration_x, n_bits=n_bits,
                              rounding_threshold_bits=rounding_threshold_bits, p_error=p_error,
                              global_p_error=global_p_error, configuration=configuration, verbose=verbose)
