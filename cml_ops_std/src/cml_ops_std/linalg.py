"""Matrix products and convolution."""

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import LinearOp, backend

from ._opset import OPS
from .conv import check_conv, conv_attributes, conv_nd, prepare_conv
from .quantized import QuantizedGemm, QuantizedMatMul


def _rows_times(a, matrix):
    """``a @ matrix`` for a 2-D ``matrix``: the rows of every leading axis of ``a`` in one product (numpy's
    batched product would loop over them, element by element when ``a`` is a strided view)."""
    if a.ndim <= 2:
        return _product(a, matrix)
    return _product(a.reshape(-1, a.shape[-1]), matrix).reshape(*a.shape[:-1], matrix.shape[-1])


#: a product of at most this many rows with a matrix of at least ``LARGE_MATRIX`` values runs a row at a time
FEW_ROWS = 3
LARGE_MATRIX = 1 << 16


def _product(a, matrix):
    """``a @ matrix`` for a 2-D ``a`` and ``matrix``: two or three rows against a large matrix one row at a
    time (a matrix-vector product each): for so few rows, BLAS's matrix product still packs the whole
    matrix (two rows against 1024 x 1000 float32: 532 us, against 2 x 143 us a row at a time)."""
    if not 1 < a.shape[0] <= FEW_ROWS or matrix.size < LARGE_MATRIX:
        return np.matmul(a, matrix)
    return _by_rows(a, matrix)


def _by_rows(a, matrix):
    """``a @ matrix`` a row of ``a`` at a time (see ``_product``)."""
    y = np.empty((a.shape[0], matrix.shape[1]), np.result_type(a, matrix))
    for row, out in zip(a, y):
        np.matmul(row, matrix, out=out)
    return y


def _float_matrix(static):
    """The constant 2-D float32/float64 matrix a ``StaticInput`` holds, else ``None``."""
    value = None if static is None else static.value
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.dtype not in (np.float32, np.float64):
        return None
    return value


def prepare_matmul(inputs, attributes):
    """MatMul's load-time preparation: with a constant 2-D float B, the products run against B laid out
    C-contiguous once, every leading axis of A in one product."""
    matrix = _float_matrix(inputs[1])
    if matrix is None:
        return None
    matrix = np.ascontiguousarray(matrix)

    def matmul_constant(a, b, /):
        if a.dtype != matrix.dtype or a.ndim < 2 or a.shape[-1] != matrix.shape[0]:
            return matmul(a, matrix)
        return _rows_times(a, matrix)

    return matmul_constant


def prepare_gemm(inputs, attributes):
    """Gemm's load-time preparation: with a constant float B (and C), B is transposed once into the
    C-contiguous matrix the product reads (a transposed operand costs numpy a copy per call) and
    ``beta * C`` is computed once."""
    matrix = _float_matrix(inputs[1])
    c = inputs[2] if len(inputs) > 2 else None
    if matrix is None or (c is not None and c.value is None) or attributes.get("broadcast"):
        return None
    alpha, beta, trans_a = attributes["alpha"], attributes["beta"], attributes["transA"]
    matrix = np.ascontiguousarray(matrix.T if attributes["transB"] else matrix)
    scale = np.asarray(alpha, dtype=matrix.dtype)
    addend = None
    if c is not None and beta != 0:
        addend = c.value if beta == 1.0 else c.value * np.asarray(beta, dtype=c.value.dtype)
    # a row of a few biases, added to every row of the product: as a whole matrix per batch size, the
    # addition runs over one contiguous block (a broadcast row costs numpy an inner loop per row)
    row = addend is not None and addend.shape in ((matrix.shape[1],), (1, matrix.shape[1])) \
        and addend.size <= ROW_BIAS_LIMIT
    tiled: dict[int, np.ndarray] = {}
    large = matrix.size >= LARGE_MATRIX

    def gemm_constant(a, b, c=None, /):
        if a.dtype != matrix.dtype or a.ndim != 2:
            return gemm(a, matrix, addend, transA=trans_a, alpha=alpha)
        a = a.T if trans_a else a
        # np.dot: the same product of 2-D arrays as np.matmul, for less overhead per call (2.6 against 2.9 us
        # for 256 x 32 by 32 x 10 float32)
        y = _by_rows(a, matrix) if large and 1 < a.shape[0] <= FEW_ROWS else np.dot(a, matrix)
        if alpha != 1.0:
            y *= scale
        if addend is not None:
            if row and 1 < y.shape[0] <= ROW_BIAS_BATCH:
                full = tiled.get(y.shape[0])
                if full is None:
                    if len(tiled) >= 4:
                        tiled.clear()
                    full = tiled[y.shape[0]] = np.ascontiguousarray(np.broadcast_to(addend.reshape(-1), y.shape))
                y += full
            else:
                y += addend
        return y

    return gemm_constant


