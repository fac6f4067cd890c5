"""End-to-end demo: the shipped digits MLP, from ONNX to encrypted inference.

    python -m cml_core.demo [--samples 5] [--n-bits 6] [--input-bits 5] [--rounding 5] [--exact-rounding]

Loads the model and its data, measures float and quantized accuracy on the test split, compiles the
quantized model with concrete-python, checks the simulated accuracy, then classifies a handful of
encrypted samples and reports the time per encrypted sample.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .fhe import circuit_summary
from .numpy_module import load_model


def load_example() -> tuple[bytes, dict[str, NDArray[Any]]]:
    """The shipped ONNX model (bytes) and its train/test split."""
    folder = resources.files("cml_core") / "examples"
    model = (folder / "digits_mlp.onnx").read_bytes()
    with (folder / "digits_split.npz").open("rb") as f:
        data = dict(np.load(f))
    return model, data


def accuracy(scores: Any, labels: NDArray[Any]) -> float:
    return float(np.mean(np.asarray(scores).argmax(axis=1) == labels))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns the figures it printed."""
    parser = argparse.ArgumentParser(prog="python -m cml_core.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5, help="encrypted samples to classify")
    parser.add_argument("--n-bits", type=int, default=6, help="bits of activations and weights")
    parser.add_argument("--input-bits", type=int, default=5,
                        help="bits of the encrypted inputs (the digits pixels take 17 values)")
    parser.add_argument("--rounding", type=int, default=5, help="bits kept before each lookup (0: no rounding)")
    parser.add_argument("--exact-rounding", action="store_true", help="exact instead of approximate rounding")
    parser.add_argument("--verbose", action="store_true", help="show compilation and encryption progress")
    args = parser.parse_args(argv)

    model, data = load_example()
    x_train, x_test, y_test = data["x_train"], data["x_test"], data["y_test"]
    module = load_model(model)
    print(f"model: {module}")
    figures: dict[str, Any] = {"float accuracy": accuracy(module(x_test), y_test)}

    rounding = None
    if args.rounding:
        rounding = {"n_bits": args.rounding, "method": "exact" if args.exact_rounding else "approximate"}
    n_bits = {"model_inputs": args.input_bits, "op_inputs": args.n_bits, "op_weights": args.n_bits}
    qmodule = module.quantize(x_train, n_bits=n_bits, rounding_threshold_bits=rounding)
    figures["quantized accuracy"] = accuracy(qmodule(x_test), y_test)

    start = time.perf_counter()
    qmodule.compile(x_train, verbose=args.verbose)
    figures["compile seconds"] = time.perf_counter() - start
    figures.update(circuit_summary(qmodule.fhe_circuit))
    figures["simulated accuracy"] = accuracy(qmodule.forward(x_test, fhe="simulate"), y_test)

    n = min(args.samples, len(x_test))
    start = time.perf_counter()
    qmodule.fhe_circuit.keygen(force=False)
    figures["keygen seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    encrypted = qmodule.forward(x_test[:n], fhe="execute")
    figures["seconds per encrypted sample"] = (time.perf_counter() - start) / n
    figures[f"encrypted accuracy ({n} samples)"] = accuracy(encrypted, y_test[:n])
    figures[f"encrypted agrees with simulation ({n} samples)"] = accuracy(
        encrypted, qmodule.forward(x_test[:n], fhe="simulate").argmax(1))
    for key, value in figures.items():
        print(f"{key:>40}: {value:.4g}" if isinstance(value, float) else f"{key:>40}: {value}")
    return figures


if __name__ == "__main__":
    main()
