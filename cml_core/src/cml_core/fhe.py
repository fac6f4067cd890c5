"""The glue to concrete-python: compile a QuantizedModule, simulate it, run it encrypted."""

from __future__ import annotations

import atexit
import io
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import CmlError

if TYPE_CHECKING:
    from .quantization.module import QuantizedModule

FHE_MODES = ("disable", "simulate", "execute")


def _concrete() -> Any:
    try:
        from concrete import fhe
    except ImportError as exc:  # the optional FHE backend is missing
        raise CmlError(
            "FHE needs concrete-python: pip install 'cml-core[fhe]' (install torch==2.13.0 first on "
            "CPU-only machines)"
        ) from exc
    keep_exit_status()
    return fhe


def keep_exit_status() -> None:
    """Stop concrete-python from overwriting the process's exit status.

    concrete-python registers an ``atexit`` handler that shuts its dataflow runtime down by calling
    C ``exit(0)``: once a circuit has been simulated or run, every process would end with status 0,
    whatever ``sys.exit`` asked for (a failing test run would read as green). The handler only
    stops runtime threads that the process's exit ends anyway, so it is removed. Safe to call
    any number of times, and a no-op when concrete-python was never imported.
    """
    compiler = sys.modules.get("concrete.compiler")
    terminate = getattr(compiler, "_terminate_df_parallelization", None)
    if terminate is not None:
        atexit.unregister(terminate)


def _traced_function(qmodule: QuantizedModule) -> Any:
    names = [f"x{i}" for i in range(len(qmodule.numpy_module.inputs))]

    def run(*tracers: Any) -> Any:
        outs = qmodule._run(list(tracers), calibrating=False)
        data = tuple(o.data for o in outs)
        return data[0] if len(data) == 1 else data

    # concrete-python reads parameter names from the signature, so give it named parameters
    source = f"lambda {', '.join(names)}: run({', '.join(names)})"
    return eval(source, {"run": run}), names  # noqa: S307  (fixed, generated source)


def _samples(arrays: Sequence[NDArray[Any]]) -> list[Any]:
    n = arrays[0].shape[0]
    if len(arrays) == 1:
        return [arrays[0][i : i + 1] for i in range(n)]
    return [tuple(a[i : i + 1] for a in arrays) for i in range(n)]


def compile_quantized_module(qmodule: QuantizedModule, calibration_x: Any, *, p_error: float | None = None,
                             global_p_error: float | None = None, configuration: Any = None,
                             verbose: bool = False) -> Any:
    """Compile ``qmodule``'s integer program on the quantized ``calibration_x``; returns the circuit.

    Each sample is one circuit call (batch dimension 1). ``p_error``/``global_p_error`` and
    ``configuration`` (an ``fhe.Configuration``) are passed to concrete-python.

    Raises:
        BitWidthError: a lookup would need more than 16 bits.
    """
    fhe = _concrete()
    qmodule.check_bit_widths()
    q = qmodule.quantize_input(*(calibration_x if isinstance(calibration_x, tuple) else (calibration_x,)))
    arrays = list(q) if isinstance(q, tuple) else [q]
    function, names = _traced_function(qmodule)
    compiler = fhe.Compiler(function, dict.fromkeys(names, "encrypted"))
    config = configuration if configuration is not None else fhe.Configuration()
    kwargs: dict[str, Any] = {"show_progress": verbose}
    if p_error is not None:
        kwargs["p_error"] = p_error
    if global_p_error is not None:
        kwargs["global_p_error"] = global_p_error
    start = time.perf_counter()
    circuit = compiler.compile(_samples(arrays), config, **kwargs)
    if verbose:
        print(f"compiled in {time.perf_counter() - start:.1f} s: {circuit_summary(circuit)}", file=sys.stderr)
    qmodule.fhe_circuit = circuit
    qmodule._fhe_verbose = verbose  # type: ignore[attr-defined]
    qmodule._fhe_keys_ready = False  # type: ignore[attr-defined]
    return circuit


def circuit_summary(circuit: Any) -> dict[str, Any]:
    """Lookup (PBS) count, max bit width and complexity of a compiled circuit."""
    stats = circuit.statistics
    return {
        "pbs": int(stats.get("programmable_bootstrap_count", 0)),
        "max_bit_width": int(circuit.graph.maximum_integer_bit_width()),
        "complexity": float(circuit.complexity),
        "p_error": float(stats.get("p_error", float("nan"))),
        "global_p_error": float(stats.get("global_p_error", float("nan"))),
    }


def run_circuit(qmodule: QuantizedModule, q: Sequence[Any], mode: str) -> tuple[NDArray[Any], ...]:
    """Run the compiled circuit sample by sample (``"simulate"`` or ``"execute"``); returns integers."""
    if mode not in FHE_MODES:
        raise CmlError(f"fhe must be one of {FHE_MODES}, got {mode!r}")
    circuit = qmodule.fhe_circuit
    if circuit is None:
        raise CmlError(f"fhe={mode!r} needs a compiled circuit: call qmodule.compile(calibration_x) first")
    verbose = getattr(qmodule, "_fhe_verbose", False)
    arrays = [np.asarray(v, dtype=np.int64) for v in q]
    if mode == "execute" and not getattr(qmodule, "_fhe_keys_ready", False):
        start = time.perf_counter()
        if verbose:
            print("generating keys...", file=sys.stderr, flush=True)
        circuit.keygen(force=False)
        qmodule._fhe_keys_ready = True  # type: ignore[attr-defined]
        if verbose:
            print(f"keys ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    results: list[tuple[NDArray[Any], ...]] = []
    samples = _samples(arrays)
    start = time.perf_counter()
    for i, sample in enumerate(samples):
        args = sample if isinstance(sample, tuple) else (sample,)
        out = circuit.simulate(*args) if mode == "simulate" else circuit.encrypt_run_decrypt(*args)
        results.append(out if isinstance(out, tuple) else (out,))
        if verbose and mode == "execute":
            elapsed = time.perf_counter() - start
            print(f"encrypted sample {i + 1}/{len(samples)} ({elapsed / (i + 1):.2f} s/sample)",
                  file=sys.stderr, flush=True)
    return tuple(np.concatenate([r[k] for r in results], axis=0) for k in range(len(results[0])))


def compile_onnx_model(model: Any, calibration_x: Any, n_bits: Any = 8, rounding_threshold_bits: Any = None,
                       p_error: float | None = None, global_p_error: float | None = None,
                       configuration: Any = None, verbose: bool = False) -> QuantizedModule:
    """Load, quantize and compile an ONNX model (path, bytes or ModelProto); returns the QuantizedModule."""
    from .numpy_module import load_model

    qmodule = load_model(model).quantize(calibration_x, n_bits=n_bits, rounding_threshold_bits=rounding_threshold_bits)
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
