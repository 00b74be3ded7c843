"""Edge agent configuration: ONE TOML file, then ``QCLOOP_EDGE_<SECTION>__<FIELD>`` variables.

Examples: ``QCLOOP_EDGE_DEVICE_ID=line1-cam2``, ``QCLOOP_EDGE_MQTT__URL=mqtt://broker:1883``,
``QCLOOP_EDGE_STORE__SECRET_KEY=...``, ``QCLOOP_EDGE_SOURCE__PATH=/srv/inbox``.
Models are frozen and refuse unknown fields, so a typo fails at start naming the
field. Secrets (``mqtt.password``, ``store.access_key``/``secret_key``) are
``SecretStr``: ``masked()`` and every log show ``**********``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from qcloop.contracts import Thresholds
from qcloop.errors import ConfigError
from qcloop.settings import (
    MqttSettings,
    StoreSettings,
    deep_merge,
    env_overrides,
    read_toml,
    validation_message,
)

ENV_PREFIX = "QCLOOP_EDGE_"
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceConfig(_Section):
    """Where frames come from: a hot folder, a camera/stream (OpenCV) or the simulated camera."""

    kind: Literal["folder", "camera", "simulated"] = "folder"
    path: Path | None = Field(default=None, description="hot folder (kind = 'folder')")
    processed: Literal["keep", "move", "delete"] = "move"
    processed_dir: Path | None = Field(default=None, description="default: <path>/processed")
    rejected_dir: Path | None = Field(default=None, description="non-images; <path>/rejected")
    poll_interval_s: float = Field(default=0.5, gt=0.0, le=60.0)
    seed: int = Field(default=0, description="simulated camera seed")
    interval_s: float = Field(default=1.0, ge=0.0, description="simulated frame period")
    url: SecretStr | None = Field(
        default=None, description="camera: device index, rtsp:// or http:// stream, video file"
    )
    max_fps: float = Field(default=0.0, ge=0.0, description="camera: frame rate cap (0: none)")
    max_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="frames with more pixels (width x height, read from the file's header "
        "before decoding) are rejected",
    )
    max_file_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, description="hot-folder files larger are rejected unread"
    )
    empty_settle_s: float = Field(
        default=10.0, ge=0.0, description="a hot-folder file still empty after this is rejected"
    )

    @model_validator(mode="after")
    def _folder_has_path(self) -> SourceConfig:
        if self.kind == "folder" and self.path is None:
            raise ValueError("source.kind = 'folder' needs source.path")
        if self.kind == "camera" and self.url is None:
            raise ValueError("source.kind = 'camera' needs source.url (index, rtsp://, file)")
        return self


class RateLimits(_Section):
    """How many frames one policy may send per minute / hour / day (unset: no limit)."""

    per_minute: int | None = Field(default=None, ge=0)
    per_hour: int | None = Field(default=None, ge=0)
    per_day: int | None = Field(default=None, ge=0)


class BandPolicy(RateLimits):
    """Best score within [low, high] (reason 'low_confidence').

    Without ``high`` it is the classic rule: best score < ``thresholds.feedback_below``.
    """

    enabled: bool = True
    low: float = Field(default=0.0, ge=0.0, le=1.0)
    high: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> BandPolicy:
        if self.high is not None and self.high < self.low:
            raise ValueError("feedback.policies.band.high must be >= low")
        return self


class RandomPolicy(RateLimits):
    """A random share of all frames (reason 'sampling')."""

    share: float = Field(default=0.0, ge=0.0, le=1.0, description="probability; 0: off")
    seed: int | None = Field(default=None, description="fixed seed (tests); default: random")


class CountPolicy(RateLimits):
    """Frames with at least ``min_detections`` boxes (reason 'sampling')."""

    min_detections: int = Field(default=0, ge=0, description="0: off")


class DefectsPolicy(RateLimits):
    """Every frame with a box scoring >= ``min_score`` (default: thresholds.confidence)."""

    enabled: bool = False
    min_score: float | None = Field(default=None, ge=0.0, le=1.0)


class PoliciesConfig(_Section):
    """Which frames go back; the first policy that matches, is within its limits, wins."""

    band: BandPolicy = BandPolicy()
    defects: DefectsPolicy = DefectsPolicy()
    count: CountPolicy = CountPolicy()
    random: RandomPolicy = RandomPolicy()
    dedup_window_s: float = Field(
        default=3600.0, ge=0.0, description="same image sha256 not sent twice within; 0: off"
    )
    dedup_max_entries: int = Field(default=100_000, ge=1, description="hashes remembered")
    near_duplicate_bits: int = Field(
        default=0,
        ge=0,
        le=32,
        description="also skip frames whose 64-bit dHash is within this many bits of one "
        "sent within dedup_window_s (a part standing still); 0: exact copies only",
    )
    near_duplicate_recent: int = Field(
        default=1000, ge=1, le=100_000, description="dHashes of the last sent frames compared"
    )


class VerdictConfig(_Section):
    """Operator verdicts on ``qcloop/devices/<id>/verdict`` send a recent frame back."""

    enabled: bool = True
    buffer_frames: int = Field(default=50, ge=1, le=10_000, description="last frames kept")
    buffer_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="bytes bound of those frames"
    )
    max_payload_bytes: int = Field(default=4096, ge=256, description="larger verdicts ignored")


class FeedbackConfig(_Section):
    """Hard frames back to the raw store, through the on-disk spool (store and forward)."""

    enabled: bool = True
    policies: PoliciesConfig = PoliciesConfig()
    sample_every: int = Field(
        default=0, ge=0, description="also send every Nth frame (reason 'sampling'); 0: never"
    )
    spool_max_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024, description="spool bound; lowest priority dropped"
    )
    disk_reserve_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="free disk the spool never takes: it holds at most free space minus this",
    )
    backoff_initial_s: float = Field(default=1.0, gt=0.0, description="first retry delay")
    backoff_max_s: float = Field(default=300.0, gt=0.0, description="longest retry delay")
    store_timeout_s: float = Field(default=10.0, gt=0.0, description="per S3 request")
    drain_timeout_s: float = Field(default=10.0, ge=0.0, description="upload time at stop")

    @model_validator(mode="after")
    def _backoff_ordered(self) -> FeedbackConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("feedback.backoff_max_s must be >= feedback.backoff_initial_s")
        return self


NO_RELEASE_KEY = (
    "release.public_key is required: the release bridge's Ed25519 public key (PEM), e.g. "
    "/etc/qcloop-edge/release.pub; `qcloop keys generate --out keys/` makes the pair on the "
    "platform (keys/release.pub goes to the boxes). A lab without signed releases may set "
    "release.insecure_unsigned = true instead"
)


TRIAL_FRAMES = 20  # release.trial_frames: frames a new model serves on trial
TRIAL_S = 60.0  # release.trial_s: seconds a new model is on trial at least


class ReleaseConfig(_Section):
    """How releases are trusted, kept, proven and rolled back (``edge_agent.trust``,
    ``edge_agent.trial``)."""

    public_key: Path | None = Field(
        default=None,
        description="the release bridge's Ed25519 public key (PEM); releases it did not sign "
        "are refused. This or public_keys is required",
    )
    public_keys: list[Path] = Field(
        default_factory=list,
        description="more trusted public keys, e.g. the old and the new one while keys rotate",
    )
    insecure_unsigned: bool = Field(
        default=False,
        description="LABS ONLY: take unsigned releases too (a warning each time): whoever "
        "can publish on the broker then decides what this device runs",
    )
    approvers: list[Path] = Field(
        default_factory=list,
        description="approvers' public keys (files or folders of *.pub): take only releases "
        "carrying an approval one of them signed for that exact model",
    )
    keep_models: int = Field(default=3, ge=2, le=50, description="verified models kept on disk")
    max_payload_bytes: int = Field(default=65536, ge=512, description="larger payloads refused")
    retry_s: float = Field(default=30.0, gt=0.0, description="first retry of a failed download")
    download_jitter_s: float = Field(
        default=30.0,
        ge=0.0,
        description="a device serving a model waits a random 0..this many seconds before it "
        "downloads a new one from the store, so a fleet does not fetch it all at once",
    )
    max_model_failures: int = Field(
        default=3, ge=1, description="consecutive inference failures before rolling back"
    )
    trial_frames: int = Field(
        default=TRIAL_FRAMES,
        ge=1,
        description="a new model is on trial until it served this many frames in a row "
        "without an inference failure, and trial_s passed: only then is it a good model",
    )
    trial_s: float = Field(
        default=TRIAL_S,
        ge=0.0,
        description="seconds since its swap a new model stays on trial at least; one the "
        "agent dies with on trial (crash, out of memory, watchdog) is rejected at start",
    )


class LinkConfig(_Section):
    """MQTT reconnection pacing and queue (the broker itself is ``[mqtt]``)."""

    reconnect_min_s: int = Field(default=1, ge=1)
    reconnect_max_s: int = Field(default=30, ge=1)
    max_queued: int = Field(
        default=1000,
        ge=1,
        description="messages held while the broker is away; beyond, new ones are dropped",
    )


class RetentionConfig(_Section):
    """How long set-aside files stay: the hot folder's processed/ and rejected/, spool/bad/."""

    max_age_s: float = Field(default=7 * 86400.0, gt=0.0, description="older files are deleted")
    max_bytes: int = Field(
        default=2 * 1024**3, ge=0, description="per folder: the oldest files beyond are deleted"
    )
    interval_s: float = Field(default=300.0, gt=0.0, description="how often the folders are pruned")


