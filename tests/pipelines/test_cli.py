"""The qcloop CLI: every command exits 0 on success and 1 with one clear line on error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main


def test_schemas_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "release-message.schema.json").is_file()
    capsys.readouterr()
    assert main(["config"]) == 0
    assert json.loads(capsys.readouterr().out)["store"]["kind"] == "local"


@pytest.mark.integration
def test_synth_import_list_pull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    capsys = capfd  # what reaches the process's stdout, subprocesses' output included
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QCLOOP_WORKSPACE", str(tmp_path / "ws"))
    assert main(["dataset", "synth", "--out", "yolo", "--shots", "3"]) == 0
    capsys.readouterr()
    assert main(["dataset", "import", "yolo"]) == 0
    out = capsys.readouterr().out  # the JSON alone: the progress went to stderr
    assert json.loads(out)["version"] == "v1"
    assert main(["dataset", "list"]) == 0
    assert capsys.readouterr().out.split() == ["v1"]
    assert main(["dataset", "pull", "v1", "--out", "pulled"]) == 0
    assert (tmp_path / "pulled" / "manifest.json").is_file()
    capsys.readouterr()
    assert main(["dataset", "pull", "latest", "--out", "newest"]) == 0
    assert capsys.readouterr().out.startswith("v1: 12 images in newest")
    # one split as a plain YOLO folder: just that split's images and labels
    manifest = json.loads((tmp_path / "pulled" / "manifest.json").read_text())
    by_split: dict[str, set[str]] = {}
    for img in manifest["images"]:
        by_split.setdefault(img["split"], set()).add(Path(img["file"]).stem)
    assert set(by_split) == {"train", "test"}  # 3 shots: nothing left for val
    capsys.readouterr()
    assert main(["dataset", "pull", "v1", "--split", "test", "--out", "test-split"]) == 0
    assert capsys.readouterr().out.startswith(f"v1 test: {len(by_split['test'])} images in")
    split = tmp_path / "test-split"
    assert {p.stem for p in (split / "images").iterdir()} == by_split["test"]
    assert {p.stem for p in (split / "labels").iterdir()} == by_split["test"]
    assert (split / "classes.txt").read_text() == "scratch\n"
    assert not (split / "manifest.json").exists(), "a split is not a dataset version"
    assert main(["dataset", "pull", "v1", "--split", "val", "--out", "val-split"]) == 1
    assert "the val split is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if "split" in p.name) == ["test-split"]


def test_train_options_default_to_the_training_parameters() -> None:
    from pipelines.cli import build_parser
    from qcloop.params import DEFAULTS

    args = build_parser().parse_args(["train", "--dataset-version", "v1"])
    for name in ("epochs", "imgsz", "batch", "seed", "model_size", "patience", "recipe"):
        assert getattr(args, name) == getattr(DEFAULTS, name), name
    assert (args.min_map, args.tolerance, args.device) == (
        DEFAULTS.min_map50_95,
        DEFAULTS.tolerance,
        DEFAULTS.device,
    )
    assert (args.int8, args.dynamic_onnx, args.approval) == (False, False, "manual")
    labelling = build_parser().parse_args(["pipeline", "labelling"])
    assert (labelling.epochs, labelling.imgsz, labelling.min_map) == (
        DEFAULTS.epochs,
        DEFAULTS.imgsz,
        DEFAULTS.min_map50_95,
    )


def test_removed_training_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for option in (["--average-last", "10"], ["--model-size", "n-p2"]):
        with pytest.raises(SystemExit):
            main(["train", "--dataset-version", "v1", *option])
        assert option[0] in capsys.readouterr().err


def test_errors_are_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["dataset", "import", "no-such-folder"]) == 1
    err = capsys.readouterr().err  # the progress before it is on stderr too
    assert err.splitlines()[-1].startswith("error: ") and "no-such-folder" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[store]\nkind = 'ftp'\n")
    assert main(["--config", str(bad), "config"]) == 1
    assert "store.kind" in capsys.readouterr().err
