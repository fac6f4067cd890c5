"""Reductions and normalizations beyond plain sums: max/min, norms, log-sum-exp, softmax."""

import math

import numpy as np
from cml_core.quantization import ConstantOnlyOp, QuantizedOp, QValue, backend
from cml_core.quantization.context import PendingRange, bits_for_range
from cml_core.quantization.quantizers import MAX_BITS

from cml_core import QuantizationError

from ._opset import OPS
from .pooling import QuantizedReduceMean, QuantizedReduceSum, _reduce, _reduce_axes


def _axes_of(op, inputs, shape):
    value = op.attributes.get("axes")
    if len(inputs) > 1 and inputs[1] is not None:
        value = inputs[1].data
    axes = _reduce_axes(np.zeros(shape), value, op.attributes.get("noop_with_empty_axes", 0))
    return tuple(range(len(shape))) if axes is None else axes


def _drop_axes(data, axes, keepdims):
    if keepdims:
        return data
    shape = [d for i, d in enumerate(data.shape) if i not in axes]
    return data.reshape(tuple(shape))


class QuantizedReduceMax(QuantizedOp):
    """ReduceMax / ReduceMin: a tree of encrypted maximums over the requantized integers."""

    minimum = False

    def encrypted_forward(self, ctx, inputs):
        q = ctx.requantize(inputs[0])
        axes = _axes_of(self, inputs, q.shape)
        if not axes:
            return q
        top = 2**ctx.config.op_inputs - 1
        if self.minimum and q.floor is not None:
            raise QuantizationError(f"{self.where}: the minimum of masked values (an attention mask's -inf) "
                                    "is not supported; mask after the reduction")
        data = top - q.data if self.minimum else q.data  # min(x) = top - max(top - x)
        out = backend.reduce_max(data, axes)
        out = top - out if self.minimum else out
        return QValue.affine(_drop_axes(out, axes, bool(self.attributes.get("keepdims", 1))), q.scale, q.zero_point,
                             floor=q.floor)


class QuantizedReduceMin(QuantizedReduceMax):
    minimum = True


class QuantizedMapSum(QuantizedOp):
    """sum(|x| ** power) over axes, then h: exact on the quantized integers of x.

    One lookup maps each element to ``|q - zero_point| ** power``, an exact integer, where ``q`` are
    x's ``n``-bit integers (when x is not ``n``-bit integers yet, its requantization is composed into
    that lookup); the sum over each group is an integer sum. The result is exact for the quantized
    input however small a group is next to the others, where an ``n``-bit quantizer of ``|x| ** power``
    for the whole tensor rounded a small group's terms to 0. ``h`` (ReduceL2's square root) joins the
    next lookup. The price is width: squares take up to ``2n`` bits, their sum ``2n + log2(K)``.
    """

    power = 1

    def g(self, levels):
        """What each element's quantized level (an integer) adds to its group's sum."""
        return np.abs(levels) ** self.power

    def h(self, total):
        return total

    def axes(self, inputs, shape):
        return _axes_of(self, inputs, shape)

    def encrypted_forward(self, ctx, inputs):
        source = inputs[0]
        axes = self.axes(inputs, source.shape)
        if source.is_affine:
            scale, zero_point = source.scale, source.zero_point

            def levels(q):
                return np.asarray(q, np.int64) - zero_point
        else:
            quantizer = ctx.quantizer_for(source.name)
            scale, zero_point, to_float = quantizer.scale, quantizer.zero_point, source.to_float

            def levels(q):
                return quantizer.quant(to_float(q)) - zero_point

        mapped = ctx.lookup(source, lambda q: self.g(levels(q)), key=f"{self.bound.name}:g")
        unit = scale**self.power
        return QValue.lazy(self.sum(mapped, axes), lambda a: self.h(unit * np.asarray(a, np.float64)), True)

    def sum(self, mapped, axes):
        return _drop_axes(np.sum(mapped, axis=axes, keepdims=True), axes, bool(self.attributes.get("keepdims", 1)))


class QuantizedReduceL1(QuantizedMapSum):
    power = 1


class QuantizedReduceSumSquare(QuantizedMapSum):
    power = 2


