"""`qcloop pipeline upload/submit` against a KFP API server (fake_kfp: no cluster runs here).

What is checked is what kfp.Client sends over HTTP: the uploaded package, the
pipeline version a run or schedule references, its parameters (no secret), the
experiment, and the credentials.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.attempts import resolve_version
from pipelines.cli import main
from pipelines.submit import submit
from qcloop.errors import DatasetError, PipelineError
from qcloop.settings import PipelineSettings, Settings, StoreSettings
from qcloop.storage import open_store
from tests.pipelines.fake_kfp import API, FakeKfp

SECRET = "SK-must-not-travel"


@pytest.fixture
def kfp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeKfp]:
    monkeypatch.setenv("QCLOOP_CODE_VERSION", "abc1234abc12")
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json of the user
    with FakeKfp() as server:
        yield server


def _settings(tmp_path: Path, *versions: str) -> Settings:
    """Settings with an S3 secret and a local store holding dataset pointers ``versions``."""
    settings = Settings(
        home=tmp_path / "home",
        store=StoreSettings(path=tmp_path / "store", access_key="AK-x", secret_key=SECRET),
    )
    store = open_store(settings.store)
    for version in versions:
        store.put_bytes(f"datasets/{version}.dvc", b"outs: []\n")
    return settings


def _posts(kfp: FakeKfp, path: str) -> list[dict]:
    return [r for r in kfp.requests if r["method"] == "POST" and r["path"] == f"{API}{path}"]


def test_submit_uploads_this_codes_version_once_and_runs_it(
    kfp: FakeKfp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    # the first submit creates the pipeline, uploads this code's version and runs it
    run_id = submit(settings, host=kfp.url, params={"dataset_version": "v1", "epochs": 150})
    (created,) = _posts(kfp, "/pipelines/upload")
    assert created["query"]["name"] == "qcloop-training"
    (upload,) = _posts(kfp, "/pipelines/upload_version")
    spec = next(yaml.safe_load_all(upload["file"]))
    assert spec["pipelineInfo"]["name"] == "qcloop-training"
    assert "comp-plan" in spec["components"]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {
        "ghcr.io/qcloop/qcloop:abc1234abc12",
        "ghcr.io/qcloop/qcloop:abc1234abc12-cuda",
    }
    (pipeline_id,) = kfp.pipelines
    first, version = kfp.versions[pipeline_id]  # KFP's first one is named like the pipeline
    assert (first["display_name"], version["display_name"]) == ("qcloop-training", "abc1234abc12")
    (run,) = kfp.runs
    assert run["run_id"] == run_id and run["display_name"] == "qcloop-training-v1"
    assert run["pipeline_version_reference"] == {
        "pipeline_id": pipeline_id,
        "pipeline_version_id": version["pipeline_version_id"],
    }
    assert "pipeline_spec" not in run  # the run refers to the uploaded version
    params = run["runtime_config"]["parameters"]
    # the run's parameters only: nothing of the submitter's settings (endpoints, paths)
    assert params == {"dataset_version": "v1", "epochs": 150}
    (experiment,) = kfp.experiments.values()
    assert (
        experiment["display_name"] == "qcloop"
        and run["experiment_id"] == experiment["experiment_id"]
    )
    # the same code again: no second upload, the same version, the same experiment
    submit(settings, host=kfp.url, params={"dataset_version": "v2"})
    assert (
        len(kfp.versions[pipeline_id]) == 2 and len(_posts(kfp, "/pipelines/upload_version")) == 1
    )
    assert kfp.runs[1]["pipeline_version_reference"] == run["pipeline_version_reference"]
    assert len(_posts(kfp, "/experiments")) == 1
    # new code: a new version named after it, and the run uses it
    monkeypatch.setenv("QCLOOP_CODE_VERSION", "def5678def56")
    submit(settings, host=kfp.url, params={"dataset_version": "v2"})
    added = _posts(kfp, "/pipelines/upload_version")[-1]
    assert (added["query"]["name"], added["query"]["pipelineid"]) == ("def5678def56", pipeline_id)
    newest = kfp.versions[pipeline_id][-1]
    assert (
        kfp.runs[2]["pipeline_version_reference"]["pipeline_version_id"]
        == newest["pipeline_version_id"]
    )
    # no secret in any request, and no credentials were sent (none configured)
    sent = json.dumps([{k: v for k, v in r.items() if k != "file"} for r in kfp.requests])
    assert SECRET not in sent and "AK-x" not in sent
    assert all("authorization" not in r["headers"] for r in kfp.requests)


def test_schedule_is_pinned_to_a_version_and_trains_on_the_newest_data(
    kfp: FakeKfp, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, "v1", "v2")
    job_id = submit(settings, host=kfp.url, params={}, schedule="0 0 2 * * *")
    (job,) = kfp.recurring_runs
    assert job["recurring_run_id"] == job_id
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert int(job["max_concurrency"]) == 1 and job["no_catchup"] is True
    assert job["runtime_config"]["parameters"]["dataset_version"] == "latest"
    (pipeline_id,) = kfp.pipelines
    assert job["pipeline_version_reference"]["pipeline_id"] == pipeline_id
    # a crontab line of 5 fields would run at the wrong times: refused, with the fix
    with pytest.raises(PipelineError, match=r"6-field cron with seconds first.*'0 0 2 \* \* \*'"):
        submit(settings, host=kfp.url, params={}, schedule="0 2 * * *")
    assert len(kfp.recurring_runs) == 1
    submit(settings, host=kfp.url, params={}, schedule="@every 6h")
    assert kfp.recurring_runs[-1]["trigger"]["cron_schedule"]["cron"] == "@every 6h"
    # a one-off run without a version trains on the newest one when it starts, found in
    # the cluster's store by its first step: the submitter needs no store
    submit(settings, host=kfp.url, params={})
    assert kfp.runs[0]["runtime_config"]["parameters"]["dataset_version"] == "latest"


def test_latest_is_the_newest_version_in_the_store(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "v1", "v10", "v2")
    assert resolve_version(settings, "latest") == "v10"
    assert resolve_version(settings, "v2") == "v2"
    empty = _settings(tmp_path / "empty")
    with pytest.raises(DatasetError, match="holds no dataset version yet; import data first"):
        resolve_version(empty, "latest")


def test_a_server_older_than_the_supported_backends_is_refused_before_any_upload(
    kfp: FakeKfp, tmp_path: Path
) -> None:
    # Given a Kubeflow Pipelines 2.3 (Kubeflow 1.9), which fails the compiled pipeline
    kfp.version = "2.3.0"
    # When a run is submitted, Then it is refused naming the versions, and nothing is sent
    with pytest.raises(
        PipelineError, match=r"is 2\.3\.0; qcloop's pipelines need 2\.5\.0 or newer"
    ):
        submit(_settings(tmp_path), host=kfp.url, params={})
    assert not kfp.pipelines and not kfp.runs
    # a supported one takes it
    kfp.version = "2.5.0"
    submit(_settings(tmp_path), host=kfp.url, params={})
    assert len(kfp.runs) == 1


def test_uncommitted_code_is_not_uploaded_without_an_image_of_it(
    kfp: FakeKfp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given code with local changes: CI built no image of it
    monkeypatch.setenv("QCLOOP_CODE_VERSION", "abc1234abc12-dirty")
    with pytest.raises(PipelineError, match=r"no CI build made.*QCLOOP_PIPELINES__IMAGE_TAG"):
        submit(_settings(tmp_path), host=kfp.url, params={})
    assert not kfp.pipelines
    # an image built by hand and named in the settings: the pipeline names it, the version
    # is never reused
    settings = _settings(tmp_path).model_copy(
        update={"pipelines": PipelineSettings(image="registry.local/qc", image_tag="dev-7")}
    )
    submit(settings, host=kfp.url, params={})
    (upload,) = _posts(kfp, "/pipelines/upload_version")
    spec = next(yaml.safe_load_all(upload["file"]))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.local/qc:dev-7", "registry.local/qc:dev-7-cuda"}
    assert re.fullmatch(r"dev-7-\d{8}-\d{6}", upload["query"]["name"])


def test_wait_follows_the_run_to_its_end(
    kfp: FakeKfp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipelines.submit.WAIT_POLL_S", 0.01)
    kfp.run_states = ["PENDING", "RUNNING", "SUCCEEDED"]
    run_id = submit(_settings(tmp_path), host=kfp.url, params={}, wait_s=30)
    assert kfp.runs[0]["run_id"] == run_id and kfp.runs[0]["state"] == "SUCCEEDED"
    kfp.run_states = ["RUNNING", "FAILED"]
    with pytest.raises(PipelineError, match="ended FAILED"):
        submit(_settings(tmp_path), host=kfp.url, params={}, wait_s=30)
    kfp.run_states = ["RUNNING"]
    with pytest.raises(PipelineError, match="did not end within 0 s"):
        submit(_settings(tmp_path), host=kfp.url, params={}, wait_s=0.05)


def test_a_token_from_the_environment_or_the_service_account_is_sent(
    kfp: FakeKfp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "token-from-env")
    assert main(["pipeline", "upload", "--host", kfp.url]) == 0
    assert "version abc1234" in capsys.readouterr().out
    assert {r["headers"].get("authorization") for r in kfp.requests} == {"Bearer token-from-env"}
    # in the CronJob: the projected ServiceAccount token, read from its file
    monkeypatch.delenv("KF_PIPELINES_TOKEN")
    token_file = tmp_path / "sa-token"
    token_file.write_text("token-from-file")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    kfp.requests.clear()
    assert main(["pipeline", "upload", "--host", kfp.url]) == 0
    out = capsys.readouterr().out
    assert "already there, not uploaded again" in out and "token-from" not in out
    assert {r["headers"].get("authorization") for r in kfp.requests} == {"Bearer token-from-file"}


def test_params_get_the_pipelines_types_or_a_clear_error(
    kfp: FakeKfp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(tmp_path)
    good = {"dataset_version": "v1", "device": 0, "min_map50_95": 1, "int8": True}
    submit(settings, host=kfp.url, params=good)
    sent = kfp.runs[0]["runtime_config"]["parameters"]
    assert (sent["device"], sent["min_map50_95"], sent["int8"]) == ("0", 1.0, True)
    # no endpoint, secret or code version travels: the code is the image's
    assert not {"settings_json", "tracking_uri", "code_version"} & set(sent)
    for params, message in (
        ({"epochs": "many"}, 'epochs="many": epochs takes a whole number (e.g. 30)'),
        ({"int8": 1}, "int8=1: int8 takes true or false"),
        ({"min_map50_95": "high"}, 'min_map50_95="high": min_map50_95 takes a number (e.g. 0.5)'),
        ({"epoch": 3}, "--param epoch: the training pipeline has no such parameter; it has "),
    ):
        with pytest.raises(PipelineError, match=re.escape(message)):
            submit(settings, host=kfp.url, params={"dataset_version": "v1", **params})
    assert len(kfp.runs) == 1  # nothing sent for a bad parameter


def test_a_multi_user_namespace_holds_the_experiment(
    kfp: FakeKfp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(tmp_path / "store"))
    monkeypatch.setenv("KFP_NAMESPACE", "team-line-3")  # what the chart's CronJob sets
    assert main(["pipeline", "submit", "--host", kfp.url, "--dataset-version", "v1"]) == 0
    (lookup,) = [
        r for r in kfp.requests if r["path"] == f"{API}/experiments" and r["method"] == "GET"
    ]
    assert lookup["query"]["namespace"] == "team-line-3"
    (experiment,) = kfp.experiments.values()
    assert experiment["namespace"] == "team-line-3"
    assert kfp.runs[0]["experiment_id"] == experiment["experiment_id"]


def test_cli_submit_prints_the_run(
    kfp: FakeKfp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(tmp_path / "store"))
    args = ["pipeline", "submit", "--host", kfp.url, "--dataset-version", "v3"]
    assert main([*args, "--param", "device=0", "--param", "gpu_limit=1"]) == 0
    said = capsys.readouterr()
    (run,) = kfp.runs
    assert f"run {run['run_id']} created on {kfp.url}" in said.out
    assert "pipeline qcloop-training version abc1234abc12 uploaded" in said.err
    params = run["runtime_config"]["parameters"]
    assert (params["dataset_version"], params["device"], params["gpu_limit"]) == ("v3", "0", 1)


def test_a_refusing_server_is_named(
    kfp: FakeKfp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kfp.refuse.add("/pipelines/upload")
    assert main(["pipeline", "upload", "--host", kfp.url]) == 1
    err = capsys.readouterr().err
    assert f"Kubeflow Pipelines at {kfp.url} refused or is unreachable" in err
    assert "ApiException" in err and "(500)" in err and not kfp.runs and not kfp.pipelines
