"""Run the benchmarks and write docs/benchmarks.{json,md,png}.

    python -m benchmarks [--quick] [--samples 3] [--only float|quantized|fhe|deployment|qat|classical|compile ...]
    python -m benchmarks --only compile --compile-baseline    record the compile-cost baseline
    python -m benchmarks --page                 rewrite docs/benchmarks.md from the JSON files, measuring nothing
    python -m benchmarks --write-inputs DIR     the FHE section's models and data, for benchmarks/reference.py

Float path: NumpyModule vs onnxruntime (graph optimizations as shipped, one thread, timed in turns) vs the ONNX
reference evaluator, on the digits models, a ResNet-style network and exports of torchvision's architectures. Clear quantized path: QuantizedModule throughput. FHE: compile and key
generation time, time per encrypted sample, PBS count, max bit width, complexity, and accuracy
float / quantized / simulated / encrypted for several quantization and rounding settings. Classical ML:
scikit-learn models exported with skl2onnx and Hummingbird gemm, from float to encrypted
(``benchmarks/classical.py``). The reference tool (concrete-ml 1.9.0) runs in a virtualenv of its own on the
FHE section's models and data (``nox -s bench_reference``, ``benchmarks/reference.py``); its JSON
(docs/benchmarks-reference.json) is shown beside this benchmark's FHE figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from cml_core.fhe import circuit_summary
from cml_core.fhe.run import WORKERS_VARIABLE, execution_workers
from cml_core.quantization.context import MAX_LOOKUP_BITS

from cml_core import BitWidthError, CompileError, choose_p_error, choose_rounding, load_model

from . import models
from .classical import EXECUTE_LIMIT as CLASSICAL_EXECUTE_LIMIT
from .compile_cost import BASELINE as COMPILE_BASELINE
from .compile_cost import BERT, BLOCK, baseline_of, compile_path, regressions
from .runs import input_id, machine, now

DOCS = Path(__file__).resolve().parent.parent / "docs"


def median_time(function: Callable[[], Any], repeat: int = 5, min_total: float = 0.2) -> float:
    """Median seconds of ``function`` over ``repeat`` timed runs (each run repeated to last >= min_total/repeat)."""
    function()  # warm-up
    start = time.perf_counter()
    function()
    once = time.perf_counter() - start
    inner = max(1, int(min_total / repeat / max(once, 1e-6)))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(inner):
            function()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def _relative_error(ours: Any, theirs: Any) -> float:
    return float(np.max(np.abs(np.asarray(ours) - theirs)) / max(float(np.max(np.abs(theirs))), 1e-30))


def paired_median_times(first: Callable[[], Any], second: Callable[[], Any], repeat: int = 15,
                        min_total: float = 0.6) -> tuple[float, float, float]:
    """Median seconds of ``first`` and of ``second``, timed in turns (one run of each, ``repeat`` times, each
    repeated to last >= min_total/repeat/2), and the median of the turns' ratios: on a busy machine both
    runs of a turn see about the same load, so that ratio holds where the times themselves vary."""
    inner = []
    for function in (first, second):
        function()  # warm-up
        start = time.perf_counter()
        function()
        inner.append(max(1, int(min_total / repeat / 2 / max(time.perf_counter() - start, 1e-6))))
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for function, count, times in zip((first, second), inner, samples):
            start = time.perf_counter()
            for _ in range(count):
                function()
            times.append((time.perf_counter() - start) / count)
    ratios = [a / b for a, b in zip(*samples)]
    return statistics.median(samples[0]), statistics.median(samples[1]), statistics.median(ratios)


#: the float path's targets: NumpyModule's time over onnxruntime's (both on one thread)
FLOAT_TARGET_BATCH_256 = 1.5
FLOAT_TARGET_EXPORTS = 3.0


def float_cases(quick: bool) -> list[tuple[str, bytes, np.ndarray, tuple[int, ...]]]:
    """(name, ONNX bytes, inputs, batches) per float-path model."""
    data = models.digits()
    resnet_bytes, resnet_x = models.resnet(width=16 if quick else 32)
    cases = [("MLP 64-32-32-10", models.mlp(), data["x_test"], (1, 256)),
             ("CNN digits", models.cnn(), data["x_test"].reshape(-1, 1, 8, 8), (1, 256)),
             ("ResNet-style 4 blocks", resnet_bytes, resnet_x, (1, 256))]
    if not quick:  # torchvision's architectures re-implemented, random weights, exported as torch does by default
        for name, build in (("resnet18", models.resnet18), ("mobilenet_v3_small", models.mobilenet_v3_small),
                            ("efficientnet_b0", models.efficientnet_b0), ("convnext_tiny", models.convnext_tiny),
                            ("ViT-tiny", models.vit_tiny)):
            cases.append((name, *build(), (1, 2)))
    return cases


def float_target(model: str, batch: int) -> float | None:
    """The ratio to onnxruntime a float-path row is held to, ``None`` for rows without a target."""
    if model.startswith(("MLP", "CNN", "ResNet-style")):
        return FLOAT_TARGET_BATCH_256 if batch == 256 else None
    return FLOAT_TARGET_EXPORTS


def float_path(quick: bool) -> list[dict[str, Any]]:
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    rows = []
    for name, model_bytes, x, batches in float_cases(quick):
        module = load_model(model_bytes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        reference = ReferenceEvaluator(onnx.load_from_string(model_bytes))
        input_name = module.input_names[0]
        for batch in batches:
            xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
            error = _relative_error(module(xb), session.run(None, {input_name: xb})[0])
            ours, ort_t, ratio = paired_median_times(lambda module=module, xb=xb: module(xb),
                                                     lambda session=session, name=input_name, xb=xb:
                                                     session.run(None, {name: xb}))
            ref_t = median_time(lambda ref=reference, name=input_name, xb=xb: ref.run(None, {name: xb}), repeat=3)
            rows.append({"model": name, "batch": batch, "cml_ms": ours * 1e3, "onnxruntime_ms": ort_t * 1e3,
                         "reference_evaluator_ms": ref_t * 1e3, "cml_vs_onnxruntime": ratio,
                         "target": float_target(name, batch), "reference_vs_cml": ref_t / ours,
                         "relative_error_vs_onnxruntime": error})
            print(rows[-1], flush=True)
    return rows


def quantized_path() -> list[dict[str, Any]]:
    data = models.digits()
    rows = []
    for name, model_bytes, x_train, x in (
        ("MLP 64-32-32-10", models.mlp(), data["x_train"], data["x_test"]),
        ("CNN digits", models.cnn(), data["x_train"].reshape(-1, 1, 8, 8), data["x_test"].reshape(-1, 1, 8, 8)),
    ):
        qmodule = load_model(model_bytes).quantize(x_train, n_bits=6)
        xb = np.resize(x, (256, *x.shape[1:]))
        seconds = median_time(lambda qmodule=qmodule, xb=xb: qmodule(xb))
        rows.append({"model": name, "batch": 256, "ms": seconds * 1e3, "samples_per_s": 256 / seconds})
        print(rows[-1], flush=True)
    return rows


AUTO = "inputs 5, ops 6, weights 6 bits, approximate rounding chosen per lookup (choose_rounding, max drop 1 point)"
AUTO_P_ERROR = ", then p_error (choose_p_error, max drop 1 point)"
#: simulated runs averaged per setting (approximate rounding is randomized)
SIM_REPEATS = 3

MLP_SETTINGS: list[tuple[str, Any, Any]] = [
    ("n_bits 6, no rounding", 6, None),
    ("n_bits 6, 6-bit exact rounding", 6, 6),
    ("n_bits 6, 6-bit approximate rounding", 6, {"n_bits": 6, "method": "approximate"}),
    ("n_bits 6, 4-bit approximate rounding", 6, {"n_bits": 4, "method": "approximate"}),
    ("n_bits 8, no rounding", 8, None),
    ("n_bits 8, 6-bit exact rounding", 8, 6),
    ("n_bits 8, 5-bit approximate rounding", 8, {"n_bits": 5, "method": "approximate"}),
    ("inputs 5, ops 6, weights 6 bits, 5-bit approximate rounding",
     {"model_inputs": 5, "op_inputs": 6, "op_weights": 6}, {"n_bits": 5, "method": "approximate"}),
    (AUTO, {"model_inputs": 5, "op_inputs": 6, "op_weights": 6}, "auto"),
]
CNN_SETTINGS: list[tuple[str, Any, Any]] = [
    ("n_bits 6, 6-bit exact rounding", 6, 6),
    ("inputs 5, ops 6, weights 6 bits, 5-bit approximate rounding",
     {"model_inputs": 5, "op_inputs": 6, "op_weights": 6}, {"n_bits": 5, "method": "approximate"}),
    (AUTO, {"model_inputs": 5, "op_inputs": 6, "op_weights": 6}, "auto"),
    # the rest of the reference tool's settings (benchmarks/reference.py), for the rows beside its figures
    ("n_bits 6, no rounding", 6, None),
    ("n_bits 8, no rounding", 8, None),
    ("n_bits 8, 6-bit exact rounding", 8, 6),
]
LOGREG = "LogReg 64-10 (Gemm, Sigmoid)"
MIXED = "Mixed MLP 64-32-32-32-10 (ReLU, Sigmoid, Tanh)"
#: the FHE section's models, in the order it runs them (fhe_models)
FHE_MODELS = ["MLP 64-32-32-10", "CNN digits", LOGREG, MIXED]
#: the reference tool's four settings (benchmarks/reference.py), then the cheapest this benchmark aims at
REFERENCE_SETTINGS: list[tuple[str, Any, Any]] = [
    ("n_bits 6, no rounding", 6, None),
    ("n_bits 6, 6-bit exact rounding", 6, 6),
    ("n_bits 8, no rounding", 8, None),
    ("n_bits 8, 6-bit exact rounding", 8, 6),
]
SMALL_SETTINGS = [*REFERENCE_SETTINGS, (AUTO, {"model_inputs": 5, "op_inputs": 6, "op_weights": 6}, "auto")]
#: above this circuit complexity, encrypted execution is estimated too slow for a benchmark run
EXECUTE_LIMIT = 3e11


def accuracy(scores: Any, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(scores).argmax(1) == labels))


def fhe_models() -> list[tuple[str, bytes, dict[str, np.ndarray]]]:
    """The FHE section's models, each with the sets it runs on: ``x_calib`` (the training split, which
    calibrates and compiles), ``x_test`` and ``y_test``, which the reference tool gets too (``--write-inputs``),
    and ``x_tune`` and ``y_tune``, which the tuned rows choose their settings on: the part of the training split
    held out of the model's training (``models.held_out``), or, for the shipped MLP and the CNN, trained on the
    whole split, the split itself."""
    data = models.digits()
    _, tune = models.held_out()
    cases = []
    flat = lambda a: a  # noqa: E731
    for name, model_bytes, shape, held in (("MLP 64-32-32-10", models.mlp(), flat, False),
                                           ("CNN digits", models.cnn(), lambda a: a.reshape(-1, 1, 8, 8), False),
                                           (LOGREG, models.logistic_regression(), flat, True),
                                           (MIXED, models.mixed_mlp(), flat, True)):
        sets = {"x_calib": shape(data["x_train"]), "x_test": shape(data["x_test"]), "y_test": data["y_test"],
                "x_tune": shape(data["x_train"][tune] if held else data["x_train"]),
                "y_tune": data["y_train"][tune] if held else data["y_train"]}
        cases.append((name, model_bytes, sets))
    return cases


def write_inputs(folder: Path) -> None:
    """The FHE section's models (ONNX) and sets (.npz) with a manifest, for benchmarks/reference.py."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, model_bytes, sets in fhe_models():
        stem = name.split()[0].lower()
        (folder / f"{stem}.onnx").write_bytes(model_bytes)
        np.savez(folder / f"{stem}.npz", **{k: sets[k] for k in ("x_calib", "x_test", "y_test")})
        entries.append({"name": name, "onnx": f"{stem}.onnx", "data": f"{stem}.npz",
                        "input_id": input_id(model_bytes, sets["x_calib"], sets["x_test"], sets["y_test"])})
    versions = {p: metadata.version(p) for p in ("cml-core", "torch", "onnx", "numpy")}
    manifest = {"written": now(), "machine": machine(), "versions": versions, "models": entries}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(entries)} models and their sets to {folder}")


