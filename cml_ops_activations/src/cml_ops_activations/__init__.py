"""cml plugin: element-wise activations and math functions."""

from cml_core import hookimpl

from . import activations, math  # noqa: F401  (modules register their ops on OPS when imported)
from ._opset import OPS


@hookimpl
def cml_register_ops(registry):  # type: ignore[no-untyped-def]
    registry.add(OPS)
