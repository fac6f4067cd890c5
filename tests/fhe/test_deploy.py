"""Deployment through the Python API: saved artifacts, load_quantized, clients whose keys stay theirs."""

import json
import os
import stat
import zipfile

import numpy as np
import onnx
import pytest
from cml_core.deploy import Client, Server, key_id
from onnx import helper, numpy_helper

from cml_core import CmlError, DeploymentError, InputError, load_model, load_quantized

pytestmark = pytest.mark.fhe

RNG = np.random.default_rng(3)


def _model(nodes, inits, in_shape, out_shape):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v if v.dtype.kind == "i" else v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def linear():
    return _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
                  {"w": RNG.normal(size=(5, 3)), "b": RNG.normal(size=3)}, ["n", 5], ["n", 3]), (5,)


def mlp():
    return _model([helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                   helper.make_node("Gemm", ["r", "w2"], ["y"])],
                  {"w": RNG.normal(size=(6, 8)), "b": RNG.normal(size=8), "w2": RNG.normal(size=(8, 3))},
                  ["n", 6], ["n", 3]), (6,)


def cnn():
    return _model([helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["c"], ["r"]),
                   helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                   helper.make_node("Reshape", ["p", "s"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"])],
                  {"k": RNG.normal(size=(2, 1, 3, 3)), "s": np.array([-1, 8]), "w": RNG.normal(size=(8, 3))},
                  ["n", 1, 4, 4], ["n", 3]), (1, 4, 4)


def _compiled(build, n_bits, rounding=None):
    model, sample_shape = build()
    x = RNG.normal(size=(60, *sample_shape)).astype(np.float32)
    qmodule = load_model(model).quantize(x, n_bits=n_bits, rounding_threshold_bits=rounding)
    qmodule.compile(x)
    return qmodule, x


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An MLP (with rounding) compiled and saved, with one client's keys."""
    qmodule, x = _compiled(mlp, 3, rounding=4)
    folder = qmodule.save(tmp_path_factory.mktemp("deploy"))
    keys = tmp_path_factory.mktemp("keys") / "alice"
    client = Client(folder / "client.zip", keys=keys)
    client.generate_keys()
    return qmodule, x, folder, client


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A linear model saved with its own client: the 'another model' of the tests."""
    qmodule, x = _compiled(linear, 3)
    folder = qmodule.save(tmp_path_factory.mktemp("other"))
    client = Client(folder, keys=tmp_path_factory.mktemp("keys") / "other")
    client.generate_keys()
    return qmodule, x, folder, client


def test_saved_files(saved):
    _, _, folder, client = saved
    assert sorted(os.listdir(folder)) == ["client.zip", "manifest.json", "model.zip", "server.zip"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model_id"] == client.model_id
    assert set(manifest["versions"]) == {"cml", "concrete-python", "python"}
    assert manifest["inputs"][0]["sample_shape"] == [6] and manifest["outputs"][0]["sample_shape"] == [3]
    with zipfile.ZipFile(folder / "server.zip") as z:
        assert "circuit.mlir" in z.namelist()


def test_client_server_equals_simulation(saved):
    qmodule, x, folder, client = saved
    server = Server(folder)
    out = server.run(client.encrypt(x[:3]), client.evaluation_keys())
    np.testing.assert_array_equal(client.decrypt(out), qmodule.forward(x[:3], fhe="simulate"))


@pytest.mark.parametrize("build", [linear, cnn])
def test_client_server_equals_simulation_and_execution_other_models(build, tmp_path):
    qmodule, x = _compiled(build, 3)
    folder = qmodule.save(tmp_path / "deploy")
    client = Client(folder, keys=tmp_path / "keys")
    out = Server(folder).run(client.encrypt(x[:2]), client.evaluation_keys())
    y = client.decrypt(out)
    np.testing.assert_array_equal(y, qmodule.forward(x[:2], fhe="simulate"))
    np.testing.assert_array_equal(y, qmodule.forward(x[:2], fhe="execute"))


def test_load_quantized_round_trip(saved):
    qmodule, x, folder, _ = saved
    loaded = load_quantized(folder)
    assert str(loaded.bitwidth_report()) == str(qmodule.bitwidth_report())
    assert loaded.rounding_bits() == qmodule.rounding_bits() and loaded.config == qmodule.config
    np.testing.assert_array_equal(loaded(x), qmodule(x))
    np.testing.assert_array_equal(loaded.forward(x[:4], fhe="simulate"), qmodule.forward(x[:4], fhe="simulate"))
    # saved again from the loaded module: the same circuit and client artifact
    again = loaded.save(folder.parent / "again")
    assert (again / "server.zip").read_bytes() == (folder / "server.zip").read_bytes()
    assert Client(again).model_id == Client(folder).model_id


def test_load_quantized_round_trip_cnn_with_rounding(tmp_path):
    qmodule, x = _compiled(cnn, 4, rounding=3)
    loaded = load_quantized(qmodule.save(tmp_path))
    assert str(loaded.bitwidth_report()) == str(qmodule.bitwidth_report())
    np.testing.assert_array_equal(loaded(x), qmodule(x))
    np.testing.assert_array_equal(loaded.forward(x[:3], fhe="simulate"), qmodule.forward(x[:3], fhe="simulate"))


def _secret_windows(client):
    """128-byte windows of the client's secret LWE keys: 16 key bits stored as 64-bit words, mixed 0s and 1s."""
    keyset = client._concrete_client().keys._keyset  # the test reads the secret to look for it elsewhere
    windows = []
    for secret in keyset.get_client_keys().get_secret_keys():
        raw = secret.serialize()
        for start in range(len(raw) - 128, 0, -997):
            window = raw[start:start + 128]
            if 4 <= window.count(b"\x01") <= 12:
                windows.append(window)
    return windows


def test_no_secret_key_material_leaves_the_client(saved):
    _, x, folder, client = saved
    windows = _secret_windows(client)
    assert windows
    keyset_file = (client.key_folder / "keyset.bin").read_bytes()
    assert any(w in keyset_file for w in windows)  # the check finds a secret where there is one
    ct = client.encrypt(x[:2])
    evk = client.evaluation_keys()
    out = Server(folder).run(ct, evk)
    written = {p.name: p.read_bytes() for p in folder.iterdir()}
    for name in ("server.zip", "client.zip", "model.zip"):  # and what is inside the zips, uncompressed
        with zipfile.ZipFile(folder / name) as z:
            written.update({f"{name}/{m}": z.read(m) for m in z.namelist()})
    sent = {"evaluation keys": evk, "ciphertexts": ct, "results": out}
    for what, data in {**written, **sent}.items():
        assert not any(w in data for w in windows), f"secret key material in {what}"
    # the key folder is the owner's alone
    assert stat.S_IMODE(client.key_folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((client.key_folder / "keyset.bin").stat().st_mode) == 0o600


def test_keys_are_reused_from_the_key_folder(saved):
    _, x, folder, client = saved
    again = Client(folder, keys=client.key_folder)
    assert again.key_id == client.key_id
    out = Server(folder).run(again.encrypt(x[:1]), client.evaluation_keys())
    np.testing.assert_array_equal(client.decrypt(out), again.decrypt(out))


def test_another_model_or_other_keys_are_refused(saved, other):
    qmodule, x, folder, client = saved
    _, x_other, other_folder, other_client = other
    server = Server(folder)
    with pytest.raises(DeploymentError, match="for model"):
        server.load_keys(other_client.evaluation_keys())
    with pytest.raises(DeploymentError, match="for model"):
        server.run(other_client.encrypt(x_other[:1]), client.evaluation_keys())
    # a client's ciphertexts sent with another client's keys of the same model
    stranger = Client(folder, keys=client.key_folder.parent / "mallory")
    with pytest.raises(DeploymentError, match="evaluation keys"):
        server.run(stranger.encrypt(x[:1]), client.evaluation_keys())
    # results of one client are not decrypted by another
    out = server.run(client.encrypt(x[:1]), client.evaluation_keys())
    with pytest.raises(DeploymentError, match="evaluation keys"):
        stranger.decrypt(out)
    with pytest.raises(DeploymentError, match="belongs to model"):
        other_client.decrypt(out)
    # a key folder holds one model's keys
    with pytest.raises(DeploymentError, match="holds keys of model"):
        Client(other_folder, keys=client.key_folder).generate_keys()


def _cut(payload, n):
    return payload[:n]


def test_corrupt_payloads_are_refused(saved):
    _, x, folder, client = saved
    server = Server(folder)
    ct, evk = client.encrypt(x[:2]), client.evaluation_keys()
    keys = server.load_keys(evk)
    bad_ciphertexts = {
        "empty": b"",
        "garbage": os.urandom(1000),
        "truncated": ct[:-10],
        "trailing bytes": ct + b"x",
        "header only": ct[:20],
        "flipped body": ct[:-200] + bytes(b ^ 0xFF for b in ct[-200:]),
        "results instead": server.run(ct, keys),
    }
    for what, payload in bad_ciphertexts.items():
        with pytest.raises(DeploymentError):
            server.run(payload, keys)
        assert what
    for payload in (b"", os.urandom(4096), evk[:1000], evk[:-1], ct):
        with pytest.raises(DeploymentError):
            server.load_keys(payload)
    # the server still answers
    np.testing.assert_array_equal(client.decrypt(server.run(ct, keys)), client.decrypt(server.run(ct, evk)))
    assert key_id(evk) == keys.key_id == client.key_id


def test_wrong_sample_shape_is_refused_by_the_client(saved):
    _, x, _, client = saved
    with pytest.raises(InputError):
        client.encrypt(x[:2, :4])


def test_versions_and_changed_files_are_checked(saved, tmp_path):
    import shutil

    _, _, folder, _ = saved
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["versions"]["concrete-python"] = "0.0.1"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    for load in (Server, load_quantized):
        with pytest.raises(DeploymentError, match=r"concrete-python '0\.0\.1'.*concrete-python '2\."):
            load(copy)
    shutil.copy(folder / "manifest.json", copy / "manifest.json")
    manifest["versions"] = json.loads((folder / "manifest.json").read_text())["versions"]
    manifest["versions"]["cml"] = "9.9"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DeploymentError, match=r"cml '9\.9'"):
        Server(copy)
    shutil.copy(folder / "manifest.json", copy / "manifest.json")
    (copy / "server.zip").write_bytes((folder / "server.zip").read_bytes()[:-5])
    with pytest.raises(DeploymentError, match="does not match the hash"):
        Server(copy)
    with pytest.raises(DeploymentError, match="no manifest"):
        Server(tmp_path)


def test_save_needs_a_compiled_module(tmp_path):
    model, shape = linear()
    x = RNG.normal(size=(20, *shape)).astype(np.float32)
    qmodule = load_model(model).quantize(x, n_bits=3)
    with pytest.raises(CmlError, match="compile"):
        qmodule.save(tmp_path)
    assert not list(tmp_path.iterdir())