def fhe_path(samples: int, quick: bool, only: list[str] | None = None) -> list[dict[str, Any]]:
    rows = []
    settings_of = {"MLP 64-32-32-10": MLP_SETTINGS, "CNN digits": CNN_SETTINGS, LOGREG: SMALL_SETTINGS,
                   MIXED: SMALL_SETTINGS}
    for model_name, model_bytes, sets in fhe_models():
        if only and model_name not in only:
            continue
        settings = settings_of[model_name]
        module = load_model(model_bytes)
        x_train, x_test, y_test = sets["x_calib"], sets["x_test"], sets["y_test"]
        ident = input_id(model_bytes, x_train, x_test, y_test)
        float_acc = accuracy(module(x_test), y_test)
        for name, n_bits, rounding in settings[:2] if quick else settings:
            row: dict[str, Any] = {"model": model_name, "setting": name, "float_accuracy": float_acc,
                                   "input_id": ident}
            auto = rounding == "auto"
            qmodule = module.quantize(x_train, n_bits=n_bits, rounding_threshold_bits=None if auto else rounding)
            if auto:  # tuned on the held-out part of the training split (or the split), never on the test set
                start = time.perf_counter()
                choice = choose_rounding(qmodule, x_train, sets["x_tune"], sets["y_tune"], max_drop=0.01)
                row["tuning_s"] = time.perf_counter() - start
                row["rounding_choice"] = choice.bits
            rows.append(measure(qmodule, row, sets, samples, with_throughput=auto))
            if auto and "error" not in row:  # then the largest error probability per lookup that keeps the target
                row = {**{k: row[k] for k in ("model", "float_accuracy", "input_id", "rounding_choice")},
                       "setting": name + AUTO_P_ERROR}
                start = time.perf_counter()
                error_choice = choose_p_error(qmodule, x_train, sets["x_tune"], sets["y_tune"], max_drop=0.01)
                row["tuning_s"] = time.perf_counter() - start
                row["p_error_choice"] = error_choice.p_error
                rows.append(measure(qmodule, row, sets, samples, p_error=error_choice.p_error, with_throughput=True))
    return rows


