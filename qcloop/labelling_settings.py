"""Settings of the labelling team: ``[label_studio]`` and ``[label_studio.ml_backend]``.

``QCLOOP_LABEL_STUDIO__URL``, ``QCLOOP_LABEL_STUDIO__ML_BACKEND__PASSWORD``, ... or those
tables of ``qcloop.toml``; ``qcloop.settings.Settings`` holds them as ``label_studio``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class MlBackendSettings(BaseModel):
    """The ML backend (``qcloop labelling ml-backend``): Label Studio's predictions from the
    model in production, re-read when the release moves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/\s]+(/\S*)?$",
        description="the backend as Label Studio reaches it, e.g. http://127.0.0.1:9090; "
        "set: `qcloop labelling bootstrap` connects it to the project",
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="address it listens on")
    port: int = Field(default=9090, ge=1, le=65535, description="port it listens on")
    user: str = Field(default="label-studio", min_length=1, description="basic-auth user")
    password: SecretStr | None = Field(
        default=None,
        description="basic-auth password Label Studio must send; none: no auth, and the "
        "backend listens only on a loopback address",
    )
    title: str = Field(
        default="qcloop production model",
        min_length=1,
        description="its name in Label Studio (the project's model version for pre-labelling)",
    )
    refresh_s: float = Field(
        default=30.0, ge=0.0, description="seconds between two reads of the release envelope"
    )
    max_tasks: int = Field(default=1000, gt=0, description="tasks one request may carry")
    max_body_mb: float = Field(default=128.0, gt=0.0, description="largest request body (MiB)")


class LabelStudioSettings(BaseModel):
    """Where Label Studio runs and which project holds the tasks (``qcloop labelling``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(default="http://127.0.0.1:8081", description="base URL of Label Studio")
    token: SecretStr | None = Field(
        default=None, description="API token (legacy token of the sync user)"
    )
    project_title: str = Field(default="qcloop defects", min_length=3, max_length=50)
    batch_size: int = Field(default=100, gt=0, le=1000, description="tasks per import request")
    timeout_s: float = Field(default=60.0, gt=0)
    images: Literal["inline", "s3"] = Field(
        default="inline",
        description="inline: images inside the tasks as data: URLs (any store, no set-up); "
        "s3: tasks point at s3://bucket/raw/..., resolved by an S3 storage of the project",
    )
    s3_endpoint: str | None = Field(
        default=None, description="images = s3: the store's endpoint as Label Studio sees it"
    )
    review: bool = Field(
        default=False,
        description="only reviewer-accepted (or ground-truth starred) annotations count",
    )
    reviewers: list[str] = Field(
        default_factory=list,
        description="review on: emails of the Label Studio users whose review counts (their "
        "star, their accepted review, their own annotations); a labeller's star on their own "
        "work does not. Empty: anyone's star counts, and each round logs a WARNING saying so",
    )
    strict: bool = Field(
        default=False,
        description="one invalid task (bad box, unusable image) stops the whole round, no "
        "version; false: it is reported and left out, every valid task makes the round",
    )
    assist: bool = Field(
        default=True,
        description="pre-annotate images no model has seen with the released production model",
    )
    assist_conf: float = Field(default=0.1, ge=0.0, le=1.0, description="its confidence floor")
    presign: bool = Field(
        default=False,
        description="images = s3: send browsers presigned URLs (they must reach MinIO) "
        "instead of streaming images through Label Studio",
    )
    presign_ttl: int = Field(
        default=15, ge=1, le=10080, description="presign on: minutes a presigned URL is valid"
    )
    pushgateway: str | None = Field(
        default=None,
        pattern=r"^https?://[^/\s]+(/\S*)?$",
        description="the Pushgateway URL the labelling jobs push their figures to, e.g. "
        "http://pushgateway.monitoring:9091; none: no push",
    )
    ml_backend: MlBackendSettings = MlBackendSettings()
