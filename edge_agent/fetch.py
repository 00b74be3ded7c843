"""A released model from the store to a verified file on the box, and when to fetch it.

``fetch_model`` downloads the model a release names (``file://``, ``http(s)://`` - a
presigned URL needs no store credentials - or ``s3://`` through the box's store user),
stops at the first byte beyond the signed size and renames it into place only once size
and sha256 match (``qcloop.download``). ``download_delay`` keeps a fleet from fetching a
release all at once: a device that serves a model meanwhile waits a random
0..``release.download_jitter_s`` seconds first. The loader (``edge_agent.release``) retries
a failed download after ``release.retry_s``, doubled each time up to ``RETRY_MAX_S``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from urllib.parse import urlparse

from edge_agent.backoff import Backoff
from edge_agent.config import EdgeConfig
from edge_agent.store import LazyStore
from qcloop.contracts import ReleaseMessage
from qcloop.download import download_url
from qcloop.errors import IntegrityError
from qcloop.storage import sha256_file

RETRY_MAX_S = 600.0  # the longest wait between two tries of a failed download

__all__ = [
    "RETRY_MAX_S",
    "download_delay",
    "download_retries",
    "fetch_model",
    "model_filename",
    "verify_file",
]


def model_filename(release: ReleaseMessage) -> str:
    """``<name>-<version>-<sha12>.onnx``, safe as a file name."""
    ref = release.model
    name, version = (re.sub(r"[^A-Za-z0-9_.-]", "_", v) for v in (ref.name, ref.version))
    return f"{name}-{version}-{release.sha256[:12]}.onnx"


def verify_file(path: Path, size: int, sha256: str) -> None:
    """``IntegrityError`` unless ``path`` has exactly this size and sha256."""
    actual_size = path.stat().st_size
    if actual_size != size:
        raise IntegrityError(f"{path.name}: {actual_size} bytes, the release says {size}")
    actual = sha256_file(path)
    if actual != sha256:
        raise IntegrityError(f"{path.name}: sha256 {actual}, the release says {sha256}")


def fetch_model(release: ReleaseMessage, model_dir: Path, store: LazyStore) -> Path:
    """Download (unless already there and intact) and verify; the verified path.

    The download goes to a hidden ``.part`` file beside the model, stops at the first
    byte beyond the signed size, and is renamed into place only once size and sha256
    match (``qcloop.download``)."""
    final = model_dir / model_filename(release)
    if final.is_file():
        try:
            verify_file(final, release.size, release.sha256)
            return final
        except IntegrityError:
            final.unlink()
    needs_store = urlparse(release.url).scheme == "s3"
    source = store.get() if needs_store else None
    return download_url(release.url, final, source, size=release.size, sha256=release.sha256)


def download_retries(config: EdgeConfig) -> Backoff:
    """The waits between tries of a failed download: ``release.retry_s``, doubled each
    time up to ``RETRY_MAX_S`` (each drawn in [1/2, 1] of it: ``Backoff.failed_jittered``)."""
    retry = config.release.retry_s
    return Backoff(retry, max(retry, RETRY_MAX_S))


def download_delay(release: ReleaseMessage, config: EdgeConfig, *, serving: bool) -> float:
    """Seconds to wait before fetching ``release``: a random 0..``download_jitter_s`` for a
    device ``serving`` a model meanwhile, whose model is not on disk and comes from a store
    (http(s)://, s3://); 0 for a device with nothing to serve, or a ``file://`` model."""
    jitter = config.release.download_jitter_s
    if not serving or jitter <= 0 or urlparse(release.url).scheme == "file":
        return 0.0
    if (config.model_dir / model_filename(release)).is_file():
        return 0.0
    return random.uniform(0.0, jitter)
