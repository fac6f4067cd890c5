"""Compilation and circuit runs fail with typed errors, write nothing where not asked, leave no
temporary folders, and the circuit computes what the clear integer program computes."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from cml_core.errors import CompileError, FHEExecutionError
from onnx import helper, numpy_helper

from cml_core import InputError, QuantizationError, choose_rounding, load_model

from .test_fhe import FAMILIES

pytestmark = pytest.mark.fhe


def _x(family, n, seed=1):
    _, shape = FAMILIES[family]
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, *shape)).astype(np.float32)


def _cause_is_concretes(error):
    return error.__cause__ is not None and type(error.__cause__).__module__.split(".")[0] in ("concrete", "builtins")


# -- 1. nothing written into the current directory; failures typed -----------------------------

@pytest.mark.parametrize("own_configuration", [False, True])
def test_failed_compile_writes_nothing_into_the_current_directory(tmp_path, monkeypatch, own_configuration):
    from concrete import fhe

    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    # a 12-bit two-input lookup: cml's check passes, concrete-python finds no parameters for it
    x = _x("encrypted-encrypted", 40)
    qmodule = load_model(FAMILIES["encrypted-encrypted"][0]).quantize(x, n_bits=6)
    configuration = fhe.Configuration() if own_configuration else None
    with pytest.raises(CompileError, match=r"NoParametersFound.*Widest lookups: .*12 bits.*Ways out: ") as info:
        qmodule.compile(x, configuration=configuration)
    assert _cause_is_concretes(info.value)
    assert os.listdir(workdir) == []
    assert qmodule.fhe_circuit is None
    if own_configuration:  # the user's configuration is left as it was
        assert configuration.dump_artifacts_on_unexpected_failures is True
        assert configuration.fhe_execution is True


def test_no_parameters_found_names_the_widest_lookups_and_the_ways_out():
    model, _ = FAMILIES["encrypted-encrypted"]
    x = _x("encrypted-encrypted", 40)
    qmodule = load_model(model).quantize(x, n_bits=6)  # a 12-bit two-input lookup: within 16 bits
    with pytest.raises(CompileError) as info:
        qmodule.compile(x)
    message = str(info.value)
    assert "NoParametersFound" in message and "12 bits (multi-input" in message
    assert "n_bits 6/6/6" in message and "fewer n_bits" in message and "p_error=0.01" in message
    assert "RuntimeError" in repr(info.value.__cause__)
    # a way it names compiles
    load_model(model).quantize(x, n_bits=5).compile(x)


def test_no_parameters_for_exact_rounding_of_wide_accumulators_names_approximate_rounding_first():
    from benchmarks import models as bench

    # the digits CNN at n_bits 8: 19-bit convolution accumulators, whose 6-bit exact rounding clears 13 low bits
    # with lookups reading the whole accumulator
    x = bench.digits()["x_train"].reshape(-1, 1, 8, 8)
    qmodule = load_model(bench.cnn()).quantize(x, n_bits=8, rounding_threshold_bits=6)
    assert max(a.bits for a in qmodule.accumulators.values()) > 16
    with pytest.raises(CompileError) as info:
        qmodule.compile(x)
    message = str(info.value)
    assert "NoParametersFound" in message and "accumulators of up to 19 bits" in message
    ways = message.split("Ways out: ")[1]
    assert ways.startswith("approximate rounding ({'n_bits': 6, 'method': 'approximate'}")
    assert "rounding_threshold_bits=4" not in message  # keeping fewer bits would add lookups at the full width
    # the way it names first compiles, and the circuit's simulation follows the clear program
    qmodule.set_rounding(6, "approximate")
    qmodule.compile(x)
    clear, simulated = qmodule(x[:100]), qmodule.forward(x[:100], fhe="simulate")
    assert np.mean(clear.argmax(1) == simulated.argmax(1)) >= 0.9


# -- 2. no folders left in the temporary directory ----------------------------------------------

SCRIPT = """
    import gc, json, os, sys
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from cml_core import load_model
    from cml_core.errors import CompileError

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "w"),
         numpy_helper.from_array(np.linspace(1, -1, 8, dtype=np.float32).reshape(4, 2), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    tmp = os.environ["TMPDIR"]
    modules = []
    for n_bits in (2, 3, 3):
        qmodule = load_model(model).quantize(x, n_bits=n_bits)
        qmodule.compile(x)
        assert np.array_equal(qmodule.forward(x, fhe="simulate"), qmodule.forward(x))
        modules.append(qmodule)
    assert np.array_equal(modules[0].forward(x[:1], fhe="execute"), modules[0].forward(x[:1]))
    # a compile that fails after concrete-python made its library folder
    big = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Mul", ["r", "h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(np.linspace(-1, 1, 9, dtype=np.float32).reshape(3, 3), "w")])
    try:
        load_model(helper.make_model(big, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)).quantize(
            x, n_bits=6).compile(x)
        failed = False
    except CompileError:
        failed = True
    def listing():  # concrete-optimizer's parameter cache ('optimizer') is one shared folder, kept
        return sorted(name for name in os.listdir(tmp) if name != "optimizer")

    alive = listing()
    kept = modules.pop()  # lives until the process exits
    del modules, qmodule
    gc.collect()
    print(json.dumps({"failed": failed, "alive": alive, "after_gc": listing()}))
