"""Compilation of a QuantizedModule's integer program into a concrete-python circuit."""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import CmlError, CompileError
from ..quantization.backend import refreshed_operands
from ..quantization.context import MAX_LOOKUP_BITS
from .concrete_python import enable_runtime, forked_configuration, load_concrete, multi_input_lookups_kept
from .program import CircuitProgram

if TYPE_CHECKING:
    from ..quantization.module import QuantizedModule


def traced_function(qmodule: QuantizedModule) -> tuple[Any, list[str]]:
    """The integer program as a function of one tracer per model input, named ``x0``, ``x1``, ...
    (concrete-python reads the parameter names from the signature)."""
    names = [f"x{i}" for i in range(len(qmodule.numpy_module.inputs))]

    def run(*tracers: Any, **named: Any) -> Any:  # concrete-python passes them by name
        outs = qmodule._run([*tracers, *(named[name] for name in names[len(tracers):])], calibrating=False)
        data = tuple(o.data for o in outs)
        return data[0] if len(data) == 1 else data

    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names])
    return run, names


def samples_of(arrays: Sequence[NDArray[Any]]) -> list[Any]:
    n = arrays[0].shape[0]
    if len(arrays) == 1:
        return [arrays[0][i : i + 1] for i in range(n)]
    return [tuple(a[i : i + 1] for a in arrays) for i in range(n)]



def _watch_ops(qmodule: QuantizedModule, arrays: Sequence[Any]) -> tuple[list[tuple[Any, tuple[Any, ...]]],
                                                                          list[Any], BaseException | None]:
    """Run the clear integer program; returns each op with its outputs (in order), the graph's
    outputs, and the error that stopped it (``None`` when it ran through)."""
    seen: list[tuple[Any, tuple[Any, ...]]] = []
    outputs: list[Any] = []
    error = None
    try:
        outputs = qmodule._run([np.asarray(a) for a in arrays], calibrating=False,
                               observe=lambda op, outs: seen.append((op, tuple(outs))))
    except Exception as exc:  # noqa: BLE001  (reported by the caller with the node it stopped at)
        error = exc
    return seen, outputs, error


def _batch_axis(one: tuple[int, ...], many: tuple[int, ...], count: int) -> int | None:
    """The axis that is 1 for one sample and ``count`` for ``count`` samples, all others equal."""
    found = _batch_blocks(one, many, count)
    return found[0] if found is not None and found[1] == 1 else None


def _batch_blocks(one: tuple[int, ...], many: tuple[int, ...], count: int) -> tuple[int, int] | None:
    """(axis, block) when ``count`` samples give ``count * block`` where one sample gives ``block`` along
    that axis, all other axes equal: the samples' own axis, or the batch folded into another one (attention
    reshaping (batch, heads, ...) to (batch * heads, ...)), sample by sample if the values agree."""
    if len(one) != len(many):
        return None
    differing = [a for a, (x, y) in enumerate(zip(one, many)) if x != y]
    if len(differing) == 1 and many[differing[0]] == count * one[differing[0]]:
        return differing[0], one[differing[0]]
    return None


