"""Every registered op's quantized twin against its float twin, on one-node models."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cml_core import QuantizationError, get_registry, load_model
from cml_core.quantization import ConstantOnlyOp, LinearOp
from cml_core.testing import make_node_model

from ..ops.test_ops_vs_onnxruntime import CASES, IMPLS


def test_every_registered_op_has_a_quantized_implementation():
    missing = sorted({i.display_name for i in IMPLS if i.quantized is None})
    assert not missing, f"ops without a quantized implementation: {missing}"


def _model_and_inputs(impl, example):
    model = make_node_model(impl.op_type, example.inputs, example.attributes, opset=impl.since_version,
                            domain=impl.domain, constant_inputs=example.constant_inputs,
                            n_outputs=example.n_outputs)
    module = load_model(model)
    encrypted = [example.inputs[int(n[1:])] for n in module.input_names]
    return module, encrypted


def _reference_inputs(qmodule, module, encrypted):
    """Encrypted inputs as their quantized values, and linear ops' weights as their quantized values."""
    x_hat = [qz.dequant(qz.quant(x)) for qz, x in zip(qmodule.input_quantizers, encrypted)]
    constants = dict(module.constants)
    op = qmodule.ops[0]
    if isinstance(op, LinearOp):
        for name, parameter in zip(op.bound.node.input, op.signature.input_names):
            if parameter in op.weight_inputs and name in constants:
                quantizer = op.weight_quantizer(constants[name], qmodule.config.op_weights)
                constants[name] = quantizer.dequant(quantizer.quant(constants[name])).astype(constants[name].dtype)
    return x_hat, constants


def _float_reference(module, constants, inputs):
    """The one node's numpy implementation on float64 values (inputs by graph input name)."""
    values = dict(constants)
    values.update(zip(module.input_names, inputs))
    node = module.nodes[0]
    args = [None if not n else np.asarray(values[n]) for n in node.node.input]
    args = [a.astype(np.float64) if a is not None and a.dtype.kind == "f" else a for a in args]
    return node.call(args)[0]


# ops whose output jumps (a step at alpha): more input bits can move an input across the step
DISCONTINUOUS = {"ThresholdedRelu"}
QUANTIZABLE = [i for i in IMPLS if i.quantized is not None and not issubclass(i.quantized, ConstantOnlyOp)]


@pytest.mark.parametrize("impl", QUANTIZABLE, ids=lambda i: f"{i.display_name}-{i.since_version}")
@given(data=st.data())
def test_quantized_op_matches_float_twin(impl, data):
    example = data.draw(CASES[(impl.domain, impl.op_type)].examples(impl.since_version))
    assume(example.n_outputs == 1)
    module, encrypted = _model_and_inputs(impl, example)
    assume(encrypted and all(x.dtype.kind in "fb" and x.size > 0 for x in encrypted))
    y = module(*encrypted)
    assume(y.dtype.kind in "fb" and np.all(np.isfinite(y)))
    errors = {}
    for n_bits in (4, 8, 12):
        try:
            qmodule = module.quantize(tuple(encrypted), n_bits=n_bits)
        except QuantizationError as exc:
            assert "does not depend on the inputs" in str(exc)
            shifted = module(*[x + np.ones_like(x) for x in encrypted])
            np.testing.assert_array_equal(shifted, y)  # indeed independent of the inputs
            return
        y_q = qmodule(*encrypted)
        assert y_q.shape == y.shape and y_q.dtype == y.dtype
        # against the float op on the values quantization keeps (inputs and weights):
        # only the output's own requantization (at most half a step) may differ
        x_hat, constants = _reference_inputs(qmodule, module, encrypted)
        y_ref = np.asarray(_float_reference(module, constants, x_hat), dtype=np.float64)
        assume(np.all(np.isfinite(y_ref)))
        # a requantized output is clipped to its calibrated range, and rounded to half a step
        low, high = qmodule.float_ranges[module.output_names[0]]
        out_step = (high - low) / (2**qmodule.config.op_inputs - 1)
        outside = float(np.max(np.maximum(y_ref - high, low - y_ref), initial=0.0))
        bound = out_step / 2 + max(outside, 0.0) + 1e-5 * max(abs(low), abs(high), 1.0)
        if isinstance(qmodule.ops[0], LinearOp):
            # a linear op's output resolution is its accumulator's scale; its bias is rounded to it
            to_float = qmodule._outputs[0].to_float
            bound += float(np.max(np.abs(to_float(np.array(1)) - to_float(np.array(0))))) / 2
        err = np.max(np.abs(y_q.astype(np.float64) - y_ref)) if y.size else 0.0
        assert err <= bound, f"{impl.op_type} n_bits={n_bits}: error {err} above bound {bound}"
        errors[n_bits] = float(np.max(np.abs(y_q.astype(np.float64) - y.astype(np.float64))))
    if y.dtype.kind != "f" or impl.op_type in DISCONTINUOUS:
        return  # outputs that jump flip at ties whatever the bits; the check above is the meaningful one
    # against the exact float result, more bits converge: at 12 bits the error is no larger than
    # at 4 bits, or already below 1/512 of the output's scale (4-bit luck can be exact)
    scale = float(np.max(np.abs(y), initial=0.0)) + float(np.ptp(y)) + 1e-6
    assert errors[12] <= errors[4] + 1e-5 * scale or errors[12] <= scale / 512, (
        f"{impl.op_type}: error does not shrink with n_bits: {errors}")


CONSTANT_ONLY = [i for i in IMPLS if i.quantized is not None and issubclass(i.quantized, ConstantOnlyOp)]


@pytest.mark.parametrize("impl", CONSTANT_ONLY, ids=lambda i: f"{i.display_name}-{i.since_version}")
@given(data=st.data())
def test_constant_only_op_folds_or_refuses(impl, data):
    example = data.draw(CASES[(impl.domain, impl.op_type)].examples(impl.since_version))
    module, encrypted = _model_and_inputs(impl, example)
    if not encrypted:
        assert not module.nodes  # folded at load: nothing is left to quantize
        return
    assume(all(x.dtype.kind == "f" and x.size > 0 for x in encrypted))
    with pytest.raises(QuantizationError, match="cannot run on encrypted"):
        module.quantize(tuple(encrypted), n_bits=8)


def test_registry_is_the_source():
    assert len(get_registry()) >= len(IMPLS) > 0
