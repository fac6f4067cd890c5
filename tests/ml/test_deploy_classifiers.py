"""skl2onnx classifiers deployed: their label (the argmax of the scores) and SOFTMAX probabilities are
decoded by the saved client from the decrypted rows of scores, as the in-process module decodes them."""

import warnings

import numpy as np
import pytest

pytest.importorskip("skl2onnx")

from cml_core.deploy import Client, Server  # noqa: E402
from cml_core.fhe.models import export_sklearn  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

from cml_core import load_model  # noqa: E402

CASES = {
    # two classes, one score column: the label is the argmax of the probabilities output
    "tree, breast cancer": (load_breast_cancer, lambda: DecisionTreeClassifier(max_depth=4, random_state=0)),
    # ten classes, SOFTMAX: probabilities and label both decoded from the row of raw scores
    "logistic regression, digits": (load_digits, lambda: LogisticRegression(max_iter=3000)),
}


@pytest.mark.fhe
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_deployed_classifier_gives_the_simulated_label_and_probabilities(name, tmp_path):
    load, make = CASES[name]
    x, y = load(return_X_y=True)
    x = StandardScaler().fit_transform(x).astype(np.float32)
    module = load_model(export_sklearn(make().fit(x, y), x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodule = module.quantize(x, n_bits=6)
        qmodule.compile(x[:200])
    folder = qmodule.save(tmp_path / "deploy")
    samples = x[:3]
    client = Client(folder, keys=tmp_path / "keys")
    labels, probabilities = client.decrypt(Server(folder).run(client.encrypt(samples), client.evaluation_keys()))
    simulated_labels, simulated_probabilities = qmodule.forward(samples, fhe="simulate")
    np.testing.assert_array_equal(labels, simulated_labels)
    # the client's softmax runs in float64, the op's in float32: equal to float32's rounding
    np.testing.assert_allclose(probabilities, simulated_probabilities, rtol=1e-5, atol=1e-7)
    # the client decodes exactly as the module does, on any integers: the whole data set in the clear
    q = qmodule.quantize_input(x)
    integers = qmodule.quantized_forward(q)
    decoded = client.dequantize(*integers)
    expected = qmodule.dequantize_output(*integers)
    np.testing.assert_array_equal(decoded[0], expected[0])
    np.testing.assert_allclose(decoded[1], expected[1], rtol=1e-5, atol=1e-7)


def test_a_model_whose_weights_are_attributes_stays_on_the_server():
    """A Normalizer (client-side when it only finishes outputs) before a LogisticRegression must not take
    the regression, whose coefficients are attributes, to the client: the server computes the scores."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    pipeline = make_pipeline(StandardScaler(), Normalizer(), LogisticRegression(max_iter=3000)).fit(x, y)
    module = load_model(export_sklearn(pipeline, x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodule = module.quantize(x, n_bits=6)
    server_ops = {b.impl.op_type for b in qmodule.numpy_module.nodes}
    assert "LinearClassifier" in server_ops
    tail_ops = set() if qmodule.client_tail is None else {n.op_type for n in qmodule.client_tail.model.graph.node}
    assert "LinearClassifier" not in tail_ops
    labels, _ = module(x)
    assert np.mean(qmodule(x)[0] == labels) >= 0.99
