"""The S3 option: Label Studio reads images from the raw store's bucket itself.

With ``label_studio.images = "s3"``, tasks carry ``s3://<bucket>/raw/...`` and an
S3 import storage on the project (bucket, ``raw/`` prefix, endpoint, keys) lets
Label Studio resolve them. It is never synced: qcloop creates the tasks itself
(with predictions and meta); the storage only resolves URLs.

With ``presign = false`` (default) Label Studio streams each image to the browser,
so only Label Studio needs a route to MinIO; with ``presign = true`` browsers get
presigned URLs and must reach the endpoint as Label Studio names it. Such a URL is
valid ``presign_ttl`` minutes (Label Studio signs a fresh one each time a task is
opened). Label Studio refuses endpoints on private networks (127/8, 10/8, ...) unless
the server runs with ``USE_DEFAULT_BANNED_SUBNETS=false`` - an in-cluster MinIO needs
that too.
"""

from __future__ import annotations

from qcloop.errors import ConfigError
from qcloop.settings import StoreSettings
from qcloop.storage import RAW_PREFIX
from qcloop_labelling.client import LabelStudioClient
from qcloop_labelling.settings import LabelStudioSettings

STORAGE_TITLE = "qcloop raw store"
# what a storage of the raw store may differ in and still be brought in line
KEPT_IN_LINE = ("presign", "presign_ttl")


def s3_fields(project_id: int, store: StoreSettings, ls: LabelStudioSettings) -> dict[str, object]:
    """Fields of the project's S3 storage for the raw store."""
    if store.kind != "s3" or store.access_key is None or store.secret_key is None:
        raise ConfigError(
            "label_studio.images = 's3' needs store.kind = 's3' with endpoint and keys; "
            "use images = 'inline' with a local store"
        )
    return {
        "project": project_id,
        "title": STORAGE_TITLE,
        "bucket": store.bucket,
        "prefix": RAW_PREFIX,
        "s3_endpoint": ls.s3_endpoint or store.endpoint,
        "aws_access_key_id": store.access_key.get_secret_value(),
        "aws_secret_access_key": store.secret_key.get_secret_value(),
        "region_name": store.region or "us-east-1",
        "presign": ls.presign,
        "presign_ttl": ls.presign_ttl,
        "use_blob_urls": True,
        "recursive_scan": True,
    }


def ensure_s3_storage(
    client: LabelStudioClient, project_id: int, store: StoreSettings, ls: LabelStudioSettings
) -> tuple[int, str]:
    """The project's S3 storage of the raw store: its id and ``created``, ``updated`` (presign
    or its ttl changed in the settings) or ``unchanged``."""
    wanted = s3_fields(project_id, store, ls)
    for storage in client.s3_storages(project_id):
        if all(storage.get(k) == wanted[k] for k in ("bucket", "prefix", "s3_endpoint")):
            changed = {k: wanted[k] for k in KEPT_IN_LINE if storage.get(k) != wanted[k]}
            if not changed:
                return int(storage["id"]), "unchanged"
            client.update_s3_storage(int(storage["id"]), changed)
            return int(storage["id"]), "updated"
    return int(client.create_s3_storage(wanted)["id"]), "created"
