"""The reference tool (concrete-ml 1.9.0) on the inputs our FHE benchmark runs: ``nox -s bench_reference``.

    python benchmarks/reference.py --inputs DIR [--output docs/benchmarks-reference.json] [--samples 2]

concrete-ml pins onnx 1.17 and torch 2.3.1, so it runs in a virtualenv of its own and this script imports
nothing of cml. DIR holds what ``python -m benchmarks --write-inputs DIR`` wrote with cml's environment: each
model's ONNX file and an .npz of its calibration set (the training split our benchmark calibrates and compiles
on) and test set, listed in ``manifest.json``. For each model, at the reference's settings (``n_bits`` 6 and 8,
without rounding and with ``rounding_threshold_bits=6``, exact rounding): ``compile_onnx_model``, accuracy in the
clear and simulated (``fhe="simulate"``) on the whole test set, circuit complexity, PBS count, max bit width,
compile and key generation seconds, and the seconds of each of the first test samples encrypted one by one
(``fhe="execute"``, the median reported) where the complexity is under the same limit as our benchmark's, and
always at its default setting (``n_bits`` 6, ``rounding_threshold_bits=6``), the baseline of the cost targets.

The JSON records the machine (host, CPU, core count, boot id) and the start and end times, so that
``python -m benchmarks`` shows ratios only beside figures of its own measured on the same machine within
the same run; and each model's input id (a hash of the ONNX bytes and the arrays, recomputed here from the
files read), which our benchmark checks against the inputs it measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# run as a script, this folder would come first on sys.path and shadow modules named like ours (models, qat...)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from importlib import metadata  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402


def _load_runs() -> Any:
    """benchmarks/runs.py (input ids, machine records), loaded by path: this folder is off sys.path."""
    spec = importlib.util.spec_from_file_location("benchmark_runs", HERE / "runs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_runs = _load_runs()
input_id, machine, now = _runs.input_id, _runs.machine, _runs.now
DEFAULT_OUTPUT = HERE.parent / "docs" / "benchmarks-reference.json"
#: (setting name as our benchmark spells it, n_bits, rounding_threshold_bits): an int rounds exactly in concrete-ml
SETTINGS: list[tuple[str, int, int | None]] = [
    ("n_bits 6, no rounding", 6, None),
    ("n_bits 6, 6-bit exact rounding", 6, 6),
    ("n_bits 8, no rounding", 8, None),
    ("n_bits 8, 6-bit exact rounding", 8, 6),
]
#: above this circuit complexity encrypted execution is left out, as in our benchmark (benchmarks/__main__.py),
#: except at the reference's default setting (n_bits 6, 6-bit rounding): the baseline cml's costs are divided by
EXECUTE_LIMIT = 3e11
BASELINE = (6, 6)  # (n_bits, rounding_threshold_bits)


def accuracy(scores: Any, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(scores).argmax(1) == labels))


def first_line(exc: BaseException) -> str:
    """The error's first line, with the reasons concrete-python points at under the graph (its ``^^^`` lines)."""
    text = f"{type(exc).__name__}: {exc}".strip()
    reasons = re.findall(r"\^+ (.+?)\s*$", text, flags=re.MULTILINE)[:2]
    return (text.splitlines()[0] + (": " + ", ".join(reasons) if reasons else ""))[:400]


