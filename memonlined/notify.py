"""Talking to systemd: readiness, status, the watchdog (sd_notify(3)), and
the journal.

In the manner of nobodd's Systemd class: every method is a no-op outside
systemd, so the daemon never asks whether it runs under it. Both protocols
are datagrams on a unix socket (NOTIFY_SOCKET's; the journal's), which the
standard library speaks: python-systemd would load libsystemd and its
journal reader (0.9 MiB resident, a quarter of a second at boot under TCG)
to send the same bytes.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"
# logging's levels as syslog priorities, as sd_journal_print(3) takes them.
PRIORITIES = ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (logging.CRITICAL, 2))


class JournalHandler(logging.Handler):
    """Records to the journal by its native protocol
    (systemd's JOURNAL_NATIVE_PROTOCOL document): MESSAGE, PRIORITY,
    SYSLOG_IDENTIFIER, CODE_*, and the upper-case extra= keys as fields
    (MESSAGE_ID, BLOCK, ZONE...: our own keys, valid journal field names).
    journald takes the sender's pid and unit from the socket. Sent to the
    path each time, as sd_journal_sendv does, so a restarted journald is
    found again; never waiting: a record journald cannot take now (stalled,
    restarting, a datagram too big) goes to stderr, which systemd connects
    to the journal too, and the daemon goes on onlining memory. Raises
    OSError when nothing listens on PATH (JOURNAL_SOCKET)."""

    def __init__(self, identifier: str, fallback: logging.Handler, path: str | None = None):
        super().__init__()
        self.identifier, self.fallback = identifier, fallback
        self.path = path or JOURNAL_SOCKET
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
            probe.connect(self.path)  # is journald there?
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)  # as libsystemd: big records

    def emit(self, record: logging.LogRecord) -> None:
        try:
            priority = next((p for level, p in PRIORITIES if record.levelno <= level), 1)
            fields = [("MESSAGE", self.format(record)), ("PRIORITY", priority),
                      ("SYSLOG_IDENTIFIER", self.identifier), ("CODE_FILE", record.pathname),
                      ("CODE_LINE", record.lineno), ("CODE_FUNC", record.funcName)]
            fields += [(k, v) for k, v in record.__dict__.items() if k.isupper()]
            self.sock.sendto(b"".join(journal_field(k, v) for k, v in fields), socket.MSG_DONTWAIT, self.path)
        except OSError:
            self.fallback.handle(record)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        self.fallback.close()
        super().close()


def journal_field(name: str, value) -> bytes:
    """NAME=value, or a value with a newline as NAME, its length (64-bit little endian) and the bytes."""
    data = str(value).encode("utf-8", "backslashreplace")
    if b"\n" in data:
        return name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


class Systemd:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self.address = address or None
        self._sock: socket.socket | None = None
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

    def watchdog_period(self) -> float | None:
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

    def due_at(self) -> float | None:
        """When the next ping is due; None: no watchdog."""
        return self.next if self.period is not None else None
