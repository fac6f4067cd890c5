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
