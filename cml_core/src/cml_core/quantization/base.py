"""Quantized op bases. A plugin picks the family of each op; the core derives the rest.

- ``ElementwiseOp``: element-wise functions (activations, math, arithmetic with constants). With
  one encrypted input the function is composed into the value's float mapping (no integer work:
  a chain of them becomes one lookup where an integer is next needed); with several encrypted
  inputs the op becomes one multi-input lookup of their quantized integers.
- ``LayoutOp``: ops that only move, select or copy elements (Identity, Reshape, ...). They run
  the numpy implementation on the integers and keep the float mapping.
- ``LinearOp``: integer linear algebra on quantized inputs and quantized constants (Gemm,
  MatMul, Conv). Subclasses write ``encrypted_forward``.
- ``ShapeOp``: ops reading only the shape of an encrypted input (Shape, Size).
- ``ConstantOnlyOp``: ops computable only when every input is a constant (Constant, shape
  arithmetic); an encrypted input raises ``QuantizationError`` naming the node.

Every family computes a node whose inputs are all constants with the numpy implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import QuantizationError
from . import backend
from .context import QuantContext
from .quantizers import UniformQuantizer
from .values import QValue

if TYPE_CHECKING:
    from ..numpy_module import BoundNode


class QuantizedOp:
    """Base of all quantized ops: binds a node's inputs and attributes by the numpy signature."""

    #: whether a model input quantized per feature costs this op nothing, its scales folded into the op's own
    #: parameters: always (True), or "as output" when the op's output is a model output (a linear model's
    #: scores: nothing encrypted after it needs the features on one grid). Under ``per_feature_inputs="auto"``
    #: an input read only by such ops is quantized per feature whatever its ranges.
    folds_feature_scales: bool | str = False
    #: a value every output of the op can take whatever the calibration data, from which its grid starts
    #: (probabilities from 0): the calibrated range is widened to it, so the value is exact on the grid and
    #: the integers of a nearly constant output stay small (see ``widen_to_output_floors``). None: the range
    #: is the calibrated one.
    output_floor: float | None = None

    def __init__(self, bound: BoundNode) -> None:
        self.bound = bound
        self.impl = bound.impl
        self.signature = bound.impl.signature
        self.attributes = dict(bound.attributes)
        self.state: dict[str, Any] = {}  # parameters fixed during calibration
        self.cache: dict[Any, Any] = {}  # what the state implies, found again as needed: never saved

    @property
    def where(self) -> str:
        return self.bound.where

    def named_inputs(self, inputs: Sequence[QValue | None]) -> dict[str, QValue | None]:
        """Fixed inputs by their signature names (variadic ones are left out)."""
        names = self.signature.input_names
        return {name: (inputs[i] if i < len(inputs) else None) for i, name in enumerate(names)}

    def call_numpy(self, values: Sequence[Any]) -> Any:
        """Run the numpy implementation (with this node's attributes) on ``values``."""
        context = {"_num_outputs": len(self.bound.node.output)} if self.signature.context else {}
        return self.impl.function(*_trim(values, self.signature.variadic_input is None), **self.attributes,
                                  **context)

    def forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> tuple[QValue, ...]:
        """Outputs of the node for ``inputs``; constants in, constants out."""
        if all(v is None or v.is_constant for v in inputs):
            out = self.call_numpy([None if v is None else v.data for v in inputs])
            outs = out if isinstance(out, tuple) else (out,)
            return tuple(QValue.constant(o) for o in outs)
        result = self.encrypted_forward(ctx, inputs)
        return result if isinstance(result, tuple) else (result,)

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue | tuple[QValue, ...]:
        raise NotImplementedError(f"{type(self).__name__} does not implement encrypted_forward")

    def decision_cuts(self, index: int, constants: Sequence[Any],
                      shape: tuple[int, ...]) -> list[tuple[NDArray[Any], bool]] | None:
        """When the op reads input ``index`` only through which side of thresholds each value lies on (a
        tree's comparisons, a comparison with a constant): those thresholds, as pairs (thresholds
        broadcastable to the input, NaN where a position has none; inclusive) -- an inclusive cut is
        passed by ``x >= t``, a strict one by ``x > t``. A model input read only through such cuts is
        quantized by counting the cuts each value passes (``DecisionQuantizer``): every decision exact.
        ``constants``: the node's inputs known in the clear (None for the others); ``shape``: the input's.
        None (the default): every value matters."""
        return None

    def feature_selection(self, index: int, constants: Sequence[Any], n_features: int) -> NDArray[Any] | None:
        """When every output element of the op is one feature of its (samples, features) input ``index``,
        copied (a product with a 0/1 matrix holding one 1 per output): per output position, the feature
        it holds, broadcastable to the output (the samples' axis of size 1). Cuts its readers decide on
        then reach the input's features. None (the default): the op computes something else."""
        return None

    def fitted_quantizer(self, ctx: QuantContext, key: str, values: Any, n_bits: int | None = None,
                         min_span: float = 0.0) -> UniformQuantizer:
        """A quantizer for an intermediate (non-ONNX) tensor, fitted on its calibration ``values``.

        Fitted on the range of the finite ``values`` over the whole calibration set, widened
        about its middle to at least ``min_span`` (unless no value is finite: then [0, 0]), and
        kept in ``state``; ``values`` is ignored afterwards.

        Pass the values themselves, one per element or row of the current data, not a summary
        of them: calibration may run in chunks of samples, and the range over the whole set is
        taken as the union of the chunks' ranges. Anything computed from the range (a widening)
        belongs in the arguments, where it applies to the whole range. With several chunks the
        first passes only collect the range and the call raises ``PendingRange``, which must
        propagate (the node stops here and runs again once the range is known).

        Raises:
            QuantizationError: called outside calibration for a key that was never fitted.
        """
        if key not in self.state:
            if not ctx.calibrating:
                raise QuantizationError(f"{self.where}: {key} was not calibrated")
            arr = np.asarray(values, dtype=np.float64)
            finite = arr[np.isfinite(arr)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (math.inf, -math.inf)
            low, high = ctx.calibrated_range(f"{self.where}:{key}@{id(self):x}", low, high)
            if low > high:  # no finite value in the whole calibration set
                low = high = 0.0
            elif high - low < min_span:
                widen = (min_span - (high - low)) / 2
                low, high = low - widen, high + widen
            self.state[key] = UniformQuantizer.fit(low, high, n_bits or ctx.config.op_inputs)
        return self.state[key]  # type: ignore[no-any-return]

    @staticmethod
    def encrypted_positions(inputs: Sequence[QValue | None]) -> list[int]:
        return [i for i, v in enumerate(inputs) if v is not None and not v.is_constant]


def _trim(values: Sequence[Any], drop_trailing_none: bool) -> list[Any]:
    args = list(values)
    if drop_trailing_none:
        while args and args[-1] is None:
            args.pop()
    return args


def _is_scalar(value: QValue | None) -> bool:
    """Whether a constant operand treats every position alike: one element, or all its elements equal (a
    constant shaped by the batch, e.g. computed from the input's Shape, is the same at every batch size)."""
    if value is None:
        return True
    arr = np.asarray(value.data)
    if arr.size <= 1:
        return True
    try:
        return bool(np.all(arr == arr.flat[0]))
    except (TypeError, ValueError):
        return False


class ElementwiseOp(QuantizedOp):
    """Element-wise ops: composed into a lookup (one encrypted input) or a multi-input lookup.

    A subclass whose output the graph states to be quantized (a DequantizeLinear, a QONNX
    ``Quant``) returns that quantizer from ``stated_output``: the output's integers are then
    exactly the graph's, with the graph's bit width, whatever ``n_bits`` asks.
    """

    #: whether the op's output is its stated quantizer applied to its float input (round half to even),
    #: so that a model input it reads first thing may take that quantizer itself (``snap_inputs``)
    rounds_like_its_quantizer = False

    def stated_output(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> UniformQuantizer | None:
        """The quantizer the graph states for this op's output, or None (fitted on calibration)."""
        return None

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        if "stated" not in self.state:
            self.state["stated"] = self.stated_output(ctx, inputs)
        if self.state["stated"] is not None:
            ctx.state_quantizer(self.bound.node.output[0], self.state["stated"], self.rounds_like_its_quantizer)
        encrypted = self.encrypted_positions(inputs)
        first = inputs[encrypted[0]]
        assert first is not None
        if all(inputs[i].data is first.data for i in encrypted):  # type: ignore[union-attr]
            # one encrypted input, or several functions of the same integers (x * Sigmoid(x)):
            # the op composes into a single univariate mapping, no lookup yet
            return self._compose(ctx, inputs, encrypted)
        return self._multi_lookup(ctx, inputs, encrypted)

    def _compose(self, ctx: QuantContext, inputs: Sequence[QValue | None], positions: list[int]) -> QValue:
        source = inputs[positions[0]]
        assert source is not None
        maps = {p: inputs[p].to_float for p in positions}  # type: ignore[union-attr]
        constants: list[Any] = [None if v is None else v.data for v in inputs]
        for p in positions:
            constants[p] = None
        shaped = list(constants)  # as given: they shape the output
        reduced = self._reduced_constants(inputs, positions, constants, maps, source.shape)
        if reduced is not None:
            constants = reduced

        def to_float(q: NDArray[Any]) -> NDArray[Any]:
            args = list(constants)
            for p in positions:
                args[p] = maps[p](q)  # type: ignore[misc]
            args = [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args]
            # keep the op's own dtype (an integer or boolean result feeds integer ops downstream)
            return np.asarray(self.call_numpy(args))

        # the output's shape, from the op itself (constants may broadcast the input, or not at all)
        probe = list(shaped)
        with np.errstate(all="ignore"):  # zeros of each input's value type (floats, or integers after a Cast)
            for p in positions:
                # on one value per position: a mapping may differ per position (a per-feature input)
                kind = np.asarray(maps[p](np.zeros(source.shape, dtype=np.int64))).dtype  # type: ignore[misc]
                probe[p] = np.zeros(source.shape, dtype=kind)
            out_shape = np.shape(self.call_numpy(probe))
        uniform = (all(inputs[p].uniform for p in positions)  # type: ignore[union-attr]
                   and all(_is_scalar(v) for i, v in enumerate(inputs) if i not in positions))
        if uniform and tuple(out_shape) == source.shape:
            unchanged = self._unchanged_input(inputs, positions, to_float)
            if unchanged is not None:
                return unchanged
        data = source.data if tuple(out_shape) == source.shape else backend.broadcast(source.data, out_shape)
        return QValue.lazy(data, to_float, uniform)

    def _unchanged_input(self, inputs: Sequence[QValue | None], positions: list[int],
                         to_float: Any) -> QValue | None:
        """The op's encrypted input itself when the op gives back every value that input can hold, unchanged
        (``Where(IsNaN(p), 0, p)`` after a softmax, a Relu of values from 0, a Clip wider than the grid):
        the output keeps the input's grid and costs no lookup. Known only for an input whose integers a
        quantizer made (``QValue.levels``), every one of which is tried."""
        grid = next((inputs[p] for p in positions if inputs[p].levels is not None), None)  # type: ignore[union-attr]
        if grid is None or grid.to_float is None or grid.levels is None:
            return None
        key = ("unchanged", grid.scale, grid.zero_point, grid.floor, grid.levels)
        if key not in self.cache:
            codes = np.arange(grid.levels[0], grid.levels[1] + 1, dtype=np.int64)
            with np.errstate(all="ignore"):
                got, values = np.asarray(to_float(codes)), np.asarray(grid.to_float(codes), np.float64)
            self.cache[key] = bool(got.dtype.kind == "f" and got.size == values.size
                                   and np.array_equal(got.reshape(values.shape), values))
        return grid if self.cache[key] else None

    def _reduced_constants(self, inputs: Sequence[QValue | None], positions: list[int], constants: list[Any],
                           maps: dict[int, Any], shape: tuple[int, ...]) -> list[Any] | None:
        """``constants`` with each one whose elements are all alike (a constant shaped by the batch) as one
        element, when the op gives the same result with them: the mapping then does not depend on the
        constants' shapes (a layout op may move its integers). None when nothing changes or the op needs
        the shapes (a BatchNormalization reshapes its parameters to the channels)."""
        reduced = list(constants)
        for i, value in enumerate(constants):
            if value is not None and np.ndim(value) > 0 and np.size(value) >= 1 and _is_scalar(inputs[i]):
                arr = np.asarray(value)
                reduced[i] = np.asarray(arr.flat[0], dtype=arr.dtype)
        if all(r is c for r, c in zip(reduced, constants)):
            return None
        probe, small = list(constants), list(reduced)
        with np.errstate(all="ignore"):
            for p in positions:
                values = np.asarray(maps[p](np.zeros(shape, dtype=np.int64)))
                probe[p] = small[p] = values
            try:
                full, alone = np.asarray(self.call_numpy(probe)), np.asarray(self.call_numpy(small))
            except Exception:  # noqa: BLE001  (the op needs its constants' shapes)
                return None
        if full.shape != np.broadcast_shapes(full.shape, alone.shape) or \
                not np.array_equal(np.broadcast_to(alone, full.shape), full, equal_nan=True):
            return None
        return reduced

    def _multi_lookup(self, ctx: QuantContext, inputs: Sequence[QValue | None], encrypted: list[int]) -> QValue:
        quantized = {i: ctx.requantize(inputs[i]) for i in encrypted}  # type: ignore[arg-type]
        constants = [None if v is None else v.data for v in inputs]
        out_name = self.bound.node.output[0]
        quantizer = self.state.get("out")
        if quantizer is None:
            quantizer = ctx.quantizer_for(out_name)
            self.state["out"] = quantizer
        maps = {i: q.to_float for i, q in quantized.items()}

        def table(*qs: NDArray[Any]) -> NDArray[Any]:
            args = list(constants)
            for i, q in zip(encrypted, qs):
                args[i] = maps[i](q)  # type: ignore[misc]
            return quantizer.quant(np.asarray(self.call_numpy(args), dtype=np.float64))

        operands = [quantized[i].data for i in encrypted]
        shapes = [np.shape(v.data) for v in inputs if v is not None and v.is_constant]
        shapes += [tuple(o.shape) for o in operands]
        data = backend.multi_lookup(table, *[backend.broadcast(o, *shapes) for o in operands])
        ctx.record_multi_lookup(out_name, [quantized[i].data for i in encrypted])
        return QValue.quantized(data, quantizer)


class LayoutOp(QuantizedOp):
    """Ops that move or select elements of their first input; other inputs must be constants."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue | tuple[QValue, ...]:
        encrypted = self.encrypted_positions(inputs)
        if encrypted != [0]:
            raise QuantizationError(
                f"{self.where}: only the data input may be encrypted here (encrypted inputs: {encrypted})"
            )
        source = inputs[0]
        assert source is not None
        if self.bound.node.op_type == "Identity" and len(inputs) == 1:
            return source  # nothing moves: any mapping, even one of whole rows, stays as it is
        if not source.uniform:  # a per-position float mapping cannot follow moved elements
            source = ctx.requantize(source)
        rest = [None if v is None else v.data for v in inputs[1:]]
        try:
            out = self.call_numpy([source.data] + rest)
        except Exception:  # noqa: BLE001  (the backend cannot trace this numpy call)
            if not backend.is_traced(source.data):
                raise
            results = []
            probe = self.call_numpy([np.zeros(source.shape, dtype=np.int64)] + rest)
            for k in range(len(probe) if isinstance(probe, tuple) else 1):
                def layout(basis: NDArray[Any], k: int = k) -> Any:
                    result = self.call_numpy([basis] + rest)
                    return result[k] if isinstance(result, tuple) else result

                results.append(backend.by_selection_matrix(source.data, layout))
            out = tuple(results) if isinstance(probe, tuple) else results[0]
        if isinstance(out, tuple):
            return tuple(source.with_data(o, name="") for o in out)
        return source.with_data(out, name="")


class ShapeOp(QuantizedOp):
    """Ops whose output depends only on the shape of their encrypted input (Shape, Size): a
    clear constant, computed from the shape at run time."""

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        stand_in = [None if v is None else (v.data if v.is_constant else np.zeros(v.shape)) for v in inputs]
        return QValue.constant(self.call_numpy(stand_in))


class ConstantOnlyOp(QuantizedOp):
    """Ops that can be computed only from constants (in the clear, at quantize time).

    ``client_side``: when the op and all that follows it only lead to model outputs, the client may run
    them in the clear on the decrypted values (an ArgMax of scores); False for ops that must stay on the
    server's side of the split (they hold weights, or need what the model computes before them in the
    clear), whose refusal then stands.
    """

    client_side = True

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        raise QuantizationError(
            f"{self.where}: this op cannot run on encrypted values; its inputs must be constants "
            "(initializers or values computed from them)"
        )


def _along_axes(scale: Any, axes: Sequence[int], ndim: int) -> bool:
    """Whether a per-channel ``scale`` (keepdims shape) varies only along one of ``axes``."""
    varying = [a for a, n in enumerate(np.shape(scale)) if n > 1]
    return len(varying) <= 1 and all(a in [x % ndim for x in axes] for a in varying)


class LinearOp(QuantizedOp):
    """Base of integer linear ops: quantizes constant weights and requantizes encrypted inputs.

    Subclasses implement ``encrypted_forward`` with ``self.weights`` and ``ctx.requantize`` and
    return ``self.accumulator(ctx, acc, scale)``. ``weight_inputs`` names (by the numpy signature)
    the inputs that, when constant, are quantized as weights; other constants (biases) are folded
    into the accumulator.
    """

    weight_inputs: tuple[str, ...] = ()

    @staticmethod
    def weight_quantizer(value: NDArray[Any], n_bits: int) -> UniformQuantizer:
        """The quantizer of a constant weight tensor: signed, symmetric, ``n_bits`` bits; scale 1 when
        the weights are whole numbers that fit (a 0/1 selection or a -1/0/1 path matrix stays exact and
        keeps the accumulator as small as its true values)."""
        arr = np.asarray(value, dtype=np.float64)
        bound = float(np.max(np.abs(arr), initial=0.0))
        if arr.size and bound >= 1 and np.array_equal(arr, np.round(arr)) and bound <= 2 ** (n_bits - 1) - 1:
            return UniformQuantizer(n_bits, 1.0, 0, True, True)
        return UniformQuantizer.fit(float(arr.min()), float(arr.max()), n_bits, is_signed=True, is_symmetric=True)

    def weights(self, ctx: QuantContext, key: str, value: NDArray[Any], name: str = "",
                channel_axes: Sequence[int] = ()) -> tuple[NDArray[Any], Any]:
        """(integers, scale) of a constant weight tensor: signed, symmetric, ``op_weights`` bits, or,
        when the graph states the tensor's integers (``name`` folded from a DequantizeLinear of an
        integer weight), those integers and scale as they are. A stated per-channel scale (an array
        shaped to broadcast against the weight) is kept when its channels lie along one of
        ``channel_axes`` (the axes the op's output keeps, never a summed one); otherwise the weight is
        quantized with one scale."""
        if key not in self.state:
            stated = ctx.stated_constants.get(name) if name else None
            if stated is not None and np.ndim(stated[1]) and not _along_axes(stated[1], channel_axes, np.ndim(value)):
                stated = None
            if stated is not None and np.shape(stated[0]) == np.shape(value):
                scale = float(stated[1]) if np.size(stated[1]) == 1 else np.asarray(stated[1], dtype=np.float64)
                self.state[key] = (np.asarray(stated[0], dtype=np.int64), scale)
                self.state["exact bias"] = True  # the model's own integers: keep its bias exact too
            else:
                q = self.weight_quantizer(value, ctx.config.op_weights)
                self.state[key] = (q.quant(value), q.scale)
        return self.state[key]  # type: ignore[no-any-return]

    def weights_per_column(self, ctx: QuantContext, key: str, value: NDArray[Any]) -> tuple[NDArray[Any], Any]:
        """(integers, scales) of a constant weight tensor quantized per column (its last axis, which the
        product keeps): signed, symmetric, ``op_weights`` bits, one scale per column (shaped to broadcast
        against the weight and the product). For weights computed at quantization time whose columns
        differ in magnitude, such as a weight with per-feature input scales folded in."""
        if key not in self.state:
            arr = np.asarray(value, dtype=np.float64)
            bounds = np.max(np.abs(arr), axis=tuple(range(arr.ndim - 1)), keepdims=True)
            levels = 2 ** (ctx.config.op_weights - 1) - 1 or 1
            scales = np.where(bounds > 0, bounds / levels, 1.0)
            integers = np.clip(np.rint(arr / scales), -levels, levels).astype(np.int64)
            self.state[key] = (integers, scales)
        return self.state[key]  # type: ignore[no-any-return]

    #: largest bias, in accumulator units, folded into the integers (beyond it, float precision is lost)
    MAX_BIAS_UNITS = 2.0**40

    def integer_bias(self, key: str, bias: NDArray[Any] | None, scale: Any) -> NDArray[Any] | None:
        """``bias`` in units of the accumulator (``scale``), rounded to integers.

        Returns ``None`` when there is no bias, or when it is so large next to the product's
        resolution that integers would lose it, or when the weights are the model's own integers
        (``weights`` found them stated) and the bias is not a whole number of units; pass it to
        ``accumulator(float_bias=...)`` then.
        """
        if bias is None:
            return None
        if key not in self.state:
            exact = np.asarray(bias, dtype=np.float64)
            units = np.rint(exact / scale) if np.all(np.asarray(scale) != 0) else np.full(np.shape(bias), np.inf)
            fits = not units.size or np.max(np.abs(units)) <= self.MAX_BIAS_UNITS
            if fits and self.state.get("exact bias"):
                # weights the model quantized itself: a bias that is not a whole number of accumulator units
                # stays in float, so the next quantizer the model states sees exactly the model's values
                fits = bool(np.allclose(units * scale, exact, rtol=1e-9, atol=0.0))
            self.state[key] = units.astype(np.int64) if fits else None
        return self.state[key]  # type: ignore[no-any-return]

    def accumulator(self, ctx: QuantContext, acc: Any, scale: Any, float_bias: Any = None) -> QValue:
        """The accumulator as a value whose float is ``scale * acc`` (+ ``float_bias``, broadcast);
        ``scale`` is one number, or per output channel an array broadcasting against ``acc``.

        A float bias makes the mapping position-dependent, which a later lookup absorbs; integer
        biases (``integer_bias``) keep it uniform and are preferred.
        """
        ctx.record_accumulator(acc)
        s = float(scale) if np.size(scale) == 1 else np.asarray(scale, dtype=np.float64)
        bias = None if float_bias is None else np.asarray(float_bias, dtype=np.float64)

        def to_float(q: NDArray[Any]) -> NDArray[Any]:
            value = s * np.asarray(q, dtype=np.float64)
            return value if bias is None else value + bias

        uniform = (bias is None or bias.size == 1) and np.size(s) == 1  # per-channel scales: per position
        return QValue.lazy(acc, to_float, uniform)

    @staticmethod
    def centered(value: QValue) -> Any:
        """Integers minus the zero point: the float value divided by the scale."""
        assert value.zero_point is not None
        return value.data - value.zero_point if value.zero_point else value.data