class QuantizedReduceL2(QuantizedReduceSumSquare):
    def h(self, total):
        return np.sqrt(np.maximum(total, 0))


class QuantizedReduceLogSum(QuantizedMapSum):
    """log(sum(x)): the sum of the quantized levels is exact; the logarithm joins the next lookup."""

    def g(self, levels):
        return levels

    def h(self, total):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(total)


def _group_exponentials(op, ctx, source, axes):
    """exp(x - max) of each element of each reduced group, and the group's sum of them.

    Each group's encrypted maximum is subtracted first, so its largest term is exp(0) = 1 and
    no sum is below 1. A group of ``K`` terms sums ``K`` roundings: with each exponential
    resolved to ``n + ceil(log2(K))`` bits the sum errs by at most half an ``n``-bit step
    relative to its value, where ``n``-bit exponentials lost a group of many small equal terms
    entirely (499 terms of 6e-4 beside a 1: each rounded to 0, log of the sum off by 0.26).

    Returns ``(q, top, gap, total)``: the requantized input, each group's maximum (kept dims),
    the gaps ``top - q`` (unsigned ``n``-bit integers: a lookup operand one bit narrower than the
    signed ``q - top``) and the sum as a lazy value (float: the sum).
    """
    q = ctx.requantize(source)
    top = backend.reduce_max(q.data, axes)
    scale = q.scale
    # a masked element (an attention mask's -inf) lies more integers below its group's maximum than any
    # data does: its exponential is 0, as the float model's
    masked_gap = None if q.floor is None else q.floor[0]

    def exponential(d):
        d = np.asarray(d, np.float64)
        e = np.exp(scale * d)
        return e if masked_gap is None else np.where(d <= -masked_gap, 0.0, e)

    shifted = QValue.lazy(q.data - top, lambda d: scale * np.asarray(d, np.float64), True,
                          name=f"{op.bound.name}:shifted")
    count = int(np.prod([source.shape[a] for a in axes]))
    extra_bits = max(0, math.ceil(math.log2(count))) if count else 0
    bits = min(ctx.config.op_inputs + extra_bits, MAX_BITS)
    if ctx.config.rounding_bits is not None and masked_gap is None:
        # the sum's lookup keeps only that many bits of a range [1, count]: exponentials on as many bits err, summed,
        # by no more than that rounding does, where more bits would only widen the sum (and the circuit's widest
        # integers: 17 exponentials on 11 bits sum to 16 bits, which left concrete-python no parameters for a ViT).
        # Not for a masked softmax: on 6-bit exponentials its circuit got no parameters (tests/fhe/test_fhe.py)
        bits = min(bits, max(ctx.config.rounding_bits, ctx.config.op_inputs))
    q_exp = op.fitted_quantizer(ctx, "exp", exponential(q.data - top) if ctx.calibrating else None, n_bits=bits)
    e = ctx.lookup(shifted, lambda d: q_exp.quant(exponential(d)), key=f"{op.bound.name}:exp")
    total = QValue.lazy(np.sum(e, axis=axes, keepdims=True),
                        lambda t: q_exp.scale * (np.asarray(t, np.float64) - count * q_exp.zero_point), True,
                        name=f"{op.bound.name}:sum")
    return q, top, top - q.data, total


def _log_of_sum(op, ctx, total):
    """One lookup: each group's sum to ``log(sum)`` on an ``n``-bit quantizer of its range.

    Uniform steps of the logarithm are uniform relative steps of the sum, so a group summing to
    about 1 keeps its precision beside groups summing to many times more.
    """
    values = np.log(np.maximum(total.float_value(), 1e-300)) if ctx.calibrating else None
    q_log = op.fitted_quantizer(ctx, "log_sum", values)
    sum_float = total.to_float
    return q_log, ctx.lookup(total, lambda v: q_log.quant(np.log(np.maximum(sum_float(v), 1e-300))),
                             key=f"{op.bound.name}:sum")