def merged_fhe_rows(results: dict[str, Any], rows: list[dict[str, Any]], only: list[str]) -> list[dict[str, Any]]:
    """``rows`` of the models in ``only`` in place of theirs among the FHE rows already in ``results``.

    Raises:
        SystemExit: the kept rows were measured on another machine or boot (one run's figures only), or a
            name in ``only`` is not one of the section's models.
    """
    names = FHE_MODELS
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise SystemExit(f"--model {unknown[0]!r}: the FHE section's models are {names}")
    earlier = results.get("runs", {}).get("fhe", {}).get("machine", {})
    here = machine()
    if any(earlier.get(k) != here.get(k) for k in ("host", "cpu", "cpus", "boot_id")):
        raise SystemExit("--model: the FHE rows in benchmarks.json were measured on another machine or boot; "
                         "run the whole section (--only fhe)")
    kept = [r for r in results.get("fhe", []) if r["model"] not in only]
    return sorted(kept + rows, key=lambda r: names.index(r["model"]))


def measure(qmodule: Any, row: dict[str, Any], sets: dict[str, np.ndarray], samples: int,
            p_error: float | None = None, with_throughput: bool = False) -> dict[str, Any]:
    """Fill ``row`` with a quantized module's accuracies, circuit figures and encrypted times."""
    x_train, x_test, y_test = sets["x_calib"], sets["x_test"], sets["y_test"]
    row["quantized_accuracy"] = accuracy(qmodule(x_test), y_test)
    row["max_lookup_bits"] = qmodule.bitwidth_report().max_lookup_bits
    start = time.perf_counter()
    try:
        qmodule.compile(x_train, p_error=p_error)
    except (BitWidthError, CompileError) as exc:  # no circuit at this setting: a figure too
        row["error"] = str(exc).split(". Ways out")[0]
        print(row, flush=True)
        return row
    row["compile_s"] = time.perf_counter() - start
    if getattr(qmodule, "auto_rounding", None) is not None:  # no rounding set and a lookup above 16 bits
        row["auto_rounding"] = dict(qmodule.auto_rounding.bits)
    row.update(circuit_summary(qmodule.fhe_circuit))
    runs = [accuracy(qmodule.forward(x_test, fhe="simulate"), y_test)
            for _ in range(1 if qmodule.config.rounding_exact and p_error is None else SIM_REPEATS)]
    row["simulated_accuracy"] = float(np.mean(runs))
    row["simulated_accuracy_runs"] = runs
    if row["complexity"] <= EXECUTE_LIMIT:
        start = time.perf_counter()
        qmodule.fhe_circuit.keygen(force=False)
        row["keygen_s"] = time.perf_counter() - start
        q = qmodule.quantize_input(x_test[:samples])
        parts, seconds = [], []
        for i in range(samples):  # timed one by one: the median of the samples is reported
            start = time.perf_counter()
            parts.append(qmodule.quantized_forward(q[i : i + 1], fhe="execute"))
            seconds.append(time.perf_counter() - start)
        encrypted = np.concatenate(parts)
        row["seconds_per_encrypted_sample"] = statistics.median(seconds)
        row["seconds_per_encrypted_sample_runs"] = seconds
        simulated = qmodule.quantized_forward(q, fhe="simulate")
        row["encrypted_samples"] = samples
        row["encrypted_accuracy"] = accuracy(qmodule.dequantize_output(encrypted), y_test[:samples])
        row["encrypted_equals_simulated"] = bool(np.array_equal(encrypted, simulated))
        if with_throughput:
            row.update(throughput(qmodule, x_test))
    print(row, flush=True)
    return row


def throughput(qmodule: Any, x: np.ndarray) -> dict[str, Any]:
    """Samples per second of ``forward(batch, fhe="execute")`` with one worker (samples one after the other) and
    with one per core (samples side by side), on a batch of two samples per core (keys already generated), and
    the cores each kept busy (concrete-python's runtime also spreads one sample's work over the cores)."""
    cores = execution_workers(10**6)
    batch = x[: 2 * cores]
    out: dict[str, Any] = {"throughput_batch": len(batch), "cores": cores}
    saved = os.environ.get(WORKERS_VARIABLE)
    try:
        for workers in (1, cores):
            os.environ[WORKERS_VARIABLE] = str(workers)
            start, cpu = time.perf_counter(), time.process_time()
            qmodule.forward(batch, fhe="execute")
            wall = time.perf_counter() - start
            name = "1_worker" if workers == 1 else "all_workers"
            out[f"samples_per_s_{name}"] = len(batch) / wall
            # the process's CPU seconds (every thread) per second: how many cores the run kept busy
            out[f"cores_busy_{name}"] = (time.process_time() - cpu) / wall
    finally:
        if saved is None:
            os.environ.pop(WORKERS_VARIABLE, None)
        else:
            os.environ[WORKERS_VARIABLE] = saved
    return out


def environment() -> dict[str, Any]:
    versions = {p: metadata.version(p) for p in ("cml-core", "concrete-python", "numpy", "onnx", "onnxruntime", "torch")}
    return {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "system": platform.platform(), **versions,
            "date": time.strftime("%Y-%m-%d")}


def _md_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) >= 1e3 or abs(v) < 1e-2 else f"{v:.3f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


