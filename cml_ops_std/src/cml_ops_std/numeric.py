"""Numeric ops: Einsum, Det, bitwise ops, BitCast, signal processing (DFT, STFT, windows, mel filters).

Floating-point results are computed in float64 and rounded once to the op's output type.
Einsum's quantized twin is an integer product (a linear op in each encrypted operand); bitwise ops
on integers compose into lookups; the others run only on constants.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable, Sequence
from typing import Any

import ml_dtypes
import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ConstantOnlyOp, ElementwiseOp, LinearOp, QValue, backend
from cml_core.quantization.context import QuantContext

from ._opset import OPS
from .conversion import SMALL_INTS, element_dtype, is_float

# -- Einsum -------------------------------------------------------------------------------------

Label = Any  # a letter, or ("...", k) for the k-th dimension an ellipsis stands for


def parse_einsum(equation: str, ranks: Sequence[int]) -> tuple[list[list[Label]], list[Label]]:
    """The labels of each operand's axes and of the output's (explicit or implicit).

    An ellipsis stands for the same number of dimensions in every term (a size 1 broadcasts); in
    implicit mode the output is the ellipsis dimensions followed by the letters that appear
    exactly once, in ASCII order.

    Raises:
        ValueError: a malformed equation, a term whose letters do not match its operand's rank,
            or an output letter that no input has.
    """
    text = equation.replace(" ", "")
    if text.count("->") > 1:
        raise ValueError(f"Einsum: equation {equation!r} has more than one '->'")
    lhs, arrow, rhs = text.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"Einsum: equation {equation!r} has {len(terms)} input term(s) for {len(ranks)} input(s)")
    for term in terms + ([rhs] if arrow else []):
        rest = term.replace("...", "", 1)
        if any(c not in string.ascii_letters for c in rest):
            raise ValueError(f"Einsum: term {term!r} of {equation!r} may hold only letters and one '...'")
    ellipsis_ranks = set()
    for term, rank in zip(terms, ranks):
        letters = len(term.replace("...", ""))
        if "..." in term:
            if rank < letters:
                raise ValueError(f"Einsum: term {term!r} names {letters} axes, its input has rank {rank}")
            ellipsis_ranks.add(rank - letters)
        elif letters != rank:
            raise ValueError(f"Einsum: term {term!r} names {letters} axes, its input has rank {rank}")
    if len(ellipsis_ranks) > 1:
        raise ValueError(f"Einsum: every ellipsis of {equation!r} must stand for the same number of dimensions, "
                         f"got {sorted(ellipsis_ranks)}")
    ellipsis_rank = ellipsis_ranks.pop() if ellipsis_ranks else 0

    def expand(term: str, rank: int | None) -> list[Label]:
        if "..." not in term:
            return list(term)
        before, _, after = term.partition("...")
        count = ellipsis_rank if rank is None else rank - len(before) - len(after)
        return list(before) + [("...", k) for k in range(ellipsis_rank - count, ellipsis_rank)] + list(after)

    inputs = [expand(term, rank) for term, rank in zip(terms, ranks)]
    if arrow:
        if len(set(rhs.replace("...", ""))) != len(rhs.replace("...", "")):
            raise ValueError(f"Einsum: output term {rhs!r} repeats a letter")
        output = expand(rhs, None)
        known = {label for labels in inputs for label in labels}
        missing = [label for label in output if isinstance(label, str) and label not in known]
        if missing:
            raise ValueError(f"Einsum: output letter(s) {missing} of {equation!r} appear in no input")
        if "..." not in rhs and ellipsis_rank:
            raise ValueError(f"Einsum: {equation!r} has ellipsis inputs but no ellipsis in its output")
    else:
        counts: dict[str, int] = {}
        for labels in inputs:
            for label in labels:
                if isinstance(label, str):
                    counts[label] = counts.get(label, 0) + 1
        output = [("...", k) for k in range(ellipsis_rank)] + sorted(c for c, n in counts.items() if n == 1)
    return inputs, output


def _label_sizes(operands: Sequence[Any], labels: Sequence[Sequence[Label]]) -> dict[Label, int]:
    sizes: dict[Label, int] = {}
    for operand, axes in zip(operands, labels):
        for label, size in zip(axes, operand.shape):
            known = sizes.get(label, 1)
            if size != 1 and known != 1 and size != known:
                raise ValueError(f"Einsum: dimension {label!r} is {known} in one place and {size} in another")
            sizes[label] = max(known, size)
    return sizes


def _take_diagonals(operand: Any, labels: list[Label]) -> tuple[Any, list[Label]]:
    """Repeated labels of one operand reduced to one axis (the diagonal), with products and sums only."""
    labels = list(labels)
    while len(set(labels)) != len(labels):
        first = next(i for i, label in enumerate(labels) if labels.index(label) != i)
        keep = labels.index(labels[first])
        size = operand.shape[keep]
        shape = [1] * len(labels)
        shape[keep] = shape[first] = size
        operand = np.sum(operand * np.eye(size, dtype=np.int64).reshape(shape), axis=first)
        del labels[first]
    return operand, labels


#: a batched matrix product of the operands folded so far and operand ``index``: ``(index, a, b) -> a @ b``
Product = Callable[[int, Any, Any], Any]


def integer_einsum(equation: str, operands: Sequence[Any], product: Product | None = None) -> Any:
    """``np.einsum(equation, *operands)`` built from products, sums, transposes and matrix products
    (what an FHE tracer supports): diagonals by a 0/1 mask, then the operands folded pairwise as
    batched matrix products, each by ``product`` (default ``np.matmul``)."""
    inputs, output = parse_einsum(equation, [len(o.shape) for o in operands])
    sizes = _label_sizes(operands, inputs)
    terms = [_take_diagonals(o, labels) for o, labels in zip(operands, inputs)]
    result, labels = terms[0]
    for index, (operand, other) in enumerate(terms[1:], start=1):
        later = set(output) | {label for _, ls in terms[index + 1:] for label in ls}
        result, labels = _sum_unused(result, labels, later | set(other))
        operand, other = _sum_unused(operand, other, later | set(labels))
        matmul = functools.partial(product, index) if product is not None else np.matmul
        result, labels = _contract(result, labels, operand, other, later, sizes, matmul)
    result, labels = _sum_unused(result, labels, set(output))
    order = [labels.index(label) for label in output]
    result = np.transpose(result, order) if order != list(range(len(order))) else result
    target = tuple(sizes[label] for label in output)
    return backend.broadcast(result, target) if tuple(result.shape) != target else result


def _sum_unused(operand: Any, labels: list[Label], needed: set[Label]) -> tuple[Any, list[Label]]:
    unused = tuple(i for i, label in enumerate(labels) if label not in needed)
    if not unused:
        return operand, labels
    return np.sum(operand, axis=unused), [label for label in labels if label in needed]


def _contract(a: Any, la: list[Label], b: Any, lb: list[Label], later: set[Label],
              sizes: dict[Label, int], matmul: Callable[[Any, Any], Any]) -> tuple[Any, list[Label]]:
    """The product of two operands summed over their shared labels that nothing later needs."""
    shared = [label for label in la if label in lb]
    batch = [label for label in shared if label in later]
    summed = [label for label in shared if label not in later]
    left = [label for label in la if label not in lb]
    right = [label for label in lb if label not in la]

    def arranged(x: Any, labels: list[Label], order: list[Label], dims: list[Label]) -> Any:
        x = np.transpose(x, [labels.index(label) for label in order]) if len(order) > 1 else x
        full = tuple(sizes[label] if label in dims else x.shape[i] for i, label in enumerate(order))
        return backend.broadcast(x, full) if tuple(x.shape) != full else x

    a = arranged(a, la, batch + left + summed, batch + summed)
    b = arranged(b, lb, batch + summed + right, batch + summed)
    n_batch = int(np.prod([sizes[label] for label in batch], dtype=np.int64))
    n_left = int(np.prod(a.shape[len(batch):len(batch) + len(left)], dtype=np.int64))
    n_sum = int(np.prod([sizes[label] for label in summed], dtype=np.int64))
    n_right = int(np.prod(b.shape[len(batch) + len(summed):], dtype=np.int64))
    product = matmul(a.reshape((n_batch, n_left, n_sum)), b.reshape((n_batch, n_sum, n_right)))
    shape = tuple(sizes[label] for label in batch) + tuple(a.shape[len(batch):len(batch) + len(left)]) \
        + tuple(b.shape[len(batch) + len(summed):])
    return product.reshape(shape), batch + left + right


def _numpy_equation(inputs: list[list[Label]], output: list[Label]) -> str:
    def text(labels: list[Label]) -> str:
        letters = "".join(label for label in labels if isinstance(label, str))
        if len(letters) == len(labels):
            return letters
        start = next(i for i, label in enumerate(labels) if not isinstance(label, str))
        return "".join(labels[:start]) + "..." + letters[start:]

    return ",".join(text(labels) for labels in inputs) + "->" + text(output)


class QuantizedEinsum(LinearOp):
    """Einsum in integers: each encrypted operand requantized, each constant one quantized as a
    weight; the result is their integer einsum, with the product of the scales. Linear in each
    encrypted operand; two encrypted operands multiply like MatMul's."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        factors = []
        scale = 1.0
        for index, value in enumerate(inputs):
            assert value is not None
            if value.is_constant:
                if not is_float(np.asarray(value.data).dtype):
                    raise QuantizationError(f"{self.where}: Einsum of integer tensors cannot take an encrypted operand")
                data, s = self.weights(ctx, f"input {index}", np.asarray(value.data), value.name)
            else:
                q = ctx.requantize(value)
                data, s = self.centered(q), q.scale
            if np.size(s) != 1:
                raise QuantizationError(f"{self.where}: Einsum needs one scale per operand")
            factors.append(data)
            scale *= float(s)
        encrypted = [value is not None and not value.is_constant for value in inputs]
        output = self.bound.node.output[0]

        def product(index: int, a: Any, b: Any) -> Any:
            if any(encrypted[:index]) and encrypted[index]:
                return ctx.encrypted_matmul(a, b, f"{output} (product {index})")
            return np.matmul(a, b)

        return self.accumulator(ctx, integer_einsum(self.attributes["equation"], factors, product), scale)


