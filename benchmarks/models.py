"""Models the benchmarks run: the shipped digits MLP, a small digits CNN, a logistic regression and a
mixed-activation MLP on digits, a ResNet-style network, and torchvision's
resnet18, mobilenet_v3_small, efficientnet_b0, convnext_tiny and a ViT-tiny re-implemented in plain torch."""

from __future__ import annotations

import io

import numpy as np
from cml_core.demo import load_example


def digits() -> dict[str, np.ndarray]:
    return load_example()[1]


#: samples of the training split the FHE section's own models are trained on; the rest is held out for tuning
FIT_SAMPLES = 1000


def held_out() -> tuple[np.ndarray, np.ndarray]:
    """Indices into the training split: those the models only the FHE section runs (the logistic regression and
    the mixed-activation MLP) are trained on, and the rest, which they never see, to tune rounding and error
    probability on (the test split stays for scoring alone). The shipped MLP and the CNN, which every section
    runs, are trained on the whole split."""
    order = np.random.default_rng(0).permutation(len(digits()["x_train"]))
    return order[:FIT_SAMPLES], order[FIT_SAMPLES:]


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


def logistic_regression() -> bytes:
    """A logistic regression on digits: Gemm(64->10) then Sigmoid (one-vs-rest probabilities)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    data, (fit, _) = digits(), held_out()
    linear = nn.Linear(64, 10)
    _train(linear, data["x_train"][fit], data["y_train"][fit], 300)
    return _export(nn.Sequential(linear, nn.Sigmoid()), data["x_train"][fit])


def mixed_mlp() -> bytes:
    """A 64-32-32-32-10 MLP with a different activation after each hidden Gemm: ReLU, Sigmoid, Tanh."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    data, (fit, _) = digits(), held_out()
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.Sigmoid(), nn.Linear(32, 32), nn.Tanh(),
                        nn.Linear(32, 10))
    _train(net, data["x_train"][fit], data["y_train"][fit], 400)
    return _export(net, data["x_train"][fit])


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
    """torchvision's resnet18 (ImageNet layout: 11.7M parameters, untrained), exported as torch does by
    default, and two input images."""
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
    _randomize_batch_norms(net)
    x = _image(size)
    return _export_default(net, x), x


# Real-export shapes: plain-torch re-implementations of torchvision's architectures (torchvision does not
# import here), random weights, exported by the TorchScript exporter at its default opset.

def _export_default(net, x: np.ndarray) -> bytes:
    """``net`` exported as torch.onnx.export does by default (TorchScript exporter, default opset),
    with a dynamic batch axis."""
    import torch

    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net.eval(), (torch.tensor(x[:1]),), buffer, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return buffer.getvalue()


def _image(size: int = 224) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)


