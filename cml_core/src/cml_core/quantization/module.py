"""Post-training quantization of a ``NumpyModule`` into an integer-only ``QuantizedModule``."""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from numpy.typing import NDArray

from ..errors import (
    BitWidthError,
    CalibrationWarning,
    InputError,
    OutOfMemoryError,
    QuantizationError,
    SaturationWarning,
)
from ..numpy_module import TensorSpec, check_input_arrays
from . import calibration
from .auto_rounding import AutoRounding, choose_automatic_rounding
from .base import LinearOp, QuantizedOp
from .client_tail import ClientTail, split_client_tail
from .context import (
    MAX_LOOKUP_BITS,
    AccumulatorRecord,
    IntegerCalibration,
    LookupSite,
    PendingRange,
    QuantConfig,
    QuantContext,
)
from .quantizers import DecisionQuantizer, InputQuantizer, PerFeatureQuantizer, UniformQuantizer, check_n_bits
from .values import QValue

if TYPE_CHECKING:
    from ..numpy_module import NumpyModule

N_BITS_KEYS = ("model_inputs", "op_inputs", "op_weights", "model_outputs")

#: ``per_feature_inputs="auto"`` quantizes a (samples, features) input per feature when its whole range
#: is more than this many times its narrowest varying column's range: one quantizer for the tensor would
#: give that column under 1% of the codes (two or three at 8 bits). Not for less: a column's own range is
#: narrower than the tensor's, so values beyond what calibration saw in it are clipped sooner
PER_FEATURE_RANGE_RATIO = 100.0
#: ... and when calibration has at least this many samples (column ranges of fewer say too little)
PER_FEATURE_MIN_SAMPLES = 32


def is_exact_rounding(method: str, where: str = "") -> bool:
    """``True`` for ``"exact"``, ``False`` for ``"approximate"``.

    Raises:
        QuantizationError: any other method (``where`` prefixes the message).
    """
    if method not in ("exact", "approximate"):
        raise QuantizationError(f"{where + ': ' if where else ''}rounding method must be 'exact' or 'approximate', "
                                f"got {method!r}")
    return method == "exact"


def parse_config(n_bits: Any, rounding_threshold_bits: Any) -> QuantConfig:
    """A ``QuantConfig`` from the user's ``n_bits`` (int or dict) and rounding setting.

    Raises:
        QuantizationError: unknown keys, or bit widths out of range.
    """
    if isinstance(n_bits, dict):
        unknown = sorted(set(n_bits) - set(N_BITS_KEYS))
        if unknown:
            raise QuantizationError(f"unknown n_bits key(s) {unknown}; valid keys: {list(N_BITS_KEYS)}")
        if "op_inputs" not in n_bits or "op_weights" not in n_bits:
            raise QuantizationError("an n_bits dict needs at least 'op_inputs' and 'op_weights'")
        bits = {k: check_n_bits(v, f"n_bits[{k!r}]") for k, v in n_bits.items()}
        bits.setdefault("model_inputs", bits["op_inputs"])
        bits.setdefault("model_outputs", bits["op_inputs"])
    else:
        value = check_n_bits(n_bits)
        bits = dict.fromkeys(N_BITS_KEYS, value)
    rounding, exact = None, True
    if rounding_threshold_bits is not None:
        if isinstance(rounding_threshold_bits, dict):
            unknown = sorted(set(rounding_threshold_bits) - {"n_bits", "method"})
            if unknown or "n_bits" not in rounding_threshold_bits:
                raise QuantizationError(
                    "rounding_threshold_bits as a dict takes 'n_bits' and optionally 'method' "
                    f"('exact' or 'approximate'); got {sorted(rounding_threshold_bits)}"
                )
            rounding = check_n_bits(rounding_threshold_bits["n_bits"], "rounding_threshold_bits['n_bits']")
            exact = is_exact_rounding(str(rounding_threshold_bits.get("method", "exact")).lower())
        else:
            rounding = check_n_bits(rounding_threshold_bits, "rounding_threshold_bits")
    return QuantConfig(bits["model_inputs"], bits["op_inputs"], bits["op_weights"], bits["model_outputs"],
                       rounding, exact)


def _user_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel, for the caller of this function, of the first frame outside cml_core."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _check_dtypes(module: NumpyModule, items: Sequence[Any], what: str) -> None:
    _check_input_dtypes(module.inputs, items, what)


def _check_input_dtypes(specs: Sequence[TensorSpec], items: Sequence[Any], what: str) -> None:
    """Refuse inputs declared, or given, in a type quantization cannot represent (bfloat16, complex, strings)."""
    for spec in specs:
        if spec.dtype.kind not in calibration.SUPPORTED_KINDS:
            raise QuantizationError(
                f"input {spec.name!r} is declared {spec.dtype}, which cannot be quantized; quantization supports "
                f"inputs of {calibration.SUPPORTED_DTYPES}: export the model with a float32 input (a Cast inside "
                "the model can convert it)"
            )
    for spec, item in zip(specs, items):
        dtype = getattr(item, "dtype", None)
        if isinstance(dtype, np.dtype) and dtype.kind not in calibration.SUPPORTED_KINDS + "V":
            raise InputError(
                f"{what}: input {spec.name!r} is given as {dtype}; pass real numbers ({calibration.SUPPORTED_DTYPES})"
            )


def quantize_inputs(specs: Sequence[TensorSpec], quantizers: Sequence[InputQuantizer],
                    float_ranges: dict[str, tuple[float, float]], x: Sequence[Any],
                    clipped_by_model: Collection[str] = ()) -> list[NDArray[np.int64]]:
    """Integers for the float inputs ``x`` (one array per input ``specs``), as ``quantize_input`` makes them.

    Values outside an input's calibrated range are clipped to it, with one ``SaturationWarning``
    per call giving, per input, how many values and the range; inputs in ``clipped_by_model`` are
    quantized by the model's own first quantizer, which clips them in the float model too: no warning.

    Raises:
        InputError: inputs that do not match ``specs`` (count, shape, dtype), or that hold NaN or
            infinity (naming the input and how many values), or an input quantized per feature
            given another number of features (its last axis).
    """
    _check_input_dtypes(specs, x, "quantize_input")
    arrays = check_input_arrays(specs, x)
    q, clipped = [], []
    for spec, qz, arr in zip(specs, quantizers, arrays):
        if arr.dtype.kind == "f":
            bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
            if bad:
                raise InputError(
                    f"input {spec.name!r} holds {bad} NaN or infinite value(s) (of {arr.size}); the quantized "
                    "model has no integer for them: replace them (or drop those samples) before the call"
                )
        per_feature = isinstance(qz, (PerFeatureQuantizer, DecisionQuantizer))
        if isinstance(qz, (PerFeatureQuantizer, DecisionQuantizer)) and (arr.ndim < 2 or arr.shape[-1] != qz.n_features):
            raise InputError(f"input {spec.name!r} is quantized per feature (its last axis) for {qz.n_features} "
                             f"features; got shape {arr.shape}")
        integers, outside = qz.quant_counting(arr)
        q.append(integers)
        if outside and spec.name not in clipped_by_model:
            if per_feature:
                clipped.append(f"{outside} of {arr.size} values of input {spec.name!r} fall outside their feature's "
                               "calibrated range (the input is quantized per feature)")
                continue
            low, high = float_ranges.get(spec.name, (qz.dequant(qz.q_min), qz.dequant(qz.q_max)))
            clipped.append(f"{outside} of {arr.size} values of input {spec.name!r} fall outside its calibrated "
                           f"range [{low:.6g}, {high:.6g}]")
    if clipped:
        warnings.warn(SaturationWarning(
            "; ".join(clipped) + ". They were clipped to the range, so outputs for those samples may be far "
            "from the float model's; calibrate on data that covers such inputs"), stacklevel=_user_stacklevel())
    return q