#: the reference tool's published figures for the digits MLP (2-core machine): 6-bit exact rounding, and
#: its cheapest row within 1 point of its float accuracy (6-bit approximate rounding)
REFERENCE_EXACT6 = {"complexity": 1.07e11, "seconds_per_encrypted_sample": 6.9}
REFERENCE_BEST_WITHIN_1PT = {"complexity": 7.9e10}


def targets(results: dict[str, Any], reference: dict[str, Any] | None = None) -> list[str]:
    """The issue's targets, checked against this run's figures."""
    lines = ["## Targets, checked on this run", ""]
    floats = results.get("float", [])
    for row in floats:
        target = row.get("target", float_target(row["model"], row["batch"]))
        if target is not None:
            verdict = "met" if row["cml_vs_onnxruntime"] <= target else "not met"
            lines.append(f"- Float path, {row['model']}, batch {row['batch']}: {row['cml_vs_onnxruntime']:.2f}x "
                         f"onnxruntime (target {target:g}x): {verdict}.")
    slower = [f"{r['model']} batch {r['batch']}" for r in floats if r["reference_vs_cml"] < 1]
    lines.append("- Faster than the ONNX reference evaluator everywhere: "
                 + ("met." if floats and not slower else f"not met on {', '.join(slower)}."))
    mlp = [r for r in results.get("fhe", []) if r["model"].startswith("MLP") and "complexity" in r]
    exact6 = next((r for r in mlp if r["setting"] == "n_bits 6, 6-bit exact rounding"), None)
    good = [r for r in mlp if r["simulated_accuracy"] >= r["float_accuracy"] - 0.01]
    if good:
        best = min(good, key=lambda r: r["complexity"])
        cx = best["complexity"]
        lines.append(f"- Cheapest MLP setting within 1 point of float accuracy ({100 * best['float_accuracy']:.2f}%, "
                     f"simulated accuracy averaged over runs): {best['setting']}, "
                     f"{100 * best['simulated_accuracy']:.2f}%, complexity {cx:.3g}.")
        lines.append(f"  - vs a quarter of the reference's 6-bit exact-rounding complexity "
                     f"({REFERENCE_EXACT6['complexity'] / 4:.3g}): {'met' if cx <= REFERENCE_EXACT6['complexity'] / 4 else 'not met'}; "
                     f"vs half of its best row within 1 point ({REFERENCE_BEST_WITHIN_1PT['complexity'] / 2:.3g}): "
                     f"{'met' if cx <= REFERENCE_BEST_WITHIN_1PT['complexity'] / 2 else 'not met'}.")
        t = best.get("seconds_per_encrypted_sample")
        if t is not None:
            own = exact6.get("seconds_per_encrypted_sample") if exact6 else None
            ratio = f"{own / t:.1f}x faster than this run's own 6-bit exact-rounding row ({own:.2f} s)" if own else ""
            lines.append(f"  - time per encrypted sample {t:.2f} s: {ratio}; the reference's 6-bit exact-rounding row "
                         f"took {REFERENCE_EXACT6['seconds_per_encrypted_sample']} s on its own machine "
                         f"(a quarter: {REFERENCE_EXACT6['seconds_per_encrypted_sample'] / 4:.2f} s).")
    lines += reference_targets(results, reference)
    lines += block_targets(results.get("compile", []))
    lines += core_targets(results)
    lines += classical_targets(results.get("classical", []))
    return lines + [""]


def sections_measured(results: dict[str, Any]) -> list[str]:
    """Each section's own run: the page gathers sections measured by different commands at different times."""
    runs = results.get("runs", {})
    lines = [f"- {section}: `{run.get('command', '?')}`, {str(run.get('started', '?'))[:16].replace('T', ' ')} to "
             f"{str(run.get('finished', '?'))[11:16]} UTC" for section, run in runs.items()]
    return ["Sections and the runs that measured them:", "", *lines, ""] if lines else []


#: a transformer block compiles in less than this many seconds
BLOCK_COMPILE_S = 120


def block_targets(rows: list[dict[str, Any]]) -> list[str]:
    """The transformer block's compile time at each setting the compile-cost section measured."""
    lines = []
    for row in rows:
        if not row["model"].startswith((BLOCK, BERT)):
            continue
        what = "A transformer block" if row["model"].startswith(BLOCK) else BERT
        where = f"- {what} compiles in under {BLOCK_COMPILE_S / 60:g} minutes, {row['setting']}"
        if "error" in row:
            lines.append(f"{where}: no circuit ({str(row['error']).split('. ')[0]}): not met.")
        else:
            verdict = "met" if row["compile_s"] < BLOCK_COMPILE_S else "not met"
            lines.append(f"{where}: {row['compile_s']:.3g} s ({row['pbs']:,} PBS): {verdict}.")
    return lines


#: the reference tool's trees compile to lookups of 5 to 8 bits
REFERENCE_TREE_LOOKUP_BITS = 8


def classical_row_name(r: dict[str, Any]) -> str:
    bits = f", n_bits {r['n_bits']}" if "n_bits" in r else ""
    return f"{r['dataset']} {r['model']} ({r['road']}{bits})"


def classical_error(r: dict[str, Any]) -> str:
    """A row's error cut to its first sentence (the whole text is in benchmarks.json)."""
    return str(r["error"]).split("; settings:")[0].split(". ")[0]


def classical_table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "error": classical_error(r)} if "error" in r else r for r in rows]