@OPS.op("Einsum", since=(12, 28), quantized=QuantizedEinsum)
def einsum(*inputs, equation):
    """Einstein summation: explicit or implicit output, ellipsis broadcasting, repeated letters
    (diagonals). Floats are summed in float64 and rounded once; integers wrap in their own type."""
    if not inputs:
        raise ValueError("Einsum needs at least one input")
    dtype = inputs[0].dtype
    if any(x.dtype != dtype for x in inputs):
        raise ValueError(f"Einsum: inputs must share one type, got {[str(x.dtype) for x in inputs]}")
    labels, output = parse_einsum(equation, [x.ndim for x in inputs])
    _label_sizes(inputs, labels)
    wide = [x.astype(np.float64) if is_float(dtype) else x for x in inputs]
    result = np.einsum(_numpy_equation(labels, output), *wide)
    return np.asarray(result).astype(dtype)


# -- Det ----------------------------------------------------------------------------------------


@OPS.op("Det", since=(11, 22), quantized=ConstantOnlyOp)
def det(x, /):
    """Determinant of each square matrix in the last two axes."""
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"Det needs square matrices in the last two axes, got shape {x.shape}")
    if x.shape[-1] == 0:
        return np.ones(x.shape[:-2], dtype=x.dtype)
    return np.asarray(np.linalg.det(x.astype(np.float64))).astype(x.dtype)


