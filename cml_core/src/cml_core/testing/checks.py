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


def run_reference(model: Any, feeds: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
    """onnxruntime's outputs; where it has no kernel for the op, type or opset, the ONNX reference
    evaluator's (both are independent of cml)."""
    try:
        return run_onnxruntime(model, feeds)
    except Exception as exc:  # onnxruntime's NotImplemented / invalid-graph errors have no common base
        text = str(exc)
        # a type it has no kernel for can also surface as a type error on a Cast onnxruntime inserts itself
        # (DequantizeLinear of float4 codes to float16, seen under a random seed)
        if "NOT_IMPLEMENTED" not in text and "opset" not in text.lower() and "InsertedPrecisionFreeCast" not in text:
            raise
    from onnx.reference import ReferenceEvaluator

    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


def check_op(
    op_type: str,
    inputs: Sequence[NDArray[Any] | None],
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
        assert_close(g, e, what=f"{op_type} (opset {opset}) output {i}", rtol=rtol, atol=atol)
    return got