def classical_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per export that needed a note (another way to export), deduplicated over the n_bits rows."""
    notes = {(r["dataset"], r["model"], r["road"]): r["note"] for r in rows if r.get("note")}
    if not notes:
        return []
    return [f"- {d} {m} ({road}): {note.replace('.;', ';')}." for (d, m, road), note in notes.items()] + [""]


def classical_targets(rows: list[dict[str, Any]]) -> list[str]:
    """The classical-ML acceptance lines: float equals onnxruntime, simulation within a point of float at
    n_bits <= 6, encrypted equals simulated, tree lookups vs the reference's 8 bits."""
    if not rows:
        return []

    name = classical_row_name
    def verdict(misses: list[str], checked: int) -> str:
        return f"met ({checked} rows)." if not misses else f"not met on {len(misses)} of {checked}: {'; '.join(misses)}."

    exports = {(r["dataset"], r["model"], r["road"]): r for r in rows if "float_vs_ort" in r}
    float_misses = [f"{name(r)} {r['float_vs_ort']:.2g}"
                    + (f", labels {100 * r['label_agreement']:.1f}%" if r.get("label_agreement") not in (None, 1.0) else "")
                    for r in exports.values() if r["float_vs_ort"] > 1e-5 or r.get("label_agreement") not in (None, 1.0)]
    lines = ["- Classical ML, float NumpyModule equals onnxruntime (max abs diff of the scores <= 1e-5, labels "
             "equal): " + verdict(float_misses, len(exports))]
    failed = [f"{name(r)}: {classical_error(r)}" for r in rows if "error" in r]
    six = [r for r in rows if r.get("n_bits") == 6 and "simulated_score" in r]
    sim_misses = [f"{name(r)} {r['simulated_score']:.3f} vs float {r['float_score']:.3f}"
                  for r in six if not r["within_1pt"]]
    lines.append("- Classical ML, simulated within 1 point of float at n_bits 6: " + verdict(sim_misses, len(six)))
    fewest = {}
    for r in rows:
        if r.get("within_1pt"):
            key = (r["dataset"], r["model"], r["road"])
            fewest[key] = min(fewest.get(key, 99), r["n_bits"])
    if fewest:
        lines.append("  - fewest n_bits within 1 point (of 6, 5, 4): "
                     + "; ".join(f"{d} {m} ({road}) {b}" for (d, m, road), b in fewest.items()) + ".")
    if failed:
        lines.append(f"- Classical ML rows that failed ({len(failed)}): " + "; ".join(failed) + ".")
    executed = [r for r in rows if "encrypted_equals_simulated" in r]
    enc_misses = [name(r) for r in executed if not r["encrypted_equals_simulated"]]
    lines.append("- Classical ML, encrypted integers equal simulated ones: " + verdict(enc_misses, len(executed)))
    trees = [r for r in rows if "max_lookup_bits" in r and any(t in r["model"] for t in ("Tree", "Forest", "Boosting"))]
    if trees:
        wide = [f"{name(r)} {r['max_lookup_bits']}" for r in trees if r["max_lookup_bits"] > REFERENCE_TREE_LOOKUP_BITS]
        span = f"{min(r['max_lookup_bits'] for r in trees)} to {max(r['max_lookup_bits'] for r in trees)} bits"
        lines.append(f"- Classical ML, max lookup bits of the tree rows ({span}) vs the reference's trees "
                     f"(5-8 bits, at most {REFERENCE_TREE_LOOKUP_BITS}): " + verdict(wide, len(trees)))
    return lines


#: the reference tool's figures (``nox -s bench_reference``), read beside benchmarks.json
REFERENCE_JSON = "benchmarks-reference.json"
#: two measurements on the same machine and boot at most this far apart count as one run (ratios shown)
SAME_RUN_HOURS = 12
REFERENCE_COLUMNS = ["model", "setting", "tool", "float_accuracy", "quantized_accuracy", "simulated_accuracy", "pbs",
                     "max_bit_width", "complexity", "global_p_error", "compile_s", "keygen_s",
                     "seconds_per_encrypted_sample", "error"]
#: divided (the reference's figure over ours) in the ratio rows
RATIO_KEYS = ["pbs", "complexity", "compile_s", "keygen_s", "seconds_per_encrypted_sample"]


def _when(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp)


def not_same_run(results: dict[str, Any], reference: dict[str, Any]) -> str | None:
    """Why this page's FHE figures and the reference's may not be divided; None when they come from one run
    (same host, CPU, core count and boot, measured at most SAME_RUN_HOURS apart)."""
    run = results.get("runs", {}).get("fhe")
    if not run:
        return "this page's FHE figures carry no machine record (they were measured before such records were kept)"
    ours, theirs = run.get("machine", {}), reference.get("machine", {})
    differ = [k for k in ("host", "cpu", "cpus", "boot_id") if ours.get(k) != theirs.get(k)]
    if differ:
        return f"the two were measured on different machines or boots ({', '.join(differ)} differ)"
    # the gap between the two measuring windows (0 when they overlap)
    gap = max(_when(run["started"]), _when(reference["started"])) - min(_when(run["finished"]),
                                                                          _when(reference["finished"]))
    hours = max(gap.total_seconds(), 0) / 3600
    if hours > SAME_RUN_HOURS:
        return f"the two were measured {hours:.1f} hours apart (more than {SAME_RUN_HOURS})"
    return None


def reference_section(results: dict[str, Any], reference: dict[str, Any] | None) -> list[str]:
    """The reference tool's figures beside this page's FHE rows of the same model and setting."""
    lines = ["### Beside the reference tool, measured here", ""]
    if reference is None:
        return lines + ["Reference figures absent: run `nox -s bench_reference` (it writes "
                        f"`docs/{REFERENCE_JSON}`), then `python -m benchmarks --page` or any benchmark run.", ""]
    versions, where = reference.get("versions", {}), reference.get("machine", {})
    tool = f"concrete-ml {versions.get('concrete-ml', '?')}"
    why_not = not_same_run(results, reference)
    ours_by = {(r["model"], r["setting"]): r for r in results.get("fhe", [])}
    ours_run = results.get("runs", {}).get("fhe", {})
    # each model's inputs: the same (input ids equal), other, or unverified (this page's rows carry no id)
    ids = {r["model"]: r.get("input_id") for r in results.get("fhe", [])}
    theirs = {m: v.get("input_id") for m, v in reference.get("models", {}).items()}
    other_inputs = sorted(m for m in theirs if ids.get(m) and ids[m] != theirs[m])
    unverified = sorted(m for m in theirs if m in ids and not ids[m])
    rows: list[dict[str, Any]] = []
    for ref in reference["rows"]:
        ours = ours_by.get((ref["model"], ref["setting"]))
        label = {"model": ref["model"], "setting": ref["setting"]}
        rows.append({**label, "tool": "cml", **(ours or {"error": "not in this page's FHE rows"})})
        rows.append({**label, **ref, "tool": tool})
        if (ours and why_not is None and ref["model"] not in other_inputs + unverified
                and "error" not in ours and "error" not in ref):
            ratios = {k: ref[k] / ours[k] for k in RATIO_KEYS
                      if isinstance(ref.get(k), (int, float)) and isinstance(ours.get(k), (int, float)) and ours[k]}
            if ratios:
                rows.append({**label, "tool": f"{tool} / cml", **ratios})
    ran = (f"`nox -s bench_reference` ({reference.get('command', 'benchmarks/reference.py')}), "
           f"{reference.get('started')} to {reference.get('finished')} UTC on {where.get('cpu')} "
           f"({where.get('cpus')} CPUs, host {where.get('host')}, 1-minute load average "
           + " and ".join(f"{load[0]:.1f}" for load in (reference.get("loadavg_start"), reference.get("loadavg_end"))
                          if load)
           + f" at start and end): {tool}, concrete-python "
           f"{versions.get('concrete-python', '?')}, torch {versions.get('torch', '?')}, onnx {versions.get('onnx', '?')}")
    lines += [
        f"The reference tool in its own virtualenv, {ran}. It reads the ONNX files, calibration and test sets "
        "that this benchmark's FHE section runs on (written by `python -m benchmarks --write-inputs`), and "
        "compiles them with `compile_onnx_model(model, x_calib, n_bits=..., rounding_threshold_bits=...)` at "
        "its own defaults otherwise (an integer `rounding_threshold_bits` rounds exactly; its default error "
        "probability is far lower than cml's, see `global_p_error`, which costs it wider parameters). Its float accuracy "
        "is onnxruntime's on the same test set. Time per encrypted sample: the median of the first "
        f"{reference.get('samples')} test samples, each encrypted, run and decrypted on its own; empty above a "
        f"complexity of {reference.get('execute_limit', EXECUTE_LIMIT):.0e}, as in this benchmark. "
        f"Rows `{tool} / cml`: the reference's figure divided by this page's (above 1: cml is cheaper or faster).",
        "",
    ]
    if why_not is not None:
        lines += [f"No ratios: {why_not}. They are shown when `python -m benchmarks --only fhe` (or a whole run) "
                  f"and `nox -s bench_reference` ran on the same machine and boot at most {SAME_RUN_HOURS} hours "
                  f"apart; this page's FHE figures: {ours_run.get('started', 'no record')}.", ""]
    if other_inputs:
        lines += [f"Not the same inputs for {', '.join(other_inputs)}: the reference's input id (a hash of the "
                  "ONNX file and the sets) differs from this page's, so no ratios there.", ""]
    if unverified:
        lines += [f"Inputs not verified for {', '.join(unverified)}: this page's FHE rows carry no input id (a hash "
                  "of the ONNX file and the sets, recorded since the reference runs beside them).", ""]
    return lines + [_md_table(rows, REFERENCE_COLUMNS), ""]


