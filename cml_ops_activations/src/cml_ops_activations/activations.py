"""Element-wise activation functions."""

import numpy as np

from ._opset import OPS


@OPS.op("Relu", since=(6, 13, 14))
def relu(x, /):
    return np.maximum(x, 0).astype(x.dtype)
