"""Every registered op's quantized twin against its float twin, on one-node models."""

import numpy as np
import pytest
from cml_core.quantization import ConstantOnlyOp, LinearOp, ShapeOp
from cml_core.testing import make_node_model
from hypothesis import assume, given
from hypothesis import strategies as st

from cml_core import QuantizationError, get_registry, load_model

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


# ops whose output jumps (a step at a threshold): more input bits can move an input across the step
DISCONTINUOUS = {"ThresholdedRelu", "Shrink", "Round", "Floor", "Ceil", "Sign", "Mod"}
# ops on integer types only: their quantized form runs on integers made inside the graph (see below)
def _integer_only(impl):
    """Whether the op's schema at its since-version takes no floating-point input (BitShift, Bitwise*, Equal
    before 11): its quantized form runs on integers made inside the graph (see below)."""
    import onnx.defs

    try:
        schema = onnx.defs.get_schema(impl.op_type, impl.since_version, impl.domain)
    except onnx.defs.SchemaError:
        return False
    constrained = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    kinds = [constrained.get(i.type_str, [i.type_str]) for i in schema.inputs]
    return not any("float" in t for types in kinds for t in types)
# ops of the model's own quantization: their encrypted inputs or outputs are integer codes, so they are
# tested as chains (float -> QuantizeLinear -> Clip -> DequantizeLinear -> ...) and refusals in
# test_stated_quantization.py
STATED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
          "MatMulInteger", "ConvInteger"}
# ops that requantize intermediate values (exponentials and their sums, powers, squares, centred values,
# variances): their error is not bounded by the output step alone; tested for convergence below
INTERNAL_REQUANTIZATION = {"ReduceLogSumExp", "Softmax", "LogSoftmax", "LpPool", "LRN", "InstanceNormalization",
                           "LayerNormalization", "RMSNormalization", "GroupNormalization", "LpNormalization",
                           "MeanVarianceNormalization", "Attention"}
# ops whose 12-bit error is not bounded by the output's scale; only convergence is checked:
# - LpPool and LRN (a known limit, docs/quantization.md) quantize |x|**p and squares with one quantizer
#   per tensor, so a window whose values are far smaller than the others' is resolved coarsely;
# - the normalizations divide each group by its own deviation: in a group spanning a few steps of the
#   input's quantization, that rounding (and the op's rounding of the centred values, of the same size)
#   is amplified by up to 1/sqrt(epsilon). Seen: groups [2.75, 0.004, 0.004, 0.004] and
#   [0, 0.004, 0.004, 0.004] at 12 bits, error 0.084 (the float op on the quantized input: 0.020),
#   above 1/64 of the output's scale (0.083); 0.0034 at 16 bits
CONVERGENCE_ONLY = {"LpPool", "LRN", "InstanceNormalization", "LayerNormalization", "RMSNormalization",
                    "GroupNormalization", "LpNormalization", "MeanVarianceNormalization"}
# ops whose node always has several outputs: the quantized twin's first output is compared
FIRST_OUTPUT = {"CausalConvWithState"}


def _first(outputs):
    return outputs[0] if isinstance(outputs, tuple) else outputs


QUANTIZABLE = [i for i in IMPLS if i.op_type not in INTERNAL_REQUANTIZATION | STATED and not _integer_only(i)
               and i.quantized is not None and not issubclass(i.quantized, (ConstantOnlyOp, ShapeOp))]


@pytest.mark.parametrize("impl", QUANTIZABLE, ids=lambda i: f"{i.display_name}-{i.since_version}")
@given(data=st.data())
def test_quantized_op_matches_float_twin(impl, data):
    example = data.draw(CASES[(impl.domain, impl.op_type)].quantizable_examples(impl.since_version))
    assume(example.n_outputs == 1 or impl.op_type in FIRST_OUTPUT)
    module, encrypted = _model_and_inputs(impl, example)
    assume(encrypted and all(x.dtype.kind in "fb" and x.size > 0 for x in encrypted))
    # integers cannot stand for NaN or infinity: calibration refuses them (tested elsewhere)
    assume(all(np.all(np.isfinite(x)) for x in encrypted if x.dtype.kind == "f"))
    y = _first(module(*encrypted))
    assume(y.dtype.kind in "fb" and y.size > 0 and np.all(np.isfinite(y)))
    errors = {}
    for n_bits in (4, 8, 12):
        try:
            # one quantizer per input: the reference below dequantizes the inputs and weights as such (folding
            # per-feature input scales into the weights is tested in test_per_feature_inputs.py)
            qmodule = module.quantize(tuple(encrypted), n_bits=n_bits, per_feature_inputs=False)
        except QuantizationError as exc:
            assert "does not depend on the inputs" in str(exc)
            shifted = module(*[x + np.ones_like(x) for x in encrypted])
            np.testing.assert_array_equal(shifted, y)  # indeed independent of the inputs
            return
        y_q = _first(qmodule(*encrypted))
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
    # the scale includes the encrypted inputs' magnitude: an output near 0 by cancellation (a ReduceSum of
    # [4.06, -8.77, 4.71], seen under a random seed) still carries their quantization error
    scale = float(np.max(np.abs(y), initial=0.0)) + float(np.ptp(y)) + 1e-6 + \
        max(float(np.max(np.abs(x), initial=0.0)) for x in encrypted)
    assert errors[12] <= errors[4] + 1e-5 * scale or errors[12] <= scale / 512, (
        f"{impl.op_type}: error does not shrink with n_bits: {errors}")


