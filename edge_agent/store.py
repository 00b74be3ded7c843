"""The raw store, opened on first use: a store that is down must not stop the agent starting."""

from __future__ import annotations

import threading

from qcloop.errors import StoreUnavailable
from qcloop.settings import StoreSettings
from qcloop.storage import ObjectStore, open_store


class LazyStore:
    """Opens ``open_store(settings)`` once, when first needed (thread-safe)."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._store: ObjectStore | None = None

    def __repr__(self) -> str:
        return f"LazyStore(kind={self.settings.kind!r})"

    def get(self) -> ObjectStore:
        """The store; ``StoreUnavailable`` if it cannot even be opened."""
        with self._lock:
            if self._store is None:
                try:
                    self._store = open_store(self.settings)
                except OSError as exc:
                    raise StoreUnavailable(f"cannot open the object store: {exc}") from None
            return self._store
