"""Compile cost: seconds and peak memory of quantizing and compiling, checked against a recorded baseline.

    python -m benchmarks --only compile                       measure, compare with the baseline
    python -m benchmarks --only compile --compile-baseline    measure and record the figures as the baseline

Each model is measured in a fresh Python process of its own (``python -m benchmarks.compile_cost FILE``), so
that its peak resident memory is its own: the digits CNN, a CIFAR-shaped CNN (3x32x32 input, three conv
blocks, random weights), one transformer encoder block (BERT-tiny's width: 128 features, 2 heads, MLP 512,
8 tokens, random weights; at n_bits 6 with 6-bit rounding, the reference's default, and at n_bits 4 with 4-bit
rounding) and a whole BERT of BERT-tiny's shape exported from transformers (random weights, its attention
mask a model input). Quantization and compilation are timed apart (concrete-python imported first); the
compile is repeated and its fastest run kept (a busy machine slows a run, it never speeds one up). A figure more than
``REGRESSION`` above the baseline's, measured on the same kind of machine, fails the check: the benchmark exits
with status 1 and names it.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: a compile time or peak memory more than this fraction above the baseline's is a regression
REGRESSION = 0.10
BASELINE = "benchmarks-compile-baseline.json"
#: compiles per model (the fastest is reported)
REPEATS = 2
#: a compile longer than this many seconds is not repeated: its run-to-run spread is small beside it, and a
#: second one would double a model's time within TIMEOUT (BERT-tiny's shape: about 15 minutes each)
REPEAT_UNDER_S = 120
#: seconds a model's process may take (quantization and every compile)
TIMEOUT = 1200
#: quantization setting of the models: the reference tool's default (n_bits 6, 6-bit exact rounding), unless a
#: case names its own
N_BITS, ROUNDING = 6, 6


def _export(net: Any, x: np.ndarray) -> bytes:
    import torch

    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net.eval(), (torch.tensor(x[:1]),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return buffer.getvalue()


def cifar_cnn() -> tuple[bytes, np.ndarray]:
    """Three blocks of Conv 3x3 - ReLU - AvgPool 2 (3->8->16->32 channels) then a Gemm, on 3x32x32 inputs;
    random weights, 100 calibration images of standard normal pixels."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for cin, cout in ((3, 8), (8, 16), (16, 32)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)]
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    x = np.random.default_rng(0).normal(size=(100, 3, 32, 32)).astype(np.float32)
    return _export(net, x), x


def transformer_block() -> tuple[bytes, np.ndarray]:
    """One pre-norm encoder block at BERT-tiny's width (LayerNorm, 2-head self-attention, residual, LayerNorm,
    Linear 128->512, GELU, Linear 512->128, residual) on 8 tokens; random weights, 100 calibration sequences
    of standard normal embeddings."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int = 128, heads: int = 2, mlp: int = 512) -> None:
            super().__init__()
            self.heads = heads
            self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

        def forward(self, x):
            n, t, d = x.shape
            q, k, v = self.qkv(self.ln_1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
            x = x + self.out((attention @ v).transpose(1, 2).reshape(n, t, d))
            return x + self.mlp(self.ln_2(x))

    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(100, 8, 128)).astype(np.float32)
    return _export(Block(), x), x


def bert_tiny() -> tuple[bytes, tuple[np.ndarray, ...]]:
    """BERT-tiny's shape (2 layers, width 128, 2 heads, MLP 512) from transformers, with a classification head
    of 10 labels, exported by torch's dynamo exporter at opset 18; random weights, 64 calibration sequences of
    8 random token ids and their attention mask (a model input: encrypted), one of them padded."""
    import warnings

    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=512, max_position_embeddings=64, num_labels=10)
    model = transformers.BertForSequenceClassification(config).eval()
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(0, 100, (64, 8)), np.ones((64, 8), np.int64)
    mask[0, 4:] = 0
    with tempfile.TemporaryDirectory(prefix="cml-compile-bench-") as folder, warnings.catch_warnings(), \
            torch.no_grad():
        warnings.simplefilter("ignore")
        path = Path(folder) / "bert.onnx"
        torch.onnx.export(model, (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"], dynamo=True,
                          opset_version=18, external_data=False, verbose=False,
                          dynamic_axes={n: {0: "batch"} for n in ("input_ids", "attention_mask", "logits")})
        return path.read_bytes(), (ids, mask)


def digits_cnn() -> tuple[bytes, np.ndarray]:
    from . import models

    return models.cnn(), models.digits()["x_train"].reshape(-1, 1, 8, 8)


BLOCK = "Transformer block (width 128, 2 heads, 8 tokens)"
BERT = "BERT-tiny's shape from transformers (2 layers, width 128, 8 tokens, encrypted attention mask)"
#: name -> (model and calibration data, n_bits, rounding bits)
CASES = {"CNN digits": (digits_cnn, N_BITS, ROUNDING), "CIFAR CNN 3x32x32": (cifar_cnn, N_BITS, ROUNDING),
         BLOCK: (transformer_block, N_BITS, ROUNDING),
         # a second setting: at 4 bits every lookup of the block is at most 4-5 bits wide
         f"{BLOCK}, n_bits 4": (transformer_block, 4, 4),
         BERT: (bert_tiny, N_BITS, ROUNDING)}


def _rss_mb() -> float:
    """This process's resident memory now (Linux), in MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def measure_one(model_path: Path, data_path: Path, repeats: int, n_bits: int = N_BITS,
                rounding: int = ROUNDING) -> dict[str, Any]:
    """In this (fresh) process: load, quantize and compile ``repeats`` times; the figures as a dict."""
    from cml_core.fhe import circuit_summary
    from cml_core.fhe.concrete_python import load_concrete

    from cml_core import load_model

    load_concrete()  # imported before the clock starts: its import is not the compile's
    with np.load(data_path) as saved:  # one array per model input
        x = tuple(saved[f"arr_{i}"] for i in range(len(saved.files)))
    x = x[0] if len(x) == 1 else x
    row: dict[str, Any] = {"rss_start_mb": _rss_mb()}
    start = time.perf_counter()
    module = load_model(model_path.read_bytes())
    qmodule = module.quantize(x, n_bits=n_bits, rounding_threshold_bits=rounding)
    row["quantize_s"] = time.perf_counter() - start
    row["max_lookup_bits"] = qmodule.bitwidth_report().max_lookup_bits
    row["rss_before_compile_mb"] = _rss_mb()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        qmodule.compile(x)
        seconds.append(time.perf_counter() - start)
        if seconds[-1] > REPEAT_UNDER_S:
            break
    row["compile_s"] = min(seconds)
    row["compile_s_runs"] = seconds
    row.update(circuit_summary(qmodule.fhe_circuit))
    # ru_maxrss: the process's peak resident set, in KiB on Linux
    row["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def compile_path(repeats: int = REPEATS) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cml-compile-bench-") as folder:
        for name, (build, n_bits, rounding) in CASES.items():
            model_bytes, x = build()
            model_path, data_path = Path(folder) / "model.onnx", Path(folder) / "x.npz"
            model_path.write_bytes(model_bytes)
            np.savez(data_path, *(x if isinstance(x, tuple) else (x,)))
            row: dict[str, Any] = {"model": name, "setting": f"n_bits {n_bits}, {rounding}-bit exact rounding",
                                   "loadavg_start": os.getloadavg()[0]}
            try:
                done = subprocess.run([sys.executable, "-m", "benchmarks.compile_cost", str(model_path),
                                       str(data_path), str(repeats), str(n_bits), str(rounding)],
                                      capture_output=True, text=True, timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                row["error"] = f"did not finish within {TIMEOUT} s"
                row["loadavg_end"] = os.getloadavg()[0]
                rows.append(row)
                print(row, flush=True)
                continue
            if done.returncode:
                row["error"] = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:400]
            else:
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            row["loadavg_end"] = os.getloadavg()[0]
            rows.append(row)
            print(row, flush=True)
    return rows