def within_one_point(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "complexity" in r and r["simulated_accuracy"] >= r["float_accuracy"] - 0.01]


def reference_targets(results: dict[str, Any], reference: dict[str, Any] | None) -> list[str]:
    """Against the reference tool measured in the same run: at each of its settings, simulated accuracy at least
    its own; and on each model, the cheapest row within a point of float at most a tenth of its default's
    (n_bits 6, 6-bit exact rounding) complexity and time per encrypted sample."""
    if reference is None:
        return ["- Equal settings and a tenth of the reference's cost: not checked (no reference figures: "
                "`nox -s bench_reference`)."]
    why_not = not_same_run(results, reference)
    if why_not is not None:
        return [f"- Equal settings and a tenth of the reference's cost: not checked ({why_not})."]
    fhe = results.get("fhe", [])
    ours_by = {(r["model"], r["setting"]): r for r in fhe}
    lines = []
    for ref in reference["rows"]:
        ours = ours_by.get((ref["model"], ref["setting"]))
        label = f"- Equal settings, {ref['model']}, {ref['setting']}"
        if ours is None:
            lines.append(f"{label}: not measured by cml in this run.")
        elif "simulated_accuracy" in ours and "simulated_accuracy" in ref:
            met = ours["simulated_accuracy"] >= ref["simulated_accuracy"]
            lines.append(f"{label}: simulated accuracy {ours['simulated_accuracy']:.3f} against the reference's "
                         f"{ref['simulated_accuracy']:.3f}: {'met' if met else 'not met'}.")
        elif "simulated_accuracy" in ref:
            lines.append(f"{label}: cml refuses ({ours.get('error', 'no circuit')[:120]}) where the reference "
                         f"compiles: not met.")
        elif "simulated_accuracy" in ours:
            rounded = ("after rounding its lookups above 16 bits automatically, "
                       if ours.get("auto_rounding") or ours.get("max_lookup_bits", 0) > MAX_LOOKUP_BITS else "")
            lines.append(f"{label}: the reference refuses ({ref.get('error', '')[:80]}), cml compiles "
                         f"({rounded}simulated accuracy {ours['simulated_accuracy']:.3f}): met.")
        else:
            lines.append(f"{label}: neither compiles (cml: {ours.get('error', '')[:80]}; the reference: "
                         f"{ref.get('error', '')[:80]}).")
    for model in dict.fromkeys(r["model"] for r in reference["rows"]):
        base = next((r for r in reference["rows"] if r["model"] == model
                     and r["setting"] == "n_bits 6, 6-bit exact rounding" and "complexity" in r), None)
        good = within_one_point([r for r in fhe if r["model"] == model])
        label = f"- A tenth of the reference's cost, {model}"
        if base is None or not good:
            lines.append(f"{label}: not checked ({'no reference default row' if base is None else 'no cml row within 1 point of float'}).")
            continue
        best = min(good, key=lambda r: r["complexity"])
        ratio = best["complexity"] / base["complexity"]
        line = (f"{label}: {best['setting']} ({best['simulated_accuracy']:.3f}, float {best['float_accuracy']:.3f}), "
                f"complexity {best['complexity']:.3g} against {base['complexity']:.3g} ({ratio:.3f}x): "
                f"{'met' if ratio <= 0.1 else 'not met'}")
        t, t_ref = best.get("seconds_per_encrypted_sample"), base.get("seconds_per_encrypted_sample")
        if t and t_ref:
            line += f"; {t:.3g} s per encrypted sample against {t_ref:.3g} s ({t / t_ref:.3f}x): " + (
                "met" if t <= 0.1 * t_ref else "not met")
        else:
            line += "; time per encrypted sample not measured on both sides"
        lines.append(line + ".")
    return lines


def core_targets(results: dict[str, Any]) -> list[str]:
    lines = []
    for r in results.get("fhe", []):
        one, every = r.get("samples_per_s_1_worker", r.get("samples_per_s_1_core")), \
            r.get("samples_per_s_all_workers", r.get("samples_per_s_all_cores"))
        if one and every:
            busy = (f" (cores busy: {r['cores_busy_1_worker']:.2f} and {r['cores_busy_all_workers']:.2f} of "
                    f"{r['cores']})" if "cores_busy_1_worker" in r else "")
            lines.append(f"- Every core busy, {r['model']} ({r['setting']}): forward(batch of {r['throughput_batch']}, "
                         f"fhe=\"execute\") {one:.3g} samples/s with 1 worker, {every:.3g} with {r['cores']} "
                         f"({every / one:.2f}x){busy}.")
    return lines


