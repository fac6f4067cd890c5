"""Loss functions and training-domain optimizers: NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss, Adagrad, Adam, Momentum.

None of these is part of inference: their quantized form folds them when every input is a constant
and refuses an encrypted input. ``ai.onnx.preview.training``'s Gradient (automatic differentiation
of a subgraph) is not provided.
"""

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ConstantOnlyOp

from ._opset import OPS

TRAINING = "ai.onnx.preview.training"


class QuantizedTrainingOp(ConstantOnlyOp):
    """Losses and optimizer steps: computed from constants only; an encrypted input is refused."""

    client_side = False  # weights or model computation: not the client's to run

    def encrypted_forward(self, ctx, inputs):
        raise QuantizationError(
            f"{self.where}: {self.bound.node.op_type} cannot run on encrypted values: it belongs to training, not "
            "to inference; remove it from the model (export the inference graph, which ends at the scores) "
            "before compiling"
        )


# -- losses ----------------------------------------------------------------------------------------
_REDUCTIONS = ("none", "sum", "mean")


def _negative_log_likelihood(log_probabilities, target, weight, reduction, ignore_index):
    """Loss of float64 ``log_probabilities`` ``[N, C, d1, ...]`` at the classes ``target`` ``[N, d1, ...]``.

    Each position's loss is ``-log_probabilities[n, target, d...] * weight[target]``; a position whose
    target is ``ignore_index`` has loss 0 and weight 0. "mean" divides the summed loss by the summed
    weights of the positions not ignored.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; expected one of {', '.join(_REDUCTIONS)}")
    if log_probabilities.ndim < 2:
        raise ValueError(f"input has shape {log_probabilities.shape}; expected [N, C] or [N, C, d1, ...]")
    expected_target = (log_probabilities.shape[0], *log_probabilities.shape[2:])
    if tuple(target.shape) != expected_target:
        raise ValueError(f"target has shape {tuple(target.shape)}; the input of shape {log_probabilities.shape} "
                         f"needs {expected_target}")
    classes = log_probabilities.shape[1]
    labels = np.asarray(target).astype(np.int64)
    kept = np.ones(labels.shape, dtype=bool) if ignore_index is None else labels != int(ignore_index)
    outside = kept & ((labels < 0) | (labels >= classes))
    if np.any(outside):
        raise ValueError(f"target holds class {int(labels[outside][0])}, outside [0, {classes}) "
                         f"(ignore_index={ignore_index})")
    safe_labels = np.where(kept, labels, 0)
    picked = np.take_along_axis(log_probabilities, safe_labels[:, None], axis=1)[:, 0]
    if weight is None:
        weights = kept.astype(np.float64)
    else:
        if tuple(weight.shape) != (classes,):
            raise ValueError(f"weight has shape {tuple(weight.shape)}; expected ({classes},), one per class")
        weights = np.where(kept, np.asarray(weight, dtype=np.float64)[safe_labels], 0.0)
    loss = -picked * weights
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.sum(loss)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(loss) / np.sum(weights)


def _log_softmax_classes(scores):
    """log(softmax(scores)) over axis 1, in float64."""
    shifted = scores - np.max(scores, axis=1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


@OPS.op("NegativeLogLikelihoodLoss", since=(12, 13, 22), quantized=QuantizedTrainingOp)
def negative_log_likelihood_loss(input, target, /, weight=None, *, ignore_index=None, reduction="mean"):
    """Negative log-likelihood of log-probabilities ``input`` at the classes ``target``."""
    values = input.astype(np.float64)
    return np.asarray(_negative_log_likelihood(values, target, weight, reduction, ignore_index)).astype(input.dtype)


@OPS.op("SoftmaxCrossEntropyLoss", since=(12, 13), quantized=QuantizedTrainingOp)
def softmax_cross_entropy_loss(scores, labels, /, weights=None, *, ignore_index=None, reduction="mean"):
    """Cross entropy of softmax(``scores``) over axis 1 against ``labels``; returns (loss, log_prob)."""
    if scores.ndim < 2:
        raise ValueError(f"scores has shape {scores.shape}; expected [N, C] or [N, C, d1, ...]")
    log_prob = _log_softmax_classes(scores.astype(np.float64))
    loss = _negative_log_likelihood(log_prob, labels, weights, reduction, ignore_index)
    return np.asarray(loss).astype(scores.dtype), log_prob.astype(scores.dtype)


# -- optimizers (ai.onnx.preview.training) ---------------------------------------------------------
def _groups(op_type, inputs, names):
    """Split the variadic inputs into ``len(names)`` equal groups (one tensor per optimized parameter each)."""
    count = len(names)
    if not inputs or len(inputs) % count:
        raise ValueError(f"{op_type} takes R, T and then {count} groups of the same length "
                         f"({', '.join(names)}); got {len(inputs)} tensors after R and T")
    n = len(inputs) // count
    groups = [inputs[i * n:(i + 1) * n] for i in range(count)]
    for i in range(n):
        shapes = {np.shape(group[i]) for group in groups}
        if len(shapes) > 1:
            raise ValueError(f"{op_type}: the tensors of parameter {i} ({', '.join(names)}) have different shapes "
                             f"{[np.shape(group[i]) for group in groups]}")
    return groups


def _float_attributes(*values):
    """Float attributes as a model holds them: float32 values (the signature's defaults are decimal literals)."""
    return [float(np.float32(v)) for v in values]


def _scalar(value, name):
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"{name} must be a scalar; got shape {array.shape}")
    return array.reshape(()).item()


