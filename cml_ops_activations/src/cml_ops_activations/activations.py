"""Element-wise activation functions (quantized by composition into the next table lookup)."""

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ElementwiseOp

from ._opset import OPS
from .chunks import CHUNK, chunked


def _like(x, value):
    """``value`` in ``x``'s dtype; ONNX float attributes are float32, so round through it first."""
    return np.asarray(np.float32(value) if isinstance(value, float) else value).astype(x.dtype)


def _same_type(x, y):
    return np.asarray(y).astype(x.dtype, copy=False)


def _scalar(x, value):
    """``value`` as a scalar of ``x``'s dtype, rounded through float32 like ``_like`` (no array made)."""
    return x.dtype.type(np.float32(value) if isinstance(value, float) else value)


_FAST = (np.dtype(np.float32), np.dtype(np.float64))  # the dtypes the element-wise shortcuts below serve


class ProbabilityOp(ElementwiseOp):
    """Sigmoid: as any element-wise op on the server; a Sigmoid of the model's final scores (with what
    only finishes the outputs after it, e.g. a two-class ``Concat(1 - p, p)``) runs on the client, on
    the decrypted scores (see ``cml_core.quantization.client_tail``)."""

    finishes_on_client = True


@OPS.op("Relu", since=(6, 13, 14), quantized=ElementwiseOp)
def relu(x, /):
    return _same_type(x, np.maximum(x, _scalar(x, 0)))


def relu_into(x, /):
    if x.dtype in _FAST and x.size <= ZEROS_LIMIT and x.flags.c_contiguous:  # zeros laid out like x
        return np.maximum(x, _zeros(x.shape, x.dtype), out=x)
    return np.maximum(x, _scalar(x, 0), out=x)


#: arrays up to this size take their maximum with an array of zeros (numpy's loop for a scalar operand
#: runs at half the speed: 2 us instead of 1 us for 256 x 32 float32)
ZEROS_LIMIT = 1 << 15
_ZEROS: dict[tuple[int, tuple[int, ...], np.dtype], np.ndarray] = {}  # (value, shape, dtype) -> array


def _zeros(shape, dtype):
    """A read-only array of zeros of ``shape`` and ``dtype`` (kept for the next call)."""
    return _constant(0, shape, dtype)


def _ones(shape, dtype):
    """A read-only array of ones of ``shape`` and ``dtype`` (kept for the next call)."""
    return _constant(1, shape, dtype)


def _constant(value, shape, dtype):
    if len(shape) == 1:  # a chunk: the start of one long array
        return _constant(value, (ZEROS_LIMIT, 1), dtype).reshape(-1)[: shape[0]]
    array = _ZEROS.get((value, shape, dtype))
    if array is None:
        if len(_ZEROS) >= 64:
            _ZEROS.clear()
        array = _ZEROS[(value, shape, dtype)] = np.full(shape, value, dtype)
        array.flags.writeable = False
    return array


OPS.attach(relu, inplace=relu_into)


@OPS.op("Relu", since=1, quantized=ElementwiseOp)
def relu_1(x, /, *, consumed_inputs=None):
    return relu(x)


@OPS.op("LeakyRelu", since=(6, 16), quantized=ElementwiseOp)
def leaky_relu(x, /, *, alpha=0.01):
    return _same_type(x, np.where(x >= 0, x, x * _like(x, alpha)))


@OPS.op("LeakyRelu", since=1, quantized=ElementwiseOp)
def leaky_relu_1(x, /, *, alpha=0.01, consumed_inputs=None):
    return leaky_relu(x, alpha=alpha)


@OPS.op("ThresholdedRelu", since=(10, 22), quantized=ElementwiseOp)
def thresholded_relu(x, /, *, alpha=1.0):
    return _same_type(x, np.where(x > _like(x, alpha), x, _like(x, 0)))


