"""Object storage: one small interface, two backends (local folder, S3/MinIO).

Keys are ``/``-separated. Raw images are content-addressed
(``raw/<sha[:2]>/<sha256>.<ext>`` plus ``.json`` sidecar), so uploading the same
image twice - a retry, two devices - never makes a duplicate.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from qcloop.contracts import RawImageSidecar
from qcloop.errors import ConfigError, ObjectNotFound, StoreError, StoreUnavailable
from qcloop.fsutil import atomic_write, create_exclusive
from qcloop.settings import StoreSettings

RAW_PREFIX = "raw/"
IF_ABSENT = {"If-None-Match": "*"}  # S3 conditional write: create the key only if absent
CHUNK_BYTES = 1 << 20  # downloads are read, hashed and written this much at a time
_MISSING_BUCKET = object()


def released_key(model_name: str) -> str:
    """Where the release bridge keeps the last published release of a model (its JSON)."""
    return f"models/{model_name}/released.json"


class ObjectStore(Protocol):
    """What every backend offers."""

    def put_bytes(self, key: str, data: bytes, content_type: str = ...) -> None:
        """Store ``data`` under ``key`` (atomic: readers see all or nothing)."""

    def put_bytes_if_absent(self, key: str, data: bytes, content_type: str = ...) -> bool:
        """Create ``key`` with ``data`` unless an object is there already (then False).

        Create-only and atomic, for objects that must never change once written
        (dataset version pointers): of two writers racing for one key, one wins.
        """

    def get_bytes(self, key: str) -> bytes:
        """Return the object; ``ObjectNotFound`` if absent."""

    def stream(self, key: str, limit: int | None = None) -> Iterator[bytes]:
        """The object in chunks, no more than ``limit`` bytes of it read; ``ObjectNotFound``."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, sorted."""

    def url(self, key: str) -> str:
        """A location for ``key``: ``file://`` or ``s3://bucket/key``."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def raw_key(sha256: str, ext: str = "jpg") -> str:
    """Content-addressed key of a raw image."""
    return f"{RAW_PREFIX}{sha256[:2]}/{sha256}.{ext.lstrip('.').lower()}"


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise StoreError(f"invalid object key '{key}': use a relative path without '..'")
    return key


class LocalStore:
    """A folder on disk; the embedded default."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        atomic_write(self._path(key), data)

    def put_bytes_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        """Write ``key`` unless it exists (False then), atomically (``create_exclusive``)."""
        return create_exclusive(self._path(key), data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.url(key)}: no such object") from None

    def stream(self, key: str, limit: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"{self.url(key)}: no such object")
        with open(path, "rb") as fh:
            yield from read_chunks(fh, limit)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        keys = (
            p.relative_to(base).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        yield from sorted(k for k in keys if k.startswith(prefix))

    def url(self, key: str) -> str:
        return self._path(key).as_uri()


def _minio(
    settings: StoreSettings,
    endpoint: str | None = None,
    *,
    region: str | None = None,
    http_client: Any = None,
) -> Any:
    """A minio client with the store user of ``settings``, for ``endpoint`` and ``region``
    (default: the store's own). Imported here: the local default needs no SDK."""
    from minio import Minio

    parsed = urlparse(endpoint or settings.endpoint or "")
    access = settings.access_key.get_secret_value() if settings.access_key else None
    secret = settings.secret_key.get_secret_value() if settings.secret_key else None
    return Minio(
        parsed.netloc,
        access_key=access,
        secret_key=secret,
        secure=parsed.scheme == "https",
        region=region or settings.region,
        http_client=http_client,
    )


def presigned_get(
    settings: StoreSettings, key: str, expires: timedelta, endpoint: str | None = None
) -> str:
    """A GET URL of ``key`` that needs no credentials, valid for ``expires``, signed with
    the store user of ``settings`` for ``endpoint`` (the store as the reader reaches it;
    default ``settings.endpoint``). Computed here: no request is sent to the store."""
    if settings.kind != "s3" or settings.access_key is None or settings.secret_key is None:
        raise ConfigError("presigned URLs need an S3 store (store.kind = 's3') with its keys")
    # the region given, so that signing asks the store nothing
    client = _minio(settings, endpoint, region=settings.region or "us-east-1")
    return str(client.presigned_get_object(settings.bucket, key, expires=expires))


class S3Store:
    """An S3 bucket on MinIO (or any S3 endpoint), through the minio SDK."""

    def __init__(
        self, settings: StoreSettings, *, timeout_s: float | None = None, retries: int | None = None
    ) -> None:
        """``timeout_s``/``retries`` replace minio's defaults (5 retries, 5-minute timeouts),
        for callers such as the edge agent that retry with their own backoff."""
        self.endpoint = settings.endpoint or ""
        self.bucket = settings.bucket
        http = _http_client(timeout_s, retries) if timeout_s or retries is not None else None
        self._client = _minio(settings, http_client=http)

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    def _call(self, what: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                raise ObjectNotFound(f"s3://{self.bucket}/{what}: no such object") from None
            raise StoreError(f"{self.endpoint}: {what}: {exc.code}: {exc.message}") from None
        except (HTTPError, OSError) as exc:
            raise StoreUnavailable(
                f"object store {self.endpoint} is unreachable ({type(exc).__name__}); "
                "check store.endpoint and that MinIO/S3 is running"
            ) from None

    def _make_bucket(self) -> None:
        self._call("bucket", self._client.make_bucket, self.bucket)

    def _write(self, key: str, put):  # type: ignore[no-untyped-def]
        """Run ``put``; when the bucket is missing, create it and run ``put`` once more.

        No look at the bucket first: a scoped user (an edge box may only put under
        ``raw/``) has no right to HeadBucket, and on a running platform the bucket is there.
        """
        from minio.error import S3Error

        def attempt():  # type: ignore[no-untyped-def]
            try:
                return put()
            except S3Error as exc:
                if exc.code != "NoSuchBucket":
                    raise
                return _MISSING_BUCKET

        result = self._call(_check_key(key), attempt)
        if result is _MISSING_BUCKET:
            self._make_bucket()
            result = self._call(_check_key(key), put)
        return result

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self._write(
            key,
            lambda: self._client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def put_bytes_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        """One PUT with ``If-None-Match: *``: the server creates the key or answers 412.

        Atomic on S3, MinIO (the chart's release included) and moto, and it needs only
        PutObject, no read right. minio's ``put_object`` would send the header as user
        metadata (``X-Amz-Meta-If-None-Match``), so minio's PutObject call beneath it sends it.
        """
        from minio.error import S3Error

        def put() -> bool:
            try:
                self._client._put_object(
                    self.bucket, key, data, headers={"Content-Type": content_type, **IF_ABSENT}
                )
            except S3Error as exc:
                if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False  # 412 the key exists; 409 another create of it is under way
                raise
            return True

        return bool(self._write(key, put))

    def get_bytes(self, key: str) -> bytes:
        response = self._call(_check_key(key), self._client.get_object, self.bucket, key)
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def stream(self, key: str, limit: int | None = None) -> Iterator[bytes]:
        """A ranged GET when ``limit`` is given: the server sends no more than that."""
        get = self._client.get_object
        response = self._call(_check_key(key), get, self.bucket, key, length=limit or 0)
        try:
            while chunk := self._call(key, response.read, CHUNK_BYTES):
                yield bytes(chunk)
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self._call(_check_key(key), self._client.stat_object, self.bucket, key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        try:
            objects = self._call(
                prefix,
                lambda: list(self._client.list_objects(self.bucket, prefix, recursive=True)),
            )
        except ObjectNotFound:  # no bucket yet: nothing in it
            return
        yield from sorted(o.object_name for o in objects)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{_check_key(key)}"


def _http_client(timeout_s: float | None, retries: int | None):  # type: ignore[no-untyped-def]
    import certifi
    import urllib3

    timeout = timeout_s or 300.0
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        maxsize=4,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=retries if retries is not None else 5, backoff_factor=0.2),
    )


def open_store(
    settings: StoreSettings, *, timeout_s: float | None = None, retries: int | None = None
) -> LocalStore | S3Store:
    """The backend the settings ask for (``timeout_s``/``retries``: S3 only)."""
    if settings.kind == "s3":
        return S3Store(settings, timeout_s=timeout_s, retries=retries)
    return LocalStore(settings.path)


def put_raw_image(store: ObjectStore, data: bytes, sidecar: RawImageSidecar) -> str:
    """Upload an image and its sidecar under its content address; idempotent.

    The image goes first, create-only (its key is its hash: bytes once there never
    change), and the sidecar last, so a sidecar always points at an image that is
    there. A later capture (edge feedback, operator verdict) replaces the sidecar; an
    import keeps the one already there. Edge feedback needs nothing but PutObject under
    ``raw/``: no look at the bucket or the key. Returns the key.
    """
    if sidecar.sha256 != sha256_bytes(data) or sidecar.key != raw_key(
        sidecar.sha256, _ext(sidecar)
    ):
        raise StoreError(f"sidecar of {sidecar.key} does not match the image bytes")
    created = store.put_bytes_if_absent(sidecar.key, data, sidecar.content_type)
    if not created and sidecar.reason == "import" and store.exists(sidecar_key(sidecar.key)):
        return sidecar.key  # an import never replaces how the image first came (edge, verdict)
    store.put_bytes(sidecar_key(sidecar.key), sidecar.to_json().encode(), "application/json")
    return sidecar.key


def sidecar_key(image_key: str) -> str:
    """Key of the JSON sidecar of an image key."""
    return image_key.rsplit(".", 1)[0] + ".json"


def list_raw_images(store: ObjectStore) -> list[RawImageSidecar]:
    """All sidecars in the raw store (validated)."""
    return [
        RawImageSidecar.from_json(store.get_bytes(k), source=store.url(k))
        for k in store.list(RAW_PREFIX)
        if k.endswith(".json")
    ]


def _ext(sidecar: RawImageSidecar) -> str:
    return sidecar.key.rsplit(".", 1)[-1]


class Readable(Protocol):
    """A file or an HTTP response: anything with ``read(n)``."""

    def read(self, n: int, /) -> bytes:
        """Up to ``n`` bytes; empty at the end."""


def read_chunks(fh: Readable, limit: int | None) -> Iterator[bytes]:
    """Chunks of ``fh`` until its end or ``limit`` bytes."""
    left = limit
    while left is None or left > 0:
        chunk = fh.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk
