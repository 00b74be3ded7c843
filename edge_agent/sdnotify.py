"""systemd's notify protocol, without a dependency: datagrams to ``$NOTIFY_SOCKET``.

``Type=notify`` units wait for ``READY=1``; with ``WatchdogSec=`` systemd sets
``WATCHDOG_USEC`` and restarts the service unless ``WATCHDOG=1`` comes at least
that often. The agent pings from its inspection loop, so a hung loop - not just
a dead process - gets restarted. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False if not under systemd or it failed."""
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address  # '@': abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify failed", extra={"state": state, "error": str(exc)})
        return False
    return True


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1`` (half of ``WatchdogSec``), or None if not asked."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


class Watchdog:
    """Pings the systemd watchdog when due; ``tick`` is cheap enough for every loop turn."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self.period = watchdog_period(self._environ)
        self._next = 0.0

    def tick(self) -> None:
        """Send ``WATCHDOG=1`` if a period has passed since the last one."""
        if self.period is None:
            return
        now = time.monotonic()
        if now >= self._next:
            notify("WATCHDOG=1", self._environ)
            self._next = now + self.period
