"""The op set this plugin fills, and the domain its ops belong to."""

from cml_core import OpSet

ML_DOMAIN = "ai.onnx.ml"
OPS = OpSet()
