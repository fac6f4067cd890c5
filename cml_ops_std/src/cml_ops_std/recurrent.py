"""Recurrent layers: RNN, GRU and LSTM."""

from ._opset import OPS  # noqa: F401
