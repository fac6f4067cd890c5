"""Numeric ops: Einsum, Det, bitwise ops, BitCast, signal processing (DFT, STFT, windows, mel filters)."""

from ._opset import OPS  # noqa: F401
