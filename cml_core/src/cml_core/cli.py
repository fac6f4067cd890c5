"""The ``cml`` command: list installed ops and plugins, inspect a model, run the demo, compile a model
for deployment, serve it over HTTP, and get encrypted predictions from a server."""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

from .errors import CmlError, CmlWarning, InputError, TuningWarning, UnsupportedOpError
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


def _progress(quiet: bool) -> Callable[[str], None]:
    """A function printing one ``cml: ...`` progress line on stderr, or nothing when ``quiet``."""
    def say(message: str) -> None:
        if not quiet:
            print(f"cml: {message}", file=sys.stderr, flush=True)

    return say


def load_arrays(paths: list[str], names: list[str], what: str) -> tuple[Any, ...]:
    """One array per model input (``names``): from one ``.npy`` per input, in order, or an ``.npz``
    holding them (by input name, else in order). Read without pickle.

    Raises:
        InputError: a file that cannot be read, or not one array per input.
    """
    import numpy as np

    arrays = []
    for path in paths:
        try:
            data = np.load(path, allow_pickle=False)
            if hasattr(data, "files"):  # an .npz
                with data:
                    order = names if set(data.files) == set(names) else data.files
                    arrays += [data[k] for k in order]
            else:
                arrays.append(data)
        except FileNotFoundError as exc:
            raise InputError(f"{what}: {path} not found") from exc
        except (OSError, ValueError) as exc:
            raise InputError(f"{what}: {path} is not a .npy or .npz file readable without pickle ({exc})") from exc
    if len(arrays) != len(names):
        raise InputError(f"{what}: the model takes {len(names)} input(s) {names}, got {len(arrays)} array(s) from "
                         f"{', '.join(paths)}: pass one .npy per input, in order, or one .npz")
    return tuple(arrays)


def _rounding(text: str) -> str | int | None:
    if text in ("auto", "none"):
        return None if text == "none" else text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected auto, none or a number of bits, got {text!r}")


