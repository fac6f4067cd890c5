"""cml plugin: the QONNX quantization dialect (``Quant``/``IntQuant``, ``BipolarQuant``, ``Trunc``).

The ops live in ``qonnx.custom_op.general`` and, for older Brevitas exports, in ``onnx.brevitas``.
"""

from cml_core import hookimpl

from . import quant, trunc  # noqa: F401  (modules register their ops on OPS when imported)
from ._opset import OPS


@hookimpl
def cml_register_ops(registry):  # type: ignore[no-untyped-def]
    registry.add(OPS)
