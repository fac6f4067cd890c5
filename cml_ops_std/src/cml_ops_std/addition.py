"""The quantized family of Add and Sub: element-wise, with a path of its own for sums of rows of different scales."""

import numpy as np
from cml_core.quantization import ElementwiseOp, QValue
from cml_core.quantization.context import PendingRange
from cml_core.quantization.rows import STREAM_EXTRA_BITS, RowQuantizer, affine_form, fitted_grid, row_axes

ROWS = row_axes(3, -1)


class QuantizedAdd(ElementwiseOp):
    """Add and Sub: element-wise ops (a constant operand composes into the float mapping; two encrypted ones
    make one two-input lookup onto the output's grid), except for two encrypted (samples, rows, features)
    tensors of one shape whose rows differ in range (``rows.rows_differ``, on the sum or on the grids of an
    operand): a transformer's residual stream, where a class token's row sits beside the patches'. One grid
    would leave that row a few integers. Instead the sum is made in integers, in one of two ways:

    - *carried*: one operand is on grids already (row grids, constants added to them included), and with the
      other counted in steps of those grids by one lookup, the sum's integers span at most one bit more than
      the stream's grids (``rows.STREAM_EXTRA_BITS`` beyond ``n``) over calibration: the sum keeps that
      operand's grids and float mapping. The residual stream is not rounded again at each block, and the sum
      costs one lookup.
    - *on new grids*: each operand is brought by one lookup onto row grids fitted to the sum (``n`` bits and
      the stream's extra bits), in units of each row's step, and the integers are added (two one-input
      lookups, which rounding can narrow).

    Any other two encrypted tensors of one shape (a residual ``x + f(x)`` outside the row path) are summed in
    integers too, whenever that errs no more on the calibration data (largest error against the exact sum) than
    the two-input lookup onto the output's grid would: *carried* by an operand when the sum, counted in its
    steps, spans at most ``n + 1`` bits (one lookup of the other operand), else *on one grid*, both operands
    counted in the output grid's steps (two one-input lookups). Either replaces a lookup on ``2n`` packed bits
    (12 at ``n`` 6, a cost that grows fast with the bits) by ``n``-bit ones.
    """

    def encrypted_forward(self, ctx, inputs):
        way = self._way(ctx, inputs)
        if way is None:
            return super().encrypted_forward(ctx, inputs)
        a, b = inputs[0], inputs[1]
        if way == "new grids":
            return self._on_new_grids(ctx, a, b)
        if way == "one grid":
            return self._on_one_grid(ctx, a, b)
        return self._carried(ctx, a, b, int(way[-1]))

    def _way(self, ctx, inputs):
        """None (an element-wise op), ``"new grids"`` or ``"carried by 0"``/``"carried by 1"`` (the operand
        whose grids the sum keeps); decided on calibration, kept in ``state``."""
        if "row sum" not in self.state:
            out = self.bound.node.output[0]
            a, b = (list(inputs) + [None, None])[:2]
            eligible = (len(inputs) == 2 and a is not None and b is not None and not a.is_constant
                        and not b.is_constant and a.data is not b.data and a.shape == b.shape and len(a.shape) == 3
                        and not any(v.floor is not None or v.name in ctx.floors or id(v.data) in ctx.inputs
                                    for v in (a, b))
                        and out not in ctx.floors and out not in ctx.whole_numbers and out not in ctx.stated)
            way = None
            if eligible:
                values = self.call_numpy([a.float_value(), b.float_value()]) if ctx.calibrating else None
                on_rows = isinstance(fitted_grid(self, ctx, "sum", values, ROWS, _stream_bits(ctx)), RowQuantizer)
                carrier = self._carrier(ctx, a, b, _stream_bits(ctx))
                if carrier is not None and (on_rows or _on_row_grids(affine_form((a, b)[carrier]))):
                    way = f"carried by {carrier}"
                elif on_rows:
                    way = "new grids"
            if way is None and self._carried_anywhere(ctx, inputs):
                carrier = self._carrier(ctx, a, b, ctx.config.op_inputs, "one grid")
                if carrier is not None and self._errs_no_more(ctx, a, b, carrier):
                    way = f"carried by {carrier}"
                elif self._errs_no_more(ctx, a, b, None):
                    way = "one grid"
            self.state["row sum"] = way
        return self.state["row sum"]

    def _carried_anywhere(self, ctx, inputs):
        """Whether the sum may be carried by one operand's grid outside the row path: two encrypted operands of
        one shape from different integers, each on one grid (no per-feature input, no masking values), the
        output free of a grid the graph states."""
        out = self.bound.node.output[0]
        if len(inputs) != 2 or any(v is None or v.is_constant for v in inputs):
            return False
        a, b = inputs
        return (a.data is not b.data and a.shape == b.shape and out not in ctx.floors
                and out not in ctx.whole_numbers and out not in ctx.stated
                and not any(v.is_per_feature or v.floor is not None or v.name in ctx.floors
                            for v in (a, b)))

    def _signs(self):
        return (1.0, -1.0) if self.impl.op_type == "Sub" else (1.0, 1.0)

    def _errs_no_more(self, ctx, a, b, index):
        """Whether the sum carried by operand ``index`` errs on the calibration data (largest error against the
        sum of the operands' values) no more than the two-input lookup onto the output's grid would: not
        always so when a carrier's grid is not finer than the output's (a constant operand's one level)."""
        assert ctx.calibrating, "decided on the first calibration pass"
        exact = np.asarray(self.call_numpy([a.float_value(), b.float_value()]), np.float64)
        grid = ctx.quantizer_for(self.bound.node.output[0])
        if index is None:  # each operand counted in steps of the output's grid, the integers added
            signs = self._signs()
            total = sum(_steps(v, grid.scale, sign)(np.asarray(v.data)) for v, sign in zip((a, b), signs))
            carried = grid.scale * total
        else:
            carrier = (a, b)[index]
            moved = self._carried_integers(a, b, index, affine_form(carrier)[0],
                                           lambda v, table: table(np.asarray(v.data)))
            if self._signs()[index] > 0:
                carried = carrier.to_float(moved)
            else:
                carried = -np.asarray(carrier.to_float(-moved), np.float64)
        # the two-input lookup reads each operand requantized (a lookup of its own unless it is on a grid)
        requantized = [v.float_value() if v.is_affine else ctx.quantizer_for(v.name).dequant(
            ctx.quantizer_for(v.name).quant(v.float_value())) for v in (a, b)]
        looked_up = grid.dequant(grid.quant(np.asarray(self.call_numpy(requantized), np.float64)))
        errors = (np.max(np.abs(np.asarray(carried, np.float64) - exact), initial=0.0),
                  np.max(np.abs(looked_up - exact), initial=0.0))
        way = "one grid" if index is None else f"carried by {index}"
        carried_error, lookup_error = (ctx.calibrated_range(f"{self.where}:{way} {kind} error@{id(self):x}", 0.0, e)[1]
                                       for kind, e in zip(("sum", "lookup"), errors))
        return bool(carried_error <= lookup_error * (1 + 1e-9))

    def _carrier(self, ctx, a, b, bits, kind="rows"):
        """The operand whose grids can carry the sum in integers spanning at most ``bits + 1`` bits (see the
        class docstring), or None."""
        spans, pending = [], False
        for index in (0, 1):
            form = affine_form((a, b)[index])
            if form is None or not np.all(form[0] != 0):
                spans.append(np.inf)
                continue
            moved = self._carried_integers(a, b, index, form[0], lambda v, table: table(np.asarray(v.data)))
            try:
                low, high = ctx.calibrated_range(f"{self.where}:{kind} carried by {index}@{id(self):x}",
                                                 int(moved.min()), int(moved.max()))
                spans.append(high - low)
            except PendingRange:  # both are recorded on this chunk before the node stops
                pending = True
        if pending:
            raise PendingRange(self.where)
        fitting = [i for i, span in enumerate(spans) if span < 2 ** (bits + 1)]
        return min(fitting, key=lambda i: spans[i]) if fitting else None

    def _carried_integers(self, a, b, index, step, lookup):
        """The integers of the sum carried by operand ``index`` whose float mapping has slope ``step``:
        its own integers (negated when it is subtracted) plus the other operand counted in ``step``s
        (``lookup(value, table)`` applies the table)."""
        carrier, other = (a, b) if index == 0 else (b, a)
        signs = self._signs()
        steps = lookup(other, _steps(other, step, signs[1 - index]))
        return steps + carrier.data if signs[index] > 0 else steps - carrier.data

    def _carried(self, ctx, a, b, index):
        _record_input_reads(ctx, a, b)
        carrier = (a, b)[index]
        data = self._carried_integers(a, b, index, affine_form(carrier)[0],
                                      lambda v, table: ctx.lookup(v, table, key=f"{self.bound.name}:{1 - index}"))
        to_float = carrier.to_float
        if self._signs()[index] > 0:
            if carrier.is_affine:
                return QValue.affine(data, carrier.scale, carrier.zero_point)
            return QValue.lazy(data, to_float, carrier.uniform)
        # minus the carrier's float plus the other's steps: the carrier's mapping turned about zero
        return QValue.lazy(data, lambda q: -np.asarray(to_float(-np.asarray(q)), np.float64), carrier.uniform)

    def _on_new_grids(self, ctx, a, b):
        grid = fitted_grid(self, ctx, "sum", None, ROWS, _stream_bits(ctx))
        return grid.value(self._counted_in(ctx, a, b, grid.scale) + grid.zero_point)

    def _counted_in(self, ctx, a, b, step):
        """Both operands counted in ``step``s (a number, or row steps), one lookup each, and added."""
        name, signs = self.bound.name, self._signs()
        total = ctx.lookup(a, _steps(a, step, signs[0]), key=f"{name}:0")
        return total + ctx.lookup(b, _steps(b, step, signs[1]), key=f"{name}:1")

    def _on_one_grid(self, ctx, a, b):
        _record_input_reads(ctx, a, b)
        grid = ctx.quantizer_for(self.bound.node.output[0])
        total = self._counted_in(ctx, a, b, grid.scale)
        return QValue.affine(total + grid.zero_point if grid.zero_point else total, grid.scale, grid.zero_point)


def _record_input_reads(ctx, *values):
    """A model input's integers read as they are by the sum: recorded as such (``requantize`` computes nothing)."""
    for value in values:
        if id(value.data) in ctx.inputs and value.is_affine:
            ctx.requantize(value)


def _stream_bits(ctx):
    """Bits of the grids a sum of rows is made on (see ``rows.STREAM_EXTRA_BITS``)."""
    return ctx.config.op_inputs + STREAM_EXTRA_BITS


def _steps(value, step, sign):
    """The table counting ``sign * value`` in ``step``s (numbers, or arrays broadcasting by position)."""
    to_float = value.to_float

    def table(q):
        return np.rint(sign * np.asarray(to_float(q), np.float64) / step).astype(np.int64)

    return table


def _on_row_grids(form):
    """Whether an affine form's slope differs from row to row (a value on row grids)."""
    if form is None or not np.ndim(form[0]):
        return False
    slope = np.asarray(form[0])
    return bool(np.ptp(slope, axis=1).max() > 0) if slope.ndim == 3 and slope.shape[1] > 1 else False
