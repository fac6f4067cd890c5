"""In-place forms of element-wise arithmetic: what Add, Sub, Mul and Div compute, written over their first
input when the interpreter hands it over (see ``OpSet.op``'s ``inplace``): a residual sum or a gate's product
then costs no new array."""

import numpy as np

from ._opset import OPS
from .arithmetic import add, div, mul, sub


def _fits(a, b):
    """Whether ``a op b`` can be written over ``a``: a float ``a``, ``b`` of its dtype broadcasting into its shape."""
    if not isinstance(b, np.ndarray) or b.dtype != a.dtype or a.dtype.kind != "f" or b.ndim > a.ndim:
        return False
    return b.shape == a.shape or all(db in (1, da) for da, db in zip(a.shape[a.ndim - b.ndim :], b.shape))


def add_into(a, b, /):
    return np.add(a, b, out=a) if _fits(a, b) else add(a, b)


def sub_into(a, b, /):
    return np.subtract(a, b, out=a) if _fits(a, b) else sub(a, b)


def mul_into(a, b, /):
    return np.multiply(a, b, out=a) if _fits(a, b) else mul(a, b)


def div_into(a, b, /):
    if not _fits(a, b):
        return div(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b, out=a)


OPS.attach(add, inplace=add_into)
OPS.attach(sub, inplace=sub_into)
OPS.attach(mul, inplace=mul_into)
OPS.attach(div, inplace=div_into)