def _as_inputs(module: NumpyModule, data: Any, what: str) -> list[NDArray[Any]]:
    items = list(data) if isinstance(data, tuple) else [data]
    if len(items) != len(module.inputs):
        raise QuantizationError(
            f"{what}: the model takes {len(module.inputs)} input(s) {module.input_names}; pass a tuple "
            f"with one array per input (got {len(items)})"
        )
    _check_dtypes(module, items, what)
    arrays = module.check_inputs(items)
    for spec, arr in zip(module.inputs, arrays):
        if arr.size == 0 or (arr.ndim > 0 and arr.shape[0] == 0):
            raise QuantizationError(f"{what}: input {spec.name!r} is empty")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise QuantizationError(f"{what}: input {spec.name!r} contains NaN or infinity")
    return arrays


@dataclass(frozen=True)
class BitWidthRow:
    """One line of ``bitwidth_report``: a lookup or an accumulator of an ONNX node."""

    node: str
    op_type: str
    kind: str  # "lookup" or "accumulator"
    tensor: str
    low: int
    high: int
    bits: int  # bits of the integer range seen in calibration
    lookup_bits: int | None  # bits the lookup runs on after rounding (lookups only)
    lsbs_removed: int


class BitWidthReport(list[BitWidthRow]):
    """Rows per ONNX node; ``str()`` gives a table."""

    @property
    def max_lookup_bits(self) -> int:
        return max((r.lookup_bits or 0 for r in self if r.kind == "lookup"), default=0)

    def __str__(self) -> str:
        head = f"{'node':<24} {'op':<14} {'kind':<12} {'range':<24} {'bits':>4} {'lookup bits':>11}"
        lines = [head, "-" * len(head)]
        for r in self:
            lb = "" if r.lookup_bits is None else str(r.lookup_bits)
            lines.append(f"{r.node[:24]:<24} {r.op_type[:14]:<14} {r.kind:<12} {f'[{r.low}, {r.high}]':<24} "
                         f"{r.bits:>4} {lb:>11}")
        return "\n".join(lines)


