"""Property-test cases for sequence and optional ops (sequences are lists of arrays)."""

import numpy as np
from cml_core.testing import Example, OpCase, OptionalInput, float_arrays, int_arrays, shapes
from hypothesis import strategies as st
from onnx import TensorProto, helper

DTYPES = (np.float32, np.int64)


def _arrays(draw, dtype, shape=None):
    if np.dtype(dtype).kind == "i":
        return draw(int_arrays(shape if shape is not None else shapes(max_dims=3, max_side=3)))
    return draw(float_arrays(shape if shape is not None else shapes(max_dims=3, max_side=3), dtype))


@st.composite
def _sequence(draw, min_size=1, max_size=4, dtype=None, shape=None):
    dtype = dtype or draw(st.sampled_from(DTYPES))
    rank = len(shape) if shape is not None else draw(st.integers(0, 2))
    size = draw(st.integers(min_size, max_size))
    return [_arrays(draw, dtype, shape if shape is not None else shapes(rank, rank, max_side=3)) for _ in range(size)]


@st.composite
def _construct(draw, opset):
    dtype = draw(st.sampled_from(DTYPES))
    items = [_arrays(draw, dtype) for _ in range(draw(st.integers(1, 3)))]
    return Example(items, constant_inputs=draw(st.sampled_from([(), (0,)])))


@st.composite
def _empty(draw, opset):
    dtype = draw(st.sampled_from([None, TensorProto.FLOAT, TensorProto.INT64]))
    return Example([], {} if dtype is None else {"dtype": dtype})


def _index(draw, length, end_allowed):
    high = length if end_allowed else length - 1
    return np.array(draw(st.integers(-length, high)), np.int64)


@st.composite
def _at(draw, opset):
    items = draw(_sequence())
    return Example([items, _index(draw, len(items), False)], constant_inputs=draw(st.sampled_from([(), (1,), (0, 1)])))


@st.composite
def _insert(draw, opset):
    items = draw(_sequence())
    tensor = _arrays(draw, items[0].dtype, shapes(items[0].ndim, items[0].ndim, max_side=3))
    position = None if draw(st.booleans()) else _index(draw, len(items), True)
    return Example([items, tensor, position])


@st.composite
def _erase(draw, opset):
    items = draw(_sequence())
    position = None if draw(st.booleans()) else _index(draw, len(items), False)
    return Example([items, position])


@st.composite
def _length(draw, opset):
    return Example([draw(_sequence())])


@st.composite
def _split(draw, opset):
    x = _arrays(draw, draw(st.sampled_from(DTYPES)), shapes(1, 3, max_side=4))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    length = x.shape[axis]
    kind = draw(st.sampled_from(["none", "scalar", "list"]))
    attributes = {"axis": axis}
    if kind == "none":
        attributes["keepdims"] = draw(st.integers(0, 1))
        return Example([x], attributes)
    if kind == "scalar":
        split = np.array(draw(st.integers(1, length)), np.int64)
    else:
        cuts = sorted(draw(st.lists(st.integers(0, length), max_size=3)))
        split = np.diff([0, *cuts, length]).astype(np.int64)
    return Example([x, split], attributes, constant_inputs=draw(st.sampled_from([(), (1,)])))


@st.composite
def _concat(draw, opset):
    new_axis = draw(st.integers(0, 1))
    base = list(draw(shapes(0 if new_axis else 1, 3, max_side=3)))
    rank = len(base) + new_axis
    axis = draw(st.integers(-rank, rank - 1))
    dtype = draw(st.sampled_from(DTYPES))
    items = []
    for _ in range(draw(st.integers(1, 3))):
        shape = list(base)
        if not new_axis:
            shape[axis % rank] = draw(st.integers(1, 3))
        items.append(_arrays(draw, dtype, tuple(shape)))
    return Example([items], {"axis": axis, "new_axis": new_axis})


