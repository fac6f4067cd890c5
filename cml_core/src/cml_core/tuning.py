"""Choosing the rounding before each lookup and the lookups' error probability: the cheapest settings that keep a
score target."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import BitWidthError, CmlError, CompileError, InputError, QuantizationError, TuningWarning
from .fhe import circuit_summary, compile_quantized_module, run_circuit
from .quantization.auto_rounding import scored_output
from .quantization.module import is_exact_rounding

if TYPE_CHECKING:
    from .quantization.module import QuantizedModule


def _samples(x: tuple[Any, ...]) -> set[bytes] | None:
    """Each sample of ``x`` (one row of every input) as bytes, None for inputs without a common batch axis."""
    arrays = [np.ascontiguousarray(a) for a in x]
    if any(a.ndim == 0 or len(a) != len(arrays[0]) for a in arrays):
        return None
    return {b"".join(a[i].tobytes() for a in arrays) for i in range(len(arrays[0]))}


def _validation_set(caller: str, x_val: Any, y_val: Any, calibration_x: Any) -> tuple[Any, ...]:
    x_val_t = x_val if isinstance(x_val, tuple) else (x_val,)
    n_val = len(np.asarray(x_val_t[0])) if np.ndim(x_val_t[0]) else 0
    if n_val == 0:
        raise InputError(f"{caller}: x_val is empty; pass validation samples to score each setting on")
    if y_val is not None and len(np.asarray(y_val)) != n_val:
        raise InputError(f"{caller}: y_val has {len(np.asarray(y_val))} labels for {n_val} samples of x_val; "
                         "pass one label per sample")
    calibration_t = calibration_x if isinstance(calibration_x, tuple) else (calibration_x,)
    if len(calibration_t) == len(x_val_t):
        seen, scored = _samples(calibration_t), _samples(x_val_t)
        if seen and scored and scored <= seen:
            warnings.warn(f"{caller}: every sample of x_val is also a calibration sample. If the model was "
                          "trained on them too, its float score there overstates the error it tolerates, and the "
                          "setting chosen can lose more than max_drop on new data: score on samples held out of "
                          "training.", TuningWarning, stacklevel=3)
    return x_val_t


class _Scorer:
    """The score a setting is judged by: classification accuracy on ``(x_val, y_val)`` (argmax of the first
    output holding a row of scores per sample), agreement with the float model's argmax without ``y_val``, or
    ``score(output)``; ``reference`` is the float model's."""

    def __init__(self, qmodule: QuantizedModule, x_val: tuple[Any, ...], y_val: Any,
                 score: Callable[[NDArray[Any]], float] | None) -> None:
        self.qmodule = qmodule
        float_out = qmodule.numpy_module(*x_val)
        self.scored = scored_output(float_out)
        float_first = np.asarray(float_out[self.scored] if isinstance(float_out, tuple) else float_out)
        if score is None:
            labels = float_first.argmax(-1) if y_val is None else np.asarray(y_val)

            def score(out: NDArray[Any]) -> float:
                return float(np.mean(out.argmax(-1) == labels))

        self.score = score
        self.reference = float(score(float_first))
        q_val = qmodule.quantize_input(*x_val)
        self.q_val = q_val if isinstance(q_val, tuple) else (q_val,)

    def simulated(self, repeats: int) -> float:
        """The mean score of ``repeats`` simulations of the compiled circuit (rounding and lookup errors are
        drawn anew each time)."""
        scores = []
        for _ in range(repeats):
            out = self.qmodule.dequantize_output(*run_circuit(self.qmodule, self.q_val, "simulate"))
            first = out[self.scored] if isinstance(out, tuple) else out
            scores.append(float(self.score(np.asarray(first))))
        return float(np.mean(scores))


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
    choice. When no rounding reaches the target, the lookups are left unrounded (those wider than 16 bits
    rounded as the defaults round them, and the trial records those bits), or, if that does not compile,
    the best-scoring setting that did is kept (the choice's score shows the gap).

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
    x_val_t = _validation_set("choose_rounding", x_val, y_val, calibration_x)
    scorer = _Scorer(qmodule, x_val_t, y_val, score)
    reference, target = scorer.reference, scorer.reference - max_drop
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
        summary = circuit_summary(qmodule.fhe_circuit)
        # what was compiled: no rounding leaves lookups wider than 16 bits to the defaults' automatic rounding
        compiled = dict(qmodule.rounding_bits()) if all(v is None for v in bits.values()) else dict(bits)
        result = RoundingTrial(compiled, scorer.simulated(1 if exact else repeats), summary["complexity"],
                               summary["pbs"])
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


#: error probabilities per lookup ``choose_p_error`` searches, smallest first
P_ERRORS = (1e-4, 1e-3, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5)


@dataclass
class ErrorTrial:
    """One error probability tried by ``choose_p_error`` (None: concrete-python's default, a global error
    probability of 1e-5 over the whole circuit); ``error`` says why it did not compile."""

    p_error: float | None
    score: float
    complexity: float
    global_p_error: float
    error: str | None = None


@dataclass
class ErrorChoice:
    """What ``choose_p_error`` picked, the score it had to reach, and every probability it tried."""

    p_error: float | None
    score: float
    target: float
    reference_score: float
    complexity: float
    trials: list[ErrorTrial] = field(default_factory=list)

    def __str__(self) -> str:
        def name(p: float | None) -> str:
            return "default (global 1e-5)" if p is None else f"p_error={p:g}"

        lines = [f"chosen {name(self.p_error)}: score {self.score:.4f} (target {self.target:.4f}, float "
                 f"{self.reference_score:.4f}), complexity {self.complexity:.3g}"]
        lines += [f"  tried {name(t.p_error)}: " + (f"does not compile ({t.error})" if t.error else
                                                    f"score {t.score:.4f}, complexity {t.complexity:.3g}, "
                                                    f"global error probability {t.global_p_error:.3g}")
                  for t in self.trials]
        return "\n".join(lines)


def choose_p_error(qmodule: QuantizedModule, calibration_x: Any, x_val: Any, y_val: Any = None, *,
                   max_drop: float = 0.01, repeats: int = 3, candidates: tuple[float, ...] = P_ERRORS,
                   score: Callable[[NDArray[Any]], float] | None = None, configuration: Any = None) -> ErrorChoice:
    """Pick the largest error probability per lookup (``p_error``) that keeps the simulated score within
    ``max_drop`` of float: larger probabilities let the compiler pick smaller cryptographic parameters, so every
    lookup gets cheaper (on the digits MLP, 2.3 times lower complexity at 0.2 than at the default).

    concrete-python's simulation draws each lookup's errors at the rate its parameters give, so the simulated
    score shows what the errors cost. Scored as in ``choose_rounding`` (accuracy on ``(x_val, y_val)``,
    agreement with the float model without ``y_val``, or ``score``), each probability compiled and simulated
    ``repeats`` times (averaged); the candidates (sorted) are searched by bisection, taking the score to fall
    as the probability grows. The rounding is left as it is: choose it first (``choose_rounding``), then this.
    When no candidate holds the target, concrete-python's default is kept (a global error probability of 1e-5
    over the whole circuit). ``qmodule`` ends compiled with the choice.

    Returns:
        An ``ErrorChoice``: the probability (None for the default), its score, the target, every trial.

    Raises:
        QuantizationError: ``repeats`` below 1, a negative ``max_drop``, or a candidate outside (0, 1).
        InputError: ``x_val`` is empty, or ``y_val`` does not have one label per sample of ``x_val``.
        CompileError: the module does not compile at the default error probability either.
    """
    if repeats < 1 or max_drop < 0 or not candidates or any(not 0 < p < 1 for p in candidates):
        raise QuantizationError(f"choose_p_error: repeats must be at least 1, max_drop at least 0 and every "
                                f"candidate in (0, 1); got repeats={repeats}, max_drop={max_drop}, "
                                f"candidates={candidates}")
    scorer = _Scorer(qmodule, _validation_set("choose_p_error", x_val, y_val, calibration_x), y_val, score)
    target = scorer.reference - max_drop
    trials: list[ErrorTrial] = []

    def trial(p_error: float | None) -> ErrorTrial:
        try:
            compile_quantized_module(qmodule, calibration_x, p_error=p_error, configuration=configuration)
        except (CompileError, BitWidthError) as exc:
            if p_error is None:
                raise
            failed = ErrorTrial(p_error, float("nan"), float("inf"), float("nan"), str(exc).split(". ")[0])
            trials.append(failed)
            return failed
        summary = circuit_summary(qmodule.fhe_circuit)
        result = ErrorTrial(p_error, scorer.simulated(repeats), summary["complexity"], summary["global_p_error"])
        trials.append(result)
        return result

    best = trial(None)
    ordered = sorted(set(candidates))
    low, high = -1, len(ordered)  # ordered[low] holds the target (or the default), ordered[high] does not
    while high - low > 1:
        middle = (low + high) // 2
        candidate = trial(ordered[middle])
        if candidate.error is None and candidate.score >= target:
            low = middle
            if candidate.complexity < best.complexity:
                best = candidate
        else:
            high = middle
    if trials[-1] is not best:  # leave the module compiled with the choice
        compile_quantized_module(qmodule, calibration_x, p_error=best.p_error, configuration=configuration)
    return ErrorChoice(best.p_error, best.score, target, scorer.reference, best.complexity, trials)
