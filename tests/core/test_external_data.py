"""External data: read from the model file's own folder only, never from the current directory or outside."""

import os
import re

import numpy as np
import onnx
import pytest
from cml_core.cli import main as cli
from cml_core.testing import run_onnxruntime
from onnx import helper, numpy_helper

from cml_core import ModelLoadError, load_model

F = onnx.TensorProto.FLOAT
W = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
B = np.array([0.5, -1.0, 2.0, 0.25], np.float32)


def _matmul_add():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm"), helper.make_node("Add", ["xw", "b"], ["y"], name="add")],
        "g", [helper.make_tensor_value_info("x", F, ["n", 3])], [helper.make_tensor_value_info("y", F, ["n", 4])],
        [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")],
    )
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 14)])


def _save_external(folder, name="model.onnx", location="weights.bin"):
    """The MatMul+Add model saved in ``folder`` with both initializers in ``location`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save_model(_matmul_add(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def _edit_entries(path, **changes):
    """Rewrite the external-data entries of initializer 'w' in the saved model (data file untouched)."""
    model = onnx.load(path, load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name == "w")
    entries = {e.key: e.value for e in tensor.external_data}
    entries.update({k: v for k, v in changes.items() if v is not None})
    for k in [k for k, v in changes.items() if v is None]:
        entries.pop(k, None)
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    return model


X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)


def test_weights_beside_the_model_load_from_any_directory(tmp_path, monkeypatch):
    path = _save_external(tmp_path / "models")
    assert (tmp_path / "models" / "weights.bin").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    expected = run_onnxruntime(onnx.load(path), {"x": X})[0]
    np.testing.assert_allclose(load_model(path)(X), expected, rtol=1e-6)
    np.testing.assert_allclose(load_model(str(path))(X), expected, rtol=1e-6)
    assert cli(["inspect", str(path)]) == 0


def test_location_is_not_resolved_against_the_current_directory(tmp_path, monkeypatch, capsys):
    """A model anywhere that names 'secret/key.txt' must not read ./secret/key.txt of the caller."""
    path = _save_external(tmp_path / "downloads")
    _edit_entries(path, location="secret/key.txt", offset="0", length=str(W.nbytes))
    cwd = tmp_path / "home"
    (cwd / "secret").mkdir(parents=True)
    secret = np.full(W.shape, 42.0, np.float32)
    (cwd / "secret" / "key.txt").write_bytes(secret.tobytes())
    monkeypatch.chdir(cwd)
    with pytest.raises(ModelLoadError, match=r"external data file 'secret/key\.txt' of tensor 'w' \(in .*downloads\): No such file"):
        load_model(path)
    capsys.readouterr()
    assert cli(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cml: error:") and "secret/key.txt" in err and "Traceback" not in err


@pytest.mark.parametrize("location,match", [
    ("../outside.bin", r"climbs out of the model's folder with '\.\.'"),
    ("sub/../../outside.bin", r"climbs out"),
    ("sub\\..\\..\\outside.bin", r"climbs out"),
    ("ABSOLUTE", r"is an absolute path"),
    ("/etc/passwd", r"is an absolute path"),
    ("", r"is not a file name"),
])
def test_locations_leaving_the_folder_are_refused(tmp_path, location, match):
    path = _save_external(tmp_path / "m")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.full(W.shape, 7.0, np.float32).tobytes())
    _edit_entries(path, location=str(outside) if location == "ABSOLUTE" else location)
    with pytest.raises(ModelLoadError, match=r"tensor 'w'.*" + match):
        load_model(path)
    assert cli(["inspect", str(path)]) == 1


def test_symlink_out_of_the_folder_is_refused_and_one_inside_is_followed(tmp_path):
    path = _save_external(tmp_path / "m")
    (tmp_path / "outside.bin").write_bytes((tmp_path / "m" / "weights.bin").read_bytes())
    os.symlink(tmp_path / "outside.bin", tmp_path / "m" / "link.bin")
    _edit_entries(path, location="link.bin")
    with pytest.raises(ModelLoadError, match=r"tensor 'w'.*'link\.bin' resolves to .*outside the model's folder"):
        load_model(path)
    os.symlink("weights.bin", tmp_path / "m" / "inner.bin")
    _edit_entries(path, location="inner.bin")
    np.testing.assert_allclose(load_model(path)(X), X @ W + B, rtol=1e-6)


@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero"])
def test_non_regular_data_files_are_refused_before_reading(tmp_path, kind):
    path = _save_external(tmp_path / "m")
    special = tmp_path / "m" / "special"
    if kind == "fifo":
        os.mkfifo(special)  # opening it for reading would block until a writer comes
    elif kind == "directory":
        special.mkdir()
    else:
        if not os.path.exists("/dev/zero"):
            pytest.skip("no /dev/zero")
        os.symlink("/dev/zero", special)  # outside the folder too: refused either way
    _edit_entries(path, location="special")
    with pytest.raises(ModelLoadError, match=r"tensor 'w'.*(not a regular file|outside the model's folder)"):
        load_model(path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_non_regular_model_path_is_refused(tmp_path, kind):
    if kind == "fifo":
        target = tmp_path / "model.onnx"
        os.mkfifo(target)
        match = "a FIFO, not a regular file"
    elif kind == "dev-zero":
        if not os.path.exists("/dev/zero"):
            pytest.skip("no /dev/zero")
        target = "/dev/zero"
        match = "a character device, not a regular file"
    else:
        target = tmp_path
        match = "a directory, not a regular file"
    with pytest.raises(ModelLoadError, match=match):
        load_model(target)
    assert cli(["inspect", str(target)]) == 1


@pytest.mark.parametrize("changes,match", [
    ({"offset": str(10**6)}, r"is 64 bytes long, but 48 bytes are expected at offset 1000000"),
    ({"offset": "20"}, r"is 64 bytes long, but 48 bytes are expected at offset 20"),
    ({"length": "4"}, r"declares dims \[3, 4\] \(48 bytes\) but its external data entry says 4 bytes"),
    ({"length": "4000"}, r"external data entry says 4000 bytes"),
    ({"offset": "-8"}, r"external data offset '-8' is not a non-negative integer"),
    ({"offset": "abc"}, r"external data offset 'abc' is not a non-negative integer"),
    ({"location": None}, r"external data location '' is not a file name"),
])
def test_offsets_and_lengths_are_checked(tmp_path, changes, match):
    path = _save_external(tmp_path / "m")
    assert (tmp_path / "m" / "weights.bin").stat().st_size == W.nbytes + B.nbytes  # 48 + 16 (b follows w)
    if "location" not in changes:
        changes = {"offset": "0", "length": str(W.nbytes), **changes}
    _edit_entries(path, **changes)
    with pytest.raises(ModelLoadError, match=r"tensor 'w'|'w'") as info:
        load_model(path)
    assert re.search(match, str(info.value)), str(info.value)


def test_data_file_shorter_than_the_tensor(tmp_path):
    path = _save_external(tmp_path / "m")
    data = tmp_path / "m" / "weights.bin"
    data.write_bytes(data.read_bytes()[:30])
    with pytest.raises(ModelLoadError, match=r"is 30 bytes long, but 48 bytes are expected at offset 0"):
        load_model(path)


def test_bytes_or_proto_with_external_data_need_base_dir(tmp_path, monkeypatch):
    path = _save_external(tmp_path / "m")
    data = path.read_bytes()
    proto = onnx.load(path, load_external_data=False)
    before = proto.SerializeToString()
    monkeypatch.chdir(tmp_path / "m")  # even from the data's own folder: no folder is assumed
    for source in (data, proto):
        with pytest.raises(ModelLoadError, match=r"keeps tensor 'w' in the external file 'weights.bin'.*base_dir="):
            load_model(source)
    monkeypatch.chdir(tmp_path)
    for source in (data, proto):
        np.testing.assert_allclose(load_model(source, base_dir=tmp_path / "m")(X), X @ W + B, rtol=1e-6)
    assert proto.SerializeToString() == before  # the caller's proto is left as it was
    with pytest.raises(ModelLoadError, match="is not a directory"):
        load_model(data, base_dir=tmp_path / "nowhere")


def test_torch_default_exporter_writes_data_beside_the_model(tmp_path, monkeypatch):
    """Since torch 2.9 the default (dynamo) exporter keeps weights in model.onnx.data."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")  # installed by ./dev and noxfile.py; torch's default exporter needs it
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x = torch.randn(4, 10)
    folder = tmp_path / "export"
    folder.mkdir()
    torch.onnx.export(net, (x,), str(folder / "model.onnx"))
    assert (folder / "model.onnx.data").is_file()
    monkeypatch.chdir(tmp_path)
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(load_model(folder / "model.onnx")(x.numpy()), expected, rtol=1e-5, atol=1e-6)
    assert cli(["inspect", str(folder / "model.onnx")]) == 0


