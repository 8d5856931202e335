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
from memonlined.config import Config


def wait_for(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    raise AssertionError("timed out")


class Run:
    """A daemon on a fake kernel; `script` runs in a thread once it is ready."""

    def __init__(self, kernel, state_dir, settings=None, reload=None, watchdog=None, backend=None, monitor=None,
                 **kw):
        self.kernel = kernel
        self.backend = backend or KernelBackend(kernel)
        self.monitor = monitor or FakeMonitor(kernel)
        self.systemd = FakeSystemd(watchdog)
        self.notes = self.systemd.notes
        settings = settings or Config(settle_ms=10)
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
        oopses = getattr(self.backend, "oopses", ())  # the benchmark's backend does not look
        assert not oopses, f"read valid_zones of a block with no node yet: {oopses}"
        return rc

    def locked(self, fn, *args, **kw):
        """Change the fake kernel (under its lock) and deliver the uevents."""
        with self.backend.lock:
            out = getattr(self.kernel, fn)(*args, **kw)
        self.monitor.relay()
        return out


def late_node_link(kernel, index, delay, lost=False):
    """A script: a 1 GiB DIMM whose block INDEX gets its node link DELAY s
    after the add events (LOST: the events are lost, as with ENOBUFS)."""
    def script(run):
        link = os.path.join(kernel.root, f"sys/devices/system/memory/memory{index}/node0")
        with run.backend.lock:
            kernel.add_dimm(1 << 30)
            os.unlink(link)                      # the add uevent comes before the node link
        run.monitor.relay(drop=lost)
        time.sleep(delay)
        assert kernel.layout()[index] is None    # never decided without its node
        os.symlink("../../node/node0", link)
        wait_for(lambda: None not in kernel.layout().values(), 5)
    return script


def replace_virtio_mem(k, step, same_name, region=8 << 30, grow=4 << 30):
    """A virtio-mem device (REGION bytes) grown a little and removed, then
    another at the same address (BBM, 1 GiB units; SAME_NAME: under the old
    virtioN name) grown by GROW. STEP(fn, ...) calls the fake kernel K.
    Returns (old name, new name, the new device's blocks)."""
    old = step("add_virtio_mem", region)
    start = k.devices[old].start
    step("virtio_mem_plug", old, 256 << 20)
    step("remove_virtio_mem", old)
    new = step("add_virtio_mem", region, start=start, bbm=True, device_block_size=1 << 30,
               name=old if same_name else None)
    return old, new, step("virtio_mem_plug", new, grow)


def daemon_step(run, kernel):
    """STEP for replace_virtio_mem under the daemon: each change through RUN,
    each plug waited for until memonlined has onlined it."""
    def step(fn, *args, **kw):
        out = run.locked(fn, *args, **kw)
        if fn == "virtio_mem_plug":
            wait_for(lambda: all(kernel.layout()[i] is not None for i in out))
        return out
    return step


def twin_step(twin):
    """STEP for replace_virtio_mem on the oracle: the kernel's own policy onlines after each change."""
    from kernelbackend import kernel_online_all

    def step(fn, *args, **kw):
        out = getattr(twin, fn)(*args, **kw)
        kernel_online_all(twin)
        return out
    return step
