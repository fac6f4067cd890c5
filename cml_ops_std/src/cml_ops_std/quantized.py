"""Quantized twins of the linear ops: integer matrix products and convolutions.

Inputs arrive as ``QValue``s; encrypted ones are requantized to small integers, constant weights
are quantized symmetrically, and the result is an integer accumulator whose float value is
``scale * acc``. Biases are folded into the accumulator as integers. A model input quantized per
feature that a constant weight reduces over its feature axis is read as it is: its per-feature
scales are folded into the weight, its zero points subtracted as clear constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from cml_core.quantization import ElementwiseOp, LinearOp, QValue
from cml_core.quantization.context import QuantContext


def _pad(inputs: Sequence[QValue | None], n: int) -> list[QValue | None]:
    return list(inputs) + [None] * (n - len(inputs))


class ComparisonOp(ElementwiseOp):
    """Less, LessOrEqual, Greater, GreaterOrEqual, Equal: a lookup like any element-wise op; against a
    constant, the encrypted operand matters only through which side of the constant it lies on."""

    #: per op type, the cuts deciding it (True: inclusive, ``x >= t``; False: strict, ``x > t``) when the
    #: encrypted operand is the first input, then when it is the second
    CUTS = {"Less": ((True,), (False,)), "LessOrEqual": ((False,), (True,)), "Greater": ((False,), (True,)),
            "GreaterOrEqual": ((True,), (False,)), "Equal": ((True, False), (True, False))}

    def decision_cuts(self, index: int, constants: Sequence[Any],
                      shape: tuple[int, ...]) -> list[tuple[np.ndarray, bool]] | None:
        kinds = self.CUTS.get(self.impl.op_type)
        if kinds is None or len(constants) != 2 or index not in (0, 1) or constants[1 - index] is None:
            return None
        if "broadcast" in self.attributes:  # before opset 7 broadcasting follows other rules
            return None
        threshold = np.asarray(constants[1 - index])
        if threshold.dtype.kind not in "fiu":
            return None
        return [(threshold.astype(np.float64), inclusive) for inclusive in kinds[index]]


class _MatrixProduct(LinearOp):
    """Shared by Gemm and MatMul: an integer product where one or both factors are encrypted."""

    #: the scores of a linear model fold a per-feature input's scales into the weights at no cost
    folds_feature_scales = "as output"

    def _transposes(self) -> tuple[bool, bool]:
        return bool(self.attributes.get("transA", 0)), bool(self.attributes.get("transB", 0))

    def _plain_product(self, constants: Sequence[Any]) -> bool:
        """Whether the op is ``A' @ B'`` alone (Gemm: alpha 1 and no C added)."""
        return True

    def feature_selection(self, index: int, constants: Sequence[Any], n_features: int) -> np.ndarray | None:
        if index not in (0, 1) or len(constants) < 2 or constants[index] is not None \
                or not self._plain_product(constants):
            return None
        trans_a, trans_b = self._transposes()
        return _Selection.features(constants[0], constants[1], index, trans_a, trans_b, n_features)

    def _selection(self, inputs: Sequence[QValue | None]) -> QValue | None:
        """The output as copied integers when the product only copies features (see ``_Selection``)."""
        a, b = inputs[0], inputs[1]
        if a is None or b is None or a.is_constant == b.is_constant:
            return None
        constants = [None if v is None or not v.is_constant else v.data for v in inputs]
        if not self._plain_product(constants):
            return None
        index = 1 if a.is_constant else 0
        trans_a, trans_b = self._transposes()
        return _Selection.apply(inputs[index], constants[0], constants[1], index, trans_a, trans_b,  # type: ignore[arg-type]
                                self.bound.node.output[0])

    def product(self, ctx: QuantContext, a: QValue, b: QValue, trans_a: bool, trans_b: bool,
                per_column: bool = True) -> tuple[Any, Any]:
        """(integer product, its scale): one number, or per output row/column when a constant factor
        has per-channel scales along the axis the product keeps (rows of A, columns of B), or when a
        per-feature ``a`` has its scales folded into ``b`` and ``per_column`` allows it."""
        if self._folds_features(a, b, trans_a, trans_b):
            return self._per_feature_product(ctx, a, b, trans_b, per_column)
        factors = []
        scale: Any = 1.0
        for key, value, trans in (("A", a, trans_a), ("B", b, trans_b)):
            if value.is_constant:
                ndim = np.ndim(value.data)
                kept = ((1 if trans else 0) if key == "A" else (0 if trans else 1)) if ndim == 2 else \
                    ((-1 if key == "B" else -2) if ndim > 2 else None)
                data, s = self.weights(ctx, key, value.data, value.name, () if kept is None else (kept,))
            else:
                q = ctx.requantize(value)
                data, s = self.centered(q), q.scale
            if trans:
                data = np.transpose(data)
                s = np.transpose(s) if np.ndim(s) else s
            factors.append(data)
            scale = scale * (float(s) if np.size(s) == 1 else np.asarray(s))
        if not (a.is_constant or b.is_constant):
            return ctx.encrypted_matmul(factors[0], factors[1], self.bound.node.output[0]), scale
        return np.matmul(factors[0], factors[1]), scale

    @staticmethod
    def _folds_features(a: QValue, b: QValue, trans_a: bool, trans_b: bool) -> bool:
        """Whether ``a`` is a per-feature input whose feature axis the constant ``b`` reduces."""
        if a.feature_scales is None or trans_a or not b.is_constant or np.ndim(b.data) < 2 or len(a.shape) < 2:
            return False
        reduced = np.shape(b.data)[-1 if trans_b else -2]
        return bool(reduced == a.shape[-1] == a.feature_scales.size)

    def _per_feature_product(self, ctx: QuantContext, a: QValue, b: QValue, trans_b: bool,
                             per_column: bool) -> tuple[Any, Any]:
        """``a @ b`` for a per-feature ``a``: ``(q - z) @ (diag(s) @ B)``, so every feature keeps its own
        resolution (no lookup puts ``a`` on one grid). The folded weight is quantized per output column
        when ``per_column`` (the product's scale is then per column), else with one scale."""
        ctx.read_per_feature(a)
        assert a.feature_scales is not None and a.feature_zero_points is not None
        weight = np.asarray(b.data, dtype=np.float64)
        if trans_b:
            weight = np.swapaxes(weight, -1, -2)
        folded = weight * a.feature_scales[:, None]
        if per_column:
            data, scale = self.weights_per_column(ctx, "B per feature", folded)
        else:
            data, scale = self.weights(ctx, "B per feature, one scale", folded)
        centered = a.data - a.feature_zero_points if np.any(a.feature_zero_points) else a.data
        return np.matmul(centered, data), np.array(scale)  # a copy: callers scale it in place (alpha)


def _selected_features(weight: Any, axis: int) -> np.ndarray | None:
    """For a constant 2-D ``weight`` whose every output (its slices along ``axis``, the axis the product
    keeps) holds at most a single 1 and zeros elsewhere: the position of that 1 per output, -1 for an
    output of zeros only (padding, a constant 0); else None."""
    w = np.asarray(weight)
    if w.ndim != 2 or w.dtype.kind not in "fiub" or w.size == 0:
        return None
    w = w if axis == 1 else w.T  # reduced axis first: (features, outputs)
    ones = np.count_nonzero(w, axis=0)
    if not np.all((w == 0) | (w == 1)) or not np.all(ones <= 1) or not ones.any():
        return None
    return np.where(ones == 1, np.argmax(w, axis=0), -1).astype(np.int64)


class _Selection:
    """Where a product only copies features of an encrypted (samples, features) operand (Hummingbird
    feeds each tree comparison its feature through a 0/1 matrix): the output's integers are the copied
    integers themselves, each keeping its feature's float mapping; no accumulator, no lookup."""

    @staticmethod
    def features(a_const: Any, b_const: Any, index: int, trans_a: bool, trans_b: bool,
                 n_features: int) -> np.ndarray | None:
        """Per output position of ``A' @ B'`` (broadcastable, samples' axis of size 1), the feature of the
        encrypted operand ``index`` (0: A, 1: B) it copies; None unless the other factor selects."""
        if index == 0 and not trans_a and b_const is not None:
            chosen = _selected_features(b_const, 0 if trans_b else 1)  # B' columns pick rows of A's features
            if chosen is not None and np.shape(b_const)[1 if trans_b else 0] == n_features:
                return chosen[None, :]
        if index == 1 and trans_b and a_const is not None:
            chosen = _selected_features(a_const, 1 if trans_a else 0)  # A' rows pick features of B
            if chosen is not None and np.shape(a_const)[0 if trans_a else 1] == n_features:
                return chosen[:, None]
        return None

    @staticmethod
    def apply(value: QValue, a_const: Any, b_const: Any, index: int, trans_a: bool, trans_b: bool,
              name: str) -> QValue | None:
        """The copied integers of ``value`` (the encrypted operand ``index``), or None when not a selection."""
        if len(value.shape) != 2:
            return None
        chosen = _Selection.features(a_const, b_const, index, trans_a, trans_b, value.shape[1])
        if chosen is None:
            return None
        n, flat = value.shape[1], chosen.ravel()
        outputs, copied = np.arange(flat.size)[flat >= 0], flat[flat >= 0]
        padding = np.reshape(flat < 0, chosen.shape)
        if padding.any() and not value.is_per_feature and not (value.is_affine and value.floor is None):
            return None  # a constant 0 needs an integer of its own: known for an affine value
        if index == 0:
            matrix = np.zeros((n, flat.size), dtype=np.int64)
            matrix[copied, outputs] = 1
            data = np.matmul(value.data, matrix)
        else:
            matrix = np.zeros((flat.size, n), dtype=np.int64)
            matrix[outputs, copied] = 1
            data = np.matmul(matrix, np.transpose(value.data))
        if value.is_per_feature:
            grid, features = value.features, np.maximum(chosen, 0)

            def to_float(q: np.ndarray) -> np.ndarray:
                return np.where(padding, 0.0, grid.dequant_features(q, features))

            return QValue.lazy(data, to_float, False, name)
        if padding.any():
            data = data + padding.astype(np.int64) * int(value.zero_point or 0)  # the zero point stands for 0
        if not value.uniform:
            return None
        return QValue(data, value.to_float, True, value.scale, value.zero_point, name, floor=value.floor)


class QuantizedGemm(_MatrixProduct):
    """Gemm: ``alpha * A' @ B' + beta * C`` in integers, C folded into the accumulator."""

    weight_inputs = ("a", "b")

    def _plain_product(self, constants: Sequence[Any]) -> bool:
        c = constants[2] if len(constants) > 2 else None
        no_c = len(self.bound.node.input) < 3 or not self.bound.node.input[2] \
            or float(self.attributes.get("beta", 1.0)) == 0 or (c is not None and not np.any(c))
        return float(self.attributes.get("alpha", 1.0)) == 1.0 and no_c

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        selected = self._selection(inputs)
        if selected is not None:
            return selected
        a, b, c = _pad(inputs, 3)
        assert a is not None and b is not None
        alpha = float(self.attributes.get("alpha", 1.0))
        beta = float(self.attributes.get("beta", 1.0))
        if alpha == 0:
            return self._without_product(a, b, c, beta)
        encrypted_c = c is not None and beta != 0 and not c.is_constant
        acc, scale = self.product(ctx, a, b, bool(self.attributes.get("transA", 0)),
                                  bool(self.attributes.get("transB", 0)), per_column=not encrypted_c)
        scale *= alpha
        float_bias = None
        if c is not None and beta != 0:
            if c.is_constant:
                c_scaled = beta * np.asarray(c.data, dtype=np.float64)
                bias = self.integer_bias("C", c_scaled, scale)
                if bias is None:  # too large for the accumulator's resolution: keep it in float
                    float_bias = c_scaled
                else:
                    acc = acc + bias
            else:
                acc, scale = self._add_encrypted_c(ctx, acc, scale, c, beta)
        return self.accumulator(ctx, acc, scale, float_bias)

    def _add_encrypted_c(self, ctx: QuantContext, acc: Any, scale: float, c: QValue, beta: float) -> tuple[Any, float]:
        """``acc`` plus ``beta * C`` in one integer unit, and that unit.

        One lookup brings the encrypted C into the accumulator's unit. When the product's
        resolution is so fine that C would need more than ``MAX_BIAS_UNITS`` of it (a nearly
        constant factor has a tiny scale), the integers would overflow: the accumulator is first
        brought to the coarser unit ``max|beta * C| / MAX_BIAS_UNITS`` (in magnitude) by one more
        lookup: the product is then rounded to 2**-41 of the largest ``|beta * C|``.
        """
        c_float = c.to_float
        assert c_float is not None
        if "C unit" not in self.state:
            # ctx.calibrating here: the largest |beta * C| over the whole calibration set
            largest = float(np.max(np.abs(beta * c.float_value()), initial=0.0))
            _, largest = ctx.calibrated_range(f"{self.where}:|C|@{id(self):x}", 0.0, largest)
            coarsest = largest / self.MAX_BIAS_UNITS  # the unit keeps the sign of scale (alpha < 0)
            self.state["C unit"] = scale if abs(scale) >= coarsest else float(np.copysign(coarsest, scale))
        unit = float(self.state["C unit"])
        if unit != scale:
            ratio = scale / unit
            product = QValue.lazy(acc, lambda a: scale * np.asarray(a, np.float64), True, name=f"{self.bound.name}:product")
            acc = ctx.lookup(product, lambda a: np.rint(np.asarray(a, np.float64) * ratio).astype(np.int64),
                             key=f"{self.bound.name}:product")

        def in_accumulator_units(q: np.ndarray) -> np.ndarray:
            return np.rint(beta * c_float(q) / unit).astype(np.int64)

        return acc + ctx.lookup(c, in_accumulator_units, key=f"{self.bound.name}:C"), unit


    def _without_product(self, a: QValue, b: QValue, c: QValue | None, beta: float) -> QValue:
        """alpha == 0: the output is ``beta * C`` broadcast to the product's shape."""
        rows = a.shape[1] if self.attributes.get("transA", 0) else a.shape[0]
        cols = b.shape[0] if self.attributes.get("transB", 0) else b.shape[1]
        zeros = np.zeros((rows, cols))
        if c is None or c.is_constant:
            return QValue.constant(zeros + (0.0 if c is None else beta * np.asarray(c.data, dtype=np.float64)))
        c_float = c.to_float
        assert c_float is not None
        return QValue.lazy(np.broadcast_to(c.data, zeros.shape) if tuple(c.shape) != zeros.shape else c.data,
                           lambda q: beta * c_float(q), c.uniform)


class QuantizedMatMul(_MatrixProduct):
    """MatMul with numpy semantics, in integers."""

    weight_inputs = ("a", "b")

    def _transposes(self) -> tuple[bool, bool]:
        return False, False

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        selected = self._selection(inputs)
        if selected is not None:
            return selected
        a, b = inputs[0], inputs[1]
        assert a is not None and b is not None
        acc, scale = self.product(ctx, a, b, False, False)
        return self.accumulator(ctx, acc, scale)