def compile_section(results: dict[str, Any], baseline: dict[str, Any] | None) -> list[str]:
    rows = results.get("compile", [])
    run = results.get("runs", {}).get("compile", {})
    lines, _ = regressions(rows, baseline, run.get("machine", {}))
    return [
        "## Compile cost",
        "",
        "Quantization (the `setting` column, calibrated on the compile set) and compilation, each "
        "model in a fresh process of its own (`benchmarks/compile_cost.py`): `compile_s` the fastest of "
        "two compiles (one when the first takes more than two minutes), `peak_mb` the process's peak resident memory (`rss_before_compile_mb`: after loading and "
        "quantizing, concrete-python imported). `loadavg_start`: the machine's 1-minute load when the model's "
        "process started. A compile time or peak memory more than 10% above the baseline's fails "
        "`python -m benchmarks --only compile` (exit status 1).",
        "",
        _md_table(rows, ["model", "setting", "quantize_s", "compile_s", "peak_mb", "rss_before_compile_mb", "pbs",
                         "max_lookup_bits", "max_bit_width", "complexity", "loadavg_start", "error"]),
        "",
        *lines,
        "",
    ] if rows else []


def write(results: dict[str, Any], command: str, docs: Path = DOCS, reference: dict[str, Any] | None = None,
          baseline: dict[str, Any] | None = None) -> None:
    (docs / "benchmarks.json").write_text(json.dumps(results, indent=2))
    fhe_rows = results.get("fhe", [])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for row in fhe_rows:
            if "complexity" in row:
                marker = "o" if row["model"].startswith("MLP") else "s"
                ax.scatter(row["complexity"], 100 * row["simulated_accuracy"], marker=marker)
                ax.annotate(row["setting"].replace("rounding", "rnd"), (row["complexity"], 100 * row["simulated_accuracy"]),
                            fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("circuit complexity (concrete-python estimate)")
        ax.set_ylabel("simulated accuracy (%)")
        ax.set_title("digits: accuracy vs FHE cost (o MLP, s CNN)")
        fig.tight_layout()
        fig.savefig(docs / "benchmarks.png", dpi=120)
    except ImportError:
        pass
    env = results["environment"]
    text = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {env['date']}: {env['cpus']} CPUs ({env['machine']}), Python {env['python']}, "
        f"cml-core {env['cml-core']}, concrete-python {env['concrete-python']}, numpy {env['numpy']}, "
        f"onnxruntime {env['onnxruntime']}, torch {env['torch']}. Raw figures: `benchmarks.json`.",
        "",
        *sections_measured(results),
        "## Float path (milliseconds, one thread each)",
        "",
        "NumpyModule and onnxruntime (graph optimizations as shipped) timed in turns: medians of fifteen turns, and "
        "`cml_vs_onnxruntime` the median of the turns' ratios; the ONNX reference evaluator apart. The digits MLP and CNN and the ResNet-style network are held to 1.5x onnxruntime "
        "at batch 256; torchvision's resnet18, mobilenet_v3_small, efficientnet_b0, convnext_tiny and a ViT-tiny "
        "(`benchmarks/models.py`: plain-torch re-implementations, random weights, 224x224 images, exported by "
        "`torch.onnx.export(..., dynamo=False)` at its default opset) to 3x at batch 1 and 2.",
        "",
        _md_table(results.get("float", []), ["model", "batch", "cml_ms", "onnxruntime_ms", "reference_evaluator_ms",
                                     "cml_vs_onnxruntime", "target", "reference_vs_cml",
                                     "relative_error_vs_onnxruntime"]),
        "",
        "## Clear quantized path (fhe=\"disable\", n_bits 6, batch 256)",
        "",
        _md_table(results.get("quantized", []), ["model", "batch", "ms", "samples_per_s"]),
        "",
        "## FHE",
        "",
        "Time per encrypted sample: the median of the encrypted samples, each timed on its own. Simulated "
        "accuracy: the mean of three simulations under approximate rounding (it is randomized), one otherwise. "
        "Complexity and PBS count: concrete-python's circuit statistics. `max_lookup_bits` is the widest "
        "lookup before compiling: a \"no rounding\" row above 16 bits that has a circuit was compiled at the "
        "defaults, which round those lookups automatically (the fewest bits keeping top-1 agreement with the "
        "float model on the calibration data within a point). Rows \"then p_error\": the largest error "
        "probability per lookup keeping the tuning accuracy within a point (`choose_p_error`): such a circuit "
        "errs on some samples by design, so its encrypted integers need not equal one simulation's. Tuned rows "
        "(`choose_rounding`, `choose_p_error`) choose on data the model was not trained on where there is some: "
        f"the logistic regression and the mixed-activation MLP are trained on {models.FIT_SAMPLES} samples of "
        "the training split and tuned on the rest; the shipped MLP and the CNN (which every section runs) are "
        "trained on the whole split and tuned on it. Every model is calibrated and compiled on the whole "
        "training split, and scored on the test split.",
        "",
        "![accuracy vs complexity](benchmarks.png)",
        "",
        _md_table(fhe_rows, ["model", "setting", "float_accuracy", "quantized_accuracy", "simulated_accuracy",
                             "encrypted_accuracy", "pbs", "max_bit_width", "max_lookup_bits", "complexity",
                             "compile_s", "keygen_s", "seconds_per_encrypted_sample", "encrypted_equals_simulated",
                             "error"]),
        "",
        *reference_section(results, reference),
        "## Quantization-aware training (Brevitas) against post-training quantization",
        "",
        "Digits, weights and activations at the same bits. QAT: trained with Brevitas, exported (QCDQ and QONNX), "
        "compiled by `compile_brevitas_model` without rounding; reference accuracy is the Brevitas model's own "
        "(torch forward). PTQ: the float twin (same layers, same training) quantized with `n_bits` equal to the bits; "
        "reference accuracy is the float model's.",
        "",
        _md_table(results.get("qat", []), [
            "model", "bits", "method", "reference_accuracy", "quantized_accuracy", "simulated_accuracy",
            "max_lookup_bits", "pbs", "complexity", "compile_s", "seconds_per_encrypted_sample",
            "encrypted_equals_simulated", "error"]),
        "",
        "## Deployment (client and server through `cml_core.deploy`)",
        "",
        "One client's keys, the test samples encrypted one by one (median), the same batch run by a server "
        "with 1 and with 2 workers. Sizes are the bytes that cross the network: evaluation keys once per client, "
        "ciphertexts and results per sample.",
        "",
        _md_table(results.get("deployment", []), [
            "model", "setting", "keygen_s", "evaluation_keys_mb", "encrypt_ms_per_sample", "ciphertext_kb_per_sample",
            "result_kb_per_sample", "decrypt_ms_per_sample", "server_load_keys_s", "server_s_per_sample_1_worker",
            "throughput_1_worker_samples_per_s", "throughput_2_worker_samples_per_s", "server_zip_kb",
            "client_zip_kb", "equals_simulation"]),
        "",
    ]
    text += [
        "## Classical ML (scikit-learn models through skl2onnx and Hummingbird gemm)",
        "",
        "scikit-learn's bundled breast-cancer and digits data (diabetes for the regression tree, scored by R^2), "
        "split 70/30 with `random_state=0`, features standardized by a `StandardScaler` fitted on the training "
        "split. Each fitted model is exported with skl2onnx (`export_sklearn`, `ai.onnx.ml` ops) and with "
        "Hummingbird's `gemm` tree implementation (only the scores output kept: the client derives the label "
        "from the decrypted scores). `float_vs_ort`: max absolute difference of the float `NumpyModule`'s "
        "scores from onnxruntime's on the test split (`label_agreement`: of their label outputs, where the "
        "export has one). Scores are the accuracy of the argmax of the probabilities or decision values "
        "(R^2 for the regression) on the whole test split: float, clear quantized, FHE simulation. "
        "Quantization: `n_bits` 6, then 5 and 4 while the previous setting stays within 1 point of float "
        "(each setting one row), `per_feature_inputs=\"auto\"`, rounding chosen by `choose_rounding` "
        f"only where a lookup exceeds {MAX_LOOKUP_BITS} bits (`rounding` column). Compiled on the training split. "
        f"Encrypted: the first test samples, each timed on its own (median), for circuits of complexity up to "
        f"{CLASSICAL_EXECUTE_LIMIT:.0e} (empty cells above).",
        "",
        _md_table(classical_table_rows(results.get("classical", [])), [
            "dataset", "model", "road", "n_bits", "float_vs_ort", "label_agreement", "metric", "float_score",
            "quantized_score", "simulated_score", "within_1pt", "rounding", "pbs", "max_bit_width",
            "max_lookup_bits", "complexity", "compile_s", "keygen_s", "seconds_per_encrypted_sample",
            "encrypted_equals_simulated", "error"]),
        "",
        *classical_notes(results.get("classical", [])),
    ]
    text += compile_section(results, baseline)
    text += targets(results, reference)
    notes = Path(__file__).with_name("NOTES.md")
    (docs / "benchmarks.md").write_text("\n".join(text) + ("\n" + notes.read_text() if notes.exists() else ""))


