"""Property-test cases for cml-ops-activations: one ``OpCase`` per op type."""

import numpy as np
from hypothesis import strategies as st

from cml_core.testing import Example, OpCase, float_arrays


@st.composite
def _unary(draw, opset, low=-10.0, high=10.0, attributes=None, dtypes=(np.float32,)):
    dtype = draw(st.sampled_from(dtypes))
    attrs = draw(attributes) if attributes is not None else {}
    return Example([draw(float_arrays(dtype=dtype, min_value=low, max_value=high))], attrs)


CASES = [
    OpCase("Relu", lambda opset: _unary(opset)),
]
