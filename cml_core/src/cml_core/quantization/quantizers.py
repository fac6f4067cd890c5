"""Uniform affine quantization: float = scale * (q - zero_point)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import QuantizationError

MAX_BITS = 24
#: a float at or below minus this is a masking value (an attention mask's -inf or float32's lowest), not data
MASK_LEVEL = 1e30


def check_n_bits(n_bits: int, what: str = "n_bits") -> int:
    """Return ``n_bits`` if it is an int in [1, MAX_BITS]; raise ``QuantizationError`` otherwise."""
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)) or not 1 <= n_bits <= MAX_BITS:
        raise QuantizationError(f"{what} must be an integer between 1 and {MAX_BITS}, got {n_bits!r}")
    return int(n_bits)


@dataclass(frozen=True)
class UniformQuantizer:
    """Maps floats to ``n_bits`` integers and back.

    Unsigned values lie in [0, 2**n_bits - 1], signed ones in [-2**(n_bits-1), 2**(n_bits-1) - 1]
    (symmetric signed quantizers leave the most negative value unused).

    A *masking* quantizer (``floor`` set, see ``masking``) holds a tensor that carries masking values
    besides its data: its upper half of integers holds the data, its lower half stands for ``floor``.
    """

    n_bits: int
    scale: float
    zero_point: int
    is_signed: bool = False
    is_symmetric: bool = False
    #: the masking value the integers below ``first_value_code`` stand for (-inf, float32's lowest), if any
    floor: float | None = None

    @property
    def first_value_code(self) -> int:
        """The smallest integer that stands for data (``q_min`` unless the quantizer is masking)."""
        return self.q_min if self.floor is None else self.q_min + 2 ** (self.n_bits - 1)

    @property
    def q_min(self) -> int:
        if not self.is_signed:
            return 0
        return int(-(2 ** (self.n_bits - 1)) + (1 if self.is_symmetric else 0))

    @property
    def q_max(self) -> int:
        return int(2 ** (self.n_bits - 1) - 1 if self.is_signed else 2**self.n_bits - 1)

    @classmethod
    def fit(cls, low: float, high: float, n_bits: int, *, is_signed: bool = False, is_symmetric: bool = False) -> UniformQuantizer:
        """The quantizer covering the float range [low, high].

        A degenerate range (``low == high``, a constant tensor) is represented exactly by one
        integer value.

        Raises:
            QuantizationError: a bound is NaN or infinite, or ``n_bits`` is out of range.
        """
        check_n_bits(n_bits)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise QuantizationError(f"cannot quantize the range [{low}, {high}]: it is not finite")
        low, high = float(min(low, high)), float(max(low, high))
        if is_symmetric:
            bound = max(abs(low), abs(high))
            levels = 2 ** (n_bits - 1) - 1 if is_signed else 2**n_bits - 1
            if levels == 0:  # 1-bit signed symmetric: only zero is representable; widen to sign
                levels = 1
            scale = bound / levels if bound > 0 else 1.0
            zero_point = 0 if is_signed else 0
            if not is_signed and low < 0:
                raise QuantizationError("an unsigned symmetric quantizer cannot hold negative values")
            return cls(n_bits, scale, zero_point, is_signed, True)
        q_low = -(2 ** (n_bits - 1)) if is_signed else 0
        levels = 2**n_bits - 1
        span = high - low
        if span <= 0 or span < 1e-12 * max(abs(low), abs(high), 1e-30):
            # constant tensor: one level, exact
            scale = abs(low) if low != 0 else 1.0
            zero_point = q_low - int(round(low / scale))
            return cls(n_bits, scale, zero_point, is_signed, False)
        scale = span / levels
        zero_point = int(round(q_low - low / scale))
        return cls(n_bits, scale, zero_point, is_signed, False)

    @classmethod
    def for_whole_numbers(cls, low: float, high: float, n_bits: int) -> UniformQuantizer | None:
        """The exact quantizer of a tensor whose values are whole numbers in [low, high]: scale 1, each
        value its own integer, as few bits as the span needs; ``None`` when the span needs more than
        ``n_bits`` (the tensor is then fitted like any other).

        Booleans, counts and indices computed inside a model stay exact this way: a comparison
        feeding a matrix product, or a path count compared for equality, keeps its values."""
        check_n_bits(n_bits)
        span = int(high) - int(low)
        if low != int(low) or high != int(high) or span >= 2**n_bits:
            return None
        return cls(max(1, span.bit_length()), 1.0, -int(low), False, False)

    @classmethod
    def masking(cls, low: float, high: float, n_bits: int, floor: float) -> UniformQuantizer:
        """The quantizer of a tensor whose data lies in [low, high] beside masking values (at or below
        ``-MASK_LEVEL``, ``floor`` the lowest seen): the data keeps ``n_bits`` integers, the masking
        values one more bit below them, all of which stand for ``floor`` (a data range of one value
        takes one integer, so a 0-or-masked tensor is 1 bit).

        An attention mask adds float32's lowest value (or -inf) to the scores: fitted as one range, the
        scores would be left a few integers of it. Here they keep their resolution, every masked score
        lies below every unmasked one by more than the data's span in integers, and a lookup reads a
        masked integer as ``floor`` itself, as the float model computes with it.
        """
        check_n_bits(n_bits + 1)
        data = cls.fit(low, high, n_bits)
        span = high - low
        if span <= 0 or span < 1e-12 * max(abs(low), abs(high), 1e-30):  # one value: integer 1, above the masking 0
            return cls(1, data.scale, data.zero_point + 1, floor=float(floor))
        return cls(n_bits + 1, data.scale, data.zero_point + 2**n_bits, floor=float(floor))

    def quant(self, values: Any) -> NDArray[Any]:
        """Integers (int64) representing ``values``, clipped to the quantizer's range (a masking
        quantizer clips data to its data integers and maps masking values to ``q_min``)."""
        arr = np.asarray(values, dtype=np.float64)
        q = np.rint(arr / self.scale) + self.zero_point
        if self.floor is None:
            return np.clip(q, self.q_min, self.q_max).astype(np.int64)  # type: ignore[no-any-return]
        with np.errstate(invalid="ignore"):
            q = np.where(arr <= -MASK_LEVEL, self.q_min, np.clip(q, self.first_value_code, self.q_max))
        return q.astype(np.int64)

    def quant_counting(self, values: Any) -> tuple[NDArray[Any], int]:
        """``quant(values)`` and how many values were saturated: more than half a step beyond the
        representable range, so that clipping, not rounding, decided their integer.

        A value at most half a step beyond it errs no more than rounding does and does not count
        (the ends of the calibration range can lie there: the zero point is rounded).
        """
        arr = np.asarray(values, dtype=np.float64)
        steps = arr / self.scale  # as in quant: zero point added after rounding
        slack = 0.5 + 1e-9  # half a step, and float rounding of the division
        low, high = self.first_value_code - self.zero_point - slack, self.q_max - self.zero_point + slack
        outside = (steps < low) | (steps > high)
        if self.floor is not None:
            outside &= arr > -MASK_LEVEL  # a masking value is not saturated data
        return self.quant(arr), int(np.count_nonzero(outside))

    def dequant(self, qvalues: Any) -> NDArray[Any]:
        """Floats (float64) that ``qvalues`` represent."""
        q = np.asarray(qvalues, dtype=np.float64)
        floats = self.scale * (q - self.zero_point)
        return floats if self.floor is None else np.where(q < self.first_value_code, self.floor, floats)


class QuantizedArray:
    """Floats held as ``n_bits`` integers with their scale and zero point.

    ``QuantizedArray(n_bits, values)`` quantizes ``values`` over their own range;
    ``QuantizedArray.from_integers(n_bits, qvalues, scale, zero_point)`` wraps integers whose
    quantization parameters are already known (e.g. from calibration).
    """

    def __init__(self, n_bits: int, values: Any, is_signed: bool = False, is_symmetric: bool = False) -> None:
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            raise QuantizationError("cannot quantize an empty array")
        if not np.all(np.isfinite(arr)):
            raise QuantizationError("cannot quantize values containing NaN or infinity")
        if is_symmetric and not is_signed and arr.min() < 0:
            raise QuantizationError("negative values need is_signed=True with is_symmetric=True")
        self.quantizer = UniformQuantizer.fit(float(arr.min()), float(arr.max()), n_bits,
                                              is_signed=is_signed, is_symmetric=is_symmetric)
        self.values = arr
        self.qvalues = self.quantizer.quant(arr)

    @classmethod
    def from_integers(cls, n_bits: int, qvalues: Any, scale: float, zero_point: int,
                      is_signed: bool = False, is_symmetric: bool = False) -> QuantizedArray:
        """A QuantizedArray from integers and known quantization parameters."""
        obj = cls.__new__(cls)
        obj.quantizer = UniformQuantizer(check_n_bits(n_bits), float(scale), int(zero_point), is_signed, is_symmetric)
        obj.qvalues = np.asarray(qvalues, dtype=np.int64)
        if obj.qvalues.size and (obj.qvalues.min() < obj.quantizer.q_min or obj.qvalues.max() > obj.quantizer.q_max):
            raise QuantizationError(
                f"integers outside [{obj.quantizer.q_min}, {obj.quantizer.q_max}] for {n_bits}-bit values"
            )
        obj.values = obj.quantizer.dequant(obj.qvalues)
        return obj

    n_bits = property(lambda self: self.quantizer.n_bits)
    scale = property(lambda self: self.quantizer.scale)
    zero_point = property(lambda self: self.quantizer.zero_point)
    is_signed = property(lambda self: self.quantizer.is_signed)
    is_symmetric = property(lambda self: self.quantizer.is_symmetric)

    def quant(self) -> NDArray[Any]:
        """Re-quantize ``values`` (after they were updated) and return the integers."""
        self.qvalues = self.quantizer.quant(self.values)
        return self.qvalues

    def dequant(self) -> NDArray[Any]:
        """Floats the integers represent (and store them in ``values``)."""
        self.values = self.quantizer.dequant(self.qvalues)
        return self.values

    def update_values(self, values: Any) -> NDArray[Any]:
        """Set new float values, keeping the quantization parameters; returns the integers."""
        self.values = np.asarray(values, dtype=np.float64)
        return self.quant()

    def update_quantized_values(self, qvalues: Any) -> NDArray[Any]:
        """Set new integers, keeping the quantization parameters; returns the floats."""
        self.qvalues = np.asarray(qvalues, dtype=np.int64)
        return self.dequant()

    def __repr__(self) -> str:
        return (f"QuantizedArray(n_bits={self.n_bits}, scale={self.scale:.6g}, zero_point={self.zero_point}, "
                f"shape={self.qvalues.shape})")


class _UnsignedRange:
    """Unsigned ``n_bits`` integers: the range [0, 2**n_bits - 1] of the quantizers with arrays of
    parameters (per feature, per row)."""

    n_bits: int

    @property
    def q_min(self) -> int:
        return 0

    @property
    def q_max(self) -> int:
        return int(2**self.n_bits - 1)


class _FeatureAxis(_UnsignedRange):
    """What the per-feature input quantizers share: unsigned ``n_bits`` integers, features along the last
    axis (``n_features`` of them)."""

    @property
    def n_features(self) -> int:
        raise NotImplementedError

    def _check_features(self, values: NDArray[Any]) -> None:
        if values.ndim == 0 or values.shape[-1] != self.n_features:
            raise QuantizationError(f"a per-feature quantizer of {self.n_features} features (the last axis) got "
                                    f"values of shape {values.shape}")


@dataclass(frozen=True)
class PerFeatureQuantizer(_FeatureAxis):
    """Maps floats to ``n_bits`` unsigned integers with one scale and zero point per feature, the
    last axis: ``float[..., j] = scales[j] * (q[..., j] - zero_points[j])``.

    A model input whose columns have very different ranges (tabular data) keeps every column's
    resolution this way, where one quantizer for the whole tensor would give a narrow column a
    handful of codes. The parameters are tuples, so quantizers compare and hash like
    ``UniformQuantizer``.
    """

    n_bits: int
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    is_signed: bool = False
    is_symmetric: bool = False

    @property
    def n_features(self) -> int:
        return len(self.scales)

    @property
    def scale_array(self) -> NDArray[np.float64]:
        return np.asarray(self.scales, dtype=np.float64)

    @property
    def zero_point_array(self) -> NDArray[np.int64]:
        return np.asarray(self.zero_points, dtype=np.int64)

    @classmethod
    def fit(cls, lows: Any, highs: Any, n_bits: int, whole_numbers: Any = None) -> PerFeatureQuantizer:
        """The quantizer covering each feature's range [lows[j], highs[j]].

        A feature whose ``whole_numbers[j]`` is true and whose span fits ``n_bits`` gets scale 1
        (each value its own integer); a constant feature is represented exactly by one integer: a
        constant ``c`` as an end of the range from 0 to ``c``, a constant 0 on the median grid of the
        features that vary (so that no scale of its own dwarfs theirs where a product folds them in).

        Raises:
            QuantizationError: a bound is NaN or infinite, or ``n_bits`` is out of range.
        """
        check_n_bits(n_bits)
        lows, highs = np.asarray(lows, dtype=np.float64).ravel(), np.asarray(highs, dtype=np.float64).ravel()
        whole = np.zeros(lows.shape, dtype=bool) if whole_numbers is None else np.asarray(whole_numbers, bool).ravel()
        scales, zero_points = [], []
        constant = highs <= lows
        for low, high, exact, fixed in zip(lows, highs, whole, constant):
            if fixed and low != 0:  # the range from 0 to the value: the value is its top (or bottom) code
                low, high = min(low, 0.0), max(high, 0.0)
            column = UniformQuantizer.for_whole_numbers(low, high, n_bits) if exact and not fixed else None
            column = column or UniformQuantizer.fit(float(low), float(high), n_bits)
            scales.append(float(column.scale))
            zero_points.append(int(column.zero_point))
        varying = [i for i, fixed in enumerate(constant) if not fixed]
        if varying:
            # a feature constant at 0 in calibration is 0 on any grid: it takes the other features' typical
            # grid. With a scale of its own (1), a product folding the features' scales into its weights
            # would give its column weights thousands of times the others' and leave those a few integers
            # (a logistic regression on digits, whose corner pixels are always 0, lost 2 points at 12 bits)
            typical = float(np.median([scales[i] for i in varying]))
            zero = int(np.median([zero_points[i] for i in varying]))
            for i in np.flatnonzero(constant & (lows == 0)):
                scales[i], zero_points[i] = typical, zero
        return cls(n_bits, tuple(scales), tuple(zero_points))

    def quant(self, values: Any) -> NDArray[Any]:
        """Integers (int64) representing ``values`` (features along the last axis), clipped to the range."""
        return self.quant_counting(values)[0]

    def quant_counting(self, values: Any) -> tuple[NDArray[Any], int]:
        """``quant(values)`` and how many values were saturated (see ``UniformQuantizer.quant_counting``)."""
        arr = np.asarray(values, dtype=np.float64)
        self._check_features(arr)
        steps = arr / self.scale_array
        zero_points = self.zero_point_array
        slack = 0.5 + 1e-9
        outside = int(np.count_nonzero((steps < self.q_min - zero_points - slack)
                                       | (steps > self.q_max - zero_points + slack)))
        integers: NDArray[Any] = np.clip(np.rint(steps) + zero_points, self.q_min, self.q_max).astype(np.int64)
        return integers, outside

    def dequant(self, qvalues: Any) -> NDArray[Any]:
        """Floats (float64) that ``qvalues`` (features along the last axis) represent."""
        return self.scale_array * (np.asarray(qvalues, dtype=np.float64) - self.zero_point_array)

    def dequant_features(self, codes: Any, features: Any) -> NDArray[Any]:
        """Floats of ``codes`` where ``codes[...]`` is an integer of feature ``features[...]`` (broadcast)."""
        f = np.asarray(features, dtype=np.int64)
        return self.scale_array[f] * (np.asarray(codes, dtype=np.float64) - self.zero_point_array[f])


@dataclass(frozen=True)
class DecisionQuantizer(_FeatureAxis):
    """Per feature (last axis), integers that count the decision thresholds a value passes.

    A model input read only by ops that decide on which side of thresholds each value lies (tree
    ensembles, comparisons with constants) needs nothing else: the integer of a value is the number of
    its feature's thresholds it passes, so every decision is taken exactly as on the float, with as few
    bits as the thresholds need. ``thresholds[j]`` are feature ``j``'s thresholds in increasing order
    and ``inclusive[j]`` says whether a value equal to the threshold passes it (``x >= t``, a strict
    comparison ``x < t`` decides there) or not (``x > t``, for ``x <= t``). ``representatives[j][c]``
    is a float of the values integer ``c`` stands for (one that decides every comparison as they do).
    """

    n_bits: int
    thresholds: tuple[tuple[float, ...], ...]
    inclusive: tuple[tuple[bool, ...], ...]
    representatives: tuple[tuple[float, ...], ...]
    is_signed: bool = False
    is_symmetric: bool = False

    @property
    def n_features(self) -> int:
        return len(self.thresholds)

    @property
    def zero_point_array(self) -> NDArray[np.int64]:
        """Per feature, the integer a sample of zeros gets (what an empty sample is filled with)."""
        return np.asarray(self.quant(np.zeros((1, self.n_features)))[0], dtype=np.int64)

    @classmethod
    def fit(cls, cuts: list[list[tuple[float, bool]]], data: Any, n_bits: int) -> DecisionQuantizer:
        """The quantizer telling apart every cut ``(threshold, inclusive)`` of each feature (``cuts[j]``)
        when a feature has at most ``2**n_bits - 1`` distinct cuts. A feature with more keeps the
        ``2**n_bits - 1`` cuts that misplace the fewest calibration samples ``data`` (samples, features):
        adjacent intervals are merged while the merge moves the fewest samples onto another interval's
        representative. The integers take as many bits as the feature with most cuts needs (at least 1).

        Raises:
            QuantizationError: ``n_bits`` out of range, or ``data`` not (samples, len(cuts)).
        """
        check_n_bits(n_bits)
        arr = np.asarray(data, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(cuts):
            raise QuantizationError(f"decision cuts for {len(cuts)} features, calibration data of shape {arr.shape}")
        thresholds, inclusive, representatives = [], [], []
        for j, feature_cuts in enumerate(cuts):
            # a value equal to t passes the inclusive cut at t before the strict one
            ordered = sorted(set((float(t), bool(inc)) for t, inc in feature_cuts), key=lambda c: (c[0], not c[1]))
            column = arr[:, j]
            reps = [_representative(column, ordered, c) for c in range(len(ordered) + 1)]
            if len(ordered) > 2**n_bits - 1:
                ordered, reps = _merged_cuts(column, ordered, reps, 2**n_bits - 1)
            thresholds.append(tuple(t for t, _ in ordered))
            inclusive.append(tuple(inc for _, inc in ordered))
            representatives.append(tuple(reps))
        width = max(1, max((int(np.ceil(np.log2(len(r)))) for r in representatives if len(r) > 1), default=1))
        return cls(width, tuple(thresholds), tuple(inclusive), tuple(representatives))

    def quant(self, values: Any) -> NDArray[Any]:
        """Integers (int64): per value, how many of its feature's thresholds it passes."""
        return self.quant_counting(values)[0]

    def quant_counting(self, values: Any) -> tuple[NDArray[Any], int]:
        """``quant(values)`` and 0: no value is ever clipped (beyond the outer thresholds every value decides alike)."""
        arr = np.asarray(values, dtype=np.float64)
        self._check_features(arr)
        out = np.zeros(arr.shape, dtype=np.int64)
        for j, (ts, inc) in enumerate(zip(self.thresholds, self.inclusive)):
            if ts:
                out[..., j] = _passed(arr[..., j], np.asarray(ts), np.asarray(inc, dtype=bool))
        return out, 0

    def dequant(self, qvalues: Any) -> NDArray[Any]:
        """Floats (float64) standing for ``qvalues`` (features along the last axis)."""
        q = np.asarray(qvalues, dtype=np.int64)
        q = np.broadcast_to(q, np.broadcast_shapes(q.shape, (self.n_features,)))  # as an affine mapping broadcasts
        return self.dequant_features(q, np.broadcast_to(np.arange(self.n_features), q.shape))

    def dequant_features(self, codes: Any, features: Any) -> NDArray[Any]:
        """Floats of ``codes`` where ``codes[...]`` is an integer of feature ``features[...]`` (broadcast)."""
        codes, features = np.broadcast_arrays(np.asarray(codes, dtype=np.int64), np.asarray(features, dtype=np.int64))
        out = np.empty(codes.shape, dtype=np.float64)
        for j in np.unique(features):
            where = features == j
            reps = np.asarray(self.representatives[int(j)], dtype=np.float64)
            out[where] = reps[np.clip(codes[where], 0, len(reps) - 1)]
        return out