# -- bitwise ------------------------------------------------------------------------------------


def _integers(op: str, *arrays: np.ndarray) -> None:
    for x in arrays:
        if x.dtype.kind not in "iu":
            raise ValueError(f"{op} works on integer tensors, got {x.dtype}")
    if len({x.dtype for x in arrays}) > 1:
        raise ValueError(f"{op}: inputs must share one type, got {[str(x.dtype) for x in arrays]}")


@OPS.op("BitwiseAnd", since=18, quantized=ElementwiseOp)
def bitwise_and(a, b, /):
    _integers("BitwiseAnd", a, b)
    return np.bitwise_and(a, b)


@OPS.op("BitwiseOr", since=18, quantized=ElementwiseOp)
def bitwise_or(a, b, /):
    _integers("BitwiseOr", a, b)
    return np.bitwise_or(a, b)


@OPS.op("BitwiseXor", since=18, quantized=ElementwiseOp)
def bitwise_xor(a, b, /):
    _integers("BitwiseXor", a, b)
    return np.bitwise_xor(a, b)


@OPS.op("BitwiseNot", since=18, quantized=ElementwiseOp)
def bitwise_not(x, /):
    _integers("BitwiseNot", x)
    return np.invert(x)


# -- BitCast ------------------------------------------------------------------------------------


