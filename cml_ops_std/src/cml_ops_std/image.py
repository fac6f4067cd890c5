"""Image and detection ops: Resize, Upsample, GridSample, AffineGrid, Col2Im, RoiAlign, MaxRoiPool, MaxUnpool, NonMaxSuppression."""

from ._opset import OPS  # noqa: F401
