"""What flows between quantized ops: constants, quantized integers, and integers awaiting a lookup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatFunction = Callable[[NDArray[Any]], NDArray[Any]]


@dataclass(frozen=True)
class QValue:
    """A tensor of the quantized graph.

    - constant: ``data`` is the float (or integer) array itself, known in the clear.
    - encrypted: ``data`` holds integers (numpy or an FHE tracer) and ``to_float(data)`` gives
      the float tensor it stands for. ``to_float`` is element-wise; it is *uniform* when it treats
      every position alike, and *affine* (``scale``/``zero_point`` set) when it is
      ``scale * (data - zero_point)``. A model input quantized per feature is *per-feature affine*
      (``feature_scales``/``feature_zero_points`` set, one per position of the last axis):
      ``feature_scales * (data - feature_zero_points)``, not uniform; consumers that reduce over
      the feature axis fold the scales into their weights, others requantize it. ``features`` is
      the input's quantizer, which maps any feature's integers to floats (``dequant_features``): it
      is also set for an input whose integers count decision thresholds (``DecisionQuantizer``,
      not affine at all), read by the ops that decide on them.

    A chain of univariate ops only composes ``to_float``; the integers change only at a lookup,
    so such a chain costs one table lookup at the point an integer is needed.
    """

    data: Any
    to_float: FloatFunction | None = None
    uniform: bool = True
    scale: float | None = None
    zero_point: int | None = None
    name: str = ""
    feature_scales: NDArray[np.float64] | None = field(default=None, compare=False)
    feature_zero_points: NDArray[np.int64] | None = field(default=None, compare=False)
    #: of an affine value holding masking values: (first data integer, the masking value the integers
    #: below it stand for), see ``UniformQuantizer.masking``
    floor: tuple[int, float] | None = field(default=None, compare=False)
    #: of a model input quantized per feature: its quantizer (``dequant_features(codes, feature_ids)``)
    features: Any = field(default=None, compare=False)
    #: of an affine value whose integers a quantizer made (a lookup's, a model input's): the lowest and
    #: highest integer it can hold; None when not known (a sum of two grids' integers)
    levels: tuple[int, int] | None = field(default=None, compare=False)

    @classmethod
    def constant(cls, value: Any, name: str = "") -> QValue:
        return cls(np.asarray(value), name=name)

    @classmethod
    def affine(cls, data: Any, scale: float, zero_point: int, name: str = "",
               floor: tuple[int, float] | None = None, levels: tuple[int, int] | None = None) -> QValue:
        s, z = float(scale), int(zero_point)

        def to_float(q: NDArray[Any]) -> NDArray[Any]:
            return s * (np.asarray(q, dtype=np.float64) - z)

        if floor is not None:
            first, masking = int(floor[0]), float(floor[1])

            def to_float(q: NDArray[Any]) -> NDArray[Any]:  # noqa: F811  (the masking form of the same mapping)
                arr = np.asarray(q, dtype=np.float64)
                return np.where(arr < first, masking, s * (arr - z))

        return cls(data, to_float, True, s, z, name, floor=floor, levels=levels)

    @classmethod
    def quantized(cls, data: Any, quantizer: Any, name: str = "") -> QValue:
        """Integers ``data`` under ``quantizer`` (a ``UniformQuantizer``, masking or not)."""
        floor = None if quantizer.floor is None else (quantizer.first_value_code, quantizer.floor)
        return cls.affine(data, quantizer.scale, quantizer.zero_point, name, floor,
                          (int(quantizer.q_min), int(quantizer.q_max)))

    @classmethod
    def per_feature(cls, data: Any, quantizer: Any, name: str = "") -> QValue:
        """Integers of a model input quantized per feature (its last axis) by ``quantizer``: affine per
        feature (a ``PerFeatureQuantizer``: ``feature_scales`` set) or counting thresholds."""
        affine = hasattr(quantizer, "scale_array")
        s = quantizer.scale_array if affine else None
        z = quantizer.zero_point_array if affine else None

        def to_float(q: NDArray[Any]) -> NDArray[Any]:
            return np.asarray(quantizer.dequant(q), dtype=np.float64)

        return cls(data, to_float, False, None, None, name, s, z, features=quantizer)

    @classmethod
    def lazy(cls, data: Any, to_float: FloatFunction, uniform: bool, name: str = "") -> QValue:
        return cls(data, to_float, uniform, None, None, name)

    @property
    def is_constant(self) -> bool:
        return self.to_float is None

    @property
    def is_affine(self) -> bool:
        return self.scale is not None

    @property
    def is_per_feature(self) -> bool:
        """A model input quantized per feature (affine per feature, or counting thresholds)."""
        return self.features is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def with_data(self, data: Any, name: str = "") -> QValue:
        """The same float mapping over new integers (after a layout op moved them); a per-feature value
        keeps its mapping but no longer claims its features lie along the last axis."""
        return QValue(data, self.to_float, self.uniform, self.scale, self.zero_point, name or self.name,
                      floor=self.floor, levels=self.levels)

    def float_value(self) -> NDArray[Any]:
        """The float tensor this value stands for (clear data only)."""
        if self.to_float is None:
            return np.asarray(self.data)
        return np.asarray(self.to_float(np.asarray(self.data)), dtype=np.float64)
