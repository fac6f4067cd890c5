"""``cml inspect``: the checks of load_model, exit codes 0 / 1 / 2, one error line and never a traceback."""

import os

import cml_core.cli
import numpy as np
import onnx
import pytest
from cml_core.cli import main as cli
from onnx import helper, numpy_helper

F = onnx.TensorProto.FLOAT


def _save(tmp_path, nodes, inits=(), extra_opsets=(), name="m.onnx"):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["n", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", F, ["n", 2, "h", "w"])], list(inits))
    model = helper.make_model(graph, ir_version=10,
                              opset_imports=[helper.make_opsetid("", 14), *extra_opsets])
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


W = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "W")


def test_a_good_model(tmp_path, capsys):
    path = _save(tmp_path, [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["y"])], [W])
    assert cli(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "18 parameters" in out and "x: float32 (n, 1, 4, 4)" in out and "all ops are supported" in out


def test_missing_ops_exit_2(tmp_path, capsys):
    path = _save(tmp_path, [helper.make_node("Conv", ["x", "W"], ["c"]),
                            helper.make_node("Wobble", ["c"], ["y"], domain="com.acme")], [W],
                 extra_opsets=[helper.make_opsetid("com.acme", 1)])
    assert cli(["inspect", str(path)]) == 2
    out = capsys.readouterr().out
    assert "MISSING" in out and "missing ops:\n  Wobble (com.acme, opset 1)" in out


def test_a_model_load_model_refuses_exit_1(tmp_path, capsys):
    path = _save(tmp_path, [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", kernel_shape=[2, 2]),
                            helper.make_node("Relu", ["c"], ["y"])], [W])
    assert cli(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cml: error: node 'conv' (Conv): kernel_shape=[2, 2] disagrees") and err.count("\n") == 1


def test_an_unexpected_failure_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])])

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cml_core.cli, "get_registry", broken)
    assert cli(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cml: error: internal error RuntimeError: a bug") and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage", bytes(range(256))])
def test_garbage_files(tmp_path, capsys, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert cli(["inspect", str(path)]) == 1
    assert capsys.readouterr().err.startswith("cml: error:")


def test_the_cml_command_prints_cml_warnings_as_one_line(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "CML_PIN_OPS": "Relu"}
    result = subprocess.run([sys.executable, "-m", "cml_core", "plugins"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "cml: warning: CML_PIN_OPS item 'Relu' is ignored: it has no '='" in result.stderr
    assert "PluginConfigWarning" not in result.stderr and "plugins.py" not in result.stderr