class QuantizedReduceLogSumExp(QuantizedMapSum):
    """max + log(sum(exp(x - max))) with the encrypted maximum of each reduced group: one lookup per
    element, one per group for the log of the sum, one two-input lookup adding the two."""

    def encrypted_forward(self, ctx, inputs):
        source = inputs[0]
        axes = self.axes(inputs, source.shape)
        if not axes:
            return source  # nothing to reduce: log(exp(x)) is x, exactly
        q, top, _, total = _group_exponentials(self, ctx, source, axes)
        scale, zero_point = q.scale, q.zero_point
        q_log, t = _log_of_sum(self, ctx, total)
        values = q_log.dequant(t) + scale * (np.asarray(top, np.float64) - zero_point) if ctx.calibrating else None
        q_out = self.fitted_quantizer(ctx, "out", values)

        def table(m, v):
            return q_out.quant(scale * (np.asarray(m, np.float64) - zero_point) + q_log.dequant(v))

        data = backend.multi_lookup(table, top, t)
        ctx.record_multi_lookup(self.bound.node.output[0], [top, t])
        return QValue.affine(_drop_axes(data, axes, bool(self.attributes.get("keepdims", 1))), q_out.scale,
                             q_out.zero_point)


def _register_reduction(op_type, function, attr_versions, input_versions, quantized, elementwise=None):
    """``elementwise`` is what remains of the op when noop_with_empty_axes leaves nothing to reduce
    (ReduceL2 of one element is its absolute value, and so on)."""

    def with_attribute(data, /, *, axes=None, keepdims=1):
        return _reduce(function, data, axes, keepdims, 0)

    def with_input(data, /, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        if noop_with_empty_axes and (axes is None or np.asarray(axes).size == 0) and elementwise is not None:
            return elementwise(data).astype(data.dtype, copy=False)
        return _reduce(function, data, axes, keepdims, noop_with_empty_axes)

    for f, suffix in ((with_attribute, "attribute"), (with_input, "input")):
        f.__name__ = f.__qualname__ = f"{op_type.lower()}_axes_{suffix}"
    if attr_versions:
        OPS.op(op_type, since=attr_versions, quantized=quantized)(with_attribute)
    if input_versions:
        OPS.op(op_type, since=input_versions, quantized=quantized)(with_input)


def _l1(x, axis, keepdims):
    return np.sum(np.abs(x), axis=axis, keepdims=keepdims)


def _l2(x, axis, keepdims):
    return np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims))


def _sum_square(x, axis, keepdims):
    return np.sum(np.square(x), axis=axis, keepdims=keepdims)


def _log_sum_exp(x, axis, keepdims):
    """An empty group gives log(0) = -inf, the identity of log-sum-exp."""
    top = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    top = np.where(np.isfinite(top), top, 0).astype(x.dtype)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return out if keepdims else np.squeeze(out, axis=axis)


def _log_sum(x, axis, keepdims):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.sum(x, axis=axis, keepdims=keepdims))


def _prod(x, axis, keepdims):
    return np.prod(x, axis=axis, keepdims=keepdims)


def _lowest(dtype):
    """The identity of a maximum: -inf, the smallest integer, or False."""
    dtype = np.dtype(dtype)
    return -np.inf if dtype.kind == "f" else (False if dtype.kind == "b" else np.iinfo(dtype).min)


def _highest(dtype):
    """The identity of a minimum: inf, the largest integer, or True."""
    dtype = np.dtype(dtype)
    return np.inf if dtype.kind == "f" else (True if dtype.kind == "b" else np.iinfo(dtype).max)


def _max(x, axis, keepdims):
    return np.max(x, axis=axis, keepdims=keepdims) if x.size else np.full(
        np.sum(x, axis=axis, keepdims=keepdims).shape, _lowest(x.dtype), dtype=x.dtype)


def _min(x, axis, keepdims):
    return np.min(x, axis=axis, keepdims=keepdims) if x.size else np.full(
        np.sum(x, axis=axis, keepdims=keepdims).shape, _highest(x.dtype), dtype=x.dtype)


