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
from .program import IntegerSpec, Program, empty_outputs

if TYPE_CHECKING:
    from ..quantization.module import QuantizedModule

FHE_MODES = ("disable", "simulate", "execute")


def _circuit_inputs(qmodule: QuantizedModule, program: Program, q: Sequence[Any]) -> list[NDArray[np.int64]]:
    """``q`` as int64 arrays the program accepts, checked against its inputs."""
    return check_integer_inputs(qmodule.numpy_module.input_names, program.inputs, q)


def check_integer_inputs(names: Sequence[str], specs: Sequence[IntegerSpec], q: Sequence[Any]) -> list[NDArray[np.int64]]:
    """``q`` (one batch per input) as int64 arrays, checked against a circuit's ``specs``.

    Raises:
        InputError: the wrong number of inputs, a sample shape the circuit does not take, NaN,
            infinity, fractions, or a dtype that is not a number.
        FHEExecutionError: integers outside what the circuit's inputs hold.
    """
    if len(q) != len(specs):
        raise InputError(f"the circuit takes {len(specs)} input(s) {list(names)}, got {len(q)}")
    arrays = []
    for name, spec, value in zip(names, specs, q):
        arr = np.asarray(value)
        sample_shape = spec.sample_shape
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
        if ints.size and (int(ints.min()) < spec.low or int(ints.max()) > spec.high):
            raise FHEExecutionError(
                f"input {name!r} holds integers in [{int(ints.min())}, {int(ints.max())}], outside the "
                f"[{spec.low}, {spec.high}] the circuit's {spec.bit_width}-bit input can hold; pass "
                "qmodule.quantize_input(x), which clips to the range seen in calibration")
        arrays.append(ints)
    if len({len(a) for a in arrays}) > 1:
        raise InputError(f"inputs {list(names)} must have the same number of samples, got {[len(a) for a in arrays]}")
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
    program = qmodule.fhe_program
    if program is None:
        raise CmlError(f"fhe={mode!r} needs a compiled circuit: call qmodule.compile(calibration_x) first")
    arrays = _circuit_inputs(qmodule, program, q)
    if not len(arrays[0]):
        return empty_outputs(program)
    try:
        program.prepare(mode)
    except CmlError:
        raise
    except Exception as exc:
        raise compile_failure(qmodule, exc, None, None) from exc
    results: list[tuple[NDArray[Any], ...]] = []
    samples = samples_of(arrays)
    start = time.perf_counter()
    for i, sample in enumerate(samples):
        args = sample if isinstance(sample, tuple) else (sample,)
        try:
            out = program.simulate(*args) if mode == "simulate" else program.execute(*args)
        except Exception as exc:
            raise FHEExecutionError(f"fhe={mode!r} failed on sample {i}: {type(exc).__name__}: {exc}") from exc
        results.append(out if isinstance(out, tuple) else (out,))
        if program.verbose and mode == "execute":
            elapsed = time.perf_counter() - start
            print(f"encrypted sample {i + 1}/{len(samples)} ({elapsed / (i + 1):.2f} s/sample)",
                  file=sys.stderr, flush=True)
    return tuple(np.concatenate([np.asarray(r[k], dtype=np.int64) for r in results], axis=0)
                 for k in range(len(results[0])))
