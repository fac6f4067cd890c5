"""What identifies a benchmark run and its inputs, shared by ``python -m benchmarks`` and ``benchmarks/reference.py``
(which runs in the reference tool's own virtualenv and loads this file by path): standard library and NumPy only."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np


def input_id(model_bytes: bytes, x_calib: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> str:
    """A hash of a model's ONNX bytes and its calibration and test sets."""
    digest = hashlib.sha256(model_bytes)
    for array in (x_calib, x_test, y_test):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def machine() -> dict[str, Any]:
    """What identifies this machine and boot: host, CPU model, core count, boot id."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        boot_id: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    return {"host": platform.node(), "cpu": cpu, "cpus": os.cpu_count(), "boot_id": boot_id,
            "system": platform.platform(), "python": platform.python_version()}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
