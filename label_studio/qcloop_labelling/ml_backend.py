"""The ML backend: Label Studio's predictions from the model in production, over HTTP.

It speaks the contract of Label Studio's ML backends (the one ``label-studio-ml``
implements), on the standard library's threading HTTP server:

- ``GET /health`` -> ``{"status": "UP", "model_version": ..., "released": ...}``, without
  auth (probes); UP with nothing released too, and it says so;
- ``POST /setup`` -> ``{"model_version": "<name>:<version>"}``: Label Studio asks before each
  prediction round and predicts again every task that has no prediction of that version,
  so a new release refreshes the predictions; a project without ``RectangleLabels`` is
  refused (Label Studio shows the error);
- ``POST /predict`` with ``{"tasks": [...], "label_config": ..., ...}`` -> ``{"results":
  [...]}``, one entry per task: a prediction (rectangles in percent of the image), or
  ``[]`` (no prediction) when nothing is released or the task has no usable image;
- ``GET /versions`` -> the version served; ``POST /webhook``: answered, ignored (no
  training).

The served model (``ml_model.ProductionModel``) is re-read every ``refresh_s`` by a thread
of its own, so no request waits for a download. With ``ml_backend.password`` every route
but ``/health`` wants HTTP basic auth; without one it listens only on loopback. A body
over ``max_body_mb``, or more than ``max_tasks`` tasks, is refused with 413.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from qcloop.errors import ConfigError
from qcloop.settings import MlBackendSettings, Settings
from qcloop.storage import ObjectStore, open_store
from qcloop_labelling.ml_model import ProductionModel
from qcloop_labelling.ml_predict import label_target, predict_task
from qcloop_labelling.tasks import version_name

log = logging.getLogger(__name__)

MODEL_CLASS = "qcloop"
NOT_RELEASED = "nothing released yet: predictions are empty until a model is released"


class RequestError(Exception):
    """A request the backend refuses: its HTTP status and why."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class MlBackendServer(ThreadingHTTPServer):
    """The backend: an HTTP server with the production model and its refresh thread."""

    daemon_threads = True

    def __init__(self, settings: Settings, store: ObjectStore, address: tuple[str, int]) -> None:
        self.settings = settings
        self.ml: MlBackendSettings = settings.label_studio.ml_backend
        self.store = store
        self.model = ProductionModel(settings, store)
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """Where it listens (``http://host:port``)."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def model_version(self) -> str | None:
        """``<name>:<version>`` of the model served, None with nothing released."""
        model = self.model.served
        return version_name(model.ref) if model else None

    def start(self) -> MlBackendServer:
        """Load the model in production, then serve and refresh in background threads."""
        self.model.refresh()
        for target, name in ((self.serve_forever, "serve"), (self._poll, "refresh")):
            thread = threading.Thread(target=target, name=f"ml-backend-{name}", daemon=True)
            thread.start()
            self._workers.append(thread)
        auth = f"basic auth as {self.ml.user}" if self.ml.password else "no auth"
        served = self.model_version() or "nothing (no release yet)"
        log.info("ML backend on %s (%s), serving %s", self.url, auth, served)
        return self

    def stop(self) -> None:
        """Stop serving and refreshing; drop the model."""
        self._stop.set()
        self.shutdown()
        for thread in self._workers:
            thread.join(timeout=30)
        self.server_close()
        self.model.close()

    def _poll(self) -> None:
        while not self._stop.wait(max(self.ml.refresh_s, 0.1)):
            self.model.refresh()

    def authorised(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the user and password (or none is set)."""
        if self.ml.password is None:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        user_ok = hmac.compare_digest(user, self.ml.user.encode())
        password_ok = hmac.compare_digest(password, self.ml.password.get_secret_value().encode())
        return user_ok and password_ok

    # ------------------------------------------------------------ routes

    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        version = self.model_version()
        payload: dict[str, Any] = {
            "status": "UP",
            "model_class": MODEL_CLASS,
            "model_version": version,
            "released": version is not None,
        }
        return payload if version else payload | {"detail": NOT_RELEASED}

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /setup``: the version Label Studio stamps on predictions."""
        try:
            label_target(body.get("schema"))
        except ValueError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        version = self.model_version()
        return {"model_version": version or ""} | ({} if version else {"detail": NOT_RELEASED})

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /predict``: one entry per task, in the order of the tasks."""
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise RequestError(HTTPStatus.BAD_REQUEST, "'tasks' must be a list of tasks")
        if len(tasks) > self.ml.max_tasks:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(tasks)} tasks in one request; at most {self.ml.max_tasks} "
                "(label_studio.ml_backend.max_tasks): retrieve predictions for fewer tasks",
            )
        try:
            target = label_target(body.get("label_config"))
        except ValueError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        model = self.model.served
        if model is None:
            log.warning("%s: %d tasks get no prediction", NOT_RELEASED, len(tasks))
            return {"results": [[] for _ in tasks], "model_version": ""}
        results = [predict_task(task, model, self.store, target) for task in tasks]
        version = version_name(model.ref)
        done = sum(1 for r in results if r)
        log.info("%s predicted %d of %d tasks", version, done, len(tasks))
        return {"results": results, "model_version": version}

    def versions(self) -> dict[str, Any]:
        """``GET /versions``: the version served (one at a time)."""
        version = self.model_version()
        return {"versions": [version] if version else [], "model_version": version or ""}


