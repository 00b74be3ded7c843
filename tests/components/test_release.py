"""Release bridge: approved MLflow version -> ONNX in the object store -> retained MQTT message."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from components.audit import approve
from components.registry import register_model
from components.release import (
    build_release,
    latest_key,
    model_key,
    publish_release,
    sequence_key,
)
from qcloop.contracts import EvalMetrics, ModelRecord, ReleaseEnvelope, ReleaseMessage, Thresholds
from qcloop.download import download_url
from qcloop.errors import IntegrityError, RegistryError
from qcloop.mqtt import release_topic
from qcloop.settings import (
    MlflowSettings,
    MqttSettings,
    ReleaseSettings,
    Settings,
    StoreSettings,
)
from qcloop.signing import load_private_key, load_public_keys, open_envelope, unverified
from qcloop.storage import S3Store, open_store, released_key, sha256_file
from tests.conftest import read_retained

pytestmark = pytest.mark.integration


def _settings(
    tmp_path: Path, mqtt_url: str, store: StoreSettings | None = None, fleet: str = "line-1"
) -> Settings:
    return Settings(
        home=tmp_path,
        store=store or StoreSettings(path=tmp_path / "store"),
        mlflow=MlflowSettings(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", model_name="det"),
        mqtt=MqttSettings(url=mqtt_url, fleet=fleet),
    )


def _retained(settings: Settings, fleet: str) -> ReleaseMessage:
    """The release retained on the fleet's topic (its signature not checked here)."""
    payload = read_retained(settings.mqtt, release_topic(fleet))
    return unverified(ReleaseEnvelope.from_json(payload)).message


def _approved(settings: Settings, onnx: Path) -> ModelRecord:
    record = _register(settings, onnx)
    approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name=settings.mlflow.model_name,
        version=record.version,
        approved_by="qa-lead",
    )
    return record


def _register(settings: Settings, onnx: Path) -> ModelRecord:
    return register_model(
        tracking_uri=settings.mlflow.tracking_uri,
        experiment="rel",
        model_name=settings.mlflow.model_name,
        onnx_path=onnx,
        metrics=EvalMetrics(map50=0.5, map50_95=0.3, precision=0.5, recall=0.5, images=4),
        params={"epochs": 1},
        dataset_version="v1",
        code_version="test",
        class_names=["scratch"],
        input_size=160,
    )


def test_unapproved_model_is_not_released(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    settings = _settings(tmp_path, mqtt_url)
    record = _register(settings, exported_onnx)
    with pytest.raises(RegistryError, match="alias @production: not found"):
        build_release(settings, released_by="t")
    with pytest.raises(RegistryError, match=f"version {record.version} is not approved"):
        build_release(settings, ref=record.version, released_by="t")


def test_approved_model_is_released_retained(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    # given an approved model
    settings = _settings(tmp_path, mqtt_url)
    record = _register(settings, exported_onnx)
    approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name="det",
        version=record.version,
        approved_by="qa-lead",
    )
    # when the bridge releases it
    release = build_release(settings, released_by="ops", thresholds=Thresholds(confidence=0.3))
    topic = publish_release(settings, release)
    # then a late subscriber gets the envelope byte for byte, also kept in the store
    assert topic == release_topic("line-1")
    assert read_retained(settings.mqtt, topic) == release.payload()
    store = open_store(settings.store)
    assert store.get_bytes(released_key("det")) == release.payload()
    got = unverified(ReleaseEnvelope.from_json(release.payload())).message
    assert got == release.message and got.key_id is None  # no signing key set: unsigned
    assert (got.model.version, got.input_size, got.class_names) == (
        record.version,
        160,
        ["scratch"],
    )
    assert got.expires_at - got.released_at == timedelta(days=30)
    fetched = download_url(
        got.url, tmp_path / "fetched.onnx", store, size=got.size, sha256=got.sha256
    )
    assert sha256_file(fetched) == got.sha256 == sha256_file(exported_onnx)
    assert got.size == exported_onnx.stat().st_size


def test_release_through_s3(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path, s3_store_settings: StoreSettings
) -> None:
    settings = _settings(tmp_path, mqtt_url, s3_store_settings)
    record = _register(settings, exported_onnx)
    approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name="det",
        version=record.version,
        approved_by="qa-lead",
    )
    message = build_release(settings, released_by="ops").message
    assert message.url == f"s3://{s3_store_settings.bucket}/{model_key('det', record.version)}"
    store = S3Store(s3_store_settings)
    assert store.get_bytes(model_key("det", record.version)) == exported_onnx.read_bytes()


