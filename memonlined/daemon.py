"""memonlined run: the udev-driven daemon.

One thread, one selectors loop over the uevent monitor, a signal self-pipe
and the watchdog timer. A uevent only says which block to look at again;
sysfs is the truth. The `add` events read at once (optionally gathered for a
settle window) are decided as one batch.
"""

import fcntl
import logging
import os
import selectors
import signal
import socket
import time
from typing import Callable, Optional, Set

import psutil

from . import backend as B
from .discover import Reader, SystemDataError, read_machine
from .model import Machine
from .planner import Planner
from .policy import Settings
from .writer import ALREADY_ONLINE, FAILED, online_blocks

log = logging.getLogger(__name__)

STATE_FILE = "handled"
# How long a batch may wait for what the kernel adds after a block's add
# uevent: its node link, and an ACPI DIMM's firmware_node links.
LINK_WAIT = 2.0


class Stop(Exception):
    pass


class Handled:
    """The blocks memonlined onlined or saw online in this boot, kept under /run
    so that a restarted daemon knows which offline blocks an administrator
    offlined (leave them) and which adds it missed (online them)."""

    def __init__(self, state_dir: Optional[str]):
        self.path = os.path.join(state_dir, STATE_FILE) if state_dir else None
        self.blocks: Set[int] = set()
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path, encoding="ascii") as f:
                    self.blocks = {int(w) for w in f.read().split()}
            except (OSError, ValueError) as e:
                log.warning("%s: unreadable (%s); treating every offline block as not yet handled", self.path, e)

    def save(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write("\n".join(map(str, sorted(self.blocks))) + "\n")
        os.replace(tmp, self.path)


class Daemon:
    def __init__(self, backend: B.Backend, settings: Settings, monitor, *,
                 reload: Callable[[], Settings], notify: Optional[Callable[[str], None]],
                 state_dir: Optional[str] = "/run/memonlined", settle: float = 0.0,
                 watchdog_usec: int = 0, dry_run: bool = False, take_over_auto_online: bool = True,
                 kernel_mode: bool = False):
        self.backend = backend
        self.settings = settings
        self.monitor = monitor
        self.reload_settings = reload
        self.notify = notify  # None outside systemd
        self.settle = settle
        self.watchdog = watchdog_usec / 1e6 / 2 if watchdog_usec else None
        self.dry_run = dry_run
        self.take_over = take_over_auto_online
        self.kernel_mode = kernel_mode  # the kernel decides; memonlined onlines leftovers and reports
        # A dry run remembers nothing: the next real run must not take its
        # would-be onlined blocks for blocks an administrator offlined.
        self.handled = Handled(None if dry_run else state_dir)
        self.machine: Optional[Machine] = None
        self.reader: Optional[Reader] = None
        self.pending: Set[int] = set()
        self.layout_stale = True  # /proc/iomem must be read again before the next batch
        self.deadline: Optional[float] = None
        self.first_add = 0.0
        self.previous_auto_online: Optional[str] = None
        self.counts = {"onlined": 0, "failed": 0, "conflicts": 0}

    # -- start and stop --------------------------------------------------

    def take_over_auto_online(self) -> None:
        try:
            value = self.backend.read(B.AUTO_ONLINE).strip()
        except OSError:
            return
        if value == "offline":
            return
        if not self.take_over or self.dry_run:
            log.warning("the kernel onlines hot-plugged memory itself (auto_online_blocks=%s); "
                        "memonlined only handles what it leaves offline", value)
            return
        self.backend.write_setting(B.AUTO_ONLINE, "offline")
        self.previous_auto_online = value
        log.info("took over from the kernel: auto_online_blocks was %s, set to offline "
                 "(put back on a clean stop)", value)

    def restore_auto_online(self) -> None:
        if self.previous_auto_online is not None:
            try:
                self.backend.write_setting(B.AUTO_ONLINE, self.previous_auto_online)
                log.info("auto_online_blocks put back to %s", self.previous_auto_online)
            except OSError as e:
                log.error("could not put auto_online_blocks back to %s: %s", self.previous_auto_online, e)

    def scan(self) -> None:
        """Read everything and online the offline blocks that are ours to online:
        all of them at the first start in a boot; after a restart or lost
        events, those not handled before (an offline handled block was
        offlined by an administrator)."""
        self.machine, self.reader = read_machine(self.backend)
        self.layout_stale = False
        for warning in self.machine.warnings:
            log.warning("%s", warning)
        self.machine.warnings.clear()
        online = {i for i, b in self.machine.blocks.items() if b.state != "offline"}
        offline = [i for i, b in self.machine.blocks.items() if b.state == "offline"]
        left = sorted(i for i in offline if i in self.handled.blocks)
        if left:
            log.info("leaving %d offline blocks alone that were online before (offlined by an administrator): %s",
                     len(left), _ranges(left))
        self.handled.blocks = (self.handled.blocks & set(self.machine.blocks)) | online
        self._online([i for i in offline if i not in self.handled.blocks])

    def _online(self, indexes) -> None:
        if self.kernel_mode:
            self._online_by_kernel(indexes)
            return
        if not indexes:
            self.handled.save()
            return
        planner = Planner(self.machine, self.settings)
        for outcome in online_blocks(self.backend, planner, indexes, self.dry_run):
            if outcome.zone is not None:
                self.handled.blocks.add(outcome.decision.block)
            if outcome.result == FAILED:
                self.counts["failed"] += 1
            elif outcome.result == ALREADY_ONLINE:
                self.counts["conflicts"] += 1
            else:
                self.counts["onlined"] += 1
        self.handled.save()

    def _online_by_kernel(self, indexes) -> None:
        """Kernel mode: a plain `online` lets the kernel's own policy pick the zone."""
        for index in sorted(indexes):
            if self.dry_run:
                log.info("memory%d: would write online (the kernel's policy picks the zone)", index)
                continue
            try:
                self.backend.write_block_state(index, "online")
            except OSError as e:
                log.error("memory%d: online failed (%s); the block stays offline", index, e.strerror)
                self.counts["failed"] += 1
                continue
            self.refresh(index)
            block = self.machine.blocks.get(index)
            log.info("memory%d: the kernel onlined it to %s", index, block.zone if block else "?")
            self.counts["onlined"] += 1
        self.handled.save()

    def sd_notify(self, state: str) -> None:
        if self.notify is not None:
            self.notify(state)

    def status(self) -> str:
        m = self.machine
        online = sum(1 for b in m.blocks.values() if b.state != "offline")
        total = psutil.virtual_memory().total >> 20
        return (f"{online} of {len(m.blocks)} blocks online, {total} MiB usable; onlined {self.counts['onlined']}, "
                f"failed {self.counts['failed']}, onlined by others {self.counts['conflicts']}")

    # -- events -----------------------------------------------------------

    def on_event(self, action: str, sys_name: str) -> None:
        index = B.numbered(sys_name, "memory")
        if index is None:
            return
        if action == "add":
            self.pending.add(index)
            if self.deadline is None:
                self.first_add = time.monotonic()
                self.deadline = self.first_add + self.settle
        elif action in ("online", "offline", "change"):
            if index in self.pending:
                return  # the batch will read it
            block = self.machine.blocks.get(index)
            if block is not None and action != "change" and (block.state == "offline") == (action == "offline"):
                return  # the model says so already: memonlined made this change itself
            self.refresh(index)
        elif action == "remove":
            self.layout_stale = True  # a device may be going away, and another come in its place
            block = self.machine.blocks.pop(index, None)
            if block is not None:
                self.machine.remove_online(block)
            self.handled.blocks.discard(index)
            self.pending.discard(index)
        # other actions (bind, move, ...) say nothing about memory

    def refresh(self, index: int) -> None:
        """Re-read one block and move the model's accounting to what it says."""
        old = self.machine.blocks.pop(index, None)
        if old is not None:
            self.machine.remove_online(old)
        block = self.reader.read_block(index)
        if block is None:
            return
        self.machine.blocks[index] = block
        if block.state != "offline":
            self.machine.add_online(block, block.zone)
            self.handled.blocks.add(index)

    def process_batch(self) -> None:
        batch, self.pending, self.deadline = sorted(self.pending), set(), None
        # New devices bring new iomem resources; more blocks of a virtio-mem or
        # dax device already known do not (a growing virtio-mem device adds a
        # few blocks at a time, and under TCG each re-read costs milliseconds).
        if self.layout_stale or not all(self.reader.in_driver_range(i) for i in batch):
            self.reader.read_layout()
            self.layout_stale = False
        for index in batch:
            self.refresh(index)
        self.reader.size_dimms()
        # A block whose node link is not there yet (the add uevent comes
        # before it), or a DIMM still being added (its firmware_node links
        # come after all its blocks): read the batch again a little later.
        waiting = [i for i in batch if (i not in self.machine.blocks and self.backend.exists(B.block_dir(i)))
                   or (i in self.machine.blocks and self.machine.blocks[i].state == "offline"
                       and self.reader.unlinked(self.machine.blocks[i]))]
        now = time.monotonic()
        if waiting and now - self.first_add < LINK_WAIT:
            self.pending, self.deadline = set(batch), now + max(self.settle, 0.005)
            self.machine.warnings.clear()
            return
        for warning in self.machine.warnings:
            log.warning("%s", warning)
        self.machine.warnings.clear()
        for index in batch:
            block = self.machine.blocks.get(index)
            if block is not None and block.state != "offline" and self.kernel_mode:
                log.info("memory%d: onlined by the kernel to %s (%s)", index, block.zone, block.device)
            elif block is not None and block.state != "offline":
                log.warning("memory%d: was already online in %s when memonlined got to it "
                            "(onlined by someone else)", index, block.zone)
                self.counts["conflicts"] += 1
        self._online([i for i in batch if i in self.machine.blocks and self.machine.blocks[i].state == "offline"])
        if self.notify is not None:  # status() reads /proc/meminfo: not for nothing
            self.sd_notify("STATUS=" + self.status())

    # -- the loop -----------------------------------------------------------

    def lock(self) -> bool:
        """One daemon at a time: an flock on the state directory's lock file."""
        if not self.handled.path:
            return True
        os.makedirs(os.path.dirname(self.handled.path), exist_ok=True)
        self._lock_fd = os.open(os.path.join(os.path.dirname(self.handled.path), "lock"),
                                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            return False
        return True

    def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the exit code."""
        if not self.lock():
            log.error("another memonlined is running (%s/lock is locked)", os.path.dirname(self.handled.path))
            return 1
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wsock.fileno())
        handlers = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        selector = selectors.DefaultSelector()
        try:
            self.monitor.start()  # before the scan, so no add between the two is lost
            self.take_over_auto_online()
            self.scan()
            self.sd_notify("READY=1\nSTATUS=" + self.status())
            log.info("ready: %s", self.status())
            selector.register(self.monitor.fileno(), selectors.EVENT_READ, "monitor")
            selector.register(rsock, selectors.EVENT_READ, "signal")
            next_watchdog = time.monotonic()
            while True:
                now = time.monotonic()
                if self.watchdog is not None and now >= next_watchdog:
                    self.sd_notify("WATCHDOG=1")
                    next_watchdog = now + self.watchdog
                timeouts = [t - now for t in (self.deadline, next_watchdog if self.watchdog else None) if t]
                timeout = max(0.0, min(timeouts)) if timeouts else None
                for key, _ in selector.select(timeout):
                    if key.data == "signal":
                        self._signals(rsock)
                    else:
                        self._drain()
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.process_batch()
        except Stop:
            self.sd_notify("STOPPING=1")
            log.info("stopping: %s", self.status())
            self.restore_auto_online()
            return 0
        finally:
            selector.close()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            rsock.close()
            wsock.close()
            if self.handled.path:
                os.close(self._lock_fd)

    def _signals(self, rsock) -> None:
        try:
            data = rsock.recv(64)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.pending:
                    self.process_batch()  # finish what was started: nothing half-done
                raise Stop()
            if signum == signal.SIGHUP:
                self.sd_notify("RELOADING=1")
                try:
                    self.settings = self.reload_settings()
                    log.info("configuration reloaded")
                except Exception as e:  # noqa: BLE001 - any bad config keeps the old one
                    log.error("%s; keeping the configuration in force", e)
                self.sd_notify("READY=1")

    def _drain(self) -> None:
        while True:
            try:
                device = self.monitor.poll(timeout=0)
            except OSError as e:
                log.warning("uevents may have been lost (%s): rescanning every block", e)
                self.pending.clear()
                self.deadline = None
                try:
                    self.scan()
                except SystemDataError as err:
                    log.error("%s", err)
                return
            if device is None:
                return
            self.on_event(device.action, device.sys_name)


def _ranges(indexes) -> str:
    out, start, prev = [], None, None
    for i in sorted(indexes):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(out)


def notifier() -> Optional[Callable[[str], None]]:
    """sd_notify through systemd-python; None outside systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    from systemd import daemon as sd_daemon

    return lambda state: sd_daemon.notify(state)