def _divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: ``value`` rounded to a multiple of ``divisor``, at most 10% lower."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _randomize_batch_norms(net) -> None:
    """Give every BatchNorm running statistics and an affine map away from the identity (the exporter
    folds them into the convolutions, as it does for trained weights)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)


def mobilenet_v3_small() -> tuple[bytes, np.ndarray]:
    """torchvision's mobilenet_v3_small (ImageNet layout, 2.5M parameters): depthwise convolutions,
    hardswish, squeeze-and-excitation blocks with a hardsigmoid gate; untrained. Two input images."""
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = None) -> list:
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + ([act()] if act else [])

    class SqueezeExcitation(nn.Module):
        def __init__(self, c: int, squeeze: int, act: type = nn.ReLU, gate: type = nn.Hardsigmoid) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
            self.act, self.gate = act(), gate()

        def forward(self, x):
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.fc2(self.act(self.fc1(s))))

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, k: int, expanded: int, cout: int, se: bool, act: type, stride: int) -> None:
            super().__init__()
            layers = conv_bn(cin, expanded, 1, act=act) if expanded != cin else []
            layers += conv_bn(expanded, expanded, k, stride, groups=expanded, act=act)
            if se:
                layers.append(SqueezeExcitation(expanded, _divisible(expanded // 4)))
            self.block = nn.Sequential(*layers, *conv_bn(expanded, cout, 1))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.block(x)
            return x + y if self.residual else y

    re, hs = nn.ReLU, nn.Hardswish
    settings = [(16, 3, 16, 16, True, re, 2), (16, 3, 72, 24, False, re, 2), (24, 3, 88, 24, False, re, 1),
                (24, 5, 96, 40, True, hs, 2), (40, 5, 240, 40, True, hs, 1), (40, 5, 240, 40, True, hs, 1),
                (40, 5, 120, 48, True, hs, 1), (48, 5, 144, 48, True, hs, 1), (48, 5, 288, 96, True, hs, 2),
                (96, 5, 576, 96, True, hs, 1), (96, 5, 576, 96, True, hs, 1)]
    torch.manual_seed(0)
    net = nn.Sequential(*conv_bn(3, 16, 3, 2, act=hs), *[InvertedResidual(*s) for s in settings],
                        *conv_bn(96, 576, 1, act=hs), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(576, 1024), hs(), nn.Dropout(0.2), nn.Linear(1024, 1000))
    _randomize_batch_norms(net)
    x = _image()
    return _export_default(net, x), x


def efficientnet_b0() -> tuple[bytes, np.ndarray]:
    """torchvision's efficientnet_b0 (5.3M parameters): MBConv blocks of depthwise 3x3/5x5 convolutions,
    SiLU and squeeze-and-excitation with a sigmoid gate; untrained. Two input images."""
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list:
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + ([nn.SiLU()] if act else [])

    class SqueezeExcitation(nn.Module):
        def __init__(self, c: int, squeeze: int) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

        def forward(self, x):
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(s))))

    class MBConv(nn.Module):
        def __init__(self, ratio: int, k: int, stride: int, cin: int, cout: int) -> None:
            super().__init__()
            expanded = cin * ratio
            layers = conv_bn(cin, expanded, 1) if ratio != 1 else []
            layers += conv_bn(expanded, expanded, k, stride, groups=expanded)
            layers += [SqueezeExcitation(expanded, max(1, cin // 4)), *conv_bn(expanded, cout, 1, act=False)]
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.block(x)
            return x + y if self.residual else y

    stages = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
    torch.manual_seed(0)
    blocks = [MBConv(ratio, k, stride if i == 0 else 1, cin if i == 0 else cout, cout)
              for ratio, k, stride, cin, cout, layers in stages for i in range(layers)]
    net = nn.Sequential(*conv_bn(3, 32, 3, 2), *blocks, *conv_bn(320, 1280, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 1000))
    _randomize_batch_norms(net)
    x = _image()
    return _export_default(net, x), x


def convnext_tiny() -> tuple[bytes, np.ndarray]:
    """torchvision's convnext_tiny (28.6M parameters): depthwise 7x7 convolutions, LayerNorm over
    channels-last activations, GELU MLPs and layer scale; untrained. Two input images."""
    import torch
    from torch import nn

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class Block(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            self.layer_scale = nn.Parameter(torch.rand(dim, 1, 1) * 0.5)

        def forward(self, x):
            y = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
            return x + self.layer_scale * y

    torch.manual_seed(0)
    dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
    layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
    for i, (dim, depth) in enumerate(zip(dims, depths)):
        if i:
            layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
        layers += [Block(dim) for _ in range(depth)]
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(),
                        nn.Linear(dims[-1], 1000))
    x = _image()
    return _export_default(net, x), x


def vit_tiny() -> tuple[bytes, np.ndarray]:
    """A ViT-tiny in torchvision's VisionTransformer layout (patch 16, width 192, 12 blocks of 3-head
    nn.MultiheadAttention, MLP 768, 5.7M parameters); untrained. Two input images."""
    import torch
    from torch import nn

    class EncoderBlock(nn.Module):
        def __init__(self, dim: int, heads: int, mlp: int) -> None:
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
            self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

        def forward(self, x):
            y = self.ln_1(x)
            x = x + self.self_attention(y, y, y, need_weights=False)[0]
            return x + self.mlp(self.ln_2(x))

    class VisionTransformer(nn.Module):
        def __init__(self, size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12, heads: int = 3,
                     mlp: int = 768) -> None:
            super().__init__()
            self.conv_proj = nn.Conv2d(3, dim, patch, patch)
            self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos_embedding = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
            self.layers = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
            self.ln = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, 1000)

        def forward(self, x):
            n = x.shape[0]
            x = self.conv_proj(x).reshape(n, self.conv_proj.out_channels, -1).permute(0, 2, 1)
            x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
            return self.head(self.ln(self.layers(x))[:, 0])

    torch.manual_seed(0)
    x = _image()
    return _export_default(VisionTransformer(), x), x
