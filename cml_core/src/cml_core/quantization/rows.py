"""Row grids: one quantizer per row of a tensor whose rows differ in scale.

A transformer's residual stream holds rows of very different scales: a class token's row beside the
patches' rows (std 0.02 beside 1 in a freshly initialized ViT). On one grid for the whole tensor, the
small row gets a few integers, and a LayerNormalization, which scales each row to unit variance,
blows that error up to the size of the row itself. Here a *row* is one position along the axes
between the samples' axis (the first) and the axes an op reduces or keeps as features (the last):
a token of a (samples, tokens, features) tensor.

Ops that produce or read such tensors (Concat, the Add of two encrypted values, the normalizations)
fit per-row ranges on calibration (``row_ranges``). When the tensor's range is more than
``ROW_RANGE_RATIO`` times a varying row's (``rows_differ``), that row gets a grid of its own and the
others share the tensor's (``RowQuantizer``, ``fitted_grid``). The values they pass on are
per-position affine (a non-uniform float mapping ``scale * (q - zero_point)`` with arrays): a reader
that needs one grid requantizes them with one lookup, as it would any non-uniform value; a reader that
sums or reduces rows reads each on its own grid (``affine_form`` recovers the mapping, constants added
to it included). A residual stream carried through integer sums keeps ``STREAM_EXTRA_BITS`` more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import QuantizationError
from .context import PendingRange, QuantContext
from .quantizers import UniformQuantizer, _UnsignedRange
from .values import QValue

if TYPE_CHECKING:
    from .base import QuantizedOp

#: rows get grids of their own when the tensor's range is more than this many times their own: on one grid such
#: a row would keep less than half the integers (a bit fewer than asked)
ROW_RANGE_RATIO = 2.0
#: a row on a grid of its own covers its calibrated range widened by this share of it at each end
OWN_RANGE_MARGIN = 0.125
#: row grids of a tensor that flows on through integer sums (a transformer's residual stream: the Concat of a
#: class token and the patches, the Adds closing each block) keep this many bits beyond ``n_bits``: the sum of
#: each block is rounded to the stream's step, and ``n``-bit steps, summed over a dozen blocks, add up to more
#: error than any block makes. Only the lookups reading the stream see the wider integers (a normalization's
#: centred sum, which rounding narrows)
STREAM_EXTRA_BITS = 3


@dataclass(frozen=True)
class RowQuantizer(_UnsignedRange):
    """Unsigned ``n_bits`` integers with one scale and zero point per row: ``float = scale * (q -
    zero_point)``, both arrays shaped to broadcast against the tensor (size 1 along every other axis),
    where a ``UniformQuantizer`` has numbers. Each row's grid is ``UniformQuantizer.fit`` over its range."""

    n_bits: int
    scale: NDArray[np.float64]
    zero_point: NDArray[np.int64]

    @classmethod
    def fit(cls, lows: NDArray[Any], highs: NDArray[Any], n_bits: int,
            ratio: float = ROW_RANGE_RATIO) -> RowQuantizer:
        """The quantizer of rows whose ranges are [``lows``, ``highs``] (arrays of one shape; ``low > high``:
        a row without finite values): a row narrower than ``1 / ratio`` of the whole range covers its own
        range widened by ``OWN_RANGE_MARGIN`` of it at each end, the others share the grid of the whole range.
        (A row's own range is seen on fewer values than the tensor's: without the margin, values calibration
        did not see are clipped more often than on the whole range.)"""
        lows, highs = np.asarray(lows, dtype=np.float64), np.asarray(highs, dtype=np.float64)
        seen = lows <= highs
        whole = (float(lows[seen].min()), float(highs[seen].max())) if seen.any() else (0.0, 0.0)
        shared = UniformQuantizer.fit(*whole, n_bits)
        scales = np.full(lows.shape, shared.scale)
        zero_points = np.full(lows.shape, shared.zero_point, dtype=np.int64)
        for index in np.ndindex(lows.shape):
            span = highs[index] - lows[index]
            if seen[index] and (whole[1] - whole[0]) > ratio * span:
                margin = OWN_RANGE_MARGIN * span
                grid = UniformQuantizer.fit(float(lows[index] - margin), float(highs[index] + margin), n_bits)
                scales[index], zero_points[index] = grid.scale, grid.zero_point
        return cls(n_bits, scales, zero_points)

    def quant(self, values: Any) -> NDArray[np.int64]:
        """Integers (int64) representing ``values``, clipped to ``n_bits``."""
        q = np.rint(np.asarray(values, dtype=np.float64) / self.scale) + self.zero_point
        return np.clip(q, self.q_min, self.q_max).astype(np.int64)  # type: ignore[no-any-return]

    def dequant(self, qvalues: Any) -> NDArray[np.float64]:
        """Floats (float64) that ``qvalues`` represent."""
        return self.scale * (np.asarray(qvalues, dtype=np.float64) - self.zero_point)

    def value(self, data: Any, name: str = "") -> QValue:
        """Integers ``data`` on this grid as a value (per-position affine, so not uniform)."""
        return QValue.lazy(data, self.dequant, False, name)