def test_signed_release_verifies_and_tampering_is_caught(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    from qcloop.signing import generate_keypair

    private, public = generate_keypair(tmp_path / "keys")
    release_settings = ReleaseSettings(signing_key=private, expires_after_days=7)
    settings = _settings(tmp_path, mqtt_url, fleet="signed").model_copy(
        update={"release": release_settings}
    )
    _approved(settings, exported_onnx)
    release = build_release(settings, released_by="ops")
    # the envelope opens with the public key, naming its id, a sequence and an expiry
    trusted = load_public_keys([public])
    opened = open_envelope(release.payload(), trusted)
    assert opened.verified_by == opened.message.key_id == next(iter(trusted))
    assert opened.message.expires_at - opened.message.released_at == timedelta(days=7)
    # and the same envelope with other signed bytes, or without signatures, does not
    envelope = release.envelope
    forged = envelope.model_copy(update={"signed": envelope.signed[:-8] + "AAAAAAA="})
    with pytest.raises(IntegrityError, match="bad signature"):
        open_envelope(forged, trusted)
    with pytest.raises(IntegrityError, match="unsigned"):
        open_envelope(envelope.model_copy(update={"signatures": []}), trusted)


def test_the_fleet_sequence_only_grows_across_builds_restarts_and_a_lost_record(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    # given an approved model and a bridge for a fleet of its own
    settings = _settings(tmp_path, mqtt_url, fleet="seq-line")
    _approved(settings, exported_onnx)
    # when it builds twice, publishing the second
    first = build_release(settings, released_by="ops").message.sequence
    second = build_release(settings, released_by="ops")
    publish_release(settings, second)
    # then the numbers follow each other, each claimed in the store
    assert (first, second.message.sequence) == (1, 2)
    store = open_store(settings.store)
    assert store.get_bytes(sequence_key("seq-line", 2)) == second.payload()
    assert store.get_bytes(latest_key("seq-line")) == second.payload()
    # and a restarted bridge (fresh settings and store objects) goes on from there
    fresh = _settings(tmp_path, mqtt_url, fleet="seq-line")
    assert build_release(fresh, released_by="ops").message.sequence == 3
    # and one that lost the store's record goes on from the release retained on the broker
    for key in list(store.list("releases/seq-line/")):
        (tmp_path / "store" / key).unlink()
    assert _retained(fresh, "seq-line").sequence == 2
    assert build_release(fresh, released_by="ops").message.sequence == 3
    # and a number another bridge claimed first is skipped
    store.put_bytes(sequence_key("seq-line", 4), b"{}")
    assert build_release(fresh, released_by="ops").message.sequence == 5


def test_bridge_publishes_each_alias_move_once(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    import threading
    import time

    from components.release import watch_and_release

    settings = _settings(tmp_path, mqtt_url, fleet="bridge-test")  # own retained topic
    lines: list[str] = []
    stop = threading.Event()
    bridge = threading.Thread(
        target=watch_and_release,
        kwargs={"settings": settings, "interval_s": 0.2, "stop": stop, "log": lines.append},
    )
    bridge.start()
    try:
        first = _register(settings, exported_onnx)
        second = _register(settings, exported_onnx)
        for record in (first, second):
            approve(
                tracking_uri=settings.mlflow.tracking_uri,
                model_name="det",
                version=record.version,
                approved_by="qa-lead",
            )
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                got = _retained(settings, "bridge-test")
                if got.model.version == record.version:
                    break
                time.sleep(0.2)
            assert got.model.version == record.version
    finally:
        stop.set()
        bridge.join(timeout=10)
    released = [line for line in lines if line.startswith("[bridge] released")]
    assert len(released) == 2, lines
    assert [line.rsplit(" ", 1)[1] for line in released] == ["(#1)", "(#2)"]
    assert any("not released this round" in line for line in lines)  # before the first approval


# --- who may approve: signed approvals, production fleets ---------------------------------


def _approver_keys(tmp_path: Path, *names: str) -> dict[str, Ed25519PrivateKey]:
    """Approvers' key pairs: ``keys/<name>.key`` (theirs), ``approvers/<name>.pub`` (the list)."""
    from qcloop.signing import generate_keypair

    (tmp_path / "approvers").mkdir(exist_ok=True)
    keys = {}
    for name in names:
        private, public = generate_keypair(tmp_path / "keys", name)
        public.rename(tmp_path / "approvers" / public.name)
        keys[name] = load_private_key(private)
    return keys


def _with_release(settings: Settings, **release: object) -> Settings:
    return settings.model_copy(update={"release": ReleaseSettings.model_validate(release)})


def _nothing_published(settings: Settings, fleet: str, version: str) -> None:
    """No release retained for ``fleet``, no claimed sequence, no model copied."""
    from qcloop.mqtt import read_retained as broker_retained

    assert broker_retained(settings.mqtt, release_topic(fleet)) is None
    store = open_store(settings.store)
    assert list(store.list(f"releases/{fleet}/")) == []
    assert not store.exists(model_key("det", version))


def _approve(settings: Settings, version: str, by: str, key: Ed25519PrivateKey | None) -> None:
    approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name="det",
        version=version,
        approved_by=by,
        signing_key=key,
    )


def test_only_a_valid_approval_by_a_listed_key_is_released(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    from mlflow import MlflowClient

    from components.audit import ApprovalRefused
    from qcloop.approvals import APPROVAL_TAG

    # given a bridge whose approvers are alice and bob (a folder of public keys)
    keys = _approver_keys(tmp_path, "alice", "bob", "mallory")
    (tmp_path / "approvers" / "mallory.pub").unlink()  # mallory's key is not on the list
    fleet = "signed-approvals"
    settings = _with_release(
        _settings(tmp_path, mqtt_url, fleet=fleet), approvers=[tmp_path / "approvers"]
    )
    uri = settings.mlflow.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    first = _register(settings, exported_onnx)
    v1 = first.version

    # when the version is not approved at all: refused
    with pytest.raises(ApprovalRefused, match=f"version {v1} is not approved"):
        build_release(settings, ref=v1, released_by="ops")
    # when the alias is moved without a signature: refused, naming what is missing
    _approve(settings, v1, "qa-lead", None)
    with pytest.raises(ApprovalRefused, match=f"version {v1} carries no signed approval") as exc:
        build_release(settings, released_by="ops")
    assert "alice, bob" in str(exc.value) and f"qcloop model approve {v1}" in str(exc.value)
    # when it is signed by a key that is not on the list: refused
    _approve(settings, v1, "mallory", keys["mallory"])
    with pytest.raises(ApprovalRefused, match="not on the approver list"):
        build_release(settings, released_by="ops")
    # when a listed approver's statement is altered (another sha256): the signature fails
    _approve(settings, v1, "alice", keys["alice"])
    tags = client.get_model_version("det", v1).tags
    envelope = json.loads(tags[APPROVAL_TAG])
    statement = json.loads(base64.b64decode(envelope["signed"]))
    statement["onnx_sha256"] = "0" * 64
    envelope["signed"] = base64.b64encode(json.dumps(statement).encode()).decode()
    client.set_model_version_tag("det", v1, APPROVAL_TAG, json.dumps(envelope))
    with pytest.raises(ApprovalRefused, match="bad signature by approver alice"):
        build_release(settings, released_by="ops")
    # when alice's valid approval of v1 is copied onto another version: refused
    _approve(settings, v1, "alice", keys["alice"])
    valid = client.get_model_version("det", v1).tags[APPROVAL_TAG]
    v2 = _register(settings, exported_onnx).version
    client.set_model_version_tag("det", v2, "approved", "true")
    client.set_model_version_tag("det", v2, APPROVAL_TAG, valid)
    client.set_registered_model_alias("det", "production", v2)
    with pytest.raises(ApprovalRefused, match=f"for model det version {v1}, copied onto"):
        build_release(settings, released_by="ops")
    # then nothing of all this was published or copied
    _nothing_published(settings, fleet, v1)
    _nothing_published(settings, fleet, v2)

    # when bob approves v2 with his key: it is released, and the release names it
    _approve(settings, v2, "bob", keys["bob"])
    release = build_release(settings, released_by="ops")
    publish_release(settings, release)
    assert release.message.model.version == v2 and release.message.sequence == 1
    assert _retained(settings, fleet).model.version == v2
    # and carries bob's signed approval, byte for byte, for devices that check it too
    approval = client.get_model_version("det", v2).tags[APPROVAL_TAG]
    assert release.message.approval == approval

    # when the model of the approved v2 is swapped afterwards (artifact and record tags)
    swapped = tmp_path / "swapped.onnx"
    swapped.write_bytes(exported_onnx.read_bytes() + b"not what bob approved")
    run = client.get_model_version("det", v2).run_id
    artifacts = Path(urlparse(client.get_run(run).info.artifact_uri).path)
    (artifacts / "model" / "model.onnx").write_bytes(swapped.read_bytes())
    client.set_model_version_tag("det", v2, "onnx_sha256", sha256_file(swapped))
    client.set_model_version_tag("det", v2, "onnx_size", str(swapped.stat().st_size))
    # then the bridge refuses it: bob's signature covers the other sha256
    with pytest.raises(ApprovalRefused, match="the model changed after it was approved"):
        build_release(settings, released_by="ops")
    assert _retained(settings, fleet).sequence == 1  # the fleet keeps bob's release


def test_the_pipelines_own_approval_reaches_lab_fleets_only(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from components.audit import ApprovalRefused

    # given no approver list (approvals not checked) and one fleet marked production
    settings = _with_release(
        _settings(tmp_path, mqtt_url, fleet="auto-lab"), production_fleets=["auto-plant"]
    )
    record = _register(settings, exported_onnx)
    # when the training pipeline approves the version itself (approval=auto)
    with caplog.at_level("WARNING", logger="components.audit"):
        _approve(settings, record.version, "pipeline:run-42", None)
    assert "not release it to fleets marked production" in caplog.text
    # then the bridge refuses it for the production fleet, publishing nothing
    with pytest.raises(ApprovalRefused, match="fleet auto-plant is a production fleet"):
        build_release(settings, released_by="ops", fleet="auto-plant")
    _nothing_published(settings, "auto-plant", record.version)
    # and releases it to the lab fleet, warning on every release that nothing is checked
    caplog.clear()
    with caplog.at_level("WARNING", logger="components.audit"):
        release = build_release(settings, released_by="ops", fleet="auto-lab")
    publish_release(settings, release)
    assert _retained(settings, "auto-lab").model.version == record.version
    assert "approvals are not checked" in caplog.text


def test_the_watching_bridge_publishes_no_refused_version_and_says_why(
    tmp_path: Path, mqtt_url: str, exported_onnx: Path
) -> None:
    import threading
    import time

    from components.release import watch_and_release

    # given a watching bridge with an approver list
    keys = _approver_keys(tmp_path, "alice")
    fleet = "watch-approvals"
    settings = _with_release(
        _settings(tmp_path, mqtt_url, fleet=fleet), approvers=[tmp_path / "approvers" / "alice.pub"]
    )
    record = _register(settings, exported_onnx)
    lines: list[str] = []
    stop = threading.Event()
    bridge = threading.Thread(
        target=watch_and_release,
        kwargs={"settings": settings, "interval_s": 0.2, "stop": stop, "log": lines.append},
    )
    bridge.start()
    try:
        # when the alias moves to a version approved without a signature
        _approve(settings, record.version, "qa-lead", None)
        deadline = time.monotonic() + 20
        while not any(line.startswith("[bridge] refused") for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.2)
        time.sleep(1.0)  # several polls
        # then it says why once, and publishes nothing
        refused = [line for line in lines if line.startswith("[bridge] refused")]
        assert len(refused) == 1, lines
        assert f"version {record.version} carries no signed approval" in refused[0]
        _nothing_published(settings, fleet, record.version)
        # when alice signs it: released at the next poll
        _approve(settings, record.version, "alice", keys["alice"])
        deadline = time.monotonic() + 20
        while not any(line.startswith("[bridge] released") for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.2)
    finally:
        stop.set()
        bridge.join(timeout=10)
    assert _retained(settings, fleet).model.version == record.version
