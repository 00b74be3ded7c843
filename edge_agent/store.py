"""The raw store, opened on first use: a store that is down must not stop the agent starting.

For S3 the minio client gets short timeouts and no retries of its own: minio's
default (5 retries, 5 min timeouts) makes one failed upload to a dead endpoint
take seconds, and the spool already retries with backoff.
"""

from __future__ import annotations

import threading

from qcloop.errors import StoreUnavailable
from qcloop.settings import StoreSettings
from qcloop.storage import ObjectStore, open_store


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
                    self._store = open_store(self.settings, timeout_s=self.timeout_s, retries=0)
                except OSError as exc:
                    raise StoreUnavailable(f"cannot open the object store: {exc}") from None
            return self._store

    def reset(self) -> None:
        """Open afresh next time (after a failure: new connections, bucket checked again)."""
        with self._lock:
            self._store = None
