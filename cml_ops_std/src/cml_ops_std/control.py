"""Control flow: If, Loop and Scan, whose bodies are subgraphs run by the interpreter.

Each body arrives as a ``cml_core.signature.Subgraph``: called with one value per body input, it
returns the body's outputs as a tuple (the outer-scope values it reads are bound already).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cml_core.quantization import ConstantOnlyOp
from cml_core.signature import Subgraph

from ._opset import OPS

ALL_VERSIONS = (1, 11, 13, 16, 19, 21, 23, 24, 25)


def _flag(value: Any, what: str) -> bool:
    """A boolean tensor holding one element, as a Python bool."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"{what} must hold one element, got shape {arr.shape}")
    return bool(arr.reshape(-1)[0])


@OPS.op("If", since=ALL_VERSIONS, quantized=ConstantOnlyOp)
def if_(cond, /, *, then_branch: Subgraph, else_branch: Subgraph):
    """Run ``then_branch`` when ``cond`` is true, else ``else_branch``; their outputs are the node's."""
    branch = then_branch if _flag(cond, "the condition") else else_branch
    return tuple(branch())


def _empty_stack(body: Subgraph, index: int) -> np.ndarray:
    """The stack of no values of body output ``index``: 0 rows of its declared element shape and dtype."""
    dtype, shape = body.output_types[index]
    element = tuple(d if isinstance(d, int) else 0 for d in shape) if shape is not None else ()
    return np.zeros((0, *element), dtype=dtype if dtype is not None else np.float32)


@OPS.op("Loop", since=ALL_VERSIONS, quantized=ConstantOnlyOp)
def loop(*inputs, body: Subgraph):
    """``M`` (trip count, may be omitted), ``cond`` (may be omitted), then the loop-carried values.

    The body takes (iteration number, condition, carried values...) and returns (condition,
    carried values..., scan outputs...). The loop runs while the iteration number is below ``M``
    and the condition holds; the outputs are the final carried values, then each scan output's
    per-iteration values stacked along a new first axis.
    """
    trip_count, condition, *carried = (*inputs, None, None)[:max(len(inputs), 2)]
    n_carried = len(carried)
    if len(body.input_names) != n_carried + 2:
        raise ValueError(f"the body takes {len(body.input_names)} inputs; a Loop with {n_carried} carried "
                         f"value(s) needs {n_carried + 2} (iteration number, condition, carried values)")
    n_scans = len(body.output_names) - 1 - n_carried
    if n_scans < 0:
        raise ValueError(f"the body returns {len(body.output_names)} outputs; a Loop with {n_carried} carried "
                         f"value(s) needs at least {n_carried + 1}")
    limit = None if trip_count is None else int(np.asarray(trip_count).reshape(-1)[0])
    going = True if condition is None else _flag(condition, "the condition")
    scans: list[list[Any]] = [[] for _ in range(n_scans)]
    iteration = 0
    while going and (limit is None or iteration < limit):
        outs = body(np.array(iteration, np.int64), np.array(going), *carried)
        if condition is not None:  # without a condition input, the body's condition output is ignored
            going = _flag(outs[0], "the body's condition output")
        carried = list(outs[1:1 + n_carried])
        for scan, value in zip(scans, outs[1 + n_carried:]):
            scan.append(value)
        iteration += 1
    stacked = [np.stack(values) if values else _empty_stack(body, 1 + n_carried + k) for k, values in enumerate(scans)]
    return (*carried, *stacked)


def _axes(given: Any, count: int, what: str) -> list[int]:
    values = [0] * count if given is None else [int(v) for v in given]
    if len(values) != count:
        raise ValueError(f"{what} lists {len(values)} value(s), expected {count}")
    return values


