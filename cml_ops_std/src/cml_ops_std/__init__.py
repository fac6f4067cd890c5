"""cml plugin: arithmetic, linear algebra, comparison and shape ops."""

from cml_core import hookimpl

from . import (  # noqa: F401  (modules register their ops on OPS when imported)
    arithmetic,
    control,
    conversion,
    decoding,
    image,
    indexing,
    inplace,
    layout,
    linalg,
    losses,
    normalization,
    numeric,
    pooling,
    qdq,
    recurrent,
    reductions,
    sequence,
    shape,
    strings,
    transformer,
)
from ._opset import OPS


@hookimpl
def cml_register_ops(registry):  # type: ignore[no-untyped-def]
    registry.add(OPS)