class QuantizedModule:
    """An integer-only version of a ``NumpyModule``.

    ``qmodule(x)`` (or ``forward(x)``) takes floats and returns floats:
    ``quantize_input`` -> ``quantized_forward`` (integers only) -> ``dequantize_output``.
    """

    def __init__(self, module: NumpyModule, config: QuantConfig, float_ranges: dict[str, tuple[float, float]],
                 input_quantizers: list[InputQuantizer], ops: list[QuantizedOp],
                 producers: dict[str, tuple[str, str]]) -> None:
        self.numpy_module = module
        self.config = config
        self.float_ranges = float_ranges
        self.input_quantizers = input_quantizers
        self.ops = ops
        self.producers = producers
        self.sites: dict[str, LookupSite] = {}
        self.accumulators: dict[str, AccumulatorRecord] = {}
        #: tensors whose quantization the graph states (QuantizeLinear/DequantizeLinear, QONNX Quant)
        self.stated_quantizers: dict[str, UniformQuantizer] = {}
        #: per model input, the quantizers of what read its integers in the last calibration (see ``snap_inputs``)
        self.input_reads: dict[str, set[UniformQuantizer | None]] = {}
        #: per model input quantized per feature, the nodes that requantized its codes to one grid
        self.input_regrids: dict[str, set[str]] = {}
        #: model inputs whose clipping to their quantizer's range leaves the model's outputs as they are: the
        #: model quantizes them first thing itself, or only decides on spans of them (see ``decided_inputs``)
        self.snapped_inputs: set[str] = set()
        #: folded constants whose integers the graph states (DequantizeLinear of integer weights)
        self.stated_constants: dict[str, tuple[NDArray[Any], float]] = stated_constants_of(module)
        #: tensors whose calibration values are all whole numbers: quantized exactly where their range fits
        self.whole_numbers: frozenset[str] = frozenset()
        #: tensors holding masking values beside their data (an attention mask's -inf): the lowest seen
        self.floors: dict[str, float] = {}
        self.index_tensors: frozenset[str] = frozenset()  # see QuantContext.index_tensors
        self._outputs: list[QValue] = []
        #: the post-processing the client runs in the clear on the decrypted outputs (ArgMax ...), if any
        self.client_tail: ClientTail | None = None
        #: model outputs the float model computes differently for different calibration samples
        self.varying_outputs: frozenset[str] = frozenset()
        self._calibration_data: list[NDArray[Any]] = []  # the float calibration inputs
        #: the rounding chosen so that the model compiles, when no rounding was asked for (see auto_rounding)
        self.auto_rounding: AutoRounding | None = None
        self._calibration_samples: int | None = None  # None: the inputs cannot be split into samples
        #: samples per chunk of the integer calibration pass (0: the calibration data in one piece)
        self.calibration_chunk_size = 0
        #: passes over the calibration data the last integer calibration took (1 unless chunked)
        self.calibration_passes = 0
        self._release = calibration.release_schedule([op.bound for op in ops], set(module.output_names))
        #: the concrete-python circuit after ``compile`` (None before, and after anything that changes the program)
        self.fhe_circuit: Any = None
        self._fhe_program: Any = None  # what runs it (cml_core.fhe.program)

    @property
    def fhe_program(self) -> Any:
        """What runs ``fhe="simulate"``/``"execute"``: a ``cml_core.fhe.program.Program``, or None."""
        if self._fhe_program is None or getattr(self._fhe_program, "circuit", self.fhe_circuit) is not self.fhe_circuit:
            return None
        return self._fhe_program

    def attach_program(self, program: Any) -> None:
        """Run ``fhe="simulate"``/``"execute"`` with ``program`` from now on (None: no circuit)."""
        self._fhe_program = program
        self.fhe_circuit = getattr(program, "circuit", None)

    @property
    def _calibration_inputs(self) -> list[NDArray[Any]]:
        """The calibration inputs as integers, made on demand (the float inputs are what is kept)."""
        return [qz.quant(a) for qz, a in zip(self.input_quantizers, self._calibration_data)]

    # -- the three steps -----------------------------------------------------------------------
    def quantize_input(self, *x: Any) -> Any:
        """Integers for the float inputs (one array per model input; a tuple when several).

        Values outside an input's calibrated range are clipped to it, with one
        ``SaturationWarning`` per call giving, per input, how many values and the range.

        Raises:
            InputError: inputs that do not match the model (count, shape, dtype), or that hold
                NaN or infinity (naming the input and how many values).
        """
        q = quantize_inputs(self.numpy_module.inputs, self.input_quantizers, self.float_ranges, x, self.snapped_inputs)
        return q[0] if len(q) == 1 else tuple(q)

    def quantized_forward(self, *q: Any, fhe: str = "disable") -> Any:
        """Integer outputs for integer inputs.

        ``fhe``: ``"disable"`` runs the integer program in numpy (vectorized over the batch),
        ``"simulate"`` runs the compiled circuit's simulation, ``"execute"`` encrypts, runs and
        decrypts (keys generated once). The two last need ``compile`` first.
        """
        if fhe == "disable":
            outs = self._run([np.asarray(v, dtype=np.int64) for v in q], calibrating=False)
            data = tuple(np.asarray(o.data) for o in outs)
        else:
            from ..fhe import run_circuit

            data = run_circuit(self, q, fhe)
        return data[0] if len(data) == 1 else data

    def dequantize_output(self, *q: Any) -> Any:
        """The outputs, in the model's output dtypes, for the integer outputs.

        Float outputs are the floats the integers stand for. Integer outputs are those floats
        rounded to the nearest integer (ties to even), never truncated; values beyond the
        output type's range are clipped to it (not wrapped around), and NaN becomes 0, with a
        ``SaturationWarning`` saying how many. Boolean outputs are ``True`` where the rounded
        value is not zero.
        """
        outs = []
        for value, spec, data in zip(self._outputs, self.numpy_module.outputs, q):
            assert value.to_float is not None
            floats = np.asarray(value.to_float(np.asarray(data)))
            if spec.dtype.kind in "iub":
                outs.append(as_integers(floats, spec.name, spec.dtype))
            else:
                outs.append(floats.astype(spec.dtype))
        if self.client_tail is not None:  # the clear post-processing of the decrypted values
            outs = self.client_tail.finish(dict(zip(self.numpy_module.output_names, outs)))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def forward(self, *x: Any, fhe: str = "disable") -> Any:
        """Float outputs for float inputs through the integer program (see ``quantized_forward``)."""
        q = self.quantize_input(*x)
        out = self.quantized_forward(*(q if isinstance(q, tuple) else (q,)), fhe=fhe)
        return self.dequantize_output(*(out if isinstance(out, tuple) else (out,)))

    __call__ = forward

    @property
    def output_values(self) -> list[QValue]:
        """The program's outputs without data: how each output's integers map to floats."""
        return list(self._outputs)

    def restore_outputs(self, q_inputs: Sequence[Any]) -> None:
        """Work out ``output_values`` by running the integer program once on ``q_inputs``, for a
        module whose parameters were restored rather than calibrated (``load_quantized``)."""
        outputs = self._run([np.asarray(v, dtype=np.int64) for v in q_inputs], calibrating=False)
        self._outputs = [dataclasses.replace(o, data=None) for o in outputs]

    def save(self, path: Any) -> Any:
        """Save the compiled module for deployment (see ``cml_core.fhe.deploy.save``); returns the folder."""
        from ..fhe.deploy import save

        return save(self, path)

    # -- reports -------------------------------------------------------------------------------
    def bitwidth_report(self) -> BitWidthReport:
        """Per ONNX node: integer range seen in calibration and bits needed, in graph order."""
        order = {op.bound.name: i for i, op in enumerate(self.ops)}
        rows = [BitWidthRow(a.node, a.op_type, "accumulator", "", a.low, a.high, a.bits, None, 0)
                for a in self.accumulators.values()]
        rows += [BitWidthRow(s.node, s.op_type, "lookup", s.tensor, s.low, s.high, s.input_bits, s.lookup_bits,
                             s.lsbs_removed) for s in self.sites.values()]
        rows.sort(key=lambda r: (order.get(r.node, -1), r.kind))
        return BitWidthReport(rows)

    @property
    def lookup_count(self) -> int:
        """Table lookups per sample in the integer program (element-wise lookups count once per tensor)."""
        return len(self.sites)

    def check_bit_widths(self, limit: int = MAX_LOOKUP_BITS) -> None:
        """Raise ``BitWidthError`` for the first lookup needing more than ``limit`` bits."""
        for row in self.bitwidth_report():
            if row.kind == "lookup" and row.lookup_bits is not None and row.lookup_bits > limit:
                raise BitWidthError(
                    f"node {row.node!r} ({row.op_type}) needs a {row.lookup_bits}-bit table lookup "
                    f"(integer range [{row.low}, {row.high}] seen in calibration), above the {limit} bits "
                    "FHE supports. Ways out: quantize with fewer bits (n_bits), set "
                    "rounding_threshold_bits (e.g. 6) to round accumulators before lookups, or check that "
                    "the calibration set is representative (outliers widen ranges)."
                )

    def rounding_bits(self) -> dict[str, int | None]:
        """Per rounded lookup (keyed by its tensor): the bits kept before the lookup (None: not rounded)."""
        return {key: (site.lookup_bits if site.lsbs_removed else None)
                for key, site in self.sites.items() if site.roundable}

    def set_rounding(self, bits: int | None | dict[str, int | None], method: str | None = None) -> QuantizedModule:
        """Change the rounding before lookups and recalibrate the integer ranges; drops any circuit.

        ``bits`` is one value for every lookup or a dict keyed by lookup tensor or node name (the
        keys of ``rounding_bits()``, or the ``node`` column of ``bitwidth_report()``) that
        overrides the current setting for those lookups; ``None`` means no rounding. ``method``
        is ``"exact"`` or ``"approximate"`` (default: unchanged). Multi-input lookups and the lookups inside a product of
        two encrypted tensors are never rounded. The float calibration ranges stay; the integer pass over the calibration data
        runs again, since rounding one lookup moves the ranges of everything after it.

        Raises:
            QuantizationError: an unknown key, a bit count below 1, or an unknown method.
        """
        sites = {k: s for k, s in self.sites.items() if s.roundable}
        by_node = {s.node: k for k, s in sites.items()}
        wanted = bits if isinstance(bits, dict) else {}
        unknown = sorted(k for k in wanted if k not in sites and k not in by_node)
        if unknown:
            raise QuantizationError(f"set_rounding: no rounded lookup named {unknown}; lookups: {sorted(sites)}")
        for key, value in (wanted.items() if isinstance(bits, dict) else [("all lookups", bits)]):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise QuantizationError(f"set_rounding: bits for {key!r} must be a positive int or None, got {value!r}")
        exact = None if method is None else is_exact_rounding(method, "set_rounding")
        if isinstance(bits, dict):
            self.config.rounding_per_lookup.update(
                {(k if k in sites else by_node[k]): (None if v is None else int(v)) for k, v in bits.items()})
        else:
            self.config.rounding_bits, self.config.rounding_per_lookup = bits, {}
        if exact is not None:
            self.config.rounding_exact = exact
        self.calibrate_integers()
        return self

    def calibrate_integers(self) -> None:
        """Run the integer program on the calibration data, recording lookup and accumulator ranges.

        Runs on chunks of ``calibration_chunk_size`` samples; quantizers of intermediates not fitted
        yet are fitted on the whole calibration set (see ``context.IntegerCalibration``). The
        result does not depend on the chunk size. Drops any compiled circuit.

        Raises:
            QuantizationError: a node cannot be quantized, or a model output does not depend on
                the inputs.
            OutOfMemoryError: a chunk does not fit in memory (naming the node).
        """
        self.input_reads.clear()
        self.input_regrids.clear()
        slices = calibration.chunks(self._calibration_samples, self.calibration_chunk_size)
        recorder = IntegerCalibration(len(slices))
        outputs: list[QValue] = []
        while True:
            recorder.start_pass()
            spans: dict[int, tuple[Any, bool]] = {}  # per output: its first sample's integers, all samples alike
            for part in slices:
                q = [qz.quant(a[part]) for qz, a in zip(self.input_quantizers, self._calibration_data)]
                outputs = self._run(q, calibrating=True, calibration=recorder)
                _widen_spans(spans, outputs, int(np.shape(q[0])[0]) if q and self._calibration_samples else 0)
            if recorder.end_pass():
                break
        self.calibration_passes = recorder.passes
        self.sites.clear()
        self.sites.update(recorder.sites())
        self.accumulators.clear()
        self.accumulators.update(recorder.accumulators())
        for spec, out in zip(self.numpy_module.outputs, outputs):
            if out.is_constant:
                raise QuantizationError(f"model output {spec.name!r} does not depend on the inputs; nothing to encrypt")
        self._refuse_collapsed_outputs(spans)
        self._outputs = [dataclasses.replace(o, data=None) for o in outputs]
        self.attach_program(None)

    def _refuse_collapsed_outputs(self, spans: dict[int, tuple[Any, bool]]) -> None:
        """Raise when quantization makes an output the same on every calibration sample while the float
        model's output differs between them: every prediction would be that one, whatever the input."""
        if (self._calibration_samples or 0) < COLLAPSE_MIN_SAMPLES:
            return  # a few samples may share an integer by rounding alone (outputs closer than a step)
        for index, spec in enumerate(self.numpy_module.outputs):
            known = spans.get(index)
            if known is None or not known[1] or spec.name not in self.varying_outputs:
                continue
            if self._depends_on_the_batch():
                return  # the calibration batches computed other values than single samples: compile names why
            raise QuantizationError(
                f"model output {spec.name!r} (made by node {self.producers.get(spec.name, ('?', '?'))[0]!r}) is "
                "the same on every calibration sample once quantized, while the float model's differs between "
                "samples: quantization collapsed it. Give more bits (n_bits, rounding_threshold_bits), or bring "
                "the inputs to similar ranges (per_feature_inputs=True for features of different scales)")

    def _depends_on_the_batch(self) -> bool:
        """Whether the float model gives one of the first calibration samples another output alone than in a
        calibration batch (a value computed from the batch size): the float pass, which runs one sample at a
        time, and the integer pass, which runs batches, then see different models."""
        if not self._calibration_samples or self._calibration_samples < 2:
            return False
        size = min(self._calibration_samples, self.calibration_chunk_size or self._calibration_samples)
        try:
            beside = self.numpy_module.run(*[a[:size] for a in self._calibration_data])
            for i in range(min(size, 8)):  # a few samples: one alone may not show it (a ReLU zeroing it)
                alone = self.numpy_module.run(*[a[i:i + 1] for a in self._calibration_data])
                if any(not np.allclose(np.asarray(alone[n], np.float64), np.asarray(beside[n], np.float64)[i:i + 1],
                                       rtol=1e-5, atol=1e-7) for n in alone):
                    return True
        except Exception:  # noqa: BLE001  (the batch does not run at once: not the batch's doing to tell)
            return False
        return False

    # -- compilation (see cml_core.fhe) --------------------------------------------------------
    def compile(self, calibration_x: Any, p_error: float | None = None, global_p_error: float | None = None,
                configuration: Any = None, verbose: bool = False) -> Any:
        """Compile the integer program to an FHE circuit with concrete-python; returns the circuit.

        See ``cml_core.fhe.compile_quantized_module``.

        Raises:
            BitWidthError: a lookup needs more than 16 bits (checked before compiling).
            InputError: ``calibration_x`` does not match the model's inputs.
            QuantizationError: ``calibration_x`` is empty or holds NaN/infinity.
            CompileError: an op's result depends on the batch size, or concrete-python cannot
                compile the circuit (the message names the widest lookups and what to change).
        """
        from ..fhe import compile_quantized_module

        return compile_quantized_module(self, calibration_x, p_error=p_error, global_p_error=global_p_error,
                                        configuration=configuration, verbose=verbose)

    # -- the integer program -------------------------------------------------------------------
    def _run(self, q_inputs: Sequence[Any], calibrating: bool,
             calibration: IntegerCalibration | None = None,
             observe: Callable[[QuantizedOp, Sequence[QValue]], None] | None = None) -> list[QValue]:
        """The integer program's outputs for ``q_inputs``.

        While calibrating, a node that reaches a parameter not settled yet stops (``PendingRange``)
        and the nodes depending on it are skipped; the outputs are then an empty list.
        ``observe(op, outputs)`` is called after each op.
        """
        ctx = QuantContext(self.config, self.float_ranges, self.producers, self.sites, self.accumulators,
                           calibrating, calibration=calibration, stated=self.stated_quantizers,
                           stated_constants=self.stated_constants, input_reads=self.input_reads,
                           input_regrids=self.input_regrids,
                           whole_numbers=self.whole_numbers, floors=self.floors,
                           index_tensors=self.index_tensors)
        env: dict[str, QValue] = {name: QValue.constant(v, name) for name, v in self.numpy_module.constants.items()}
        for spec, qz, data in zip(self.numpy_module.inputs, self.input_quantizers, q_inputs):
            env[spec.name] = input_value(qz, data, spec.name)
            ctx.inputs[id(data)] = (spec.name, qz)
        skipped: set[str] = set()  # tensors this calibration pass cannot compute yet
        for op, dead in zip(self.ops, self._release):
            node = op.bound.node
            if skipped and any(n in skipped for n in node.input):
                skipped.update(n for n in node.output if n)
            else:
                ctx.node_name, ctx.op_type = op.bound.name, op.impl.display_name
                try:
                    outs = op.forward(ctx, [env[n] if n else None for n in node.input])
                except PendingRange:
                    skipped.update(n for n in node.output if n)
                    outs = ()
                except QuantizationError:
                    raise
                except MemoryError as exc:
                    raise self._out_of_memory(op, q_inputs, calibrating) from exc
                except Exception as exc:
                    if not calibrating:
                        raise
                    raise QuantizationError(
                        f"{op.where}: quantized forward failed: {type(exc).__name__}: {exc}") from exc
                if observe is not None:
                    observe(op, outs)
                for name, value in zip(node.output, outs):
                    if name:
                        env[name] = dataclasses.replace(value, name=name)
            for name in dead:  # free what no later node reads
                env.pop(name, None)
                ctx.release(name)
        if skipped:
            return []
        return [env[name] for name in self.numpy_module.output_names]

    def _out_of_memory(self, op: QuantizedOp, q_inputs: Sequence[Any], calibrating: bool) -> OutOfMemoryError:
        shapes = [tuple(np.shape(q)) for q in q_inputs]
        if not calibrating:
            return OutOfMemoryError(f"{op.where} ran out of memory in the integer program on inputs of shapes "
                                    f"{shapes}; pass fewer samples per call")
        size = self.calibration_chunk_size
        if size > 1:
            advice = (f"pass a smaller calibration_chunk_size to quantize (now {size} samples; try "
                      f"{max(1, size // 4)})")
        elif size == 1:
            advice = "even one sample at a time: the model needs more memory than is free"
        else:
            advice = "the calibration inputs cannot be split into samples: calibrate on fewer"
        return OutOfMemoryError(f"{op.where} ran out of memory calibrating the integer program on inputs of shapes "
                                f"{shapes}; {advice}")

    def __repr__(self) -> str:
        c = self.config
        kept = set(self.rounding_bits().values())
        rounding = next(iter(kept)) if len(kept) == 1 else ("per lookup" if kept else None)
        method = "exact" if c.rounding_exact else "approximate"
        return (f"QuantizedModule(n_bits={{inputs: {c.model_inputs}, ops: {c.op_inputs}, weights: {c.op_weights}}}, "
                f"lookups={self.lookup_count}, rounding={rounding}{'' if rounding is None else ' ' + method})")


