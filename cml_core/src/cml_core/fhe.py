"""The glue to concrete-python: compile a QuantizedModule, simulate it, run it encrypted."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from .errors import CmlError, CompileError, FHEExecutionError, InputError

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


# -- where concrete-python writes its compiled libraries ----------------------------------------
#
# Each concrete-python server (one for execution, one for simulation) compiles its shared library
# into a fresh ``tempfile.mkdtemp()`` folder and never removes it (its ``cleanup`` is a no-op), not
# even when building fails: left alone, a test run leaves dozens of folders behind. While cml
# builds a server, that call is routed into a folder cml made, and the folder is removed when the
# server is garbage-collected (or at exit), or at once when building fails.

_T = TypeVar("_T")
_library_root = threading.local()


class _RoutedTempfile:
    """Stands in for ``tempfile`` inside concrete-python's server module: ``mkdtemp`` goes into
    the folder cml owns while this thread builds a server, and everything else is ``tempfile``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(tempfile, name)

    def mkdtemp(self, suffix: str | None = None, prefix: str | None = None, dir: str | None = None) -> str:  # noqa: A002
        root = getattr(_library_root, "path", None)
        return tempfile.mkdtemp(suffix, prefix, dir if dir is not None or root is None else root)


def _route_library_folders() -> bool:
    server = sys.modules.get("concrete.fhe.compilation.server")
    if server is None or not hasattr(server, "tempfile"):  # another concrete-python layout: leave it be
        return False
    if not isinstance(server.tempfile, _RoutedTempfile):
        setattr(server, "tempfile", _RoutedTempfile())  # noqa: B010  (the module's global, seen by its functions)
    return True


def _in_owned_folder(build: Callable[[], _T]) -> tuple[_T, str | None]:
    """Run ``build`` with concrete-python's library folders routed into a new folder; returns
    the result and that folder (``None`` when routing is unavailable). Removes it if ``build`` fails."""
    if not _route_library_folders():
        return build(), None
    root = tempfile.mkdtemp(prefix="cml-fhe-")
    previous = getattr(_library_root, "path", None)
    _library_root.path = root
    try:
        result = build()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        _library_root.path = previous
    return result, root


def _own_library_folders(circuit: Any) -> None:
    """Make each server of ``circuit`` (built now or on first use) keep its library in a folder
    removed with the server."""
    module = getattr(circuit, "_module", None)
    for attribute in ("execution_runtime", "simulation_runtime"):
        lazy = getattr(module, attribute, None)
        build = getattr(lazy, "_init", None)
        if build is None or getattr(lazy, "initialized", True):
            continue

        def owned(build: Callable[[], Any] = build) -> Any:
            runtime, root = _in_owned_folder(build)
            if root is not None:
                weakref.finalize(runtime.server, shutil.rmtree, root, ignore_errors=True)
            return runtime

        setattr(lazy, "_init", owned)  # noqa: B010


# -- compilation ---------------------------------------------------------------------------------

def _configuration(fhe: Any, configuration: Any, p_error: float | None, global_p_error: float | None,
                   verbose: bool) -> tuple[Any, bool, bool]:
    """The user's configuration forked (theirs is left as it is): no debug dumps into the current
    directory on failure, and no server built inside ``compile`` (cml builds them, see above).
    Returns it with whether the user wants the execution and the simulation servers built at once."""
    base = configuration if configuration is not None else fhe.Configuration()
    options: dict[str, Any] = {"dump_artifacts_on_unexpected_failures": False, "fhe_execution": False,
                               "fhe_simulation": False, "show_progress": verbose}
    if p_error is not None:
        options["p_error"] = p_error
    if global_p_error is not None:
        options["global_p_error"] = global_p_error
    return base.fork(**options), bool(base.fhe_execution), bool(base.fhe_simulation)


def _watch_ops(qmodule: QuantizedModule, arrays: Sequence[Any]) -> tuple[list[tuple[Any, tuple[Any, ...]]],
                                                                          list[Any], BaseException | None]:
    """Run the clear integer program; returns each op with its outputs (in order), the graph's
    outputs, and the error that stopped it (``None`` when it ran through)."""
    seen: list[tuple[Any, tuple[Any, ...]]] = []

    def watched(op: Any) -> Callable[..., Any]:
        forward = op.forward

        def run(ctx: Any, inputs: Any) -> Any:
            outs = forward(ctx, inputs)
            seen.append((op, outs))
            return outs

        return run

    for op in qmodule.ops:
        setattr(op, "forward", watched(op))  # noqa: B010  (an instance attribute shadows the method for this run)
    outputs: list[Any] = []
    error = None
    try:
        outputs = qmodule._run([np.asarray(a) for a in arrays], calibrating=False)
    except Exception as exc:  # noqa: BLE001  (reported by the caller with the node it stopped at)
        error = exc
    finally:
        for op in qmodule.ops:
            vars(op).pop("forward", None)
    return seen, outputs, error


