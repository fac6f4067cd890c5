"""Recurrent layers: RNN, GRU and LSTM.

All three share one driver: the sequence is brought to ``[seq_length, batch, input_size]``, each
direction runs its cell over the time steps (forward from the first step, reverse from the last
step of each batch entry's own length), and the outputs are brought back to the node's layout.
Values are computed in float64 and returned in the input's type.
"""

from collections.abc import Callable, Iterator

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ConstantOnlyOp

from ._opset import OPS

# -- activation functions ------------------------------------------------------------------------
# name -> (function of (x, alpha, beta), default alpha, default beta); an activation with a default
# alpha (beta) takes the next value of activation_alpha (activation_beta) when one is left
_ACTIVATIONS: dict[str, tuple[Callable[..., np.ndarray], float | None, float | None]] = {
    "relu": (lambda x, a, b: np.maximum(x, 0.0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: 0.5 * (np.tanh(0.5 * x) + 1.0), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0.0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0.0, 1.0), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0.0))), 1.0, None),
    "softsign": (lambda x, a, b: x / (1.0 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0.0, x), None, None),
}


def _activation(name: str, alphas: Iterator[float], betas: Iterator[float]) -> Callable[[np.ndarray], np.ndarray]:
    """The activation ``name`` with its alpha and beta taken from the attribute lists (or its defaults)."""
    key = (name.decode() if isinstance(name, bytes) else str(name)).lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; supported: Relu, Tanh, Sigmoid, Affine, LeakyRelu, "
                         "ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, Softsign, Softplus")
    function, default_alpha, default_beta = _ACTIVATIONS[key]
    # float32, as attribute values are (the defaults are written as decimals)
    alpha = float(np.float32(next(alphas, default_alpha))) if default_alpha is not None else None
    beta = float(np.float32(next(betas, default_beta))) if default_beta is not None else None
    return lambda x: function(x, alpha, beta)


def _activation_sets(activations, defaults, num_directions, alphas, betas):
    """Per direction, the cell's activation functions (``len(defaults)`` of them).

    One set for a bidirectional layer serves both directions; of two sets for one direction, the first
    is used (RNN's default lists two Tanh whatever the direction).
    """
    per_direction = len(defaults)
    names = list(defaults) if activations is None else list(activations)
    if len(names) not in (per_direction, 2 * per_direction):
        raise ValueError(f"activations lists {len(names)} function(s); this layer takes {per_direction} per "
                         "direction (forward first, then reverse when bidirectional)")
    if len(names) == per_direction:
        names = names * num_directions
    names = names[:per_direction * num_directions]
    alpha_values = iter([] if alphas is None else list(alphas))
    beta_values = iter([] if betas is None else list(betas))
    functions = [_activation(n, alpha_values, beta_values) for n in names]
    return [functions[d * per_direction:(d + 1) * per_direction] for d in range(num_directions)]


