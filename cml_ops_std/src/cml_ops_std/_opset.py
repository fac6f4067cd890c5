"""The op collection this plugin registers; op modules add to it with ``@OPS.op(...)``."""

from cml_core import OpSet

OPS = OpSet()