_register_reduction("ReduceSum", np.sum, (1, 11), (13,), QuantizedReduceSum)
_register_reduction("ReduceMean", np.mean, (1, 11, 13), (18,), QuantizedReduceMean)
_register_reduction("ReduceMax", _max, (1, 11, 12, 13), (18, 20), QuantizedReduceMax)
_register_reduction("ReduceMin", _min, (1, 11, 12, 13), (18, 20), QuantizedReduceMin)
_register_reduction("ReduceL1", _l1, (1, 11, 13), (18,), QuantizedReduceL1, np.abs)
_register_reduction("ReduceL2", _l2, (1, 11, 13), (18,), QuantizedReduceL2, np.abs)
_register_reduction("ReduceSumSquare", _sum_square, (1, 11, 13), (18,), QuantizedReduceSumSquare, np.square)
_register_reduction("ReduceLogSumExp", _log_sum_exp, (1, 11, 13), (18, 28), QuantizedReduceLogSumExp, lambda x: x)
_register_reduction("ReduceLogSum", _log_sum, (1, 11, 13), (18, 28), QuantizedReduceLogSum, np.log)
# a product of encrypted values needs one multiplication per element, each doubling the bits
_register_reduction("ReduceProd", _prod, (1, 11, 13), (18,), ConstantOnlyOp)


def _arg(function, data, axis, keepdims, select_last_index):
    axis = axis + data.ndim if axis < 0 else axis
    if select_last_index:
        flipped = np.flip(data, axis=axis)
        out = data.shape[axis] - 1 - function(flipped, axis=axis)
    else:
        out = function(data, axis=axis)
    out = out.astype(np.int64)
    return np.expand_dims(out, axis) if keepdims else out


# the position of an encrypted maximum would take a comparison tree per element: apply ArgMax to the
# decrypted output instead (the op table says so)
@OPS.op("ArgMax", since=(1, 11), quantized=ConstantOnlyOp)
def arg_max_11(data, /, *, axis=0, keepdims=1):
    return _arg(np.argmax, data, axis, keepdims, 0)


@OPS.op("ArgMax", since=(12, 13), quantized=ConstantOnlyOp)
def arg_max(data, /, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmax, data, axis, keepdims, select_last_index)


@OPS.op("ArgMin", since=(1, 11), quantized=ConstantOnlyOp)
def arg_min_11(data, /, *, axis=0, keepdims=1):
    return _arg(np.argmin, data, axis, keepdims, 0)


@OPS.op("ArgMin", since=(12, 13), quantized=ConstantOnlyOp)
def arg_min(data, /, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmin, data, axis, keepdims, select_last_index)


def _softmax_axes(x, axis, version):
    axis = axis + x.ndim if axis < 0 else axis
    return tuple(range(axis, x.ndim)) if version < 13 else (axis,)


def _softmax(x, axes, log=False, out=None):
    """Softmax (or LogSoftmax) over ``axes``, into ``out`` when given (which may be ``x``)."""
    top = np.max(x, axis=axes, keepdims=True)
    shifted = np.subtract(x, top, out=out)
    if log:
        shifted -= np.log(np.sum(np.exp(shifted), axis=axes, keepdims=True))
        return shifted.astype(x.dtype, copy=False)
    exponentials = np.exp(shifted, out=shifted)
    exponentials /= np.sum(exponentials, axis=axes, keepdims=True)
    return exponentials.astype(x.dtype, copy=False)


