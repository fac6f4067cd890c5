"""Element-wise functions of several numpy passes, run a cache-sized chunk at a time: each pass then reads
what the previous one wrote from the CPU's cache instead of memory."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: elements evaluated at once (128 KiB of float32 per temporary)
CHUNK = 1 << 15


def chunked(x: np.ndarray, out: np.ndarray, step: Callable[[np.ndarray, np.ndarray], object]) -> np.ndarray:
    """``step(x_part, out_part)`` over matching 1-D parts of ``x`` and ``out`` (arrays of one shape; ``out``
    may be ``x``): ``step`` writes the function of ``x_part`` into ``out_part``. Returns ``out``."""
    flat, result = memory_order(x, out)
    if result is None:  # layouts that differ: through a contiguous result
        contiguous = np.empty(x.shape, out.dtype)
        chunked(np.ascontiguousarray(x), contiguous, step)
        out[...] = contiguous
        return out
    for start in range(0, flat.size, CHUNK):
        step(flat[start : start + CHUNK], result[start : start + CHUNK])
    return out


def memory_order(x: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` and ``out`` as 1-D views walking both in the same element order, the order of ``x``'s memory
    (a transposed view included); ``out``'s is ``None`` when its memory is not laid out like ``x``'s."""
    if x.flags.c_contiguous and out.flags.c_contiguous:
        return x.reshape(-1), out.reshape(-1)
    order = np.argsort([-abs(s) for s in x.strides], kind="stable")
    xt, ot = x.transpose(order), out.transpose(order)
    if not ot.flags.c_contiguous or xt.strides != ot.strides:
        return x.reshape(-1), None
    return xt.reshape(-1), ot.reshape(-1)
