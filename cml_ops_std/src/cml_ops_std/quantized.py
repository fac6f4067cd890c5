"""Quantized twins of the linear ops: integer matrix products and convolutions.

Inputs arrive as ``QValue``s; encrypted ones are requantized to small integers, constant weights
are quantized symmetrically, and the result is an integer accumulator whose float value is
``scale * acc``. Biases are folded into the accumulator as integers.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cml_core.errors import QuantizationError
from cml_core.quantization import LinearOp, QValue
from cml_core.quantization.context import QuantContext


def _pad(inputs: Sequence[QValue | None], n: int) -> list[QValue | None]:
    return list(inputs) + [None] * (n - len(inputs))


class _MatrixProduct(LinearOp):
    """Shared by Gemm and MatMul: an integer product where one or both factors are encrypted."""

    def product(self, ctx: QuantContext, a: QValue, b: QValue, trans_a: bool, trans_b: bool) -> tuple[Any, float]:
        factors = []
        scale = 1.0
        for key, value, trans in (("A", a, trans_a), ("B", b, trans_b)):
            if value.is_constant:
                data, s = self.weights(ctx, key, value.data)
            else:
                q = ctx.requantize(value)
                data, s = self.centered(q), q.scale
            if trans:
                data = np.transpose(data)
            factors.append(data)
            scale *= float(s)  # type: ignore[arg-type]
        return np.matmul(factors[0], factors[1]), scale


class QuantizedGemm(_MatrixProduct):
    """Gemm: ``alpha * A' @ B' + beta * C`` in integers, C folded into the accumulator."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        a, b, c = _pad(inputs, 3)
        assert a is not None and b is not None
        alpha = float(self.attributes.get("alpha", 1.0))
        beta = float(self.attributes.get("beta", 1.0))
        acc, scale = self.product(ctx, a, b, bool(self.attributes.get("transA", 0)),
                                  bool(self.attributes.get("transB", 0)))
        scale *= alpha
        if c is not None and beta != 0:
            if not c.is_constant:
                raise QuantizationError(f"{self.where}: an encrypted C input is not supported; "
                                        "add it with a separate Add node")
            if scale == 0:
                raise QuantizationError(f"{self.where}: alpha is 0, so the product vanishes")
            acc = acc + self.integer_bias("C", beta * np.asarray(c.data, dtype=np.float64), scale)
        return self.accumulator(ctx, acc, scale)


class QuantizedMatMul(_MatrixProduct):
    """MatMul with numpy semantics, in integers."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        a, b = inputs[0], inputs[1]
        assert a is not None and b is not None
        acc, scale = self.product(ctx, a, b, False, False)
        return self.accumulator(ctx, acc, scale)
