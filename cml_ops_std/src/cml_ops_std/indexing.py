"""Ops that index, scatter, count or enumerate: Range, Trilu, CumSum, TopK, OneHot, Scatter*, GatherND ..."""

from ._opset import OPS  # noqa: F401