def quantize_module(module: NumpyModule, calibration_data: Any, n_bits: Any = 8,
                    rounding_threshold_bits: Any = None, calibration_chunk_size: int | None = None,
                    per_feature_inputs: bool | str = "auto") -> QuantizedModule:
    """Calibrate ``module`` on ``calibration_data`` and build its ``QuantizedModule``.

    ``n_bits`` is an int, or a dict with ``model_inputs``, ``op_inputs``, ``op_weights`` and
    ``model_outputs``. ``rounding_threshold_bits`` (int, or ``{"n_bits": int, "method":
    "exact" | "approximate"}``) rounds each lookup input to that many bits; ``"auto"`` rounds only the
    lookups wider than 16 bits, to the fewest bits that keep agreement with the float model on the
    calibration data (see ``auto_rounding``), which ``compile`` also does when no rounding is set.

    Calibration holds a few samples at a time, never the whole set (see
    ``cml_core.quantization.calibration``): the float model runs one sample at a time, the integer
    program ``calibration_chunk_size`` samples at a time (default ``None``: as many as fit in
    ``calibration.CHUNK_MEMORY_BUDGET``, estimated from one sample). Samples are slices along the
    first axis of the inputs. The result does not depend on the chunk size; smaller chunks take
    less memory, and for models whose calibration fits quantizers inside ops (LayerNormalization,
    Softmax, ...) or rounds lookups, more passes over the data when the set spans several chunks.

    ``per_feature_inputs`` decides how a model input is quantized: ``True`` gives every input of
    rank 2 or more one scale and zero point per feature (its last axis), ``False`` one quantizer per
    input; ``"auto"`` (the default) quantizes per feature a float (samples, features) input whose
    whole range is more than ``PER_FEATURE_RANGE_RATIO`` times its narrowest varying column's
    (tabular data with columns of very different scales), calibrated on at least
    ``PER_FEATURE_MIN_SAMPLES`` samples, unless every node reading it would requantize it to one
    grid anyway (a lookup that would cost more than it keeps). Matrix products and the
    ONNX-ML linear and tree models fold the per-feature scales into their weights and thresholds.

    Returns:
        The calibrated ``QuantizedModule``.

    Warns:
        CalibrationWarning: an input constant over the samples, an input range dominated by outliers, or bit widths
            that leave the model no better than chance (see ``calibration.calibration_warnings``).

    Raises:
        QuantizationError: empty calibration data or data holding NaN/inf, bad settings, an
            input type quantization cannot represent (bfloat16, complex, strings), a node
            producing NaN/inf on the calibration data, or an op without a quantized implementation.
        InputError: calibration data that does not match the model's inputs (count, shape), or of
            a type that is not a real number (complex, strings).
        OutOfMemoryError: calibration does not fit in memory (naming the node; lower
            ``calibration_chunk_size``).
    """
    module = expand_fused_ops(module)
    per_feature_setting = check_per_feature_setting(per_feature_inputs)
    automatic = isinstance(rounding_threshold_bits, str) and rounding_threshold_bits.lower() == "auto"
    config = parse_config(n_bits, None if automatic else rounding_threshold_bits)
    requested_chunk = calibration.check_chunk_size(calibration_chunk_size)
    if any(spec.containers for spec in module.inputs):
        refuse_structured_values(module)  # sequence or optional inputs: named before the data is read
    inputs = _as_inputs(module, calibration_data, "calibration data")
    # post-processing only the client can run (ArgMax of scores, a ZipMap) leaves the encrypted program
    module, tail = split_client_tail(module, [a[:1] if np.ndim(a) else a for a in inputs])
    refuse_structured_values(module)
    missing = [b for b in module.nodes if b.impl.quantized is None]
    if missing:
        names = ", ".join(f"{b.where} from {b.impl.provider}" for b in missing[:5])
        raise QuantizationError(f"{len(missing)} node(s) have no quantized implementation: {names}")
    producers: dict[str, tuple[str, str]] = {}
    for bound in module.nodes:
        for name in bound.node.output:
            if name:
                producers[name] = (bound.name, bound.impl.display_name)
    n_samples = calibration.sample_count(module, inputs)
    statistics = calibration.float_statistics(module, inputs, n_samples, producers)
    ranges, index_inputs, index_tensors = widen_to_index_domains(module, statistics.ranges,
                                                                 statistics.whole_numbers)
    ranges = widen_to_output_floors(module, ranges)
    folding = {spec.name: readers_fold(module, spec.name) for spec in module.inputs}
    per_feature = [per_feature_wanted(spec, arr, per_feature_setting, folding[spec.name])
                   for spec, arr in zip(module.inputs, inputs)]
    has_weights = any(isinstance(b.impl.quantized, type) and issubclass(b.impl.quantized, LinearOp)
                      for b in module.nodes)
    for message in calibration.calibration_warnings(module, inputs, n_samples, ranges, config, has_weights):
        warnings.warn(CalibrationWarning(message), stacklevel=_user_stacklevel())
    chunk = calibration.chunk_size(requested_chunk, n_samples, statistics.peak_elements)

    ops_of = {id(b): b.impl.quantized(b) for b in module.nodes}  # type: ignore[misc]
    # per feature unless asked otherwise: inputs read only by ops deciding on spans of them (tree thresholds)
    decided = decided_inputs(module, inputs, ops_of, config.model_inputs) if per_feature_setting is not False else {}

    def calibrated() -> QuantizedModule:
        input_quantizers = [decided[s.name] if s.name in decided else
                            input_quantizer(ranges[s.name], s.name in statistics.whole_numbers,
                                            max(config.model_inputs, MAX_LOOKUP_BITS) if s.name in index_inputs
                                            else config.model_inputs, arr if wanted else None)
                            for s, arr, wanted in zip(module.inputs, inputs, per_feature)]
        ops = [b.impl.quantized(b) for b in module.nodes]  # type: ignore[misc]
        built = QuantizedModule(module, config, ranges, input_quantizers, ops, producers)
        built.snapped_inputs.update(decided)
        built.whole_numbers = statistics.whole_numbers
        built.floors = dict(statistics.floors)
        built.index_tensors = index_tensors
        built.client_tail = tail
        built.varying_outputs = statistics.varying_outputs
        built._calibration_data = inputs
        built._calibration_samples = n_samples
        built.calibration_chunk_size = chunk
        built.calibrate_integers()
        return built

    qmodule = calibrated()
    if per_feature_setting == "auto":
        regridded = [i for i, spec in enumerate(module.inputs) if per_feature[i] and only_regridded(qmodule, spec.name)]
        if regridded:  # nothing keeps the per-feature codes: quantize those inputs per tensor, from scratch
            for i in regridded:
                per_feature[i] = False
            qmodule = calibrated()
    if snap_inputs(qmodule):
        qmodule.calibrate_integers()
    for message in stated_conflicts(qmodule):
        warnings.warn(CalibrationWarning(message), stacklevel=_user_stacklevel())
    if automatic:
        choose_automatic_rounding(qmodule, tuple(inputs))
    return qmodule


