"""The glue to concrete-python: compile a QuantizedModule, simulate it, run it encrypted."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    return fhe


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


@dataclass
class RoundingTrial:
    """One rounding setting tried by ``choose_rounding``."""

    bits: dict[str, int | None]
    score: float
    complexity: float
    pbs: int


@dataclass
class RoundingChoice:
    """What ``choose_rounding`` picked, the score it had to reach, and every setting it tried."""

    bits: dict[str, int | None]
    score: float
    target: float
    reference_score: float
    complexity: float
    trials: list[RoundingTrial] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"chosen {self.bits}: score {self.score:.4f} (target {self.target:.4f}, float "
                 f"{self.reference_score:.4f}), complexity {self.complexity:.3g}"]
        lines += [f"  tried {t.bits}: score {t.score:.4f}, complexity {t.complexity:.3g}, {t.pbs} PBS"
                  for t in self.trials]
        return "\n".join(lines)


def choose_rounding(qmodule: QuantizedModule, calibration_x: Any, x_val: Any, y_val: Any = None, *,
                    max_drop: float = 0.01, method: str = "approximate", repeats: int = 3, min_bits: int = 2,
                    configuration: Any = None) -> RoundingChoice:
    """Pick the rounding before each lookup that keeps the simulated score within ``max_drop`` of float.

    The score is classification accuracy on ``(x_val, y_val)`` (argmax of the first output), or,
    without ``y_val``, agreement with the float model's argmax. Each setting is compiled and
    simulated (``repeats`` times, averaged: approximate rounding is randomized). First every
    lookup gets the same bits, from ``min_bits`` up, until one setting reaches the target; then
    each lookup in turn keeps one bit less while the target still holds and the circuit gets
    cheaper. ``qmodule`` ends compiled with the choice. When no rounding reaches the target,
    the lookups are left unrounded (the choice says so and its score shows the gap).
    """
    x_val_t = x_val if isinstance(x_val, tuple) else (x_val,)
    float_out = qmodule.numpy_module(*x_val_t)
    float_scores = np.asarray(float_out[0] if isinstance(float_out, tuple) else float_out)
    labels = float_scores.argmax(-1) if y_val is None else np.asarray(y_val)
    reference = float(np.mean(float_scores.argmax(-1) == labels))
    target = reference - max_drop
    q_val = qmodule.quantize_input(*x_val_t)
    q_val = q_val if isinstance(q_val, tuple) else (q_val,)
    trials: list[RoundingTrial] = []

    def trial(bits: dict[str, int | None]) -> RoundingTrial:
        qmodule.set_rounding(bits, method)
        compile_quantized_module(qmodule, calibration_x, configuration=configuration)
        scores = []
        for _ in range(repeats if method == "approximate" else 1):
            out = qmodule.dequantize_output(*run_circuit(qmodule, q_val, "simulate"))
            first = out[0] if isinstance(out, tuple) else out
            scores.append(float(np.mean(np.asarray(first).argmax(-1) == labels)))
        summary = circuit_summary(qmodule.fhe_circuit)
        result = RoundingTrial(dict(bits), float(np.mean(scores)), summary["complexity"], summary["pbs"])
        trials.append(result)
        return result

    keys = list(qmodule.rounding_bits())
    widest = max((qmodule.sites[k].input_bits for k in keys), default=0)
    best: RoundingTrial | None = None
    for bits in range(min_bits, widest):
        candidate = trial(dict.fromkeys(keys, bits))
        if candidate.score >= target:
            best = candidate
            break
    if best is None:  # nothing rounded reached the target: no rounding
        best = trial(dict.fromkeys(keys))
    else:
        for key in keys:
            current = best.bits[key]
            while current is not None and current > min_bits:
                lowered = trial({**best.bits, key: current - 1})
                if lowered.score < target or lowered.complexity >= best.complexity:
                    break
                best, current = lowered, current - 1
    if trials[-1] is not best:  # leave the module compiled with the choice
        qmodule.set_rounding(best.bits, method)
        compile_quantized_module(qmodule, calibration_x, configuration=configuration)
    return RoundingChoice(best.bits, best.score, target, reference, best.complexity, trials)