def _bit_width(dtype: np.dtype[Any]) -> int:
    if dtype in SMALL_INTS:
        return SMALL_INTS[dtype][0]
    if dtype == np.dtype(ml_dtypes.float4_e2m1fn):
        return 4
    return dtype.itemsize * 8


@OPS.op("BitCast", since=26, quantized=ConstantOnlyOp)
def bit_cast(input, /, *, to):  # noqa: A002  (the ONNX input's name)
    """The same bits read as another type of the same width (little endian)."""
    target = element_dtype(to)
    if target.kind in "OUS" or input.dtype.kind in "OUS":
        raise ValueError("BitCast does not apply to strings")
    if _bit_width(target) != _bit_width(input.dtype):
        raise ValueError(f"BitCast: {input.dtype} has {_bit_width(input.dtype)} bits, {target} has "
                         f"{_bit_width(target)}; the widths must be equal")
    data = np.array(input, dtype=input.dtype.newbyteorder("<"), order="C").reshape(-1)
    if target == np.bool_:
        return (data.view(np.uint8) != 0).reshape(input.shape)
    return data.view(target).reshape(input.shape)


# -- windows and mel filters --------------------------------------------------------------------


def _window_points(size: Any, periodic: int) -> tuple[np.ndarray, float]:
    n = int(np.asarray(size))
    if n < 0:
        raise ValueError(f"window size must be non-negative, got {n}")
    return np.arange(n, dtype=np.float64), float(n if periodic else n - 1)


def _window_output(values: np.ndarray, output_datatype: int) -> np.ndarray:
    dtype = element_dtype(output_datatype)
    if not (is_float(dtype) or dtype.kind in "iu"):
        raise ValueError(f"window output_datatype must be a number type, got {dtype}")
    with np.errstate(invalid="ignore"):
        return np.trunc(values).astype(dtype) if dtype.kind in "iu" else values.astype(dtype)


def _cosine_window(size: Any, periodic: int, output_datatype: int, coefficients: Sequence[float]) -> np.ndarray:
    """sum_k (-1)**k * a_k * cos(2 pi k n / N), N = size (periodic) or size - 1 (symmetric)."""
    points, period = _window_points(size, periodic)
    with np.errstate(invalid="ignore", divide="ignore"):
        phase = 2 * np.pi * points / period
        values = sum(((-1) ** k) * a * np.cos(k * phase) for k, a in enumerate(coefficients))
    return _window_output(np.asarray(values, dtype=np.float64).reshape(points.shape), output_datatype)


