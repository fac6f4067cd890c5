"""The signature contract and the registry's resolution rules."""

import numpy as np
import onnx.defs
import pytest
from cml_core.registry import Provider
from cml_core.signature import REQUIRED, OpSignature

from cml_core import DuplicateOpError, OpRegistry, OpSet, OpSignatureError, UnsupportedOpError, get_registry


def test_signature_reads_inputs_and_attributes():
    def op(a, b, /, c=None, d=None, *, alpha=1.0, mode):
        return a

    sig = OpSignature.of(op)
    assert sig.required_inputs == ("a", "b")
    assert sig.optional_inputs == ("c", "d")
    assert sig.attributes == {"alpha": 1.0, "mode": REQUIRED}
    assert (sig.min_inputs, sig.max_inputs) == (2, 4)

    def variadic(*inputs, axis=0):
        return inputs[0]

    sig = OpSignature.of(variadic)
    assert sig.variadic_input == "inputs" and sig.max_inputs is None and sig.min_inputs == 1


@pytest.mark.parametrize("source", [
    "def op(x, /, y=1): pass",           # optional input with a non-None default
    "def op(x, /, **kw): pass",          # attributes must be listed
    "def op(x=None, y, /): pass" if False else "def op(x, /, c=None, *inputs): pass",  # variadic after optional
])
def test_malformed_signatures_are_refused(source):
    scope = {}
    exec(source, scope)
    with pytest.raises(OpSignatureError):
        OpSignature.of(scope["op"])


def test_bind_errors_name_the_node():
    def op(a, b, /, c=None, *, alpha=1.0, mode):
        return a

    sig = OpSignature.of(op)
    where = "node 'n1' (Op)"
    with pytest.raises(OpSignatureError, match=r"node 'n1' \(Op\): needs inputs"):
        sig.bind([1], {"mode": "x"}, where=where)
    with pytest.raises(OpSignatureError, match="at most 3"):
        sig.bind([1, 2, 3, 4], {"mode": "x"}, where=where)
    with pytest.raises(OpSignatureError, match="unsupported attribute"):
        sig.bind([1, 2], {"mode": "x", "beta": 2}, where=where)
    with pytest.raises(OpSignatureError, match=r"required attribute\(s\) \['mode'\]"):
        sig.bind([1, 2], {}, where=where)
    args, kwargs = sig.bind([1, 2, None], {"mode": "x"}, where=where)
    assert args == [1, 2] and kwargs == {"mode": "x"}


def _relu(x, /):
    return np.maximum(x, 0)


def test_highest_since_version_not_above_the_opset():
    reg = OpRegistry()
    for v in (6, 13, 14):
        reg.register("Relu", v, _relu)
    assert reg.find("", "Relu", 12).since_version == 6
    assert reg.find("", "Relu", 13).since_version == 13
    assert reg.find("", "Relu", 20).since_version == 14
    assert reg.find("", "Relu", 5) is None


def test_a_newer_onnx_semantics_is_not_silently_served_by_an_old_implementation():
    reg = OpRegistry()
    reg.register("Relu", 6, _relu)
    assert onnx.defs.get_schema("Relu", 14).since_version == 14
    assert reg.find("", "Relu", 14) is None
    with pytest.raises(UnsupportedOpError, match=r"Relu at opset 14 .*registered since-versions: \[6\]"):
        reg.resolve("", "Relu", 14)


def test_duplicates_name_both_distributions_and_can_be_settled():
    a, b = Provider("cml-ops-a", "1.0"), Provider("cml-ops-b", "2.0")
    reg = OpRegistry()
    reg.register("Relu", 14, _relu, provider=a)
    with pytest.raises(DuplicateOpError, match=r"cml-ops-a 1\.0 and cml-ops-b 2\.0.*CML_PIN_OPS"):
        reg.register("Relu", 14, _relu, provider=b)
    reg.register("Relu", 14, _relu, provider=b, replace=True)
    assert reg.find("", "Relu", 14).provider == b
    pinned = OpRegistry(pins={("", "Relu"): "cml-ops-a"})
    pinned.register("Relu", 14, _relu, provider=a)
    pinned.register("Relu", 14, _relu, provider=b)
    assert pinned.find("", "Relu", 14).provider == a