def _scan_slices(body: Subgraph, states: list[Any], scan_inputs: list[np.ndarray], input_axes: list[int],
                 input_directions: list[int], output_axes: list[int], output_directions: list[int],
                 length: int | None = None) -> tuple[Any, ...]:
    """One Scan: run ``body`` over slices of ``scan_inputs``; (final states..., scan outputs...)."""
    axes = []
    for x, axis in zip(scan_inputs, input_axes):
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"scan input axis {axis} is outside the rank {x.ndim} of a scan input")
        axes.append(axis % x.ndim)
    lengths = {x.shape[a] for x, a in zip(scan_inputs, axes)}
    if len(lengths) > 1:
        raise ValueError(f"the scan inputs have different lengths along their scan axes: {sorted(lengths)}")
    steps = lengths.pop() if lengths else 0
    if length is not None:
        steps = min(steps, length)
    n_states = len(states)
    per_output: list[list[Any]] = [[] for _ in range(len(body.output_names) - n_states)]
    for t in range(steps):
        slices = [np.take(x, steps - 1 - t if direction else t, axis=axis)
                  for x, axis, direction in zip(scan_inputs, axes, input_directions)]
        outs = body(*states, *slices)
        states = list(outs[:n_states])
        for values, value in zip(per_output, outs[n_states:]):
            values.append(np.asarray(value))
    scanned = []
    for k, (values, axis, direction) in enumerate(zip(per_output, output_axes, output_directions)):
        if not values:
            scanned.append(_empty_stack(body, n_states + k))
            continue
        rank = values[0].ndim + 1
        if not -rank <= axis < rank:
            raise ValueError(f"scan output axis {axis} is outside the rank {rank} of scan output {k}")
        scanned.append(np.stack(values[::-1] if direction else values, axis=axis % rank))
    return (*states, *scanned)


@OPS.op("Scan", since=(9, 11, 16, 19, 21, 23, 24, 25), quantized=ConstantOnlyOp)
def scan(*initial_state_and_scan_inputs, body: Subgraph, num_scan_inputs, scan_input_axes=None,
         scan_input_directions=None, scan_output_axes=None, scan_output_directions=None):
    """Run ``body`` once per slice of the scan inputs (the last ``num_scan_inputs`` inputs), carrying
    the states (the first inputs) from one step to the next; the outputs are the final states and
    the body's scan outputs stacked along ``scan_output_axes`` (reversed where the direction is 1)."""
    values = list(initial_state_and_scan_inputs)
    n_states = len(values) - int(num_scan_inputs)
    if n_states < 0:
        raise ValueError(f"num_scan_inputs={num_scan_inputs} exceeds the {len(values)} inputs")
    n_outputs = len(body.output_names) - n_states
    scan_inputs = [np.asarray(x) for x in values[n_states:]]
    return _scan_slices(body, values[:n_states], scan_inputs,
                        _axes(scan_input_axes, len(scan_inputs), "scan_input_axes"),
                        _axes(scan_input_directions, len(scan_inputs), "scan_input_directions"),
                        _axes(scan_output_axes, n_outputs, "scan_output_axes"),
                        _axes(scan_output_directions, n_outputs, "scan_output_directions"))


@OPS.op("Scan", since=8, quantized=ConstantOnlyOp)
def scan_8(*inputs, body: Subgraph, num_scan_inputs, directions=None):
    """Scan-8: ``sequence_lens`` (may be omitted), then states and scan inputs, all with a leading batch
    axis; each batch entry is scanned along axis 1 over its own length, scan outputs padded with zeros."""
    sequence_lens, values = (inputs[0], list(inputs[1:])) if inputs else (None, [])
    n_states = len(values) - int(num_scan_inputs)
    if n_states < 0:
        raise ValueError(f"num_scan_inputs={num_scan_inputs} exceeds the {len(values)} state and scan inputs")
    arrays = [np.asarray(v) for v in values]
    if not arrays or any(a.ndim == 0 for a in arrays):
        raise ValueError("Scan-8 inputs need a leading batch axis")
    batch = arrays[0].shape[0]
    if any(a.shape[0] != batch for a in arrays):
        raise ValueError(f"the inputs' batch sizes differ: {[a.shape[0] for a in arrays]}")
    scan_inputs = arrays[n_states:]
    full = scan_inputs[0].shape[1] if scan_inputs and scan_inputs[0].ndim > 1 else 0
    lengths = [full] * batch if sequence_lens is None else [int(v) for v in np.asarray(sequence_lens).reshape(-1)]
    if len(lengths) != batch or any(not 0 <= n <= full for n in lengths):
        raise ValueError(f"sequence_lens {lengths} must give one length in [0, {full}] per batch entry ({batch})")
    n_outputs = len(body.output_names) - n_states
    input_directions = _axes(directions, len(scan_inputs), "directions")
    results = [_scan_slices(body, [a[b] for a in arrays[:n_states]], [a[b] for a in scan_inputs],
                            [0] * len(scan_inputs), input_directions, [0] * n_outputs, [0] * n_outputs, lengths[b])
               for b in range(batch)]
    outputs = [np.stack([r[i] for r in results]) for i in range(n_states)]
    for k in range(n_outputs):
        per_batch = [np.asarray(r[n_states + k]) for r in results]
        padded = [np.concatenate([p, np.zeros((full - p.shape[0], *p.shape[1:]), p.dtype)]) for p in per_batch]
        outputs.append(np.stack(padded))
    return tuple(outputs)
