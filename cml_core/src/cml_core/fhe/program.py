"""What runs a compiled integer program: the circuit compiled in this process, or one loaded from disk.

``run_circuit`` talks to a ``Program`` only: the input integers it takes, the output shapes it
gives, and one sample at a time simulated or encrypted-run-decrypted.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .concrete_python import enable_runtime


@dataclass(frozen=True)
class IntegerSpec:
    """An encrypted input or output of a circuit: per-sample shape and the integers it holds."""

    sample_shape: tuple[int, ...]
    low: int
    high: int
    bit_width: int
    is_signed: bool

    def as_json(self) -> dict[str, Any]:
        return {"sample_shape": list(self.sample_shape), "low": self.low, "high": self.high,
                "bit_width": self.bit_width, "is_signed": self.is_signed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IntegerSpec:
        return cls(tuple(int(d) for d in data["sample_shape"]), int(data["low"]), int(data["high"]),
                   int(data["bit_width"]), bool(data["is_signed"]))


def _spec_of(node: Any) -> IntegerSpec:
    dtype = node.output.dtype
    return IntegerSpec(tuple(int(d) for d in node.output.shape[1:]), int(dtype.min()), int(dtype.max()),
                       int(dtype.bit_width), bool(dtype.is_signed))


class Program:
    """A compiled program: ``inputs``/``outputs`` describe its integers, one call runs one sample."""

    inputs: list[IntegerSpec]
    outputs: list[IntegerSpec]
    verbose: bool = False

    def prepare(self, mode: str) -> None:
        """Build what ``mode`` ("simulate" or "execute") needs (servers, keys)."""
        raise NotImplementedError

    def simulate(self, *args: Any) -> Any:
        raise NotImplementedError

    def encrypt(self, *args: Any) -> Any:
        """One sample's inputs encrypted with this process's own keys."""
        raise NotImplementedError

    def run_encrypted(self, encrypted: Any) -> Any:
        """The circuit evaluated on encrypted inputs (safe to call from several threads at once)."""
        raise NotImplementedError

    def decrypt(self, result: Any) -> Any:
        """The clear outputs of an evaluation."""
        raise NotImplementedError

    def execute(self, *args: Any) -> Any:
        """Encrypt, run and decrypt one sample with this process's own keys."""
        return self.decrypt(self.run_encrypted(self.encrypt(*args)))


class CircuitProgram(Program):
    """A concrete-python ``Circuit`` compiled in this process; keys are generated on first execution."""

    def __init__(self, circuit: Any, verbose: bool = False) -> None:
        self.circuit = circuit
        self.verbose = verbose
        self.inputs = [_spec_of(node) for node in circuit.graph.ordered_inputs()]
        self.outputs = [_spec_of(node) for node in circuit.graph.ordered_outputs()]
        self._keys_ready = False

    def prepare(self, mode: str) -> None:
        enable_runtime(self.circuit, mode)
        if mode == "simulate":
            return
        if not self._keys_ready:
            start = time.perf_counter()
            if self.verbose:
                print("generating keys...", file=sys.stderr, flush=True)
            self.circuit.keygen(force=False)
            self._keys_ready = True
            if self.verbose:
                print(f"keys ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    def simulate(self, *args: Any) -> Any:
        return self.circuit.simulate(*args)

    def encrypt(self, *args: Any) -> Any:
        return self.circuit.encrypt(*args)

    def run_encrypted(self, encrypted: Any) -> Any:
        return self.circuit.run(encrypted)

    def decrypt(self, result: Any) -> Any:
        return self.circuit.decrypt(result)


def empty_outputs(program: Program) -> tuple[Any, ...]:
    return tuple(np.zeros((0, *spec.sample_shape), dtype=np.int64) for spec in program.outputs)
