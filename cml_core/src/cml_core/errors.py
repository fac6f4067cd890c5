"""Exception types raised by cml. Each one can be caught on its own; all derive from ``CmlError``."""

from __future__ import annotations


class CmlError(Exception):
    """Base class of every error cml raises on purpose."""


class ModelLoadError(CmlError):
    """The model file or proto cannot be read, checked or prepared for execution."""


class UnsupportedOpError(CmlError):
    """The model uses ops that no installed plugin provides (or not at the model's opset)."""

    def __init__(self, message: str, missing: list[tuple[str, str, int, int]] | None = None) -> None:
        super().__init__(message)
        #: (domain, op_type, opset, node count) for each missing op
        self.missing = missing or []


class DuplicateOpError(CmlError):
    """Two plugins register the same (domain, op type, since-version)."""


class OpSignatureError(CmlError):
    """An op implementation's signature does not follow the input/attribute contract."""


class InputError(CmlError):
    """Inputs given at call time do not match what the model declares."""


class NodeExecutionError(CmlError):
    """An op raised while running a node; the message names the node and its op."""


class QuantizationError(CmlError):
    """Calibration data or quantization settings are unusable, or a node cannot be quantized."""


class BitWidthError(QuantizationError):
    """A table lookup would need more bits than the FHE backend supports."""


class PluginError(CmlError):
    """A plugin failed to load (raised only in strict mode; otherwise a warning is issued)."""


class CompileError(CmlError):
    """concrete-python could not compile the integer program (no crypto parameters, unsupported
    operation, ...); the message says what failed and which settings to change."""


class FHEExecutionError(CmlError):
    """Encrypted execution or simulation cannot run on the given integers (wrong range, empty batch)."""


class DeploymentError(CmlError):
    """A saved model, a client artifact, keys or a payload that cannot be used here (corrupt, of
    another model or key, saved by other versions)."""


class OutOfMemoryError(CmlError, MemoryError):
    """An operation ran out of memory; the message says what to make smaller."""


class CmlWarning(UserWarning):
    """Base class of every warning cml issues on purpose."""


class CalibrationWarning(CmlWarning):
    """Calibration data gives a degenerate or outlier-dominated range, or settings give chance-level precision."""


class SaturationWarning(CmlWarning):
    """Values were clipped: inputs outside the range seen in calibration, or integer-typed outputs
    beyond their dtype's range (or NaN, given as 0)."""


class RoundingWarning(CmlWarning):
    """Rounding was chosen automatically so that the model compiles (the message says which, and the
    agreement with the float model it keeps)."""


class TuningWarning(CmlWarning):
    """Tuning data that cannot show what a setting costs: samples the model was calibrated on (and, most
    often, trained on), where its float score overstates the error it tolerates."""


class PluginConfigWarning(CmlWarning):
    """A plugin setting (``CML_PIN_OPS``, allow/deny lists) is malformed or names nothing installed."""