#: a Gemm bias of at most this many values is added as a matrix of the product's shape (``prepare_gemm``),
#: for products of at most ``ROW_BIAS_BATCH`` rows
ROW_BIAS_LIMIT = 256
ROW_BIAS_BATCH = 4096


@OPS.op("MatMul", since=(1, 9, 13), quantized=QuantizedMatMul, prepare=prepare_matmul)
def matmul(a, b, /):
    out = _rows_times(a, b) if np.ndim(b) == 2 and a.ndim > 2 and a.shape[-1] == b.shape[0] else np.matmul(a, b)
    # ml_dtypes' bfloat16 multiplies into float32: the result keeps the inputs' type
    return out if out.dtype == a.dtype else out.astype(a.dtype)


@OPS.op("Gemm", since=(11, 13), quantized=QuantizedGemm, prepare=prepare_gemm)
def gemm(a, b, /, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):  # noqa: N803  (ONNX names)
    a = a.T if transA else a
    b = b.T if transB else b
    y = np.matmul(a, b)  # a fresh array: scaled and biased in place
    if alpha != 1.0:
        y *= np.asarray(alpha, dtype=y.dtype)
    if c is not None and beta != 0:
        y += c if beta == 1.0 else c * np.asarray(beta, dtype=c.dtype)
    return y.astype(a.dtype, copy=False)


@OPS.op("Gemm", since=(7, 9), quantized=QuantizedGemm, prepare=prepare_gemm)
def gemm_7(a, b, c, /, *, alpha=1.0, beta=1.0, transA=0, transB=0):  # noqa: N803  (ONNX names)
    """Gemm at opsets 7 and 9: C is a required input, broadcast to the product's shape."""
    return gemm(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB)


@OPS.op("Gemm", since=(1, 6), quantized=QuantizedGemm)
def gemm_1(a, b, c, /, *, alpha=1.0, beta=1.0, broadcast=0, transA=0, transB=0):  # noqa: N803  (ONNX names)
    """Gemm before opset 7: C has the product's shape unless ``broadcast`` lets it broadcast."""
    if not broadcast:
        rows = a.shape[1] if transA else a.shape[0]
        cols = b.shape[0] if transB else b.shape[1]
        if tuple(np.shape(c)) != (rows, cols):
            raise ValueError(f"C of shape {tuple(np.shape(c))} is not the product's shape {(rows, cols)} "
                             "and broadcast=0")
    return gemm(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB)


class QuantizedConv(LinearOp):
    """Conv of an encrypted input with constant weights: an integer convolution, bias folded in.

    Subclasses change ``geometry`` and ``clear`` (ConvTranspose).
    """

    weight_inputs = ("w",)

    def geometry(self, x_shape, w_shape):
        """(strides, explicit pads, dilations) from the node's attributes."""
        a = self.attributes
        _, strides, dilations, pads = conv_attributes(x_shape, w_shape, a.get("auto_pad", "NOTSET"), a.get("dilations"),
                                                      a.get("kernel_shape"), a.get("pads"), a.get("strides"))
        return strides, pads, dilations

    def clear(self, data, weight, bias, *, strides, pads, dilations, group):
        return conv_nd(data, weight, bias, strides=strides, pads=pads, dilations=dilations, group=group)

    def encrypted_forward(self, ctx, inputs):
        x, w = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) > 2 else None
        if not w.is_constant or (b is not None and not b.is_constant):
            raise QuantizationError(f"{self.where}: weights and bias must be constants")
        q = ctx.requantize(x)
        wq, w_scale = self.weights(ctx, "W", w.data, w.name, channel_axes=(0,))  # per output channel
        scale = q.scale * (w_scale if np.size(w_scale) == 1 else np.asarray(w_scale).reshape(-1))
        bias = self.integer_bias("B", None if b is None else b.data, scale)
        float_bias = None
        channels = (1, -1) + (1,) * (len(q.shape) - 2)
        if b is not None and bias is None:  # too large for the accumulator's resolution: keep it in float
            float_bias = np.asarray(b.data, dtype=np.float64).reshape(channels)
        strides, pads, dilations = self.geometry(q.shape, wq.shape)
        acc = backend.conv(self.centered(q), wq, bias, pads=pads, strides=strides, dilations=dilations,
                           group=int(self.attributes.get("group", 1)), clear_conv=self.clear)
        return self.accumulator(ctx, acc, scale if np.size(scale) == 1 else np.reshape(scale, channels), float_bias)


@OPS.op("Conv", since=(1, 11, 22), quantized=QuantizedConv, validate=check_conv, prepare=prepare_conv)
def conv(x, w, /, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None):
    _, strides, dilations, pads = conv_attributes(x.shape, w.shape, auto_pad, dilations, kernel_shape, pads, strides)
    return conv_nd(x, w, b, strides=strides, pads=pads, dilations=dilations, group=group).astype(x.dtype, copy=False)
