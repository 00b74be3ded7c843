"""Review as teams use it: only a listed reviewer's star (or a reviewer's own work) counts, a
labeller's star on their own work does not; rounds report agreement between labellers."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import NamedTuple

import pytest
import requests

from qcloop.settings import Settings
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.errors import LabellingError
from qcloop_labelling.review import Reviewers, reviewed
from qcloop_labelling.settings import LabelStudioSettings
from qcloop_labelling.sync_in import sync_in
from qcloop_labelling.sync_out import REPORT_FILE, sync_out
from tests.labelling.conftest import LabelStudioServer
from tests.labelling.helpers import annotate, metal_tag_images, put_feedback_image, rect

QUIET = {"progress": lambda _: None}


class Member(NamedTuple):
    """A Label Studio user of the test server: id, email and legacy API token."""

    id: int
    email: str
    token: str


def _join(server: LabelStudioServer, email: str) -> Member:
    """Sign a new user up through the organisation's invite link, as a team member would."""
    admin = {"Authorization": f"Token {server.token}"}
    invite = requests.get(f"{server.url}/api/invite", headers=admin, timeout=30)
    invite.raise_for_status()
    signup = f"{server.url}{invite.json()['invite_url']}"
    with requests.Session() as browser:
        browser.get(signup, timeout=30).raise_for_status()  # sets the CSRF cookie
        form = {"email": email, "password": secrets.token_urlsafe(16)}
        form["csrfmiddlewaretoken"] = browser.cookies["csrftoken"]
        done = browser.post(
            signup, data=form, headers={"Referer": signup}, allow_redirects=False, timeout=30
        )
        assert done.status_code == 302, done.text[:500]
        me = browser.get(f"{server.url}/api/current-user/whoami", timeout=30).json()
        token = browser.get(f"{server.url}/api/current-user/token", timeout=30).json()["token"]
    return Member(int(me["id"]), email, str(token))


@pytest.fixture(scope="module")
def team(label_studio: LabelStudioServer) -> dict[str, Member]:
    """Two labellers and a reviewer, members of the session server's organisation."""
    tag = secrets.token_hex(3)
    names = ("labeller", "second", "reviewer")
    return {n: _join(label_studio, f"{n}-{tag}@example.com") for n in names}


def _star(url: str, member: Member, annotation: int) -> None:
    """Mark an annotation as ground truth (the star of the Label Studio UI) as ``member``."""
    resp = requests.patch(
        f"{url}/api/annotations/{annotation}/",
        json={"ground_truth": True},
        headers={"Authorization": f"Token {member.token}"},
        timeout=30,
    )
    resp.raise_for_status()


def _edit(url: str, member: Member, annotation: int, result: list[dict]) -> None:
    resp = requests.patch(
        f"{url}/api/annotations/{annotation}/",
        json={"result": result},
        headers={"Authorization": f"Token {member.token}"},
        timeout=30,
    )
    resp.raise_for_status()


def _tasks(settings: Settings, client: LabelStudioClient, project_id: int, n: int) -> list[int]:
    for k in range(n):
        put_feedback_image(settings, metal_tag_images(1, skip=k)[0], [0.2], minute=k)
    return list(sync_in(settings, client, project_id, **QUIET).task_ids)


def _with_review(settings: Settings, ls: LabelStudioSettings, reviewers: list[str]) -> Settings:
    review = ls.model_copy(update={"review": True, "reviewers": reviewers})
    return settings.model_copy(update={"label_studio": review})


# ---------------------------------------------------------------- the rule, pure

LABELLER, REVIEWER = 2, 3
LISTED = Reviewers(frozenset({REVIEWER}), frozenset({"reviewer@example.com"}))


@pytest.mark.parametrize(
    ("annotation", "counts"),
    [
        ({"completed_by": LABELLER, "updated_by": REVIEWER, "ground_truth": True}, True),
        ({"completed_by": LABELLER, "updated_by": LABELLER, "ground_truth": True}, False),
        ({"completed_by": LABELLER, "updated_by": REVIEWER, "ground_truth": False}, False),
        ({"completed_by": REVIEWER, "updated_by": REVIEWER}, True),
        ({"completed_by": {"id": REVIEWER}, "updated_by": REVIEWER}, True),
        ({"completed_by": REVIEWER, "updated_by": LABELLER}, False),  # forged author
        ({"reviews": [{"created_by": {"id": REVIEWER}, "accepted": True}]}, True),
        ({"reviews": [{"created_by": "Reviewer@example.com", "accepted": True}]}, True),
        ({"reviews": [{"created_by": LABELLER, "accepted": True}]}, False),
        (
            {
                "reviews": [
                    {"id": 1, "created_by": REVIEWER, "accepted": True},
                    {"id": 2, "created_by": REVIEWER, "accepted": False},
                ]
            },
            False,
        ),
    ],
)
def test_with_reviewers_only_their_star_review_or_own_work_counts(
    annotation: dict, counts: bool
) -> None:
    # given an annotation as Label Studio exports it / when judged with a reviewer listed
    # then it counts only when the reviewer gave the star last, made it, or accepted it last
    assert reviewed(annotation, LISTED) is counts


def test_without_reviewers_any_star_or_accepted_review_counts() -> None:
    # given a labeller's star on their own work / then it counts when nobody is listed
    assert reviewed({"completed_by": 2, "updated_by": 2, "ground_truth": True})
    assert reviewed({"reviews": [{"created_by": 2, "accepted": True}]})
    assert not reviewed({"completed_by": 2, "updated_by": 2})


# ---------------------------------------------------------------- against the server