class MetricsConfig(_Section):
    """Prometheus metrics on ``http://<host>:<port>/metrics`` (``edge_agent.metrics``)."""

    enabled: bool = False
    host: str = Field(default="127.0.0.1", description="address to bind; 0.0.0.0: every one")
    port: int = Field(default=9842, ge=1, le=65535)


class EdgeConfig(_Section):
    """Everything one edge agent needs."""

    device_id: str = Field(pattern=NAME_PATTERN)
    fleet: str = Field(default="default", pattern=NAME_PATTERN)
    model_dir: Path = Field(default=Path(".qcloop-edge/models"), description="downloaded models")
    state_dir: Path = Field(
        default=Path(".qcloop-edge/state"), description="spool; default: <model_dir>/../state"
    )
    ort_threads: int = Field(default=1, ge=1, le=64, description="onnxruntime intra-op threads")
    inference_workers: int = Field(
        default=2,
        ge=1,
        le=16,
        description="frames inferred at once, each on its own thread (results stay in "
        "frame order); 2 with ort_threads = 1: the most frames a second on 2 cores; "
        "1 with ort_threads = 2: the shortest time per frame",
    )
    rect_input: bool = Field(
        default=True,
        description="models with free input height/width (dynamic exports): fit each frame "
        "onto the smallest canvas of stride multiples (a 3:2 frame for 480 runs at 480x320); "
        "false: pad to the square input size. Static models always get their fixed size",
    )
    prefetch_frames: int = Field(
        default=1,
        ge=0,
        le=16,
        description="frames decoded ahead on a second thread while the model runs (one is "
        "enough: decoding takes a few ms, the model tens); 0: decode on the inspection thread",
    )
    state_interval_s: float = Field(default=10.0, gt=0.0, description="heartbeat period")
    source: SourceConfig
    thresholds: Thresholds = Thresholds()
    feedback: FeedbackConfig = FeedbackConfig()
    release: ReleaseConfig = ReleaseConfig()
    verdicts: VerdictConfig = VerdictConfig()
    link: LinkConfig = LinkConfig()
    retention: RetentionConfig = RetentionConfig()
    metrics: MetricsConfig = MetricsConfig()
    mqtt: MqttSettings = MqttSettings()
    store: StoreSettings = StoreSettings()

    @model_validator(mode="before")
    @classmethod
    def _state_beside_models(cls, data: Any) -> Any:
        """Without ``state_dir``, the spool lives beside ``model_dir`` (one state folder)."""
        if isinstance(data, dict) and "state_dir" not in data and "model_dir" in data:
            return {**data, "state_dir": Path(data["model_dir"]).parent / "state"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _one_fleet(cls, data: Any) -> Any:
        return one_fleet(data)

    @model_validator(mode="after")
    def _release_key_given(self) -> EdgeConfig:
        """No key, no agent: releases are verified, or unsigned ones taken on purpose."""
        release = self.release
        keys = [release.public_key] if release.public_key else []
        if not keys + release.public_keys and not release.insecure_unsigned:
            raise ValueError(NO_RELEASE_KEY)
        return self

    def masked(self) -> dict[str, Any]:
        """JSON-able dump with secrets shown as ``**********``."""
        return self.model_dump(mode="json")


def one_fleet(data: Any) -> Any:
    """``fleet`` is set once; ``mqtt.fleet`` follows it (or supplies it)."""
    if not isinstance(data, dict) or not isinstance(data.get("mqtt", {}), dict):
        return data
    mqtt = dict(data.get("mqtt", {}))
    top, inner = data.get("fleet"), mqtt.get("fleet")
    if top is not None and inner is not None and top != inner:
        raise ValueError(f"fleet '{top}' and mqtt.fleet '{inner}' differ: set only fleet")
    fleet = top if top is not None else inner
    if fleet is None:
        return data
    return {**data, "fleet": fleet, "mqtt": {**mqtt, "fleet": fleet}}


class OperatorConfig(BaseModel):
    """What the operator commands (``status``, ``verdict``) need: the device and its broker.

    The other sections (store, source, ...) are not read: their secrets live in the
    unit's environment file, and these commands never use them (``check-config``
    and ``run`` validate the whole file).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    device_id: str = Field(pattern=NAME_PATTERN)
    fleet: str = Field(default="default", pattern=NAME_PATTERN)
    mqtt: MqttSettings = MqttSettings()

    @model_validator(mode="before")
    @classmethod
    def _one_fleet(cls, data: Any) -> Any:
        return one_fleet(data)


def load_operator_config(path: Path, environ: Mapping[str, str] | None = None) -> OperatorConfig:
    """Like ``load_config``, reading only ``device_id``, ``fleet`` and ``[mqtt]``."""
    environ = os.environ if environ is None else environ
    data = deep_merge(read_toml(Path(path)), env_overrides(environ, ENV_PREFIX))
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(f"{path} + environment", exc)) from None


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> EdgeConfig:
    """Read ``path``, apply the environment; ``ConfigError`` naming each bad field."""
    environ = os.environ if environ is None else environ
    data = deep_merge(read_toml(Path(path)), env_overrides(environ, ENV_PREFIX))
    try:
        return EdgeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(f"{path} + environment", exc)) from None
