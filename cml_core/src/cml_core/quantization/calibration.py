"""Calibration statistics gathered a little at a time, so memory does not grow with the calibration set.

- The float pass runs the float model on one sample at a time and keeps, per tensor, the running
  minimum and maximum; no tensor outlives its last use. One sample at a time also makes the
  ranges independent of any batching: a float matrix product may round differently for another
  number of rows (BLAS picks its kernel by shape), so ranges taken over chunks of other sizes
  could differ in the last bits.
- The integer pass (``QuantizedModule.calibrate_integers``) runs the integer program on chunks of
  ``calibration_chunk_size`` samples; ``context.IntegerCalibration`` explains how the ranges it
  fits stay those of the whole calibration set. By default a chunk holds as many samples as fit
  in ``CHUNK_MEMORY_BUDGET``, estimated from the float pass (see ``chunk_size``).

Samples are slices along the first axis of every input; a model whose inputs cannot be split
there (a scalar input, inputs of different lengths, a first axis of fixed size) is calibrated in
one piece.

The warnings of ``calibration_warnings`` flag calibrations that quantize to nothing useful.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import OutOfMemoryError, QuantizationError
from .context import QuantConfig
from .quantizers import MASK_LEVEL

if TYPE_CHECKING:
    from ..numpy_module import BoundNode, NumpyModule

#: memory one chunk of the integer calibration pass may take, by default (bytes)
CHUNK_MEMORY_BUDGET = 1 << 30
#: bytes the integer pass needs per element the float model holds alive: the int64 tensor itself
#: and the float64 temporaries of the lookups computed on it
BYTES_PER_LIVE_ELEMENT = 32

#: an output "varies" between samples when one differs from the first sample, somewhere, by more than this
#: share of the output's calibrated range: quantized to a few bits, values that far apart cannot share an
#: integer unless something upstream collapsed (a tree's probabilities flipping between 0 and 1 do; a
#: deep net's outputs moving by 1e-4 around 0.25 do not)
VARYING_SHARE = 0.5

#: numpy kinds of the inputs quantization handles: floats, signed and unsigned integers, booleans
SUPPORTED_KINDS = "fiub"
SUPPORTED_DTYPES = "bool, int8 to int64, uint8 to uint64, float16, float32 or float64"

#: central share of an input's calibration values whose spread the outlier check compares with the range
CENTRAL_PERCENTILES = (1.0, 99.0)
#: fewest calibration values of an input for the outlier check (below, a percentile is not robust)
OUTLIER_MIN_VALUES = 100
#: an input's range counts as dominated by outliers beyond this many times its central spread ...
OUTLIER_RANGE_RATIO = 10.0
#: ... when the central values also get fewer than this many integer levels
OUTLIER_MIN_LEVELS = 4


def check_chunk_size(value: Any) -> int | None:
    """``value`` as a chunk size: a positive int, or ``None`` (sized to memory).

    Raises:
        QuantizationError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise QuantizationError(
            f"calibration_chunk_size must be a positive int (samples per chunk) or None (sized to "
            f"{CHUNK_MEMORY_BUDGET >> 20} MiB of memory), got {value!r}"
        )
    return int(value)


def sample_count(module: NumpyModule, inputs: Sequence[NDArray[Any]]) -> int | None:
    """Samples in ``inputs`` (slices along their first axis).

    Returns:
        The count, or ``None`` when the inputs cannot be split there: a scalar input, inputs of
        different lengths, an input without a declared shape or with a first axis of fixed size
        (nothing says the first axis is a batch), or a symbolic first dimension that another
        axis shares.
    """
    if not inputs or any(a.ndim == 0 for a in inputs):
        return None
    n = int(inputs[0].shape[0])
    if any(a.shape[0] != n for a in inputs):
        return None
    first_dims = set()
    for spec in module.inputs:
        if not spec.shape or isinstance(spec.shape[0], int):
            return None
        if isinstance(spec.shape[0], str) and spec.shape[0]:
            first_dims.add(spec.shape[0])
    if any(d in first_dims for spec in module.inputs if spec.shape for d in spec.shape[1:]):
        return None
    return n