class QuantizedSoftmax(QuantizedOp):
    """Softmax / LogSoftmax: exp by a lookup, an integer sum per row, one lookup of the row's sum,
    then one lookup per element. Two ways to the element's value, decided on calibration:

    * **shifted** (one-input): the row's ``log(sum)`` as a whole number ``L`` of ``unit = s / 2**k``
      (``s`` the input's step), and the element's gap to its row's maximum in the same units added to
      it: ``u = gap * 2**k + L``, an integer on ``n + k`` bits or so, where the element's value is
      ``exp(-unit * u)`` (``-unit * u`` for LogSoftmax). ``k`` is the smallest that errs on the
      calibration data (largest and mean error against the softmax of the op's quantized input) no
      more than the two-input lookup; the lookup of ``u`` is never rounded (its low bits are ``L``'s). ``L`` is
      looked up less the lowest seen on calibration, which the element's table adds back: a nearly uniform row's
      ``L`` is large, and such integers would widen ``u``'s ciphertexts however few values ``u`` takes.
    * **two-input**: one lookup of (gap, the row's ``1 / sum`` or ``log(sum)`` on ``n`` bits), on
      their bits packed: when no ``u`` errs as little on fewer bits, and for LogSoftmax of masked
      elements (their value is the mask's, which no function of ``u`` tells from a far element). Where
      the packed bits exceed the rounding asked for (``rounding_threshold_bits``), the ``u`` on fewer
      bits that errs least is taken even when it errs a little more.
    """

    log = False
    version = 13
    #: probabilities' grid starts at 0 (a masked or far element's value, exact; see ``QuantizedOp``);
    #: log-probabilities have no such value
    output_floor: float | None = 0.0
    #: a Softmax of the model's final scores runs on the client, on the decrypted scores (see client_tail)
    finishes_on_client = True
    #: the finest ``unit`` tried is the input's step over ``2 ** MAX_REFINEMENT``
    MAX_REFINEMENT = 4

    def encrypted_forward(self, ctx, inputs):
        source = inputs[0]
        axes = _softmax_axes(np.zeros(source.shape), int(self.attributes.get("axis", -1 if self.version >= 13 else 1)),
                             self.version)
        q, _, gap, total = _group_exponentials(self, ctx, source, axes)
        q_out = ctx.quantizer_for(self.bound.node.output[0])
        count = int(np.prod([source.shape[a] for a in axes]))
        if "refinement" not in self.state:  # decided on calibration, kept for every later pass
            self.state["refinement"] = self._refinement(ctx, q, gap, total, q_out, count, axes)
        way = self.state["refinement"]
        if way is None:
            return self._two_input(ctx, q, gap, total, q_out)
        k, cap = way
        name = self.bound.name
        unit = q.scale / 2 ** k
        highest = _highest_level(count, unit)
        sum_float = total.to_float
        # the rows' log-sums less the lowest seen on calibration: a nearly uniform row's log-sum is far from 0, and
        # integers that large would widen the shifted integers' ciphertexts however few values they take
        offset = self.state.get("level_offset", 0)
        level = ctx.lookup(total, lambda v: _log_units(sum_float(v), unit, highest) - offset, key=f"{name}:log_sum")
        if cap is not None:
            masked_gap = q.floor[0]
            gap = ctx.lookup(QValue.lazy(gap, lambda g: q.scale * np.asarray(g, np.float64), True, name=f"{name}:gap"),
                             lambda g: _capped(g, masked_gap, cap), key=f"{name}:capped gap", exact=True)
        shifted = QValue.lazy(gap * 2 ** k + level, lambda w: -unit * (np.asarray(w, np.float64) + offset), True,
                              name=f"{name}:shifted_log")
        value = self._value_of_shift(unit, None if cap is None else cap * 2 ** k)
        data = ctx.lookup(shifted, lambda w: q_out.quant(value(np.asarray(w, np.int64) + offset)),
                          key=self.bound.node.output[0], exact=True)
        return QValue.quantized(data, q_out)

    def _value_of_shift(self, unit, zero_from=None):
        """The element's value (before ``q_out``) of a shifted integer; 0 from ``zero_from`` on (masked)."""
        if self.log:
            return lambda w: -unit * np.asarray(w, np.float64)

        def value(w):
            w = np.asarray(w, np.float64)
            return np.exp(-unit * w) if zero_from is None else np.where(w >= zero_from, 0.0, np.exp(-unit * w))

        return value

    def _row_value(self, ctx, total):
        """The two-input way's quantizer and float of each row's value (``1 / sum``, or ``log(sum)``)."""
        key, function = ("log_sum", _safe_log) if self.log else ("inverse_sum", lambda t: 1 / np.maximum(t, 1e-300))
        # 1 / sum lies in (0, 1]: a uniform step of it bounds every probability's error alike
        return self.fitted_quantizer(ctx, key, function(total.float_value()) if ctx.calibrating else None), function

    def _table(self, q, q_row, q_out):
        """The two-input way's table of (gap, row integer)."""
        scale, log = q.scale, self.log
        masked_gap, masking = (None, None) if q.floor is None else q.floor  # see _group_exponentials

        def table(g, b):
            g = np.asarray(g, np.float64)
            d = -scale * g  # x - max
            if log:  # log softmax = (x - max) - log(sum): exact in the shifted integers, no log of a tiny exp
                out = d - q_row.dequant(b)
            else:
                out = np.exp(d) * q_row.dequant(b)
            if masked_gap is not None:  # a masked element: probability 0, log-probability the mask's value
                out = np.where(g >= masked_gap, masking if log else 0.0, out)
            return q_out.quant(out)

        return table

    def _two_input(self, ctx, q, gap, total, q_out):
        q_row, function = self._row_value(ctx, total)
        sum_float = total.to_float
        t = ctx.lookup(total, lambda v: q_row.quant(function(sum_float(v))), key=f"{self.bound.name}:sum")
        operands = [gap, backend.broadcast(t, tuple(gap.shape))]
        data = backend.multi_lookup(self._table(q, q_row, q_out), *operands)
        ctx.record_multi_lookup(self.bound.node.output[0], operands)
        return QValue.quantized(data, q_out)

    def _cap(self, scale, q_out, masked_gap, highest, k):
        """Where a masked softmax's gaps are capped before the shift (masked ones set to it): the first gap
        whose probability is 0 whatever the row's sum (every larger one's is too), or else the first gap
        whose shifted integers lie above every unmasked element's (their gaps are below ``masked_gap``)."""
        beyond = masked_gap + math.ceil(highest / 2 ** k)
        gaps = np.arange(beyond + 1)
        zero = np.flatnonzero(q_out.quant(np.exp(-scale * gaps)) == q_out.quant(0.0))
        return int(zero[0]) if zero.size else int(beyond)

    def _refinement(self, ctx, q, gap, total, q_out, count, axes):
        """``(k, cap)`` of the shifted way (see the class docstring), or None for the two-input way."""
        assert ctx.calibrating, "decided on the first calibration pass"
        masked_gap, masking = (None, None) if q.floor is None else q.floor
        if masked_gap is not None and self.log:
            return None
        scale = q.scale
        gaps = np.asarray(gap, np.int64)
        masked = np.zeros(gaps.shape, bool) if masked_gap is None else gaps >= masked_gap
        # the op on its quantized input: what either way approximates
        exponentials = np.where(masked, 0.0, np.exp(-scale * gaps))
        sums = np.sum(exponentials, axis=axes, keepdims=True)
        with np.errstate(divide="ignore"):
            exact = np.where(masked, masking, -scale * gaps - np.log(sums)) if self.log else exponentials / sums
        q_row, function = self._row_value(ctx, total)
        rows = q_row.quant(function(total.float_value()))
        two_input = q_out.dequant(self._table(q, q_row, q_out)(gaps, np.broadcast_to(rows, gaps.shape)))
        errors, highest_of, lowest_of = {None: two_input - exact}, {}, {}
        for k in range(self.MAX_REFINEMENT + 1):
            unit = scale / 2 ** k
            if not unit > 0 or math.log(max(count, 1)) / unit >= 2 ** MAX_BITS:  # a constant input's step
                continue
            highest = _highest_level(count, unit)
            cap, capped = None, gaps
            if masked_gap is not None:
                cap = self._cap(scale, q_out, masked_gap, highest, k)
                capped = _capped(gaps, masked_gap, cap)
            levels = _log_units(total.float_value(), unit, highest)
            shifted = capped * 2 ** k + levels
            value = self._value_of_shift(unit, None if cap is None else cap * 2 ** k)
            errors[(k, cap)] = q_out.dequant(q_out.quant(value(shifted))) - exact
            highest_of[(k, cap)] = int(shifted.max(initial=0))
            lowest_of[(k, cap)] = int(levels.min(initial=highest))
        # over the whole calibration set: every parameter recorded on this pass, whichever is pending
        pending = None
        try:
            settled = ctx.calibrated_errors(f"{self.where}:softmax error@{id(self):x}", errors)
        except PendingRange as exc:
            pending = exc
        try:
            highest_of = {way: ctx.calibrated_range(f"{self.where}:softmax highest {way}@{id(self):x}", 0, v)[1]
                          for way, v in highest_of.items()}
            lowest_of = {way: ctx.calibrated_range(f"{self.where}:softmax lowest level {way}@{id(self):x}", v, v)[0]
                         for way, v in lowest_of.items()}
            packed = [ctx.calibrated_range(f"{self.where}:softmax {what}@{id(self):x}", int(v.min()), int(v.max()))
                      for what, v in (("gaps", gaps), ("rows", rows))]
        except PendingRange as exc:
            pending = exc
        if pending is not None:
            raise pending
        packed_bits = sum(bits_for_range(int(low), int(high)) for low, high in packed)
        narrower = [way for way in highest_of if bits_for_range(0, int(highest_of[way])) < packed_bits]
        chosen = next((way for way in narrower if _errs_no_more(settled[way], settled[None])), None)
        rounding = ctx.config.rounding_bits
        if chosen is None and narrower and rounding is not None and rounding < packed_bits:
            # the two-input lookup would read more bits than the rounding asked for: the narrower way that errs
            # least instead
            chosen = min(narrower, key=lambda way: settled[way])
        if chosen is not None:  # the shifted way's log-sums are looked up less the lowest (see encrypted_forward)
            self.state["level_offset"] = int(lowest_of[chosen])
        return chosen