@st.composite
def _map(draw, opset):
    """SequenceMap whose body adds an additional input (a sequence or a tensor) and gives each shape."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(shapes(max_dims=2, max_side=3))
    items = draw(_sequence(dtype=dtype, shape=shape))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    extra = draw(st.sampled_from(["none", "tensor", "sequence"]))
    body_inputs = [helper.make_tensor_value_info("item", elem, list(shape))]
    nodes = [helper.make_node("Shape", ["item"], ["item_shape"])]
    outputs = [helper.make_tensor_value_info("item_shape", TensorProto.INT64, [len(shape)])]
    inputs = [items]
    if extra != "none":
        other = (draw(_sequence(len(items), len(items), dtype, shape)) if extra == "sequence"
                 else _arrays(draw, dtype, shape))
        inputs.append(other)
        body_inputs.append(helper.make_tensor_value_info("other", elem, list(shape)))
        nodes.append(helper.make_node("Add", ["item", "other"], ["total"]))
        outputs.append(helper.make_tensor_value_info("total", elem, list(shape)))
    body = helper.make_graph(nodes, "map_body", body_inputs, outputs)
    return Example(inputs, {"body": body}, n_outputs=len(outputs))


@st.composite
def _optional(draw, opset):
    if draw(st.booleans()):
        return Example([], {"type": helper.make_tensor_type_proto(TensorProto.FLOAT, [])})
    return Example([_arrays(draw, draw(st.sampled_from(DTYPES)))])


def _optional_input(draw):
    x = _arrays(draw, np.float32)
    return OptionalInput(None if draw(st.booleans()) else x, np.float32, x.ndim)


@st.composite
def _has_element(draw, opset):
    if opset == 15:
        return Example([_optional_input(draw)])
    return Example([draw(st.sampled_from([None, _optional_input(draw), _arrays(draw, np.float32), draw(_sequence())]))])


@st.composite
def _get_element(draw, opset):
    x = _arrays(draw, draw(st.sampled_from(DTYPES)))
    if opset == 15 or draw(st.booleans()):
        return Example([OptionalInput(x, x.dtype, x.ndim)])
    return Example([draw(st.sampled_from([x, draw(_sequence())]))])


# Quantized twins: these ops run only on constants (the quantized program holds no sequence or optional).
# An op reading a sequence or optional is given only constants, which fold at load; an op making one
# from float tensors is given encrypted float tensors of one shape, and must be refused.


def _constants(examples):
    """``examples`` with every input an initializer (or made from initializers)."""
    def made_constant(opset):
        return examples(opset).map(lambda e: Example(e.inputs, e.attributes, tuple(
            i for i, x in enumerate(e.inputs) if x is not None), e.n_outputs))
    return made_constant


@st.composite
def _quantizable_construct(draw, opset):
    shape = draw(shapes(max_dims=2, max_side=3))
    return Example([draw(float_arrays(shape)) for _ in range(draw(st.integers(1, 3)))])


@st.composite
def _quantizable_split(draw, opset):
    return Example([draw(float_arrays(shapes(1, 3, max_side=3)))], {"keepdims": draw(st.integers(0, 1))})


@st.composite
def _quantizable_optional(draw, opset):
    """A float tensor, encrypted (its optional must be refused) where the op takes a tensor, else a constant optional."""
    x = draw(float_arrays(shapes(max_dims=2, max_side=3)))
    return Example([x])


def _tensor_or_constant_optional(opset):
    if opset == 15:
        return st.builds(lambda x: Example([OptionalInput(x, x.dtype, x.ndim)], constant_inputs=(0,)),
                         float_arrays(shapes(max_dims=2, max_side=3)))
    return _quantizable_optional(opset)


CASES = [
    OpCase("SequenceConstruct", _construct, quantizable=_quantizable_construct),
    OpCase("SequenceEmpty", _empty),
    OpCase("SequenceAt", _at, quantizable=_constants(_at)),
    OpCase("SequenceInsert", _insert, quantizable=_constants(_insert)),
    OpCase("SequenceErase", _erase, quantizable=_constants(_erase)),
    OpCase("SequenceLength", _length, quantizable=_constants(_length)),
    OpCase("SplitToSequence", _split, quantizable=_quantizable_split),
    OpCase("ConcatFromSequence", _concat, quantizable=_constants(_concat)),
    OpCase("SequenceMap", _map, quantizable=_constants(_map)),
    OpCase("Optional", _optional, quantizable=_quantizable_optional),
    OpCase("OptionalHasElement", _has_element, quantizable=_tensor_or_constant_optional),
    OpCase("OptionalGetElement", _get_element, quantizable=_tensor_or_constant_optional),
]