@pytest.mark.label_studio
@pytest.mark.integration
def test_a_round_takes_a_reviewers_star_not_a_labellers_own(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    team: dict[str, Member],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # an entry point run earlier in the session may have stopped these records propagating
    monkeypatch.setattr(logging.getLogger("qcloop_labelling"), "propagate", True)
    url, labeller, reviewer = ls_settings.url, team["labeller"], team["reviewer"]
    box = [rect(10, 10, 20, 20)]
    self_starred, starred, edited, own, forged, waiting = _tasks(settings, client, project_id, 6)
    # given a labeller who stars their own annotation
    _star(url, labeller, annotate(url, labeller.token, self_starred, box))
    # a labeller's annotation the reviewer starred, and one the labeller changed after the star
    _star(url, reviewer, annotate(url, labeller.token, starred, box))
    after = annotate(url, labeller.token, edited, box)
    _star(url, reviewer, after)
    _edit(url, labeller, after, [rect(30, 30, 10, 10)])
    # the reviewer's own annotation, one the labeller made in the reviewer's name, one unreviewed
    annotate(url, reviewer.token, own, [])
    made_as = requests.post(
        f"{url}/api/tasks/{forged}/annotations/",
        json={"result": box, "completed_by": reviewer.id},
        headers={"Authorization": f"Token {labeller.token}"},
        timeout=30,
    )
    assert made_as.json()["completed_by"] == reviewer.id  # Label Studio lets anyone do this
    annotate(url, labeller.token, waiting, box)
    # when a round exports with review on and the reviewer listed (email in other case)
    listed = _with_review(settings, ls_settings, [reviewer.email.upper()])
    report = sync_out(listed, client, project_id, tmp_path / "reviewed", **QUIET)
    # then only the reviewer's star and the reviewer's own work count
    status = {o.task_id: o.status for o in report.outcomes}
    assert status == {
        self_starred: "pending",
        starred: "labelled",
        edited: "pending",
        own: "negative",
        forged: "pending",
        waiting: "pending",
    }
    written = json.loads((tmp_path / "reviewed" / REPORT_FILE).read_text())
    assert written["review"]["on"] is True
    assert written["review"]["reviewers"] == [reviewer.email]
    # when nobody is listed: every star counts, the labeller's own too, and a WARNING says so
    with caplog.at_level(logging.WARNING):
        anyone = sync_out(
            _with_review(settings, ls_settings, []), client, project_id, tmp_path / "open", **QUIET
        )
    counted = {o.task_id for o in anyone.outcomes if o.status in ("labelled", "negative")}
    assert counted == {self_starred, starred, edited}
    assert "without label_studio.reviewers" in caplog.text
    # when a listed email is no user of the server: the error names the field and the email
    unknown = _with_review(settings, ls_settings, [reviewer.email, "nobody@example.com"])
    with pytest.raises(LabellingError, match=r"label_studio\.reviewers: nobody@example\.com"):
        sync_out(unknown, client, project_id, tmp_path / "unknown", **QUIET)


@pytest.mark.label_studio
@pytest.mark.integration
def test_cli_round_reports_agreement_between_two_labellers(
    settings: Settings,
    client: LabelStudioClient,
    project_id: int,
    ls_settings: LabelStudioSettings,
    team: dict[str, Member],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from pipelines import cli

    url, first, second, reviewer = (
        ls_settings.url,
        team["labeller"],
        team["second"],
        team["reviewer"],
    )
    same, split, apart, alone = _tasks(settings, client, project_id, 4)
    box, other = rect(10, 10, 20, 20), rect(60, 50, 10, 10)
    # given two labellers on three tasks: the same box; one box of two; boxes far apart
    annotate(url, first.token, same, [box])
    annotate(url, second.token, same, [rect(10.5, 10, 20, 20)])
    annotate(url, first.token, split, [box, other])
    annotate(url, second.token, split, [box])
    annotate(url, first.token, apart, [box])
    annotated = annotate(url, second.token, apart, [other])
    annotate(url, first.token, alone, [])  # one labeller only: no agreement figure
    _star(url, reviewer, annotated)
    # when the round runs from the CLI with review on and the reviewer listed by variable
    env = {
        "QCLOOP_LABEL_STUDIO__URL": url,
        "QCLOOP_LABEL_STUDIO__TOKEN": ls_settings.token.get_secret_value(),
        "QCLOOP_LABEL_STUDIO__PROJECT_TITLE": ls_settings.project_title,
        "QCLOOP_LABEL_STUDIO__REVIEW": "true",
        "QCLOOP_LABEL_STUDIO__REVIEWERS": f"{reviewer.email},lead@example.com",
        "QCLOOP_STORE__PATH": str(settings.store.path),
        "QCLOOP_WORKSPACE": str(settings.workspace),
        "QCLOOP_DVC__REMOTE": str(settings.dvc.remote),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capfd.readouterr()
    assert cli.main(["labelling", "round"]) == 1  # lead@example.com is no user yet
    assert "label_studio.reviewers: lead@example.com is not a user" in capfd.readouterr().err
    monkeypatch.setenv("QCLOOP_LABEL_STUDIO__REVIEWERS", reviewer.email)
    assert cli.main(["labelling", "round"]) == 0
    (line,) = capfd.readouterr().out.splitlines()
    result = json.loads(line)
    # then only the reviewed task makes the version, and the agreement names the worst tasks
    assert (result["version"], result["counts"]["labelled"], result["counts"]["pending"]) == (
        "v1",
        1,
        3,
    )
    people = sorted([first.id, second.id])
    assert result["agreement"] == {
        "tasks": 3,
        "mean_f1": round((1 + 2 / 3 + 0) / 3, 4),
        "lowest": [
            {"task": apart, "f1": 0.0, "annotators": people},
            {"task": split, "f1": round(2 / 3, 4), "annotators": people},
        ],
    }