# -- the shared driver ----------------------------------------------------------------------------
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _run_layer(cell, x, w, r, b, sequence_lens, initial_states, *, gates, hidden_size, direction, layout,
               activations, defaults, activation_alpha, activation_beta, clip, peepholes=None):
    """Run ``cell`` over the sequence in each direction.

    ``cell(x_proj, states, recurrent, recurrent_bias, functions, clip, peephole)`` maps the input's
    projection at one step (``x W^T + Wb``, shape ``[batch, gates * hidden]``) and the states
    (tuple of ``[batch, hidden]``) to the new states; the first state is the hidden output.
    ``initial_states`` are the optional initial_h (and initial_c) inputs in the node's layout.
    Steps past a batch entry's length give zeros in Y; an entry of length 0 also has zero final states
    (as onnxruntime computes them; the specification does not say).
    Returns ``(Y, final states...)`` in the node's layout and the input's dtype.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction={direction!r}; expected forward, reverse or bidirectional")
    if layout not in (0, 1):
        raise ValueError(f"layout={layout}; expected 0 (sequence first) or 1 (batch first)")
    if x.ndim != 3:
        raise ValueError(f"X has shape {x.shape}; expected rank 3 (sequence, batch, input)")
    num_directions = _DIRECTIONS[direction]
    dtype = x.dtype
    xs = x.astype(np.float64)
    if layout == 1:
        xs = xs.transpose(1, 0, 2)
    seq_length, batch, input_size = xs.shape
    hidden = int(r.shape[-1])
    if hidden_size is not None and int(hidden_size) != hidden:
        raise ValueError(f"hidden_size={hidden_size} but R has shape {r.shape}")
    expected = {"W": (w, (num_directions, gates * hidden, input_size)),
                "R": (r, (num_directions, gates * hidden, hidden))}
    if b is not None:
        expected["B"] = (b, (num_directions, 2 * gates * hidden))
    if peepholes is not None:
        expected["P"] = (peepholes, (num_directions, 3 * hidden))
    for name, (value, shape) in expected.items():
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {shape} "
                             f"(direction={direction}, hidden size {hidden}, input size {input_size})")
    if sequence_lens is None:
        lengths = np.full(batch, seq_length, dtype=np.int64)
    else:
        lengths = np.asarray(sequence_lens).astype(np.int64).reshape(-1)
        if lengths.shape != (batch,):
            raise ValueError(f"sequence_lens has {lengths.size} entries; the batch has {batch}")
        if np.any(lengths < 0) or np.any(lengths > seq_length):
            raise ValueError(f"sequence_lens {lengths.tolist()} must lie in [0, {seq_length}]")
    states0 = []
    for index, state in enumerate(initial_states):
        if state is None:
            states0.append(np.zeros((num_directions, batch, hidden)))
            continue
        state = state.astype(np.float64)
        if layout == 1 and state.ndim == 3:
            state = state.transpose(1, 0, 2)
        if state.shape != (num_directions, batch, hidden):
            name = "initial_h" if index == 0 else "initial_c"
            raise ValueError(f"{name} has shape {state.shape} (in sequence-first order); expected "
                             f"{(num_directions, batch, hidden)}")
        states0.append(state)
    functions = _activation_sets(activations, defaults, num_directions, activation_alpha, activation_beta)
    limit = None if clip is None else float(clip)
    y = np.zeros((seq_length, num_directions, batch, hidden))
    finals = [np.zeros((num_directions, batch, hidden)) for _ in initial_states]
    for d in range(num_directions):
        reverse = direction == "reverse" or d == 1
        w_d, r_d = w[d].astype(np.float64), r[d].astype(np.float64)
        if b is None:
            wb = rb = np.zeros(gates * hidden)
        else:
            wb, rb = np.split(b[d].astype(np.float64), 2)
        peephole = None if peepholes is None else peepholes[d].astype(np.float64)
        projections = xs @ w_d.T + wb
        states = tuple(s[d] for s in states0)
        for t in (range(seq_length - 1, -1, -1) if reverse else range(seq_length)):
            active = (t < lengths)[:, None]
            new = cell(projections[t], states, r_d, rb, functions[d], limit, peephole)
            states = tuple(np.where(active, n, s) for n, s in zip(new, states))
            y[t, d] = np.where(active, states[0], 0.0)
        for final, state in zip(finals, states):
            final[d] = np.where((lengths > 0)[:, None], state, 0.0)
    if layout == 1:
        y = y.transpose(2, 0, 1, 3)
        finals = [f.transpose(1, 0, 2) for f in finals]
    return (y.astype(dtype), *(f.astype(dtype) for f in finals))


def _clipped(values, limit):
    return values if limit is None else np.clip(values, -limit, limit)


# -- cells ---------------------------------------------------------------------------------------
def _rnn_cell(x_proj, states, recurrent, recurrent_bias, functions, limit, peephole):
    (h,) = states
    return (functions[0](_clipped(x_proj + h @ recurrent.T + recurrent_bias, limit)),)


def _gru_cell(linear_before_reset):
    """The GRU cell (gates z, r, h in that order in W, R and B)."""

    def cell(x_proj, states, recurrent, recurrent_bias, functions, limit, peephole):
        (h,) = states
        f, g = functions
        hidden = h.shape[-1]
        xz, xr, xh = np.split(x_proj, 3, axis=-1)
        rz, rr, rh = np.split(recurrent, 3, axis=0)
        bz, br, bh = np.split(recurrent_bias, 3)
        z = f(_clipped(xz + h @ rz.T + bz, limit))
        reset = f(_clipped(xr + h @ rr.T + br, limit))
        if linear_before_reset:
            candidate = g(_clipped(xh + reset * (h @ rh.T + bh), limit))
        else:
            candidate = g(_clipped(xh + (reset * h) @ rh.T + bh, limit))
        assert candidate.shape[-1] == hidden
        return ((1.0 - z) * candidate + z * h,)

    return cell


def _lstm_cell(input_forget):
    """The LSTM cell (gates i, o, f, c in that order in W, R and B; peepholes i, o, f)."""

    def cell(x_proj, states, recurrent, recurrent_bias, functions, limit, peephole):
        h, c = states
        f, g, act_h = functions
        pre = x_proj + h @ recurrent.T + recurrent_bias
        pi, po, pf, pc = np.split(pre, 4, axis=-1)
        if peephole is not None:
            peep_i, peep_o, peep_f = np.split(peephole, 3)
            pi = pi + peep_i * c
            pf = pf + peep_f * c
        i = f(_clipped(pi, limit))
        forget = 1.0 - i if input_forget else f(_clipped(pf, limit))
        c_new = forget * c + i * g(_clipped(pc, limit))
        if peephole is not None:
            po = po + peep_o * c_new
        o = f(_clipped(po, limit))
        return (o * act_h(c_new), c_new)

    return cell


# -- quantized form -------------------------------------------------------------------------------
class QuantizedRecurrent(ConstantOnlyOp):
    """A recurrent layer folds when every input is a constant; over an encrypted sequence it is refused."""

    client_side = False  # weights or model computation: not the client's to run

    def encrypted_forward(self, ctx, inputs):
        raise QuantizationError(
            f"{self.where}: {self.bound.node.op_type} cannot run on encrypted values as one node (each "
            "time step feeds the next through the recurrent weights and the gate activations); export the model "
            "with the recurrence unrolled over a fixed sequence length (for example torch.onnx.export of a model "
            "that loops over the time steps in Python), which gives MatMul, Add and activation nodes that quantize"
        )


# -- RNN -----------------------------------------------------------------------------------------
_RNN_DEFAULTS = ("Tanh",)
#: the schema's default, as onnx.defs states it (bytes; node attributes arrive decoded)
RNN_DEFAULT_ACTIVATIONS = [b"Tanh", b"Tanh"]


@OPS.op("RNN", since=1, quantized=QuantizedRecurrent)
def rnn_1(x, w, r, /, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
          activation_beta=None, activations=RNN_DEFAULT_ACTIVATIONS, clip=None, direction="forward",
          hidden_size=None, output_sequence=0):
    """RNN-1 (``output_sequence`` is read from the outputs the node asks for)."""
    return rnn(x, w, r, b, sequence_lens, initial_h, activation_alpha=activation_alpha,
               activation_beta=activation_beta, activations=activations, clip=clip, direction=direction,
               hidden_size=hidden_size)


@OPS.op("RNN", since=7, quantized=QuantizedRecurrent)
def rnn_7(x, w, r, /, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
          activation_beta=None, activations=RNN_DEFAULT_ACTIVATIONS, clip=None, direction="forward",
          hidden_size=None):
    return rnn(x, w, r, b, sequence_lens, initial_h, activation_alpha=activation_alpha,
               activation_beta=activation_beta, activations=activations, clip=clip, direction=direction,
               hidden_size=hidden_size)


@OPS.op("RNN", since=(14, 22), quantized=QuantizedRecurrent)
def rnn(x, w, r, /, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=RNN_DEFAULT_ACTIVATIONS, clip=None, direction="forward", hidden_size=None, layout=0):
    """Y = f(X W^T + H R^T + Wb + Rb) at each step; returns (Y, Y_h)."""
    return _run_layer(_rnn_cell, x, w, r, b, sequence_lens, (initial_h,), gates=1, hidden_size=hidden_size,
                      direction=direction, layout=layout, activations=activations, defaults=_RNN_DEFAULTS,
                      activation_alpha=activation_alpha, activation_beta=activation_beta, clip=clip)


# -- GRU -----------------------------------------------------------------------------------------
_GRU_DEFAULTS = ("Sigmoid", "Tanh")


@OPS.op("GRU", since=1, quantized=QuantizedRecurrent)
def gru_1(x, w, r, /, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
          activations=None, clip=None, direction="foward", hidden_size=None, output_sequence=0):
    """GRU-1 (its schema spells the default direction 'foward'; that means forward)."""
    return gru(x, w, r, b, sequence_lens, initial_h, activation_alpha=activation_alpha,
               activation_beta=activation_beta, activations=activations, clip=clip,
               direction="forward" if direction == "foward" else direction, hidden_size=hidden_size)


@OPS.op("GRU", since=3, quantized=QuantizedRecurrent)
def gru_3(x, w, r, /, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
          activations=None, clip=None, direction="forward", hidden_size=None, linear_before_reset=0,
          output_sequence=0):
    return gru(x, w, r, b, sequence_lens, initial_h, activation_alpha=activation_alpha,
               activation_beta=activation_beta, activations=activations, clip=clip, direction=direction,
               hidden_size=hidden_size, linear_before_reset=linear_before_reset)


@OPS.op("GRU", since=7, quantized=QuantizedRecurrent)
def gru_7(x, w, r, /, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
          activations=None, clip=None, direction="forward", hidden_size=None, linear_before_reset=0):
    return gru(x, w, r, b, sequence_lens, initial_h, activation_alpha=activation_alpha,
               activation_beta=activation_beta, activations=activations, clip=clip, direction=direction,
               hidden_size=hidden_size, linear_before_reset=linear_before_reset)


@OPS.op("GRU", since=(14, 22), quantized=QuantizedRecurrent)
def gru(x, w, r, /, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0, linear_before_reset=0):
    """Gated recurrent unit: update gate z, reset gate r, candidate h; returns (Y, Y_h)."""
    return _run_layer(_gru_cell(linear_before_reset), x, w, r, b, sequence_lens, (initial_h,), gates=3,
                      hidden_size=hidden_size, direction=direction, layout=layout, activations=activations,
                      defaults=_GRU_DEFAULTS, activation_alpha=activation_alpha, activation_beta=activation_beta,
                      clip=clip)


# -- LSTM ----------------------------------------------------------------------------------------
_LSTM_DEFAULTS = ("Sigmoid", "Tanh", "Tanh")


@OPS.op("LSTM", since=1, quantized=QuantizedRecurrent)
def lstm_1(x, w, r, /, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *, activation_alpha=None,
           activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None, input_forget=0,
           output_sequence=0):
    return lstm(x, w, r, b, sequence_lens, initial_h, initial_c, p, activation_alpha=activation_alpha,
                activation_beta=activation_beta, activations=activations, clip=clip, direction=direction,
                hidden_size=hidden_size, input_forget=input_forget)


@OPS.op("LSTM", since=7, quantized=QuantizedRecurrent)
def lstm_7(x, w, r, /, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *, activation_alpha=None,
           activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None, input_forget=0):
    return lstm(x, w, r, b, sequence_lens, initial_h, initial_c, p, activation_alpha=activation_alpha,
                activation_beta=activation_beta, activations=activations, clip=clip, direction=direction,
                hidden_size=hidden_size, input_forget=input_forget)


@OPS.op("LSTM", since=(14, 22), quantized=QuantizedRecurrent)
def lstm(x, w, r, /, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *, activation_alpha=None,
         activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None, input_forget=0,
         layout=0):
    """Long short-term memory with optional peepholes and coupled input/forget gates; returns (Y, Y_h, Y_c)."""
    return _run_layer(_lstm_cell(input_forget), x, w, r, b, sequence_lens, (initial_h, initial_c), gates=4,
                      hidden_size=hidden_size, direction=direction, layout=layout, activations=activations,
                      defaults=_LSTM_DEFAULTS, activation_alpha=activation_alpha, activation_beta=activation_beta,
                      clip=clip, peepholes=p)