def _widen_spans(spans: dict[int, tuple[Any, bool]], outputs: Sequence[QValue], samples: int) -> None:
    """Update ``spans`` (output index -> (its first sample's integers, whether every sample so far has the
    same integers)) with this chunk's ``outputs`` of ``samples`` samples; an output whose first axis is not
    the samples' is left out (its integers cannot be told apart by sample)."""
    for index, value in enumerate(outputs):
        data = np.asarray(value.data) if value.to_float is not None else None
        if data is None or data.ndim == 0 or data.shape[0] != samples or samples == 0:
            continue
        first, alike = spans.get(index, (data[:1], True))
        spans[index] = (first, alike and first.shape == data[:1].shape and bool(np.all(data == first)))


#: ops whose output holds only values of their first input (moved, repeated, or cast to an integer type)
VALUE_KEEPING = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Expand",
                           "Transpose", "Slice", "Tile"})


def widen_to_index_domains(module: NumpyModule, ranges: dict[str, tuple[float, float]],
                           whole_numbers: frozenset[str]
                           ) -> tuple[dict[str, tuple[float, float]], set[str], frozenset[str]]:
    """``ranges`` with each whole-number model input that a Gather reads as indices into a constant
    table (token ids into an embedding) widened to every row of the table: calibration text rarely
    holds every token, and an id outside the calibrated range would be clipped to a neighbour's row.
    Also returns those inputs' names: an index has no meaning rounded, so they are quantized exactly on
    as many bits as the table's rows need (up to the 16 a lookup takes), whatever ``n_bits``; and the
    whole-number tensors the model computes and reads as such indices (a tree walk's node index), widened
    and quantized alike (``QuantContext.index_tensors``)."""
    widened = dict(ranges)
    indices: set[str] = set()
    computed: set[str] = set()
    producer = {out: b.node for b in module.nodes for out in b.node.output if out}
    for bound in module.nodes:
        node = bound.node
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in module.constants:
            continue
        name = node.input[1]
        chain = [name]
        while name in producer and producer[name].op_type in VALUE_KEEPING and producer[name].input:
            name = producer[name].input[0]  # the ids reshaped or cast on their way
            chain.append(name)
        rows = np.shape(module.constants[node.input[0]])[int(bound.attributes.get("axis", 0))]
        if name not in module.input_names:  # computed indices (a tree walk's node): exact, on their own bits
            for tensor in chain:
                if tensor in whole_numbers and tensor in widened and tensor not in module.input_names:
                    low, high = widened[tensor]
                    widened[tensor] = (min(low, 0.0 if low >= 0 else -float(rows)), max(high, float(rows - 1)))
                    computed.add(tensor)
            continue
        if name not in whole_numbers or name not in widened:
            continue
        low, high = widened[name]
        first = 0.0 if low >= 0 else -float(rows)  # negative indices count from the end
        widened[name] = (min(low, first), max(high, float(rows - 1)))
        indices.add(name)
    return widened, indices, frozenset(computed)