def regressions(rows: list[dict[str, Any]], baseline: dict[str, Any] | None,
                machine: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The page's lines on the check, and the regressions found (empty: the check passes)."""
    if baseline is None:
        return [f"- Compile cost: no baseline (`docs/{BASELINE}`); record one with "
                "`python -m benchmarks --only compile --compile-baseline`."], []
    theirs = baseline.get("machine", {})
    if any(theirs.get(k) != machine.get(k) for k in ("cpu", "cpus")):
        return [f"- Compile cost: the baseline was measured on another kind of machine ({theirs.get('cpu')}, "
                f"{theirs.get('cpus')} CPUs): not compared."], []
    lines, found = [], []
    for row in rows:
        base = baseline.get("rows", {}).get(row["model"])
        if base is None:
            lines.append(f"- Compile cost, {row['model']}: not in the baseline.")
            continue
        if "error" in base:
            lines.append(f"- Compile cost, {row['model']}: "
                         + ("no circuit at this setting, as in the baseline." if "error" in row else
                            "compiles now; the baseline did not (record a new one)."))
            continue
        if "error" in row:
            found.append(f"{row['model']}: failed ({row['error']})")
            lines.append(f"- Compile cost, {row['model']}: failed, the baseline compiled: regression.")
            continue
        for key, unit in (("compile_s", "s"), ("peak_mb", "MiB")):
            limit = base[key] * (1 + REGRESSION)
            verdict = "met" if row[key] <= limit else "regression"
            lines.append(f"- Compile cost, {row['model']}, {key}: {row[key]:.3g} {unit} against the baseline's "
                         f"{base[key]:.3g} {unit} (at most +{100 * REGRESSION:.0f}%: {limit:.3g}): {verdict}.")
            if verdict != "met":
                found.append(f"{row['model']} {key} {row[key]:.3g} > {limit:.3g}")
    return [f"Baseline: `docs/{BASELINE}`, recorded {baseline.get('recorded')}.", "", *lines], found


def baseline_of(rows: list[dict[str, Any]], machine: dict[str, Any], recorded: str) -> dict[str, Any]:
    keep = ("compile_s", "peak_mb", "quantize_s", "pbs", "complexity", "error")
    return {"recorded": recorded, "machine": machine,
            "rows": {r["model"]: {k: r[k] for k in keep if k in r} for r in rows}}


if __name__ == "__main__":
    print(json.dumps(measure_one(Path(sys.argv[1]), Path(sys.argv[2]), *(int(a) for a in sys.argv[3:6]))))
    sys.stdout.flush()
    # once concrete's runtime has run, the interpreter's own exit may report 0 whatever the status
    os._exit(0)