CONSTANT_ONLY = [i for i in IMPLS if i.quantized is not None and issubclass(i.quantized, ConstantOnlyOp)
                 and i.op_type not in STATED]


@pytest.mark.parametrize("impl", CONSTANT_ONLY, ids=lambda i: f"{i.display_name}-{i.since_version}")
@given(data=st.data())
def test_constant_only_op_folds_or_refuses(impl, data):
    example = data.draw(CASES[(impl.domain, impl.op_type)].quantizable_examples(impl.since_version))
    module, encrypted = _model_and_inputs(impl, example)
    if not encrypted:
        assert not module.nodes  # folded at load: nothing is left to quantize
        return
    assume(all(x.dtype.kind == "f" and x.size > 0 for x in encrypted))
    assume(all(np.all(np.isfinite(np.asarray(v))) for v in module.run(*encrypted, keep_intermediates=True).values()
               if np.asarray(v).dtype.kind == "f"))
    with pytest.raises(QuantizationError, match="cannot run on encrypted"):
        module.quantize(tuple(encrypted), n_bits=8)


def test_registry_is_the_source():
    assert len(get_registry()) >= len(IMPLS) > 0


SHAPE_OPS = [i for i in IMPLS if i.quantized is not None and issubclass(i.quantized, ShapeOp)]


@pytest.mark.parametrize("impl", SHAPE_OPS, ids=lambda i: f"{i.display_name}-{i.since_version}")
def test_shape_op_of_an_encrypted_input_is_a_clear_constant(impl):
    """x -> Shape/Size -> (reshape x by it): the shape is read in the clear, the data stays encrypted."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node(impl.op_type, ["x"], ["s"]),
             helper.make_node("Reshape", ["x", "target"], ["flat"]),
             helper.make_node("Reshape", ["flat", "s"], ["y"])]
    if impl.op_type == "Size":  # a Size is a flat length
        nodes[-1] = helper.make_node("Reshape", ["flat", "s1"], ["y"])
        nodes.append(helper.make_node("Unsqueeze", ["s", "axes"], ["s1"]))
        nodes = [nodes[0], nodes[3], nodes[1], nodes[2]]
    inits = [helper.make_tensor("target", TensorProto.INT64, [1], [-1]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [0])]
    out_shape = ["n", 3] if impl.op_type == "Shape" else ["size"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(impl.since_version, 13))], ir_version=10)
    module = load_model(model)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=8)
    y, y_q = module(x), qmodule(x)
    assert y_q.shape == y.shape
    assert np.max(np.abs(y_q - y)) <= 2 / 255 / 2 + 1e-6  # one input step of [-1, 1] at 8 bits, halved


def test_integer_ops_inside_a_quantized_chain():
    """float -> Cast(uint8) -> BitShift -> Cast(float): integer ops compose into the same lookup."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT8),
             helper.make_node("BitShift", ["u", "k"], ["v"], direction="LEFT"),
             helper.make_node("Cast", ["v"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["f", "w"], ["y"])]
    inits = [helper.make_tensor("k", TensorProto.UINT8, [], [2]),
             helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [1, 0, 0, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], inits)
    module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=10))
    x = np.random.default_rng(0).uniform(0, 15, (50, 3)).astype(np.float32)
    qmodule = module.quantize(x, n_bits=8)
    x_hat = qmodule.input_quantizers[0].dequant(qmodule.quantize_input(x))
    expected = module(x_hat.astype(np.float32))
    # the shifted integers (0..60) are requantized to 8 bits before the MatMul: half a step each
    step = 60 / 255
    assert qmodule.lookup_count == 1
    assert np.max(np.abs(qmodule(x) - expected)) <= 3 * step / 2 + 1e-4


@pytest.mark.parametrize("impl", [i for i in IMPLS if i.op_type in INTERNAL_REQUANTIZATION],
                         ids=lambda i: f"{i.display_name}-{i.since_version}")