@OPS.op("HannWindow", since=17, quantized=ConstantOnlyOp)
def hann_window(size, /, *, output_datatype=1, periodic=1):
    return _cosine_window(size, periodic, output_datatype, (0.5, 0.5))


@OPS.op("HammingWindow", since=17, quantized=ConstantOnlyOp)
def hamming_window(size, /, *, output_datatype=1, periodic=1):
    return _cosine_window(size, periodic, output_datatype, (25 / 46, 21 / 46))


@OPS.op("BlackmanWindow", since=17, quantized=ConstantOnlyOp)
def blackman_window(size, /, *, output_datatype=1, periodic=1):
    return _cosine_window(size, periodic, output_datatype, (0.42, 0.5, 0.08))


@OPS.op("MelWeightMatrix", since=17, quantized=ConstantOnlyOp)
def mel_weight_matrix(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, /, *,
                      output_datatype=1):
    """Triangular filters of peak 1, spaced evenly on the mel scale mel(f) = 2595 log10(1 + f / 700),
    over the one-sided spectrum's dft_length // 2 + 1 bins: shape [bins, num_mel_bins]. The band
    edges are num_mel_bins + 2 points from lower_edge_hertz in steps of (high - low) / (num_mel_bins + 2)
    on the mel scale, each mapped to the spectrum bin floor((dft_length + 1) * f / sample_rate)."""
    mel_bins, length, rate = (int(np.asarray(v)) for v in (num_mel_bins, dft_length, sample_rate))
    if mel_bins < 0 or length <= 0 or rate <= 0:
        raise ValueError(f"MelWeightMatrix: num_mel_bins {mel_bins}, dft_length {length} and sample_rate {rate} "
                         "must be positive")
    spectrum_bins = length // 2 + 1
    low, high = (2595 * np.log10(1 + float(np.asarray(f, dtype=np.float64)) / 700)
                 for f in (lower_edge_hertz, upper_edge_hertz))
    step = (high - low) / (mel_bins + 2)
    mels = low + step * np.arange(mel_bins + 2)
    hertz = 700 * (10 ** (mels / 2595) - 1)
    edges = np.floor((length + 1) * hertz / rate).astype(np.int64)
    if mel_bins and (edges.min() < 0 or edges.max() >= spectrum_bins):
        raise ValueError(f"MelWeightMatrix: the bands reach spectrum bins {edges.min()}..{edges.max()}, outside the "
                         f"{spectrum_bins} bins of a {length}-point DFT (keep the edges within [0, sample_rate / 2])")
    weights = np.zeros((spectrum_bins, mel_bins), dtype=np.float64)
    for band in range(mel_bins):
        left, centre, right = edges[band], edges[band + 1], edges[band + 2]
        if centre == left:
            weights[centre, band] = 1.0
        else:
            rows = np.arange(left, centre + 1)
            weights[rows, band] = (rows - left) / (centre - left)
        if right > centre:
            rows = np.arange(centre, right)
            weights[rows, band] = (right - rows) / (right - centre)
    return _window_output(weights, output_datatype)


# -- DFT and STFT -------------------------------------------------------------------------------


def _complex_signal(x: np.ndarray, op: str) -> np.ndarray:
    """The last axis (1: real, 2: real and imaginary parts) as complex128 values."""
    if x.ndim < 2 or x.shape[-1] not in (1, 2):
        raise ValueError(f"{op}: the last axis holds real (1) or real and imaginary (2) parts, got shape {x.shape}")
    wide = x.astype(np.float64)
    return wide[..., 0] + 1j * wide[..., 1] if x.shape[-1] == 2 else wide[..., 0].astype(np.complex128)


def _as_parts(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    return np.stack([values.real, values.imag], axis=-1).astype(dtype)


def _scalar(value: Any, what: str) -> int:
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"{what} must be a scalar, got shape {array.shape}")
    return int(array.reshape(-1)[0])


