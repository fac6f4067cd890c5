"""The example plugin's own test: what an outside author writes, a few lines with cml_core.testing."""

import numpy as np
from cml_core.testing import check_op, float32s, float_arrays
from hypothesis import given


def reference(x, alpha=1.0, beta=1.0):
    # an independent reference: float64 math, rounded to float32 at the end
    return (np.float64(np.float32(alpha)) * np.tanh(np.float64(np.float32(beta)) * x.astype(np.float64))).astype(x.dtype)


@given(x=float_arrays(), alpha=float32s(-3, 3), beta=float32s(-3, 3))
def test_scaled_tanh_matches_reference(x, alpha, beta):
    check_op("ScaledTanh", [x], {"alpha": alpha, "beta": beta}, opset=1, domain="com.example.cml",
             reference=reference)