@OPS.op("Elu", since=(6, 22), quantized=ElementwiseOp)
def elu(x, /, *, alpha=1.0):
    return _same_type(x, np.where(x >= 0, x, _like(x, alpha) * np.expm1(np.minimum(x, _like(x, 0)))))


@OPS.op("Elu", since=1, quantized=ElementwiseOp)
def elu_1(x, /, *, alpha=1.0, consumed_inputs=None):
    return elu(x, alpha=alpha)


@OPS.op("Celu", since=(12, 28), quantized=ElementwiseOp)
def celu(x, /, *, alpha=1.0):
    a = _like(x, alpha)
    zero = _like(x, 0)
    return _same_type(x, np.maximum(x, zero) + np.minimum(zero, a * np.expm1(np.minimum(x, zero) / a)))


@OPS.op("Selu", since=(6, 22), quantized=ElementwiseOp)
def selu(x, /, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    negative = _like(x, alpha) * np.expm1(np.minimum(x, _like(x, 0)))
    return _same_type(x, _like(x, gamma) * np.where(x > 0, x, negative))


@OPS.op("Selu", since=1, quantized=ElementwiseOp)
def selu_1(x, /, *, alpha=1.6732, consumed_inputs=None, gamma=1.0507):
    """Selu at opset 1: the same function, with the rounded defaults of that version."""
    return selu(x, alpha=alpha, gamma=gamma)


@OPS.op("Sigmoid", since=(6, 13), quantized=ProbabilityOp)
def sigmoid(x, /):
    if x.dtype in _FAST:
        return _logistic(x, np.empty_like(x))
    # stable for large |x|: only exponentials of non-positive numbers
    e = np.exp(-np.abs(x))
    one = _like(x, 1)
    return _same_type(x, np.where(x >= 0, one / (one + e), e / (one + e)))


def _logistic(x, out):
    """``1 / (1 + exp(-x))`` into ``out`` (float32 or float64; ``out`` may be ``x``), a cache-sized chunk at
    a time: no cancellation anywhere, and where ``exp(-x)`` overflows the result is 0, below the smallest
    normal number anyway."""
    one = x.dtype.type(1)

    def step(xs, t):
        np.negative(xs, out=t)
        np.exp(t, out=t)
        t += one
        np.reciprocal(t, out=t)

    with np.errstate(over="ignore"):
        return chunked(x, out, step)


def sigmoid_into(x, /):
    return _logistic(x, x) if x.dtype in _FAST else sigmoid(x)


def silu_into(x, /):
    """``x * sigmoid(x)`` (SiLU, Swish) over ``x``: ``x / (1 + exp(-x))`` a cache-sized chunk at a time, one
    rounding fewer than the product of the two ops and no array for the gate."""
    if x.dtype not in _FAST:
        return _same_type(x, x * sigmoid(x))
    one = x.dtype.type(1)
    gate = np.empty(min(x.size, CHUNK), x.dtype)

    def step(xs, result):
        t = gate[: xs.size]
        np.negative(xs, out=t)
        np.exp(t, out=t)
        t += one
        np.divide(xs, t, out=result)

    with np.errstate(over="ignore", invalid="ignore"):
        return chunked(x, x, step)


OPS.attach(sigmoid, inplace=sigmoid_into, gated=silu_into)


@OPS.op("Sigmoid", since=1, quantized=ProbabilityOp)
def sigmoid_1(x, /, *, consumed_inputs=None):
    return sigmoid(x)


@OPS.op("HardSigmoid", since=(6, 22), quantized=ElementwiseOp)
def hard_sigmoid(x, /, *, alpha=0.2, beta=0.5):
    if x.dtype in _FAST:
        return _hard_gate(x, alpha, beta, np.empty_like(x))
    return _same_type(x, np.clip(x * _like(x, alpha) + _like(x, beta), _like(x, 0), _like(x, 1)))


def _hard_gate(x, alpha, beta, out):
    """``max(0, min(1, alpha * x + beta))`` into ``out`` (which may be ``x``)."""
    np.multiply(x, _scalar(x, alpha), out=out)
    out += _scalar(x, beta)
    if out.dtype in _FAST and out.size <= ZEROS_LIMIT and out.flags.c_contiguous:  # bounds as arrays (relu_into)
        np.maximum(out, _zeros(out.shape, out.dtype), out=out)
        return np.minimum(out, _ones(out.shape, out.dtype), out=out)
    np.maximum(out, _scalar(x, 0), out=out)
    return np.minimum(out, _scalar(x, 1), out=out)


def hard_sigmoid_into(x, /, *, alpha=0.2, beta=0.5):
    return _hard_gate(x, alpha, beta, x) if x.dtype in _FAST else hard_sigmoid(x, alpha=alpha, beta=beta)


def hard_sigmoid_gated(x, /, *, alpha=0.2, beta=0.5):
    """``x * hard_sigmoid(x)`` over ``x`` (HardSwish when ``alpha`` is 1/6), a cache-sized chunk at a time."""
    if x.dtype not in _FAST:
        return _same_type(x, x * hard_sigmoid(x, alpha=alpha, beta=beta))
    gate = np.empty(min(x.size, CHUNK), x.dtype)

    def step(xs, result):
        np.multiply(xs, _hard_gate(xs, alpha, beta, gate[: xs.size]), out=result)

    return chunked(x, x, step)


OPS.attach(hard_sigmoid, inplace=hard_sigmoid_into, gated=hard_sigmoid_gated)


@OPS.op("HardSigmoid", since=1, quantized=ElementwiseOp)
def hard_sigmoid_1(x, /, *, alpha=0.2, beta=0.5, consumed_inputs=None):
    return hard_sigmoid(x, alpha=alpha, beta=beta)


@OPS.op("Softplus", since=(1, 22), quantized=ElementwiseOp)
def softplus(x, /):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), no overflow
    return _same_type(x, np.maximum(x, _like(x, 0)) + np.log1p(np.exp(-np.abs(x))))


