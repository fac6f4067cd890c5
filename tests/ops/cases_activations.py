"""Property-test cases for cml-ops-activations: one ``OpCase`` per op type."""

import numpy as np
from cml_core.testing import Example, OpCase, float32s, float_arrays, int_arrays, shapes
from hypothesis import strategies as st

FLOATS = (np.float32, np.float64)


@st.composite
def _unary(draw, low=-10.0, high=10.0, attributes=None, dtypes=FLOATS, required=()):
    """``required``: attribute names always drawn (the others are drawn or left out)."""
    dtype = draw(st.sampled_from(dtypes))
    attributes = attributes or {}
    attrs = draw(st.fixed_dictionaries({k: v for k, v in attributes.items() if k in required},
                                       optional={k: v for k, v in attributes.items() if k not in required}))
    if np.dtype(dtype).kind == "i":
        return Example([draw(int_arrays(dtype=dtype))], attrs)
    return Example([draw(float_arrays(dtype=dtype, min_value=low, max_value=high))], attrs)


@st.composite
def _special_values(draw, attributes=None):
    x = draw(float_arrays(dtype=np.float32))
    flat = x.reshape(-1)
    for i in range(flat.size):
        if draw(st.integers(0, 3)) == 0:
            flat[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return Example([x], draw(st.fixed_dictionaries({}, optional=attributes or {})))


@st.composite
def _prelu(draw, opset):
    x = draw(float_arrays(shapes(min_dims=1, max_dims=4)))
    if opset < 7 and x.ndim >= 2 and x.shape.count(x.shape[1]) == 1 and x.shape[-1] not in (1, x.shape[1]) \
            and draw(st.booleans()):
        # before opset 7 a slope of the channel count's size applies per channel (axis 1); the oracle
        # (the ONNX reference evaluator) does so where numpy's broadcasting fails
        slope = draw(float_arrays((x.shape[1],), min_value=-2, max_value=2))
        return Example([x, slope], constant_inputs=(1,))  # an encrypted slope would gain a batch axis
    # the slope broadcasts to x (unidirectional): a suffix of x's shape, with some dims 1
    rank = draw(st.integers(0, x.ndim))
    slope_shape = tuple(d if draw(st.booleans()) else 1 for d in x.shape[x.ndim - rank:])
    slope = draw(float_arrays(slope_shape, min_value=-2, max_value=2))
    # before opset 7 the quantized form takes a constant slope only (an encrypted one is refused)
    return Example([x, slope], constant_inputs=(1,) if opset < 7 else draw(st.sampled_from([(1,), ()])))


def _alpha(low=-3.0, high=3.0):
    return float32s(low, high)


def _case(op_type, quantizable=None, opset_1=None, **kwargs):
    """A unary op's case; ``quantizable`` overrides ``_unary``'s arguments for the quantized twin's
    examples (float dtypes, a domain the quantized inputs stay inside). At opset 1 the op takes
    floats only, and ``opset_1`` overrides the arguments there."""

    def at(opset, overrides=None):
        arguments = {**kwargs, **(overrides or {})}
        if opset < 6:
            arguments = {**arguments, "dtypes": tuple(d for d in arguments.get("dtypes", FLOATS)
                                                      if np.dtype(d).kind == "f"), **(opset_1 or {})}
        return _unary(**arguments)

    examples = None if quantizable is None else (lambda opset: at(opset, quantizable))
    return OpCase(op_type, lambda opset: at(opset), quantizable=examples)


# quantized inputs move by up to half a step past the drawn values (at 4 bits, 1/30 of their
# range): the quantized twins' examples keep clear of the domain's edges by more than that
_INSIDE_UNIT = {"low": -0.9, "high": 0.9}


_IS_INF_ATTRIBUTES = {"detect_negative": st.integers(0, 1), "detect_positive": st.integers(0, 1)}

CASES = [
    _case("Abs", dtypes=FLOATS + (np.int32, np.int64), quantizable={"dtypes": FLOATS}),
    _case("Acos", low=-1.2, high=1.2, quantizable=_INSIDE_UNIT),
    _case("Acosh", low=0.9, high=10.0, quantizable={"low": 1.5}),
    _case("Asin", low=-1.2, high=1.2, quantizable=_INSIDE_UNIT),
    _case("Asinh"),
    _case("Atan"),
    _case("Atanh", low=-1.1, high=1.1, quantizable=_INSIDE_UNIT),
    _case("Celu", attributes={"alpha": _alpha(0.1, 3.0)}, dtypes=(np.float32,)),  # the schema allows float only
    _case("Cos"),
    _case("Cosh", low=-8.0, high=8.0),
    _case("Elu", attributes={"alpha": _alpha()}),
    _case("Erf", low=-4.0, high=4.0, dtypes=(np.float32,)),  # no float64 kernel in onnxruntime; the fallback evaluator approximates erf
    _case("Exp", low=-20.0, high=20.0),
    _case("HardSigmoid", attributes={"alpha": _alpha(), "beta": _alpha()}),
    _case("LeakyRelu", attributes={"alpha": _alpha()}),
    # from 0.5 to 10, the lowest input is above half a step (its quantized value is never 0)
    _case("Log", low=-1.0, high=100.0, quantizable={"low": 0.5, "high": 10.0}),
    _case("Relu"),
    # Selu-1's defaults (1.6732, 1.0507) differ from 6's, and the oracle at opset 1 (the ONNX reference
    # evaluator) uses 6's: both attributes are given there
    _case("Selu", attributes={"alpha": _alpha(0.1, 3.0), "gamma": _alpha(0.1, 3.0)},
          opset_1={"required": ("alpha", "gamma")}),
    _case("Sigmoid", low=-50.0, high=50.0),
    _case("Sin"),
    _case("Sinh", low=-8.0, high=8.0),
    _case("Softplus", low=-50.0, high=50.0),
    _case("Tan", low=-1.5, high=1.5),
    _case("Tanh"),
    _case("ThresholdedRelu", attributes={"alpha": _alpha()}),
    _case("Neg", dtypes=FLOATS + (np.int32, np.int64), quantizable={"dtypes": FLOATS}),
    _case("Sqrt", low=-1.0, high=100.0, quantizable={"low": 0.0}),  # zero is on every quantization grid
    _case("Reciprocal", low=0.1, high=10.0),
    _case("Round"),
    _case("Floor"),
    _case("Ceil"),
    _case("Sign", dtypes=FLOATS + (np.int64,), quantizable={"dtypes": FLOATS}),
    # integers stand for finite values only: the quantized twins see finite inputs
    OpCase("IsNaN", lambda opset: _special_values(), quantizable=lambda opset: _unary(dtypes=(np.float32,))),
    OpCase("IsInf", lambda opset: _special_values(_IS_INF_ATTRIBUTES),
           quantizable=lambda opset: _unary(attributes=_IS_INF_ATTRIBUTES, dtypes=(np.float32,))),
    _case("Softsign", dtypes=(np.float32,)),  # no float64 kernel in onnxruntime, and the fallback evaluator fails on it
    _case("HardSwish", dtypes=(np.float32,)),
    _case("Mish", dtypes=(np.float32,)),
    _case("Gelu", attributes={"approximate": st.sampled_from(["none", "tanh"])}, dtypes=(np.float32,)),
    OpCase("PRelu", _prelu),
    _case("Shrink", attributes={"bias": _alpha(), "lambd": _alpha(0.0, 3.0)}, dtypes=(np.float32,)),  # float64: no onnxruntime kernel
]