@given(data=st.data())
def test_ops_with_internal_requantization_converge(impl, data):
    """At 12 bits these ops stay within 2**-6 of the output's scale, and never get worse than at 4 bits."""
    example = data.draw(CASES[(impl.domain, impl.op_type)].quantizable_examples(impl.since_version))
    assume(example.n_outputs == 1)
    module, encrypted = _model_and_inputs(impl, example)
    assume(encrypted and all(x.dtype.kind == "f" and x.size > 1 for x in encrypted))
    y = np.asarray(module(*encrypted), dtype=np.float64)
    assume(y.size > 0 and np.all(np.isfinite(y)))
    errors = {}
    for n_bits in (4, 12):
        qmodule = module.quantize(tuple(encrypted), n_bits=n_bits)
        errors[n_bits] = float(np.max(np.abs(qmodule(*encrypted).astype(np.float64) - y)))
    # the scale of the values involved: outputs, and inputs (a log-sum-exp moves with them)
    scale = max(float(np.max(np.abs(y))), max(float(np.max(np.abs(x))) for x in encrypted)) + float(np.ptp(y)) + 1e-6
    if impl.op_type not in CONVERGENCE_ONLY:
        assert errors[12] <= scale / 64, f"{impl.op_type}: 12-bit error {errors[12]} above {scale / 64}"
    assert errors[12] <= errors[4] + 1e-5 * scale or errors[12] <= scale / 512, errors


def test_layer_normalization_resolves_each_row_at_its_own_scale():
    """Concat(cls, x) -> LayerNormalization: the cls row (std 0.02) beside rows of std 1 keeps its own
    variance; one quantizer of the variance for the whole tensor rounded it to 0 and divided by sqrt(eps)."""
    from onnx import TensorProto, helper, numpy_helper

    d = 16
    nodes = [helper.make_node("Concat", ["cls", "x"], ["h"], axis=1),
             helper.make_node("LayerNormalization", ["h", "g"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cls", TensorProto.FLOAT, ["n", 1, d]),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5, d])],
                              [numpy_helper.from_array(np.ones(d, np.float32), "g")])
    module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    rng = np.random.default_rng(0)
    cls = np.repeat(rng.normal(0, 0.02, (1, 1, d)), 50, axis=0).astype(np.float32)
    x = rng.normal(0, 1, (50, 4, d)).astype(np.float32)
    y = module(cls, x)

    def relative_errors(n_bits):
        y_q = module.quantize((cls, x), n_bits=n_bits)(cls, x)
        rows = np.max(np.abs(y_q - y), axis=-1) / np.max(np.abs(y), axis=-1)
        return float(np.max(rows[:, 0])), float(np.max(rows[:, 1:]))

    # at 8 bits the cls row spans about two input steps of the concatenation, so its own input
    # limits it (the float op on the quantized input is off by 0.32); at 12 bits it is resolved
    assert relative_errors(8)[0] < 1
    cls_error, other_error = relative_errors(12)
    assert cls_error < 0.1 and other_error < 0.01


def test_gemm_with_an_encrypted_c_far_coarser_than_the_product():
    """Gemm(a, b, c) all encrypted, b nearly 0 (a constant tensor's quantizer has a scale of its value):
    c in the product's units (1 / 4.7e-29) overflowed int64 and the output lost c entirely."""
    a, b, c = np.zeros((1, 1), np.float32), np.full((1, 1), 4.6737863e-29, np.float32), np.ones((1, 1), np.float32)
    module = load_model(make_node_model("Gemm", [a, b, c], {}, opset=13))
    for n_bits in (4, 8):
        qmodule = module.quantize((a, b, c), n_bits=n_bits)
        np.testing.assert_allclose(qmodule(a, b, c), module(a, b, c), atol=1e-6)


@pytest.mark.parametrize("op_type", ["ReduceL1", "ReduceL2", "ReduceSumSquare"])
def test_norm_of_a_small_group_beside_a_large_one(op_type):
    """Groups of 0.0625s beside a group holding a 6: each group's norm stays exact for the quantized
    input; one quantizer of x**2 for the tensor (step 36/4095 at 12 bits) rounded 0.0625**2 to 0."""
    x = np.full((1, 3, 2, 3), 0.0625, np.float32)
    x[0, 0, 0, 0] = 6.0
    module = load_model(make_node_model(op_type, [x, np.array([2, 3])], {}, opset=18, constant_inputs=(1,)))
    y = module(x)
    qmodule = module.quantize(x, n_bits=12)
    x_hat = qmodule.input_quantizers[0].dequant(qmodule.quantize_input(x))
    y_ref = _float_reference(module, dict(module.constants), [x_hat])
    np.testing.assert_allclose(qmodule(x), y_ref, rtol=1e-6)  # exact for the quantized input
    np.testing.assert_allclose(qmodule(x)[0, 1:], y[0, 1:], rtol=0.02)  # the small groups, at 12 bits
