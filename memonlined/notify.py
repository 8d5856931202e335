"""Talking to systemd: readiness, status, the watchdog (sd_notify(3)).

In the manner of nobodd's Systemd class: every method is a no-op outside
systemd, so the daemon never asks whether it runs under it. The protocol is
one datagram on the unix socket named by NOTIFY_SOCKET; the standard library
speaks it, so a missing systemd-python costs nothing here.
"""

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)


class Systemd:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self.address = address or None
        self._sock: Optional[socket.socket] = None
        self._watchdog = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process the watchdog is for; a child that
        # inherited the environment must not ping in its parent's name.
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog = int(usec) / 1e6

    @property
    def listening(self) -> bool:
        """Is anyone told? (STATUS= costs a /proc/meminfo read and the figures.)"""
        return self.address is not None

    def notify(self, state: str) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(state.encode(), self.address)
        except OSError as e:  # systemd gone (shutdown): nothing to tell
            log.debug("sd_notify %r: %s", state, e)

    def watchdog_period(self) -> Optional[float]:
        """How often to ping: half of WatchdogSec, as sd_watchdog_enabled(3) advises; None: no watchdog."""
        return self._watchdog / 2 if self._watchdog else None

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def reloaded(self) -> None:
        self.notify("READY=1")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """WATCHDOG=1 every half WatchdogSec, however long a batch takes (the
    daemon pings before each block)."""

    def __init__(self, notifier: Systemd):
        self.notifier = notifier
        self.period = notifier.watchdog_period()
        self.next = 0.0

    def ping(self, now: float) -> None:
        if self.period is not None and now >= self.next:
            self.notifier.watchdog()
            self.next = now + self.period

    def due_at(self) -> Optional[float]:
        """When the next ping is due; None: no watchdog."""
        return self.next if self.period is not None else None
