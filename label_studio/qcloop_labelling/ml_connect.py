"""The ML backend connected to the project, idempotently (``qcloop labelling bootstrap``).

What Label Studio holds: one ML backend record of the project with the backend's URL as
Label Studio reaches it (``label_studio.ml_backend.url``), its title and basic auth; the
project's model version set to that title, so that the labelling stream shows the boxes of
the model in production (Label Studio asks the backend when a task opens and has none of
the current version). Label Studio also adds a webhook ``<url>/webhook`` for training on
new annotations; this backend does not train, so the webhook is removed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from qcloop.errors import ConfigError, QcloopError
from qcloop.settings import MlBackendSettings, Settings
from qcloop_labelling.client import LabelStudioClient, connect
from qcloop_labelling.project import find_project

log = logging.getLogger(__name__)

CONNECTED = "CO"  # Label Studio's state of a backend that answered /health and /setup


@dataclass(frozen=True)
class MlBackendState:
    """The project's ML backend and what connecting it did."""

    id: int
    url: str
    action: str  # "created", "updated" or "unchanged"
    model_version: str | None


def backend_fields(project_id: int, ml: MlBackendSettings) -> dict[str, Any]:
    """The fields of the ML backend record that the settings decide."""
    if ml.url is None:
        raise ConfigError("label_studio.ml_backend.url is not set: where Label Studio reaches it")
    fields: dict[str, Any] = {
        "project": project_id,
        "url": ml.url,
        "title": ml.title,
        "is_interactive": False,
        "auth_method": "BASIC_AUTH" if ml.password else "NONE",
        "basic_auth_user": ml.user if ml.password else "",
    }
    if ml.password:
        fields["basic_auth_pass"] = ml.password.get_secret_value()
    return fields


def ensure_ml_backend(
    client: LabelStudioClient, project_id: int, ml: MlBackendSettings
) -> MlBackendState:
    """Create the project's ML backend record (found by URL or title) or bring it in line;
    running twice changes nothing. Label Studio calls the backend while saving it, so it must
    be up."""
    wanted = backend_fields(project_id, ml)
    urls = {str(wanted["url"])}
    found = [
        b
        for b in client.ml_backends(project_id)
        if b.get("url") in urls or ml.title == b.get("title")
    ]
    if not found:
        saved, action = client.save_ml_backend(wanted), "created"
    else:
        current = found[0]
        urls.add(str(current.get("url")))  # moved: its old webhook goes too
        same = all(current.get(k) == v for k, v in wanted.items() if k != "basic_auth_pass")
        same = same and bool(current.get("basic_auth_pass_is_set")) == bool(ml.password)
        # a password Label Studio holds cannot be read back: a changed one shows as a backend
        # that does not answer (refused), which saving it again with the password mends
        if same and current.get("state") == CONNECTED:
            saved, action = current, "unchanged"
        else:
            saved, action = client.save_ml_backend(wanted, int(current["id"])), "updated"
    if client.project(project_id).get("model_version") != ml.title:
        client.update_project(project_id, {"model_version": ml.title})
    hooks = {url.rstrip("/") + "/webhook" for url in urls}
    for webhook in client.webhooks(project_id):
        if webhook.get("url") in hooks and webhook.get("project") == project_id:
            client.delete_webhook(int(webhook["id"]))
    return MlBackendState(int(saved["id"]), str(ml.url), action, saved.get("model_version"))


def register_when_ready(settings: Settings, stop: threading.Event, retry_s: float = 30.0) -> None:
    """Connect the backend to the project once Label Studio and the project are there.

    For the backend's own process (``ml-backend --register``): tries until it succeeds
    or ``stop`` is set, logging why each try failed (no project yet, Label Studio down).
    """
    ls = settings.label_studio
    while not stop.is_set():
        try:
            client = connect(ls)
            try:
                state = ensure_ml_backend(
                    client, find_project(client, ls.project_title), ls.ml_backend
                )
            finally:
                client.close()
        except QcloopError as exc:
            log.warning("not connected to Label Studio yet: %s; again in %.0f s", exc, retry_s)
            stop.wait(retry_s)
            continue
        log.info(
            "connected to project '%s' at %s as ML backend %d (%s)",
            ls.project_title,
            ls.url,
            state.id,
            state.action,
        )
        return
