"""The quickstart's rounds: the loop turned on one machine, through the real parts.

Round 1: the first labelled set -> dataset version v1 -> training pipeline (kfp.local)
-> approval -> release over MQTT -> the edge agent swaps to the model and inspects the
camera's frames, sending hard ones back to the raw store.

Each later round: the feedback images become Label Studio tasks, pre-annotated with
the boxes of the model that judged them, least confident first (sync-in) -> a stand-in
annotator labels them through Label Studio's API -> the labelling pipeline (kfp.local:
round -> next dataset version, training, evaluation, the gate against production) ->
approval and release if the gate passed -> the same running agent swaps and inspects the
round's frames.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.demo_data import LoopData
from pipelines.demo_edge import EdgeBox
from qcloop.contracts import DatasetManifest, InferenceResult, RawImageSidecar, Thresholds
from qcloop.errors import PipelineError
from qcloop.settings import Settings
from qcloop.storage import ObjectStore, open_store, sidecar_key
from qcloop.versions import current_manifest

log = logging.getLogger("pipelines.demo")

DEMO_USER = "qcloop-demo"
ANNOTATOR = "stand-in-annotator"
THRESHOLDS = Thresholds(confidence=0.25, feedback_below=0.5)


@dataclass(frozen=True)
class RoundParams:
    """Training and gate parameters of every round of the demo."""

    epochs: int
    imgsz: int
    min_map50_95: float
    tolerance: float

    def as_kwargs(self) -> dict[str, Any]:
        """As training pipeline parameters."""
        return {
            "epochs": self.epochs,
            "imgsz": self.imgsz,
            "min_map50_95": self.min_map50_95,
            "tolerance": self.tolerance,
        }


class Clock:
    """Stage timings, logged as they end."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, label: str, name: str) -> Iterator[None]:
        log.info("[%s] %s", label, name)
        began = time.monotonic()
        yield
        self.stages[f"{label} {name}"] = round(time.monotonic() - began, 1)
        log.info("      done in %.1f s", time.monotonic() - began)

    def total(self) -> float:
        return round(time.monotonic() - self.start, 1)


def _current(settings: Settings) -> DatasetManifest:
    """The dataset version checked out in the demo's workspace (one always is, after round 1)."""
    manifest = current_manifest(settings.workspace.resolve())
    if manifest is None:
        raise PipelineError(f"no dataset version checked out in {settings.workspace}")
    return manifest


def _trained(outcome: dict[str, Any], home: Path) -> dict[str, Any]:
    """The round's model fields from a training outcome (``pipelines.training.outcome_of``)."""
    record = outcome.get("model_record")
    if outcome.get("metrics") is None:
        raise PipelineError(f"the training pipeline trained nothing; see {home / 'demo.log'}")
    metrics = outcome["metrics"]
    low, high = metrics.get("map50_95_low"), metrics.get("map50_95_high")
    interval = f" (95% interval {low:.3f}..{high:.3f})" if low is not None else ""
    log.info(
        "      evaluated: mAP50 %.3f, mAP50-95 %.3f%s on %d test images",
        metrics["map50"],
        metrics["map50_95"],
        interval,
        metrics["images"],
    )
    log.info("      gate: %s", outcome["gate_reason"])
    return {
        "model_version": str(record["version"]) if record else None,
        "model_name": record["name"] if record else None,
        "gate_passed": bool(outcome["gate_passed"]),
        "gate_reason": outcome["gate_reason"],
        "metrics": metrics,
    }


def _rollout(settings: Settings, edge: EdgeBox, version: str) -> None:
    """Approve ``version`` (signed with the demo approver's key, the first of
    ``release.approvers`` with ``.key``), release it, and wait until the agent serves it."""
    from components.audit import approve
    from components.release import build_release, publish_release
    from qcloop.signing import load_private_key

    approvers = settings.release.approvers
    key = load_private_key(approvers[0].with_suffix(".key")) if approvers else None
    approve(
        tracking_uri=settings.mlflow.tracking_uri,
        model_name=settings.mlflow.model_name,
        version=version,
        approved_by=DEMO_USER,
        reason="qcloop demo: the gate passed",
        signing_key=key,
    )
    log.info("      approved: alias '%s' -> v%s", settings.mlflow.production_alias, version)
    release = build_release(settings, released_by=DEMO_USER, thresholds=THRESHOLDS)
    topic = publish_release(settings, release)
    message = release.message
    log.info(
        "      released %s/%s on %s (sha256 %s..., %d bytes, #%d signed by key %s)",
        message.model.name,
        message.model.version,
        topic,
        message.sha256[:12],
        message.size,
        message.sequence,
        message.key_id,
    )
    edge.wait_serving(version)
    log.info("      the edge agent serves v%s", version)


def _inspect(store: ObjectStore, edge: EdgeBox, frames: list[Path]) -> dict[str, Any]:
    """Show the round's frames to the agent; what it sent back, by reason and by model."""
    results = edge.show(frames)
    keys = [r.feedback_key for r in results if r.feedback_key]
    edge.wait_uploaded(store, keys)
    sidecars = [RawImageSidecar.from_json(store.get_bytes(sidecar_key(k))) for k in keys]
    by_model = Counter(s.model.version if s.model else "none" for s in sidecars)
    log.info(
        "      inspected %d frames; %d sent back to the raw store (%s)",
        len(results),
        len(keys),
        ", ".join(f"model v{v}: {n}" for v, n in sorted(by_model.items())) or "none",
    )
    return {
        "serving_model_version": _served_by(results),
        "frames_inferred": len(results),
        "feedback_images": len(keys),
        "feedback_by_reason": dict(Counter(s.reason for s in sidecars)),
        "feedback_by_model": dict(by_model),
        "feedback_sha256": [s.sha256 for s in sidecars],
    }