def test_custom_domains_and_opset_collections():
    ops = OpSet()

    @ops.op("Twice", since=(1, 3), domain="com.acme")
    def twice(x, /):
        return 2 * x

    reg = OpRegistry()
    reg.add(ops, Provider("cml-ops-acme", "0.1"))
    assert reg.versions("com.acme", "Twice") == [1, 3]
    assert reg.find("com.acme", "Twice", 2).since_version == 1
    assert reg.find("", "Twice", 2) is None


FIRST_PARTY = {"cml-ops-std", "cml-ops-activations"}


@pytest.mark.parametrize("impl", [i for i in get_registry() if i.provider.distribution in FIRST_PARTY and not i.domain],
                         ids=lambda i: f"{i.op_type}-{i.since_version}")
def test_signature_matches_the_onnx_schema(impl):
    """Inputs, their optionality and attribute names and defaults agree with onnx.defs."""
    schema = onnx.defs.get_schema(impl.op_type, impl.since_version)
    assert schema.since_version == impl.since_version, "registered at a version ONNX does not define"
    sig = impl.signature
    formal = schema.inputs
    if formal and formal[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        assert sig.variadic_input is not None
    else:
        required = [p.name for p in formal if p.option == onnx.defs.OpSchema.FormalParameterOption.Single]
        optional = [p.name for p in formal if p.option == onnx.defs.OpSchema.FormalParameterOption.Optional]
        assert len(sig.required_inputs) == len(required), f"required inputs {sig.required_inputs} vs {required}"
        assert len(sig.optional_inputs) == len(optional), f"optional inputs {sig.optional_inputs} vs {optional}"
    assert set(sig.attributes) == set(schema.attributes), "attribute names differ from the schema"
    for name, attr in schema.attributes.items():
        default = onnx.helper.get_attribute_value(attr.default_value) if attr.default_value.name else None
        ours = sig.attributes[name]
        if attr.required:
            assert ours is REQUIRED, f"{name} is required by ONNX"
        elif default is None or isinstance(default, (list, onnx.TensorProto)) and not default:
            assert ours is None or ours == [] or ours is REQUIRED, f"{name}: ONNX gives no default"
        else:
            if isinstance(default, bytes):
                default = default.decode()
            if isinstance(default, float):
                assert np.float32(ours) == np.float32(default), f"{name}: default {ours} vs {default}"
            else:
                assert ours == default, f"{name}: default {ours!r} vs ONNX {default!r}"


def test_every_onnx_since_version_is_covered(capsys):
    """Walk onnx.defs: each first-party op must resolve at every opset from 1 to the newest (where it is defined)."""
    registry = get_registry()
    newest = onnx.defs.onnx_opset_version()
    ours = sorted({(i.domain, i.op_type) for i in registry if i.provider.distribution in FIRST_PARTY})
    uncovered = {}
    for domain, op_type in ours:
        missing = [v for v in range(1, newest + 1)
                   if _defined(op_type, v) and registry.find(domain, op_type, v) is None]
        if missing:
            uncovered[op_type] = missing
        print(f"{op_type}: registered {registry.versions(domain, op_type)}")
    assert not uncovered, f"opsets without an implementation: {uncovered}"


def _defined(op_type, opset):
    """Whether ONNX defines ``op_type`` at ``opset`` in a version a model may use: the ONNX checker refuses
    deprecated versions (Scatter-11, Upsample-10, GroupNormalization-18), and Upsample-1 is experimental."""
    try:
        schema = onnx.defs.get_schema(op_type, opset)
    except onnx.defs.SchemaError:
        return False
    return not schema.deprecated and schema.support_level == onnx.defs.OpSchema.SupportType.COMMON
