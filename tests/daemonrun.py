"""A daemon on the fake kernel, in the test's main thread (signals are
delivered there), with a helper thread playing the hypervisor and the
administrator."""

import os
import signal
import threading
import time

from fakemonitor import FakeMonitor, FakeSystemd
from kernelbackend import KernelBackend
from memonlined.daemon import Daemon
from memonlined.policy import Settings


def wait_for(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    raise AssertionError("timed out")


class Run:
    """A daemon on a fake kernel; `script` runs in a thread once it is ready."""

    def __init__(self, kernel, state_dir, settings=None, reload=None, watchdog=None, backend=None, **kw):
        self.kernel = kernel
        self.backend = backend or KernelBackend(kernel)
        self.monitor = FakeMonitor(kernel)
        self.systemd = FakeSystemd(watchdog)
        self.notes = self.systemd.notes
        settings = settings or Settings(settle_ms=10)
        self.daemon = Daemon(self.backend, settings, self.monitor, reload=reload or (lambda: settings),
                             notifier=self.systemd, state_dir=None if state_dir is None else str(state_dir), **kw)

    def ready(self):
        return any("READY=1" in n for n in self.notes)

    def __call__(self, script, stop=True):
        """Run the daemon until SCRIPT is done (STOP: then SIGTERM); its exit code.
        An exception out of the daemon is returned too, for the test to look at."""
        error = []
        self.done = False

        def play():
            try:
                wait_for(lambda: self.ready() or self.done)
                if not self.done:
                    script(self)
            except BaseException as e:  # reported in the main thread
                error.append(e)
            finally:
                if stop and not self.done:
                    os.kill(os.getpid(), signal.SIGTERM)

        thread = threading.Thread(target=play)
        thread.start()
        try:
            rc = self.daemon.run()
        except Exception as e:  # noqa: BLE001 - the test decides
            rc = e
        finally:
            self.done = True
        thread.join()
        if error:
            raise error[0]
        assert not self.backend.oopses, f"read valid_zones of a block with no node yet: {self.backend.oopses}"
        return rc

    def locked(self, fn, *args, **kw):
        """Change the fake kernel (under its lock) and deliver the uevents."""
        with self.backend.lock:
            out = getattr(self.kernel, fn)(*args, **kw)
        self.monitor.relay()
        return out
