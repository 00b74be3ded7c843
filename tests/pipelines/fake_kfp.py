"""A Kubeflow Pipelines API server (v2beta1) small enough for tests: no cluster runs here.

It keeps pipelines, versions, experiments, runs and recurring runs in memory and
records every request (method, path, query, headers in lower case, JSON body,
uploaded file),
so a test can check what ``kfp.Client`` (through ``qcloop pipeline``) really sent
over HTTP. Only the calls qcloop makes are served; anything else is a 404 that
the test would see as a failure.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"


class FakeKfp:
    """Start with ``with FakeKfp() as kfp:``; ``kfp.url`` is the ``--host``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: list[dict[str, Any]] = []
        self.recurring_runs: list[dict[str, Any]] = []
        self.packages: dict[str, bytes] = {}  # version id -> uploaded package
        self._ids = itertools.count(1)
        self.refuse: set[str] = set()  # API paths (after /apis/v2beta1) that answer 500
        self.version = "2.5.0"  # what healthz reports as the server's release (tag_name)
        self.run_states = ["RUNNING", "SUCCEEDED"]  # what GET runs/<id> says, one per call
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKfp:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ the API
    def _next_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def _add_version(self, pipeline_id: str, name: str, package: bytes) -> dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self._next_id("version"),
            "display_name": name,
            "created_at": f"2026-11-27T00:00:{len(self.versions.get(pipeline_id, [])):02d}Z",
        }
        self.versions.setdefault(pipeline_id, []).append(version)
        self.packages[version["pipeline_version_id"]] = package
        return version

    def handle(self, method: str, path: str, query: dict[str, str], body: Any, file: bytes | None):
        """(status, JSON answer) of one request."""
        if path.removeprefix(API) in self.refuse:
            return 500, {"error": "internal error (refused by the test)", "code": 13}
        if method == "GET" and path == f"{API}/healthz":
            return 200, {"commit_sha": "0" * 40, "tag_name": self.version, "multi_user": False}
        if method == "GET" and path == f"{API}/pipelines":
            name = _filtered_name(query)
            found = [p for p in self.pipelines.values() if name in (None, p["display_name"])]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if method == "POST" and path == f"{API}/pipelines/upload":
            pipeline = {"pipeline_id": self._next_id("pipeline"), "display_name": query["name"]}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self._add_version(pipeline["pipeline_id"], query["name"], file or b"")
            return 200, pipeline
        if method == "POST" and path == f"{API}/pipelines/upload_version":
            if query.get("pipelineid") not in self.pipelines:
                return 404, {"error": "pipeline not found"}
            return 200, self._add_version(query["pipelineid"], query["name"], file or b"")
        versions_path = re.fullmatch(rf"{API}/pipelines/([^/]+)/versions", path)
        if method == "GET" and versions_path:
            name = _filtered_name(query)
            listed = [v for v in self.versions.get(versions_path.group(1), [])]
            listed = [v for v in listed if name in (None, v["display_name"])]
            if query.get("sort_by") == "created_at desc":
                listed.reverse()
            listed = listed[: int(query.get("page_size", 10))]
            return 200, {"pipeline_versions": listed} if listed else {}
        if method == "GET" and path == f"{API}/experiments":
            name = _filtered_name(query)
            found = [e for e in self.experiments.values() if e["display_name"] == name]
            return 200, {"experiments": found} if found else {}
        if method == "POST" and path == f"{API}/experiments":
            experiment = {**body, "experiment_id": self._next_id("experiment")}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if method == "POST" and path == f"{API}/runs":
            run = {**body, "run_id": self._next_id("run"), "state": "PENDING"}
            self.runs.append(run)
            return 200, run
        run_path = re.fullmatch(rf"{API}/runs/([^/]+)", path)
        if method == "GET" and run_path:
            run = next((r for r in self.runs if r["run_id"] == run_path.group(1)), None)
            if run is None:
                return 404, {"error": "run not found"}
            if len(self.run_states) > 1:
                run["state"] = self.run_states.pop(0)
            else:
                run["state"] = self.run_states[0]
            return 200, run
        if method == "POST" and path == f"{API}/recurringruns":
            job = {**body, "recurring_run_id": self._next_id("recurring")}
            self.recurring_runs.append(job)
            return 200, job
        return 404, {"error": f"fake KFP serves no {method} {path}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body, file = None, None
                ctype = self.headers.get("Content-Type", "")
                if ctype.startswith("multipart/form-data"):
                    file = _uploaded_file(ctype, raw)
                elif raw:
                    body = json.loads(raw)
                fake.requests.append(
                    {
                        "method": method,
                        "path": url.path,
                        "query": query,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "file": file,
                    }
                )
                status, answer = fake.handle(method, url.path, query, body, file)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler


def _filtered_name(query: dict[str, str]) -> str | None:
    """The display_name a KFP list filter asks for, or None without a filter."""
    if "filter" not in query:
        return None
    (predicate,) = json.loads(query["filter"])["predicates"]
    assert predicate["key"] == "display_name", predicate
    return str(predicate["stringValue"])


def _uploaded_file(content_type: str, raw: bytes) -> bytes:
    """The ``uploadfile`` part of a multipart/form-data body."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return bytes(part.get_payload(decode=True))
    raise AssertionError("multipart upload without an uploadfile part")