def _check_batch_independence(qmodule: QuantizedModule, arrays: Sequence[NDArray[Any]], count: int = 3) -> None:
    """Check that the integer program treats samples independently, as a circuit traced on one
    sample (batch dimension 1) must: the first ``count`` samples of ``arrays`` (quantized inputs)
    are run as one batch and one by one, and every encrypted tensor must agree.

    Raises:
        CompileError: naming the first node whose result changes with the batch size (an op that
            squeezes, reshapes or reduces over the batch axis).
    """
    n = min(count, len(arrays[0]))
    if n < 2:
        return
    batch, outputs, error = _watch_ops(qmodule, [a[:n] for a in arrays])
    if error is not None:  # the program does not take batches (a fixed batch size): one sample per call is all
        return
    singles = [_watch_ops(qmodule, [a[i : i + 1] for a in arrays]) for i in range(n)]
    way_out = ("compile traces the program on one sample at a time, so an op's result must not depend on the "
               "batch size; give the op explicit axes or shapes that leave the batch axis (axis 0) alone, or fold it into "
               "another axis sample by sample")
    for index, (op, outs) in enumerate(batch):
        for i, (seen, _, failure) in enumerate(singles):
            if index >= len(seen):
                raise CompileError(f"{op.where} fails on one sample although it runs on a batch of {n} "
                                   f"({type(failure).__name__}: {failure}); {way_out}") from failure
            for k, (many, one) in enumerate(zip(outs, seen[index][1])):
                if many.is_constant:
                    continue
                many_data, one_data = np.asarray(many.data), np.asarray(one.data)
                found = _batch_blocks(one_data.shape, many_data.shape, n)
                if found is None:
                    raise CompileError(
                        f"{op.where} gives output {k} of shape {one_data.shape} for one sample but "
                        f"{many_data.shape} for {n} samples; {way_out}")
                axis, block = found
                own = range(i * block, (i + 1) * block)  # sample i's part of the batch's result
                if not np.array_equal(np.take(many_data, own, axis=axis), one_data):
                    raise CompileError(f"{op.where} computes other integers for sample {i} alone than within a batch "
                                       f"of {n} (it mixes samples); {way_out}")
                # the same integers may stand for other floats (a division by the batch size, composed
                # into the value's mapping): compare what they stand for too
                if not np.allclose(np.take(many.float_value(), own, axis=axis), one.float_value(),
                                   rtol=1e-6, atol=1e-12, equal_nan=True):
                    raise CompileError(f"{op.where} gives sample {i} other values alone than within a batch of {n} "
                                       f"(it depends on the batch size or mixes samples); {way_out}")
    for name, many, one in zip(qmodule.numpy_module.output_names, outputs, singles[0][1]):
        if _batch_axis(np.shape(one.data), np.shape(many.data), n) != 0:
            raise CompileError(f"output {name!r} has shape {np.shape(one.data)} for one sample but "
                               f"{np.shape(many.data)} for {n}: the circuit's outputs are concatenated along axis 0, "
                               f"which must be the batch axis; {way_out}")


def extreme_samples(fhe: Any, function: Any, names: list[str], pool: Sequence[NDArray[Any]],
                     chunk: int = 0) -> NDArray[Any]:
    """Indices of the samples of ``pool`` (quantized inputs) that reach the smallest and largest
    value of every encrypted tensor of the circuit.

    concrete-python sizes each integer of the circuit by the range the compile samples reach; for
    ``simulate`` to equal the clear program on data like the calibration data, every one of those
    ranges must be the calibration data's. The circuit is traced once on a batch of ``chunk``
    samples (0: the whole pool) and evaluated on the pool batch by batch (vectorized); per tensor
    the two samples at its extremes are kept. Compiling on them gives concrete-python the pool's
    ranges in far less time than the pool itself. Every index when that cannot be worked out.
    """
    n = len(pool[0])
    everything = np.arange(n)
    if n <= 2:
        return everything
    size = n if chunk <= 0 else min(n, chunk)
    low: dict[Any, tuple[int, int]] = {}  # node -> (smallest value, sample reaching it)
    high: dict[Any, tuple[int, int]] = {}
    graph = None
    try:
        for start in range(0, n, size):
            index = np.arange(start, start + size) % n  # the last batch is topped up with the first samples
            part = [a[index] for a in pool]
            if graph is None:
                with multi_input_lookups_kept():
                    graph = fhe.Compiler(function, dict.fromkeys(names, "encrypted")).trace(
                        [tuple(part) if len(part) > 1 else part[0]], dump_artifacts_on_unexpected_failures=False)
            for node, value in graph.evaluate(*part).items():
                if not node.output.is_encrypted:
                    continue
                arr = np.asarray(value)
                if arr.ndim == 0 or arr.shape[0] != size:  # the batch axis moved: no per-sample extremes
                    return everything
                flat = arr.reshape(size, -1)
                if not flat.shape[1]:
                    continue
                mins, maxs = flat.min(axis=1), flat.max(axis=1)
                i, j = int(mins.argmin()), int(maxs.argmax())
                if node not in low or mins[i] < low[node][0]:
                    low[node] = (int(mins[i]), int(index[i]))
                if node not in high or maxs[j] > high[node][0]:
                    high[node] = (int(maxs[j]), int(index[j]))
    except Exception:  # noqa: BLE001  (tracing or evaluating a batch failed: compile on every sample instead)
        return everything
    chosen = {sample for _, sample in low.values()} | {sample for _, sample in high.values()}
    return np.array(sorted(chosen), dtype=np.int64)


