"""The HTTP service of a saved model: ``deploy.Server`` behind FastAPI, run by uvicorn.

Every route is a thin layer over the Python API (``Server``, ``check_sample_count``); what it adds
is only what HTTP needs: body limits, a key store shared by replicas, status codes.

- ``GET /health``: ``{"status": "ok", "model_id": ..., "limits": {...}}``
- ``GET /spec``: the manifest (model id, versions, inputs and outputs)
- ``GET /client.zip``: the client artifact, for ``deploy.Client``
- ``POST /keys``: an evaluation-keys payload; 201 ``{"key_id": ...}``
- ``POST /predict/{key_id}``: a ciphertexts payload; 200 with the results payload, 404 when no keys
  of that id were uploaded (to this replica or to another sharing the key store)

Bad input is a 4xx with ``{"detail": message}``: 400 for a payload cml refuses (corrupt,
truncated, of another model or key) or a malformed key id, 404 for unknown keys, 413 for a body or
a sample count over the limits.

``remote.RemoteModel`` is the other end (``cml predict``).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import CmlError, DeploymentError, InputError
from .deploy import Server, ServerKeys, check_sample_count, key_id

#: default limits of ``serve`` (``cml serve --max-key-bytes ...``)
MAX_KEY_BYTES = 4 * 2**30
MAX_CIPHERTEXT_BYTES = 2**30
MAX_SAMPLES = 1000

KEY_ID = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger("cml.serve")


def default_key_store(model_id: str) -> Path:
    """``$XDG_CACHE_HOME/cml/server-keys/<model id>`` (``~/.cache`` without ``XDG_CACHE_HOME``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "cml" / "server-keys" / model_id


class KeyStore:
    """Evaluation keys by id, as files ``<folder>/<key id>.evk`` that several replicas can share.

    A file is written under a temporary name and renamed, so a replica sees it whole or not at all;
    its name is its content's id, so two replicas storing the same keys write the same bytes. The
    ``cached`` most recently used key sets stay deserialized in memory.
    """

    def __init__(self, server: Server, folder: Path, cached: int = 2) -> None:
        self.server, self.folder, self.cached = server, folder, max(0, cached)
        self._memory: OrderedDict[str, ServerKeys] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, payload: bytes) -> ServerKeys:
        """Read an evaluation-keys payload (``Server.load_keys``) and store it.

        Raises:
            DeploymentError: not evaluation keys of this server's model.
        """
        keys = self.server.load_keys(payload)
        path = self._path(keys.key_id)
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(prefix=f".{keys.key_id}.", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        self._remember(keys)
        return keys

    def get(self, key: str) -> ServerKeys | None:
        """The keys of id ``key``, from memory or from the store; ``None`` when neither has them."""
        with self._lock:
            keys = self._memory.get(key)
            if keys is not None:
                self._memory.move_to_end(key)
                return keys
        try:
            payload = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        if key_id(payload) != key:  # a damaged file: as good as none (the client uploads its keys again)
            return None
        keys = self.server.load_keys(payload)
        self._remember(keys)
        return keys

    def _path(self, key: str) -> Path:
        if not KEY_ID.fullmatch(key):  # the id becomes a file name: nothing but 32 hex digits
            raise DeploymentError(f"malformed key id {key[:80]!r}: a key id is 32 lowercase hex digits, as "
                                  "POST /keys returns it")
        return self.folder / f"{key}.evk"

    def _remember(self, keys: ServerKeys) -> None:
        with self._lock:
            self._memory[keys.key_id] = keys
            self._memory.move_to_end(keys.key_id)
            while len(self._memory) > self.cached:
                self._memory.popitem(last=False)


def open_key_store(folder: str | os.PathLike[str]) -> Path:
    """The key store folder, created owner-only (0700) if missing.

    Raises:
        DeploymentError: it cannot be created or written to.
    """
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-")
        probe.close()
    except OSError as exc:
        raise DeploymentError(f"the key store {path} cannot be used ({exc}); pass a writable folder with "
                              "--key-store") from exc
    return path


class RequestLog:
    """ASGI middleware: one log line per request (client, method, path, status, bytes in and out, time)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, sizes = time.perf_counter(), [500], [0, 0]

        async def counted_receive() -> Any:
            message = await receive()
            sizes[0] += len(message.get("body", b""))
            return message

        async def counted_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                sizes[1] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted_receive, counted_send)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %d in=%s out=%s %.2fs", client[0], scope["method"], scope["path"], status[0],
                     _size(sizes[0]), _size(sizes[1]), time.perf_counter() - start)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f}MB" if n >= 2**20 else f"{n}B"


def create_app(server: Server, key_store: Path, *, max_key_bytes: int = MAX_KEY_BYTES,
               max_ciphertext_bytes: int = MAX_CIPHERTEXT_BYTES, max_samples: int = MAX_SAMPLES,
               cached_keys: int = 2) -> FastAPI:
    """The FastAPI application serving ``server``'s model, keeping evaluation keys in ``key_store``
    (an existing folder, see ``open_key_store``)."""
    store = KeyStore(server, key_store, cached_keys)
    client_zip = server.client_artifact()
    limits = {"max_key_bytes": max_key_bytes, "max_ciphertext_bytes": max_ciphertext_bytes, "max_samples": max_samples}
    app = FastAPI(title="cml", summary=f"encrypted inference with model {server.model_id}")
    app.add_middleware(RequestLog)

    @app.exception_handler(CmlError)
    async def refused(request: Request, exc: CmlError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    async def read_body(request: Request, limit: int, what: str, option: str) -> bytes:
        """The body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
        def too_large(size: str) -> HTTPException:
            return HTTPException(413, f"{what} of {size} bytes; this server takes at most {limit} ({option})")

        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HTTPException(400, f"malformed Content-Length {declared[:40]!r}")
            if int(declared) > limit:
                raise too_large(declared)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(f"more than {limit}")
        return bytes(body)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_id": server.model_id, "limits": limits}

    @app.get("/spec")
    async def spec() -> dict[str, Any]:
        return server.manifest

    @app.get("/client.zip")
    async def client_artifact() -> Response:
        return Response(client_zip, media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="client.zip"'})

    @app.post("/keys", status_code=201)
    async def upload_keys(request: Request) -> dict[str, Any]:
        payload = await read_body(request, max_key_bytes, "evaluation keys", "--max-key-bytes")
        keys = await run_in_threadpool(store.add, payload)
        return {"key_id": keys.key_id, "size": keys.size}

    @app.post("/predict/{key}")
    async def predict(key: str, request: Request) -> Response:
        if not KEY_ID.fullmatch(key):
            raise HTTPException(400, f"malformed key id {key[:80]!r}: a key id is 32 lowercase hex digits, as "
                                     "POST /keys returns it")
        payload = await read_body(request, max_ciphertext_bytes, "ciphertexts", "--max-ciphertext-bytes")
        try:
            check_sample_count(payload, max_samples)
        except InputError as exc:  # more samples than this server takes at once
            raise HTTPException(413, f"{exc} (--max-samples); send them in several requests") from exc
        keys = await run_in_threadpool(store.get, key)
        if keys is None:
            raise HTTPException(404, f"no evaluation keys {key} on this server: upload them with POST /keys, then "
                                     "send the ciphertexts again")
        started = time.perf_counter()
        result = await run_in_threadpool(server.run, payload, keys)
        return Response(result, media_type="application/octet-stream",
                        headers={"X-Cml-Run-Seconds": f"{time.perf_counter() - started:.3f}"})

    return app


def serve(folder: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000,
          key_store: str | os.PathLike[str] | None = None, workers: int | None = None, *,
          max_key_bytes: int = MAX_KEY_BYTES, max_ciphertext_bytes: int = MAX_CIPHERTEXT_BYTES,
          max_samples: int = MAX_SAMPLES, cached_keys: int = 2, quiet: bool = False) -> None:
    """Serve the model ``save`` wrote into ``folder`` until interrupted (SIGINT/SIGTERM).

    ``key_store`` is where uploaded evaluation keys are kept (default ``default_key_store``: the
    model's folder may be read-only); replicas of one model may share it. ``workers`` samples are
    computed at once (default: the number of cores). One log line per request on stderr unless
    ``quiet``.

    Raises:
        DeploymentError: the folder holds no usable model, or the key store cannot be written.
    """
    import uvicorn

    server = Server(folder, workers)
    store = open_key_store(key_store if key_store is not None else default_key_store(server.model_id))
    app = create_app(server, store, max_key_bytes=max_key_bytes, max_ciphertext_bytes=max_ciphertext_bytes,
                     max_samples=max_samples, cached_keys=cached_keys)
    if not quiet and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s cml: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.info("model %s from %s, %d worker(s), evaluation keys in %s", server.model_id, folder, server.workers, store)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning" if quiet else "info")
    uvicorn.Server(config).run()