def widen_to_output_floors(module: NumpyModule, ranges: dict[str, tuple[float, float]]
                           ) -> dict[str, tuple[float, float]]:
    """``ranges`` with the outputs of each op that states an ``output_floor`` widened down to it. A softmax
    of nearly uniform rows (attention at initialization) takes values in a narrow band around ``1 / n``:
    fitted to the band, its grid's zero point lies far below its integers, so the probabilities enter a
    product as integers of 8 to 10 bits where a grid from 0 gives at most ``op_inputs`` bits, and the
    accumulator of probabilities times values is three bits narrower (a 17-token self-attention at n_bits 6:
    18 bits to 15, with the same error against the float model)."""
    widened = dict(ranges)
    for bound in module.nodes:
        floor = getattr(bound.impl.quantized, "output_floor", None)
        if floor is None:
            continue
        for name in bound.node.output:
            if name in widened:
                low, high = widened[name]
                widened[name] = (min(low, floor), max(high, floor))
    return widened


def decided_inputs(module: NumpyModule, inputs: Sequence[NDArray[Any]], ops_of: dict[int, QuantizedOp],
                   n_bits: int) -> dict[str, DecisionQuantizer]:
    """Quantizers for the (samples, features) float inputs read only through decisions on thresholds
    (``QuantizedOp.decision_cuts``): a tree ensemble's comparisons, or comparisons with constants reached
    through a product that copies features (``QuantizedOp.feature_selection``, Hummingbird's trees).

    Each feature's integers count the thresholds a value passes (``DecisionQuantizer``): every decision is
    exact, on the bits the most-cut feature needs, up to ``n_bits`` (beyond, the cuts misplacing the fewest
    calibration samples are kept)."""
    readers: dict[str, list[tuple[Any, int]]] = {}
    for bound in module.nodes:
        for i, name in enumerate(bound.node.input):
            if name:
                readers.setdefault(name, []).append((bound, i))
    decided: dict[str, DecisionQuantizer] = {}
    for spec, data in zip(module.inputs, inputs):
        if data.ndim != 2 or data.shape[1] < 1 or spec.dtype.kind != "f":
            continue
        cuts = _input_cuts(module, readers, ops_of, spec.name, data.shape)
        if cuts is not None:
            decided[spec.name] = DecisionQuantizer.fit(cuts, data, n_bits)
    return decided