"""


def test_compiled_circuits_leave_no_folders_in_the_temporary_directory(tmp_path):
    private = tmp_path / "tmp"
    private.mkdir()
    env = {**os.environ, "TMPDIR": str(private)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"]
    # while alive: one folder per server (execution and simulation) of each of the 3 circuits,
    # none for the compile that failed
    assert len(report["alive"]) == 6
    assert len(report["after_gc"]) == 2 and set(report["after_gc"]) < set(report["alive"])  # the kept circuit's
    assert sorted(set(os.listdir(private)) - {"optimizer"}) == []  # and those went at exit
    assert sorted(os.listdir(tmp_path)) == ["tmp"]


# -- 4. bad data reaching the circuit ---------------------------------------------------------

@pytest.fixture(scope="module")
def compiled():
    model, _ = FAMILIES["linear+univariate"]
    x = _x("linear+univariate", 30)
    qmodule = load_model(model).quantize(x, n_bits=3)
    qmodule.compile(x)
    return qmodule, x


@pytest.mark.parametrize("mode", ["simulate", "execute"])
def test_an_empty_batch_gives_empty_outputs_like_the_clear_program(compiled, mode):
    qmodule, x = compiled
    q = qmodule.quantize_input(x[:0])
    clear = qmodule.quantized_forward(q)
    got = qmodule.quantized_forward(q, fhe=mode)
    assert got.shape == clear.shape == (0, 2)
    assert qmodule.forward(x[:0], fhe=mode).shape == (0, 2)


def test_integers_the_circuit_cannot_take_are_typed_errors(compiled):
    qmodule, x = compiled
    q = qmodule.quantize_input(x[:3])
    with_nan = q.astype(np.float64)
    with_nan[1, 0] = np.nan
    with pytest.raises(InputError, match="input 'x' contains NaN.*quantize_input"):
        qmodule.quantized_forward(with_nan, fhe="simulate")
    with pytest.raises(InputError, match="fractions"):
        qmodule.quantized_forward(q + 0.5, fhe="simulate")
    negative = q.copy()
    negative[0, 0] = -1
    with pytest.raises(FHEExecutionError, match=r"input 'x' holds integers in \[-1, .*outside .*quantize_input"):
        qmodule.quantized_forward(negative, fhe="simulate")
    with pytest.raises(FHEExecutionError, match="outside"):
        qmodule.quantized_forward(q + 1000, fhe="execute")
    with pytest.raises(InputError, match=r"samples of shape \(3,\)"):
        qmodule.quantized_forward(q[:, :2], fhe="simulate")
    # what the circuit takes still runs
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), qmodule.quantized_forward(q))


def test_compile_refuses_nan_or_empty_calibration_data():
    model, _ = FAMILIES["linear+univariate"]
    x = _x("linear+univariate", 20)
    qmodule = load_model(model).quantize(x, n_bits=3)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(QuantizationError, match="NaN"):
        qmodule.compile(bad)
    with pytest.raises(QuantizationError, match="empty"):
        qmodule.compile(x[:0])


def test_choose_rounding_refuses_labels_of_the_wrong_length():
    model, _ = FAMILIES["linear+univariate"]
    x = _x("linear+univariate", 20)
    qmodule = load_model(model).quantize(x, n_bits=4)
    with pytest.raises(InputError, match="y_val has 19 labels for 20 samples"):
        choose_rounding(qmodule, x, x, np.zeros(19, dtype=np.int64))
    with pytest.raises(InputError, match="x_val is empty"):
        choose_rounding(qmodule, x, x[:0])


# -- 3. choose_rounding passes over settings that do not compile ---------------------------------

def test_choose_rounding_records_settings_that_do_not_compile_and_keeps_one_that_does():
    model, _ = FAMILIES["linear+univariate"]
    x = _x("linear+univariate", 40)
    reference = load_model(model)(x)

    def exact_match(out):  # 1 for the float model only: no rounding can reach the target
        return float(np.array_equal(out, reference))

    qmodule = load_model(model).quantize(x, n_bits=8)  # its 17-bit accumulator feeds a 16-bit lookup
    # approximate rounding: 10 bits compile, 11 to 15 find no parameters; none, the defaults' rounding
    choice = choose_rounding(qmodule, x, x, score=exact_match, max_drop=0.5, method="approximate", min_bits=10,
                             repeats=1)
    failed = [t for t in choice.trials if t.error is not None]
    keys = list(choice.bits)
    assert [t.bits for t in failed] == [dict.fromkeys(keys, b) for b in range(11, 16)]
    assert all(np.isnan(t.score) for t in failed)
    assert [t.bits for t in choice.trials][:6] == [dict.fromkeys(keys, b) for b in range(10, 16)]
    # the last trial, no rounding asked, compiled as the defaults do: with the lookup rounded automatically
    assert choice.trials[-1].error is None and choice.trials[-1].bits == qmodule.auto_rounding.bits
    assert choice.bits in [t.bits for t in choice.trials if t.error is None]
    assert choice.score < choice.target and "does not compile" in str(choice)
    assert qmodule.rounding_bits() == choice.bits and qmodule.fhe_circuit is not None


# -- 5. simulate equals the clear program however few compile samples ---------------------------

def test_compiling_on_one_sample_keeps_the_quantization_ranges():
    from cml_core.demo import load_example

    model, data = load_example()
    x_train, x_test = data["x_train"], data["x_test"]
    assert len(x_train) == 1400
    qmodule = load_model(model).quantize(x_train, n_bits=6, rounding_threshold_bits=6)
    qmodule.compile(x_train[:1])
    for rows in (x_train[:150], x_test[:150]):
        q = qmodule.quantize_input(rows)
        np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), qmodule.quantized_forward(q))


def test_the_samples_at_the_extremes_give_the_circuit_of_the_whole_calibration_set():
    from cml_core.demo import load_example
    from cml_core.fhe import compile as glue
    from concrete import fhe

    model, data = load_example()
    qmodule = load_model(model).quantize(data["x_train"], n_bits=6, rounding_threshold_bits=6)
    function, names = glue.traced_function(qmodule)
    pool = qmodule._calibration_inputs
    configuration = fhe.Configuration(dump_artifacts_on_unexpected_failures=False, fhe_execution=False)

    def mlir(samples):  # no server is built: the program only, with every integer's bit width
        return fhe.Compiler(function, dict.fromkeys(names, "encrypted")).compile(samples, configuration).mlir

    whole = mlir(glue.samples_of(pool))
    for chunk in (0, 333):  # one batch, or batches of 333 samples (the last one topped up)
        chosen = glue.extreme_samples(fhe, function, names, pool, chunk)
        assert 2 <= len(chosen) <= 40
        assert mlir(glue.samples_of([a[chosen] for a in pool])) == whole


# -- 6. tracing one sample at a time does not change the graph's meaning ---------------------------

def _squeeze_model(opset):
    rng = np.random.default_rng(3)
    unsqueeze = (helper.make_node("Unsqueeze", ["h"], ["u"], axes=[1]) if opset < 13
                 else helper.make_node("Unsqueeze", ["h", "one"], ["u"]))
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"]), unsqueeze,
             helper.make_node("Squeeze", ["u"], ["s"]),  # no axes: every axis of size 1
             helper.make_node("Relu", ["s"], ["r"]), helper.make_node("Gemm", ["r", "w2"], ["y"])]
    inits = [numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(4, 2)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "one")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_without_axes_keeps_the_batch_axis_when_traced(opset):
    x = np.random.default_rng(4).uniform(-1, 1, size=(30, 3)).astype(np.float32)
    module = load_model(_squeeze_model(opset))
    qmodule = module.quantize(x, n_bits=3)
    qmodule.compile(x[:1])
    q = qmodule.quantize_input(x)
    clear = qmodule.quantized_forward(q)
    assert clear.shape == (30, 2)
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), clear)


@pytest.mark.filterwarnings("ignore::cml_core.errors.SaturationWarning")  # one calibration sample
def test_squeeze_without_axes_calibrated_on_one_sample_is_named_at_compile_time():
    x = np.random.default_rng(4).uniform(-1, 1, size=(5, 3)).astype(np.float32)
    qmodule = load_model(_squeeze_model(13)).quantize(x[:1], n_bits=3)
    assert qmodule.quantized_forward(qmodule.quantize_input(x)).shape == (5, 2)  # as ONNX: the batch axis stays
    with pytest.raises(CompileError, match=r"node .*\(Squeeze\) gives output 0 of shape \(4,\) for one sample but "
                                           r"\(2, 4\) for 2 samples"):
        qmodule.compile(x[1:2])


def _quantized_n3_to_n2(nodes, inits, seed):
    """The graph x (n, 3) -> y (n, 2) quantized at 3 bits on 20 random samples, and those samples."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    x = np.random.default_rng(seed).uniform(-1, 1, size=(20, 3)).astype(np.float32)
    return load_model(model).quantize(x, n_bits=3), x


