"""Ops that keep values and change only how they are laid out, and the Constant op."""

import numpy as np
from cml_core.quantization import ConstantOnlyOp, LayoutOp

from ._opset import OPS


@OPS.op("Identity", since=(1, 13, 14, 16, 19, 21, 23, 24, 25), quantized=LayoutOp)
def identity(x, /):
    return x


def reshape_target(data_shape, shape, allowzero):
    """The output shape of Reshape: 0 copies the input dim (unless ``allowzero``), -1 is inferred."""
    target = [int(d) for d in np.asarray(shape).reshape(-1)]
    if not allowzero:
        target = [data_shape[i] if d == 0 else d for i, d in enumerate(target)]
    return target


@OPS.op("Reshape", since=1, quantized=LayoutOp)
def reshape_1(data, /, *, consumed_inputs=None, shape=None):
    """Reshape at opset 1: the target shape is the ``shape`` attribute."""
    if shape is None:
        raise ValueError("Reshape at opset 1 needs the shape attribute")
    return np.reshape(data, reshape_target(data.shape, shape, 0))


@OPS.op("Reshape", since=(5, 13), quantized=LayoutOp)
def reshape_5(data, shape, /):
    return np.reshape(data, reshape_target(data.shape, shape, 0))


@OPS.op("Reshape", since=(14, 19, 21, 23, 24, 25), quantized=LayoutOp)
def reshape(data, shape, /, *, allowzero=0):
    return np.reshape(data, reshape_target(data.shape, shape, allowzero))


@OPS.op("Flatten", since=(1, 9, 11, 13, 21, 23, 24, 25), quantized=LayoutOp)
def flatten(x, /, *, axis=1):
    if not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"axis={axis} is outside [{-x.ndim}, {x.ndim}] for an input of rank {x.ndim}")
    axis = axis + x.ndim if axis < 0 else axis
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return np.reshape(x, (outer, -1) if outer else (0, int(np.prod(x.shape[axis:]))))


_CONSTANT_ATTRIBUTES = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
    "value_string": object,
    "value_strings": object,
}


@OPS.op("Constant", since=(1, 9), quantized=ConstantOnlyOp)
def constant_1(*, value):
    return np.asarray(value)


@OPS.op("Constant", since=11, quantized=ConstantOnlyOp)
def constant_11(*, value=None, sparse_value=None):
    return constant(value=value, sparse_value=sparse_value)


@OPS.op("Constant", since=(12, 13, 19, 21, 23, 24, 25), quantized=ConstantOnlyOp)
def constant(*, value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
             value_string=None, value_strings=None, sparse_value=None):
    given = {k: v for k, v in locals().items() if v is not None}
    if len(given) != 1:
        raise ValueError(f"Constant needs exactly one value attribute, got {sorted(given) or 'none'}")
    (name, v), = given.items()
    if name == "value":
        return np.asarray(v)
    if name == "sparse_value":
        raise ValueError("sparse_value is not supported; store the constant as a dense tensor")
    return np.array(v, dtype=_CONSTANT_ATTRIBUTES[name])