@OPS.op("Tanh", since=(6, 13), quantized=ElementwiseOp)
def tanh(x, /):
    return _same_type(x, np.tanh(x))


def tanh_into(x, /):
    return np.tanh(x, out=x) if x.dtype in _FAST else tanh(x)


OPS.attach(tanh, inplace=tanh_into)


@OPS.op("Tanh", since=1, quantized=ElementwiseOp)
def tanh_1(x, /, *, consumed_inputs=None):
    return tanh(x)


@OPS.op("Softsign", since=(1, 22), quantized=ElementwiseOp)
def softsign(x, /):
    return _same_type(x, x / (_like(x, 1) + np.abs(x)))


@OPS.op("HardSwish", since=(14, 22), quantized=ElementwiseOp)
def hard_swish(x, /):
    if x.dtype in _FAST:
        return _hard_swish(x, np.empty_like(x))
    gate = np.clip(x * _like(x, 1 / 6) + _like(x, 0.5), _like(x, 0), _like(x, 1))
    return _same_type(x, x * gate)


def _hard_swish(x, out):
    """``x * max(0, min(1, x / 6 + 1 / 2))`` into ``out`` (which may be ``x``), a cache-sized chunk at a time."""
    gate = np.empty(min(x.size, CHUNK), x.dtype)

    def step(xs, result):
        g = _hard_gate(xs, 1 / 6, 0.5, gate[: xs.size])
        np.multiply(xs, g, out=result)

    return chunked(x, out, step)


def hard_swish_into(x, /):
    return _hard_swish(x, x) if x.dtype in _FAST else hard_swish(x)


OPS.attach(hard_swish, inplace=hard_swish_into)


@OPS.op("Mish", since=(18, 22), quantized=ElementwiseOp)
def mish(x, /):
    return _same_type(x, x * np.tanh(softplus(x)))