def chunk_size(requested: int | None, n_samples: int | None, peak_elements: int) -> int:
    """Samples per chunk of the integer pass.

    ``requested`` wins when given; otherwise as many samples as fit in ``CHUNK_MEMORY_BUDGET``
    at ``BYTES_PER_LIVE_ELEMENT`` per element the float model held alive at once for one sample
    (``peak_elements``). Returns the number of samples (at least 1, at most ``n_samples``); when
    the inputs cannot be split (``n_samples`` is ``None``) the whole data is one chunk and 0 is
    returned.
    """
    if n_samples is None:
        return 0
    if requested is not None:
        return max(1, min(requested, n_samples))
    per_sample = max(1, peak_elements) * BYTES_PER_LIVE_ELEMENT
    return max(1, min(n_samples, CHUNK_MEMORY_BUDGET // per_sample))


def chunks(n_samples: int | None, size: int) -> list[Any]:
    """Indices of consecutive samples, ``size`` at a time (``...``, everything, when not split)."""
    if n_samples is None or size <= 0:
        return [...]
    return [slice(start, min(start + size, n_samples)) for start in range(0, n_samples, size)]


def release_schedule(nodes: Sequence[BoundNode], keep: set[str]) -> list[tuple[str, ...]]:
    """Per node, in order: the tensors no later node reads and ``keep`` does not hold, to drop after it runs."""
    last: dict[str, int] = {}
    for step, bound in enumerate(nodes):
        for name in list(bound.node.input) + list(bound.node.output):
            if name:
                last[name] = step
    dead: list[list[str]] = [[] for _ in nodes]
    for name, step in last.items():
        if name not in keep:
            dead[step].append(name)
    return [tuple(names) for names in dead]


@dataclass
class FloatStatistics:
    """What the float pass found: per tensor its range, and the most elements one sample held alive."""

    ranges: dict[str, tuple[float, float]]
    peak_elements: int
    #: tensors whose every calibration value is a whole number (booleans, integers, counts held as floats)
    whole_numbers: frozenset[str] = frozenset()
    #: model outputs that differ markedly from one calibration sample to another (see ``VARYING_SHARE``)
    varying_outputs: frozenset[str] = frozenset()
    #: tensors holding masking values (at or below ``-MASK_LEVEL``) beside their data: the lowest seen;
    #: their range is their data's
    floors: dict[str, float] = field(default_factory=dict)


def float_statistics(module: NumpyModule, inputs: Sequence[NDArray[Any]], n_samples: int | None,
                     producers: dict[str, tuple[str, str]]) -> FloatStatistics:
    """Run the float model on each calibration sample; returns every tensor's range over the samples.

    Tensors that are constants, empty or not numbers (strings) get no range.

    Raises:
        QuantizationError: a node produces NaN or infinity (naming the node, tensor and sample).
        OutOfMemoryError: the float model does not fit in memory even for one sample.
        InputError, NodeExecutionError: as for running the module.
    """
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    fractional: set[str] = set()  # tensors with a value that is not a whole number
    floors: dict[str, float] = {}  # tensors with masking values: the lowest seen
    first_outputs: dict[str, Any] = {}  # each model output on the first sample
    deviations: dict[str, float] = {}  # each model output's largest difference from its first sample
    position = {name: step for step, b in enumerate(module.nodes) for name in b.node.output if name}
    outputs = set(module.output_names)
    schedule = release_schedule(module.nodes, set(module.output_names) | set(module.input_names))
    counter = {"live": 0, "peak": 0, "released": 0}
    sizes: dict[str, int] = {}
    where = ""

    def widen(name: str, value: Any) -> None:
        arr = np.asarray(value)
        if arr.dtype.kind not in SUPPORTED_KINDS or arr.size == 0 or name in module.constants:
            return
        data = arr
        if arr.dtype.kind == "f" and name not in module.input_names:
            masking = arr <= -MASK_LEVEL  # an attention mask's -inf or float32's lowest: not data
            if masking.any():
                floors[name] = min(floors.get(name, 0.0), float(arr[masking].min()))
                data = arr[~masking]
                if data.size == 0:
                    return
        low, high = data.min(), data.max()
        if arr.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
            node, op = producers.get(name, ("?", "?"))
            raise QuantizationError(
                f"node {node!r} ({op}) produces NaN or infinity in tensor {name!r} on {where}; check the "
                "inputs' domain for this op (e.g. Log of non-positive values)"
            )
        if arr.dtype.kind == "f" and name not in fractional and not np.array_equal(data, np.round(data)):
            fractional.add(name)
        if name in outputs and n_samples is not None and arr.dtype.kind in "fiub":  # one sample per block here
            first = first_outputs.setdefault(name, arr.astype(np.float64))
            if first.shape == arr.shape:
                with np.errstate(invalid="ignore"):  # masking -inf less -inf: no deviation
                    deviation = float(np.nanmax(np.abs(arr.astype(np.float64) - first), initial=0.0))
                deviations[name] = max(deviations.get(name, 0.0), deviation)
        if name in lows:
            lows[name], highs[name] = min(lows[name], float(low)), max(highs[name], float(high))
        else:
            lows[name], highs[name] = float(low), float(high)

    def count(name: str, value: Any) -> None:  # elements alive at once, first sample only
        step = position[name]
        while counter["released"] < step:
            for dead in schedule[counter["released"]]:
                counter["live"] -= sizes.pop(dead, 0)
            counter["released"] += 1
        sizes[name] = int(np.size(value))
        counter["live"] += sizes[name]
        counter["peak"] = max(counter["peak"], counter["live"])

    def observe_first(name: str, value: Any) -> None:
        count(name, value)
        widen(name, value)

    blocks = chunks(n_samples, 1)
    for index, block in enumerate(blocks):
        arrays = [a[block] for a in inputs]
        where = "the calibration data" if n_samples is None else f"calibration sample {index}"
        for spec, arr in zip(module.inputs, arrays):
            widen(spec.name, arr)
            if index == 0:
                sizes[spec.name] = int(arr.size)
                counter["live"] += sizes[spec.name]
        try:
            module.run(*arrays, observe=observe_first if index == 0 else widen)
        except OutOfMemoryError as exc:
            how = "on the whole calibration data at once (its inputs cannot be split into samples: pass fewer)" \
                if n_samples is None else "even on one sample at a time: the model needs more memory than is free"
            raise OutOfMemoryError(f"calibration ran out of memory in the float model {how}: {exc}") from exc
    ranges = {name: (lows[name], highs[name]) for name in lows}
    for name in floors:  # only masking values in every sample: a data range of one value
        ranges.setdefault(name, (0.0, 0.0))
    varying = {name for name, deviation in deviations.items()
               if name in lows and deviation > VARYING_SHARE * (highs[name] - lows[name])}
    whole = _whole_by_construction(module, set(lows) - fractional - set(floors))
    return FloatStatistics(ranges, counter["peak"], whole, frozenset(varying), floors)


def _whole_by_construction(module: NumpyModule, whole: set[str]) -> frozenset[str]:
    """Of the tensors whose calibration values were all whole numbers, those that are whole on any input:
    model inputs (the data's own kind of values), integer and boolean tensors, and floats cast from them
    (a comparison's result as 0/1). A float that happened to be whole on the calibration data is not: a
    quantizer of step 1 would round its other values far more coarsely than a fitted one."""
    settled = {spec.name for spec in module.inputs} & whole
    declared = _declared_kinds(module)
    for bound in module.nodes:
        for name in bound.outputs:
            if name not in whole:
                continue
            kind = declared.get(name)
            if kind is not None and kind in "iub":
                settled.add(name)
            elif bound.node.op_type in ("Cast", "CastLike") and declared.get(bound.inputs[0], "f") in "iub":
                settled.add(name)
    return frozenset(settled)


def _declared_kinds(module: NumpyModule) -> dict[str, str]:
    """Tensor name -> numpy kind of its element type, as the model's shape inference declares it."""
    from onnx import helper

    graph = module.onnx_model.graph
    kinds = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if vi.type.WhichOneof("value") == "tensor_type" and vi.type.tensor_type.elem_type:
            try:
                kinds[vi.name] = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).kind
            except (KeyError, TypeError):
                continue
    return kinds


def calibration_warnings(module: NumpyModule, inputs: Sequence[NDArray[Any]], n_samples: int | None,
                         ranges: dict[str, tuple[float, float]], config: QuantConfig,
                         has_weights: bool) -> list[str]:
    """Why a calibration is likely to give a useless quantized model; an empty list when nothing is wrong.

    Checks, on the model inputs (where the whole calibration set is at hand), when they hold
    several samples (``n_samples`` of 2 or more; inputs that are not a batch of samples, or a
    single sample, are one example rather than a calibration set, and are not judged):

    - an input constant over the samples (every value equal): its quantizer holds that value only;
    - an input range dominated by outliers: wider than ``OUTLIER_RANGE_RATIO`` times the spread
      of the central 98% of its values (percentiles 1 and 99, taken as sample values), and so
      wide that those central values share fewer than ``OUTLIER_MIN_LEVELS`` integer levels.
      Not judged: inputs with fewer than ``OUTLIER_MIN_VALUES`` values, and inputs whose central
      values are all equal (mostly zeros, say), where nothing tells outliers from a rare signal;

    on any model input: 1-bit inputs for data taking more than two values;

    and on the settings: 1-bit activations (two levels per intermediate), 1-bit weights (a
    signed symmetric 1-bit weight can only be zero).
    """
    messages = []
    if config.op_inputs == 1:
        messages.append(
            "n_bits gives intermediate values 1 bit ('op_inputs'): every requantized tensor keeps two levels, "
            "which rarely leaves a model better than chance; use 3 bits or more (4 to 8 are usual)"
        )
    if config.op_weights == 1 and has_weights:
        messages.append(
            "n_bits gives weights 1 bit ('op_weights'): a signed symmetric 1-bit weight can only be 0, so every "
            "weight quantizes to zero and the outputs ignore the inputs; use 2 bits or more (4 to 8 are usual)"
        )
    for spec, arr in zip(module.inputs, inputs):
        if spec.name not in ranges:
            continue
        low, high = ranges[spec.name]
        a_set = (n_samples or 0) > 1
        if low == high and a_set:
            messages.append(
                f"input {spec.name!r} is constant over the calibration data (every value is {low:.6g}): its "
                "quantizer represents that value only, so every other input saturates to it; calibrate on "
                "representative data"
            )
        if low == high:
            continue
        if config.model_inputs == 1 and np.any((arr != low) & (arr != high)):
            messages.append(
                f"input {spec.name!r} is quantized to 1 bit ('model_inputs') but its calibration data takes more "
                f"than two values in [{low:.6g}, {high:.6g}]: each becomes one of the two ends; use more bits"
            )
        if not a_set or arr.dtype.kind == "b" or arr.size < OUTLIER_MIN_VALUES:
            continue
        p_low, p_high = (float(p) for p in np.percentile(arr, CENTRAL_PERCENTILES, method="inverted_cdf"))
        spread, width = p_high - p_low, high - low
        steps = 2**config.model_inputs - 1
        if spread > 0 and width > OUTLIER_RANGE_RATIO * spread and spread / width * steps < OUTLIER_MIN_LEVELS:
            messages.append(
                f"input {spec.name!r}: its calibration range [{low:.6g}, {high:.6g}] is {width / spread:.3g} times "
                f"wider than the central 98% of its values, [{p_low:.6g}, {p_high:.6g}], which share "
                f"{_levels(spread / width * steps)} of the {steps + 1} levels of {config.model_inputs}-bit inputs: a few "
                "outliers dominate the range. Remove or clip them in the calibration data (or scale the input)"
            )
    return messages


def _levels(value: float) -> str:
    return "less than one" if value < 1 else f"about {math.floor(value)}"
