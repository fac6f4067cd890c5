"""State shared by the quantized ops during one pass of the integer forward."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import QuantizationError
from . import backend
from .quantizers import MAX_BITS, InputQuantizer, UniformQuantizer
from .values import QValue

MAX_LOOKUP_BITS = 16


def bits_for_range(low: int, high: int) -> int:
    """Bits of the smallest integer type (signed when ``low < 0``) holding [low, high]."""
    low, high = int(low), int(high)
    if low >= 0:
        return max(1, int(high).bit_length())
    return max((-low - 1).bit_length(), high.bit_length() if high > 0 else 0) + 1


def centring_offset(low: int, high: int, rounding_bits: int | None) -> int:
    """A constant that centres ``[low, high]`` on zero, a multiple of the rounding step.

    Keeping it a multiple of the step leaves the rounding grid where it was (zero stays a grid
    point, so a ReLU's kink stays exact).
    """
    centre = -((low + high + 1) // 2)  # [-ceil(w/2), floor(w/2)]: the fewest signed bits for width w
    if rounding_bits is None:
        return centre
    step = 1 << max(0, bits_for_range(low + centre, high + centre) - rounding_bits)
    return int(round(centre / step)) * step


@dataclass
class QuantConfig:
    """Bit widths and rounding of a quantization."""

    model_inputs: int
    op_inputs: int
    op_weights: int
    model_outputs: int
    rounding_bits: int | None = None
    rounding_exact: bool = True
    rounding_per_lookup: dict[str, int | None] = field(default_factory=dict)  # lookup key -> bits, overrides


@dataclass
class LookupSite:
    """A table lookup of the integer forward, with what calibration saw at its input."""

    node: str  # the ONNX node whose output the lookup produces
    op_type: str
    tensor: str
    low: int  # integer range at the lookup input, before rounding
    high: int
    lsbs_removed: int = 0
    rounded_low: int = 0
    rounded_high: int = 0
    packed_bits: int | None = None  # multi-input lookups: total bits of the packed inputs
    offset: int = 0  # added to the input before rounding (centres the range), taken back by the table
    #: a lookup whose every input bit counts (an encrypted product's squares, two operands packed in one
    #: integer): never rounded
    exact: bool = False

    @property
    def roundable(self) -> bool:
        """Whether rounding may be set before this lookup (a one-input lookup outside exact arithmetic)."""
        return self.packed_bits is None and not self.exact

    @property
    def input_bits(self) -> int:
        if self.packed_bits is not None:
            return self.packed_bits
        return bits_for_range(self.low + self.offset, self.high + self.offset)

    @property
    def encrypted_bits(self) -> int:
        """Bits concrete-python gives the lookup's input: unrounded, also those of the integers before the centring
        constant (adding a constant leaves an encrypted value's bit width as it was: an accumulator of 17 bits
        centred to 16 still makes a 17-bit lookup)."""
        if self.packed_bits is not None or self.lsbs_removed:
            return self.lookup_bits
        return max(self.lookup_bits, bits_for_range(self.low, self.high))

    @property
    def lookup_bits(self) -> int:
        """Bits the lookup itself runs on (after rounding away ``lsbs_removed`` bits)."""
        if not self.lsbs_removed:
            return self.input_bits
        return bits_for_range(self.rounded_low, self.rounded_high) - self.lsbs_removed


@dataclass
class AccumulatorRecord:
    """Integer range of a linear op's accumulator seen in calibration."""

    node: str
    op_type: str
    low: int
    high: int

    @property
    def bits(self) -> int:
        return bits_for_range(self.low, self.high)


class PendingRange(BaseException):
    """A calibration parameter's range is not known over every chunk yet: the node stops here.

    A ``BaseException``, so that an op's own ``except Exception`` cannot swallow it; the integer
    calibration pass catches it and skips the rest of the node and everything that depends on it.
    """


@dataclass
class _LookupRecord:
    node: str
    op_type: str
    tensor: str
    ranges: list[list[int]]  # [low, high] per input (several for a multi-input lookup)
    rounding_bits: int | None = None
    rounded: list[int] | None = None  # [low, high] after rounding (rounded lookups only)
    multi: bool = False
    exact: bool = False


class IntegerCalibration:
    """What one calibration of the integer program sees, chunk after chunk, pass after pass.

    Two kinds of calibration results:

    - *parameters* (``settled_range``): ranges that fix how later values are computed, such as a
      quantizer an op fits on an intermediate, or the input range that decides a rounded lookup's
      rounding. They must be taken over the whole calibration set before anything after them can
      be computed. With one chunk, a parameter is settled the moment it is reached. With several,
      the pass records the parameter's range on each chunk and raises ``PendingRange`` (the node
      stops, its dependents are skipped); ``end_pass`` settles what every chunk reached, and the
      next pass goes further.
    - *records*: lookup and accumulator ranges, which change nothing downstream; kept as running
      minimum and maximum over the chunks of a pass, complete once a pass reaches no unsettled
      parameter.

    The outcome equals a one-chunk calibration exactly: each parameter is fitted on every sample
    with every parameter before it already settled.
    """

    def __init__(self, n_chunks: int = 1) -> None:
        self.n_chunks = n_chunks
        self.settled: dict[str, tuple[float, float]] = {}
        self.passes = 0
        self._pending: dict[str, list[float]] = {}  # key -> [low, high, chunks that reached it]
        self._lookups: dict[str, _LookupRecord] = {}
        self._accumulators: dict[str, AccumulatorRecord] = {}

    def start_pass(self) -> None:
        """Forget the records of the previous pass (parameters settled so far are kept)."""
        self.passes += 1
        self._pending.clear()
        self._lookups.clear()
        self._accumulators.clear()

    def end_pass(self) -> bool:
        """Settle the parameters every chunk of this pass reached.

        Returns:
            ``True`` when the pass reached no unsettled parameter: its records are complete.

        Raises:
            QuantizationError: parameters were reached on some chunks only, so no pass can
                settle them (an op whose calibration path depends on the data).
        """
        if not self._pending:
            return True
        complete = {k: (v[0], v[1]) for k, v in self._pending.items() if v[2] == self.n_chunks}
        if not complete:
            raise QuantizationError(
                f"calibration cannot settle {sorted(self._pending)}: they were reached on some chunks of "
                "the calibration data only; quantize with calibration_chunk_size at least the number of samples"
            )
        self.settled.update(complete)
        return False

    def settled_range(self, key: str, low: float, high: float) -> tuple[float, float]:
        """The range of parameter ``key`` over the whole calibration set, given its range on this chunk.

        Returns:
            (low, high); ``low > high`` when no chunk had a value (an empty range).

        Raises:
            PendingRange: several chunks and the whole range is not known yet.
        """
        known = self.settled.get(key)
        if known is not None:
            return known
        if self.n_chunks == 1:
            self.settled[key] = (low, high)
            return low, high
        seen = self._pending.setdefault(key, [math.inf, -math.inf, 0])
        seen[0], seen[1], seen[2] = min(seen[0], low), max(seen[1], high), seen[2] + 1
        raise PendingRange(key)

    def settled_total(self, key: str, amount: float) -> float:
        """The sum of ``amount`` over the whole calibration set, given its sum on this chunk (a parameter
        settled like ``settled_range``'s, and raising ``PendingRange`` the same way)."""
        known = self.settled.get(key)
        if known is not None:
            return known[0]
        if self.n_chunks == 1:
            self.settled[key] = (amount, amount)
            return amount
        seen = self._pending.setdefault(key, [0.0, 0.0, 0])
        seen[0], seen[1], seen[2] = seen[0] + amount, seen[1] + amount, seen[2] + 1
        raise PendingRange(key)

    def record_lookup(self, key: str, node: str, op_type: str, tensor: str, low: int, high: int,
                      rounding_bits: int | None, rounded: tuple[int, int] | None = None, exact: bool = False) -> None:
        """Add one chunk's integer range at a lookup input (and after rounding, if rounded); ``exact``: a
        lookup that is never rounded (see ``LookupSite.exact``)."""
        record = self._lookups.get(key)
        if record is None:
            record = self._lookups[key] = _LookupRecord(node, op_type, tensor, [[low, high]], rounding_bits,
                                                        exact=exact)
        else:
            _widen(record.ranges[0], low, high)
        if rounded is not None:
            if record.rounded is None:
                record.rounded = list(rounded)
            else:
                _widen(record.rounded, *rounded)

    def record_multi_lookup(self, key: str, node: str, op_type: str, ranges: list[tuple[int, int]]) -> None:
        """Add one chunk's integer ranges of the packed inputs of a multi-input lookup."""
        record = self._lookups.get(key)
        if record is None:
            self._lookups[key] = _LookupRecord(node, op_type, key, [[lo, hi] for lo, hi in ranges], multi=True)
            return
        for span, (lo, hi) in zip(record.ranges, ranges):
            _widen(span, lo, hi)

    def record_accumulator(self, node: str, op_type: str, low: int, high: int) -> None:
        """Add one chunk's accumulator range of ``node``."""
        record = self._accumulators.get(node)
        if record is None:
            self._accumulators[node] = AccumulatorRecord(node, op_type, low, high)
        else:
            record.low, record.high = min(record.low, low), max(record.high, high)

    def sites(self) -> dict[str, LookupSite]:
        """The lookups recorded by the last pass, with their centring and rounding."""
        sites = {}
        for key, r in self._lookups.items():
            low, high = min(s[0] for s in r.ranges), max(s[1] for s in r.ranges)
            if r.multi:
                packed = sum(bits_for_range(lo, hi) for lo, hi in r.ranges)
                sites[key] = LookupSite(r.node, r.op_type, r.tensor, low, high, packed_bits=packed)
                continue
            site = LookupSite(r.node, r.op_type, r.tensor, low, high, exact=r.exact)
            site.offset = centring_offset(low, high, r.rounding_bits)
            if r.rounding_bits is None:
                site.rounded_low, site.rounded_high = low + site.offset, high + site.offset
            else:
                assert r.rounded is not None
                site.lsbs_removed = max(0, site.input_bits - r.rounding_bits)
                site.rounded_low, site.rounded_high = r.rounded
            sites[key] = site
        return sites

    def accumulators(self) -> dict[str, AccumulatorRecord]:
        """The accumulator ranges recorded by the last pass, by node."""
        return dict(self._accumulators)


def _widen(span: list[int], low: int, high: int) -> None:
    span[0], span[1] = min(span[0], low), max(span[1], high)


def _maps_onto_itself(value: QValue, given: InputQuantizer, wanted: UniformQuantizer) -> bool:
    """Whether requantizing ``value`` (whose integers are a model input's, quantized by ``given``)
    to ``wanted`` leaves every integer as it is: same grid, and a mapping that keeps each code."""
    if not value.uniform or not isinstance(given, UniformQuantizer) or (given.scale, given.zero_point, given.q_min, given.q_max) != (
            wanted.scale, wanted.zero_point, wanted.q_min, wanted.q_max):
        return False
    codes = np.arange(given.q_min, given.q_max + 1, dtype=np.int64)
    assert value.to_float is not None
    with np.errstate(all="ignore"):
        mapped = wanted.quant(np.asarray(value.to_float(codes), dtype=np.float64))
    return bool(np.array_equal(mapped, codes))


@dataclass
class QuantContext:
    """One pass of the integer forward: calibrating (records ranges) or running (uses them)."""

    config: QuantConfig
    float_ranges: dict[str, tuple[float, float]]
    producers: dict[str, tuple[str, str]]  # tensor -> (node name, op type)
    sites: dict[str, LookupSite]
    accumulators: dict[str, AccumulatorRecord]
    calibrating: bool
    node_name: str = ""
    op_type: str = ""
    calibration: IntegerCalibration | None = None  # what calibration records (one chunk when not given)
    #: quantizers the graph states for tensors (declared by the ops producing them, see ``state_quantizer``)
    stated: dict[str, UniformQuantizer] = field(default_factory=dict)
    #: stated tensors whose op is their quantizer applied to its float input (see ``state_quantizer``)
    rounding_stated: set[str] = field(default_factory=set)
    #: folded constants the graph states as integers: tensor -> (integers, scale), see ``LinearOp.weights``
    stated_constants: dict[str, tuple[NDArray[Any], float]] = field(default_factory=dict)
    #: the model inputs of this pass: id of their integer data -> (input name, its quantizer)
    inputs: dict[int, tuple[str, InputQuantizer]] = field(default_factory=dict)
    #: tensors whose calibration values are all whole numbers (see ``quantizer_for``)
    whole_numbers: frozenset[str] = frozenset()
    #: tensors holding masking values beside their data: tensor -> the lowest masking value seen
    floors: dict[str, float] = field(default_factory=dict)
    #: whole-number tensors read as indices into constant tables (a tree walk's node index): quantized
    #: exactly on the bits their range needs, up to ``MAX_LOOKUP_BITS``, whatever ``op_inputs``
    index_tensors: frozenset[str] = frozenset()
    #: per model input, the quantizers of what requantized its integers (None: used as they are)
    input_reads: dict[str, set[UniformQuantizer | None]] = field(default_factory=dict)
    #: per model input quantized per feature, the nodes that requantized its codes to one grid (a lookup)
    input_regrids: dict[str, set[str]] = field(default_factory=dict)
    _materialized: dict[str, QValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.calibrating and self.calibration is None:
            self.calibration = IntegerCalibration()

    @property
    def where(self) -> str:
        return f"node {self.node_name!r} ({self.op_type})"

    def calibrated_range(self, key: str, low: float, high: float) -> tuple[float, float]:
        """The range of calibration parameter ``key`` over the whole calibration set, given its range
        (``low``, ``high``) on the current chunk; see ``IntegerCalibration.settled_range``.

        Raises:
            PendingRange: not known over every chunk yet (let it propagate: the node stops here).
        """
        assert self.calibration is not None, "calibrated_range is for calibration passes"
        return self.calibration.settled_range(key, low, high)

    def calibrated_errors(self, key: str, errors: dict[Any, Any]) -> dict[Any, tuple[float, float]]:
        """The largest and the mean absolute value of each array of ``errors`` over the whole calibration set
        (``key`` names them; see ``calibrated_range``). Each is recorded on this pass before a pending one
        raises ``PendingRange``."""
        settled, pending = {}, None
        for name, error in errors.items():
            magnitudes = np.abs(np.asarray(error, np.float64))
            figures = []
            for what, amount in (("largest", float(np.max(magnitudes, initial=0.0))),
                                 ("total", float(np.sum(magnitudes))), ("count", float(magnitudes.size))):
                try:
                    if what == "largest":
                        figures.append(self.calibrated_range(f"{key}:{name} {what}", 0.0, amount)[1])
                    else:
                        figures.append(self.calibrated_total(f"{key}:{name} {what}", amount))
                except PendingRange as exc:
                    pending = exc
            if pending is None:
                settled[name] = (figures[0], figures[1] / max(figures[2], 1.0))
        if pending is not None:
            raise pending
        return settled

    def calibrated_total(self, key: str, amount: float) -> float:
        """The sum of calibration parameter ``key`` over the whole calibration set, given its sum on the current
        chunk; see ``IntegerCalibration.settled_total``."""
        assert self.calibration is not None, "calibrated_total is for calibration passes"
        return self.calibration.settled_total(key, amount)

    def release(self, tensor: str) -> None:
        """Drop what this pass keeps for ``tensor`` (its shared requantization) once nothing needs it."""
        self._materialized.pop(tensor, None)

    def state_quantizer(self, tensor: str, quantizer: UniformQuantizer, rounds: bool = False) -> None:
        """Declare that the graph itself quantizes ``tensor`` with ``quantizer`` (a DequantizeLinear
        after a QuantizeLinear, a QONNX ``Quant``): its integers are the graph's, whatever ``n_bits``.
        Called by the op producing ``tensor`` on every pass, before anything reads it. ``rounds``: the op
        is that quantizer applied to its float input, so a model input it reads may take the quantizer."""
        self.stated[tensor] = quantizer
        if rounds:
            self.rounding_stated.add(tensor)

    def quantizer_for(self, tensor: str, n_bits: int | None = None) -> UniformQuantizer:
        """The quantizer the graph states for ``tensor``, else an unsigned one for its calibrated float
        range (``n_bits``, default ``op_inputs``): exact (scale 1) when every calibration value is a
        whole number and the range fits, fitted to the range otherwise; masking (one bit more) when the
        tensor holds masking values beside its data (an attention mask's -inf)."""
        if tensor in self.stated:
            return self.stated[tensor]
        if tensor not in self.float_ranges:
            raise QuantizationError(f"{self.where}: no calibration statistics for tensor {tensor!r}")
        low, high = self.float_ranges[tensor]
        bits = n_bits or self.config.op_inputs
        if tensor in self.floors:
            return UniformQuantizer.masking(low, high, min(bits, MAX_BITS - 1), self.floors[tensor])
        exact = None
        if tensor in self.whole_numbers:
            allowed = max(bits, MAX_LOOKUP_BITS) if tensor in self.index_tensors else bits
            exact = UniformQuantizer.for_whole_numbers(low, high, allowed)
        return exact or UniformQuantizer.fit(low, high, bits)

    def requantize(self, value: QValue, n_bits: int | None = None) -> QValue:
        """``value`` as small affine integers (``op_inputs`` bits), applying one lookup if needed.

        Values already affine (model inputs, earlier requantizations) are returned unchanged; the
        lookup of a tensor is shared by every op that needs it.
        """
        if value.is_constant:
            raise QuantizationError(f"{self.where}: a constant has no quantized integers")
        source = self.inputs.get(id(value.data))
        if value.is_affine:
            if source is not None:
                self.input_reads.setdefault(source[0], set()).add(None)
            return value
        if source is not None and value.is_per_feature:
            self.input_regrids.setdefault(source[0], set()).add(self.node_name)
        key = value.name
        if key in self._materialized:
            return self._materialized[key]
        quantizer = self.quantizer_for(value.name, n_bits)
        to_float = value.to_float
        assert to_float is not None
        if source is not None:
            self.input_reads.setdefault(source[0], set()).add(quantizer if value.name in self.rounding_stated else None)
            if _maps_onto_itself(value, source[1], quantizer):
                # a model input already on the grid the graph states (its first QuantizeLinear or Quant): no lookup
                out = QValue.quantized(value.data, quantizer, value.name)
                self._materialized[key] = out
                return out

        def table(q: NDArray[Any]) -> NDArray[Any]:
            return quantizer.quant(to_float(q))

        data = self.lookup(value, table)
        out = QValue.quantized(data, quantizer, value.name)
        self._materialized[key] = out
        return out

    def read_per_feature(self, value: QValue) -> QValue:
        """``value``, a per-feature input, read as it is by an op that folds its scales and zero points
        (into weights, or into thresholds on each feature's grid): no lookup."""
        assert value.is_per_feature
        source = self.inputs.get(id(value.data))
        if source is not None:
            self.input_reads.setdefault(source[0], set()).add(None)
        return value

    def requantize_to(self, value: QValue, quantizer: UniformQuantizer, key: str) -> Any:
        """Integers of ``value`` under ``quantizer`` (one lookup, recorded under ``key``)."""
        to_float = value.to_float
        assert to_float is not None

        def table(q: NDArray[Any]) -> NDArray[Any]:
            return quantizer.quant(to_float(q))

        return self.lookup(value, table, key=key)

    def lookup(self, value: QValue, table: Callable[[NDArray[Any]], NDArray[Any]], key: str | None = None,
               exact: bool = False) -> Any:
        """Apply ``table`` (int -> int, element-wise) to ``value.data`` as one lookup.

        The calibrated input range is first centred on zero by adding a constant (free on
        encrypted data; the table takes it back), so a lopsided range such as a ReLU input's
        needs no more bits than its width. The input is then rounded to ``rounding_bits`` when
        configured, unless ``exact`` (integers whose every bit counts, such as two operands packed
        into one: never rounded). Calibration records each lookup under ``key`` (default: the
        tensor's name); running reuses what was recorded.
        """
        key = key or value.name
        if hasattr(value.to_float, "row_scores"):  # a mapping of whole rows: no table of each integer computes it
            raise QuantizationError(
                f"{self.where} reads {value.name or 'a value'} on encrypted values, but that value is decoded by the "
                "client from whole rows of scores (a classifier's label, SOFTMAX probabilities): end the encrypted "
                "model at the scores, and compute what follows on the client")
        if self.calibrating:
            return self._calibrate_lookup(value, table, key, exact)
        site = self.sites[key]
        shifted = value.data + site.offset if site.offset else value.data
        rounded = backend.round_bits(shifted, site.lsbs_removed, self.config.rounding_exact)
        offset = site.offset
        if not offset:
            return backend.lookup(rounded, table)
        return backend.lookup(rounded, lambda q: table(q - offset))

    def _calibrate_lookup(self, value: QValue, table: Callable[[NDArray[Any]], NDArray[Any]], key: str,
                          exact: bool) -> Any:
        assert self.calibration is not None
        node, op_type = self.producers.get(key, (self.node_name, self.op_type))
        data = np.asarray(value.data)
        low, high = int(data.min()), int(data.max())
        bits = None if exact else self.config.rounding_per_lookup.get(key, self.config.rounding_bits)
        if bits is None:
            # the centring offset is taken back by the table: the result does not depend on it,
            # so it is derived from the whole range once recorded (see IntegerCalibration.sites)
            self.calibration.record_lookup(key, node, op_type, value.name, low, high, None, exact=exact)
            return backend.lookup(data, table)
        # rounding depends on the whole range: a parameter, settled before anything uses the result
        whole_low, whole_high = (int(v) for v in self.calibration.settled_range(f"lookup:{key}", low, high))
        offset = centring_offset(whole_low, whole_high, bits)
        lsbs = max(0, bits_for_range(whole_low + offset, whole_high + offset) - bits)
        rounded = backend.round_bits(data + offset, lsbs, self.config.rounding_exact)
        self.calibration.record_lookup(key, node, op_type, value.name, low, high, bits,
                                       (int(np.min(rounded)), int(np.max(rounded))))
        return backend.lookup(rounded, lambda q: table(q - offset))

    def encrypted_matmul(self, a: Any, b: Any, key: str) -> Any:
        """``a @ b`` of two encrypted integer tensors, exactly, whatever their signs.

        concrete-python's own product of two encrypted tensors (2.11) gives wrong results, in
        simulation and in execution alike, when one factor is signed and the other unsigned (softmax
        probabilities times centred values). This one is built from lookups only: each term ``a * b`` is
        ``floor((a + b)**2 / 4) - floor((a - b)**2 / 4)``, the same two lookups per term as concrete's,
        on sums and differences centred by a constant like any lookup's input. Calibration records both
        lookups (``key`` names them; never rounded); on clear integers the product is ``np.matmul``.
        """
        keys = (f"{key} (sums of factors)", f"{key} (differences of factors)")
        if self.calibrating:
            assert self.calibration is not None
            x, y = np.asarray(a), np.asarray(b)
            x = x[None, :] if x.ndim == 1 else x
            y = y[:, None] if y.ndim == 1 else y
            if not (x.size and y.size):
                return np.matmul(a, b)
            # per shared index k, the extremes of a[..., i, k] over i and of b[..., k, j] over j
            a_low, a_high, b_low, b_high = x.min(axis=-2), x.max(axis=-2), y.min(axis=-1), y.max(axis=-1)
            for name, low, high in ((keys[0], a_low + b_low, a_high + b_high),
                                    (keys[1], a_low - b_high, a_high - b_low)):
                self.calibration.record_lookup(name, self.node_name, self.op_type, name, int(np.min(low)),
                                               int(np.max(high)), None, exact=True)
        if not (backend.is_traced(a) or backend.is_traced(b)):
            return np.matmul(a, b)
        return backend.matmul_by_squares(a, b, self.sites[keys[0]].offset, self.sites[keys[1]].offset)

    def encrypted_multiply(self, a: Any, b: Any, key: str) -> Any:
        """``a * b`` element-wise (numpy's broadcasting) of two encrypted integer tensors, exactly, whatever
        their signs: ``floor((a + b)**2 / 4) - floor((a - b)**2 / 4)``, two lookups of ``key`` never rounded
        (see ``encrypted_matmul``)."""
        def squares(data: Any, kind: str) -> Any:
            name = f"{key} ({kind} of factors)"
            return self.lookup(QValue.lazy(data, lambda v: np.asarray(v, np.float64), True, name=name),
                               backend.quarter_square, key=name, exact=True)

        return squares(a + b, "sums") - squares(a - b, "differences")

    def record_multi_lookup(self, tensor: str, data: list[Any]) -> None:
        """Record a lookup on several packed integer inputs (calibration only)."""
        if self.calibrating:
            assert self.calibration is not None
            arrays = [np.asarray(d) for d in data]
            self.calibration.record_multi_lookup(tensor, self.node_name, self.op_type,
                                                 [(int(a.min()), int(a.max())) for a in arrays])

    def record_accumulator(self, data: Any) -> None:
        """Remember the integer range of the current node's accumulator (calibration only)."""
        if self.calibrating:
            assert self.calibration is not None
            arr = np.asarray(data)
            self.calibration.record_accumulator(self.node_name, self.op_type, int(arr.min()), int(arr.max()))
