"""A small Label Studio REST client: only the calls the sync needs, with clear errors.

Why not ``label-studio-sdk``: its 2.1.x releases pin ``opencv-python-headless<4.13``,
which pins ``numpy<2.3``; the platform stack is tested on numpy 2.4, so the SDK
cannot share the venv. The REST calls below are the ones the SDK makes
(``projects.create``, ``projects.import_tasks``, ``projects.exports.download_sync``,
``tasks.list``, ``annotations.create``), on ``requests``, which the platform stack
already carries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import requests

from qcloop_labelling.errors import (
    LabelStudioApiError,
    LabelStudioAuthError,
    LabelStudioUnavailable,
)
from qcloop_labelling.settings import LabelStudioSettings

TASK_PAGE = 500
START_HINT = "start it (docs/labelling.md: `label-studio start`) or fix label_studio.url"
TOKEN_HINT = (
    "set QCLOOP_LABEL_STUDIO__TOKEN to the API token of the sync user "
    "(Label Studio > Account & Settings)"
)


class LabelStudioClient:
    """Talks to one Label Studio server with one token."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token
        self._session = requests.Session()
        self._session.headers["Accept"] = "application/json"

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r}, token='**********')"

    def close(self) -> None:
        """Release the HTTP connections."""
        self._session.close()

    # ------------------------------------------------------------ plumbing

    def _authorise(self) -> None:
        """Legacy tokens go as ``Token``; a personal access token (JWT) is exchanged first."""
        if "Authorization" in self._session.headers:
            return
        if self._token.count(".") == 2:
            data = self._send(
                "POST", "/api/token/refresh/", json={"refresh": self._token}, auth=False
            )
            self._session.headers["Authorization"] = f"Bearer {data['access']}"
        else:
            self._session.headers["Authorization"] = f"Token {self._token}"

    def _send(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        if auth:
            self._authorise()
        where = f"{self.url}{path}"
        try:
            resp = self._session.request(method, where, timeout=self.timeout_s, **kwargs)
        except requests.exceptions.RequestException as exc:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url} is unreachable ({type(exc).__name__}); {START_HINT}"
            ) from None
        if resp.status_code in (401, 403):
            raise LabelStudioAuthError(
                f"Label Studio at {self.url} refused the API token "
                f"(HTTP {resp.status_code} on {method} {path}: {_detail(resp)}); {TOKEN_HINT}"
            )
        if resp.status_code >= 400:
            raise LabelStudioApiError(
                f"Label Studio at {self.url}: {method} {path} failed with HTTP "
                f"{resp.status_code}: {_detail(resp)}"
            )
        return resp.json() if resp.content else None

    # ------------------------------------------------------------ calls

    def check(self) -> str:
        """Fail clearly unless the server is healthy and takes the token; return its version."""
        health = self._send("GET", "/health", auth=False)
        if not isinstance(health, dict) or health.get("status") != "UP":
            raise LabelStudioUnavailable(f"Label Studio at {self.url} is not healthy: {health}")
        self._send("GET", "/api/projects/", params={"page_size": 1})
        version = self._send("GET", "/api/version")
        return str(version.get("release", "unknown")) if isinstance(version, dict) else "unknown"

    def projects_titled(self, title: str) -> list[dict[str, Any]]:
        """Projects whose title is exactly ``title`` (all pages; the filter is only a hint)."""
        found, page = [], 1
        while True:
            data = self._send(
                "GET", "/api/projects/", params={"title": title, "page": page, "page_size": 100}
            )
            results = data.get("results", []) if isinstance(data, dict) else data
            found += [p for p in results if p.get("title") == title]
            if not isinstance(data, dict) or not data.get("next"):
                return found
            page += 1

    def create_project(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Create a project."""
        return dict(self._send("POST", "/api/projects/", json=fields))

    def project(self, project_id: int) -> dict[str, Any]:
        """A project's fields (title, label config, ...)."""
        return dict(self._send("GET", f"/api/projects/{project_id}/"))

    def task(self, task_id: int) -> dict[str, Any]:
        """A task with its data (the image inline or its URL), annotations and predictions."""
        return dict(self._send("GET", f"/api/tasks/{task_id}/"))

    def update_project(self, project_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Change some fields of a project."""
        return dict(self._send("PATCH", f"/api/projects/{project_id}/", json=fields))

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Create tasks (with inline predictions/annotations) in one request; their ids."""
        data = self._send(
            "POST",
            f"/api/projects/{project_id}/import",
            params={"return_task_ids": "true", "commit_to_project": "true"},
            json=list(tasks),
        )
        return [int(i) for i in data.get("task_ids", [])]

    def task_metas(self, project_id: int) -> Iterator[dict[str, Any]]:
        """``{"id", "meta"}`` of every task, paged; light (no task data, no images)."""
        page = 1
        while True:
            data = self._send(
                "GET",
                "/api/tasks/",
                params={
                    "project": project_id,
                    "fields": "task_only",
                    "include": "id,meta",
                    "page": page,
                    "page_size": TASK_PAGE,
                },
            )
            tasks = data.get("tasks", [])
            yield from tasks
            if len(tasks) < TASK_PAGE or page * TASK_PAGE >= int(data.get("total", 0)):
                return
            page += 1

    def create_annotation(self, task_id: int, result: list[dict[str, Any]]) -> int:
        """Submit an annotation of a task as the token's user; its id (an empty ``result``
        says the image has no defect)."""
        data = self._send(
            "POST",
            f"/api/tasks/{task_id}/annotations/",
            json={"result": result, "was_cancelled": False},
        )
        return int(data["id"])

    def s3_storages(self, project_id: int) -> list[dict[str, Any]]:
        """S3 import storages of a project."""
        return list(self._send("GET", "/api/storages/s3/", params={"project": project_id}))

    def create_s3_storage(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Create an S3 import storage (Label Studio checks that it can list the bucket)."""
        return dict(self._send("POST", "/api/storages/s3/", json=fields))

    def update_s3_storage(self, storage_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Change an S3 import storage (Label Studio checks the bucket again)."""
        return dict(self._send("PATCH", f"/api/storages/s3/{storage_id}", json=fields))

    def views(self, project_id: int) -> list[dict[str, Any]]:
        """The data manager's tabs of a project."""
        return list(self._send("GET", "/api/dm/views/", params={"project": project_id}))

    def save_view(
        self, project_id: int, data: dict[str, Any], view_id: int | None = None
    ) -> dict[str, Any]:
        """Create a data manager tab, or change one's ``data`` (its filters and ordering,
        which Label Studio keeps beside ``data``, stay when left out)."""
        body = {"project": project_id, "data": data}
        if view_id is None:
            return dict(self._send("POST", "/api/dm/views/", json=body))
        return dict(self._send("PATCH", f"/api/dm/views/{view_id}/", json=body))

    def users(self) -> list[dict[str, Any]]:
        """Every user of the token's organisation."""
        data = self._send("GET", "/api/users/")
        return list(data.get("results", []) if isinstance(data, dict) else data or [])

    def ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        """ML backends of a project (Label Studio asks each for /health and /setup first)."""
        return list(self._send("GET", "/api/ml/", params={"project": project_id}))

    def save_ml_backend(
        self, fields: dict[str, Any], backend_id: int | None = None
    ) -> dict[str, Any]:
        """Create an ML backend, or change one; Label Studio calls its /health and /setup."""
        if backend_id is None:
            return dict(self._send("POST", "/api/ml/", json=fields))
        return dict(self._send("PATCH", f"/api/ml/{backend_id}", json=fields))

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        """Webhooks of a project."""
        return list(self._send("GET", "/api/webhooks/", params={"project": project_id}))

    def delete_webhook(self, webhook_id: int) -> None:
        """Delete a webhook."""
        self._send("DELETE", f"/api/webhooks/{webhook_id}/")

    def export_json(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations (Label Studio JSON export)."""
        data = self._send(
            "GET",
            f"/api/projects/{project_id}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )
        return list(data)


def _detail(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason
    if isinstance(body, dict):
        detail = str(body.get("detail") or body)
        if body.get("validation_errors"):
            detail += f" {body['validation_errors']}"
        return detail[:500]
    return str(body)[:500]


def connect(settings: LabelStudioSettings) -> LabelStudioClient:
    """A checked client: raises ``LabelStudioUnavailable`` / ``LabelStudioAuthError`` early."""
    if settings.token is None:
        raise LabelStudioAuthError(f"no API token for Label Studio at {settings.url}; {TOKEN_HINT}")
    client = LabelStudioClient(
        settings.url, settings.token.get_secret_value(), timeout_s=settings.timeout_s
    )
    try:
        client.check()
    except BaseException:
        client.close()
        raise
    return client