def _p_error(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if 0 < value < 1:
        return value
    raise argparse.ArgumentTypeError(f"expected auto or a probability between 0 and 1, got {text!r}")


def _positive(text: str) -> int:
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")


def cmd_compile(args: argparse.Namespace) -> int:
    """Quantize, compile and save a model for ``cml serve``; prints the bit widths and the files."""
    import numpy as np

    from .fhe.deploy import read_manifest
    from .numpy_module import load_model

    say = _progress(args.quiet)
    say(f"loading {args.model}")
    module = load_model(args.model)
    arrays = load_arrays([args.calibration], module.input_names, "--calibration")
    x = arrays if len(arrays) > 1 else arrays[0]
    tune_x = x
    if args.tuning is not None:
        if "auto" not in (args.rounding, args.p_error):
            raise InputError("--tuning: only --rounding auto and --p-error auto score settings on samples; "
                             "pass one of them, or leave --tuning out")
        tuning = load_arrays([args.tuning], module.input_names, "--tuning")
        for name, seen, given in zip(module.input_names, arrays, tuning):
            if np.shape(seen)[1:] != np.shape(given)[1:]:
                raise InputError(f"--tuning: input {name!r} has samples of shape {np.shape(given)[1:]} in "
                                 f"{args.tuning}, {np.shape(seen)[1:]} in {args.calibration}: pass samples "
                                 "shaped as the calibration's")
        tune_x = tuning if len(tuning) > 1 else tuning[0]
    say(f"calibrating on {len(arrays[0])} samples at n_bits={args.n_bits}")
    fixed = None if args.rounding == "auto" else args.rounding
    qmodule = module.quantize(x, n_bits=args.n_bits, rounding_threshold_bits=fixed)
    if "auto" in (args.rounding, args.p_error):
        if args.tuning is None:
            say("scoring the candidates on the calibration samples: if the model was trained on them, pass "
                "--tuning with samples held out of training, on which its errors show")
        else:
            say(f"scoring the candidates on {len(tuning[0])} samples of {args.tuning}")
    with warnings.catch_warnings():
        if args.tuning is None:  # said above, in the command's own terms
            warnings.simplefilter("ignore", TuningWarning)
        if args.rounding == "auto":
            from .tuning import choose_rounding

            say("choosing the rounding: compiling and simulating each candidate")
            choice = choose_rounding(qmodule, x, tune_x)
            print(f"rounding: {str(choice).splitlines()[0]}")
        if args.p_error == "auto":
            from .tuning import choose_p_error

            say("choosing the error probability per lookup: compiling and simulating each candidate")
            error_choice = choose_p_error(qmodule, x, tune_x)
            print(f"error probability: {str(error_choice).splitlines()[0]}")
        elif args.rounding != "auto" or args.p_error is not None:
            say("compiling" + ("" if args.p_error is None else f" at p_error={args.p_error}"))
            qmodule.compile(x, p_error=args.p_error)
    print(qmodule.bitwidth_report())
    say(f"saving to {args.output}")
    folder = qmodule.save(args.output)
    print(f"model {read_manifest(folder)['model_id']} saved in {folder}: server.zip and manifest.json for "
          "`cml serve`, client.zip for clients, model.zip for load_quantized (keep it)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a saved model over HTTP until interrupted."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CmlError(f"cml serve needs FastAPI and uvicorn ({exc}): pip install 'cml-core[serve]'") from exc
    from .fhe.service import serve

    limits = {name: getattr(args, name) for name in ("max_key_bytes", "max_ciphertext_bytes", "max_samples")
              if getattr(args, name) is not None}
    serve(args.folder, args.host, args.port, args.key_store, args.workers, quiet=args.quiet, **limits)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Encrypt inputs, have a ``cml serve`` server compute on them, decrypt, write the outputs."""
    import numpy as np

    from .fhe.remote import RemoteModel

    say = _progress(args.quiet)
    say(f"fetching the client artifact from {args.server}")
    remote = RemoteModel(args.server, keys=args.keys)
    names = [name for name, _ in remote.client.outputs]
    several = args.output.endswith(".npz")
    if len(names) > 1 and not several:
        raise InputError(f"the model has {len(names)} outputs {names}: pass -o FILE.npz")
    x = load_arrays(args.inputs, [s.name for s in remote.client.inputs], "input")
    outputs = remote.predict(*x, progress=say)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    with open(args.output, "wb") as handle:
        if several:
            np.savez(handle, **dict(zip(names, outputs)))
        else:
            np.save(handle, outputs[0])
    say(f"wrote {args.output}")
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
    compile_ = sub.add_parser("compile", help="quantize, compile and save a model for `cml serve`")
    compile_.add_argument("model", help="path to an .onnx file")
    compile_.add_argument("--calibration", required=True, metavar="FILE",
                          help="calibration inputs: .npy, or .npz with one array per model input")
    compile_.add_argument("--n-bits", type=_positive, default=6, help="bits of inputs, weights and activations (6)")
    compile_.add_argument("--rounding", type=_rounding, default=None, metavar="auto|none|N",
                          help="bits kept before each lookup: N, none (default), or auto (chosen to keep "
                               "the float model's argmax on the --tuning data within a point: classifiers)")
    compile_.add_argument("--p-error", type=_p_error, default=None, metavar="auto|P",
                          help="error probability per lookup: P in (0, 1), or auto (the largest that keeps the "
                               "float model's argmax on the --tuning data within a point); default: "
                               "concrete-python's, 1e-5 for the whole circuit")
    compile_.add_argument("--tuning", metavar="FILE", default=None,
                          help="samples held out of training (as --calibration) that --rounding auto and "
                               "--p-error auto score the float model's argmax on (default: the calibration set)")
    compile_.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to save the model in")
    compile_.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    compile_.set_defaults(func=cmd_compile)
    serve = sub.add_parser("serve", help="serve a saved model over HTTP")
    serve.add_argument("folder", help="the folder `cml compile` or qmodule.save wrote")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--key-store", metavar="DIR", default=None,
                       help="where uploaded evaluation keys are kept, shareable by replicas "
                            "(default $XDG_CACHE_HOME/cml/server-keys/<model id>)")
    serve.add_argument("--workers", type=_positive, default=None, help="samples computed at once (default: cores)")
    serve.add_argument("--max-key-bytes", type=_positive, default=None, help="largest evaluation keys accepted")
    serve.add_argument("--max-ciphertext-bytes", type=_positive, default=None, help="largest request body accepted")
    serve.add_argument("--max-samples", type=_positive, default=None, help="most samples in one request")
    serve.add_argument("-q", "--quiet", action="store_true", help="no log line per request")
    serve.set_defaults(func=cmd_serve)
    predict = sub.add_parser("predict", help="encrypted prediction from a `cml serve` server")
    predict.add_argument("--server", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy per model input, or one .npz")
    predict.add_argument("-o", "--output", required=True, metavar="FILE", help=".npy (.npz for several outputs)")
    predict.add_argument("--keys", metavar="DIR", default=None,
                         help="this client's key folder (default $XDG_CACHE_HOME/cml/keys/<model id>)")
    predict.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    predict.set_defaults(func=cmd_predict)
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
    # concrete-python's namespace package imports pkg_resources, which announces its own deprecation
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    sys.exit(main())


if __name__ == "__main__":
    console_main()
