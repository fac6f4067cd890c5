"""Every registered op, at each registered since-version, against onnxruntime."""

import importlib
import pathlib

import numpy as np
import pytest
from cml_core.testing import check_op
from hypothesis import given
from hypothesis import strategies as st

from cml_core import get_registry

from .known_disagreements import FLOAT64_ORACLE, KNOWN_DISAGREEMENTS, UINT8_ONNXRUNTIME


def _case_modules():
    """Every ``cases_*.py`` module of this folder: each lists ``CASES`` and may add ``KNOWN_DISAGREEMENTS`` and
    ``FLOAT64_ORACLE`` entries of its own (same meaning as in known_disagreements.py)."""
    folder = pathlib.Path(__file__).parent
    for path in sorted(folder.glob("cases_*.py")):
        yield importlib.import_module(f"{__package__}.{path.stem}")


CASES = {}
# (op type, since-version) -> (version, translation of an Example): no oracle runs this version, which means
# what that one means once the example is translated; the oracle runs the translated example at that version
ORACLE_AT: dict = {}
# op type -> bound(impl, example): per-output atol from the float32 summation error model (see SUMS below)
SUMMATION_BOUNDS: dict = {}
for _module in _case_modules():
    for _case in _module.CASES:
        key = (_case.domain, _case.op_type)
        if key in CASES:
            raise AssertionError(f"{_module.__name__} lists a second case for {key}")
        CASES[key] = _case
    KNOWN_DISAGREEMENTS.update(getattr(_module, "KNOWN_DISAGREEMENTS", {}))
    ORACLE_AT.update(getattr(_module, "ORACLE_AT", {}))
    FLOAT64_ORACLE.update(getattr(_module, "FLOAT64_ORACLE", {}))
    SUMMATION_BOUNDS.update(getattr(_module, "SUMMATION_BOUNDS", {}))
FIRST_PARTY = {"cml-ops-std", "cml-ops-activations"}
IMPLS = [i for i in get_registry() if i.provider.distribution in FIRST_PARTY]


def test_every_registered_op_has_a_property_test():
    untested = sorted({i.display_name for i in IMPLS if (i.domain, i.op_type) not in CASES})
    assert not untested, f"registered ops without a property test case: {untested}"


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: f"{i.display_name}-{i.since_version}")
@given(data=st.data())
def test_op_matches_onnxruntime(impl, data):
    case = CASES.get((impl.domain, impl.op_type))
    if case is None:
        pytest.fail(f"no property test case for {impl.display_name}")
    example = data.draw(case.examples(impl.since_version))
    reference = None
    if (impl.op_type, impl.since_version) in ORACLE_AT:
        reference = _reference_at(impl, example, *ORACLE_AT[(impl.op_type, impl.since_version)])
    elif (impl.op_type, impl.since_version) in KNOWN_DISAGREEMENTS:
        reference = _reference_evaluator(impl, example)
    elif (impl.op_type, impl.since_version) in UINT8_ONNXRUNTIME:
        reference = _onnxruntime_on_uint8(impl, example, *UINT8_ONNXRUNTIME[(impl.op_type, impl.since_version)])
    elif impl.op_type in FLOAT64_ORACLE and any(x is not None and x.dtype == np.float32 for x in example.inputs):
        reference = _float64_reference(impl, example)
    atol = _summation_bound(impl, example) if impl.op_type in SUMS else \
        SUMMATION_BOUNDS[impl.op_type](impl, example) if impl.op_type in SUMMATION_BOUNDS else None
    check_op(impl.op_type, example.inputs, example.attributes, opset=impl.since_version,
             domain=impl.domain, constant_inputs=example.constant_inputs, n_outputs=example.n_outputs,
             reference=reference, atol=atol)


# Float32 convolutions sum many products; two correct kernels adding them in another order differ by up
# to about (terms + 1) * eps * sum(|products|) + eps * |bias| per output, which for an output that is a
# small difference of large terms exceeds the float32 tolerance relative to the output itself (a random
# seed drew a grouped Conv whose output 0.0055 came from terms near 9: cml and onnxruntime differed by
# 1.9e-6). The bound below is that error model, computed per output; anything wrong in the op (pads,
# strides, groups) still differs by the size of a product.
SUMS = {"Conv"}