@OPS.op("Gelu", since=20, quantized=ElementwiseOp)
def gelu(x, /, *, approximate="none"):
    if x.dtype == np.float32 and approximate in ("none", "tanh"):
        return _gelu_float32(x, approximate, None)
    return _gelu_float64(x, approximate)


def gelu_into(x, /, *, approximate="none"):
    if x.dtype == np.float32 and approximate in ("none", "tanh"):
        return _gelu_float32(x, approximate, x)
    return gelu(x, approximate=approximate)


OPS.attach(gelu, inplace=gelu_into)


def _gelu_float32(x, approximate, out):
    """Gelu of a float32 array from a table of its gate (``tables``), the inputs below the table computed
    apart in float64 (where the output is tiny, its relative accuracy comes from there)."""
    from . import tables

    table = tables.normal_cdf() if approximate == "none" else tables.tanh_gate()
    return tables.gated(x, table, lambda v: _gelu_float64(v, approximate), out)


def _gelu_float64(x, approximate):
    # in float64, and without forming 1 + erf(.) or 1 + tanh(.): for x << 0 that sum cancels, and the
    # tiny output lost all its digits (float32 Gelu(-5.5, tanh) was off by 6e-9 on -1.04e-7)
    x64 = np.asarray(x, np.float64)
    if approximate == "tanh":
        inner = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
        # 0.5 * (1 + tanh(u)) = sigmoid(2u) = exp(-log(1 + exp(-2u)))
        return _same_type(x, x64 * np.exp(-np.logaddexp(0.0, -2 * inner)))
    if approximate != "none":
        raise ValueError(f"Gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    from .math import _erfc

    return _same_type(x, 0.5 * x64 * _erfc(-x64 / np.sqrt(2)))  # 1 + erf(z) = erfc(-z)


@OPS.op("PRelu", since=(7, 9, 16), quantized=ElementwiseOp)
def prelu(x, slope, /):
    return _same_type(x, np.where(x < 0, x * slope, x))


def _channel_slope(x, slope):
    """The slope of PRelu before opset 7: one value shared by all; numpy's broadcasting when it reaches
    ``x``'s shape (as onnxruntime and ONNX's reference evaluator read it: a (2, 1) slope of a 2x2 input
    follows the rows); else one per channel (axis 1) when its size is the channel count."""
    slope = np.asarray(slope)
    if slope.size == 1:
        return slope.reshape(())
    try:
        broadcasts = np.broadcast_shapes(slope.shape, x.shape) == x.shape
    except ValueError:
        broadcasts = False
    if not broadcasts and x.ndim >= 2 and slope.size == x.shape[1]:
        return slope.reshape((-1,) + (1,) * (x.ndim - 2))
    return slope


class QuantizedLegacyPRelu(ElementwiseOp):
    """PRelu before opset 7: its slope may follow the channel axis rather than numpy's broadcasting, which
    the multi-input lookup of two encrypted operands would apply; an encrypted slope is refused."""

    def encrypted_forward(self, ctx, inputs):
        if len(inputs) > 1 and inputs[1] is not None and not inputs[1].is_constant:
            raise QuantizationError(
                f"{self.where}: the slope of PRelu before opset 7 must be a constant (a weight) to be quantized; "
                "export the model at opset 7 or later, where the slope broadcasts as numpy does")
        return super().encrypted_forward(ctx, inputs)


@OPS.op("PRelu", since=6, quantized=QuantizedLegacyPRelu)
def prelu_6(x, slope, /):
    return prelu(x, _channel_slope(x, slope))


@OPS.op("PRelu", since=1, quantized=QuantizedLegacyPRelu)
def prelu_1(x, slope, /, *, consumed_inputs=None):
    return prelu(x, _channel_slope(x, slope))


@OPS.op("Shrink", since=9, quantized=ElementwiseOp)
def shrink(x, /, *, bias=0.0, lambd=0.5):
    b, lam = _like(x, bias), _like(x, lambd)
    return _same_type(x, np.where(x < -lam, x + b, np.where(x > lam, x - b, _like(x, 0))))