def _input_cuts(module: NumpyModule, readers: dict[str, list[tuple[Any, int]]], ops_of: dict[int, QuantizedOp],
                name: str, shape: tuple[int, ...]) -> list[list[tuple[float, bool]]] | None:
    """Per feature of model input ``name``, the cuts its readers decide on; None when a reader looks at
    more than cuts (or the input is a model output itself)."""
    n_features = shape[-1]
    per_feature: list[list[tuple[float, bool]]] = [[] for _ in range(n_features)]
    if name in module.output_names or not readers.get(name):
        return None

    def constants(bound: Any) -> list[Any]:
        return [module.constants.get(n) for n in bound.node.input]

    def collect(found: list[tuple[NDArray[Any], bool]], features: NDArray[Any], at: tuple[int, ...]) -> bool:
        for thresholds, inclusive in found:
            try:
                t, f = np.broadcast_arrays(np.asarray(thresholds, dtype=np.float64), features)
            except ValueError:
                return False
            for value, feature in zip(t.ravel(), f.ravel()):
                if not np.isnan(value) and feature >= 0:  # -1: a position copying no feature
                    per_feature[int(feature)].append((float(value), bool(inclusive)))
        return True

    for bound, index in readers[name]:
        op = ops_of[id(bound)]
        direct = op.decision_cuts(index, constants(bound), shape)
        if direct is not None:
            if not collect(direct, np.arange(n_features), shape):
                return None
            continue
        selected = op.feature_selection(index, constants(bound), n_features)
        out = bound.node.output[0] if bound.node.output else ""
        if selected is None or out in module.output_names or not readers.get(out):
            return None
        for reader, i in readers[out]:
            found = ops_of[id(reader)].decision_cuts(i, constants(reader), tuple(np.shape(selected)))
            if found is None or not collect(found, np.asarray(selected), shape):
                return None
    if not any(per_feature):
        return None
    return per_feature


def input_quantizer(float_range: tuple[float, float], whole_numbers: bool, n_bits: int,
                    per_feature_data: NDArray[Any] | None = None) -> InputQuantizer:
    """A model input's quantizer: exact (scale 1) when its calibration values are whole numbers whose
    range fits ``n_bits`` (token ids, counts, pixel levels), else fitted to its range. Given the
    calibration data ``per_feature_data``, one scale and zero point per feature (its last axis),
    each column exact or fitted alike."""
    if per_feature_data is not None:
        lows, highs, whole = feature_ranges(per_feature_data)
        return PerFeatureQuantizer.fit(lows, highs, n_bits, whole)
    exact = UniformQuantizer.for_whole_numbers(*float_range, n_bits) if whole_numbers else None
    return exact or UniformQuantizer.fit(*float_range, n_bits)


def input_value(quantizer: InputQuantizer, data: Any, name: str) -> QValue:
    """A model input's integers ``data`` as the value the integer program starts from."""
    if isinstance(quantizer, (PerFeatureQuantizer, DecisionQuantizer)):
        return QValue.per_feature(data, quantizer, name)
    return QValue.affine(data, quantizer.scale, quantizer.zero_point, name)


def check_per_feature_setting(value: Any) -> bool | str:
    """``value`` as a ``per_feature_inputs`` setting: ``True``, ``False`` or ``"auto"``.

    Raises:
        QuantizationError: anything else.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value == "auto":
        return "auto"
    raise QuantizationError(f"per_feature_inputs must be True, False or 'auto', got {value!r}")


def feature_ranges(data: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Per feature (last axis) of ``data``: lowest and highest value, and whether every value is a whole number."""
    columns = np.asarray(data, dtype=np.float64).reshape(-1, np.shape(data)[-1])
    return columns.min(axis=0), columns.max(axis=0), np.all(columns == np.round(columns), axis=0)


#: casts that keep a float input's values (a float32 input cast to float32 or float64)
_FLOAT_CASTS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE})


def readers_fold(module: NumpyModule, name: str) -> bool:
    """Whether every node reading model input ``name`` (through casts to float) folds per-feature scales
    into its own parameters (its family's ``folds_feature_scales``; "as output" when its output is a
    model output)."""
    readers = [b for b in module.nodes if name in b.node.input]
    if not readers:
        return False
    for bound in readers:
        if bound.node.op_type == "Cast" and bound.attributes.get("to") in _FLOAT_CASTS and bound.node.output:
            if not readers_fold(module, bound.node.output[0]):
                return False
            continue
        folds = getattr(bound.impl.quantized, "folds_feature_scales", False)
        if folds == "as output":
            folds = all(out in module.output_names for out in bound.node.output if out)
        if folds is not True:
            return False
    return True


def per_feature_wanted(spec: TensorSpec, data: NDArray[Any], setting: bool | str, readers_fold: bool = False) -> bool:
    """Whether the model input ``spec`` (calibration ``data``) is quantized per feature under ``setting``
    (see ``quantize_module``'s ``per_feature_inputs``). ``readers_fold``: every node reading the input
    folds per-feature scales into its own parameters (an ONNX-ML linear model or tree ensemble: family
    attribute ``folds_feature_scales``), so that "auto" gives each feature its grid whatever the ranges."""
    if setting is False or data.ndim < 2 or data.shape[-1] < 2:
        return False
    if setting is True:
        return True
    if data.ndim != 2 or spec.dtype.kind != "f" or data.shape[0] < PER_FEATURE_MIN_SAMPLES:
        return False
    if readers_fold:
        return True
    lows, highs, _ = feature_ranges(data)
    spans = highs - lows
    varying = spans[spans > 0]
    if not varying.size:
        return False
    return bool(float(highs.max() - lows.min()) > PER_FEATURE_RANGE_RATIO * float(varying.min()))


def only_regridded(qmodule: QuantizedModule, name: str) -> bool:
    """Whether every node reading model input ``name`` requantized its per-feature codes to one grid."""
    readers = {b.name for b in qmodule.numpy_module.nodes if name in b.node.input}
    return bool(readers) and readers <= qmodule.input_regrids.get(name, set())


#: fewest calibration samples for a constant quantized output to count as a collapse
COLLAPSE_MIN_SAMPLES = 10

#: how many times fused ops are replaced by their bodies (bodies holding fused ops, in turn)
MAX_EXPANSIONS = 4


def expand_fused_ops(module: NumpyModule) -> NumpyModule:
    """``module`` with its fused ops of the ``FunctionBodyOp`` family (Attention, ...) replaced by the function
    bodies ONNX defines for them, as a new module; ``module`` itself when it has none.

    Raises:
        QuantizationError: a body cannot be built or expanded (naming the node).
    """
    from ..expansion import expand_nodes, expansion_targets
    from ..numpy_module import NumpyModule
    from .function_body import FunctionBodyOp

    for _ in range(MAX_EXPANSIONS):  # a body may hold fused ops in turn
        targets = expansion_targets(module.nodes, FunctionBodyOp)
        if not targets:
            return module
        def chosen(node: onnx.NodeProto, targets: set[str] = targets) -> bool:
            return bool(node.output) and node.output[0] in targets

        expanded = expand_nodes(module.onnx_model, chosen)
        module = NumpyModule(expanded, module.registry)
    raise QuantizationError(f"fused ops' function bodies still hold fused ops after {MAX_EXPANSIONS} expansions")


