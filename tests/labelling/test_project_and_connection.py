"""Bootstrap is idempotent; a server that is down or a bad token fail clearly."""

from __future__ import annotations

import pytest
import requests

from qcloop.settings import Settings
from qcloop_labelling import cli
from qcloop_labelling.client import LabelStudioClient, connect
from qcloop_labelling.errors import LabelStudioAuthError, LabelStudioUnavailable
from qcloop_labelling.project import TASK_COLUMNS, ensure_project, hidden_columns, label_config
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.sync_in import sync_in
from tests.labelling.conftest import LabelStudioServer
from tests.labelling.helpers import metal_tag_images, put_feedback_image
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


OLD_CONFIG = """<View>
  <Header value="Mark every scratch with a tight box."/>
  <Image name="image" value="$image" zoom="true" zoomControl="true" rotateControl="false"/>
  <RectangleLabels name="label" toName="image" strokeWidth="2">
    <Label value="scratch" background="#e4572e"/>
  </RectangleLabels>
</View>"""


def _views(ls: LabelStudioSettings, project_id: int) -> list[dict]:
    resp = requests.get(
        f"{ls.url}/api/dm/views/",
        params={"project": project_id},
        headers={"Authorization": f"Token {ls.token.get_secret_value()}"},
        timeout=30,
    )
    resp.raise_for_status()
    return list(resp.json())


def test_bootstrap_moves_an_old_project_to_labels_beside_the_image(
    ls_settings: LabelStudioSettings, client: LabelStudioClient
) -> None:
    # given a project made before: its label choice below the image, no data manager tab
    title = ls_settings.project_title
    old = client.create_project({"title": title, "label_config": OLD_CONFIG})
    # when the bootstrap runs twice
    first = ensure_project(client, title, ["scratch"])
    second = ensure_project(client, title, ["scratch"])
    # then the same project got the labels beside the image, once
    assert (first.id, first.action, second.action) == (old["id"], "updated", "unchanged")
    config = client.project(first.id)["label_config"]
    assert config == label_config(["scratch"])
    assert 'style="display:flex;align-items:start;gap:8px;flex-direction:row"' in config
    assert 'name="label" toName="image"' in config and 'value="$image"' in config
    # and its data manager has the default tab with qcloop's columns
    (view,) = _views(ls_settings, first.id)
    assert view["data"]["title"] == "Default"
    assert view["data"]["hiddenColumns"] == hidden_columns()


def test_default_tab_hides_bookkeeping_and_bootstrap_puts_it_back(
    ls_settings: LabelStudioSettings,
    client: LabelStudioClient,
    project_id: int,
    settings: Settings,
) -> None:
    # given a bootstrapped project with a task synced in from the raw store
    put_feedback_image(settings, metal_tag_images(1, skip=7)[0], [0.4])
    sync_in(settings, client, project_id, progress=lambda _: None)
    auth = {"Authorization": f"Token {ls_settings.token.get_secret_value()}"}
    offered = requests.get(
        f"{ls_settings.url}/api/dm/columns/",
        params={"project": project_id},
        headers=auth,
        timeout=30,
    ).json()["columns"]
    (view,) = _views(ls_settings, project_id)
    # then every column Label Studio offers is one qcloop decided to show or hide, and the
    # tab hides raw_key and sha256 in the table and in the list beside the editor
    names = {("data." if c.get("parent") == "data" else "") + c["id"] for c in offered}
    assert names - {"data"} <= set(TASK_COLUMNS), names - set(TASK_COLUMNS)
    for mode in ("explore", "labeling"):
        hidden = set(view["data"]["hiddenColumns"][mode])
        assert {"tasks:data.raw_key", "tasks:data.sha256"} <= hidden
        assert "tasks:data.image" not in hidden
    # when someone shows raw_key again and filters the tab, as the data manager does
    shown = view["data"] | {
        "hiddenColumns": {"explore": [], "labeling": []},
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:total_annotations",
                    "operator": "equal",
                    "type": "Number",
                    "value": 0,
                }
            ],
        },
    }
    requests.patch(
        f"{ls_settings.url}/api/dm/views/{view['id']}/",
        json={"project": project_id, "data": shown},
        headers=auth,
        timeout=30,
    ).raise_for_status()
    # then the bootstrap hides it again, keeps the filter, and makes no second tab
    title = ls_settings.project_title
    assert ensure_project(client, title, list(settings.class_names)).action == "updated"
    assert ensure_project(client, title, list(settings.class_names)).action == "unchanged"
    (after,) = _views(ls_settings, project_id)
    assert after["id"] == view["id"]
    assert after["data"]["hiddenColumns"] == hidden_columns()
    (kept,) = after["data"]["filters"]["items"]
    assert (kept["filter"], kept["value"]) == ("filter:tasks:total_annotations", 0)


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
