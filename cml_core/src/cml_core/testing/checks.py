"""Compare cml's result for an op with a reference, using dtype-keyed tolerances."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..registry import OpRegistry
from .models import feeds_of, make_node_model, run_cml, run_onnxruntime

# (rtol, atol) per dtype; integers and booleans must match exactly.
_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-2, 1e-3),
    "float32": (2e-5, 1e-6),
    "float64": (1e-10, 1e-12),
}


def tolerance(dtype: Any) -> tuple[float, float]:
    """(rtol, atol) used to compare values of ``dtype``; (0, 0) for exact types."""
    return _TOLERANCES.get(np.dtype(dtype).name, (0.0, 0.0))


def assert_close(actual: NDArray[Any], expected: NDArray[Any], *, what: str = "output",
                 rtol: float | None = None, atol: Any = None) -> None:
    """Assert same dtype, same shape and values equal within the dtype's tolerance (NaN equals NaN).

    ``atol`` may be an array (one bound per element, broadcast against the outputs).
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    r, a = tolerance(expected.dtype)
    r = r if rtol is None else rtol
    a = a if atol is None else atol
    if np.ndim(a) > 0:
        close = np.isclose(actual, expected, rtol=r, atol=a, equal_nan=True)
        if not np.all(close):
            i = np.unravel_index(int(np.argmin(close)), close.shape)
            bound = np.broadcast_to(a, close.shape)[i]
            raise AssertionError(f"{what}: {int(close.size - close.sum())} of {close.size} values differ beyond "
                                 f"rtol={r} and the per-element atol; first at {i}: {actual[i]!r} vs "
                                 f"{expected[i]!r} (atol there {bound:.3g})")
    elif r == 0 and a == 0:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        np.testing.assert_allclose(actual, expected, rtol=r, atol=a, equal_nan=True, err_msg=what)


def assert_same_value(actual: Any, expected: Any, *, what: str = "output", rtol: float | None = None,
                      atol: Any = None) -> None:
    """``assert_close`` for tensors, element by element for sequences (lists), and ``None`` (an empty
    optional) only for ``None``."""
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{what}: {_kind(actual)}, expected {_kind(expected)}"
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)), f"{what}: {_kind(actual)}, expected a sequence"
        assert len(actual) == len(expected), f"{what}: a sequence of {len(actual)}, expected {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, what=f"{what}[{i}]", rtol=rtol, atol=atol)
    else:
        assert not isinstance(actual, (list, tuple)), f"{what}: a sequence, expected a tensor"
        assert_close(actual, expected, what=what, rtol=rtol, atol=atol)


def _kind(value: Any) -> str:
    if value is None:
        return "an empty optional"
    return "a sequence" if isinstance(value, (list, tuple)) else "a tensor"


def run_reference(model: Any, feeds: dict[str, Any]) -> list[Any]:
    """onnxruntime's outputs; where it has no kernel for the op, type or opset, the ONNX reference
    evaluator's; where neither runs the op at the model's opset, onnxruntime's (or the evaluator's) on the
    model converted by ONNX's version converter to the nearest opset where the op is defined anew (all
    three are independent of cml).
    """
    try:
        return run_onnxruntime(model, feeds)
    except Exception as exc:  # onnxruntime's NotImplemented / invalid-graph errors have no common base
        if not _no_kernel(str(exc)):
            raise
    try:
        return _run_reference_evaluator(model, feeds)
    except Exception as exc:  # noqa: BLE001  (no implementation of this version: try an equivalent model)
        first = exc
    for converted in _converted_models(model):
        for run in (run_onnxruntime, _run_reference_evaluator):
            try:
                return run(converted, feeds)
            except Exception:  # noqa: BLE001, S112  (this conversion does not run either: try the next)
                continue
    raise first