@OPS.op("Adagrad", since=1, domain=TRAINING, quantized=QuantizedTrainingOp)
def adagrad(r, t, /, *inputs, decay_factor=0.0, epsilon=1e-6, norm_coefficient=0.0):
    """One Adagrad step for each (X, G, H); returns (X_new..., H_new...)."""
    xs, gs, hs = _groups("Adagrad", inputs, ("X", "G", "H"))
    decay_factor, epsilon, norm_coefficient = _float_attributes(decay_factor, epsilon, norm_coefficient)
    rate = float(_scalar(r, "R")) / (1.0 + float(_scalar(t, "T")) * decay_factor)
    new_x, new_h = [], []
    for x, g, h in zip(xs, gs, hs):
        regularized = norm_coefficient * x.astype(np.float64) + g.astype(np.float64)
        accumulated = h.astype(np.float64) + regularized * regularized
        step = rate * regularized / (np.sqrt(accumulated) + epsilon)
        new_x.append((x.astype(np.float64) - step).astype(x.dtype))
        new_h.append(accumulated.astype(h.dtype))
    return (*new_x, *new_h)


@OPS.op("Momentum", since=1, domain=TRAINING, quantized=QuantizedTrainingOp)
def momentum(r, t, /, *inputs, alpha, beta, mode, norm_coefficient):
    """One step of stochastic gradient descent with momentum ("standard" or "nesterov") for each (X, G, V);
    returns (X_new..., V_new...)."""
    if mode not in ("standard", "nesterov"):
        raise ValueError(f"mode={mode!r}; expected 'standard' or 'nesterov'")
    xs, gs, vs = _groups("Momentum", inputs, ("X", "G", "V"))
    alpha, beta, norm_coefficient = _float_attributes(alpha, beta, norm_coefficient)
    rate = float(_scalar(r, "R"))
    gradient_scale = beta if int(_scalar(t, "T")) > 0 else 1.0
    new_x, new_v = [], []
    for x, g, v in zip(xs, gs, vs):
        x64 = x.astype(np.float64)
        regularized = norm_coefficient * x64 + g.astype(np.float64)
        velocity = alpha * v.astype(np.float64) + gradient_scale * regularized
        direction = velocity if mode == "standard" else regularized + alpha * velocity
        new_x.append((x64 - rate * direction).astype(x.dtype))
        new_v.append(velocity.astype(v.dtype))
    return (*new_x, *new_v)


@OPS.op("Adam", since=1, domain=TRAINING, quantized=QuantizedTrainingOp)
def adam(r, t, /, *inputs, alpha=0.9, beta=0.999, epsilon=1e-6, norm_coefficient=0.0, norm_coefficient_post=0.0):
    """One Adam step for each (X, G, V, H); returns (X_new..., V_new..., H_new...)."""
    xs, gs, vs, hs = _groups("Adam", inputs, ("X", "G", "V", "H"))
    alpha, beta, epsilon, norm_coefficient, norm_coefficient_post = _float_attributes(
        alpha, beta, epsilon, norm_coefficient, norm_coefficient_post)
    rate = float(_scalar(r, "R"))
    steps = int(_scalar(t, "T"))
    if steps > 0:
        rate = rate * np.sqrt(1.0 - beta**steps) / (1.0 - alpha**steps)
    new_x, new_v, new_h = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        x64 = x.astype(np.float64)
        regularized = norm_coefficient * x64 + g.astype(np.float64)
        first = alpha * v.astype(np.float64) + (1.0 - alpha) * regularized
        second = beta * h.astype(np.float64) + (1.0 - beta) * regularized * regularized
        updated = x64 - rate * first / (np.sqrt(second) + epsilon)
        new_x.append(((1.0 - norm_coefficient_post) * updated).astype(x.dtype))
        new_v.append(first.astype(v.dtype))
        new_h.append(second.astype(h.dtype))
    return (*new_x, *new_v, *new_h)