def run_setting(onnx_model: Any, x_calib: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, n_bits: int,
                rounding: int | None, samples: int, execute_limit: float) -> dict[str, Any]:
    from concrete.ml.torch.compile import compile_onnx_model

    row: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        qm = compile_onnx_model(onnx_model, x_calib, n_bits=n_bits, rounding_threshold_bits=rounding)
    except Exception as exc:  # the reference's own refusal (e.g. a lookup wider than 16 bits) is a figure too
        row["error"] = first_line(exc)
        row["compile_s"] = time.perf_counter() - start
        return row
    row["compile_s"] = time.perf_counter() - start
    circuit = qm.fhe_circuit
    stats = circuit.statistics
    row.update({"pbs": int(stats.get("programmable_bootstrap_count", 0)),
                "max_bit_width": int(circuit.graph.maximum_integer_bit_width()),
                "complexity": float(circuit.complexity),
                "p_error": float(stats.get("p_error", float("nan"))),
                "global_p_error": float(stats.get("global_p_error", float("nan")))})
    row["quantized_accuracy"] = accuracy(qm.forward(x_test, fhe="disable"), y_test)
    start = time.perf_counter()
    row["simulated_accuracy"] = accuracy(qm.forward(x_test, fhe="simulate"), y_test)
    row["simulate_s"] = time.perf_counter() - start
    if row["complexity"] > execute_limit and (n_bits, rounding) != BASELINE:
        row["not_executed"] = f"complexity above {execute_limit:.0e}"
        return row
    start = time.perf_counter()
    circuit.keygen(force=False)
    row["keygen_s"] = time.perf_counter() - start
    q = qm.quantize_input(x_test[:samples])
    parts, seconds = [], []
    for i in range(samples):  # timed one by one, as our benchmark does: the median is reported
        start = time.perf_counter()
        parts.append(qm.quantized_forward(q[i : i + 1], fhe="execute"))
        seconds.append(time.perf_counter() - start)
    encrypted = np.concatenate(parts)
    simulated = qm.quantized_forward(q, fhe="simulate")
    row["seconds_per_encrypted_sample"] = statistics.median(seconds)
    row["seconds_per_encrypted_sample_runs"] = seconds
    row["encrypted_samples"] = samples
    row["encrypted_accuracy"] = accuracy(qm.dequantize_output(encrypted), y_test[:samples])
    row["encrypted_equals_simulated"] = bool(np.array_equal(encrypted, simulated))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/reference.py", description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=Path, required=True,
                        help="folder written by `python -m benchmarks --write-inputs` (manifest.json, ONNX, .npz)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON written (default {DEFAULT_OUTPUT})")
    parser.add_argument("--samples", type=int, default=2, help="encrypted samples per setting")
    parser.add_argument("--execute-limit", type=float, default=EXECUTE_LIMIT,
                        help="no encrypted execution above this circuit complexity")
    parser.add_argument("--model", action="append", help="run only this model (its name in the manifest)")
    args = parser.parse_args(argv)
    inputs, output = args.inputs.resolve(), args.output.resolve()
    # a failed compile makes concrete-python replace ./.artifacts with its debug files: they go to a folder of
    # their own (named in the JSON), not into the caller's
    artifacts = Path(tempfile.mkdtemp(prefix="bench-reference-"))
    os.chdir(artifacts)

    import onnx
    import onnxruntime as ort

    manifest = json.loads((inputs / "manifest.json").read_text())
    versions = {p: metadata.version(p) for p in ("concrete-ml", "concrete-python", "torch", "onnx", "onnxruntime",
                                                 "numpy")}
    result: dict[str, Any] = {
        "tool": "concrete-ml", "versions": versions, "machine": machine(), "started": now(),
        "loadavg_start": list(os.getloadavg()), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "samples": args.samples, "execute_limit": args.execute_limit,
        "debug_artifacts": str(artifacts / ".artifacts"),
        "inputs": {"written": manifest.get("written"), "machine": manifest.get("machine"),
                   "versions": manifest.get("versions")},
        "models": {}, "rows": [],
    }
    print(f"concrete-ml {versions['concrete-ml']} on {result['machine']['cpu']} ({result['machine']['cpus']} CPUs)",
          flush=True)
    for entry in manifest["models"]:
        name = entry["name"]
        if args.model and name not in args.model:
            continue
        model_bytes = (inputs / entry["onnx"]).read_bytes()
        with np.load(inputs / entry["data"]) as data:
            x_calib, x_test, y_test = data["x_calib"], data["x_test"], data["y_test"]
        ident = input_id(model_bytes, x_calib, x_test, y_test)
        if ident != entry["input_id"]:
            raise SystemExit(f"{name}: the files in {inputs} do not hash to the manifest's input id")
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        float_acc = accuracy(session.run(None, {session.get_inputs()[0].name: x_test})[0], y_test)
        result["models"][name] = {"input_id": ident, "float_accuracy_onnxruntime": float_acc,
                                  "calibration_samples": len(x_calib), "test_samples": len(x_test)}
        for setting, n_bits, rounding in SETTINGS:
            row: dict[str, Any] = {"model": name, "setting": setting, "n_bits": n_bits,
                                   "rounding_threshold_bits": rounding, "float_accuracy": float_acc}
            try:
                row.update(run_setting(onnx.load_from_string(model_bytes), x_calib, x_test, y_test, n_bits, rounding,
                                       args.samples, args.execute_limit))
            except Exception as exc:  # noqa: BLE001 - recorded, the other settings still run
                traceback.print_exc()
                row["error"] = first_line(exc)
            result["rows"].append(row)
            print({k: v for k, v in row.items() if not k.endswith("_runs")}, flush=True)
    result["finished"] = now()
    result["loadavg_end"] = list(os.getloadavg())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    status = 0
    try:
        main()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # once concrete's runtime has run, the interpreter's own exit reports 0 whatever the status
    os._exit(status)
