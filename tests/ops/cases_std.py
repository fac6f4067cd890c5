"""Property-test cases for cml-ops-std: one ``OpCase`` per op type."""

import numpy as np
from hypothesis import strategies as st

from cml_core.testing import Example, OpCase, broadcastable_shapes, float_arrays


@st.composite
def _binary(draw, opset, dtypes=(np.float32,)):
    dtype = draw(st.sampled_from(dtypes))
    sa, sb = draw(broadcastable_shapes(2))
    return Example([draw(float_arrays(sa, dtype)), draw(float_arrays(sb, dtype))])


CASES = [
    OpCase("Add", lambda opset: _binary(opset, (np.float32, np.float64))),
]
