"""`cml serve` as a real process on localhost: predictions equal the saved module's simulation, for
several clients at once; bad requests get a 4xx with a detail and the next good request still works;
`cml compile` and `cml predict` end to end."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
from cml_core.deploy import Client, Server
from cml_core.fhe.remote import RemoteModel
from onnx import helper, numpy_helper

from cml_core import InputError, load_model, load_quantized

pytestmark = pytest.mark.fhe

ROOT = Path(__file__).resolve().parents[2]


def _model(hidden: bool, seed: int = 0) -> onnx.ModelProto:
    """Gemm only (``hidden=False``) or Gemm-Relu-Gemm: 4 inputs, 3 outputs."""
    rng = np.random.default_rng(seed)
    if hidden:
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                 helper.make_node("Gemm", ["r", "w2"], ["y"])]
        weights = {"w": rng.normal(size=(4, 5)), "b": rng.normal(size=5), "w2": rng.normal(size=(5, 3))}
    else:
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"])]
        weights = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


X = np.random.default_rng(1).normal(size=(60, 4)).astype(np.float32)


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), "PYTHONWARNINGS": "ignore"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body=None, headers=None):
    """(status, body, headers) of a GET, or of a POST of ``body``; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


class Service:
    """A `cml serve` process; ``stop`` ends it."""

    def __init__(self, folder: Path, tmp: Path, *options: str) -> None:
        self.store = tmp / "store"
        self.log = tmp / "serve.log"
        self.url = f"http://127.0.0.1:{_free_port()}"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cml_core", "serve", str(folder), "--port", self.url.rsplit(":", 1)[1],
                 "--key-store", str(self.store), "--workers", "1", *options],
                stdout=log, stderr=subprocess.STDOUT, env=_env(tmp), cwd=tmp)
        deadline = time.monotonic() + 90
        while True:
            try:
                if _http(f"{self.url}/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"cml serve did not start:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def predict(self, client: Client, x) -> np.ndarray:
        """Upload ``client``'s keys, post its ciphertexts of ``x`` (urllib only) and decrypt."""
        status, body, _ = _http(f"{self.url}/keys", client.evaluation_keys())
        assert status == 201, body
        assert json.loads(body)["key_id"] == client.key_id
        status, body, headers = _http(f"{self.url}/predict/{client.key_id}", client.encrypt(x))
        assert status == 200, body
        assert headers["Content-Type"] == "application/octet-stream"
        return client.decrypt(body)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The linear model and the MLP, compiled and saved: name -> (folder, compiled qmodule)."""
    saved = {}
    for name, hidden, bits in (("linear", False, 3), ("mlp", True, 2)):
        qmodule = load_model(_model(hidden)).quantize(X, n_bits=bits)
        qmodule.compile(X)
        saved[name] = (qmodule.save(tmp_path_factory.mktemp(name)), qmodule)
    return saved


@pytest.fixture(scope="module")
def mlp_service(models, tmp_path_factory):
    service = Service(models["mlp"][0], tmp_path_factory.mktemp("mlp-service"))
    yield service
    service.stop()


@pytest.fixture(scope="module")
def linear_service(models, tmp_path_factory):
    """The linear model with small limits: 2 samples per request, a body of 3 one-sample payloads,
    evaluation keys of 4 kB."""
    folder, _ = models["linear"]
    probe = Client(folder, keys=tmp_path_factory.mktemp("probe") / "k")
    one = len(probe.encrypt(X[:1]))
    service = Service(folder, tmp_path_factory.mktemp("linear-service"), "--max-samples", "2",
                      "--max-ciphertext-bytes", str(3 * one), "--max-key-bytes", "4096")
    service.limit = 3 * one
    yield service
    service.stop()


@pytest.fixture(scope="module")
def mlp_client(models, tmp_path_factory):
    client = Client(models["mlp"][0], keys=tmp_path_factory.mktemp("mlp-client") / "keys")
    client.generate_keys()
    return client


@pytest.fixture(scope="module")
def linear_client(models, tmp_path_factory):
    client = Client(models["linear"][0], keys=tmp_path_factory.mktemp("linear-client") / "keys")
    client.generate_keys()
    return client


def _simulated(models, name, x):
    return models[name][1].forward(x, fhe="simulate")


def test_health_spec_and_client_artifact(models, mlp_service):
    folder, _ = models["mlp"]
    manifest = json.loads((folder / "manifest.json").read_text())
    status, body, _ = _http(f"{mlp_service.url}/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert json.loads(body)["model_id"] == manifest["model_id"]
    assert json.loads(_http(f"{mlp_service.url}/spec")[1]) == manifest
    status, body, headers = _http(f"{mlp_service.url}/client.zip")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    assert body == (folder / "client.zip").read_bytes()
    # one line per request, written once the answer is sent: wait for it
    deadline = time.monotonic() + 10
    while "GET /client.zip 200" not in mlp_service.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = mlp_service.log.read_text()
    assert "GET /health 200" in log and "GET /client.zip 200" in log


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_predictions_equal_the_saved_modules_simulation(name, models, request):
    service = request.getfixturevalue(f"{name}_service")
    client = request.getfixturevalue(f"{name}_client")
    x = X[:2]
    got = service.predict(client, x)
    assert np.array_equal(got, _simulated(models, name, x))
    # the keys are stored by id, owner-only, in a folder only the owner reads
    stored = service.store / f"{client.key_id}.evk"
    assert stored.read_bytes() == client.evaluation_keys()
    assert stored.stat().st_mode & 0o777 == 0o600 and service.store.stat().st_mode & 0o777 == 0o700


def test_three_clients_at_once_each_get_their_own_result(models, mlp_service, tmp_path):
    inputs = [X[10:12], X[20:22], X[30:32]]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            remote = RemoteModel(mlp_service.url, keys=tmp_path / f"client{i}")
            results[i] = remote.predict(inputs[i])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len({(tmp_path / f"client{i}" / "keyset.bin").read_bytes() for i in range(3)}) == 3  # three key sets
    expected = [_simulated(models, "mlp", x) for x in inputs]
    assert not np.array_equal(expected[0], expected[1])
    for i in range(3):
        assert np.array_equal(results[i], expected[i])


def _corrupt(payload: bytes) -> bytes:
    return payload[:12] + b"{not json" + payload[21:]


BAD_MLP_REQUESTS = {
    # name: (path (KEY: the good client's key id), body (a function of the good and the other clients), status,
    #        a piece of the detail)
    "garbage ciphertexts": ("/predict/KEY", lambda good, other: os.urandom(500), 400, "not a cml ciphertexts"),
    "corrupt ciphertexts": ("/predict/KEY", lambda good, other: _corrupt(good.encrypt(X[:1])), 400, "corrupt"),
    "truncated ciphertexts": ("/predict/KEY", lambda good, other: good.encrypt(X[:2])[:-100], 400, "truncated"),
    "ciphertexts of another model": ("/predict/KEY", lambda good, other: other.encrypt(X[:1]), 400, "model"),
    "garbage keys": ("/keys", lambda good, other: b"\x00" * 1000, 400, "not a cml evaluation keys"),
    "truncated keys": ("/keys", lambda good, other: good.evaluation_keys()[:-1000], 400, "truncated"),
    "keys of another model": ("/keys", lambda good, other: other.evaluation_keys(), 400, "model"),
    "unknown key id": ("/predict/0123456789abcdef0123456789abcdef", lambda good, other: good.encrypt(X[:1]), 404,
                       "upload them with POST /keys"),
    "malformed key id": ("/predict/not-a-key", lambda good, other: good.encrypt(X[:1]), 400, "32 lowercase hex"),
    "uppercase key id": ("/predict/" + "A" * 32, lambda good, other: good.encrypt(X[:1]), 400, "32 lowercase hex"),
    # a slash never reaches the key store: no route matches
    "a path as key id": ("/predict/..%2F..%2Fmanifest.json", lambda good, other: good.encrypt(X[:1]), 404,
                         "Not Found"),
}


@pytest.mark.parametrize("case", list(BAD_MLP_REQUESTS))
def test_bad_requests_get_a_4xx_detail_and_the_server_keeps_serving(case, models, mlp_service, mlp_client,
                                                                    linear_client):
    mlp_service.predict(mlp_client, X[:1])  # the client's keys are on the server
    path, body, status, detail = BAD_MLP_REQUESTS[case]
    got, answer, headers = _http(mlp_service.url + path.replace("KEY", mlp_client.key_id),
                                 body(mlp_client, linear_client))
    assert (got, headers["Content-Type"]) == (status, "application/json")
    assert detail in json.loads(answer)["detail"]
    assert np.array_equal(mlp_service.predict(mlp_client, X[:2]), _simulated(models, "mlp", X[:2]))


def test_ciphertexts_of_another_client_under_this_key_id_are_refused(models, mlp_service, mlp_client, tmp_path):
    other = Client(models["mlp"][0], keys=tmp_path / "other")
    mlp_service.predict(mlp_client, X[:1])
    status, answer, _ = _http(f"{mlp_service.url}/predict/{mlp_client.key_id}", other.encrypt(X[:1]))
    assert status == 400 and "send them with the key id of the client that encrypted them" in json.loads(answer)["detail"]
    assert np.array_equal(mlp_service.predict(mlp_client, X[:2]), _simulated(models, "mlp", X[:2]))


def test_a_wrong_sample_shape_is_refused_by_the_client(models, mlp_service, mlp_client):
    with pytest.raises(InputError):
        mlp_client.encrypt(np.zeros((2, 5), np.float32))
    with pytest.raises(InputError):
        RemoteModel(mlp_service.url, keys=mlp_client.key_folder).predict(np.zeros((2, 5), np.float32))
    assert np.array_equal(mlp_service.predict(mlp_client, X[:2]), _simulated(models, "mlp", X[:2]))


def _chunks(data: bytes, size: int = 1000):
    for i in range(0, len(data), size):
        yield data[i:i + size]


LIMITS = {
    # name: (path, body, status, a piece of the detail)
    "ciphertexts over the limit": ("/predict/KEY", lambda client, limit: b"\x00" * (limit + 1), 413,
                                   "--max-ciphertext-bytes"),
    "streamed ciphertexts over the limit": ("/predict/KEY", lambda client, limit: _chunks(b"\x00" * (limit + 1)), 413,
                                            "--max-ciphertext-bytes"),
    "more samples than allowed": ("/predict/KEY", lambda client, limit: client.encrypt(X[:3]), 413, "--max-samples"),
    "keys over the limit": ("/keys", lambda client, limit: b"\x00" * 5000, 413, "--max-key-bytes"),
    "streamed keys over the limit": ("/keys", lambda client, limit: _chunks(b"\x00" * 5000), 413, "--max-key-bytes"),
}


@pytest.mark.parametrize("case", list(LIMITS))
def test_bodies_over_the_limits_get_413(case, models, linear_service, linear_client):
    path, body, status, detail = LIMITS[case]
    linear_service.predict(linear_client, X[:1])
    got, answer, _ = _http(linear_service.url + path.replace("KEY", linear_client.key_id),
                           body(linear_client, linear_service.limit))
    assert got == status and detail in json.loads(answer)["detail"]
    assert np.array_equal(linear_service.predict(linear_client, X[:2]), _simulated(models, "linear", X[:2]))


def test_keys_stored_by_one_replica_are_found_by_another(models, mlp_service, mlp_client):
    from cml_core.fhe.service import KeyStore

    mlp_service.predict(mlp_client, X[:1])
    replica = KeyStore(Server(models["mlp"][0]), mlp_service.store, cached=0)
    keys = replica.get(mlp_client.key_id)
    assert keys is not None and keys.key_id == mlp_client.key_id
    assert replica.get("0123456789abcdef0123456789abcdef") is None


def _cml(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cml_core", *args], cwd=cwd, env=_env(cwd), capture_output=True,
                          text=True, timeout=300)


def test_cml_predict(models, mlp_service, linear_service, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    np.save(tmp_path / "x.npy", X[40:43])
    keys = tmp_path / "keys"
    done = _cml("predict", "--server", mlp_service.url, str(tmp_path / "x.npy"), "-o", "y.npy", "--keys", str(keys),
                cwd=work)
    assert done.returncode == 0, done.stderr
    assert "uploading" in done.stderr  # a new client: its keys were not on the server
    assert np.array_equal(np.load(work / "y.npy"), _simulated(models, "mlp", X[40:43]))
    assert sorted(os.listdir(work)) == ["y.npy"] and (keys / "keyset.bin").is_file()
    again = _cml("predict", "--server", mlp_service.url, str(tmp_path / "x.npy"), "-o", "y2.npy", "--keys",
                 str(keys), "-q", cwd=work)
    assert again.returncode == 0 and "cml:" not in again.stderr
    assert np.array_equal(np.load(work / "y2.npy"), np.load(work / "y.npy"))
    # the server's refusal is one error line with its detail
    refused = _cml("predict", "--server", linear_service.url, str(tmp_path / "x.npy"), "-o", "z.npy", "--keys",
                   str(tmp_path / "linear-keys"), cwd=work)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "cml: error: 3 samples in one request; this server takes at most 2" in refused.stderr
    assert not (work / "z.npy").exists()


def test_cml_compile_refuses_a_bad_error_probability(tmp_path):
    done = _cml("compile", "model.onnx", "--calibration", "c.npy", "--p-error", "2", "-o", "deploy", cwd=tmp_path)
    assert done.returncode == 2 and "expected auto or a probability between 0 and 1, got '2'" in done.stderr


def test_cml_compile_then_serve(tmp_path):
    onnx.save(_model(True, seed=5), tmp_path / "model.onnx")
    np.save(tmp_path / "calibration.npy", X)
    done = _cml("compile", "model.onnx", "--calibration", "calibration.npy", "--n-bits", "3", "--rounding", "auto",
                "--p-error", "auto", "-o", "deploy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "rounding: chosen" in done.stdout and "lookup" in done.stdout and "saved in deploy" in done.stdout
    assert "error probability: chosen" in done.stdout
    assert "cml: compiling" in done.stderr or "cml: choosing the rounding" in done.stderr
    # scored on the calibration samples: said once, in the command's terms (not as the library's warning)
    assert "scoring the candidates on the calibration samples" in done.stderr and "--tuning" in done.stderr
    assert "TuningWarning" not in done.stderr and "x_val" not in done.stderr
    folder = tmp_path / "deploy"
    assert sorted(os.listdir(folder)) == ["client.zip", "manifest.json", "model.zip", "server.zip"]
    service = Service(folder, tmp_path)
    try:
        got = RemoteModel(service.url, keys=tmp_path / "keys").predict(X[:3])
    finally:
        service.stop()
    assert np.array_equal(got, load_quantized(folder).forward(X[:3], fhe="simulate"))


def test_cml_compile_scores_the_candidates_on_held_out_samples(tmp_path):
    onnx.save(_model(True, seed=5), tmp_path / "model.onnx")
    np.save(tmp_path / "calibration.npy", X[:40])
    np.save(tmp_path / "held.npy", X[40:])
    done = _cml("compile", "model.onnx", "--calibration", "calibration.npy", "--n-bits", "3", "--rounding", "auto",
                "--tuning", "held.npy", "-o", "deploy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "scoring the candidates on 20 samples of held.npy" in done.stderr
    assert "calibration samples" not in done.stderr and "Warning" not in done.stderr
    assert "rounding: chosen" in done.stdout
    # tuning samples that do not fit the model's input are refused before anything is compiled
    np.save(tmp_path / "wide.npy", np.zeros((5, 7), np.float32))
    refused = _cml("compile", "model.onnx", "--calibration", "calibration.npy", "--rounding", "auto", "--tuning",
                   "wide.npy", "-o", "other", cwd=tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr and "--tuning" in refused.stderr
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_large_keys_through_cml_predict(tmp_path):
    """n_bits 4: evaluation keys of about a hundred MB or more go up once, in a stream; a server
    that takes smaller keys is refused by the client before it sends them."""
    qmodule = load_model(_model(True, seed=7)).quantize(X, n_bits=4)
    qmodule.compile(X)
    folder = qmodule.save(tmp_path / "deploy")
    np.save(tmp_path / "x.npy", X[:3])
    (tmp_path / "small").mkdir()
    service = Service(folder, tmp_path)
    try:
        small = Service(folder, tmp_path / "small", "--max-key-bytes", "1000000")
    except BaseException:
        service.stop()
        raise
    try:
        done = _cml("predict", "--server", service.url, "x.npy", "-o", "y.npy", "--keys", "keys", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "uploading" in done.stderr
        assert np.array_equal(np.load(tmp_path / "y.npy"), qmodule.forward(X[:3], fhe="simulate"))
        stored = next(service.store.glob("*.evk"))
        assert stored.stat().st_size > 50 * 2**20
        refused = _cml("predict", "--server", small.url, "x.npy", "-o", "z.npy", "--keys", "keys", cwd=tmp_path)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "the server takes at most 1000000" in refused.stderr and not (tmp_path / "z.npy").exists()
    finally:
        service.stop()
        small.stop()


def _cnn() -> onnx.ModelProto:
    """Conv(1->2, 3x3) - Relu - AveragePool - Flatten - Gemm on 1x4x4 images."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"])]
    weights = {"k": rng.normal(size=(2, 1, 3, 3)), "w": rng.normal(size=(8, 3))}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_cnn_predictions_through_the_service_equal_simulation(tmp_path):
    x = np.random.default_rng(2).normal(size=(40, 1, 4, 4)).astype(np.float32)
    qmodule = load_model(_cnn()).quantize(x, n_bits=3)
    qmodule.compile(x)
    (tmp_path / "service").mkdir()
    service = Service(qmodule.save(tmp_path / "cnn"), tmp_path / "service")
    try:
        client = Client(tmp_path / "cnn", keys=tmp_path / "keys")
        assert np.array_equal(service.predict(client, x[:2]), qmodule.forward(x[:2], fhe="simulate"))
    finally:
        service.stop()
