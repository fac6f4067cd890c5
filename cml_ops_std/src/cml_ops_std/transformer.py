"""Transformer building blocks: Attention, RotaryEmbedding, RMS/Group/Lp normalization, gated activations."""

from ._opset import OPS  # noqa: F401
