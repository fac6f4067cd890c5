"""Post-training quantization of small real models: accuracy at 8, 6 and 4 bits against float."""

import numpy as np
import pytest

from cml_core import load_model

from .. import models


def _accuracy(scores, y):
    scores = np.asarray(scores)
    if scores.shape[-1] == 1:
        return float(np.mean((scores[:, 0] > 0.5) == y))
    return float(np.mean(scores.argmax(-1) == y))


def _cases():
    x_train, y_train, x_test, y_test = models.digits()
    yield "digits-mlp", lambda: models.digits_mlp("ReLU"), (x_train, y_train, x_test, y_test)
    yield "digits-mixed", lambda: models.digits_mlp("mixed"), (x_train, y_train, x_test, y_test)
    img = lambda a: a.reshape(-1, 1, 8, 8)  # noqa: E731
    yield "digits-cnn", models.digits_cnn, (img(x_train), y_train, img(x_test), y_test)
    yield "breast-cancer-logreg", lambda: models.breast_cancer_logreg()[0], models.breast_cancer_logreg()[1]


CASES = list(_cases())


@pytest.mark.parametrize("name,build,data", CASES, ids=[c[0] for c in CASES])
def test_quantized_accuracy(name, build, data):
    x_train, _, x_test, y_test = data
    module = load_model(build())
    float_acc = _accuracy(module(x_test), y_test)
    acc = {}
    for n_bits in (8, 6, 4):
        qmodule = module.quantize(x_train, n_bits=n_bits)
        acc[n_bits] = _accuracy(qmodule(x_test), y_test)
    print(f"{name}: float {float_acc:.4f} quantized {acc}")
    assert acc[8] >= float_acc - 0.01, f"{name}: 8-bit accuracy {acc[8]} more than 1 point below float {float_acc}"


def test_mlp_lookup_count_is_one_per_hidden_activation():
    x_train, _, _, _ = models.digits()
    module = load_model(models.digits_mlp("mixed"))
    qmodule = module.quantize(x_train, n_bits=6)
    hidden = [b for b in module.nodes if b.impl.op_type in {"Tanh", "Sigmoid", "Elu", "Softplus", "HardSigmoid"}]
    assert len(hidden) == 5
    assert qmodule.lookup_count == len(hidden)
    assert {r.node for r in qmodule.bitwidth_report() if r.kind == "lookup"} == {b.name for b in hidden}
