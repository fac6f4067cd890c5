"""Accuracy of numpy implementations where a textbook formula cancels (beyond the oracle's tolerance)."""

import math

import numpy as np
import pytest

from cml_core import get_registry


def _gelu():
    return next(i.function for i in get_registry() if i.op_type == "Gelu")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_keeps_the_digits_of_tiny_outputs(approximate):
    """For x << 0, 1 + erf(x / sqrt(2)) (or 1 + tanh(u)) cancels; in float32 Gelu(-5.5, tanh) was off
    by 6e-9 on -1.04e-7, which the quantized twin (computing in float64) was then compared against."""
    x = np.array([-9.0, -7.0, -5.5, -4.0, -2.0], np.float32)
    if approximate == "none":
        expected = [0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(float)]
    else:
        expected = [v / (1 + math.exp(-2 * math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in x.astype(float)]
    y = _gelu()(x, approximate=approximate)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, np.array(expected, np.float32), rtol=1e-6)
