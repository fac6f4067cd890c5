"""The ONNX backend test data of the installed ``onnx``, run through ``load_model``.

The node cases are built by ``onnx.backend.test.case.node`` (the installed wheel ships them as
generators, not files); the model folders ``pytorch-converted``, ``pytorch-operator``, ``simple``
and ``light`` are read from ``onnx/backend/test/data``. The light models come with expected
outputs only: their input is the fixed ramp ONNX's own runner feeds them.

Each case ends in one status:

- ``pass``: every output matches (shape, dtype, values within the case's rtol/atol);
- ``wrong``: the model ran and an output differs (a defect);
- ``refused``: load or run stopped with a ``CmlError`` naming what is not supported;
- ``crash``: any other exception (a defect: every refusal must be a ``CmlError``);
- ``tie``: a case of ``ROUNDING_TIES`` that differs on a machine whose matrix products round equal rows
  differently (probed): its expected output is a tie that float32 leaves to the order of summation.

Run ``python -m tests.conformance.backend_cases [--write] [names...]`` for a summary by op.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

RECORD = Path(__file__).with_name("backend_record.json")
FOLDERS = ("node", "pytorch-converted", "pytorch-operator", "simple", "light")
# cases whose expected outputs come from a random draw or a training-mode run nothing can reproduce
UNMATCHABLE = {
    **{name: "Bernoulli draws random values" for name in (
        "test_bernoulli", "test_bernoulli_double", "test_bernoulli_seed")},
    **{name: "RandomUniformLike (Bernoulli's expansion) draws random values" for name in (
        "test_bernoulli_expanded", "test_bernoulli_double_expanded", "test_bernoulli_seed_expanded")},
}


# cases whose expected output is a mathematical tie that float32 decides by the order each sum is added in
ROUNDING_TIES = {
    "light_squeezenet": (
        "its last convolution's 1000 output channels are equal (constant weights) and reach 1e10, and the expected "
        "softmax (0.001 each) needs every channel's sum rounded alike: one float32 step there is 1e3, which decides "
        "the softmax. Some BLAS kernels (OpenBLAS on AVX2 CPUs) sum the rows of one product in different orders"),
}


def equal_rows_round_alike() -> bool:
    """Whether this machine's convolution gives output channels with equal weights equal sums, probed on
    light_squeezenet's last convolution's shapes (512 channels of 13 x 13 into 1000, values up to 1e8)."""
    from cml_ops_std.conv import conv_nd

    rng = np.random.default_rng(0)
    x = (rng.random((1, 512, 13, 13)) * 1e8).astype(np.float32)
    w = np.broadcast_to(rng.random((1, 512, 1, 1)).astype(np.float32), (1000, 512, 1, 1)).copy()
    y = conv_nd(x, w, strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
    return bool(np.all(y == y[:, :1]))


@dataclass
class Case:
    """One backend case: a model and its (inputs, expected outputs) data sets."""

    name: str
    folder: str
    load: Callable[[], onnx.ModelProto]
    data_sets: Callable[[onnx.ModelProto], list[tuple[list[Any], list[Any]]]]
    rtol: float = 1e-3
    atol: float = 1e-7


@dataclass
class Result:
    name: str
    folder: str
    status: str
    detail: str = ""
    ops: list[str] = field(default_factory=list)
    seconds: float = 0.0


def data_root() -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def _node_cases() -> Iterator[Case]:
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases()
    for case in cases:
        yield Case(case.name, "node", (lambda m=case.model: m), (lambda _m, d=case.data_sets: _normalized(d)),
                   case.rtol, case.atol)


def _normalized(data_sets: Any) -> list[tuple[list[Any], list[Any]]]:
    """Node cases may hold ``TensorProto``s where arrays are meant (float8, int4...): read them as arrays."""

    def array(value: Any) -> Any:
        return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value

    return [([array(x) for x in xs], [array(y) for y in ys]) for xs, ys in data_sets]


def _read_value(path: Path, type_proto: onnx.TypeProto) -> Any:
    data = path.read_bytes()
    kind = type_proto.WhichOneof("value")
    if kind == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(data)
        return numpy_helper.to_list(proto)
    if kind == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(data)
        return numpy_helper.to_optional(proto)
    if kind == "map_type":
        proto = onnx.MapProto()
        proto.ParseFromString(data)
        return numpy_helper.to_dict(proto)
    proto = onnx.TensorProto()
    proto.ParseFromString(data)
    return numpy_helper.to_array(proto)


def _folder_data(folder: Path) -> Callable[[onnx.ModelProto], list[tuple[list[Any], list[Any]]]]:
    def read(model: onnx.ModelProto) -> list[tuple[list[Any], list[Any]]]:
        constants = {init.name for init in model.graph.initializer}
        inputs = [vi for vi in model.graph.input if vi.name not in constants]
        sets = []
        for data_set in sorted(folder.glob("test_data_set_*")):
            xs = [_read_value(data_set / f"input_{i}.pb", vi.type) for i, vi in enumerate(inputs)
                  if (data_set / f"input_{i}.pb").exists()]
            ys = [_read_value(data_set / f"output_{i}.pb", vi.type) for i, vi in enumerate(model.graph.output)]
            sets.append((xs, ys))
        return sets

    return read


def _ramp(vi: onnx.ValueInfoProto) -> np.ndarray:
    """The input ONNX's runner feeds a light model: 0, 1/n, 2/n, ... in the input's shape."""
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def _light_data(onnx_path: Path) -> Callable[[onnx.ModelProto], list[tuple[list[Any], list[Any]]]]:
    def read(model: onnx.ModelProto) -> list[tuple[list[Any], list[Any]]]:
        constants = {init.name for init in model.graph.initializer}
        xs = [_ramp(vi) for vi in model.graph.input if vi.name not in constants]
        stem = onnx_path.with_suffix("")
        ys = [_read_value(Path(f"{stem}_output_{i}.pb"), vi.type) for i, vi in enumerate(model.graph.output)]
        return [(xs, ys)]

    return read


def collect(folders: tuple[str, ...] = FOLDERS) -> list[Case]:
    """Every backend case of the installed ``onnx`` in ``folders``, sorted by folder then name."""
    cases: list[Case] = []
    root = data_root()
    for folder in folders:
        if folder == "node":
            cases.extend(_node_cases())
        elif folder == "light":
            for path in sorted((root / "light").glob("light_*.onnx")):
                cases.append(Case(path.stem, "light", (lambda p=path: onnx.load(str(p))), _light_data(path)))
        else:
            for case_dir in sorted((root / folder).iterdir()):
                if (case_dir / "model.onnx").exists():
                    cases.append(Case(case_dir.name, folder, (lambda p=case_dir: onnx.load(str(p / "model.onnx"))),
                                      _folder_data(case_dir)))
    return cases


def _compare(expected: Any, got: Any, rtol: float, atol: float, where: str) -> None:
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            raise AssertionError(f"{where}: expected a sequence of {len(expected)}, got {type(got).__name__}")
        for i, (e, g) in enumerate(zip(expected, got)):
            _compare(e, g, rtol, atol, f"{where}[{i}]")
        return
    if expected is None:
        if got is not None:
            raise AssertionError(f"{where}: expected an empty optional, got {type(got).__name__}")
        return
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            raise AssertionError(f"{where}: expected a map with keys {sorted(expected)}")
        for key in expected:
            _compare(expected[key], got[key], rtol, atol, f"{where}[{key!r}]")
        return
    expected = np.asarray(expected)
    if not isinstance(got, np.ndarray) and not np.isscalar(got):
        raise AssertionError(f"{where}: expected an array, got {type(got).__name__}")
    got = np.asarray(got)
    if got.shape != expected.shape:
        raise AssertionError(f"{where}: shape {got.shape}, expected {expected.shape}")
    if expected.dtype == object:
        if not np.array_equal(got.astype(object), expected):
            raise AssertionError(f"{where}: strings differ")
        return
    if got.dtype != expected.dtype:
        raise AssertionError(f"{where}: dtype {got.dtype}, expected {expected.dtype}")
    if expected.dtype.kind not in "fiubc":  # ml_dtypes (float8, bfloat16, int4...): compare as float32
        if expected.dtype.name == "bfloat16":
            rtol = max(rtol, 2**-6)
        expected, got = expected.astype(np.float32), got.astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=where)


def run_case(case: Case) -> Result:
    """Load ``case`` with ``load_model``, run each data set and compare (see the module docstring)."""
    from cml_core.errors import CmlError

    from cml_core import load_model

    start = time.perf_counter()
    model = case.load()
    ops = sorted({f"{n.domain + '::' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type}" for n in model.graph.node})
    result = Result(case.name, case.folder, "pass", ops=ops)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = load_model(model)
            for index, (inputs, expected) in enumerate(case.data_sets(model)):
                outputs = module.run(*inputs)
                got = [outputs[name] for name in module.output_names]
                if len(got) != len(expected):
                    raise AssertionError(f"{len(got)} outputs, expected {len(expected)}")
                for i, (e, g) in enumerate(zip(expected, got)):
                    _compare(e, g, case.rtol, case.atol, f"data set {index}, output {i}")
    except AssertionError as exc:
        result.status, result.detail = "wrong", str(exc).strip()[:600]
        if case.name in ROUNDING_TIES and not equal_rows_round_alike():
            result.status, result.detail = "tie", f"{ROUNDING_TIES[case.name]}; here they do not: {result.detail}"
    except CmlError as exc:
        result.status, result.detail = "refused", f"{type(exc).__name__}: {exc}"[:600]
    except Exception as exc:  # noqa: BLE001  (every other exception is recorded as a defect)
        result.status, result.detail = "crash", f"{type(exc).__name__}: {exc}"[:600]
    result.seconds = time.perf_counter() - start
    return result


def run_all(cases: list[Case], progress: bool = False) -> list[Result]:
    results = []
    for i, case in enumerate(cases):
        results.append(run_case(case))
        if progress and (i + 1) % 100 == 0:
            print(f"  {i + 1}/{len(cases)}", file=sys.stderr, flush=True)
    return results


def summary(results: list[Result]) -> dict[str, int]:
    return dict(collections.Counter(r.status for r in results))


def write_record(results: list[Result], path: Path = RECORD) -> None:
    import onnx as onnx_module

    record = {
        "onnx": onnx_module.__version__,
        "counts": summary(results),
        "cases": {r.name: r.status for r in results},
        "unmatchable": UNMATCHABLE,
    }
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="case names (or prefixes) to run; all when none")
    parser.add_argument("--folders", default=",".join(FOLDERS))
    parser.add_argument("--write", action="store_true", help=f"write the per-case record to {RECORD.name}")
    parser.add_argument("--json", help="write every result (with details) to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each non-passing case with its detail")
    args = parser.parse_args(argv)
    cases = collect(tuple(args.folders.split(",")))
    if args.names:
        cases = [c for c in cases if any(c.name == n or c.name.startswith(n) for n in args.names)]
    results = run_all(cases, progress=not args.names)
    by_op: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in results:
        if r.status != "pass":
            by_op[" ".join(r.ops) if r.folder == "node" else r.folder][r.status] += 1
        if args.verbose and r.status != "pass":
            print(f"{r.status:8} {r.folder}/{r.name}: {r.detail}")
    for ops, counts in sorted(by_op.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"{sum(counts.values()):4} {dict(counts)} {ops}")
    print(summary(results), f"of {len(results)}", f"in {sum(r.seconds for r in results):.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    if args.write:
        write_record(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