def test_a_model_over_protobufs_limit_is_checked_on_its_skeleton(tmp_path, monkeypatch):
    """The checker and shape inference serialize the model, which protobuf refuses over 2 GiB: such a model
    is checked with its large tensors standing aside. Here the limit is lowered to a small model's size."""
    import cml_core.numpy_module as numpy_module

    path = _save_external(tmp_path)
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    expected = load_model(path)(x)
    monkeypatch.setattr(numpy_module, "SKELETON_BYTES", 64)
    monkeypatch.setattr(numpy_module, "SKELETON_TENSOR_BYTES", 16)
    np.testing.assert_array_equal(load_model(path)(x), expected)
    # an inconsistent node is still named
    model = onnx.load(path, load_external_data=False)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(ModelLoadError, match="node"):
        load_model(tmp_path / "bad.onnx")


@pytest.mark.slow
def test_a_model_over_2_gib_with_external_data_loads(tmp_path):
    """2.1 GiB of float32 weights (a 2-D table) in model.onnx.data: loaded by path, run, equal to the values
    written. (A 1-D table that large makes onnx's data propagation itself take gigabytes: not tested.)"""
    rows = (2**31 + 2**26) // (4 * 16)
    table = np.memmap(tmp_path / "model.onnx.data", mode="w+", dtype="<f4", shape=(rows, 16))
    table[::4096, 3] = np.arange(len(table[::4096]), dtype=np.float32)
    table.flush()
    del table
    tensor = onnx.TensorProto(name="table", data_type=onnx.TensorProto.FLOAT, dims=[rows, 16],
                              data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", "model.onnx.data"), ("offset", "0"), ("length", str(4 * 16 * rows))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Gather", ["table", "i"], ["y"])], "big",
                              [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 16])], [tensor])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9),
              tmp_path / "model.onnx")
    index = np.array([0, 4096, 5 * 4096, rows - 1])
    np.testing.assert_array_equal(load_model(tmp_path / "model.onnx")(index)[:, 3], np.array([0, 1, 5, 0], np.float32))