SECTIONS = ["float", "quantized", "fhe", "deployment", "qat", "classical", "compile"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer settings and a smaller ResNet")
    parser.add_argument("--samples", type=int, default=3, help="encrypted samples per FHE setting")
    parser.add_argument("--only", choices=SECTIONS, action="append")
    parser.add_argument("--page", action="store_true",
                        help="measure nothing: rewrite benchmarks.md from benchmarks.json and the reference's JSON")
    parser.add_argument("--docs", type=Path, default=DOCS,
                        help=f"folder of benchmarks.json/.md/.png, read and written (default {DOCS})")
    parser.add_argument("--reference", type=Path,
                        help=f"the reference tool's figures (default: {REFERENCE_JSON} in the --docs folder)")
    parser.add_argument("--model", action="append", metavar="NAME",
                        help="with the fhe section: measure only this model (repeatable), keeping the other models' "
                             "rows of benchmarks.json (measured on this machine and boot)")
    parser.add_argument("--compile-baseline", action="store_true",
                        help="with the compile section: record its figures as the baseline later runs are checked "
                             "against (a regression beyond 10%% makes the benchmark exit with status 1)")
    parser.add_argument("--write-inputs", type=Path, metavar="DIR",
                        help="write the FHE section's models (ONNX) and sets (.npz) for benchmarks/reference.py, "
                             "and nothing else")
    args = parser.parse_args()
    if args.write_inputs:
        write_inputs(args.write_inputs)
        return
    path = args.docs / "benchmarks.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    reference_path = args.reference or args.docs / REFERENCE_JSON
    if args.page:  # the page keeps the command of the run that measured last
        previous = re.search(r"Produced by `([^`]+)`", (args.docs / "benchmarks.md").read_text()
                             if (args.docs / "benchmarks.md").exists() else "")
        command = results.get("command") or (previous.group(1) if previous else "python -m benchmarks")
    else:
        command = ("python -m benchmarks" + (" --quick" if args.quick else "")
                   + "".join(f" --only {s}" for s in args.only or [])
                   + "".join(f' --model "{m}"' for m in args.model or []))
        results["environment"] = environment()
        results["command"] = command

        def classical(samples: int, quick: bool) -> list[dict[str, Any]]:
            from .classical import classical_path

            return classical_path(samples, quick)

        def deployment(samples: int, quick: bool) -> list[dict[str, Any]]:
            from .deployment import deployment_path

            return deployment_path(max(2, samples + 1))

        def qat(samples: int, quick: bool) -> list[dict[str, Any]]:
            from .qat import qat_path

            return qat_path(samples)

        def compile_cost(samples: int, quick: bool) -> list[dict[str, Any]]:
            return compile_path()

        runners: dict[str, Callable[[int, bool], list[dict[str, Any]]]] = {
            "float": lambda samples, quick: float_path(quick), "quantized": lambda samples, quick: quantized_path(),
            "fhe": fhe_path, "deployment": deployment, "qat": qat, "classical": classical, "compile": compile_cost}
        if args.model:
            runners["fhe"] = lambda samples, quick: merged_fhe_rows(results, fhe_path(samples, quick, args.model),
                                                                    args.model)
        for section in SECTIONS:
            if section in (args.only or SECTIONS):
                started = now()
                earlier = results.get("runs", {}).get(section, {})
                rows = runners[section](args.samples, args.quick)
                if section == "fhe" and args.model:  # a part of the section: its run spans both parts
                    started, command = earlier.get("started", started), earlier.get("command", "") + " + " + command
                results[section] = rows
                # where and when each section was measured: figures of another tool are divided only by
                # figures of the same machine and run
                results.setdefault("runs", {})[section] = {"machine": machine(), "started": started,
                                                           "finished": now(), "command": command}
    baseline_path = args.docs / COMPILE_BASELINE
    if args.compile_baseline and "compile" in (args.only or SECTIONS) and not args.page:
        baseline_path.write_text(json.dumps(baseline_of(results["compile"], machine(), now()), indent=2) + "\n")
        print(f"wrote {baseline_path}")
    reference = json.loads(reference_path.read_text()) if reference_path.exists() else None
    baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else None
    write(results, command, args.docs, reference, baseline)
    print(f"wrote {args.docs / 'benchmarks.md'}")
    compile_run = results.get("runs", {}).get("compile", {})
    _, found = regressions(results.get("compile", []), baseline, compile_run.get("machine", machine()))
    if found and "compile" in (args.only or SECTIONS) and not args.page:
        raise SystemExit("compile cost regressed beyond 10% of the baseline: " + "; ".join(found))


if __name__ == "__main__":
    main()