def _dft(x: np.ndarray, dft_length: Any, axis: int, inverse: int, onesided: int) -> np.ndarray:
    rank = x.ndim
    if not (-rank <= axis <= -2 or 0 <= axis <= rank - 2):
        raise ValueError(f"DFT: axis {axis} is outside [-{rank}, -2] and [0, {rank - 2}] for an input of rank {rank}")
    signal = _complex_signal(x, "DFT")
    axis = axis % rank
    if dft_length is None:
        length = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    else:
        length = _scalar(dft_length, "DFT: dft_length")
    if length < 1:
        raise ValueError(f"DFT: dft_length must be positive, got {length}")
    if inverse and onesided:
        return np.fft.irfft(signal, n=length, axis=axis)[..., np.newaxis].astype(x.dtype)
    spectrum = np.fft.ifft(signal, n=length, axis=axis) if inverse else np.fft.fft(signal, n=length, axis=axis)
    if onesided:
        spectrum = np.take(spectrum, np.arange(length // 2 + 1), axis=axis)
    return _as_parts(spectrum, x.dtype)


def _check_dft_input(x: np.ndarray) -> None:
    if not is_float(x.dtype):
        raise ValueError(f"DFT works on float tensors, got {x.dtype}")


@OPS.op("DFT", since=17, quantized=ConstantOnlyOp)
def dft_17(input, dft_length=None, /, *, axis=1, inverse=0, onesided=0):  # noqa: A002
    """DFT-17: ``axis`` is an attribute (default 1)."""
    _check_dft_input(input)
    return _dft(input, dft_length, int(axis), inverse, onesided)


@OPS.op("DFT", since=20, quantized=ConstantOnlyOp)
def dft(input, dft_length=None, axis=None, /, *, inverse=0, onesided=0):  # noqa: A002
    """DFT-20: ``axis`` is an input (default -2, the last signal axis)."""
    _check_dft_input(input)
    return _dft(input, dft_length, -2 if axis is None else _scalar(axis, "DFT: axis"), inverse, onesided)


@OPS.op("STFT", since=17, quantized=ConstantOnlyOp)
def stft(signal, frame_step, window=None, frame_length=None, /, *, onesided=1):
    """Frames of ``frame_length`` samples every ``frame_step``, each multiplied by the window and
    transformed: [batch, frames, bins, 2], bins = frame_length // 2 + 1 when onesided."""
    if signal.ndim != 3:
        raise ValueError(f"STFT: signal must be [batch, length, 1 or 2], got shape {signal.shape}")
    values = _complex_signal(signal, "STFT")
    if onesided and signal.shape[-1] == 2:
        raise ValueError("STFT: a complex signal has no one-sided spectrum; set onesided=0")
    step = _scalar(frame_step, "STFT: frame_step")
    if window is not None and window.ndim != 1:
        raise ValueError(f"STFT: window must be 1-D, got shape {window.shape}")
    if frame_length is not None:
        length = _scalar(frame_length, "STFT: frame_length")
        if window is not None and window.shape[0] != length:
            raise ValueError(f"STFT: window has {window.shape[0]} points, frame_length is {length}")
    else:
        length = window.shape[0] if window is not None else signal.shape[1]
    if step < 1 or length < 1 or length > signal.shape[1]:
        raise ValueError(f"STFT: frame_step {step} and frame_length {length} must be positive, the frame no "
                         f"longer than the signal ({signal.shape[1]})")
    weights = np.ones(length) if window is None else window.astype(np.float64)
    frames = (signal.shape[1] - length) // step + 1
    starts = step * np.arange(frames)
    framed = values[:, starts[:, None] + np.arange(length)[None, :]] * weights
    spectrum = np.fft.fft(framed, axis=-1)
    if onesided:
        spectrum = spectrum[..., : length // 2 + 1]
    return _as_parts(spectrum, signal.dtype)

