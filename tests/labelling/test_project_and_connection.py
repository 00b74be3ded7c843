"""Bootstrap is idempotent; a server that is down or a bad token fail clearly."""

from __future__ import annotations

import pytest
import requests

from qcloop.settings import Settings
from qcloop_labelling import cli
from qcloop_labelling.client import connect
from qcloop_labelling.errors import LabelStudioAuthError, LabelStudioUnavailable
from qcloop_labelling.project import ensure_project, label_config
from qcloop_labelling.settings import LabelStudioSettings
from tests.labelling.conftest import LabelStudioServer
from tests.services import free_port

pytestmark = [pytest.mark.label_studio, pytest.mark.integration]


def test_bootstrap_twice_changes_nothing(
    ls_settings: LabelStudioSettings, settings: Settings
) -> None:
    # given a server without the project
    client = connect(ls_settings)
    title = ls_settings.project_title
    # when the bootstrap runs twice
    first = ensure_project(client, title, ["scratch"])
    second = ensure_project(client, title, ["scratch"])
    # then one project exists, created once, with our config and instructions
    assert (first.action, second.action, second.id) == ("created", "unchanged", first.id)
    (project,) = client.projects_titled(title)
    assert project["label_config"] == label_config(["scratch"])
    assert "negative" in project["expert_instruction"] and project["show_instruction"]
    assert "What is <b>one</b> defect" in project["expert_instruction"]
    # and a new class in the settings updates the same project, once
    assert ensure_project(client, title, ["scratch", "dent"]).action == "updated"
    assert ensure_project(client, title, ["scratch", "dent"]).action == "unchanged"
    assert len(client.projects_titled(title)) == 1
    client.close()


def test_cli_bootstrap_reads_settings_from_the_environment(
    ls_settings: LabelStudioSettings,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__URL", ls_settings.url)
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__TOKEN", ls_settings.token.get_secret_value())
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__PROJECT_TITLE", ls_settings.project_title)
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(settings.store.path))
    assert cli.main(["labelling", "bootstrap"]) == 0
    assert '"action": "created"' in capsys.readouterr().out
    assert cli.main(["labelling", "bootstrap"]) == 0
    assert '"action": "unchanged"' in capsys.readouterr().out


def test_server_down_names_the_url_and_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LabelStudioUnavailable) as err:
        connect(LabelStudioSettings(url=url, token="x" * 40, timeout_s=5))
    assert url in str(err.value) and "start it" in str(err.value)


def test_bad_or_missing_token_says_so(
    label_studio: LabelStudioServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(LabelStudioAuthError, match="refused the API token"):
        connect(LabelStudioSettings(url=label_studio.url, token="0" * 40))
    with pytest.raises(LabelStudioAuthError, match="no API token"):
        connect(LabelStudioSettings(url=label_studio.url))
    # the CLI turns it into one line and exit code 1
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__URL", label_studio.url)
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__TOKEN", "0" * 40)
    assert cli.main(["labelling", "sync-in"]) == 1
    assert "refused the API token" in capsys.readouterr().err


def test_personal_access_token_is_exchanged(label_studio: LabelStudioServer) -> None:
    # given a personal access token (a JWT refresh token) made with the legacy token
    resp = requests.post(
        f"{label_studio.url}/api/token/",
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=30,
    )
    assert resp.status_code in (200, 201), resp.text[:300]
    pat = resp.json()["token"]
    # when the sync connects with it, then it works like the legacy token
    client = connect(LabelStudioSettings(url=label_studio.url, token=pat))
    assert client.projects_titled("no such project") == []
    client.close()
