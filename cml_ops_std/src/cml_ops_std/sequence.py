"""Sequence and optional values: Sequence*, SplitToSequence, ConcatFromSequence, Optional*."""

from ._opset import OPS  # noqa: F401
