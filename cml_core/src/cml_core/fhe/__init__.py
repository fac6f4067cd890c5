"""The glue to concrete-python: compile a QuantizedModule, simulate it, run it encrypted.

- ``concrete_python``: importing concrete-python, keeping the process's exit status, owning the folders it
  compiles libraries into, configurations forked so that nothing is dumped into the current directory.
- ``compile``: tracing the integer program, checking it treats samples independently, choosing the
  compile samples, turning concrete-python's failures into ``CompileError``.
- ``program``: what runs a compiled program, the circuit compiled here or one loaded from disk.
- ``run``: simulating or encrypting, running and decrypting, sample by sample.
- ``models``: one call from an ONNX model or a PyTorch module to a compiled ``QuantizedModule``.
- ``deploy``: saved artifacts, ``load_quantized``, the ``Client`` that owns the keys and the ``Server``
  that computes; ``service``: the HTTP service over a ``Server``.
"""

from .compile import circuit_summary, compile_quantized_module
from .concrete_python import keep_exit_status
from .models import compile_brevitas_model, compile_onnx_model, compile_torch_model, export_brevitas, export_torch
from .run import FHE_MODES, run_circuit

__all__ = [
    "FHE_MODES",
    "circuit_summary",
    "compile_brevitas_model",
    "compile_onnx_model",
    "compile_quantized_module",
    "compile_torch_model",
    "export_brevitas",
    "export_torch",
    "keep_exit_status",
    "run_circuit",
]
