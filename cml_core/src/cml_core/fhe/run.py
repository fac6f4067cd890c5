"""Running a compiled circuit: simulation, or encryption, execution and decryption."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    samples = [s if isinstance(s, tuple) else (s,) for s in samples_of(arrays)]
    workers = execution_workers(len(samples)) if mode == "execute" else 1
    start = time.perf_counter()
    done = [0]
    client = threading.Lock()  # the keys' owner encrypts and decrypts one sample at a time

    def one(i: int, args: tuple[Any, ...]) -> tuple[Any, ...]:
        try:
            if mode == "simulate":
                out = program.simulate(*args)
            else:  # the evaluation, the long part, runs beside the other workers'
                with client:
                    encrypted = program.encrypt(*args)
                result = program.run_encrypted(encrypted)
                with client:
                    out = program.decrypt(result)
        except Exception as exc:
            raise FHEExecutionError(f"fhe={mode!r} failed on sample {i}: {type(exc).__name__}: {exc}") from exc
        if program.verbose and mode == "execute":
            with client:
                done[0] += 1
                elapsed = time.perf_counter() - start
                print(f"encrypted sample {done[0]}/{len(samples)} ({elapsed / done[0]:.2f} s/sample, "
                      f"{workers} worker(s))", file=sys.stderr, flush=True)
        return out if isinstance(out, tuple) else (out,)

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, range(len(samples)), samples))
    else:
        results = [one(i, args) for i, args in enumerate(samples)]
    return tuple(np.concatenate([np.asarray(r[k], dtype=np.int64) for r in results], axis=0)
                 for k in range(len(results[0])))


#: environment variable setting how many samples ``fhe="execute"`` evaluates at once (default: the CPUs)
WORKERS_VARIABLE = "CML_FHE_WORKERS"


def execution_workers(samples: int) -> int:
    """How many samples of a batch run encrypted at once: ``CML_FHE_WORKERS`` if set, else the CPUs this
    process may use, and never more than the batch. concrete-python's evaluation releases the interpreter, so
    the samples' evaluations run side by side (measured on 2 cores: 2 samples of the digits MLP in 3.0 s
    instead of 5.1 s one after the other).

    Raises:
        CmlError: ``CML_FHE_WORKERS`` is not a positive integer.
    """
    value = os.environ.get(WORKERS_VARIABLE)
    if value is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    else:
        try:
            cpus = int(value)
        except ValueError:
            cpus = 0
        if cpus < 1:
            raise CmlError(f"{WORKERS_VARIABLE} must be a positive integer, got {value!r}")
    return max(1, min(cpus, samples))