def _summation_bound(impl, example):
    x, w = example.inputs[0], example.inputs[1]
    if x is None or w is None or x.dtype != np.float32:
        return None
    b = example.inputs[2] if len(example.inputs) > 2 else None
    attributes = dict(example.attributes)
    magnitudes = impl.function(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                               None if b is None else np.abs(b).astype(np.float64), **attributes)
    terms = int(np.prod(w.shape[1:])) + 1
    eps = float(np.finfo(np.float32).eps)
    return terms * eps * np.asarray(magnitudes) + 1e-6


def _float64_reference(impl, example):
    """The oracle's outputs for the example run in float64 (float32 inputs widened), rounded back to float32."""
    from cml_core.testing import make_node_model
    from cml_core.testing.checks import run_reference
    from cml_core.testing.models import feeds_of

    inputs = [x.astype(np.float64) if x is not None and x.dtype == np.float32 else x for x in example.inputs]
    model = make_node_model(impl.op_type, inputs, example.attributes, opset=impl.since_version, domain=impl.domain,
                            constant_inputs=example.constant_inputs, n_outputs=example.n_outputs)
    expected = [v.astype(np.float32) if v.dtype == np.float64 else v for v in run_reference(model, feeds_of(model, inputs))]
    return lambda *args, **kwargs: expected


def _reference_evaluator(impl, example):
    from cml_core.testing import make_node_model
    from cml_core.testing.models import feeds_of
    from onnx.reference import ReferenceEvaluator

    model = make_node_model(impl.op_type, example.inputs, example.attributes, opset=impl.since_version,
                            domain=impl.domain, constant_inputs=example.constant_inputs,
                            n_outputs=example.n_outputs)
    expected = ReferenceEvaluator(model).run(None, feeds_of(model, example.inputs))
    return lambda *args, **kwargs: expected


def _onnxruntime_on_uint8(impl, example, operands, output_zero_point):
    """onnxruntime's outputs for the example with each int8 operand and its zero point moved up by 128 into
    uint8 (see ``UINT8_ONNXRUNTIME``), an int8 output moved back down."""
    from cml_core.testing import make_node_model
    from cml_core.testing.checks import run_reference
    from cml_core.testing.models import feeds_of

    def up(value):
        return (value.astype(np.int16) + 128).astype(np.uint8)

    inputs = list(example.inputs) + [None] * (1 + max(z for _, z in operands) - len(example.inputs))
    constant = set(example.constant_inputs)
    for value, zero in operands:
        if inputs[value].dtype == np.int8:
            inputs[zero] = up(np.zeros((), np.int8) if inputs[zero] is None else inputs[zero])
            inputs[value] = up(inputs[value])
            constant.add(zero)
    int8_output = output_zero_point is not None and inputs[output_zero_point].dtype == np.int8
    if int8_output:
        inputs[output_zero_point] = up(inputs[output_zero_point])
    model = make_node_model(impl.op_type, inputs, example.attributes, opset=impl.since_version, domain=impl.domain,
                            constant_inputs=tuple(sorted(constant)), n_outputs=example.n_outputs)
    expected = run_reference(model, feeds_of(model, inputs))
    if int8_output:
        expected = [(y.astype(np.int16) - 128).astype(np.int8) for y in expected]
    return lambda *args, **kwargs: expected


def _reference_at(impl, example, version, translate):
    """The oracle's outputs for the example translated (``translate(example)``) and run at ``version``."""
    from cml_core.testing import make_node_model
    from cml_core.testing.checks import run_reference
    from cml_core.testing.models import feeds_of

    example = translate(example)
    model = make_node_model(impl.op_type, example.inputs, example.attributes, opset=version, domain=impl.domain,
                            constant_inputs=example.constant_inputs, n_outputs=example.n_outputs)
    expected = run_reference(model, feeds_of(model, example.inputs))
    return lambda *args, **kwargs: expected
