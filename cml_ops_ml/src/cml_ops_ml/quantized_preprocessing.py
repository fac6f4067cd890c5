"""Quantized twins of the ONNX-ML preprocessing ops that have a form on encrypted numbers.

- ``QuantizedNormalizer``: each row divided by its norm. L1 and L2: one lookup per element to its exact
  integer level (``|q - z|`` or ``(q - z)**2`` of the requantized input), an integer sum per row, one lookup
  of the row's sum to the logarithm of its norm (uniform steps of the logarithm: every row's norm is
  known to the same relative precision, whatever its size), then one two-input lookup per element of
  (element, row code) to the normalized value. MAX: the row's maximum is a tree of encrypted maximums
  of the integers (exact for the quantized input), then the same two-input lookup.
- ``QuantizedOneHotEncoder`` (numeric categories): each input element is repeated once per category
  (laid out as the float op's output, categories on a new last axis) with the float mapping "the
  element, truncated to an integer, equals this category" (0 or 1). Like an ``ElementwiseOp`` it costs no
  lookup by itself: the equality becomes a 1-bit lookup where a reader needs integers (a Concat or a
  matrix product requantizes the 0/1 values exactly on one bit), or is applied by the client when the
  one-hot is a model output.
- ``QuantizedLabelEncoder`` (numeric keys and values): the key-to-value table (unknown keys to the default)
  is a univariate float mapping, composed like any ``ElementwiseOp`` into the next lookup.

String categories, keys or values have no encrypted form (an encrypted tensor holds numbers): those
nodes are refused on encrypted inputs, naming the node; map strings in the clear. OneHotEncoder and
LabelEncoder read their input only through equalities with their categories or keys: a float model
input read only by them is quantized by counting those cuts (``decision_cuts``), so every equality is
decided exactly as in float whatever the bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ElementwiseOp, QuantContext, QuantizedOp, QValue, backend
from cml_core.signature import REQUIRED
from numpy.typing import NDArray


def _attributes(op: QuantizedOp) -> dict[str, Any]:
    defaults = {k: v for k, v in op.signature.attributes.items() if v is not REQUIRED}
    return {**defaults, **op.attributes}


class QuantizedNormalizer(QuantizedOp):
    """Normalizer on a (samples, features) input (see the module): lookups per element, an integer sum or
    encrypted maximum per row, a lookup of the row's norm, a two-input lookup per element."""

    #: a Normalizer of the model's final scores (skl2onnx ends every LogisticRegression with one over its
    #: probabilities) runs on the client, on the decrypted scores: no lookup, and the scores it reads may be
    #: rows the client decodes (SOFTMAX), which no lookup can read (see client_tail)
    finishes_on_client = True

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        source = inputs[0]
        assert source is not None
        norm = _attributes(self)["norm"]
        if len(source.shape) < 2:
            raise QuantizationError(f"{self.where}: the quantized Normalizer takes (samples, features) inputs, "
                                    f"got shape {source.shape}")
        if getattr(source.to_float, "row_scores", None) is not None:
            raise QuantizationError(f"{self.where}: its input is decoded by the client from whole rows of scores (a "
                                    "label, or SOFTMAX probabilities), which no lookup can read; normalize the "
                                    "decrypted output instead")
        q = ctx.requantize(source)
        if q.floor is not None:
            raise QuantizationError(f"{self.where}: the input holds masking values (-inf); a norm of them has "
                                    "no quantized form")
        data = q.data if len(q.shape) == 2 else q.data.reshape((q.shape[0], -1))
        scale, zero_point = float(q.scale), int(q.zero_point)  # type: ignore[arg-type]
        if norm == "MAX":
            row = backend.reduce_max(data, (1,))  # integers are increasing in the values: the max's integer

            def row_norm(codes: NDArray[Any]) -> NDArray[Any]:
                return scale * (np.asarray(codes, dtype=np.float64) - zero_point)
        elif norm in ("L1", "L2"):
            row, row_norm = self._norm_code(ctx, data, scale, zero_point, 1 if norm == "L1" else 2)
        else:
            raise QuantizationError(f"{self.where}: norm {norm!r} is not one of MAX, L1, L2")
        out_name = self.bound.node.output[0]
        if "out" not in self.state:
            self.state["out"] = ctx.quantizer_for(out_name)
        q_out = self.state["out"]

        def table(codes: NDArray[Any], rows: NDArray[Any]) -> NDArray[Any]:
            values = scale * (np.asarray(codes, dtype=np.float64) - zero_point)
            norms = row_norm(rows)
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.where(norms != 0, values / np.where(norms != 0, norms, 1.0), values)
            return q_out.quant(out)  # type: ignore[no-any-return]

        operands = [data, backend.broadcast(row, tuple(data.shape))]
        result = backend.multi_lookup(table, *operands)
        ctx.record_multi_lookup(out_name, operands)
        return QValue.quantized(result, q_out)

    def _norm_code(self, ctx: QuantContext, data: Any, scale: float, zero_point: int,
                   power: int) -> tuple[Any, Any]:
        """(per row, the integer of the logarithm of its norm; that integer's norm as a function)."""
        levels = ctx.lookup(QValue.affine(data, scale, zero_point), lambda v: np.abs(v - zero_point) ** power,
                            key=f"{self.bound.name}:levels")
        total = np.sum(levels, axis=1, keepdims=True)  # the exact integer sum of |level| ** power per row
        ctx.record_accumulator(total)

        def norm_of(totals: NDArray[Any]) -> NDArray[Any]:
            t = np.asarray(totals, dtype=np.float64)
            return scale * (t if power == 1 else np.sqrt(t))

        values = None
        if ctx.calibrating:
            norms = norm_of(np.asarray(total))
            values = np.log(norms[norms > 0])
        q_log = self.fitted_quantizer(ctx, "log_norm", values)
        lowest = float(q_log.dequant(q_log.q_min))

        def code(totals: NDArray[Any]) -> NDArray[Any]:
            norms = norm_of(totals)
            with np.errstate(divide="ignore"):
                logs = np.where(norms > 0, np.log(np.where(norms > 0, norms, 1.0)), lowest)
            return q_log.quant(logs)

        # a row whose sum is 0 holds only zeros: its elements divide to 0 whatever its code says
        row = ctx.lookup(QValue.lazy(total, lambda t: t, True, name=f"{self.bound.name}:sum"), code,
                         key=f"{self.bound.name}:norm")

        def row_norm(codes: NDArray[Any]) -> NDArray[Any]:
            return np.exp(np.asarray(q_log.dequant(codes), dtype=np.float64))

        return row, row_norm