def _served_by(results: list[InferenceResult]) -> str | None:
    versions = {r.model.version for r in results if r.model}
    if len(versions) > 1:
        raise PipelineError(f"one round's frames were judged by models {sorted(versions)}")
    return versions.pop() if versions else None


def first_round(
    settings: Settings,
    data: LoopData,
    params: RoundParams,
    edge: EdgeBox,
    clock: Clock,
    rounds: int,
) -> dict[str, Any]:
    """Round 1: the first labelled set to a model in production on the edge."""
    from pipelines.runs import run_training
    from qcloop.dataset import import_yolo_folder

    label = f"round 1/{rounds}"
    with clock.stage(label, "dataset version (raw store + DVC)"):
        manifest, _ = import_yolo_folder(settings, data.first)
        counts = ", ".join(f"{s} {c.images}" for s, c in manifest.counts.items())
        log.info("      %s: %d labelled images, %s", manifest.version, len(manifest.images), counts)
    with clock.stage(label, f"training pipeline (kfp.local, {params.epochs} epochs)"):
        trained = _trained(
            run_training(settings, dataset_version=manifest.version, **params.as_kwargs()),
            settings.home,
        )
    if not trained["gate_passed"] or trained["model_version"] is None:
        raise PipelineError(f"the gate refused the first model: {trained['gate_reason']}")
    with clock.stage(label, "approval, release over MQTT, the edge agent swaps"):
        _rollout(settings, edge, trained["model_version"])
    frames = data.frames(1)
    with clock.stage(label, f"edge agent inspects {len(frames)} frames, sends hard ones back"):
        seen = _inspect(open_store(settings.store), edge, frames)
    return {
        "round": 1,
        "dataset_version": manifest.version,
        "parent_version": manifest.parent,
        "dataset_images": len(manifest.images),
        "images_labelled": len(manifest.images),
        "labelled_by": f"import of {data.first}",
        "new_images": len(manifest.images),
        "new_images_from_feedback": 0,
        **trained,
        "production_version": trained["model_version"],
        **seen,
    }


def labelling_round(
    number: int,
    settings: Settings,
    data: LoopData,
    params: RoundParams,
    edge: EdgeBox,
    clock: Clock,
    rounds: int,
    *,
    production: str,
    feedback_so_far: set[str],
) -> dict[str, Any]:
    """Round ``number`` >= 2: feedback -> Label Studio -> labels -> version -> model -> edge.

    ``production``: the model version in production before the round; ``feedback_so_far``:
    the sha256 of every image the agent sent back in earlier rounds.
    """
    from pipelines.labelling import run_local as run_labelling
    from qcloop_labelling.client import connect
    from qcloop_labelling.jobs import sync_in_job
    from qcloop_labelling.project import ensure_project
    from qcloop_labelling.standin import StandInAnnotator

    label = f"round {number}/{rounds}"
    ls = settings.label_studio
    with clock.stage(label, "sync-in: feedback images -> Label Studio tasks, pre-annotated"):
        client = connect(ls)
        try:
            project = ensure_project(client, ls.project_title, list(_current(settings).class_names))
            synced = sync_in_job(settings)
            log.info(
                "      %d tasks in project '%s' (%d with the edge model's boxes)",
                synced.created,
                ls.project_title,
                synced.with_predictions,
            )
            annotator = StandInAnnotator.from_yolo_folders(ANNOTATOR, data.rounds[: number - 1])
            labelled = annotator.label(client, project.id, synced.task_ids)
        finally:
            client.close()
        log.info(
            "      %s labelled %d tasks (%d with defects, %d without)",
            annotator.name,
            labelled.labelled + labelled.negative,
            labelled.labelled,
            labelled.negative,
        )
    parent = {i.sha256 for i in _current(settings).images}
    with clock.stage(label, "labelling pipeline (kfp.local): round -> next version -> training"):
        outcome = run_labelling(
            pipeline_root=settings.home.resolve() / "kfp", settings=settings, **params.as_kwargs()
        )
        if not outcome["created"]:
            raise PipelineError(f"round {number} made no dataset version; see the log")
        manifest = _current(settings)
        new = [i for i in manifest.images if i.sha256 not in parent]
        from_feedback = sum(1 for i in new if i.sha256 in feedback_so_far)
        log.info(
            "      %s (parent %s): %d images, %d new, %d of them feedback images",
            manifest.version,
            manifest.parent,
            len(manifest.images),
            len(new),
            from_feedback,
        )
        trained = _trained(outcome["training"], settings.home)
    if trained["gate_passed"] and trained["model_version"] is not None:
        with clock.stage(label, "approval, release over MQTT, the edge agent swaps"):
            _rollout(settings, edge, trained["model_version"])
        production = trained["model_version"]
    else:
        log.info("      production stays at v%s; the agent keeps serving it", production)
    frames = data.frames(number)
    with clock.stage(label, f"edge agent inspects {len(frames)} frames, sends hard ones back"):
        seen = _inspect(open_store(settings.store), edge, frames)
    return {
        "round": number,
        "dataset_version": manifest.version,
        "parent_version": manifest.parent,
        "dataset_images": len(manifest.images),
        "images_labelled": labelled.labelled + labelled.negative,
        "labelled_by": annotator.name,
        "new_images": len(new),
        "new_images_from_feedback": from_feedback,
        **trained,
        "production_version": production,
        **seen,
    }
