"""cml plugin: arithmetic, linear algebra, comparison and shape ops."""

from cml_core import hookimpl

from . import arithmetic, conversion, layout, linalg, normalization, pooling, qdq, reductions, shape  # noqa: F401  (modules register their ops on OPS when imported)
from ._opset import OPS


@hookimpl
def cml_register_ops(registry):  # type: ignore[no-untyped-def]
    registry.add(OPS)
