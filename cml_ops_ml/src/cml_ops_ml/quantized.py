"""Quantized twins of the ONNX-ML models (filled in below)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from cml_core.quantization import ConstantOnlyOp, ElementwiseOp, QuantContext, QValue


class QuantizedLinearClassifier(ConstantOnlyOp):
    pass


class QuantizedLinearRegressor(ConstantOnlyOp):
    pass


class QuantizedTreeEnsemble(ConstantOnlyOp):
    pass


class PerFeatureElementwiseOp(ElementwiseOp):
    """An element-wise op whose constants differ per feature (Scaler, Imputer): the composed float
    mapping depends on the position, so it is marked non-uniform (a layout op after it requantizes
    first, and the lookup that consumes it is per position)."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        out = super().encrypted_forward(ctx, inputs)
        return out if out.is_affine else dataclasses.replace(out, uniform=False)