def _no_kernel(text: str) -> bool:
    """Whether an onnxruntime error says it cannot run the op (rather than that the values are wrong)."""
    # a type it has no kernel for can also surface as a type error on a Cast onnxruntime inserts itself
    # (DequantizeLinear of float4 codes to float16, seen under a random seed); ops of domains its default
    # build leaves out (ai.onnx.preview, ai.onnx.preview.training) are "not a registered function/op"
    return ("NOT_IMPLEMENTED" in text or "opset" in text.lower() or "InsertedPrecisionFreeCast" in text
            or "is not a registered function/op" in text)


def _run_reference_evaluator(model: Any, feeds: dict[str, Any]) -> list[Any]:
    from onnx.reference import ReferenceEvaluator

    values = ReferenceEvaluator(model).run(None, feeds)
    return [_from_reference(v, out.type) for v, out in zip(values, model.graph.output)]


def _converted_models(model: Any) -> Any:
    """``model`` converted to the other opsets where its (single standard) op has a since-version: later
    ones first, nearest first, then earlier ones; conversions ONNX's converter refuses are skipped."""
    import onnx
    from onnx import version_converter

    ops = {(n.domain or "", n.op_type) for n in model.graph.node}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if len(ops) != 1 or opset is None or next(iter(ops))[0] != "":
        return
    op_type = next(iter(ops))[1]
    versions = sorted({s.since_version for s in onnx.defs.get_all_schemas_with_history()
                       if s.name == op_type and s.domain == "" and not s.deprecated})
    since = max([v for v in versions if v <= opset], default=opset)
    for target in [v for v in versions if v > since] + [v for v in reversed(versions) if v < since]:
        try:
            converted = version_converter.convert_version(model, target)
        except Exception:  # noqa: BLE001, S112  (no adapter between these versions)
            continue
        if [n.op_type for n in converted.graph.node] == [op_type]:
            converted.ir_version = min(converted.ir_version, model.ir_version)
            yield converted


def _from_reference(value: Any, declared: Any) -> Any:
    """A reference evaluator output as cml gives it: its ``Optional`` op wraps a tensor in a list of
    one (an empty optional in ``[None]``), where an optional tensor is the tensor itself or ``None``."""
    if value is None:
        return None
    if (declared.WhichOneof("value") == "optional_type" and isinstance(value, list)
            and declared.optional_type.elem_type.WhichOneof("value") == "tensor_type"):
        return None if not value or value[0] is None else np.asarray(value[0])
    return value if isinstance(value, list) else np.asarray(value)


def check_op(
    op_type: str,
    inputs: Sequence[Any],
    attributes: dict[str, Any] | None = None,
    *,
    opset: int,
    domain: str = "",
    constant_inputs: Sequence[int] = (),
    n_outputs: int = 1,
    reference: Callable[..., Sequence[NDArray[Any]]] | None = None,
    registry: OpRegistry | None = None,
    rtol: float | None = None,
    atol: Any = None,
) -> list[NDArray[Any]]:
    """Run a one-node model through cml and a reference; assert the outputs agree.

    ``inputs`` may hold lists of arrays (sequence inputs, see ``make_node_model``); sequence
    outputs are compared element by element.

    The reference is onnxruntime unless ``reference`` is given (needed for custom domains): a
    callable receiving the same inputs and attributes and returning the expected outputs.
    Returns cml's outputs.
    """
    attributes = dict(attributes or {})
    model = make_node_model(op_type, inputs, attributes, opset=opset, domain=domain,
                            constant_inputs=constant_inputs, n_outputs=n_outputs)
    feeds = feeds_of(model, inputs)
    got = run_cml(model, feeds, registry)
    if reference is None:
        expected = run_reference(model, feeds)
    else:
        out: Any = reference(*inputs, **attributes)
        expected = list(out) if isinstance(out, (tuple, list)) else [out]
    assert len(got) == len(expected), f"{op_type}: {len(got)} outputs, reference gave {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert_same_value(g, e, what=f"{op_type} (opset {opset}) output {i}", rtol=rtol, atol=atol)
    return got
