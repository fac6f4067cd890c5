"""The op collection this plugin registers, and the two domains its ops live in."""

from cml_core import OpSet

OPS = OpSet()

#: The QONNX dialect's domain; Brevitas 0.13 imports it at version 2.
QONNX_DOMAIN = "qonnx.custom_op.general"
#: The domain older Brevitas exports (before QONNX got its own name) wrote the same ops into, at version 1.
BREVITAS_DOMAIN = "onnx.brevitas"
