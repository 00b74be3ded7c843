"""qcloop model pull/history/approve --reason and qcloop eval, on a real MLflow and ONNX model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.registry import register_model
from pipelines.cli import main, split_model_ref
from qcloop.contracts import EvalMetrics
from qcloop.storage import sha256_file

pytestmark = pytest.mark.integration


def test_model_refs() -> None:
    assert split_model_ref("det@production", "x") == ("det", "@production")
    assert split_model_ref("det/3", "x") == ("det", "3")
    assert split_model_ref("@staging", "x") == ("x", "@staging")
    assert split_model_ref("4", "x") == ("x", "4")


@pytest.fixture
def registry_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exported_onnx: Path) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("QCLOOP_MLFLOW__TRACKING_URI", uri)
    monkeypatch.setenv("QCLOOP_MLFLOW__MODEL_NAME", "det")
    for _ in range(2):
        register_model(
            tracking_uri=uri,
            experiment="e",
            model_name="det",
            onnx_path=exported_onnx,
            metrics=EvalMetrics(map50=0.5, map50_95=0.3, precision=0.5, recall=0.5, images=4),
            params={},
            dataset_version="v1",
            code_version="t",
            class_names=["scratch"],
            input_size=160,
        )
    return uri


def test_alias_moves_are_audited(registry_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "approve", "1", "--by", "ann", "--reason", "first line model"]) == 0
    assert main(["model", "approve", "2", "--by", "bob", "--reason", "beats v1"]) == 0
    capsys.readouterr()
    assert main(["model", "history"]) == 0
    moves = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(m["from"], m["to"], m["by"], m["why"]) for m in moves] == [
        (None, "1", "ann", "first line model"),
        ("1", "2", "bob", "beats v1"),
    ]
    assert all(m["alias"] == "production" and m["at"] for m in moves)


def test_release_takes_only_an_approval_signed_by_a_listed_key(
    registry_env: str,
    tmp_path: Path,
    mqtt_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a bridge whose only approver is alice (her key pair made by `qcloop keys`)
    keys = tmp_path / "keys"
    assert main(["keys", "generate", "--out", str(keys), "--name", "alice"]) == 0
    assert "release.approvers" in capsys.readouterr().out
    monkeypatch.setenv("QCLOOP_STORE__PATH", str(tmp_path / "store"))
    monkeypatch.setenv("QCLOOP_MQTT__URL", mqtt_url)
    monkeypatch.setenv("QCLOOP_MQTT__FLEET", "cli-approvals")
    monkeypatch.setenv("QCLOOP_RELEASE__APPROVERS", str(keys / "alice.pub"))
    # when version 1 is approved without a key, `qcloop release` exits 1 saying why
    assert main(["model", "approve", "1", "--by", "ann"]) == 0
    assert "(unsigned)" in capsys.readouterr().out
    assert main(["release"]) == 1
    err = capsys.readouterr().err
    assert "error: model det version 1 carries no signed approval" in err
    assert "approvers (alice)" in err
    # when alice approves it with her key, it is released, and the audit names her key
    approve = ["model", "approve", "1", "--by", "alice", "--key", str(keys / "alice.key")]
    assert main(approve) == 0
    assert "signed with key" in capsys.readouterr().out
    assert main(["release"]) == 0
    assert "released det/1 on qcloop/fleets/cli-approvals/release" in capsys.readouterr().out
    assert main(["model", "history"]) == 0
    moves = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "signed_by" not in moves[0] and len(moves[1]["signed_by"]) == 16


def test_pull_by_alias(
    registry_env: str, tmp_path: Path, exported_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "pull", "det@production", "--output", str(tmp_path / "m.onnx")]) == 1
    assert "approve one first" in capsys.readouterr().err
    assert main(["model", "approve", "2", "--by", "ann"]) == 0
    assert main(["model", "pull", "det@production", "--output", str(tmp_path / "m.onnx")]) == 0
    assert sha256_file(tmp_path / "m.onnx") == sha256_file(exported_onnx)


def test_eval_any_model_on_a_yolo_folder(
    tmp_path: Path, metal_tags: Path, exported_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "yolo"
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    shutil.copyfile(metal_tags / "classes.txt", folder / "classes.txt")
    for image in sorted((metal_tags / "images").glob("*.jpg"))[:4]:
        shutil.copyfile(image, folder / "images" / image.name)
        label = f"{image.stem}.txt"
        shutil.copyfile(metal_tags / "labels" / label, folder / "labels" / label)
    assert main(["eval", "--model", str(exported_onnx), "--data", str(folder)]) == 0
    # the JSON alone on stdout (`qcloop eval ... > metrics.json`), the progress on stderr
    out, err = capsys.readouterr()
    assert out.startswith("{"), repr(out[:600])
    metrics = EvalMetrics.from_json(out)
    assert metrics.images == 4 and "components.evaluate" in err
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    assert main(["eval", "--model", str(junk), "--data", str(folder)]) == 1
    assert f"error: {junk}: not an ONNX model (DecodeError" in capsys.readouterr().err
    (folder / "labels" / f"{image.stem}.txt").write_text("0 1.5 0.5 0.1 0.1\n")
    assert main(["eval", "--model", str(exported_onnx), "--data", str(folder)]) == 1
    assert image.stem in capsys.readouterr().err
