"""Element-wise arithmetic with ONNX multidirectional broadcasting."""

import numpy as np

from ._opset import OPS


@OPS.op("Add", since=(7, 13, 14))
def add(a, b, /):
    return np.add(a, b).astype(a.dtype)
