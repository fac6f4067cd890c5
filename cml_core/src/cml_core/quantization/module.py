"""Post-training quantization of a ``NumpyModule`` into an integer-only ``QuantizedModule``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import BitWidthError, QuantizationError
from .base import QuantizedOp
from .context import MAX_LOOKUP_BITS, AccumulatorRecord, LookupSite, QuantConfig, QuantContext
from .quantizers import UniformQuantizer, check_n_bits
from .values import QValue

if TYPE_CHECKING:
    from ..numpy_module import NumpyModule

N_BITS_KEYS = ("model_inputs", "op_inputs", "op_weights", "model_outputs")


def is_exact_rounding(method: str, where: str = "") -> bool:
    """``True`` for ``"exact"``, ``False`` for ``"approximate"``.

    Raises:
        QuantizationError: any other method (``where`` prefixes the message).
    """
    if method not in ("exact", "approximate"):
        raise QuantizationError(f"{where + ': ' if where else ''}rounding method must be 'exact' or 'approximate', "
                                f"got {method!r}")
    return method == "exact"


def parse_config(n_bits: Any, rounding_threshold_bits: Any) -> QuantConfig:
    """A ``QuantConfig`` from the user's ``n_bits`` (int or dict) and rounding setting.

    Raises:
        QuantizationError: unknown keys, or bit widths out of range.
    """
    if isinstance(n_bits, dict):
        unknown = sorted(set(n_bits) - set(N_BITS_KEYS))
        if unknown:
            raise QuantizationError(f"unknown n_bits key(s) {unknown}; valid keys: {list(N_BITS_KEYS)}")
        if "op_inputs" not in n_bits or "op_weights" not in n_bits:
            raise QuantizationError("an n_bits dict needs at least 'op_inputs' and 'op_weights'")
        bits = {k: check_n_bits(v, f"n_bits[{k!r}]") for k, v in n_bits.items()}
        bits.setdefault("model_inputs", bits["op_inputs"])
        bits.setdefault("model_outputs", bits["op_inputs"])
    else:
        value = check_n_bits(n_bits)
        bits = dict.fromkeys(N_BITS_KEYS, value)
    rounding, exact = None, True
    if rounding_threshold_bits is not None:
        if isinstance(rounding_threshold_bits, dict):
            unknown = sorted(set(rounding_threshold_bits) - {"n_bits", "method"})
            if unknown or "n_bits" not in rounding_threshold_bits:
                raise QuantizationError(
                    "rounding_threshold_bits as a dict takes 'n_bits' and optionally 'method' "
                    f"('exact' or 'approximate'); got {sorted(rounding_threshold_bits)}"
                )
            rounding = check_n_bits(rounding_threshold_bits["n_bits"], "rounding_threshold_bits['n_bits']")
            exact = is_exact_rounding(str(rounding_threshold_bits.get("method", "exact")).lower())
        else:
            rounding = check_n_bits(rounding_threshold_bits, "rounding_threshold_bits")
    return QuantConfig(bits["model_inputs"], bits["op_inputs"], bits["op_weights"], bits["model_outputs"],
                       rounding, exact)


def _as_inputs(module: NumpyModule, data: Any, what: str) -> list[NDArray[Any]]:
    items = list(data) if isinstance(data, tuple) else [data]
    if len(items) != len(module.inputs):
        raise QuantizationError(
            f"{what}: the model takes {len(module.inputs)} input(s) {module.input_names}; pass a tuple "
            f"with one array per input (got {len(items)})"
        )
    arrays = module.check_inputs(items)
    for spec, arr in zip(module.inputs, arrays):
        if arr.size == 0 or (arr.ndim > 0 and arr.shape[0] == 0):
            raise QuantizationError(f"{what}: input {spec.name!r} is empty")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise QuantizationError(f"{what}: input {spec.name!r} contains NaN or infinity")
    return arrays


@dataclass(frozen=True)
class BitWidthRow:
    """One line of ``bitwidth_report``: a lookup or an accumulator of an ONNX node."""

    node: str
    op_type: str
    kind: str  # "lookup" or "accumulator"
    tensor: str
    low: int
    high: int
    bits: int  # bits of the integer range seen in calibration
    lookup_bits: int | None  # bits the lookup runs on after rounding (lookups only)
    lsbs_removed: int


class BitWidthReport(list[BitWidthRow]):
    """Rows per ONNX node; ``str()`` gives a table."""

    @property
    def max_lookup_bits(self) -> int:
        return max((r.lookup_bits or 0 for r in self if r.kind == "lookup"), default=0)

    def __str__(self) -> str:
        head = f"{'node':<24} {'op':<14} {'kind':<12} {'range':<24} {'bits':>4} {'lookup bits':>11}"
        lines = [head, "-" * len(head)]
        for r in self:
            lb = "" if r.lookup_bits is None else str(r.lookup_bits)
            lines.append(f"{r.node[:24]:<24} {r.op_type[:14]:<14} {r.kind:<12} {f'[{r.low}, {r.high}]':<24} "
                         f"{r.bits:>4} {lb:>11}")
        return "\n".join(lines)


class QuantizedModule:
    """An integer-only version of a ``NumpyModule``.

    ``qmodule(x)`` (or ``forward(x)``) takes floats and returns floats:
    ``quantize_input`` -> ``quantized_forward`` (integers only) -> ``dequantize_output``.
    """

    def __init__(self, module: NumpyModule, config: QuantConfig, float_ranges: dict[str, tuple[float, float]],
                 input_quantizers: list[UniformQuantizer], ops: list[QuantizedOp],
                 producers: dict[str, tuple[str, str]]) -> None:
        self.numpy_module = module
        self.config = config
        self.float_ranges = float_ranges
        self.input_quantizers = input_quantizers
        self.ops = ops
        self.producers = producers
        self.sites: dict[str, LookupSite] = {}
        self.accumulators: dict[str, AccumulatorRecord] = {}
        self._outputs: list[QValue] = []
        self._calibration_inputs: list[NDArray[Any]] = []
        self.fhe_circuit: Any = None

    # -- the three steps -----------------------------------------------------------------------
    def quantize_input(self, *x: Any) -> Any:
        """Integers for the float inputs (one array per model input; a tuple when several)."""
        arrays = self.numpy_module.check_inputs(x)
        q = tuple(qz.quant(a) for qz, a in zip(self.input_quantizers, arrays))
        return q[0] if len(q) == 1 else q

    def quantized_forward(self, *q: Any, fhe: str = "disable") -> Any:
        """Integer outputs for integer inputs.

        ``fhe``: ``"disable"`` runs the integer program in numpy (vectorized over the batch),
        ``"simulate"`` runs the compiled circuit's simulation, ``"execute"`` encrypts, runs and
        decrypts (keys generated once). The two last need ``compile`` first.
        """
        if fhe == "disable":
            outs = self._run([np.asarray(v, dtype=np.int64) for v in q], calibrating=False)
            data = tuple(np.asarray(o.data) for o in outs)
        else:
            from ..fhe import run_circuit

            data = run_circuit(self, q, fhe)
        return data[0] if len(data) == 1 else data

    def dequantize_output(self, *q: Any) -> Any:
        """Floats (in the model's output dtypes) for the integer outputs."""
        outs = []
        for value, spec, data in zip(self._outputs, self.numpy_module.outputs, q):
            assert value.to_float is not None
            outs.append(value.to_float(np.asarray(data)).astype(spec.dtype))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def forward(self, *x: Any, fhe: str = "disable") -> Any:
        """Float outputs for float inputs through the integer program (see ``quantized_forward``)."""
        q = self.quantize_input(*x)
        out = self.quantized_forward(*(q if isinstance(q, tuple) else (q,)), fhe=fhe)
        return self.dequantize_output(*(out if isinstance(out, tuple) else (out,)))

    __call__ = forward

    # -- reports -------------------------------------------------------------------------------
    def bitwidth_report(self) -> BitWidthReport:
        """Per ONNX node: integer range seen in calibration and bits needed, in graph order."""
        order = {op.bound.name: i for i, op in enumerate(self.ops)}
        rows = [BitWidthRow(a.node, a.op_type, "accumulator", "", a.low, a.high, a.bits, None, 0)
                for a in self.accumulators.values()]
        rows += [BitWidthRow(s.node, s.op_type, "lookup", s.tensor, s.low, s.high, s.input_bits, s.lookup_bits,
                             s.lsbs_removed) for s in self.sites.values()]
        rows.sort(key=lambda r: (order.get(r.node, -1), r.kind))
        return BitWidthReport(rows)

    @property
    def lookup_count(self) -> int:
        """Table lookups per sample in the integer program (element-wise lookups count once per tensor)."""
        return len(self.sites)

    def check_bit_widths(self, limit: int = MAX_LOOKUP_BITS) -> None:
        """Raise ``BitWidthError`` for the first lookup needing more than ``limit`` bits."""
        for row in self.bitwidth_report():
            if row.kind == "lookup" and row.lookup_bits is not None and row.lookup_bits > limit:
                raise BitWidthError(
                    f"node {row.node!r} ({row.op_type}) needs a {row.lookup_bits}-bit table lookup "
                    f"(integer range [{row.low}, {row.high}] seen in calibration), above the {limit} bits "
                    "FHE supports. Ways out: quantize with fewer bits (n_bits), set "
                    "rounding_threshold_bits (e.g. 6) to round accumulators before lookups, or check that "
                    "the calibration set is representative (outliers widen ranges)."
                )

    def rounding_bits(self) -> dict[str, int | None]:
        """Per rounded lookup (keyed by its tensor): the bits kept before the lookup (None: not rounded)."""
        return {key: (site.lookup_bits if site.lsbs_removed else None)
                for key, site in self.sites.items() if site.packed_bits is None}

    def set_rounding(self, bits: int | None | dict[str, int | None], method: str | None = None) -> QuantizedModule:
        """Change the rounding before lookups and recalibrate the integer ranges; drops any circuit.

        ``bits`` is one value for every lookup or a dict keyed by lookup tensor or node name (the
        keys of ``rounding_bits()``, or the ``node`` column of ``bitwidth_report()``) that
        overrides the current setting for those lookups; ``None`` means no rounding. ``method``
        is ``"exact"`` or ``"approximate"`` (default: unchanged). Multi-input lookups are never
        rounded. The float calibration ranges stay; the integer pass over the calibration data
        runs again, since rounding one lookup moves the ranges of everything after it.

        Raises:
            QuantizationError: an unknown key, a bit count below 1, or an unknown method.
        """
        sites = {k: s for k, s in self.sites.items() if s.packed_bits is None}
        by_node = {s.node: k for k, s in sites.items()}
        wanted = bits if isinstance(bits, dict) else {}
        unknown = sorted(k for k in wanted if k not in sites and k not in by_node)
        if unknown:
            raise QuantizationError(f"set_rounding: no rounded lookup named {unknown}; lookups: {sorted(sites)}")
        for key, value in (wanted.items() if isinstance(bits, dict) else [("all lookups", bits)]):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise QuantizationError(f"set_rounding: bits for {key!r} must be a positive int or None, got {value!r}")
        exact = None if method is None else is_exact_rounding(method, "set_rounding")
        if isinstance(bits, dict):
            self.config.rounding_per_lookup.update(
                {(k if k in sites else by_node[k]): (None if v is None else int(v)) for k, v in bits.items()})
        else:
            self.config.rounding_bits, self.config.rounding_per_lookup = bits, {}
        if exact is not None:
            self.config.rounding_exact = exact
        self.calibrate_integers()
        return self

    def calibrate_integers(self) -> None:
        """Run the integer program on the calibration data, recording lookup and accumulator ranges."""
        self.sites.clear()
        self.accumulators.clear()
        outputs = self._run(self._calibration_inputs, calibrating=True)
        for spec, out in zip(self.numpy_module.outputs, outputs):
            if out.is_constant:
                raise QuantizationError(f"model output {spec.name!r} does not depend on the inputs; nothing to encrypt")
        self._outputs = [dataclasses.replace(o, data=None) for o in outputs]
        self.fhe_circuit = None

    # -- compilation (see cml_core.fhe) --------------------------------------------------------
    def compile(self, calibration_x: Any, p_error: float | None = None, global_p_error: float | None = None,
                configuration: Any = None, verbose: bool = False) -> Any:
        """Compile the integer program to an FHE circuit with concrete-python; returns the circuit.

        Raises:
            BitWidthError: a lookup needs more than 16 bits (checked before compiling).
        """
        from ..fhe import compile_quantized_module

        return compile_quantized_module(self, calibration_x, p_error=p_error, global_p_error=global_p_error,
                                        configuration=configuration, verbose=verbose)

    # -- the integer program -------------------------------------------------------------------
    def _run(self, q_inputs: Sequence[Any], calibrating: bool) -> list[QValue]:
        ctx = QuantContext(self.config, self.float_ranges, self.producers, self.sites, self.accumulators,
                           calibrating)
        env: dict[str, QValue] = {name: QValue.constant(v, name) for name, v in self.numpy_module.constants.items()}
        for spec, qz, data in zip(self.numpy_module.inputs, self.input_quantizers, q_inputs):
            env[spec.name] = QValue.affine(data, qz.scale, qz.zero_point, spec.name)
        for op in self.ops:
            node = op.bound.node
            ctx.node_name, ctx.op_type = op.bound.name, op.impl.display_name
            inputs = [env[n] if n else None for n in node.input]
            try:
                outs = op.forward(ctx, inputs)
            except QuantizationError:
                raise
            except Exception as exc:
                if not calibrating:
                    raise
                raise QuantizationError(f"{op.where}: quantized forward failed: {type(exc).__name__}: {exc}") from exc
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = dataclasses.replace(value, name=name)
        return [env[name] for name in self.numpy_module.output_names]

    def __repr__(self) -> str:
        c = self.config
        kept = set(self.rounding_bits().values())
        rounding = next(iter(kept)) if len(kept) == 1 else ("per lookup" if kept else None)
        method = "exact" if c.rounding_exact else "approximate"
        return (f"QuantizedModule(n_bits={{inputs: {c.model_inputs}, ops: {c.op_inputs}, weights: {c.op_weights}}}, "
                f"lookups={self.lookup_count}, rounding={rounding}{'' if rounding is None else ' ' + method})")


def quantize_module(module: NumpyModule, calibration_data: Any, n_bits: Any = 8,
                    rounding_threshold_bits: Any = None) -> QuantizedModule:
    """Calibrate ``module`` on ``calibration_data`` and build its ``QuantizedModule``.

    ``n_bits`` is an int, or a dict with ``model_inputs``, ``op_inputs``, ``op_weights`` and
    ``model_outputs``. ``rounding_threshold_bits`` (int, or ``{"n_bits": int, "method":
    "exact" | "approximate"}``) rounds each lookup input to that many bits.

    Raises:
        QuantizationError: bad calibration data (wrong shape, empty, NaN/inf), bad settings, a node
            producing NaN/inf on the calibration data, or an op without a quantized implementation.
    """
    config = parse_config(n_bits, rounding_threshold_bits)
    inputs = _as_inputs(module, calibration_data, "calibration data")
    missing = [b for b in module.nodes if b.impl.quantized is None]
    if missing:
        names = ", ".join(f"{b.where} from {b.impl.provider}" for b in missing[:5])
        raise QuantizationError(f"{len(missing)} node(s) have no quantized implementation: {names}")
    values = module.run(*inputs, keep_intermediates=True)
    producers: dict[str, tuple[str, str]] = {}
    ranges: dict[str, tuple[float, float]] = {}
    for bound in module.nodes:
        for name in bound.node.output:
            if name:
                producers[name] = (bound.name, bound.impl.display_name)
    for name, value in values.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiub" or arr.size == 0 or name in module.constants:
            continue
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            node, op = producers.get(name, ("?", "?"))
            raise QuantizationError(
                f"node {node!r} ({op}) produces NaN or infinity in tensor {name!r} on the calibration data; "
                "check the inputs' domain for this op (e.g. Log of non-positive values)"
            )
        ranges[name] = (float(arr.min()), float(arr.max()))
    input_quantizers = [UniformQuantizer.fit(*ranges[s.name], config.model_inputs) for s in module.inputs]
    ops = [b.impl.quantized(b) for b in module.nodes]  # type: ignore[misc]
    qmodule = QuantizedModule(module, config, ranges, input_quantizers, ops, producers)
    qmodule._calibration_inputs = [qz.quant(a) for qz, a in zip(input_quantizers, inputs)]
    qmodule.calibrate_integers()
    return qmodule
