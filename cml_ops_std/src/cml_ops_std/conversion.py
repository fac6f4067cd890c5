"""Type conversion (Cast, CastLike) to and from every ONNX element type, and inference-time Dropout.

Numbers are converted as the Cast specification describes: floats to integers truncate toward zero
and integers that do not fit keep their low bits; the float 8 types round to nearest even and, with
``saturate``, clamp to their largest finite value; FLOAT8E8M0 (powers of two) rounds by
``round_mode``; sub-byte integers (int4, uint4, int2, uint2) keep their low bits. Strings are numpy
object arrays of ``str``: numbers are written as ``%.8g`` (``NaN``, ``INF``, ``-INF``) and read
back with the special literals matched regardless of case.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ElementwiseOp, QuantizedOp, QValue
from onnx import TensorProto, helper

from ._opset import OPS

FLOAT8 = {np.dtype(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
                                ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)}
E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
#: float types of ml_dtypes (numpy sees them as opaque 'V' kinds)
ML_FLOATS = FLOAT8 | {E8M0} | {np.dtype(t) for t in (ml_dtypes.bfloat16, ml_dtypes.float4_e2m1fn,
                                                      ml_dtypes.float6_e2m3fn, ml_dtypes.float6_e3m2fn)}
#: sub-byte integer types and their (bits, signed)
SMALL_INTS = {np.dtype(ml_dtypes.int4): (4, True), np.dtype(ml_dtypes.uint4): (4, False),
              np.dtype(ml_dtypes.int2): (2, True), np.dtype(ml_dtypes.uint2): (2, False)}
STRING = np.dtype(object)
ROUND_MODES = ("up", "down", "nearest")


def is_float(dtype: Any) -> bool:
    """Whether ``dtype`` is a floating-point type (numpy's or one of ml_dtypes')."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype in ML_FLOATS


def is_string(dtype: Any) -> bool:
    return np.dtype(dtype).kind in "OUS"


def element_dtype(to: Any) -> np.dtype[Any]:
    """numpy dtype of the ONNX element type ``to`` (a TensorProto number, or its name as Cast-1 gives it)."""
    if isinstance(to, (bytes, str)):
        name = to.decode() if isinstance(to, bytes) else to
        try:
            to = TensorProto.DataType.Value(name.strip().upper())
        except ValueError:
            raise ValueError(f"Cast: {name!r} is not an ONNX element type name (FLOAT, INT64, ...)") from None
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(int(to)))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"Cast: 'to' is {to!r}, which is not an ONNX element type") from None
    if dtype.kind == "c":
        raise ValueError(f"Cast to {helper.tensor_dtype_to_string(int(to))} is not supported (complex numbers)")
    return dtype