class _Handler(BaseHTTPRequestHandler):
    server: MlBackendServer
    protocol_version = "HTTP/1.1"
    server_version = "qcloop-ml-backend"
    _body_read = False

    def do_GET(self) -> None:
        self._route({"/health": None, "/versions": self.server.versions})

    def do_POST(self) -> None:
        self._route(
            {
                "/setup": self.server.setup,
                "/predict": self.server.predict,
                "/webhook": lambda _body: {"status": "ignored", "detail": "no training"},
            }
        )

    def _route(self, routes: dict[str, Any]) -> None:
        started = time.monotonic()
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        self._body_read = self.command != "POST"
        try:
            if path == "/health":
                status, payload = HTTPStatus.OK, self.server.health()
            elif path not in routes:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route {self.command} {path}")
            elif not self.server.authorised(self.headers.get("Authorization")):
                raise RequestError(HTTPStatus.UNAUTHORIZED, "basic auth required")
            elif self.command == "POST":
                status, payload = HTTPStatus.OK, routes[path](self._json_body())
            else:
                status, payload = HTTPStatus.OK, routes[path]()
        except RequestError as exc:
            status, payload = exc.status, {"error": str(exc)}
        except Exception as exc:  # a bug must answer 500, not drop the connection
            log.exception("%s %s failed", self.command, path)
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__}
        if not self._body_read:  # an unread body would be taken for the next request
            self.close_connection = True
        self._reply(status, payload)
        level = logging.DEBUG if path == "/health" and status == HTTPStatus.OK else logging.INFO
        if status == HTTPStatus.UNAUTHORIZED:
            level = logging.WARNING
        log.log(
            level,
            "%s %s %d from %s in %.0f ms%s",
            self.command,
            path,
            status,
            self.client_address[0],
            1000 * (time.monotonic() - started),
            f": {payload['error']}" if "error" in payload else "",
        )

    def _json_body(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a JSON body with Content-Length")
        limit = int(self.server.ml.max_body_mb * (1 << 20))
        if int(length) > limit:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {int(length) >> 20} MiB; at most {self.server.ml.max_body_mb:g} MiB "
                "(label_studio.ml_backend.max_body_mb): retrieve predictions for fewer tasks",
            )
        raw = self.rfile.read(int(length))
        self._body_read = True
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Basic realm="qcloop ML backend"')
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def version_string(self) -> str:
        """The ``Server`` header: no Python version."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged once, by ``_route``; the stdlib's stderr lines are not."""


def make_server(
    settings: Settings,
    store: ObjectStore | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
) -> MlBackendServer:
    """The backend bound to ``host:port`` (default: the settings'), not yet serving.

    ``ConfigError`` for an address other than loopback without a password: anyone who
    reached it could have the raw store's images predicted.
    """
    ml = settings.label_studio.ml_backend
    host = ml.host if host is None else host
    port = ml.port if port is None else port
    if ml.password is None and not _loopback(host):
        raise ConfigError(
            f"label_studio.ml_backend.host {host} is not a loopback address and "
            "label_studio.ml_backend.password is not set: set a password (Label Studio "
            "sends it as basic auth) or listen on 127.0.0.1"
        )
    store = store or open_store(settings.store)
    try:
        return MlBackendServer(settings, store, (host, port))
    except OSError as exc:
        raise ConfigError(
            f"the ML backend cannot listen on {host}:{port} ({exc.strerror}): "
            "pick another label_studio.ml_backend.port or --port"
        ) from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
