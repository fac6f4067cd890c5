"""Small trained models for tests, built once per session (PyTorch for training, ONNX for use)."""

from __future__ import annotations

import functools

import numpy as np
import onnx
from cml_core.fhe import export_torch
from onnx import helper, numpy_helper


@functools.cache
def digits():
    """scikit-learn's bundled digits, scaled to [0, 1], split 1400 / 397."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _train(net, x, y, epochs=150, lr=1e-2):
    import torch

    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr)
    xt, yt = torch.tensor(x), torch.tensor(y)
    loss_fn = torch.nn.functional.cross_entropy
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
    return net.eval()


@functools.cache
def digits_mlp(activation: str = "ReLU") -> bytes:
    """A 64-32-32-10 MLP on digits; activations 'ReLU' or 'mixed' (Tanh, Sigmoid, Elu, Softplus, HardSigmoid)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if activation == "mixed":
        layers = [nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Sigmoid(), nn.Linear(32, 32), nn.ELU(),
                  nn.Linear(32, 32), nn.Softplus(), nn.Linear(32, 32), nn.Hardsigmoid(), nn.Linear(32, 10)]
    else:
        layers = [nn.Linear(64, 32), getattr(nn, activation)(), nn.Linear(32, 32), getattr(nn, activation)(),
                  nn.Linear(32, 10)]
    x, y, _, _ = digits()
    net = _train(nn.Sequential(*layers), x, y, epochs=300 if activation == "mixed" else 150)
    return export_torch(net, x[:1])


@functools.cache
def digits_cnn() -> bytes:
    """Conv-ReLU-Conv-ReLU-Flatten-Gemm on 1x8x8 digits images."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    x, y, _, _ = digits()
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 3 * 3, 10))
    net = _train(net, x.reshape(-1, 1, 8, 8), y, epochs=120)
    return export_torch(net, x[:1].reshape(-1, 1, 8, 8))


@functools.cache
def breast_cancer_logreg():
    """scikit-learn logistic regression on breast cancer as an ONNX Gemm + Sigmoid; with its data split."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order].astype(np.float32), y[order]
    mean, std = x[:400].mean(0), x[:400].std(0)
    x = ((x - mean) / std).astype(np.float32)
    clf = LogisticRegression(max_iter=2000).fit(x[:400], y[:400])
    w = numpy_helper.from_array(clf.coef_.T.astype(np.float32), "w")
    b = numpy_helper.from_array(clf.intercept_.astype(np.float32), "b")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z"]), helper.make_node("Sigmoid", ["z"], ["p"])]
    graph = helper.make_graph(nodes, "logreg", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 30])],
                              [helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, ["n", 1])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)
    return model.SerializeToString(), (x[:400], y[:400], x[400:], y[400:])