def _widest_lookups(qmodule: QuantizedModule, count: int = 3) -> str:
    sites = sorted(qmodule.sites.values(), key=lambda s: -s.lookup_bits)[:count]
    parts = [f"{s.node!r} ({s.op_type}) {s.lookup_bits} bits"
             + (" (multi-input: the sum of its operands' bits)" if s.packed_bits is not None else "")
             for s in sites]
    accumulators = sorted(qmodule.accumulators.values(), key=lambda a: -a.bits)[:1]
    parts += [f"widest accumulator {a.node!r} ({a.op_type}) {a.bits} bits" for a in accumulators]
    return ", ".join(parts) or "none"


def compile_failure(qmodule: QuantizedModule, exc: BaseException, p_error: float | None,
                     global_p_error: float | None) -> CompileError:
    """A ``CompileError`` saying what concrete-python refused and which settings to change."""
    text = str(exc).strip() or type(exc).__name__
    c = qmodule.config
    rounded = {b for b in qmodule.rounding_bits().values() if b is not None}
    univariate = [s.lookup_bits for s in qmodule.sites.values() if s.packed_bits is None]
    multi = [s.lookup_bits for s in qmodule.sites.values() if s.packed_bits is not None]
    rounding = (f"{sorted(rounded)} bits {'exact' if c.rounding_exact else 'approximate'}" if rounded else "off")
    errors = ", ".join(f"{k}={v}" for k, v in (("p_error", p_error), ("global_p_error", global_p_error))
                       if v is not None) or "concrete-python's default"
    settings = (f"n_bits {c.model_inputs}/{c.op_inputs}/{c.op_weights} (inputs/activations/weights), rounding "
                f"{rounding}, error probability {errors}")
    ways = []
    widest_accumulator = max((a.bits for a in qmodule.accumulators.values()), default=0)
    # exact rounding clears an accumulator's low bits with lookups reading it at its full width: past 16 bits
    # no parameters hold them, and keeping fewer bits only adds such lookups
    wide_exact = bool(rounded) and c.rounding_exact and widest_accumulator > MAX_LOOKUP_BITS \
        and "NoParametersFound" in text
    if wide_exact:
        ways.append(f"approximate rounding ({{'n_bits': {max(rounded)}, 'method': 'approximate'}} or "
                    f"qmodule.set_rounding({max(rounded)}, 'approximate')): exact rounding clears the low bits of "
                    f"accumulators of up to {widest_accumulator} bits with lookups that read them at that width, "
                    "approximate rounding reads only the bits it keeps")
    if univariate and not wide_exact:
        target = max(2, min(8, max(univariate) - 2))
        ways.append(f"round lookups to fewer bits (rounding_threshold_bits={target} or lower, or "
                    f"qmodule.set_rounding({target}))")
    if rounded and c.rounding_exact and not wide_exact:
        ways.append("approximate rounding ({'n_bits': k, 'method': 'approximate'}), which saves the extra lookups "
                    "exact rounding costs")
    ways.append("fewer n_bits" + (" (multi-input lookups are never rounded: only fewer activation bits shrink them)"
                                  if multi else ""))
    if "NoParametersFound" in text:
        what = ("concrete-python found no cryptographic parameters for this circuit (NoParametersFound): its table "
                "lookups are too wide for the error probability asked")
        ways.append("a larger error probability per lookup (compile(..., p_error=0.01)), at the cost of encrypted "
                    "results differing from the simulation more often")
    elif "table lookups are supported" in text:
        what = ("concrete-python needs a table lookup wider than the 16 bits it supports: a lookup's input keeps "
                "the bit width of the accumulator it is computed from, which can be one bit wider than the lookup")
    else:
        first = text.splitlines()[0]
        return CompileError(
            f"concrete-python could not compile the integer program ({type(exc).__name__}: {first}); settings: "
            f"{settings}; widest: {_widest_lookups(qmodule)}. The clear program (fhe='disable') is not affected; "
            "concrete-python's full message is this error's __cause__")
    ways.append("choose_rounding(qmodule, ...), which keeps the cheapest rounding that compiles and holds a score")
    return CompileError(f"{what}. Widest lookups: {_widest_lookups(qmodule)}. Settings: {settings}. "
                        f"Ways out: {'; '.join(ways)}.")