def cast_array(x: Any, dtype: Any, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """``x`` converted to ``dtype`` by the rules of ONNX Cast (see the module docstring)."""
    x = np.asarray(x)
    dtype = np.dtype(dtype)
    if round_mode not in ROUND_MODES:
        raise ValueError(f"Cast: round_mode must be one of {list(ROUND_MODES)}, got {round_mode!r}")
    if is_string(dtype):
        return x.astype(object) if is_string(x.dtype) else _to_strings(x)
    if is_string(x.dtype):
        x = _parse_strings(x, dtype)
    if x.dtype == dtype:
        return x
    if x.dtype in ML_FLOATS or (x.dtype in SMALL_INTS and not is_float(dtype)):
        x = x.astype(np.float32) if x.dtype in ML_FLOATS else x.astype(np.int64)
        if x.dtype == dtype:
            return x
    if dtype in FLOAT8:
        return _to_float8(x, dtype, bool(saturate))
    if dtype == E8M0:
        return _to_e8m0(x, bool(saturate), round_mode)
    if dtype in SMALL_INTS:
        return _to_small_int(x, dtype)
    if dtype.kind in "iu" and is_float(x.dtype):
        with np.errstate(invalid="ignore"):
            return np.trunc(x).astype(dtype)
    if dtype in ML_FLOATS and (x.dtype.kind in "iub" or x.dtype in SMALL_INTS):
        x = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(dtype)


def _to_float8(x: np.ndarray, dtype: np.dtype[Any], saturate: bool) -> np.ndarray:
    """Round to nearest even; ``saturate`` clamps infinities and finite overflows to the largest
    finite value (NaN stays NaN). Without it, overflows become NaN, or infinity for E5M2."""
    if x.dtype.kind in "iub":
        x = x.astype(np.float64)
    if saturate:
        largest = float(ml_dtypes.finfo(dtype).max)
        x = np.clip(x, -largest, largest)
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(dtype)


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """Powers of two 2**(code - 127), codes 0..254, 255 is NaN. The sign is ignored (negative inputs
    are undefined); ``round_mode`` picks between the two neighbouring powers of two; out-of-range
    values, infinities and zero clamp to the extreme codes with ``saturate`` and are NaN without."""
    value = np.abs(np.asarray(x, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        mantissa, exponent = np.frexp(value)  # value = mantissa * 2**exponent, mantissa in [0.5, 1)
    below = exponent.astype(np.int64) - 1  # value lies in [2**below, 2**(below + 1))
    if round_mode == "down":
        power = below
    elif round_mode == "up":
        power = below + (mantissa > 0.5)
    else:
        power = below + (mantissa >= 0.75)  # ties (1.5 * 2**below) go up
    code = power + 127
    nan = np.isnan(value)
    infinite = np.isinf(value)
    zero = value == 0
    if saturate:
        code = np.where(infinite, 254, np.clip(code, 0, 254))
        code = np.where(zero, 0, code)
    else:
        nan = nan | infinite | zero | (code < 0) | (code > 254)
    code = np.where(nan, 255, np.clip(code, 0, 255))
    return code.astype(np.uint8).view(E8M0)


def _to_small_int(x: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Floats truncate toward zero (NaN and infinities give 0); every integer keeps its low bits."""
    bits, signed = SMALL_INTS[dtype]
    if is_float(x.dtype):
        with np.errstate(invalid="ignore"):
            finite = np.where(np.isfinite(x), np.trunc(x), 0)
            wide = np.fmod(finite.astype(np.float64), 2.0**bits).astype(np.int64)
    else:
        wide = x.astype(np.int64) if x.dtype != np.uint64 else (x & np.uint64(2**bits - 1)).astype(np.int64)
    low = wide & (2**bits - 1)
    if signed:
        low = np.where(low >= 2 ** (bits - 1), low - 2**bits, low)
    return low.astype(dtype)


def _format_number(value: Any, dtype: np.dtype[Any]) -> str:
    if dtype.kind == "b":
        return "1" if value else "0"
    if not is_float(dtype):
        return str(int(value))
    value = float(value)
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "INF" if value > 0 else "-INF"
    return f"{value:.8g}"


def _to_strings(x: np.ndarray) -> np.ndarray:
    values = x.astype(np.float64) if x.dtype in ML_FLOATS else (x.astype(np.int64) if x.dtype in SMALL_INTS else x)
    out = np.empty(x.shape, dtype=object)
    flat = out.reshape(-1)
    for i, value in enumerate(values.reshape(-1)):
        flat[i] = _format_number(value, x.dtype)
    return out


_SPECIAL = {"inf": np.inf, "+inf": np.inf, "-inf": -np.inf, "nan": np.nan, "+nan": np.nan, "-nan": np.nan}


def _parse_float(text: str) -> float:
    special = _SPECIAL.get(text.strip().lower())
    if special is not None:
        return special
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"Cast: string {text[:40]!r} is not a number") from None


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        value = _parse_float(text)
    if not np.isfinite(value):
        raise ValueError(f"Cast: string {text[:40]!r} is not a finite number; it has no integer value")
    return int(value)


def _parse_strings(x: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Strings read as numbers: float64 for float and boolean targets (``true``/``false`` read as 1/0),
    int64 for integer targets (values beyond 64 bits keep their low bits, as the target then does)."""
    texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in x.reshape(-1)]
    if dtype.kind == "b":
        words = {"true": 1.0, "false": 0.0}
        values = [words[t.strip().lower()] if t.strip().lower() in words else _parse_float(t) for t in texts]
        return np.array(values, dtype=np.float64).reshape(x.shape)
    if is_float(dtype):
        return np.array([_parse_float(t) for t in texts], dtype=np.float64).reshape(x.shape)
    wrapped = [((_parse_int(t) + 2**63) % 2**64) - 2**63 for t in texts]
    return np.array(wrapped, dtype=np.int64).reshape(x.shape)


class QuantizedCast(ElementwiseOp):
    """Cast of an encrypted value: composed into its lookup like any element-wise function, except
    to or from strings, which integers cannot stand for."""

    def encrypted_forward(self, ctx: Any, inputs: Any) -> QValue:
        if "to" in self.attributes:
            target_dtype = element_dtype(self.attributes["to"])
        else:  # CastLike: the (constant) second input gives the type
            target_dtype = np.asarray(inputs[1].data).dtype if inputs[1].is_constant else np.dtype(np.float32)
        if is_string(target_dtype):
            raise QuantizationError(f"{self.where}: a Cast of an encrypted value to strings cannot be computed")
        source = inputs[0]
        if (source.is_per_feature or (source.is_affine and source.floor is None)) \
                and np.dtype(target_dtype) in (np.float32, np.float64):
            # floats cast to float32/64 are the same floats (booleans and small whole numbers too): the value
            # keeps its integers and their mapping (a per-feature input stays per feature, an affine value
            # needs no lookup before the next linear op)
            return source
        return super().encrypted_forward(ctx, inputs)


@OPS.op("Cast", since=1, quantized=QuantizedCast)
def cast_1(x, /, *, to):
    """Cast-1: ``to`` is the element type's name (``"FLOAT"``, ``"INT64"``, ...)."""
    return cast_array(x, element_dtype(to))


@OPS.op("Cast", since=(6, 9, 13), quantized=QuantizedCast)
def cast_6(x, /, *, to):
    return cast_array(x, element_dtype(to))


@OPS.op("Cast", since=(19, 21, 23), quantized=QuantizedCast)
def cast_19(x, /, *, saturate=1, to):
    return cast_array(x, element_dtype(to), saturate)


@OPS.op("Cast", since=(24, 25, 28), quantized=QuantizedCast)
def cast(x, /, *, round_mode="up", saturate=1, to):
    return cast_array(x, element_dtype(to), saturate, round_mode)


@OPS.op("CastLike", since=15, quantized=QuantizedCast)
def cast_like_15(x, target_type, /):
    return cast_array(x, target_type.dtype)


@OPS.op("CastLike", since=(19, 21, 23), quantized=QuantizedCast)
def cast_like_19(x, target_type, /, *, saturate=1):
    return cast_array(x, target_type.dtype, saturate)


@OPS.op("CastLike", since=(24, 25), quantized=QuantizedCast)
def cast_like(x, target_type, /, *, round_mode="up", saturate=1):
    return cast_array(x, target_type.dtype, saturate, round_mode)


class QuantizedDropout(QuantizedOp):
    """Inference Dropout: the data passes through unchanged, the mask is all true (ones of the data's
    type before Dropout-10)."""

    def encrypted_forward(self, ctx, inputs):
        named = self.named_inputs(inputs)
        training, ratio = named.get("training_mode"), named.get("ratio")
        if training is not None and (not training.is_constant or bool(np.asarray(training.data))):
            if not (training.is_constant and ratio is not None and ratio.is_constant
                    and float(np.asarray(ratio.data)) == 0.0):
                raise QuantizationError(f"{self.where}: only inference (training_mode false, or a zero ratio) is "
                                        "supported on encrypted values")
        data = inputs[0]
        rest = [None if v is None else v.data for v in inputs[1:]]
        try:  # the float function on a stand-in: refuses what it refuses, and gives the mask's type
            _, mask = self.call_numpy([np.zeros(data.shape, np.float32)] + rest)
        except ValueError as exc:
            raise QuantizationError(f"{self.where}: {exc}") from exc
        return data, QValue.constant(mask)


def _inference_dropout(data: np.ndarray, mask_dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    return data, np.ones(data.shape, dtype=mask_dtype)


def _check_ratio(ratio: Any) -> float:
    value = float(np.asarray(ratio))
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Dropout: ratio must lie in [0, 1), got {value}")
    return value


@OPS.op("Dropout", since=1, quantized=QuantizedDropout)
def dropout_1(data, /, *, consumed_inputs=None, is_test=0, ratio=0.5):
    """Dropout-1: ``is_test`` nonzero is inference (identity); the mask has the data's type.
    ``consumed_inputs`` is a legacy memory-reuse hint without effect on the result."""
    return dropout_6(data, is_test=is_test, ratio=ratio)


@OPS.op("Dropout", since=6, quantized=QuantizedDropout)
def dropout_6(data, /, *, is_test=0, ratio=0.5):
    """Dropout-6: training (``is_test`` = 0) drops random elements, which only a zero ratio makes
    reproducible; inference passes the data through."""
    if not is_test and _check_ratio(ratio) != 0.0:
        raise ValueError("Dropout with is_test=0 is training-mode dropout, which is random; only inference "
                         "(is_test=1) is supported")
    return _inference_dropout(data, data.dtype)


@OPS.op("Dropout", since=7, quantized=QuantizedDropout)
def dropout_7(data, /, *, ratio=0.5):
    """Dropout-7: always inference (identity); the mask has the data's type."""
    return _inference_dropout(data, data.dtype)


@OPS.op("Dropout", since=10, quantized=QuantizedDropout)
def dropout_10(data, /, *, ratio=0.5):
    return _inference_dropout(data, bool)


@OPS.op("Dropout", since=(12, 13, 22), quantized=QuantizedDropout)
def dropout(data, /, ratio=None, training_mode=None, *, seed=None):
    """Inference unless ``training_mode`` is true. Training drops each element with probability
    ``ratio`` and scales the others by 1 / (1 - ratio): with a ``seed`` the mask is drawn from
    numpy's ``RandomState(seed)`` (as the ONNX reference does), so a seeded node is reproducible."""
    if training_mode is None or not bool(np.asarray(training_mode)):
        return _inference_dropout(data, bool)
    probability = 0.5 if ratio is None else _check_ratio(ratio)
    if probability == 0.0:
        return _inference_dropout(data, bool)
    draws = np.random.RandomState(None if seed is None else int(seed)).uniform(0.0, 1.0, data.shape)
    mask = draws >= probability
    scale = 1.0 / (1.0 - probability)
    return (mask * data * scale).astype(data.dtype), mask
