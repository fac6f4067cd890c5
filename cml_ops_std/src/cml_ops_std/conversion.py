"""Type conversion and inference-time Dropout."""

import numpy as np
from cml_core.quantization import ElementwiseOp, QuantizedOp, QValue
from onnx import helper

from ._opset import OPS


def _target_dtype(to):
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(int(to)))
    if dtype.kind not in "biuf":
        raise ValueError(f"Cast to {helper.tensor_dtype_to_string(int(to))} is not supported")
    return dtype


def _cast(x, dtype, saturate):
    if np.dtype(dtype) == x.dtype:
        return x
    if x.dtype.kind == "f" and np.dtype(dtype).kind in "iu":
        with np.errstate(invalid="ignore"):
            return np.trunc(x).astype(dtype)
    return x.astype(dtype)


@OPS.op("Cast", since=(9, 13), quantized=ElementwiseOp)
def cast_9(x, /, *, to):
    return _cast(x, _target_dtype(to), 1)


@OPS.op("Cast", since=(19, 21, 23), quantized=ElementwiseOp)
def cast_19(x, /, *, saturate=1, to):
    # saturate only concerns float8 targets, which are not supported
    return _cast(x, _target_dtype(to), saturate)


@OPS.op("Cast", since=(24, 25, 28), quantized=ElementwiseOp)
def cast(x, /, *, round_mode="up", saturate=1, to):
    # round_mode only concerns float8 targets, which are not supported
    return _cast(x, _target_dtype(to), saturate)


@OPS.op("CastLike", since=15, quantized=ElementwiseOp)
def cast_like_15(x, target_type, /):
    return _cast(x, target_type.dtype, 1)


@OPS.op("CastLike", since=(19, 21, 23), quantized=ElementwiseOp)
def cast_like_19(x, target_type, /, *, saturate=1):
    return _cast(x, target_type.dtype, saturate)


@OPS.op("CastLike", since=(24, 25), quantized=ElementwiseOp)
def cast_like(x, target_type, /, *, round_mode="up", saturate=1):
    return _cast(x, target_type.dtype, saturate)


class QuantizedDropout(QuantizedOp):
    """Inference Dropout: the data passes through unchanged, the mask is all true."""

    def encrypted_forward(self, ctx, inputs):
        training = inputs[2] if len(inputs) > 2 else None
        if training is not None and (not training.is_constant or bool(np.asarray(training.data))):
            raise ValueError(f"{self.where}: only inference (training_mode false) is supported")
        data = inputs[0]
        return data, QValue.constant(np.ones(data.shape, dtype=bool))


@OPS.op("Dropout", since=10, quantized=QuantizedDropout)
def dropout_10(data, /, *, ratio=0.5):
    return data, np.ones(data.shape, dtype=bool)


@OPS.op("Dropout", since=(12, 13, 22), quantized=QuantizedDropout)
def dropout(data, /, ratio=None, training_mode=None, *, seed=None):
    if training_mode is not None and bool(np.asarray(training_mode)):
        raise ValueError("Dropout in training mode is random; only inference is supported")
    return data, np.ones(data.shape, dtype=bool)
