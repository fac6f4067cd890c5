"""Models the benchmarks run: the shipped digits MLP, a small digits CNN and a ResNet-style network."""

from __future__ import annotations

import io

import numpy as np
from cml_core.demo import load_example


def digits() -> dict[str, np.ndarray]:
    return load_example()[1]


def mlp() -> bytes:
    """The shipped 64-32-32-10 ReLU MLP."""
    return load_example()[0]


def _export(net, x: np.ndarray) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.tensor(x[:1]),), buffer, dynamo=False, opset_version=14,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return buffer.getvalue()


def _train(net, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    import torch

    torch.manual_seed(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        optimizer.step()


def cnn() -> bytes:
    """Conv(1->4, 3x3) - ReLU - Conv(4->8, 3x3, stride 2) - ReLU - Flatten - Gemm on 8x8 digits."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    data = digits()
    x = data["x_train"].reshape(-1, 1, 8, 8)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 3 * 3, 10))
    _train(net, x, data["y_train"], 150)
    return _export(net, x)


def resnet(width: int = 32, blocks: int = 4, size: int = 32) -> tuple[bytes, np.ndarray]:
    """An untrained ResNet-style network (residual blocks of Conv-ReLU-Conv + skip) and an input batch."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(x + self.b(torch.relu(self.a(x))))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), *[Block(width) for _ in range(blocks)],
                        nn.Conv2d(width, 10, 1), nn.ReLU(), nn.Flatten(), nn.Linear(10 * size * size, 10))
    x = np.random.default_rng(0).normal(size=(256, 3, size, size)).astype(np.float32)
    return _export(net, x), x


def resnet18(size: int = 224) -> tuple[bytes, np.ndarray]:
    """A full-size ResNet-18 (ImageNet layout: 11.7M parameters, untrained) and one input image."""
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
        cin = cout
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))
    x = np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)
    return _export(net, x), x