def _errs_no_more(errors, reference):
    """Whether (largest, mean) ``errors`` are each no larger than ``reference``'s."""
    return all(e <= r * (1 + 1e-9) for e, r in zip(errors, reference))


def _capped(gaps, masked_gap, cap):
    """Gaps to the row's maximum at most ``cap``; a masked element's (``masked_gap`` or more) ``cap``."""
    gaps = np.asarray(gaps, np.int64)
    return np.where(gaps >= masked_gap, cap, np.minimum(gaps, cap))


def _highest_level(count, unit):
    """The largest ``log(sum)`` of a row of ``count`` terms in whole ``unit``s: a row's sum is at most its count."""
    return math.ceil(math.log(max(count, 1)) / unit)


def _safe_log(t):
    return np.log(np.maximum(t, 1e-300))


def _log_units(sums, unit, highest):
    """``log(sums)`` as whole numbers of ``unit``, in [0, ``highest``]."""
    return np.clip(np.round(_safe_log(np.asarray(sums, np.float64)) / unit), 0, highest).astype(np.int64)


def _softmax_family(op_type, log):
    class Old(QuantizedSoftmax):
        version = 11

    class New(QuantizedSoftmax):
        version = 13

    for cls in (Old, New):
        cls.log = log
        cls.output_floor = None if log else 0.0
        cls.__name__ = cls.__qualname__ = f"Quantized{op_type}"

    def old(x, /, *, axis=1):
        return _softmax(x, _softmax_axes(x, axis, 11), log)

    def new(x, /, *, axis=-1):
        return _softmax(x, _softmax_axes(x, axis, 13), log)

    def old_into(x, /, *, axis=1):
        return _softmax(x, _softmax_axes(x, axis, 11), log, x if x.dtype.kind == "f" else None)

    def new_into(x, /, *, axis=-1):
        return _softmax(x, _softmax_axes(x, axis, 13), log, x if x.dtype.kind == "f" else None)

    old.__name__ = old.__qualname__ = f"{op_type.lower()}_11"
    new.__name__ = new.__qualname__ = op_type.lower()
    OPS.op(op_type, since=(1, 11), quantized=Old, inplace=old_into)(old)
    OPS.op(op_type, since=13, quantized=New, inplace=new_into)(new)


_softmax_family("Softmax", log=False)
_softmax_family("LogSoftmax", log=True)


def _hardmax(x, axes):
    flat_axis = axes[0]
    moved = x.reshape(x.shape[:flat_axis] + (-1,))
    index = np.argmax(moved, axis=-1)
    out = np.zeros_like(moved)
    np.put_along_axis(out, index[..., None], 1, axis=-1)
    return out.reshape(x.shape)


@OPS.op("Hardmax", since=(1, 11), quantized=ConstantOnlyOp)
def hardmax_11(x, /, *, axis=1):
    return _hardmax(x, _softmax_axes(x, axis, 11))


@OPS.op("Hardmax", since=13, quantized=ConstantOnlyOp)
def hardmax(x, /, *, axis=-1):
    axis = axis + x.ndim if axis < 0 else axis
    return np.moveaxis(_hardmax(np.moveaxis(x, axis, -1), (x.ndim - 1,)), -1, axis)
