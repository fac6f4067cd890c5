"""Train the demo model shipped in cml-core: a 64-32-32-10 ReLU MLP on scikit-learn's bundled digits.

Writes ``cml_core/src/cml_core/examples/digits_mlp.onnx`` and ``digits_split.npz`` (the train/test
split, inputs scaled to [0, 1]). Deterministic: fixed seeds, no download.

    python scripts/train_demo_model.py
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parent.parent / "cml_core" / "src" / "cml_core" / "examples"


def main() -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order].astype(np.int64)
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.tensor(x_train), torch.tensor(y_train)
    for _ in range(400):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(torch.tensor(x_test)).argmax(1).numpy() == y_test).mean()

    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.tensor(x_train[:1]),), buffer, dynamo=False, opset_version=14,
                      input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "digits_mlp.onnx").write_bytes(buffer.getvalue())
    np.savez_compressed(OUT / "digits_split.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"float test accuracy {accuracy:.4f}; wrote {OUT / 'digits_mlp.onnx'}")


if __name__ == "__main__":
    main()