def compile_quantized_module(qmodule: QuantizedModule, calibration_x: Any, *, p_error: float | None = None,
                             global_p_error: float | None = None, configuration: Any = None,
                             verbose: bool = False) -> Any:
    """Compile ``qmodule``'s integer program on the quantized ``calibration_x``; returns the circuit.

    Each sample is one circuit call (batch dimension 1). The circuit's integer ranges are those the
    quantization's calibration data and ``calibration_x`` reach together, so ``fhe="simulate"``
    equals ``fhe="disable"`` on such data however few samples ``calibration_x`` has.
    ``p_error``/``global_p_error`` and ``configuration`` (an ``fhe.Configuration``, not modified)
    are passed to concrete-python. Nothing is written to the current directory, and the folders
    concrete-python compiles its libraries into are removed with the circuit.

    When no rounding was set and a lookup would need more than 16 bits, the rounding of those lookups is
    chosen first (``quantization.auto_rounding``: the fewest bits keeping agreement with the float model on
    the calibration data within 1 point), reported by a ``RoundingWarning`` and in ``qmodule.auto_rounding``.

    Raises:
        BitWidthError: a lookup would need more than 16 bits (a rounding set by the user, or a
            multi-input lookup, which cannot be rounded).
        QuantizationError: ``calibration_x`` is empty, contains NaN/infinity or has the wrong inputs.
        CompileError: an op's result depends on the batch size, or concrete-python cannot compile
            the circuit (no cryptographic parameters, a lookup too wide, ...); the message names the
            widest lookups and the settings to change, concrete-python's error is the ``__cause__``.
    """
    from ..quantization.auto_rounding import choose_automatic_rounding
    from ..quantization.module import _as_inputs

    fhe = load_concrete()
    inputs = _as_inputs(qmodule.numpy_module, calibration_x, "compile calibration data")
    # no rounding asked for and a lookup too wide: the default settings still give a circuit
    choose_automatic_rounding(qmodule, tuple(qmodule._calibration_data or inputs))
    qmodule.check_bit_widths()
    q = qmodule.quantize_input(*inputs)
    arrays = list(q) if isinstance(q, tuple) else [q]
    calibration = qmodule._calibration_inputs
    pool = [np.concatenate([np.asarray(c, dtype=np.int64), a]) for c, a in zip(calibration, arrays)] \
        if calibration else arrays
    _check_batch_independence(qmodule, pool)
    function, names = traced_function(qmodule)
    chosen = extreme_samples(fhe, function, names, pool, getattr(qmodule, "calibration_chunk_size", 0))
    inputset = samples_of([a[chosen] for a in pool])
    config, build_execution, build_simulation = forked_configuration(fhe, configuration, p_error, global_p_error, verbose)
    start = time.perf_counter()
    qmodule.attach_program(None)
    multi_input = any(s.packed_bits is not None for s in qmodule.sites.values())

    def build() -> Any:
        with multi_input_lookups_kept():
            circuit = fhe.Compiler(function, dict.fromkeys(names, "encrypted")).compile(inputset, config)
        if build_execution:  # crypto parameters are chosen here: a failure shows at compile time
            enable_runtime(circuit, "execute")
        if build_simulation:
            enable_runtime(circuit, "simulate")
        return circuit

    try:
        try:
            circuit = build()
        except Exception as exc:
            if not multi_input or "NoParametersFound" not in str(exc):
                raise
            # operands packed into multi-input lookups and read elsewhere too tie their parameters together:
            # once more, with each lookup reading fresh copies (refreshed_operands)
            if verbose:
                print("no cryptographic parameters: compiling again with the multi-input lookups' operands "
                      "refreshed", file=sys.stderr)
            with refreshed_operands():
                circuit = build()
    except CmlError:
        raise
    except Exception as exc:
        raise compile_failure(qmodule, exc, p_error, global_p_error) from exc
    if verbose:
        print(f"compiled in {time.perf_counter() - start:.1f} s on {len(inputset)} samples: "
              f"{circuit_summary(circuit)}", file=sys.stderr)
    qmodule.attach_program(CircuitProgram(circuit, verbose))
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
