"""Rounding chosen when a lookup is too wide to compile: the default settings must give a circuit.

Without rounding, an ``n``-bit model's accumulators feed lookups of ``2n + log2(fan-in)`` bits, past the 16
bits FHE supports for most layers at ``n_bits=8``. When no rounding was asked for and some lookup is wider
than that, each such lookup keeps its most significant bits only: the fewest (from 16 down) that keep the
quantized model's agreement with the float model on the calibration data within ``AUTO_ROUNDING_DROP`` of
its agreement unrounded. The rounding is exact, so the clear quantized model, the simulation and the
encrypted circuit give the same integers; lookups that already fit are left as they are.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..errors import RoundingWarning
from .context import MAX_LOOKUP_BITS

if TYPE_CHECKING:
    from .module import QuantizedModule

#: the agreement with the float model (top-1 over the calibration samples, or R^2 for a single score)
#: that automatic rounding may give up
AUTO_ROUNDING_DROP = 0.01
#: automatic rounding keeps at least this many bits before a lookup
AUTO_ROUNDING_MIN_BITS = 2
#: rounding some lookups may widen others downstream: each pass rounds those found too wide after the last
AUTO_ROUNDING_PASSES = 6


@dataclass
class AutoRounding:
    """What automatic rounding chose: bits per rounded lookup, and the agreement it measured."""

    bits: dict[str, int]
    metric: str  # "top-1 agreement" or "R^2"
    agreement: float  # of the rounded model with the float model, on the calibration data
    unrounded_agreement: float
    target: float
    samples: int

    def __str__(self) -> str:
        widths = sorted(set(self.bits.values()))
        return (f"{len(self.bits)} lookup(s) wider than {MAX_LOOKUP_BITS} bits rounded to "
                f"{'/'.join(map(str, widths))} bits (exact): {self.metric} with the float model on {self.samples} "
                f"calibration samples {self.agreement:.4f}, unrounded {self.unrounded_agreement:.4f} (target "
                f"{self.target:.4f})")


def too_wide_lookups(qmodule: QuantizedModule) -> list[str]:
    """The single-input lookups (keys of ``qmodule.sites``) needing more than 16 bits (in concrete-python's count,
    ``LookupSite.encrypted_bits``)."""
    return [key for key, site in qmodule.sites.items()
            if site.roundable and site.lookup_bits is not None and site.encrypted_bits > MAX_LOOKUP_BITS]


def rounding_requested(qmodule: QuantizedModule) -> bool:
    """Whether the user set any rounding (then it is theirs to change)."""
    config = qmodule.config
    return config.rounding_bits is not None or any(v is not None for v in config.rounding_per_lookup.values())


def scored_output(outputs: Any) -> int:
    """Which model output to score: the first one holding a row of scores per sample (samples, classes); a
    classifier exported by skl2onnx puts its 1-D label first. Without such an output, the first."""
    values = outputs if isinstance(outputs, tuple | list) else (outputs,)
    for index, value in enumerate(values):
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and arr.ndim >= 2 and arr.shape[-1] > 1:
            return index
    return 0


def _agreement(reference: NDArray[Any]) -> tuple[str, Any]:
    """The metric comparing an output with the float model's ``reference`` (samples first): top-1 agreement of
    rows of scores, equality of labels (integers), or R^2 of a single score."""
    if reference.dtype.kind in "iub":
        labels = reference.ravel()

        def equal(out: NDArray[Any]) -> float:
            return float(np.mean(np.asarray(out).ravel() == labels))

        return "label agreement", equal
    if reference.ndim >= 2 and reference.shape[-1] > 1:
        labels = reference.reshape(-1, reference.shape[-1]).argmax(-1)

        def top1(out: NDArray[Any]) -> float:
            return float(np.mean(np.asarray(out).reshape(labels.shape[0], -1).argmax(-1) == labels))

        return "top-1 agreement", top1
    flat = reference.astype(np.float64).ravel()
    spread = float(np.sum((flat - flat.mean()) ** 2))

    def r2(out: NDArray[Any]) -> float:
        error = float(np.sum((np.asarray(out, np.float64).ravel() - flat) ** 2))
        return 1.0 - error / spread if spread > 0 else float(error == 0)

    return "R^2", r2


def choose_automatic_rounding(qmodule: QuantizedModule, inputs: tuple[Any, ...]) -> AutoRounding | None:
    """Round every lookup wider than 16 bits to the fewest bits that keep agreement with the float model on
    ``inputs`` within ``AUTO_ROUNDING_DROP``; applies it to ``qmodule`` (``set_rounding``), records it in
    ``qmodule.auto_rounding`` and warns with what was chosen. Returns None when nothing is too wide or the
    user set a rounding. A lookup that stays too wide (a multi-input one cannot be rounded) is left for the
    bit-width check to name."""
    wide = too_wide_lookups(qmodule)
    if not wide or rounding_requested(qmodule):
        return None
    float_out = qmodule.numpy_module(*inputs)
    scored = scored_output(float_out)
    reference = np.asarray(float_out[scored] if isinstance(float_out, tuple) else float_out)
    metric, score = _agreement(reference)

    def first_output() -> NDArray[Any]:
        out = qmodule(*inputs)
        return np.asarray(out[scored] if isinstance(out, tuple) else out)

    unrounded = score(first_output())
    target = unrounded - AUTO_ROUNDING_DROP
    chosen: dict[str, int] = {}
    tried: dict[int, float] = {}

    def attempt(bits: int) -> float:
        qmodule.set_rounding({**chosen, **dict.fromkeys(wide, bits)}, "exact")
        tried[bits] = score(first_output())
        return tried[bits]

    for _ in range(AUTO_ROUNDING_PASSES):
        low, high = AUTO_ROUNDING_MIN_BITS, MAX_LOOKUP_BITS
        if attempt(high) >= target:
            while low < high:  # the fewest bits reaching the target (agreement grows with the bits kept)
                middle = (low + high) // 2
                if attempt(middle) >= target:
                    high = middle
                else:
                    low = middle + 1
        chosen.update(dict.fromkeys(wide, high))
        qmodule.set_rounding(dict(chosen), "exact")
        wide = [key for key in too_wide_lookups(qmodule) if key not in chosen]
        if not wide:
            break
    choice = AutoRounding(chosen, metric, score(first_output()), unrounded, target, int(reference.shape[0]))
    qmodule.auto_rounding = choice
    warnings.warn(RoundingWarning(f"rounding chosen so that the model compiles: {choice}; set "
                                  "rounding_threshold_bits to choose it yourself"), stacklevel=3)
    return choice
