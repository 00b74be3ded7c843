"""The raw store, opened on first use: a store that is down must not stop the agent starting.

For S3 the minio client gets short timeouts and no retries of its own: minio's
default (5 retries, 5 min timeouts) makes one failed upload to a dead endpoint
take seconds, and the spool already retries with backoff.
"""

from __future__ import annotations

import os
import threading

from qcloop.errors import StoreUnavailable
from qcloop.settings import StoreSettings
from qcloop.storage import ObjectStore, S3Store, open_store


def _edge_http(timeout_s: float):  # type: ignore[no-untyped-def]
    import certifi
    import urllib3

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        maxsize=2,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=0),
    )


class LazyStore:
    """Opens ``open_store(settings)`` once, when first needed (thread-safe)."""

    def __init__(self, settings: StoreSettings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._store: ObjectStore | None = None

    def __repr__(self) -> str:
        return f"LazyStore(kind={self.settings.kind!r})"

    def get(self) -> ObjectStore:
        """The store; ``StoreUnavailable`` if it cannot even be opened."""
        with self._lock:
            if self._store is None:
                try:
                    store = open_store(self.settings)
                except OSError as exc:
                    raise StoreUnavailable(f"cannot open the object store: {exc}") from None
                if isinstance(store, S3Store):
                    store._client._http = _edge_http(self.timeout_s)  # noqa: SLF001
                self._store = store
            return self._store

    def reset(self) -> None:
        """Open afresh next time (after a failure: new connections, bucket checked again)."""
        with self._lock:
            self._store = None
