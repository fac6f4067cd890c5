"""State shared by the quantized ops during one pass of the integer forward."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import QuantizationError
from . import backend
from .quantizers import UniformQuantizer
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

    @property
    def input_bits(self) -> int:
        if self.packed_bits is not None:
            return self.packed_bits
        return bits_for_range(self.low + self.offset, self.high + self.offset)

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
    _materialized: dict[str, QValue] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"node {self.node_name!r} ({self.op_type})"

    def quantizer_for(self, tensor: str, n_bits: int | None = None) -> UniformQuantizer:
        """Unsigned quantizer of ``tensor`` fitted to its calibrated float range."""
        if tensor not in self.float_ranges:
            raise QuantizationError(f"{self.where}: no calibration statistics for tensor {tensor!r}")
        low, high = self.float_ranges[tensor]
        return UniformQuantizer.fit(low, high, n_bits or self.config.op_inputs)

    def requantize(self, value: QValue, n_bits: int | None = None) -> QValue:
        """``value`` as small affine integers (``op_inputs`` bits), applying one lookup if needed.

        Values already affine (model inputs, earlier requantizations) are returned unchanged; the
        lookup of a tensor is shared by every op that needs it.
        """
        if value.is_constant:
            raise QuantizationError(f"{self.where}: a constant has no quantized integers")
        if value.is_affine:
            return value
        key = value.name
        if key in self._materialized:
            return self._materialized[key]
        quantizer = self.quantizer_for(value.name, n_bits)
        to_float = value.to_float
        assert to_float is not None

        def table(q: NDArray[Any]) -> NDArray[Any]:
            return quantizer.quant(to_float(q))

        data = self.lookup(value, table)
        out = QValue.affine(data, quantizer.scale, quantizer.zero_point, value.name)
        self._materialized[key] = out
        return out

    def requantize_to(self, value: QValue, quantizer: UniformQuantizer, key: str) -> Any:
        """Integers of ``value`` under ``quantizer`` (one lookup, recorded under ``key``)."""
        to_float = value.to_float
        assert to_float is not None

        def table(q: NDArray[Any]) -> NDArray[Any]:
            return quantizer.quant(to_float(q))

        return self.lookup(value, table, key=key)

    def lookup(self, value: QValue, table: Callable[[NDArray[Any]], NDArray[Any]], key: str | None = None) -> Any:
        """Apply ``table`` (int -> int, element-wise) to ``value.data`` as one lookup.

        The calibrated input range is first centred on zero by adding a constant (free on
        encrypted data; the table takes it back), so a lopsided range such as a ReLU input's
        needs no more bits than its width. The input is then rounded to ``rounding_bits`` when
        configured. Calibration records each lookup under ``key`` (default: the tensor's name);
        running reuses what was recorded.
        """
        key = key or value.name
        producer = self.producers.get(key, (self.node_name, self.op_type))
        if self.calibrating:
            data = np.asarray(value.data)
            site = LookupSite(producer[0], producer[1], value.name, int(data.min()), int(data.max()))
            bits = self.config.rounding_per_lookup.get(key, self.config.rounding_bits)
            site.offset = centring_offset(site.low, site.high, bits)
            if bits is not None:
                site.lsbs_removed = max(0, site.input_bits - bits)
            rounded = backend.round_bits(data + site.offset, site.lsbs_removed, self.config.rounding_exact)
            site.rounded_low, site.rounded_high = int(np.min(rounded)), int(np.max(rounded))
            self.sites[key] = site
        else:
            site = self.sites[key]
            shifted = value.data + site.offset if site.offset else value.data
            rounded = backend.round_bits(shifted, site.lsbs_removed, self.config.rounding_exact)
        offset = site.offset
        if not offset:
            return backend.lookup(rounded, table)
        return backend.lookup(rounded, lambda q: table(q - offset))

    def record_multi_lookup(self, tensor: str, data: list[Any]) -> None:
        """Record a lookup on several packed integer inputs (calibration only)."""
        if self.calibrating:
            arrays = [np.asarray(d) for d in data]
            bits = sum(bits_for_range(a.min(), a.max()) for a in arrays)
            self.sites[tensor] = LookupSite(self.node_name, self.op_type, tensor,
                                            min(int(a.min()) for a in arrays), max(int(a.max()) for a in arrays),
                                            packed_bits=bits)

    def record_accumulator(self, data: Any) -> None:
        """Remember the integer range of the current node's accumulator (calibration only)."""
        if self.calibrating:
            arr = np.asarray(data)
            self.accumulators[self.node_name] = AccumulatorRecord(
                self.node_name, self.op_type, int(arr.min()), int(arr.max()))
