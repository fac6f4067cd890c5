"""Quantization-aware training with Brevitas against post-training quantization, on digits.

Run by ``python -m benchmarks --only qat``. For 2, 3 and 4 bits (weights and activations), an MLP
(64-32-32-10) and a small CNN are trained with Brevitas, exported in QCDQ and QONNX form and compiled
by ``compile_brevitas_model`` without rounding; their simulated accuracy is set beside the Brevitas
model's own (its torch forward). Beside them, the float twin of each network (same layers, plain
torch, same training) quantized after training at the same bits (``n_bits`` for inputs, activations
and weights), simulated when it compiles. A few test samples run encrypted for each QAT circuit.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from cml_core.fhe import circuit_summary, compile_brevitas_model, export_torch

from cml_core import BitWidthError, CompileError, load_model

from . import models

BITS = (2, 3, 4)
EPOCHS = 40
#: above this circuit complexity, encrypted execution is left out (its keys outgrow this machine's memory:
#: the 4-bit MLP without rounding was killed at 24 GiB during key generation)
EXECUTE_LIMIT = 5e11


def _networks(bits: int | None) -> dict[str, Any]:
    """name -> (network, sample shape); ``bits=None``: the float twins."""
    import torch
    from torch import nn

    if bits is None:
        return {
            "MLP 64-32-32-10": (nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                              nn.Linear(32, 10)), (64,)),
            "CNN digits": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2),
                                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 10)), (1, 8, 8)),
        }
    import brevitas.nn as qnn

    def act() -> Any:
        return qnn.QuantReLU(bit_width=bits, return_quant_tensor=True)

    class Flatten(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x.flatten(1)

    return {
        "MLP 64-32-32-10": (nn.Sequential(
            qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True),
            qnn.QuantLinear(64, 32, bias=True, weight_bit_width=bits, return_quant_tensor=True), act(),
            qnn.QuantLinear(32, 32, bias=True, weight_bit_width=bits, return_quant_tensor=True), act(),
            qnn.QuantLinear(32, 10, bias=True, weight_bit_width=bits)), (64,)),
        "CNN digits": (nn.Sequential(
            qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True),
            qnn.QuantConv2d(1, 4, 3, padding=1, weight_bit_width=bits, return_quant_tensor=True), act(),
            qnn.QuantConv2d(4, 8, 3, stride=2, weight_bit_width=bits, return_quant_tensor=True), act(), Flatten(),
            qnn.QuantLinear(8 * 3 * 3, 10, bias=True, weight_bit_width=bits)), (1, 8, 8)),
    }


def _train(net: Any, x: np.ndarray, y: np.ndarray) -> Any:
    import torch

    torch.manual_seed(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.tensor(x), torch.tensor(y)
    net.train()
    for _ in range(EPOCHS):
        for index in torch.randperm(len(xt)).split(64):
            optimizer.zero_grad()
            out = net(xt[index])
            torch.nn.functional.cross_entropy(getattr(out, "value", out), yt[index]).backward()
            optimizer.step()
    return net.eval()


def _torch_accuracy(net: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        out = net(torch.tensor(x))
    return float(np.mean(getattr(out, "value", out).numpy().argmax(1) == y))


def accuracy(scores: Any, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(scores).argmax(1) == labels))


def qat_path(samples: int = 3, bits_list: tuple[int, ...] = BITS) -> list[dict[str, Any]]:
    import torch

    torch.manual_seed(0)
    data = models.digits()
    rows: list[dict[str, Any]] = []
    floats = {}
    for name, (net, shape) in _networks(None).items():
        x_train, x_test = data["x_train"].reshape(-1, *shape), data["x_test"].reshape(-1, *shape)
        floats[name] = (_train(net, x_train, data["y_train"]), x_train, x_test)
    for bits in bits_list:
        for name, (net, shape) in _networks(bits).items():
            x_train, x_test = data["x_train"].reshape(-1, *shape), data["x_test"].reshape(-1, *shape)
            y_test = data["y_test"]
            start = time.perf_counter()
            net = _train(net, x_train, data["y_train"])
            train_s = time.perf_counter() - start
            reference = _torch_accuracy(net, x_test, y_test)
            for form in ("qcdq", "qonnx"):
                row: dict[str, Any] = {"model": name, "bits": bits, "method": f"QAT ({form.upper()})",
                                       "reference_accuracy": reference, "train_s": train_s}
                start = time.perf_counter()
                try:
                    qmodule = compile_brevitas_model(net, x_train, form=form)
                except (CompileError, BitWidthError) as exc:
                    row["error"] = str(exc).split(". ")[0]
                    rows.append(row)
                    print(row, flush=True)
                    continue
                row["compile_s"] = time.perf_counter() - start
                row["rounding"] = "none"
                row["max_lookup_bits"] = qmodule.bitwidth_report().max_lookup_bits
                row.update(circuit_summary(qmodule.fhe_circuit))
                row["quantized_accuracy"] = accuracy(qmodule(x_test), y_test)
                simulated = qmodule.forward(x_test, fhe="simulate")
                row["simulated_accuracy"] = accuracy(simulated, y_test)
                if form == "qcdq" and row["complexity"] <= EXECUTE_LIMIT:
                    start = time.perf_counter()
                    q = qmodule.quantize_input(x_test[:samples])
                    encrypted = qmodule.quantized_forward(q, fhe="execute")
                    row["seconds_per_encrypted_sample"] = (time.perf_counter() - start) / samples
                    row["encrypted_equals_simulated"] = bool(np.array_equal(
                        encrypted, qmodule.quantized_forward(q, fhe="simulate")))
                rows.append(row)
                print(row, flush=True)
            # the float twin quantized after training at the same bits
            twin, x_train_f, x_test_f = floats[name]
            module = load_model(export_torch(twin, x_train_f))
            row = {"model": name, "bits": bits, "method": "PTQ of the float twin",
                   "reference_accuracy": accuracy(module(x_test_f), y_test), "rounding": "none"}
            qmodule = module.quantize(x_train_f, n_bits=bits)
            row["quantized_accuracy"] = accuracy(qmodule(x_test_f), y_test)
            row["max_lookup_bits"] = qmodule.bitwidth_report().max_lookup_bits
            try:
                start = time.perf_counter()
                qmodule.compile(x_train_f)
                row["compile_s"] = time.perf_counter() - start
                row.update(circuit_summary(qmodule.fhe_circuit))
                row["simulated_accuracy"] = accuracy(qmodule.forward(x_test_f, fhe="simulate"), y_test)
            except (CompileError, BitWidthError) as exc:
                row["error"] = str(exc).split(". ")[0]
            rows.append(row)
            print(row, flush=True)
    return rows
