"""nox sessions: tests, lint, typecheck, docs, demo, bench, bench_reference. Each builds its own virtualenv."""

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
PACKAGES = ["-e", "cml_core[fhe,serve,testing]", "-e", "cml_ops_std[image]", "-e", "cml_ops_activations", "-e",
            "cml_ops_qonnx", "-e", "cml_ops_ml[sklearn]"]


def install(session: nox.Session, *extra: str) -> None:
    session.install("setuptools<81", "wheel")
    session.install("torch==2.13.0")  # the CPU build first, so nothing pulls a CUDA build in
    session.install(*PACKAGES, *extra)


@nox.session
def tests(session: nox.Session) -> None:
    # onnxscript: torch's default (dynamo) ONNX exporter needs it; brevitas and onnxoptimizer (its exporter needs
    # it) build the QAT models the qonnx plugin is tested on, installed after torch so they keep it
    install(session, "-e", "examples/cml-ops-example", "pytest", "hypothesis", "onnxruntime", "onnxscript==0.7.*",
            "scikit-learn", "brevitas==0.13.*", "onnxoptimizer", "transformers>=5,<6")
    # Hummingbird declares onnx<=1.16.1 but runs with the newer onnx: installed without its declared deps
    session.install("--no-deps", "hummingbird-ml==0.4.12")
    session.install("onnxconverter-common>=1.6", "psutil", "dill")
    session.run("python", "-m", "pytest", *session.posargs, env={"CI": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "cml_core", "cml_ops_std", "cml_ops_activations", "cml_ops_qonnx", "cml_ops_ml", "examples",
                "tests",
                "scripts")


@nox.session
def typecheck(session: nox.Session) -> None:
    install(session, "mypy")
    session.run("mypy", "cml_core/src/cml_core")


@nox.session
def docs(session: nox.Session) -> None:
    install(session)
    session.run("python", "scripts/generate_docs.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    install(session)
    session.run("python", "-m", "cml_core.demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    install(session, "onnxruntime", "scikit-learn", "matplotlib")
    session.run("python", "-m", "benchmarks", *session.posargs)


#: the FHE benchmark's models and sets, written in cml's environment for the reference tool's (under .nox, ignored)
REFERENCE_INPUTS = str(Path(__file__).resolve().parent / ".nox" / "reference-inputs")


@nox.session
def bench_inputs(session: nox.Session) -> None:
    """The models (ONNX) and calibration/test sets (.npz) of the FHE benchmark, for bench_reference."""
    install(session)
    session.run("python", "-m", "benchmarks", "--write-inputs", REFERENCE_INPUTS)


@nox.session(requires=["bench_inputs"])
def bench_reference(session: nox.Session) -> None:
    """The reference tool, concrete-ml 1.9.0, on the same inputs: writes docs/benchmarks-reference.json, which
    `python -m benchmarks` shows beside its FHE figures. concrete-ml pins onnx 1.17 and torch 2.3.1 (from PyPI,
    with its CUDA libraries: about 3 GB of wheels) and needs Python 3.8 to 3.12. Arguments after `--` go to
    benchmarks/reference.py (--samples, --output, --model)."""
    session.install("concrete-ml==1.9.0")
    session.run("python", "benchmarks/reference.py", "--inputs", REFERENCE_INPUTS, *session.posargs)