def refuse_structured_values(module: NumpyModule) -> None:
    """Refuse a model whose computation on its inputs runs control flow or holds sequences, optionals or maps.

    Nodes left after load-time folding all depend on the model's inputs (an If whose condition is
    constant was replaced by its branch's nodes, and control flow or sequences on constants alone
    were folded), so any such node here would have to run on encrypted values.

    Raises:
        QuantizationError: naming the node (or the graph input or output) and what to export instead
            (for a ZipMap, the skl2onnx option that leaves it out).
    """
    kinds = getattr(module, "value_kinds", {})
    for bound in module.nodes:
        subgraphs = getattr(bound, "subgraphs", {})
        if subgraphs:
            raise QuantizationError(
                f"{bound.where} cannot run on encrypted values: it runs its subgraph(s) {sorted(subgraphs)} on "
                "values computed from the model's inputs, and the quantized program has no control flow. Export "
                "the model without control flow: with a constant trip count (the exporter then unrolls the loop) "
                "and conditions known at export (an If whose condition is a constant is replaced by its branch)")
        if bound.impl.op_type == "ZipMap" and bound.impl.domain == "ai.onnx.ml":
            raise QuantizationError(
                f"{bound.where} cannot run on encrypted values: it turns the class scores into a list of dicts "
                "(label -> probability), which the quantized program cannot hold. Export the classifier without "
                "it: with skl2onnx, to_onnx(model, X, options={id(model): {\"zipmap\": False}}) gives the "
                "probabilities as a (samples, classes) tensor (the class order is model.classes_)")
        held = [(n, kinds[n]) for n in (*bound.inputs, *bound.outputs) if n and n in kinds]
        if held:
            name, kind = held[0]
            role = "input" if name in bound.inputs else "output"
            raise QuantizationError(
                f"{bound.where} cannot run on encrypted values: its {role} {name!r} is {kind}, which the quantized "
                "program cannot hold. Export the computation on the model's inputs with plain tensors (Concat, "
                "Split, Slice, Gather instead of sequence and optional ops)")
    for role, specs in (("input", module.inputs), ("output", module.outputs)):
        for spec in specs:
            if spec.containers:
                raise QuantizationError(
                    f"model {role} {spec.name!r} is a {spec.describe()}: the quantized program cannot run on "
                    "encrypted values of that kind; give the model tensor inputs and outputs")


def snap_inputs(qmodule: QuantizedModule) -> bool:
    """Give a model input the model's own quantizer when the model quantizes it first thing.

    When everything that reads an input's integers requantizes them to one quantizer the graph
    states (a QuantizeLinear/DequantizeLinear or QONNX ``Quant`` on the input), the input is
    quantized with that quantizer directly: the client computes the model's own codes, the lookup
    that mapped n-bit inputs to them disappears, and no input lands on the other side of a code
    boundary than in the float model. Returns whether any input changed (recalibrate then).
    """
    changed = False
    for i, spec in enumerate(qmodule.numpy_module.inputs):
        reads = qmodule.input_reads.get(spec.name, set())
        if len(reads) != 1 or spec.name in qmodule.snapped_inputs:
            continue
        (stated,) = reads
        if stated is None or spec.dtype.kind != "f":
            continue
        qmodule.input_quantizers[i] = stated
        qmodule.snapped_inputs.add(spec.name)
        changed = True
    return changed


def stated_constants_of(module: NumpyModule) -> dict[str, tuple[NDArray[Any], float]]:
    """The folded constants whose producing op states their integers and scale (its quantized
    class's ``stated_constant(bound, values, index)``, e.g. a DequantizeLinear of int8 weights)."""
    stated: dict[str, tuple[NDArray[Any], float]] = {}
    for name, (bound, values, index) in getattr(module, "folded_from", {}).items():
        result = bound.impl.quantized.stated_constant(bound, values, index)
        if result is not None:
            stated[name] = result
    return stated


def stated_conflicts(qmodule: QuantizedModule) -> list[str]:
    """One message per tensor the graph quantizes to more bits than ``n_bits`` asks: the graph's
    quantization is kept, not silently overridden."""
    asked = qmodule.config.op_inputs
    wider = {name: q.n_bits for name, q in qmodule.stated_quantizers.items() if q.n_bits > asked}
    if not wider:
        return []
    listed = ", ".join(f"{name!r} ({bits} bits)" for name, bits in list(wider.items())[:5])
    more = f" and {len(wider) - 5} more" if len(wider) > 5 else ""
    return [f"the model states its own quantization for {len(wider)} tensor(s) wider than n_bits={asked}: "
            f"{listed}{more}. They keep the model's bit widths (its QuantizeLinear/DequantizeLinear or Quant "
            "nodes decide them); n_bits applies to the tensors the model leaves unquantized"]


def as_integers(floats: NDArray[Any], name: str, dtype: np.dtype[Any]) -> NDArray[Any]:
    """``floats`` as ``dtype`` integers: rounded to nearest, clipped to the type's range (see ``dequantize_output``)."""
    values = np.asarray(floats)
    nan = 0
    if values.dtype.kind in "fc":
        values = np.rint(values.real.astype(np.float64))
        missing = np.isnan(values)
        nan = int(np.count_nonzero(missing))
        if nan:
            values[missing] = 0.0
    if dtype.kind == "b" or values.dtype.kind == "b":
        return np.asarray(values != 0).astype(dtype)
    info = np.iinfo(dtype)
    low, high = info.min, info.max
    if values.dtype.kind == "f":  # the largest float not above high (int64's maximum rounds up as a float)
        top = float(high)
        bounds: tuple[Any, Any] = (float(low), top if int(top) <= high else float(np.nextafter(top, 0.0)))
    else:  # integers: the type's range, within what the values' own type can hold
        have = np.iinfo(values.dtype)
        bounds = (values.dtype.type(max(low, have.min)), values.dtype.type(min(high, have.max)))
    outside = int(np.count_nonzero((values < bounds[0]) | (values > bounds[1])))
    clipped = np.clip(values, *bounds) if outside else values
    if outside or nan:
        parts = [f"{outside} value(s) outside [{low}, {high}] were clipped to it"] if outside else []
        parts += [f"{nan} NaN value(s) became 0"] if nan else []
        warnings.warn(SaturationWarning(
            f"output {name!r} is declared {dtype}: " + ", ".join(parts) + " instead of wrapping around; the "
            "integer outputs lie outside what calibration saw (check the inputs' range, or the circuit's results)"),
            stacklevel=_user_stacklevel())
    return clipped.astype(dtype)
