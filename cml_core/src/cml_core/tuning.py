"""Choosing the rounding before each lookup: the cheapest setting that keeps a score target."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import BitWidthError, CmlError, CompileError, InputError, QuantizationError
from .fhe import circuit_summary, compile_quantized_module, run_circuit
from .quantization.auto_rounding import scored_output
from .quantization.module import is_exact_rounding

if TYPE_CHECKING:
    from .quantization.module import QuantizedModule


@dataclass
class RoundingTrial:
    """One rounding setting tried by ``choose_rounding``; ``error`` says why it did not compile
    (its score is then NaN and its complexity infinite)."""

    bits: dict[str, int | None]
    score: float
    complexity: float
    pbs: int
    error: str | None = None


@dataclass
class RoundingChoice:
    """What ``choose_rounding`` picked, the score it had to reach, and every setting it tried."""

    bits: dict[str, int | None]
    score: float
    target: float
    reference_score: float
    complexity: float
    trials: list[RoundingTrial] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"chosen {self.bits}: score {self.score:.4f} (target {self.target:.4f}, float "
                 f"{self.reference_score:.4f}), complexity {self.complexity:.3g}"]
        lines += [f"  tried {t.bits}: " + (f"does not compile ({t.error})" if t.error else
                                           f"score {t.score:.4f}, complexity {t.complexity:.3g}, {t.pbs} PBS")
                  for t in self.trials]
        return "\n".join(lines)


def choose_rounding(qmodule: QuantizedModule, calibration_x: Any, x_val: Any, y_val: Any = None, *,
                    max_drop: float = 0.01, method: str = "approximate", repeats: int = 3, min_bits: int = 2,
                    score: Callable[[NDArray[Any]], float] | None = None,
                    configuration: Any = None) -> RoundingChoice:
    """Pick the rounding before each lookup that keeps the simulated score within ``max_drop`` of float.

    The score is classification accuracy on ``(x_val, y_val)`` (argmax of the first output holding a row of
    scores per sample: a skl2onnx classifier's label output comes first), or, without ``y_val``, agreement
    with the float model's argmax; ``score(output)`` on that output (higher is
    better, e.g. a negated error for a regression) replaces both. Each setting is compiled and
    simulated (``repeats`` times, averaged: approximate rounding is randomized). First every
    lookup gets the same bits, from ``min_bits`` up, until one setting reaches the target; then
    each lookup in turn keeps one bit less while the target still holds and the circuit gets
    cheaper. Settings that cannot be compiled (a lookup wider than 16 bits, or no cryptographic
    parameters for lookups that wide) are recorded as failed trials and passed over. ``qmodule`` ends compiled with the
    choice. When no rounding reaches the target, the lookups are left unrounded, or, if that does
    not compile, the best-scoring setting that did is kept (the choice's score shows the gap).

    Returns:
        A ``RoundingChoice``: the bits per lookup, its score, the target, and every trial.

    Raises:
        QuantizationError: ``repeats`` or ``min_bits`` below 1, a negative ``max_drop``, or an
            unknown ``method``.
        InputError: ``x_val`` is empty, or ``y_val`` does not have one label per sample of ``x_val``.
        CompileError: no setting tried compiles (the message lists them; the last failure is the
            ``__cause__``).
    """
    if repeats < 1 or min_bits < 1 or max_drop < 0:
        raise QuantizationError(f"choose_rounding: repeats and min_bits must be at least 1 and max_drop at least "
                                f"0; got repeats={repeats}, min_bits={min_bits}, max_drop={max_drop}")
    exact = is_exact_rounding(method, "choose_rounding")
    x_val_t = x_val if isinstance(x_val, tuple) else (x_val,)
    n_val = len(np.asarray(x_val_t[0])) if np.ndim(x_val_t[0]) else 0
    if n_val == 0:
        raise InputError("choose_rounding: x_val is empty; pass validation samples to score each setting on")
    if y_val is not None and len(np.asarray(y_val)) != n_val:
        raise InputError(f"choose_rounding: y_val has {len(np.asarray(y_val))} labels for {n_val} samples of x_val; "
                         "pass one label per sample")
    float_out = qmodule.numpy_module(*x_val_t)
    scored = scored_output(float_out)
    float_first = np.asarray(float_out[scored] if isinstance(float_out, tuple) else float_out)
    if score is None:
        labels = float_first.argmax(-1) if y_val is None else np.asarray(y_val)

        def score(out: NDArray[Any]) -> float:
            return float(np.mean(out.argmax(-1) == labels))

    reference = float(score(float_first))
    target = reference - max_drop
    q_val = qmodule.quantize_input(*x_val_t)
    q_val = q_val if isinstance(q_val, tuple) else (q_val,)
    trials: list[RoundingTrial] = []
    failures: list[CmlError] = []

    def trial(bits: dict[str, int | None]) -> RoundingTrial:
        qmodule.set_rounding(bits, method)
        try:
            compile_quantized_module(qmodule, calibration_x, configuration=configuration)
        except (CompileError, BitWidthError) as exc:  # this setting cannot become a circuit: pass it over
            failures.append(exc)
            failed = RoundingTrial(dict(bits), float("nan"), float("inf"), 0, str(exc).split(". ")[0])
            trials.append(failed)
            return failed
        scores = []
        for _ in range(1 if exact else repeats):
            out = qmodule.dequantize_output(*run_circuit(qmodule, q_val, "simulate"))
            first = out[scored] if isinstance(out, tuple) else out
            scores.append(float(score(np.asarray(first))))
        summary = circuit_summary(qmodule.fhe_circuit)
        result = RoundingTrial(dict(bits), float(np.mean(scores)), summary["complexity"], summary["pbs"])
        trials.append(result)
        return result

    keys = list(qmodule.rounding_bits())
    widest = max((qmodule.sites[k].input_bits for k in keys), default=0)
    best: RoundingTrial | None = None
    for bits in range(min_bits, widest):
        candidate = trial(dict.fromkeys(keys, bits))
        if candidate.score >= target:
            best = candidate
            break
    if best is None:  # nothing rounded reached the target: no rounding, if it compiles
        best = trial(dict.fromkeys(keys))
        if best.error is not None:
            compiled = [t for t in trials if t.error is None]
            if not compiled:
                tried = "; ".join(f"{t.bits}: {t.error}" for t in trials)
                raise CompileError(f"choose_rounding: no setting tried compiles ({tried}); lower n_bits, or "
                                   "pass a larger p_error in an fhe.Configuration") from failures[-1]
            best = max(compiled, key=lambda t: (t.score, -t.complexity))
    else:
        for key in keys:
            current = best.bits[key]
            while current is not None and current > min_bits:
                lowered = trial({**best.bits, key: current - 1})
                if lowered.error is not None or lowered.score < target or lowered.complexity >= best.complexity:
                    break
                best, current = lowered, current - 1
    if trials[-1] is not best:  # leave the module compiled with the choice
        qmodule.set_rounding(best.bits, method)
        compile_quantized_module(qmodule, calibration_x, configuration=configuration)
    return RoundingChoice(best.bits, best.score, target, reference, best.complexity, trials)