def test_an_op_that_mixes_samples_is_named_at_compile_time():
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"]),
             helper.make_node("ReduceSum", ["h", "zero"], ["t"], keepdims=1),  # a sum over the batch axis
             helper.make_node("Add", ["h", "t"], ["y"])]
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2), "w"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")]
    qmodule, x = _quantized_n3_to_n2(nodes, inits, seed=5)
    with pytest.raises(CompileError, match=r"ReduceSum.*one sample.*batch axis"):
        qmodule.compile(x)


def _folded_batch(fold_sample_major):
    """x (n, 4, 3) -> y (n, 4): a product, then the batch folded into the next axis as attention exports do
    ((batch, heads, ...) to (batch * heads, ...)), a lookup on the folded tensor, unfolded and summed; the fold
    sample by sample, or position by position (a Transpose first: each row of the folded tensor then holds one
    position of every sample)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"])]
    if fold_sample_major:
        nodes += [helper.make_node("Reshape", ["h", "folded_shape"], ["f"]), helper.make_node("Relu", ["f"], ["r"]),
                  helper.make_node("Reshape", ["r", "shape"], ["u"])]
    else:
        nodes += [helper.make_node("Transpose", ["h"], ["t"], perm=[1, 0, 2]),
                  helper.make_node("Reshape", ["t", "rows"], ["f"]), helper.make_node("Relu", ["f"], ["r"]),
                  helper.make_node("Reshape", ["r", "positions"], ["p"]),
                  helper.make_node("Transpose", ["p"], ["u"], perm=[1, 0, 2])]
    nodes.append(helper.make_node("ReduceSum", ["u", "axis"], ["y"], keepdims=0))
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "w"),
             numpy_helper.from_array(np.array([-1, 2, 4], dtype=np.int64), "folded_shape"),
             numpy_helper.from_array(np.array([-1, 4, 4], dtype=np.int64), "shape"),
             numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "rows"),
             numpy_helper.from_array(np.array([4, -1, 4], dtype=np.int64), "positions"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4, 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    x = np.random.default_rng(8).uniform(-1, 1, size=(20, 4, 3)).astype(np.float32)
    return load_model(model), x


def test_a_batch_folded_into_another_axis_sample_by_sample_compiles():
    module, x = _folded_batch(fold_sample_major=True)
    qmodule = module.quantize(x, n_bits=4)
    qmodule.compile(x)  # each sample's circuit folds its own (1, 4, 4) into (2, 2, 4): the batch's rows 2i, 2i+1
    q = qmodule.quantize_input(x)
    clear = qmodule.quantized_forward(q)
    assert clear.shape == (20, 4)
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), clear)
    np.testing.assert_allclose(qmodule(x), module(x), atol=0.5)  # the model's output at 4 bits (seen within 0.26)


def test_a_batch_folded_position_by_position_is_named_at_compile_time():
    module, x = _folded_batch(fold_sample_major=False)
    qmodule = module.quantize(x, n_bits=4)
    with pytest.raises(CompileError, match=r"\(Reshape\) computes other integers for sample 0 alone than within a "
                                           r"batch of 3 \(it mixes samples\)"):
        qmodule.compile(x)


def test_a_gather_whose_indices_follow_the_batch_size_compiles():
    # as exported attention masks: GatherND rows 0..n-1 of the input, the indices computed from its shape (the
    # traced sample's: row 0 alone), which numpy cannot trace on an encrypted tensor
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "zero"], ["n"]),
             helper.make_node("Range", ["zero", "n", "one"], ["rows"]),
             helper.make_node("Unsqueeze", ["rows", "last"], ["indices"]),
             helper.make_node("GatherND", ["x", "indices"], ["g"]),
             helper.make_node("MatMul", ["g", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    w = np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([1], np.int64), "last"), numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])], inits)
    module = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8))
    x = np.random.default_rng(3).uniform(-1, 1, size=(20, 8)).astype(np.float32)
    np.testing.assert_allclose(module(x), np.maximum(x @ w, 0), rtol=1e-6)
    qmodule = module.quantize(x, n_bits=4)
    qmodule.compile(x)  # was: "cannot reshape array of size 1 into shape (1,8)" while tracing
    q = qmodule.quantize_input(x)
    np.testing.assert_array_equal(qmodule.quantized_forward(q, fhe="simulate"), qmodule.quantized_forward(q))


def test_choose_rounding_says_when_no_setting_compiles():
    model, _ = FAMILIES["encrypted-encrypted"]  # its 12-bit two-input lookup cannot be rounded
    x = _x("encrypted-encrypted", 40)
    qmodule = load_model(model).quantize(x, n_bits=6)
    with pytest.raises(CompileError, match=r"choose_rounding: no setting tried compiles \(\{.*\}: .*NoParam"):
        choose_rounding(qmodule, x, x, max_drop=0.0, method="approximate", min_bits=14, repeats=1)


def test_a_value_computed_from_the_batch_size_is_named_at_compile_time():
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"]), helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["n"]),
             helper.make_node("Cast", ["n"], ["count"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Div", ["h", "count"], ["mean"]),  # divided by the batch size
             helper.make_node("Relu", ["mean"], ["r"]), helper.make_node("Gemm", ["r", "w2"], ["y"])]
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "w"),
             numpy_helper.from_array(np.linspace(1, -1, 8, dtype=np.float32).reshape(4, 2), "w2"),
             numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")]
    qmodule, x = _quantized_n3_to_n2(nodes, inits, seed=6)
    with pytest.raises(CompileError, match=r"\(Div\) gives sample 0 other values alone"):
        qmodule.compile(x)


def test_compile_onnx_model_reads_external_data_from_base_dir(tmp_path, monkeypatch):
    from cml_core import ModelLoadError, compile_onnx_model

    from ..core.test_external_data import X, _save_external

    path = _save_external(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    data = path.read_bytes()
    with pytest.raises(ModelLoadError, match="base_dir"):
        compile_onnx_model(data, X, n_bits=4)
    qmodule = compile_onnx_model(data, X, n_bits=4, base_dir=path.parent)
    reference = compile_onnx_model(path, X, n_bits=4)
    np.testing.assert_array_equal(qmodule.forward(X, fhe="simulate"), reference.forward(X, fhe="simulate"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # nothing written into the cwd
