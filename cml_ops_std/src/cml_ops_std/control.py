"""Control flow: If, Loop and Scan, whose bodies are subgraphs run by the interpreter."""

from ._opset import OPS  # noqa: F401