def _passed(values: NDArray[Any], thresholds: NDArray[Any], inclusive: NDArray[np.bool_]) -> NDArray[np.int64]:
    """How many cuts each value passes (``x >= t`` for an inclusive cut, ``x > t`` for a strict one)."""
    strict, at = np.sort(thresholds[~inclusive]), np.sort(thresholds[inclusive])
    passed = np.searchsorted(strict, values, side="left") + np.searchsorted(at, values, side="right")
    return np.asarray(passed, dtype=np.int64)


def _representative(column: NDArray[Any], cuts: list[tuple[float, bool]], code: int) -> float:
    """A float of interval ``code`` (between cut ``code - 1`` and cut ``code``) that passes exactly the
    cuts below it, in float64 and in float32: the median of the calibration values there, else a
    point chosen from the bounds."""
    ts = np.asarray([t for t, _ in cuts], dtype=np.float64)
    inc = np.asarray([i for _, i in cuts], dtype=bool)

    def fits(v: float) -> bool:
        return all(int(_passed(np.asarray([x]), ts, inc)[0]) == code
                   for x in (float(v), float(np.float32(v))))

    if len(ts):
        inside = column[_passed(column, ts, inc) == code]
        if inside.size:
            median = float(np.sort(inside)[inside.size // 2])  # a value the data holds
            if fits(median):
                return median
    low = ts[code - 1] if code > 0 else None
    high = ts[code] if code < len(ts) else None
    candidates: list[float] = []
    if low is not None and high is not None:
        candidates += [(low + high) / 2, low, high]
    for bound, direction in ((low, np.inf), (high, -np.inf)):
        if bound is not None:
            candidates += [float(np.nextafter(np.float32(bound), np.float32(direction))), bound + direction * 0.0]
            candidates.append(bound + (1.0 if direction > 0 else -1.0) * max(1.0, abs(bound)))
    if not len(ts):
        candidates.append(float(np.median(column)) if column.size else 0.0)
    for v in candidates:
        if np.isfinite(v) and fits(v):
            return float(v)
    return float(candidates[0]) if candidates else 0.0  # an interval no float32 lies in: never reached


def _merged_cuts(column: NDArray[Any], cuts: list[tuple[float, bool]], reps: list[float],
                 limit: int) -> tuple[list[tuple[float, bool]], list[float]]:
    """At most ``limit`` of ``cuts``: adjacent intervals merged, each time the pair whose merge misplaces the
    fewest calibration samples (those outside the merged interval's most populated part, whose
    representative it keeps)."""
    ts = np.asarray([t for t, _ in cuts], dtype=np.float64)
    inc = np.asarray([i for _, i in cuts], dtype=bool)
    counts = np.bincount(_passed(column, ts, inc), minlength=len(cuts) + 1)
    # groups of consecutive intervals: [first interval, last interval, mass, mass of its heaviest, that interval]
    groups = [[c, c, int(n), int(n), c] for c, n in enumerate(counts)]
    while len(groups) > limit + 1:
        best, best_cost = 0, None
        for g in range(len(groups) - 1):
            left, right = groups[g], groups[g + 1]
            cost = min(left[3], right[3])  # the lighter part's heaviest interval joins the misplaced
            if best_cost is None or cost < best_cost:
                best, best_cost = g, cost
        left, right = groups[best], groups[best + 1]
        heavy = left if left[3] >= right[3] else right
        groups[best:best + 2] = [[left[0], right[1], left[2] + right[2], heavy[3], heavy[4]]]
    kept = [cuts[g[1]] for g in groups[:-1]]  # the cut above each group's last interval
    return kept, [reps[g[4]] for g in groups]


#: a model input's quantizer: one for the whole tensor, one per feature (last axis), or per feature over
#: the thresholds its readers decide on
InputQuantizer = UniformQuantizer | PerFeatureQuantizer | DecisionQuantizer
