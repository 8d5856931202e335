"""A uevent monitor for tests, shaped like pyudev's Monitor: a pipe gives it
a real file descriptor, so the daemon's selectors loop works on it unchanged
(as in pyudev's own tests). It relays the fake kernel's uevents."""

import collections
import os
import threading
from types import SimpleNamespace

from memonlined.notify import Systemd


class FakeMonitor:
    def __init__(self, kernel):
        self.kernel = kernel
        self.seen = len(kernel.events)  # events before the daemon's start are not delivered
        self.queue = collections.deque()
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        self.fail = None
        self.lock = threading.Lock()
        self.started = False

    def start(self):
        self.started = True

    def fileno(self):
        return self.rfd

    def relay(self, drop=False):
        """Deliver the kernel's new uevents (or lose them, DROP, as an
        overflowing socket buffer does, and report ENOBUFS)."""
        with self.lock:
            new = self.kernel.events[self.seen:]
            self.seen = len(self.kernel.events)
            if drop:
                self.fail = OSError(105, "No buffer space available")
            else:
                for action, devpath in new:
                    self.queue.append(SimpleNamespace(action=action, sys_name=devpath.rsplit("/", 1)[1]))
        os.write(self.wfd, b"x")

    def send(self, action, sys_name):
        with self.lock:
            self.queue.append(SimpleNamespace(action=action, sys_name=sys_name))
        os.write(self.wfd, b"x")

    def poll(self, timeout=None):
        assert timeout == 0
        try:
            os.read(self.rfd, 4096)
        except BlockingIOError:
            pass
        with self.lock:
            if self.fail is not None:
                err, self.fail = self.fail, None
                raise err
            return self.queue.popleft() if self.queue else None

    def close(self):
        os.close(self.rfd)
        os.close(self.wfd)


class FakeSystemd(Systemd):
    """The daemon's systemd notifier, keeping what it would have sent."""

    def __init__(self, watchdog_period=None):
        super().__init__({})
        self.notes = []
        self._period = watchdog_period

    listening = True

    def notify(self, state):
        self.notes.append(state)

    def watchdog_period(self):
        return self._period