def _categories(op: QuantizedOp) -> NDArray[np.int64]:
    a = _attributes(op)
    if not a.get("cats_int64s"):
        raise QuantizationError(f"{op.where}: string categories (cats_strings) have no encrypted form: an encrypted "
                                "tensor holds numbers; one-hot encode strings in the clear before encryption")
    return np.asarray([int(c) for c in a["cats_int64s"]], dtype=np.int64)


def _integer_cuts(value: int) -> list[tuple[float, bool]]:
    """The cuts ``(threshold, inclusive)`` that enclose the floats truncating to ``value`` (``x.astype(int64)``)."""
    if value > 0:  # [value, value + 1)
        return [(float(value), True), (float(value + 1), True)]
    if value < 0:  # (value - 1, value]
        return [(float(value - 1), False), (float(value), False)]
    return [(-1.0, False), (1.0, True)]  # (-1, 1)


def _cuts_per_feature(thresholds: list[tuple[float, bool]], shape: tuple[int, ...]
                      ) -> list[tuple[NDArray[Any], bool]] | None:
    if len(shape) != 2 or not thresholds:
        return None
    return [(np.full(shape[-1], t), inclusive) for t, inclusive in sorted(set(thresholds))]


class QuantizedOneHotEncoder(QuantizedOp):
    """OneHotEncoder of numeric categories: the input's integers repeated per category with the float mapping
    ``trunc(x) == category`` (see the module). A value outside the categories gives zeros; with ``zeros=0``
    the float op raises there, which an encrypted program cannot: it gives zeros too."""

    def decision_cuts(self, index: int, constants: Sequence[Any],
                      shape: tuple[int, ...]) -> list[tuple[NDArray[Any], bool]] | None:
        """Each category's interval of truncation (``[c, c + 1)`` for a positive ``c``)."""
        a = _attributes(self)
        if index != 0 or not a.get("cats_int64s"):
            return None
        return _cuts_per_feature([cut for c in a["cats_int64s"] for cut in _integer_cuts(int(c))], shape)

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        source = inputs[0]
        assert source is not None
        cats = _categories(self)
        shape = tuple(source.shape)
        to_float = source.to_float
        assert to_float is not None
        if source.is_per_feature:
            ctx.read_per_feature(source)  # each copy decoded with its own feature's quantizer: no lookup
        data = backend.broadcast(source.data.reshape(shape + (1,)), shape + (len(cats),))

        def one_hot(codes: NDArray[Any]) -> NDArray[Any]:
            codes = np.asarray(codes)
            out = np.zeros(codes.shape, dtype=np.float64)
            for i, category in enumerate(cats):
                values = np.asarray(to_float(codes[..., i]), dtype=np.float64)  # the input's mapping, per copy
                out[..., i] = np.trunc(values) == float(category)
            return out

        return QValue.lazy(data, one_hot, False)


