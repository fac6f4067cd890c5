"""Deployment figures: key, ciphertext and result sizes, client and server times, throughput.

Run by ``python -m benchmarks --only deployment``. Each model is compiled, saved, and served by
``cml_core.deploy.Server`` in this process; one client generates keys, encrypts the test samples
one by one and decrypts the results. Throughput: the same batch run by a server with 1 and with 2
workers (samples of one request run in parallel).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cml_core.deploy import Client, Server

from cml_core import load_model

from . import models

# exact rounding: the encrypted results must equal the simulation (approximate rounding is randomized)
SETTING = ("inputs 5, ops 6, weights 6 bits, 5-bit exact rounding",
           {"model_inputs": 5, "op_inputs": 6, "op_weights": 6}, {"n_bits": 5, "method": "exact"})


def _timed(function: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def deployment_path(samples: int = 4) -> list[dict[str, Any]]:
    data = models.digits()
    rows = []
    cases = [("MLP 64-32-32-10", models.mlp(), lambda a: a),
             ("CNN digits", models.cnn(), lambda a: a.reshape(-1, 1, 8, 8))]
    name, n_bits, rounding = SETTING
    for model_name, model_bytes, shape in cases:
        x_train, x_test = shape(data["x_train"]), shape(data["x_test"])[:samples]
        qmodule = load_model(model_bytes).quantize(x_train, n_bits=n_bits, rounding_threshold_bits=rounding)
        qmodule.compile(x_train)
        row: dict[str, Any] = {"model": model_name, "setting": name, "samples": samples}
        with tempfile.TemporaryDirectory(prefix="cml-bench-") as tmp:
            folder = qmodule.save(Path(tmp) / "deploy")
            row["server_zip_kb"] = (folder / "server.zip").stat().st_size / 1e3
            row["client_zip_kb"] = (folder / "client.zip").stat().st_size / 1e3
            client = Client(folder, keys=Path(tmp) / "keys")
            _, row["keygen_s"] = _timed(client.generate_keys)
            evk = client.evaluation_keys()
            row["evaluation_keys_mb"] = len(evk) / 1e6
            parts, seconds = [], []
            for i in range(samples):
                ct, t = _timed(client.encrypt, x_test[i : i + 1])
                parts.append(ct)
                seconds.append(t)
            row["encrypt_ms_per_sample"] = 1e3 * statistics.median(seconds)
            row["ciphertext_kb_per_sample"] = statistics.median(len(p) for p in parts) / 1e3
            batch = client.encrypt(x_test)
            for workers in (1, 2):
                server = Server(folder, workers=workers)
                keys, row["server_load_keys_s"] = _timed(server.load_keys, evk)
                out, t = _timed(server.run, batch, keys)
                row[f"server_s_per_sample_{workers}_worker"] = t / samples
                row[f"throughput_{workers}_worker_samples_per_s"] = samples / t
            row["result_kb_per_sample"] = len(out) / samples / 1e3
            y, t = _timed(client.decrypt, out)
            row["decrypt_ms_per_sample"] = 1e3 * t / samples
            row["equals_simulation"] = bool(np.array_equal(y, qmodule.forward(x_test, fhe="simulate")))
        rows.append(row)
        print(row, flush=True)
    return rows