def _batch_axis(one: tuple[int, ...], many: tuple[int, ...], count: int) -> int | None:
    """The axis that is 1 for one sample and ``count`` for ``count`` samples, all others equal."""
    if len(one) != len(many):
        return None
    differing = [a for a, (x, y) in enumerate(zip(one, many)) if x != y]
    if len(differing) == 1 and one[differing[0]] == 1 and many[differing[0]] == count:
        return differing[0]
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
               "batch size; give the op explicit axes or shapes that leave the batch axis (axis 0) alone")
    for index, (op, outs) in enumerate(batch):
        for i, (seen, _, failure) in enumerate(singles):
            if index >= len(seen):
                raise CompileError(f"{op.where} fails on one sample although it runs on a batch of {n} "
                                   f"({type(failure).__name__}: {failure}); {way_out}") from failure
            for k, (many, one) in enumerate(zip(outs, seen[index][1])):
                if many.is_constant:
                    continue
                many_data, one_data = np.asarray(many.data), np.asarray(one.data)
                axis = _batch_axis(one_data.shape, many_data.shape, n)
                if axis is None:
                    raise CompileError(
                        f"{op.where} gives output {k} of shape {one_data.shape} for one sample but "
                        f"{many_data.shape} for {n} samples; {way_out}")
                if not np.array_equal(np.take(many_data, [i], axis=axis), one_data):
                    raise CompileError(f"{op.where} computes other integers for sample {i} alone than within a batch "
                                       f"of {n} (it mixes samples); {way_out}")
                # the same integers may stand for other floats (a division by the batch size, composed
                # into the value's mapping): compare what they stand for too
                if not np.allclose(np.take(many.float_value(), [i], axis=axis), one.float_value(),
                                   rtol=1e-6, atol=1e-12, equal_nan=True):
                    raise CompileError(f"{op.where} gives sample {i} other values alone than within a batch of {n} "
                                       f"(it depends on the batch size or mixes samples); {way_out}")
    for name, many, one in zip(qmodule.numpy_module.output_names, outputs, singles[0][1]):
        if _batch_axis(np.shape(one.data), np.shape(many.data), n) != 0:
            raise CompileError(f"output {name!r} has shape {np.shape(one.data)} for one sample but "
                               f"{np.shape(many.data)} for {n}: the circuit's outputs are concatenated along axis 0, "
                               f"which must be the batch axis; {way_out}")


def _extreme_samples(fhe: Any, function: Any, names: list[str], pool: Sequence[NDArray[Any]],
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


def _compile_failure(qmodule: QuantizedModule, exc: BaseException, p_error: float | None,
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
    if univariate:
        target = max(2, min(8, max(univariate) - 2))
        ways.append(f"round lookups to fewer bits (rounding_threshold_bits={target} or lower, or "
                    f"qmodule.set_rounding({target}))")
    if rounded and c.rounding_exact:
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

    Raises:
        BitWidthError: a lookup would need more than 16 bits.
        QuantizationError: ``calibration_x`` is empty, contains NaN/infinity or has the wrong inputs.
        CompileError: an op's result depends on the batch size, or concrete-python cannot compile
            the circuit (no cryptographic parameters, a lookup too wide, ...); the message names the
            widest lookups and the settings to change, concrete-python's error is the ``__cause__``.
    """
    from .quantization.module import _as_inputs

    fhe = _concrete()
    inputs = _as_inputs(qmodule.numpy_module, calibration_x, "compile calibration data")
    qmodule.check_bit_widths()
    q = qmodule.quantize_input(*inputs)
    arrays = list(q) if isinstance(q, tuple) else [q]
    calibration = qmodule._calibration_inputs
    pool = [np.concatenate([np.asarray(c, dtype=np.int64), a]) for c, a in zip(calibration, arrays)] \
        if calibration else arrays
    _check_batch_independence(qmodule, pool)
    function, names = _traced_function(qmodule)
    chosen = _extreme_samples(fhe, function, names, pool, getattr(qmodule, "calibration_chunk_size", 0))
    inputset = _samples([a[chosen] for a in pool])
    config, build_execution, build_simulation = _configuration(fhe, configuration, p_error, global_p_error, verbose)
    start = time.perf_counter()
    qmodule.fhe_circuit = None
    try:
        circuit = fhe.Compiler(function, dict.fromkeys(names, "encrypted")).compile(inputset, config)
        _own_library_folders(circuit)
        if build_execution:  # crypto parameters are chosen here: a failure shows at compile time
            circuit.enable_fhe_execution()
        if build_simulation:
            circuit.enable_fhe_simulation()
    except CmlError:
        raise
    except Exception as exc:
        raise _compile_failure(qmodule, exc, p_error, global_p_error) from exc
    if verbose:
        print(f"compiled in {time.perf_counter() - start:.1f} s on {len(inputset)} samples: "
              f"{circuit_summary(circuit)}", file=sys.stderr)
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


# -- running -------------------------------------------------------------------------------------

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
        raise _compile_failure(qmodule, exc, None, None) from exc
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
    from .numpy_module import load_model

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
