"""Transformer building blocks: Attention, RotaryEmbedding, RMS/Group/Lp/mean-variance normalization,
Swish and SwiGLU, LinearAttention, CausalConvWithState and ai.onnx.preview FlexAttention."""

import numpy as np
from cml_core.errors import QuantizationError
from cml_core.quantization import ConstantOnlyOp, ElementwiseOp, FunctionBodyOp, LinearOp, QValue, backend
from cml_core.signature import Subgraph
from onnx import helper

from ._opset import OPS
from .conv import conv_nd
from .normalization import QuantizedNormalization


# -- Attention -------------------------------------------------------------------------------------
def _to_heads(x, num_heads, what):
    """(batch, sequence, heads * size) -> (batch, heads, sequence, size)."""
    if num_heads is None or num_heads < 1:
        raise ValueError(f"3-D {what} needs a positive q_num_heads/kv_num_heads attribute")
    if x.shape[2] % num_heads:
        raise ValueError(f"{what}'s hidden size {x.shape[2]} is not a multiple of its {num_heads} heads")
    return x.reshape(x.shape[0], x.shape[1], num_heads, x.shape[2] // num_heads).transpose(0, 2, 1, 3)


def _allowed_band(q_len, kv_len, offset, lower, upper):
    """Positions (query i, key j) with ``offset + i - lower <= j <= offset + i + upper``; a bound of
    ``None`` leaves that side open. ``offset`` is a number or one per batch (then (batch, 1, q, kv))."""
    rows = np.arange(q_len).reshape(q_len, 1)
    cols = np.arange(kv_len).reshape(1, kv_len)
    if np.ndim(offset):
        rows = rows + np.reshape(offset, (-1, 1, 1, 1))
    else:
        rows = rows + int(offset)
    allowed = np.ones(np.broadcast_shapes(rows.shape, cols.shape), dtype=bool)
    if upper is not None:
        allowed &= cols <= rows + upper
    if lower is not None:
        allowed &= cols >= rows - lower
    return allowed


def _mask_to_bias(mask, dtype):
    """A boolean mask (True attends) as an additive bias of 0 / -inf; a float mask as it is."""
    if mask.dtype == np.bool_:
        return np.where(mask, dtype.type(0), dtype.type(-np.inf))
    return mask.astype(dtype, copy=False)


def _row_softmax(scores):
    """Softmax over the last axis in the scores' own dtype; a row of only -inf gives zeros."""
    top = np.max(scores, axis=-1, keepdims=True)
    top = np.where(np.isneginf(top), scores.dtype.type(0), top)
    exps = np.exp(scores - top)
    total = np.sum(exps, axis=-1, keepdims=True)
    return exps / np.where(total == 0, scores.dtype.type(1), total)


def _matmul(a, b):
    """A matrix product that keeps ``a``'s dtype (numpy promotes bfloat16 products to float32)."""
    out = np.matmul(a, b)
    return out if out.dtype == a.dtype else out.astype(a.dtype)


def attention_bias(q_len, kv_len, dtype, attn_mask, is_causal, past_len, nonpad_kv_seqlen, window):
    """The additive bias of the attention scores: the mask (padded with -inf to the keys), the causal
    frontier, the sliding window and the padding of an external cache, composed as the spec does."""
    bias = np.zeros((q_len, kv_len), dtype=dtype)
    if attn_mask is not None:
        missing = kv_len - attn_mask.shape[-1]
        if missing < 0:
            raise ValueError(f"attn_mask covers {attn_mask.shape[-1]} keys, more than the {kv_len} keys")
        if missing:
            fill = False if attn_mask.dtype == np.bool_ else -np.inf
            attn_mask = np.pad(attn_mask, [(0, 0)] * (attn_mask.ndim - 1) + [(0, missing)], constant_values=fill)
        bias = bias + _mask_to_bias(attn_mask, dtype)
    if nonpad_kv_seqlen is not None and past_len == 0:
        offset = np.asarray(nonpad_kv_seqlen, np.int64).reshape(-1) - q_len
    else:
        offset = past_len
    minus_inf = dtype.type(-np.inf)
    if is_causal:
        bias = bias + np.where(_allowed_band(q_len, kv_len, offset, None, 0), dtype.type(0), minus_inf)
    left, right = window
    if left >= 0 or right >= 0:
        band = _allowed_band(q_len, kv_len, offset, left if left >= 0 else None, right if right >= 0 else None)
        bias = bias + np.where(band, dtype.type(0), minus_inf)
    if nonpad_kv_seqlen is not None:
        lengths = np.asarray(nonpad_kv_seqlen, np.int64).reshape(-1, 1, 1, 1)
        bias = bias + np.where(np.arange(kv_len) < lengths, dtype.type(0), minus_inf)
    return bias


def _attention(q, k, v, attn_mask, past_key, past_value, nonpad_kv_seqlen, *, is_causal, kv_num_heads,
               q_num_heads, qk_matmul_output_mode, scale, softcap, softmax_precision, window=(-1, -1)):
    """Scaled dot-product attention as ONNX Attention defines it; returns (Y, present_key,
    present_value, qk_matmul_output). Every step runs in the inputs' dtype, as the spec's function
    body does (the scores in ``softmax_precision`` when given)."""
    if not (q.ndim == k.ndim == v.ndim) or q.ndim not in (3, 4):
        raise ValueError(f"Q, K and V must all be 3-D or all 4-D, got ranks {q.ndim}, {k.ndim}, {v.ndim}")
    if (past_key is None) != (past_value is None):
        raise ValueError("past_key and past_value must be given together")
    if nonpad_kv_seqlen is not None and past_key is not None:
        raise ValueError("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    if qk_matmul_output_mode not in (0, 1, 2, 3):
        raise ValueError(f"qk_matmul_output_mode={qk_matmul_output_mode} is not 0, 1, 2 or 3")
    flat = q.ndim == 3
    if flat:
        q = _to_heads(q, q_num_heads, "Q")
        k = _to_heads(k, kv_num_heads, "K")
        v = _to_heads(v, kv_num_heads, "V")
    dtype = q.dtype
    if scale is None:
        scale = 1 / np.sqrt(q.shape[3])
    root = dtype.type(np.sqrt(scale))
    past_len = 0
    if past_key is not None:
        past_len = past_key.shape[2]
        k = np.concatenate((past_key, k), axis=2)
        v = np.concatenate((past_value, v), axis=2)
    present_key, present_value = k, v
    heads_q, heads_kv = q.shape[1], k.shape[1]
    if heads_q != heads_kv:
        if heads_q % heads_kv or v.shape[1] != heads_kv:
            raise ValueError(f"{heads_q} query heads cannot share {heads_kv} key/value heads")
        k = np.repeat(k, heads_q // heads_kv, axis=1)
        v = np.repeat(v, heads_q // heads_kv, axis=1)
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"Q's head size {q.shape[3]} differs from K's {k.shape[3]}")
    q_len, kv_len = q.shape[2], k.shape[2]
    bias = attention_bias(q_len, kv_len, dtype, attn_mask, is_causal, past_len, nonpad_kv_seqlen, window)
    raw = _matmul(q * root, np.swapaxes(k * root, -1, -2))
    capped = raw
    if softcap and softcap > 0:
        cap = dtype.type(softcap)
        capped = np.tanh(raw / cap) * cap
    scores = capped + bias
    exposed = {0: raw, 1: capped, 2: scores}.get(qk_matmul_output_mode)
    if softmax_precision is not None:
        scores = scores.astype(helper.tensor_dtype_to_np_dtype(softmax_precision))
    probabilities = _row_softmax(scores)
    fully_masked = np.isneginf(np.max(bias, axis=-1, keepdims=True))
    probabilities = np.where(fully_masked, probabilities.dtype.type(0), probabilities)
    if qk_matmul_output_mode == 3:
        exposed = probabilities
    y = _matmul(probabilities.astype(dtype), v)
    if flat:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
    exposed = np.broadcast_to(exposed, raw.shape).astype(dtype)
    return y, present_key, present_value, exposed


@OPS.op("Attention", since=23, quantized=FunctionBodyOp)
def attention_23(q, k, v, /, attn_mask=None, past_key=None, past_value=None, *, is_causal=0, kv_num_heads=None,
                 q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0, softmax_precision=None):
    return _attention(q, k, v, attn_mask, past_key, past_value, None, is_causal=is_causal,
                      kv_num_heads=kv_num_heads, q_num_heads=q_num_heads,
                      qk_matmul_output_mode=qk_matmul_output_mode, scale=scale, softcap=softcap,
                      softmax_precision=softmax_precision)


@OPS.op("Attention", since=24, quantized=FunctionBodyOp)
def attention_24(q, k, v, /, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *, is_causal=0,
                 kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0,
                 softmax_precision=None):
    return _attention(q, k, v, attn_mask, past_key, past_value, nonpad_kv_seqlen, is_causal=is_causal,
                      kv_num_heads=kv_num_heads, q_num_heads=q_num_heads,
                      qk_matmul_output_mode=qk_matmul_output_mode, scale=scale, softcap=softcap,
                      softmax_precision=softmax_precision)


@OPS.op("Attention", since=25, quantized=FunctionBodyOp)
def attention(q, k, v, /, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *, is_causal=0,
              kv_num_heads=None, left_window_size=-1, q_num_heads=None, qk_matmul_output_mode=0,
              right_window_size=-1, scale=None, softcap=0.0, softmax_precision=None):
    if left_window_size < -1 or right_window_size < -1:
        raise ValueError(f"window sizes must be -1 or nonnegative, got {left_window_size}, {right_window_size}")
    if q.ndim == 4 and (q_num_heads is not None or kv_num_heads is not None):
        raise ValueError("q_num_heads and kv_num_heads are for 3-D inputs only")
    return _attention(q, k, v, attn_mask, past_key, past_value, nonpad_kv_seqlen, is_causal=is_causal,
                      kv_num_heads=kv_num_heads, q_num_heads=q_num_heads,
                      qk_matmul_output_mode=qk_matmul_output_mode, scale=scale, softcap=softcap,
                      softmax_precision=softmax_precision, window=(left_window_size, right_window_size))


# -- RotaryEmbedding ---------------------------------------------------------------------------------
def _rotary_layout(x, num_heads):
    """``x`` as (batch, sequence, heads, head size), and the function restoring its own layout."""
    if x.ndim == 4:
        return np.swapaxes(x, 1, 2), lambda y: np.swapaxes(y, 1, 2)
    if x.ndim != 3:
        raise ValueError(f"RotaryEmbedding input must be 3-D or 4-D, got rank {x.ndim}")
    if not num_heads or x.shape[2] % num_heads:
        raise ValueError(f"a 3-D input needs num_heads dividing its hidden size {x.shape[2]}, got {num_heads}")
    shape = x.shape
    return x.reshape(shape[0], shape[1], num_heads, shape[2] // num_heads), lambda y: y.reshape(shape)


def rotary_caches(cos_cache, sin_cache, position_ids, half):
    """The (batch, sequence, 1, half) cos and sin factors, gathered at ``position_ids`` when given."""
    if position_ids is not None:
        positions = np.asarray(position_ids, np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= cos_cache.shape[0]):
            raise ValueError(f"position_ids must lie in [0, {cos_cache.shape[0]}), got {positions.min()}..{positions.max()}")
        cos_cache, sin_cache = cos_cache[positions], sin_cache[positions]
    for name, cache in (("cos_cache", cos_cache), ("sin_cache", sin_cache)):
        if cache.shape[-1] != half:
            raise ValueError(f"{name}'s last dimension {cache.shape[-1]} is not rotary_embedding_dim / 2 = {half}")
    return cos_cache[:, :, None, :], sin_cache[:, :, None, :]


def rotate(x, cos, sin, interleaved, rotary_dim, combine):
    """Pairs of the first ``rotary_dim`` features (halves, or neighbours when ``interleaved``) turned by
    the angles whose cos and sin are given; ``combine(a, f, b, g)`` computes ``a * f + b * g``."""
    turned, kept = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        first, second = turned[..., 0::2], turned[..., 1::2]
    else:
        first, second = turned[..., : rotary_dim // 2], turned[..., rotary_dim // 2 :]
    real = combine(first, cos, second, -sin)
    imaginary = combine(first, sin, second, cos)
    if interleaved:
        turned = np.stack((real, imaginary), axis=-1).reshape(real.shape[:-1] + (rotary_dim,))
    else:
        turned = np.concatenate((real, imaginary), axis=-1)
    return np.concatenate((turned, kept), axis=-1)


def _rotary_geometry(x, num_heads, rotary_embedding_dim):
    heads, restore = _rotary_layout(x, num_heads)
    rotary_dim = rotary_embedding_dim or heads.shape[3]
    if rotary_dim % 2 or rotary_dim > heads.shape[3]:
        raise ValueError(f"rotary_embedding_dim={rotary_dim} must be even and at most the head size {heads.shape[3]}")
    return heads, restore, rotary_dim


class QuantizedRotaryEmbedding(LinearOp):
    """RotaryEmbedding of an encrypted input with constant caches and positions: each output is
    ``x_a * cos + x_b * (+-sin)``, an integer linear form of the input's integers with the caches
    quantized as weights (one symmetric scale for cos and sin together)."""

    weight_inputs = ("cos_cache", "sin_cache")

    def weight_quantizer(self, value, n_bits):
        """The one quantizer of both caches (fitted on their joint range at calibration)."""
        return self.state["caches"] if "caches" in self.state else LinearOp.weight_quantizer(value, n_bits)

    def encrypted_forward(self, ctx, inputs):
        x, cos_cache, sin_cache = inputs[0], inputs[1], inputs[2]
        position_ids = inputs[3] if len(inputs) > 3 else None
        if any(v is not None and not v.is_constant for v in (cos_cache, sin_cache, position_ids)):
            raise QuantizationError(f"{self.where}: cos_cache, sin_cache and position_ids must be constants; "
                                    "only the input may be encrypted")
        a = self.attributes
        num_heads = a.get("num_heads")
        q = ctx.requantize(x)
        _, _, rotary_dim = _rotary_geometry(np.zeros(q.shape), num_heads, int(a.get("rotary_embedding_dim", 0)))
        cos, sin = rotary_caches(np.asarray(cos_cache.data, np.float64), np.asarray(sin_cache.data, np.float64),
                                 None if position_ids is None else position_ids.data, rotary_dim // 2)
        if "caches" not in self.state:
            joint = LinearOp.weight_quantizer(np.stack((cos_cache.data, sin_cache.data)), ctx.config.op_weights)
            self.state["caches"] = joint
        joint = self.state["caches"]
        both, weight_scale = joint.quant(np.stack((cos, sin))), joint.scale
        moved, restore = _rotary_layout(self.centered(q), num_heads)
        acc = rotate(moved, both[0], both[1], int(a.get("interleaved", 0)), rotary_dim,
                     lambda p, f, r, g: p * f + r * g)
        # features past rotary_dim pass through in the input's unit; the rotated ones carry the caches' scale
        unit = np.ones(acc.shape[-1])
        unit[:rotary_dim] = weight_scale
        if rotary_dim == acc.shape[-1]:
            return self.accumulator(ctx, restore(acc), q.scale * float(weight_scale))
        return self.accumulator(ctx, restore(acc), q.scale * _feature_scale(unit, x.shape, num_heads))


def _feature_scale(per_feature, shape, num_heads):
    """A per-feature factor (over the head size) broadcast to the input's own layout."""
    if len(shape) == 4:
        return per_feature.reshape(1, 1, 1, -1)
    return np.tile(per_feature, int(num_heads)).reshape(1, 1, -1)


@OPS.op("RotaryEmbedding", since=23, quantized=QuantizedRotaryEmbedding)
def rotary_embedding(x, cos_cache, sin_cache, /, position_ids=None, *, interleaved=0, num_heads=None,
                     rotary_embedding_dim=0):
    heads, restore, rotary_dim = _rotary_geometry(x, num_heads, rotary_embedding_dim)
    cos, sin = rotary_caches(cos_cache, sin_cache, position_ids, rotary_dim // 2)
    out = rotate(heads, cos, sin, interleaved, rotary_dim, lambda p, f, r, g: p * f + r * g)
    return restore(out).astype(x.dtype)


# -- RMS, group, Lp and mean-variance normalization -------------------------------------------------
def _trailing_axes(axis, ndim):
    axis = axis + ndim if axis < 0 else axis
    if not 0 <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for rank {ndim}")
    return tuple(range(axis, ndim))


class QuantizedRootMeanSquare(QuantizedNormalization):
    """``x / sqrt(mean(x**2) + eps)`` over ``axes``: the layer normalization's steps with the values
    themselves in place of their deviations from the mean (each row keeps its own resolution)."""

    @staticmethod
    def centered_sum(data, slope, offset, axes, count):
        """The values themselves: ``K * q`` and the offset, folded into the integers when it is a whole number
        of steps (an affine input's zero point)."""
        if not np.ndim(offset) and not np.ndim(slope):
            zero_point = -float(offset) / float(slope)
            if zero_point == round(zero_point):
                return (data - int(round(zero_point))) * count, 0.0
        return data * count, offset


class QuantizedRMSNormalization(QuantizedRootMeanSquare):
    def encrypted_forward(self, ctx, inputs):
        x, scale = inputs[0], inputs[1]
        if not scale.is_constant:
            raise QuantizationError(f"{self.where}: scale must be a constant")
        axes = _trailing_axes(int(self.attributes.get("axis", -1)), len(x.shape))
        data, out_q = self.normalize(ctx, x, axes, float(self.attributes.get("epsilon", 1e-5)))
        return self.finish(data, out_q, np.asarray(scale.data, np.float64), None)


@OPS.op("RMSNormalization", since=23, quantized=QuantizedRMSNormalization)
def rms_normalization(x, scale, /, *, axis=-1, epsilon=1e-5, stash_type=1):
    axes = _trailing_axes(axis, x.ndim)
    x64 = x.astype(np.float64)
    mean_square = np.mean(np.square(x64), axis=axes, keepdims=True)
    epsilon = float(np.float32(epsilon))  # the attribute is a float32, its default too
    return (x64 / np.sqrt(mean_square + epsilon) * scale).astype(x.dtype)


def _grouped(x, num_groups):
    """(N, C, ...) as (N, num_groups, C / num_groups * ...)."""
    if x.ndim < 2 or num_groups < 1 or x.shape[1] % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide the {x.shape[1] if x.ndim > 1 else 0} channels")
    return x.reshape(x.shape[0], num_groups, -1)


def _per_channel(values, x_shape, num_groups, per_group):
    """A group's or channel's parameter as a (1, C, 1, ...) array."""
    values = np.asarray(values, np.float64).reshape(-1)
    if per_group:
        values = np.repeat(values, x_shape[1] // num_groups)
    if values.size != x_shape[1]:
        raise ValueError(f"scale and bias must have {num_groups if per_group else x_shape[1]} values, "
                         f"got {values.size // (x_shape[1] // num_groups) if per_group else values.size}")
    return values.reshape((1, -1) + (1,) * (len(x_shape) - 2))


class QuantizedGroupNormalization(QuantizedNormalization):
    """Group normalization: the input's integers regrouped to (N, groups, rest), each group
    normalized as a layer normalization row, then per-channel scale and bias in the next lookup."""

    per_group = False

    def encrypted_forward(self, ctx, inputs):
        x, scale, bias = inputs[0], inputs[1], inputs[2]
        if not (scale.is_constant and bias.is_constant):
            raise QuantizationError(f"{self.where}: scale and bias must be constants")
        groups = int(self.attributes["num_groups"])
        q = ctx.requantize(x)
        regrouped = q.with_data(_grouped(q.data, groups), name=f"{self.bound.name}:groups")
        data, out_q = self.normalize(ctx, regrouped, (2,), float(self.attributes.get("epsilon", 1e-5)))
        shape = q.shape
        return self.finish(data.reshape(shape), out_q, _per_channel(scale.data, shape, groups, self.per_group),
                           _per_channel(bias.data, shape, groups, self.per_group))


def _group_normalization(x, scale, bias, num_groups, epsilon, per_group, dtype):
    """The spec's function body in ``dtype`` (float32 for stash_type=1): a group's variance is
    E[x*x] - E[x]**2, its deviations are divided by sqrt(variance + epsilon)."""
    grouped = _grouped(x, num_groups).astype(dtype)
    mean = np.mean(grouped, axis=2, keepdims=True, dtype=dtype)
    variance = np.mean(grouped * grouped, axis=2, keepdims=True, dtype=dtype) - mean * mean
    with np.errstate(invalid="ignore"):
        normalized = ((grouped - mean) / np.sqrt(variance + dtype.type(epsilon))).reshape(x.shape)
    y = _per_channel(scale, x.shape, num_groups, per_group).astype(dtype) * normalized
    return (y + _per_channel(bias, x.shape, num_groups, per_group).astype(dtype)).astype(x.dtype)


# GroupNormalization-18 (scale and bias per group) is deprecated: the ONNX checker refuses models using it
@OPS.op("GroupNormalization", since=21, quantized=QuantizedGroupNormalization)
def group_normalization(x, scale, bias, /, *, epsilon=1e-5, num_groups, stash_type=1):
    if stash_type != 1:
        raise ValueError(f"stash_type={stash_type} is not supported (only 1: float32 statistics)")
    return _group_normalization(x, scale, bias, num_groups, epsilon, False, np.dtype(np.float32))


class QuantizedMeanVarianceNormalization(QuantizedNormalization):
    """(x - mean) / std over ``axes``: the layer normalization's steps (the 1e-9 added to the standard
    deviation is below the quantized values' resolution; a constant group gives 0 either way)."""

    def encrypted_forward(self, ctx, inputs):
        x = inputs[0]
        axes = tuple(sorted(a % len(x.shape) for a in self.attributes.get("axes", (0, 2, 3))))
        data, out_q = self.normalize(ctx, x, axes, 0.0)
        return self.finish(data, out_q, np.float64(1.0), None)


@OPS.op("MeanVarianceNormalization", since=(9, 13), quantized=QuantizedMeanVarianceNormalization)
def mean_variance_normalization(x, /, *, axes=[0, 2, 3]):  # noqa: B006  (the ONNX default; never mutated)
    if any(not -x.ndim <= a < x.ndim for a in axes):
        raise ValueError(f"axes {list(axes)} are out of range for rank {x.ndim}")
    axes = tuple(sorted({a % x.ndim for a in axes}))
    mean = np.mean(x, axis=axes, keepdims=True)
    # as the spec's function body: E[x**2] - E[x]**2 in the input's type, then 1e-9 added to its root
    variance = np.mean(np.power(x, x.dtype.type(2)), axis=axes, keepdims=True) - np.power(mean, x.dtype.type(2))
    with np.errstate(invalid="ignore"):
        deviation = np.sqrt(variance)
    return ((x - mean) / (deviation + x.dtype.type(1e-9))).astype(x.dtype)


class QuantizedLpNormalization(QuantizedRootMeanSquare):
    """``x / ||x||_p`` along ``axis``. p = 2 is the root-mean-square steps scaled by ``1/sqrt(K)``;
    p = 1: ``|x|`` as exact integers by one lookup, an integer sum, one lookup of the sum to a
    logarithmic code (a resolution relative to each row's own norm) and one two-input lookup."""

    def encrypted_forward(self, ctx, inputs):
        x = inputs[0]
        p = int(self.attributes.get("p", 2))
        axis = int(self.attributes.get("axis", -1)) % len(x.shape)
        if p == 2:
            data, out_q = self.normalize(ctx, x, (axis,), 0.0)
            return self.finish(data, out_q, np.float64(1 / np.sqrt(x.shape[axis])), None)
        name = self.bound.name
        q = ctx.requantize(x)
        zero_point, step = q.zero_point, q.scale
        magnitudes = ctx.lookup(q, lambda d: np.abs(np.asarray(d, np.int64) - zero_point), key=f"{name}:abs")
        total = np.sum(magnitudes, axis=axis, keepdims=True)

        def log_norm(t):
            with np.errstate(divide="ignore"):
                return np.log(step * np.maximum(np.asarray(t, np.float64), 0.0))

        log_q = self.fitted_quantizer(ctx, "log_norm", log_norm(total[total > 0]) if ctx.calibrating else None,
                                      min_span=self.MIN_LOG_VARIANCE_SPAN)
        code = ctx.requantize_to(QValue.lazy(total, log_norm, True, name=f"{name}:norm"), log_q, key=f"{name}:norm")
        out_q = self.fitted_quantizer(
            ctx, "normalized", q.float_value() * np.exp(-log_q.dequant(code)) if ctx.calibrating else None)

        def table(d, c):
            return out_q.quant(q.to_float(d) * np.exp(-log_q.dequant(c)))

        operands = [q.data, backend.broadcast(code, tuple(q.shape))]
        data = backend.multi_lookup(table, *operands)
        ctx.record_multi_lookup(self.bound.node.output[0], operands)
        return QValue.affine(data, out_q.scale, out_q.zero_point)


def check_lp_normalization(inputs, attributes):
    """Load-time check of an LpNormalization node: ``p`` is 1 or 2."""
    if int(attributes.get("p", 2)) not in (1, 2):
        raise ValueError(f"p={attributes.get('p')} must be 1 or 2")


@OPS.op("LpNormalization", since=(1, 22), quantized=QuantizedLpNormalization, validate=check_lp_normalization)
def lp_normalization(x, /, *, axis=-1, p=2):
    if p not in (1, 2):
        raise ValueError(f"p={p} must be 1 or 2")
    norm = np.sum(np.abs(x), axis=axis, keepdims=True) if p == 1 else np.sqrt(
        np.sum(x * x, axis=axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm == 0, x.dtype.type(0), x / norm).astype(x.dtype)


# -- Swish and SwiGLU --------------------------------------------------------------------------------
def _swish(x, alpha):
    """x * sigmoid(alpha * x), computed without overflow for large |alpha * x|."""
    x64 = x.astype(np.float64)
    z = alpha * x64
    gate = np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
    return x64 * gate


@OPS.op("Swish", since=24, quantized=ElementwiseOp)
def swish(x, /, *, alpha=1.0):
    return _swish(x, alpha).astype(x.dtype)


@OPS.op("SwiGLU", since=28, quantized=ElementwiseOp)
def swiglu(a, b, /, *, alpha=1.0):
    if a.shape != b.shape:
        raise ValueError(f"A {a.shape} and B {b.shape} must have the same shape (SwiGLU does not broadcast)")
    return (_swish(a, alpha) * b.astype(np.float64)).astype(a.dtype)


# -- LinearAttention ---------------------------------------------------------------------------------
LINEAR_ATTENTION_RULES = ("linear", "gated", "delta", "gated_delta")


def _per_token_heads(values, batch, steps, heads, width, what):
    """A packed (B, T, heads * width) gate as (B, heads, T, width), float32."""
    if values.ndim != 3 or values.shape[:2] != (batch, steps) or values.shape[2] != heads * width:
        raise ValueError(f"{what} must have shape ({batch}, {steps}, {heads * width}), got {values.shape}")
    return values.reshape(batch, steps, heads, width).transpose(0, 2, 1, 3).astype(np.float32)


def _linear_attention_gates(decay, beta, batch, steps, kv_heads, key_size, update_rule):
    """The decay (B, H_kv, T, 1 or d_k) and update rate (B, H_kv or 1, T, 1) the rule needs, float32;
    a rule given a gate it does not use, or missing one it does, is refused."""
    gated = update_rule in ("gated", "gated_delta")
    corrected = update_rule in ("delta", "gated_delta")
    if gated != (decay is not None):
        raise ValueError(f"update_rule {update_rule!r} {'needs' if gated else 'takes no'} decay input")
    if corrected != (beta is not None):
        raise ValueError(f"update_rule {update_rule!r} {'needs' if corrected else 'takes no'} beta input")
    if decay is not None:
        per_key = decay.ndim == 3 and decay.shape[-1] == kv_heads * key_size and key_size != 1
        decay = _per_token_heads(decay, batch, steps, kv_heads, key_size if per_key else 1, "decay (per head or "
                                 f"per key dimension: last axis {kv_heads} or {kv_heads * key_size})")
    if beta is not None:
        rate_heads = beta.shape[-1] if beta.ndim == 3 and beta.shape[-1] == 1 else kv_heads
        beta = _per_token_heads(beta, batch, steps, rate_heads, 1, "beta")
    return decay, beta


def _linear_attention(query, key, value, past_state, decay, beta, *, kv_num_heads, q_num_heads, scale,
                      update_rule):
    """The recurrence the spec defines, run token by token in float32: the state (B, H_kv, d_k, d_v)
    decays by ``exp(decay)``, the value is corrected by what the state already recalls for the key
    (delta rules, at rate ``beta``), the key-value outer product is added, and each query head reads
    its key/value head's state. Returns (output in the query's dtype, present state in the past
    state's dtype, or the query's without one)."""
    if update_rule not in LINEAR_ATTENTION_RULES:
        raise ValueError(f"update_rule {update_rule!r} is not one of {', '.join(LINEAR_ATTENTION_RULES)}")
    if q_num_heads < 1 or kv_num_heads < 1 or q_num_heads % kv_num_heads:
        raise ValueError(f"q_num_heads={q_num_heads} must be a positive multiple of kv_num_heads={kv_num_heads}")
    if not (query.ndim == key.ndim == value.ndim == 3):
        raise ValueError(f"query, key and value must be 3-D (B, T, heads * size), got ranks "
                         f"{query.ndim}, {key.ndim}, {value.ndim}")
    batch, steps = query.shape[:2]
    if key.shape[:2] != (batch, steps) or value.shape[:2] != (batch, steps):
        raise ValueError(f"query {query.shape}, key {key.shape} and value {value.shape} disagree on (B, T)")
    q = _to_heads(query, q_num_heads, "query").astype(np.float32)
    k = _to_heads(key, kv_num_heads, "key").astype(np.float32)
    v = _to_heads(value, kv_num_heads, "value").astype(np.float32)
    key_size, value_size = q.shape[3], v.shape[3]
    if k.shape[3] != key_size:
        raise ValueError(f"key's head size {k.shape[3]} differs from query's {key_size}")
    decay, beta = _linear_attention_gates(decay, beta, batch, steps, kv_num_heads, key_size, update_rule)
    state_shape = (batch, kv_num_heads, key_size, value_size)
    if past_state is None:
        state, state_dtype = np.zeros(state_shape, np.float32), query.dtype
    else:
        if past_state.shape != state_shape:
            raise ValueError(f"past_state must have shape {state_shape}, got {past_state.shape}")
        state, state_dtype = past_state.astype(np.float32), past_state.dtype
    factor = np.float32(1 / np.sqrt(key_size) if not scale else scale)
    group = q_num_heads // kv_num_heads
    outputs = np.empty((batch, q_num_heads, steps, value_size), np.float32)
    for t in range(steps):
        if decay is not None:
            state = state * np.exp(decay[:, :, t, :])[..., None]
        k_t, v_t = k[:, :, t, :], v[:, :, t, :]
        if beta is not None:
            recalled = np.einsum("bhkv,bhk->bhv", state, k_t)
            v_t = beta[:, :, t, :] * (v_t - recalled)
        state = state + k_t[..., :, None] * v_t[..., None, :]
        shared = np.repeat(state, group, axis=1) if group > 1 else state
        outputs[:, :, t, :] = factor * np.einsum("bhk,bhkv->bhv", q[:, :, t, :], shared)
    output = outputs.transpose(0, 2, 1, 3).reshape(batch, steps, q_num_heads * value_size)
    return output.astype(query.dtype), state.astype(state_dtype)


class QuantizedLinearAttention(ConstantOnlyOp):
    """LinearAttention on encrypted values is refused: its recurrence multiplies encrypted values
    together token after token."""

    client_side = False  # weights or model computation: not the client's to run

    def encrypted_forward(self, ctx, inputs):
        raise QuantizationError(
            f"{self.where}: LinearAttention cannot run on encrypted values: its state is a running product "
            "of encrypted keys, values and decays. Export the model's linear attention as primitive ops "
            "(e.g. a torch model exported with opset 26 or lower, or the op's ONNX function body inlined), "
            "or compute the attention outside the encrypted part of the model")


@OPS.op("LinearAttention", since=27, quantized=QuantizedLinearAttention)
def linear_attention(query, key, value, /, past_state=None, decay=None, beta=None, *, chunk_size=64, kv_num_heads,
                     q_num_heads, scale=0.0, update_rule="gated_delta"):
    """``chunk_size`` only tunes chunk-parallel kernels; the recurrence runs token by token."""
    return _linear_attention(query, key, value, past_state, decay, beta, kv_num_heads=kv_num_heads,
                             q_num_heads=q_num_heads, scale=scale, update_rule=update_rule)


# -- CausalConvWithState -----------------------------------------------------------------------------
CAUSAL_CONV_ACTIVATIONS = ("none", "silu", "swish")


def _causal_padded(x, weight, bias, past_state, activation):
    """Checks the node's values and returns the input behind its carry, (B, C, k - 1 + L)."""
    if activation not in CAUSAL_CONV_ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {', '.join(CAUSAL_CONV_ACTIVATIONS)}")
    if x.ndim != 3:
        raise ValueError(f"input must be 3-D (batch, channels, length), got shape {x.shape}")
    batch, channels, _ = x.shape
    if weight.ndim != 3 or weight.shape[:2] != (channels, 1) or weight.shape[2] < 1:
        raise ValueError(f"weight must have shape ({channels}, 1, k) with k >= 1, got {weight.shape}")
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f"bias must have shape ({channels},), got {bias.shape}")
    carry = (batch, channels, weight.shape[2] - 1)
    if past_state is None:
        past_state = np.zeros(carry, x.dtype)
    elif past_state.shape != carry:
        raise ValueError(f"past_state must have shape {carry}, got {past_state.shape}")
    return np.concatenate((past_state.astype(x.dtype, copy=False), x), axis=2)


def _silu(values):
    """x * sigmoid(x) of float values."""
    return _swish(np.asarray(values, np.float64), 1.0)


class QuantizedCausalConvWithState(LinearOp):
    """CausalConvWithState with constant weight and bias: the carry and the input on one integer
    grid, concatenated; the present state is their last k - 1 integers (a layout), the output an
    integer depthwise convolution (Conv with group = channels), its bias folded in, and SiLU
    composed into the next lookup.

    The grid is the input's own when the carry is absent; with an encrypted carry and input both are
    brought to one grid fitted on their joint range (one lookup each, none when they already share a
    grid). A constant carry is refused."""

    weight_inputs = ("weight",)

    def sequence_grid(self, ctx, parts):
        """(scale, zero point) the carry and the input share, and each part's integers on it."""
        encrypted = [v for v in parts if v is not None and not v.is_constant]
        if len(encrypted) == 1:
            q = ctx.requantize(encrypted[0])
            scale, zero_point = q.scale, q.zero_point
            grid_of = {id(encrypted[0]): q.data}
        else:
            first, second = encrypted
            if first.is_affine and second.is_affine and (first.scale, first.zero_point) == (
                    second.scale, second.zero_point):
                scale, zero_point = first.scale, first.zero_point
                grid_of = {id(encrypted[0]): first.data, id(encrypted[1]): second.data}
            else:
                joint = None
                if ctx.calibrating:
                    joint = np.concatenate([v.float_value().reshape(-1) for v in encrypted])
                grid = self.fitted_quantizer(ctx, "sequence", joint)
                scale, zero_point = grid.scale, grid.zero_point
                grid_of = {id(v): ctx.requantize_to(v, grid, key=f"{self.bound.name}:{i}")
                           for i, v in enumerate(encrypted)}
        integers = []
        for v in parts:
            if v is None:
                integers.append(None)
            else:
                integers.append(grid_of[id(v)])
        return scale, zero_point, integers

    def encrypted_forward(self, ctx, inputs):
        x, weight = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 else None
        past = inputs[3] if len(inputs) > 3 else None
        if not weight.is_constant or (bias is not None and not bias.is_constant):
            raise QuantizationError(f"{self.where}: weight and bias must be constants; the input and "
                                    "past_state may be encrypted")
        activation = self.attributes.get("activation", "none")
        if past is not None and past.is_constant:
            # on the input's grid a constant carry outside the input's calibrated range would be clipped away
            raise QuantizationError(
                f"{self.where}: past_state is a constant while the input is encrypted; give past_state as a "
                "model input (it is then quantized with the input on one grid fitted to both), or export the "
                "model without a carried state")
        _causal_padded(np.zeros(x.shape), np.asarray(weight.data), None if bias is None else np.asarray(bias.data),
                       None if past is None else np.zeros(past.shape), activation)
        scale, zero_point, (x_int, past_int) = self.sequence_grid(ctx, [x, past])
        batch, channels, _ = x.shape
        kernel = weight.shape[2]
        if past_int is None:
            past_int = np.full((batch, channels, kernel - 1), zero_point, np.int64)
        padded = np.concatenate((past_int, x_int), axis=2)
        present = QValue.affine(padded[:, :, padded.shape[2] - (kernel - 1):], scale, zero_point)
        wq, w_scale = self.weights(ctx, "W", np.asarray(weight.data), weight.name, channel_axes=(0,))
        acc_scale = scale * (w_scale if np.size(w_scale) == 1 else np.asarray(w_scale).reshape(-1))
        integer_bias = self.integer_bias("B", None if bias is None else bias.data, acc_scale)
        float_bias = None
        if bias is not None and integer_bias is None:
            float_bias = np.asarray(bias.data, np.float64).reshape(1, -1, 1)
        centered = padded - zero_point if zero_point else padded
        acc = backend.conv(centered, wq, integer_bias, pads=[0, 0], strides=[1], dilations=[1], group=channels,
                           clear_conv=conv_nd)
        out = self.accumulator(ctx, acc, acc_scale if np.size(acc_scale) == 1 else np.reshape(acc_scale, (1, -1, 1)),
                               float_bias)
        if activation != "none":
            linear = out.to_float
            out = QValue.lazy(out.data, lambda q: _silu(linear(q)), out.uniform)
        return out, present


@OPS.op("CausalConvWithState", since=27, quantized=QuantizedCausalConvWithState)
def causal_conv_with_state(input, weight, /, bias=None, past_state=None, *, activation="none"):  # noqa: A002
    """A depthwise convolution of each channel with its own kernel over the carry and the input,
    bias added, rounded to the input's dtype, then SiLU in float32 when asked; the present state is
    the last k - 1 positions of carry and input."""
    padded = _causal_padded(input, weight, bias, past_state, activation)
    kernel, length = weight.shape[2], input.shape[2]
    taps = weight[:, 0, :].astype(np.float64)
    sequence = padded.astype(np.float64)
    conv = sum(taps[:, j, None] * sequence[:, :, j:j + length] for j in range(kernel))
    if bias is not None:
        conv = conv + bias.astype(np.float64)[:, None]
    out = conv.astype(input.dtype)
    if activation != "none":
        out = _swish(out.astype(np.float32), 1.0).astype(np.float32).astype(input.dtype)
    return out, padded[:, :, padded.shape[2] - (kernel - 1):]


# -- FlexAttention (ai.onnx.preview) -----------------------------------------------------------------
def _flex_softmax_dtype(dtype, softmax_precision):
    """The scores' dtype: ``softmax_precision`` when given, else float32 (double for double inputs)."""
    if softmax_precision is not None:
        try:
            chosen = np.dtype(helper.tensor_dtype_to_np_dtype(softmax_precision))
        except (KeyError, ValueError, TypeError):
            chosen = None
        if chosen is None or chosen.kind != "f" and chosen.name != "bfloat16":
            raise ValueError(f"softmax_precision={softmax_precision} is not a floating-point ONNX type")
        return chosen
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _modified(modifier, values, what):
    """``values`` through a score_mod / prob_mod subgraph: one tensor in, one of the same shape out
    (held in the values' dtype)."""
    if len(modifier.input_names) != 1 or len(modifier.output_names) != 1:
        raise ValueError(f"{what} must take one input and return one output, it takes "
                         f"{len(modifier.input_names)} and returns {len(modifier.output_names)}")
    (result,) = modifier(values)
    result = np.asarray(result)
    if result.shape != values.shape:
        raise ValueError(f"{what} must keep the shape {values.shape}, it returned {result.shape}")
    return result.astype(values.dtype, copy=False)


class QuantizedFlexAttention(ConstantOnlyOp):
    """FlexAttention on encrypted values is refused: export the attention as primitive ops."""

    client_side = False  # weights or model computation: not the client's to run

    def encrypted_forward(self, ctx, inputs):
        raise QuantizationError(
            f"{self.where}: FlexAttention cannot run on encrypted values as one fused node; export the "
            "model's attention as MatMul, Softmax and MatMul nodes with the score and probability "
            "modifications as ordinary nodes between them (e.g. torch.nn.functional.scaled_dot_product_attention "
            "exported with opset 22 or lower), whose quantized forms are supported")


@OPS.op("FlexAttention", since=1, domain="ai.onnx.preview", quantized=QuantizedFlexAttention)
def flex_attention(q, k, v, /, *, prob_mod: Subgraph | None = None, scale=None, score_mod: Subgraph | None = None,
                   softmax_precision=None):
    """Q K^T (each scaled by sqrt(scale), in the inputs' dtype), ``score_mod``, a row softmax and
    ``prob_mod`` in the softmax precision, then the product with V cast back to V's dtype."""
    if not (q.ndim == k.ndim == v.ndim == 4):
        raise ValueError(f"Q, K and V must be 4-D, got shapes {q.shape}, {k.shape}, {v.shape}")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0]:
        raise ValueError(f"K {k.shape} and V {v.shape} must agree on batch, heads and sequence, Q {q.shape} "
                         "on the batch")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"Q's head size {q.shape[3]} differs from K's {k.shape[3]}")
    heads_q, heads_kv = q.shape[1], k.shape[1]
    if heads_q != heads_kv:
        if heads_kv == 0 or heads_q % heads_kv:
            raise ValueError(f"{heads_q} query heads cannot share {heads_kv} key/value heads")
        k = np.repeat(k, heads_q // heads_kv, axis=1)
        v = np.repeat(v, heads_q // heads_kv, axis=1)
    if scale is None:
        scale = 1 / np.sqrt(q.shape[3])
    root = q.dtype.type(np.sqrt(np.float32(scale)))
    precision = _flex_softmax_dtype(q.dtype, softmax_precision)
    scores = _matmul(q * root, np.swapaxes(k * root, -1, -2)).astype(precision)
    if score_mod is not None:
        scores = _modified(score_mod, scores, "score_mod")
    with np.errstate(invalid="ignore"):  # a row the score_mod masks entirely is NaN, as ONNX Softmax makes it
        exps = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
        probabilities = exps / np.sum(exps, axis=-1, keepdims=True)
    if prob_mod is not None:
        probabilities = _modified(prob_mod, probabilities, "prob_mod")
    return _matmul(probabilities, v.astype(precision)).astype(v.dtype)