def row_axes(ndim: int, first_kept: int) -> tuple[int, ...]:
    """The axes indexing rows of a tensor of ``ndim`` dimensions whose axes from ``first_kept`` on are
    reduced or kept as features: those between the samples' axis and them."""
    return tuple(range(1, max(1, first_kept if first_kept >= 0 else ndim + first_kept)))


def row_ranges(op: QuantizedOp, ctx: QuantContext, key: str, values: Any,
               rows: Sequence[int]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per row (position along the axes ``rows``), the range of the finite ``values`` over the whole
    calibration set: arrays shaped to broadcast against ``values`` (``low > high`` for a row with no
    finite value). Kept in ``op.state`` under ``key``; ``values`` is ignored afterwards.

    Like ``QuantizedOp.fitted_quantizer``, pass the values themselves: with several calibration chunks
    every row's range is recorded on each chunk and ``PendingRange`` raised until all are known.

    Raises:
        QuantizationError: called outside calibration for a key that was never fitted.
    """
    if key not in op.state:
        if not ctx.calibrating:
            raise QuantizationError(f"{op.where}: {key} was not calibrated")
        arr = np.asarray(values, dtype=np.float64)
        others = tuple(a for a in range(arr.ndim) if a not in rows)
        finite = np.isfinite(arr)
        lows = np.min(np.where(finite, arr, np.inf), axis=others, keepdims=True)
        highs = np.max(np.where(finite, arr, -np.inf), axis=others, keepdims=True)
        pending = False
        for index in np.ndindex(lows.shape):
            try:
                lows[index], highs[index] = ctx.calibrated_range(
                    f"{op.where}:{key}{list(index)}@{id(op):x}", float(lows[index]), float(highs[index]))
            except PendingRange:  # every row is recorded on this chunk before the node stops
                pending = True
        if pending:
            raise PendingRange(key)
        op.state[key] = (lows, highs)
    return op.state[key]  # type: ignore[no-any-return]


def rows_differ(lows: NDArray[Any], highs: NDArray[Any], ratio: float = ROW_RANGE_RATIO) -> bool:
    """Whether one grid for the whole tensor would leave a varying row under ``1 / ratio`` of its integers:
    the tensor's range is more than ``ratio`` times the narrowest varying row's."""
    spans = np.asarray(highs, dtype=np.float64) - np.asarray(lows, dtype=np.float64)
    varying = spans[spans > 0]
    if varying.size < 2:
        return False
    whole = float(np.max(highs[spans >= 0]) - np.min(lows[spans >= 0]))
    return whole > ratio * float(varying.min())


def fitted_grid(op: QuantizedOp, ctx: QuantContext, key: str, values: Any, rows: Sequence[int],
                n_bits: int | None = None) -> UniformQuantizer | RowQuantizer:
    """The quantizer of an intermediate tensor fitted on its calibration ``values``: one grid per row
    (``rows``, see ``row_ranges``) when its rows differ in range (``rows_differ``), else one grid for the
    whole tensor, as ``QuantizedOp.fitted_quantizer`` fits it; ``n_bits`` defaults to ``op_inputs``.
    Kept in ``op.state`` under ``key`` (row grids as a dict of arrays, which a saved module keeps)."""
    if key not in op.state:
        lows, highs = row_ranges(op, ctx, f"{key} rows", values, rows)
        bits = n_bits or ctx.config.op_inputs
        if rows_differ(lows, highs):
            grid = RowQuantizer.fit(lows, highs, bits)
            op.state[key] = {"n_bits": bits, "row scales": grid.scale, "row zero points": grid.zero_point}
        else:
            seen = lows <= highs
            low, high = (float(lows[seen].min()), float(highs[seen].max())) if seen.any() else (0.0, 0.0)
            op.state[key] = UniformQuantizer.fit(low, high, bits)
    kept = op.state[key]
    if isinstance(kept, dict):
        return RowQuantizer(int(kept["n_bits"]), np.asarray(kept["row scales"], dtype=np.float64),
                            np.asarray(kept["row zero points"], dtype=np.int64))
    return kept  # type: ignore[no-any-return]


def affine_form(value: QValue) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """``(slope, offset)`` such that ``value``'s float is ``slope * q + offset`` at every position of its
    integers ``q`` (arrays broadcasting against them), or None when the mapping is not affine somewhere
    (a lookup's curve folded in, masking values).

    An affine value gives its scale and zero point; any other mapping is evaluated at a few integers (it
    is element-wise, so each position's line is found from two of them and checked on two more).
    """
    if value.to_float is None or value.floor is not None:
        return None
    if value.is_affine:
        assert value.scale is not None and value.zero_point is not None
        slope = np.asarray(value.scale, dtype=np.float64)
        return slope, -slope * value.zero_point
    to_float = value.to_float
    shape = value.shape

    def at(q: int) -> NDArray[np.float64]:
        with np.errstate(all="ignore"):
            return np.asarray(to_float(np.full(shape, q, dtype=np.int64)), dtype=np.float64)

    offset = at(0)
    slope = at(1) - offset
    if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(slope))):
        return None
    for q in (-5, 1 << 12):
        expected = slope * q + offset
        if not np.allclose(at(q), expected, rtol=1e-9, atol=1e-9 * float(np.max(np.abs(expected), initial=0.0))):
            return None
    return slope, offset
