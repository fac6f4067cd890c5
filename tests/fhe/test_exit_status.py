"""A red run must exit non-zero even after concrete-python has compiled and simulated circuits."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.fhe


def _run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_failing_test_beside_an_fhe_test_fails_the_run(tmp_path):
    (tmp_path / "test_probe.py").write_text(textwrap.dedent("""
        def test_compiles_and_simulates():
            from concrete import fhe
            circuit = fhe.compiler({"x": "encrypted"})(lambda x: x + 1).compile(range(8))
            assert circuit.simulate(3) == 4

        def test_fails_on_purpose():
            assert False
    """))
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                  tmp_path)
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 1, result.stdout + result.stderr


def test_exit_status_survives_compile_and_simulate_through_cml(tmp_path):
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import onnx
        from onnx import helper, numpy_helper
        from cml_core import compile_onnx_model

        graph = helper.make_graph(
            [helper.make_node("Gemm", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 2])],
            [numpy_helper.from_array(np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2), "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)
        x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
        qmodule = compile_onnx_model(model, x, n_bits=4)
        qmodule.forward(x[:2], fhe="simulate")
        sys.exit(3)
    """)
    result = _run(["-c", script], tmp_path)
    assert result.returncode == 3, result.stderr