#: LabelEncoder attributes whose strings have no encrypted form
_STRING_ATTRIBUTES = ("keys_strings", "values_strings", "classes_strings")
_TENSOR_ATTRIBUTES = ("keys_tensor", "values_tensor", "default_tensor")


class QuantizedLabelEncoder(ElementwiseOp):
    """LabelEncoder with numeric keys and values: the table as a univariate float mapping (unknown keys to the
    default), composed into the next lookup. String keys or values are refused on encrypted inputs."""

    def _keys(self) -> list[float]:
        a = _attributes(self)
        keys: Any = a.get("keys_floats") or a.get("keys_int64s")
        if not keys and a.get("keys_tensor") is not None:
            keys = np.asarray(a["keys_tensor"]).ravel().tolist()
        return [float(k) for k in (keys or [])]

    def decision_cuts(self, index: int, constants: Sequence[Any],
                      shape: tuple[int, ...]) -> list[tuple[NDArray[Any], bool]] | None:
        """Each key is an interval of its own: the value equal to it."""
        if index != 0 or self._strings():
            return None
        keys = [k for k in self._keys() if np.isfinite(k)]
        return _cuts_per_feature([(k, inclusive) for k in keys for inclusive in (True, False)], shape)

    def _strings(self) -> list[str]:
        a = _attributes(self)
        found = [name for name in _STRING_ATTRIBUTES if a.get(name)]
        found += [name for name in _TENSOR_ATTRIBUTES
                  if a.get(name) is not None and np.asarray(a[name]).dtype.kind in "OUS"]
        return found

    def encrypted_forward(self, ctx: QuantContext, inputs: Sequence[QValue | None]) -> QValue:
        strings = self._strings()
        if strings:
            raise QuantizationError(
                f"{self.where}: a LabelEncoder with string keys or values ({', '.join(strings)}) has no encrypted "
                "form: an encrypted tensor holds numbers; map strings in the clear, before encryption or after "
                "decryption")
        source = inputs[0]
        assert source is not None
        if not source.is_per_feature:
            return super().encrypted_forward(ctx, inputs)
        # a model input quantized per feature (by counting the keys as cuts): its mapping is per position
        ctx.read_per_feature(source)
        to_float = source.to_float
        assert to_float is not None

        def encoded(codes: NDArray[Any]) -> NDArray[Any]:
            return np.asarray(self.call_numpy([np.asarray(to_float(codes), dtype=np.float64)]))

        return QValue.lazy(source.data, encoded, False)
