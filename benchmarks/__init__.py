"""Benchmarks of cml (``nox -s bench`` or ``./dev bench``); never part of the test run."""

import os

# The float path is compared with onnxruntime on one thread: numpy's BLAS gets one thread too (an
# idle second thread spinning beside a busy core costs more than it brings on small products).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
