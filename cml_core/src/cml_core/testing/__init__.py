"""Test machinery for op authors: one-node models, onnxruntime as oracle, hypothesis strategies.

A plugin author tests an op in a few lines::

    from hypothesis import given
    from cml_core.testing import check_op, float_arrays

    @given(x=float_arrays())
    def test_relu(x):
        check_op("Relu", [x], opset=14)
"""

from __future__ import annotations

from .checks import assert_close, check_op, tolerance
from .models import ORT_MAX_IR_VERSION, OptionalInput, make_node_model, run_cml, run_onnxruntime
from .strategies import (
    Example,
    OpCase,
    bool_arrays,
    broadcastable_shapes,
    float32s,
    float_arrays,
    int_arrays,
    one_of_dtypes,
    shapes,
)

__all__ = [
    "ORT_MAX_IR_VERSION",
    "Example",
    "OpCase",
    "OptionalInput",
    "assert_close",
    "broadcastable_shapes",
    "check_op",
    "bool_arrays",
    "float32s",
    "float_arrays",
    "int_arrays",
    "one_of_dtypes",
    "make_node_model",
    "run_cml",
    "run_onnxruntime",
    "shapes",
    "tolerance",
]
