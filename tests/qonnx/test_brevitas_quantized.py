"""Brevitas QAT exports quantized by cml keep the model's own integers: the integer program gives the
Brevitas model's outputs, its activations have the bit widths Brevitas trained them at, and it
compiles without rounding."""

import numpy as np
import pytest

from cml_core import compile_brevitas_model, load_model

from .test_brevitas_exports import BITS, brevitas_output, trained

torch = pytest.importorskip("torch")
from brevitas.export import export_onnx_qcdq, export_qonnx  # noqa: E402


def _export(arch, bits, form, path):
    model, x = trained(arch, bits)
    if form == "qonnx":
        export_qonnx(model, input_t=x, export_path=str(path), dynamo=False)
    else:
        export_onnx_qcdq(model, input_t=x, export_path=str(path))
    return model, x


@pytest.mark.parametrize("form", ["qonnx", "qcdq"])
@pytest.mark.parametrize("arch, bits", [("mlp", b) for b in BITS] + [("cnn", b) for b in BITS])
def test_quantized_export_reproduces_brevitas(arch, bits, form, tmp_path):
    model, x = _export(arch, bits, form, tmp_path / "model.onnx")
    module = load_model(tmp_path / "model.onnx")
    x_np = x.numpy()
    qmodule = module.quantize(x_np, n_bits=8)
    expected = brevitas_output(model, x)
    # every activation the model quantizes keeps the model's width, and the input takes the model's own grid
    widths = {q.n_bits for q in qmodule.stated_quantizers.values()}
    assert widths and max(widths) <= bits
    assert qmodule.snapped_inputs == {module.input_names[0]}
    assert qmodule.stated_constants  # weights as Brevitas quantized them
    scale = float(np.max(np.abs(expected))) + 1e-6
    np.testing.assert_allclose(qmodule(x_np), expected, rtol=0, atol=1e-5 * scale)
    assert qmodule.bitwidth_report().max_lookup_bits <= 16  # compiles without rounding


@pytest.mark.fhe
@pytest.mark.parametrize("form", ["qcdq", "qonnx"])
def test_compile_brevitas_model_without_rounding_simulation_equals_clear(form):
    model, x = trained("mlp", 2)
    qmodule = compile_brevitas_model(model, x.numpy(), form=form)
    assert qmodule.config.rounding_bits is None and qmodule.fhe_circuit is not None
    q = qmodule.quantize_input(x.numpy()[:4])  # any batch size: the export's batch axis is free
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), qmodule.quantized_forward(q))
    np.testing.assert_allclose(qmodule(x.numpy()[:4]), brevitas_output(model, x[:4]), rtol=0, atol=1e-5)


def test_bipolar_activations_are_stated_but_never_take_over_the_input(tmp_path):
    """BipolarQuant is a sign, not a rounding: its ±scale codes are the model's own (2-bit signed integers),
    but the model input it reads keeps a quantizer of its own (a rounding quantizer would send small
    positive inputs to 0 where the sign gives +1)."""
    model, x = _export("binary_mlp", 1, "qonnx", tmp_path / "model.onnx")
    qmodule = load_model(tmp_path / "model.onnx").quantize(x.numpy(), n_bits=8)
    assert qmodule.stated_quantizers and {q.n_bits for q in qmodule.stated_quantizers.values()} == {2}
    assert not qmodule.snapped_inputs
