"""Running a compiled circuit: simulation, or encryption, execution and decryption."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import CmlError, FHEExecutionError, InputError
from .compile import compile_failure, samples_of

if TYPE_CHECKING:
    from ..quantization.module import QuantizedModule

FHE_MODES = ("disable", "simulate", "execute")


def _circuit_inputs(qmodule: QuantizedModule, circuit: Any, q: Sequence[Any]) -> list[NDArray[np.int64]]:
    """``q`` as int64 arrays the circuit accepts, checked against its inputs."""
    nodes = circuit.graph.ordered_inputs()
    names = qmodule.numpy_module.input_names
    if len(q) != len(nodes):
        raise InputError(f"the circuit takes {len(nodes)} input(s) {names}, got {len(q)}")
    arrays = []
    for name, node, value in zip(names, nodes, q):
        arr = np.asarray(value)
        sample_shape = tuple(node.output.shape[1:])
        if arr.ndim == 0 or tuple(arr.shape[1:]) != sample_shape:
            raise InputError(f"input {name!r}: the circuit takes samples of shape {sample_shape} (a batch of shape "
                             f"(n, {', '.join(map(str, sample_shape))})), got shape {arr.shape}")
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise InputError(f"input {name!r} contains NaN or infinity; the circuit takes integers: pass "
                                 "qmodule.quantize_input(x) of finite floats")
            if np.any(arr != np.rint(arr)):
                raise InputError(f"input {name!r} holds fractions; the circuit takes integers: pass "
                                 "qmodule.quantize_input(x)")
        elif arr.dtype.kind not in "iub":
            raise InputError(f"input {name!r} has dtype {arr.dtype}; the circuit takes integers")
        ints = arr.astype(np.int64)
        dtype = node.output.dtype
        low, high = int(dtype.min()), int(dtype.max())
        if ints.size and (int(ints.min()) < low or int(ints.max()) > high):
            raise FHEExecutionError(
                f"input {name!r} holds integers in [{int(ints.min())}, {int(ints.max())}], outside the "
                f"[{low}, {high}] the circuit's {dtype.bit_width}-bit input can hold; pass "
                "qmodule.quantize_input(x), which clips to the range seen in calibration")
        arrays.append(ints)
    if len({len(a) for a in arrays}) > 1:
        raise InputError(f"inputs {names} must have the same number of samples, got {[len(a) for a in arrays]}")
    return arrays


def run_circuit(qmodule: QuantizedModule, q: Sequence[Any], mode: str) -> tuple[NDArray[Any], ...]:
    """Run the compiled circuit sample by sample (``"simulate"`` or ``"execute"``).

    Returns:
        One int64 array per model output, the samples concatenated along axis 0; an empty batch
        gives empty arrays of the outputs' shapes.

    Raises:
        CmlError: an unknown mode, or no compiled circuit.
        InputError: the wrong number of inputs, a sample shape the circuit does not take, NaN,
            infinity or fractions.
        FHEExecutionError: integers outside what the circuit's inputs hold, or concrete-python
            failing on a sample (the sample is named, its error is the ``__cause__``).
        CompileError: the simulation or execution server cannot be built (no parameters).
    """
    if mode not in FHE_MODES or mode == "disable":
        raise CmlError(f"run_circuit runs 'simulate' or 'execute' (fhe must be one of {FHE_MODES}), got {mode!r}")
    circuit = qmodule.fhe_circuit
    if circuit is None:
        raise CmlError(f"fhe={mode!r} needs a compiled circuit: call qmodule.compile(calibration_x) first")
    verbose = getattr(qmodule, "_fhe_verbose", False)
    arrays = _circuit_inputs(qmodule, circuit, q)
    if not len(arrays[0]):
        return tuple(np.zeros((0, *node.output.shape[1:]), dtype=np.int64)
                     for node in circuit.graph.ordered_outputs())
    try:
        if mode == "simulate":
            circuit.enable_fhe_simulation()
        else:
            circuit.enable_fhe_execution()
    except Exception as exc:
        raise compile_failure(qmodule, exc, None, None) from exc
    if mode == "execute" and not getattr(qmodule, "_fhe_keys_ready", False):
        start = time.perf_counter()
        if verbose:
            print("generating keys...", file=sys.stderr, flush=True)
        circuit.keygen(force=False)
        qmodule._fhe_keys_ready = True  # type: ignore[attr-defined]
        if verbose:
            print(f"keys ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    results: list[tuple[NDArray[Any], ...]] = []
    samples = samples_of(arrays)
    start = time.perf_counter()
    for i, sample in enumerate(samples):
        args = sample if isinstance(sample, tuple) else (sample,)
        try:
            out = circuit.simulate(*args) if mode == "simulate" else circuit.encrypt_run_decrypt(*args)
        except Exception as exc:
            raise FHEExecutionError(f"fhe={mode!r} failed on sample {i}: {type(exc).__name__}: {exc}") from exc
        results.append(out if isinstance(out, tuple) else (out,))
        if verbose and mode == "execute":
            elapsed = time.perf_counter() - start
            print(f"encrypted sample {i + 1}/{len(samples)} ({elapsed / (i + 1):.2f} s/sample)",
                  file=sys.stderr, flush=True)
    return tuple(np.concatenate([np.asarray(r[k], dtype=np.int64) for r in results], axis=0)
                 for k in range(len(results[0])))
