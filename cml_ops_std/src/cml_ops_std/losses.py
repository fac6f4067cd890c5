"""Loss functions and training-domain optimizers: NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss, Adagrad, Adam, Momentum."""

from ._opset import OPS  # noqa: F401
