"""The ``cml`` command: list installed ops and plugins, inspect a model, run the demo."""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections import Counter
from typing import Any

from .errors import CmlError, CmlWarning, UnsupportedOpError
from .known_plugins import install_hint
from .numpy_module import tensor_spec
from .plugins import get_plugin_manager, get_registry
from .registry import OpImpl, normalize_domain


def op_rows(distributions: set[str] | None = None) -> list[dict[str, Any]]:
    """One row per (domain, op type): since-versions, provider, quantized family.

    ``distributions`` keeps only the ops those plugin distributions provide.
    """
    grouped: dict[tuple[str, str], list[OpImpl]] = {}
    for impl in get_registry():
        if distributions is not None and impl.provider.distribution not in distributions:
            continue
        grouped.setdefault((impl.domain, impl.op_type), []).append(impl)
    rows = []
    for (domain, op_type), impls in sorted(grouped.items(), key=lambda kv: (kv[0][0] != "", kv[0])):
        latest = impls[-1]
        quantized = sorted({i.quantized.__name__ for i in impls if i.quantized is not None})
        rows.append({
            "domain": domain or "ai.onnx",
            "op": op_type,
            "since": ", ".join(str(i.since_version) for i in impls),
            "plugin": str(latest.provider),
            "quantized": ", ".join(quantized) if quantized else "no",
        })
    return rows


def _table(rows: list[dict[str, Any]], markdown: bool) -> str:
    if not rows:
        return "(nothing)"
    keys = list(rows[0])
    if markdown:
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
        return "\n".join(lines)
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys), "  ".join("-" * widths[k] for k in keys)]
    lines += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def cmd_ops(args: argparse.Namespace) -> int:
    print(_table(op_rows(), args.markdown))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """Print one row per plugin seen (version, entry point, ops it provides, status).

    Returns 0, or 1 when the registry cannot be built (the plugins are still listed, the error follows).
    """
    manager = get_plugin_manager()
    counts: Counter[str] | None = None
    problem: CmlError | None = None
    try:
        counts = Counter(i.provider.distribution for i in get_registry())
    except CmlError as exc:  # list the plugins anyway: this is where a user looks for the culprit
        problem = exc
    rows = [{"plugin": p.distribution, "version": p.version or "-", "entry point": f"{p.name} = {p.module}",
             "ops": "?" if counts is None else counts.get(p.distribution, 0), "status": p.error or "ok"}
            for p in manager.plugins]
    print(_table(rows, False))
    if problem is not None:
        print(f"cml: error: {problem}", file=sys.stderr)
        return 1
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the model's op histogram with providers, its inputs, outputs and parameter count.

    The model goes through every check ``load_model`` makes (external data from the model's folder
    only, checker, strict shape inference, each op's load-time check).

    Returns:
        0, or 2 when some ops have no installed implementation.

    Raises:
        CmlError: whatever ``load_model`` refuses, except missing ops (``main`` prints it, exit 1).
    """
    from .numpy_module import NumpyModule
    from .onnx_utils import read_model

    model = read_model(args.model)
    registry = get_registry()
    unsupported: UnsupportedOpError | None = None
    try:
        NumpyModule(model, registry)
    except UnsupportedOpError as exc:  # reported below, op by op
        unsupported = exc
    opsets = {normalize_domain(o.domain): o.version for o in model.opset_import}
    histogram = Counter((normalize_domain(n.domain), n.op_type) for n in model.graph.node)
    rows, missing = [], []
    for (domain, op_type), count in sorted(histogram.items(), key=lambda kv: -kv[1]):
        opset = opsets.get(domain, 0)
        impl = registry.find(domain, op_type, opset)
        if impl is None:
            hint = install_hint(domain, op_type)
            missing.append(f"{op_type} ({domain or 'ai.onnx'}, opset {opset})" + (f": {hint}" if hint else ""))
        rows.append({"op": op_type, "domain": domain or "ai.onnx", "opset": opset, "nodes": count,
                     "plugin": str(impl.provider) if impl else "MISSING",
                     "since": impl.since_version if impl else "-",
                     "quantized": (impl.quantized.__name__ if impl and impl.quantized else "no")})
    params = sum(math.prod(i.dims) for i in model.graph.initializer)
    print(f"model: {args.model}  (ir_version {model.ir_version}, opsets {opsets}, "
          f"{len(model.graph.node)} nodes, {params:,} parameters)")
    initializers = {i.name for i in model.graph.initializer}
    for title, role, values in (
        ("inputs", "graph input", [v for v in model.graph.input if v.name not in initializers]),
        ("outputs", "graph output", list(model.graph.output)),
    ):
        print(f"{title}:")
        for v in values:
            spec = tensor_spec(v, role)
            dims = "?" if spec.shape is None else "(" + ", ".join("?" if d is None else str(d) for d in spec.shape) + ")"
            print(f"  {spec.name}: {spec.dtype} {dims}")
    print(_table(rows, False))
    if unsupported is not None:
        print("missing ops:\n  " + "\n  ".join(missing or [str(unsupported)]))
        return 2
    print("all ops are supported")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo

    demo(args.rest)
    return 0


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """cml's own warnings as one ``cml: warning:`` line (no source line); others as Python prints them."""
    if issubclass(category, CmlWarning):
        print(f"cml: warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cml`` command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="cml", description="ONNX models as NumPy, quantized, encrypted.")
    sub = parser.add_subparsers(dest="command", required=True)
    ops = sub.add_parser("ops", help="list every installed op")
    ops.add_argument("--markdown", action="store_true", help="print a markdown table")
    ops.set_defaults(func=cmd_ops)
    sub.add_parser("plugins", help="list installed plugins").set_defaults(func=cmd_plugins)
    inspect = sub.add_parser("inspect", help="op histogram, providers, missing ops, shapes, parameters")
    inspect.add_argument("model", help="path to an .onnx file")
    inspect.set_defaults(func=cmd_inspect)
    demo = sub.add_parser("demo", help="end-to-end encrypted inference on the shipped model")
    demo.add_argument("rest", nargs=argparse.REMAINDER)
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CmlError as exc:
        print(f"cml: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`cml inspect model.onnx | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a bug, not the user's fault: still one line, no traceback
        print(f"cml: error: internal error {type(exc).__name__}: {exc}; please report it with the command "
              "and the model", file=sys.stderr)
        return 1


def console_main() -> None:
    """The ``cml`` console script: ``main`` with cml's warnings printed as ``cml: warning:`` lines."""
    warnings.showwarning = _show_warning
    sys.exit(main())


if __name__ == "__main__":
    console_main()
