"""The client's end of ``cml serve`` (``service``), with the standard library only: ``RemoteModel``
fetches a served model's client artifact, keeps this client's keys, and gets encrypted predictions
(``cml predict``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from ..errors import DeploymentError


def _size(n: int) -> str:
    return f"{n / 2**20:.1f}MB" if n >= 2**20 else f"{n}B"


class ServiceError(DeploymentError):
    """A request the service refused: ``status`` is the HTTP status, the message the server's detail."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def request(url: str, body: bytes | None = None, timeout: float | None = None) -> tuple[bytes, dict[str, str]]:
    """GET ``url`` (or POST ``body`` to it); returns the response's bytes and headers (lowercase names).

    Raises:
        ServiceError: the server answered with an error status (the message is its detail).
        DeploymentError: the server cannot be reached, or the connection broke.
    """
    import http.client
    import urllib.error
    import urllib.request

    headers = {} if body is None else {"Content-Type": "application/octet-stream"}
    req = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            detail = json.loads(text)["detail"]
        except (ValueError, KeyError, TypeError):
            detail = text.decode(errors="replace")[:500] or exc.reason
        if not isinstance(detail, str):  # FastAPI's validation errors are a list
            detail = json.dumps(detail)
        raise ServiceError(f"{detail} (HTTP {exc.code} from {url})", exc.code) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DeploymentError(f"cannot reach {url}: {reason}") from None


class RemoteModel:
    """The model served at ``url``, for a client: ``predict`` encrypts, posts and decrypts.

    On creation it fetches ``/health`` and ``client.zip`` (``self.client``, a ``deploy.Client`` with
    its keys in ``keys``, default ``deploy.default_key_folder``).

    Raises:
        ServiceError, DeploymentError: as ``request``; a client artifact that cannot be read.
    """

    def __init__(self, url: str, keys: str | os.PathLike[str] | None = None) -> None:
        from .deploy import Client

        self.url = url.rstrip("/")
        health = json.loads(request(f"{self.url}/health")[0])
        self.limits: dict[str, Any] = health.get("limits", {})
        self.client = Client(request(f"{self.url}/client.zip")[0], keys=keys)

    def predict(self, *x: Any, progress: Callable[[str], None] | None = None) -> Any:
        """The float outputs for the inputs ``x`` (one array per model output; a tuple when
        several), computed encrypted by the server.

        Loads or generates this client's keys, encrypts, and posts the ciphertexts; when the server
        does not have the evaluation keys yet (404), uploads them once and posts again.
        ``progress`` gets one line per step.

        Raises:
            InputError: ``x`` does not fit the model's inputs (checked before keys are generated).
            ServiceError: the server refused a request (its detail is the message), or a payload
                is over the server's limits.
            DeploymentError: the server cannot be reached, or its answer cannot be decrypted.
        """
        say = progress or (lambda message: None)
        client = self.client
        client.quantize(*x)  # wrong inputs fail here, before keys are generated
        say(("loading keys from " if client.has_keys else "generating keys (seconds to minutes) in ")
            + str(client.key_folder))
        started = time.perf_counter()
        client.generate_keys()
        say(f"keys ready in {time.perf_counter() - started:.1f}s (key id {client.key_id})")
        ciphertexts = client.encrypt(*x)
        say(f"encrypted {len(x[0])} sample(s): {_size(len(ciphertexts))}")
        _check_limit(len(ciphertexts), self.limits.get("max_ciphertext_bytes"), "ciphertexts",
                     "send fewer samples per request")
        target = f"{self.url}/predict/{client.key_id}"
        started = time.perf_counter()
        try:
            result, headers = request(target, ciphertexts)
        except ServiceError as exc:
            if exc.status != 404:
                raise
            evaluation_keys = client.evaluation_keys()
            _check_limit(len(evaluation_keys), self.limits.get("max_key_bytes"), "evaluation keys",
                         "start the server with a larger --max-key-bytes")
            say(f"the server has no keys of this client: uploading them ({_size(len(evaluation_keys))})")
            request(f"{self.url}/keys", evaluation_keys)
            started = time.perf_counter()
            result, headers = request(target, ciphertexts)
        say(f"the server computed for {headers.get('x-cml-run-seconds', '?')}s (round trip "
            f"{time.perf_counter() - started:.1f}s)")
        return client.decrypt(result)


def _check_limit(size: int, limit: Any, what: str, way_out: str) -> None:
    if isinstance(limit, int) and size > limit:
        raise ServiceError(f"{what} of {size} bytes; the server takes at most {limit}: {way_out}", 413)
