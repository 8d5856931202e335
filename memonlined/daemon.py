"""memonlined run: the uevent-driven daemon.

One thread, one selectors loop: wait (the uevent monitor, the signals, the
batch deadline, the watchdog), drain the uevents, decide and write a batch
of added blocks, notify systemd. Its collaborators have one job each:
Pending (the adds to decide as one batch), Blocks (blocks.py: the model
kept up to date from sysfs), TakeOver (auto_online_blocks, always put
back), Signals (flags only), and notify.py's Systemd and Watchdog.
"""

from __future__ import annotations

import collections
import logging
import selectors
import signal
import socket
import time

from . import report
from .backend import AUTO_ONLINE, Backend, numbered
from .blocks import LINK_WAIT, Blocks
from .conflicts import BOOT_OFFLINE_ADVICE
from .config import Config
from .discover import SystemDataError, memory_now, read_kernel_params, unbound_virtio_mem, virtio_mem_driver
from .metrics import Reporter
from .notify import Systemd, Watchdog
from .model import format_runs
from .parse import format_size
from .planner import Planner
from .state import AUTO_ONLINE_VALUES, TAKE_OVER, StateDir
from .writer import ALREADY_ONLINE, FAILED, Writer, configure_kernel, online_blocks, online_by_kernel

log = logging.getLogger(__name__)

# At start, how long to wait for the driver of a virtio-mem device (udev
# loads virtio_mem beside memonlined at boot); once it binds, how long its
# first blocks have to come (and how long a registered driver may leave a
# device unbound before its probe is taken for failed).
DRIVER_WAIT = 10.0
DRIVER_SETTLE = 1.0
# [daemon] keys a reload cannot apply to a running daemon.
RESTART_KEYS = ("mode", "event_source", "receive_buffer_mib", "take_over_auto_online")


class Pending:
    """The blocks whose add uevent came, to be decided as one batch once the
    settle window is over, and read again a little later while the kernel
    has not finished adding them: each block waits for its links LINK_WAIT
    at most from its own add; one without a node link is never decided
    without it (its valid_zones cannot be read) and is looked at again
    every RETRY seconds."""

    RETRY = 0.5

    def __init__(self, settle: float):
        self.settle = settle
        self.seen: dict[int, float] = {}    # block -> when its add came
        self.deadline: float | None = None
        self.last_add: float | None = None  # the start-up follows a driver's adds (DriverWait)

    def add(self, index: int, now: float) -> None:
        if self.deadline is None:
            self.deadline = now + self.settle
        self.seen.setdefault(index, now)
        self.last_add = now

    def discard(self, index: int) -> None:
        self.seen.pop(index, None)

    def __contains__(self, index: int) -> bool:
        return index in self.seen

    def __bool__(self) -> bool:
        return bool(self.seen)

    def due(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def take(self) -> "dict[int, float]":
        batch, self.seen, self.deadline = self.seen, {}, None
        return batch

    def put_back(self, batch: "dict[int, float]", after: float, now: float) -> None:
        self.seen.update(batch)
        deadline = now + after
        self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)


class TakeOver:
    """auto_online_blocks set to offline while memonlined decides, put back on
    every exit the process survives. The value replaced is recorded in the
    state directory before the change, so that after a SIGKILL the next
    daemon of the boot puts it back on its own clean stop. A value someone
    else wrote meanwhile is theirs: it is never overwritten."""

    def __init__(self, backend: Backend, writer: Writer, state: StateDir, enabled: bool):
        self.backend, self.writer, self.state, self.enabled = backend, writer, state, enabled
        self.original: str | None = None  # what to put back; None: nothing taken over

    def _current(self) -> str | None:
        try:
            value = self.backend.read(AUTO_ONLINE).strip()
        except OSError:
            return None
        return value if value in AUTO_ONLINE_VALUES else None

    def __enter__(self) -> "TakeOver":
        current = self._current()
        recorded = self.state.taken_over()
        if current == "offline" and recorded is not None:
            # An earlier daemon of this boot took over and did not put it back.
            self.original = recorded
            log.info("auto_online_blocks was %s before memonlined (recorded by an earlier memonlined of "
                     "this boot); put back on a clean stop", recorded)
            if not self.enabled:
                self._put_back()
            return self
        if recorded is not None:
            log.info("auto_online_blocks was set to %s since the last memonlined stopped: %s it is",
                     current, current)
            self.state.remove(TAKE_OVER)
        if current in (None, "offline"):
            return self
        if not self.enabled:
            log.warning("the kernel onlines hot-plugged memory itself (auto_online_blocks=%s); "
                        "memonlined only handles what it leaves offline", current)
            return self
        if not self.state.save(TAKE_OVER, {"original": current}):
            log.error("not taking over auto_online_blocks (%s) without a record to put it back from: "
                      "memonlined only handles what the kernel leaves offline", current)
            return self
        try:
            self.writer.setting(AUTO_ONLINE, "offline")
        except OSError as e:
            log.error("cannot set /%s to offline (%s): the kernel goes on onlining hot-plugged memory "
                      "itself; memonlined only handles what it leaves offline", AUTO_ONLINE, e.strerror)
            self.state.remove(TAKE_OVER)
            return self
        self.original = current
        log.info("took over from the kernel: auto_online_blocks was %s, set to offline (put back when "
                 "memonlined stops); memory added before this start was placed by the kernel: %s",
                 current, BOOT_OFFLINE_ADVICE)
        return self

    def __exit__(self, *exc) -> None:
        self._put_back()

    def _put_back(self) -> None:
        if self.original is None:
            return
        current = self._current()
        if current is None:
            log.error("/%s unreadable or unknown at stop: not put back to %s (the record stays for the "
                      "next memonlined)", AUTO_ONLINE, self.original)
            return
        if current != "offline":
            log.warning("auto_online_blocks was set to %s while memonlined ran: left as it is", current)
        else:
            try:
                self.writer.setting(AUTO_ONLINE, self.original)
                log.info("auto_online_blocks put back to %s", self.original)
            except OSError as e:
                log.error("could not put auto_online_blocks back to %s: %s", self.original, e.strerror)
                return  # the record stays: the next daemon tries again
        self.state.remove(TAKE_OVER)
        self.original = None


class Signals:
    """SIGTERM and SIGINT stop, SIGABRT (the watchdog) stops with exit code 1,
    SIGHUP reloads. The handlers run between two bytecodes, also in a long
    batch: they only set flags, so that no exit path is cut short (a batch
    sees them before each block, the loop after select()); a socket wakes
    select() (signal.set_wakeup_fd)."""

    WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGABRT)

    def __init__(self):
        self.stopping = self.aborting = self.reload_wanted = False

    def __enter__(self) -> "Signals":
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._wsock.fileno())
        self._old = {sig: signal.signal(sig, self._on_signal) for sig in self.WATCHED}
        return self

    def __exit__(self, *exc) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._rsock.close()
        self._wsock.close()

    def fileno(self) -> int:
        return self._rsock.fileno()

    def drain(self) -> None:
        try:
            self._rsock.recv(64)  # the handler did the work: this only woke select()
        except BlockingIOError:
            pass

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self.reload_wanted = True
        else:
            self.stopping = True
            self.aborting = self.aborting or signum == signal.SIGABRT


class DriverWait:
    """At start, the virtio-mem devices without a driver yet (UNBOUND: udev
    loads virtio_mem beside memonlined at boot), each waited for DRIVER_WAIT
    at most. Once one binds, its blocks have DRIVER_SETTLE to come after the
    bind, after each other and after each batch that wrote (settle_until: on
    a busy boot CPU the driver's worker adds them a second and more apart),
    until DRIVER_WAIT after the bind at most, and LINK_WAIT more to be read
    whole (links_until). A registered driver that leaves a device unbound
    DRIVER_SETTLE is taken for a failed probe. ADDING: a bound device's
    blocks were offline at start: its driver may still be adding more,
    followed the same way."""

    def __init__(self, backend: Backend, unbound, start: float, adding: bool, settle: float):
        self.backend, self.unbound, self.start = backend, unbound, start
        # A batch's own settle window (settle_ms) ends inside the link wait.
        self.link_wait = settle + LINK_WAIT + Pending.RETRY
        self.links_until, self.settle_until = start + self.link_wait, start
        self.registered_at: float | None = None
        self.bound_at: float | None = None
        if adding:  # bound before we started (udev can be the quicker), its blocks still coming
            self.bound_at = start
            self._settle(start)
        if unbound:
            log.info("%s: waiting up to %g s for the virtio_mem driver: its memory at start is onlined "
                     "before READY", ", ".join(unbound), DRIVER_WAIT)

    def active(self, when: float | None) -> None:
        """WHEN: the latest sign of a bound driver's work: an add read, or a
        batch that wrote (on one vCPU a long batch keeps its worker off the CPU)."""
        if self.bound_at is not None and when is not None:
            self._settle(min(when, self.bound_at + DRIVER_WAIT))

    def check(self, now: float) -> None:
        if not self.unbound:
            return
        still = [name for name in unbound_virtio_mem(self.backend) if name in self.unbound]
        if len(still) < len(self.unbound):  # bound: its blocks come now
            self.bound_at = now
            self._settle(now)
        self.unbound = still
        if self.registered_at is None and virtio_mem_driver(self.backend):
            self.registered_at = now
        failed = self.registered_at is not None and now - self.registered_at >= DRIVER_SETTLE
        if still and (now - self.start >= DRIVER_WAIT or failed):
            log.warning("%s: no driver after %.1f s (%s): its memory is onlined when it comes",
                        ", ".join(still), now - self.start,
                        "virtio_mem did not bind it" if failed else "virtio_mem not loaded?")
            self.unbound = []

    def _settle(self, when: float) -> None:
        self.settle_until = max(self.settle_until, when + DRIVER_SETTLE)
        self.links_until = max(self.links_until, self.settle_until + self.link_wait)


class Daemon:
    """`memonlined run`: onlines the blocks offline at start (before READY=1),
    then every block added, in batches, until a stop signal."""

    def __init__(self, backend: Backend, settings: Config, monitor, *, reload, notifier: Systemd | None = None,
                 state_dir: str | None = "/run/memonlined", dry_run: bool = False, kernel_mode: bool = False):
        self.backend, self.settings, self.monitor = backend, settings, monitor
        self.reload_settings = reload
        self.notifier = notifier or Systemd({})
        self.writer = Writer(backend, dry_run)
        self.kernel_mode = kernel_mode  # the kernel decides; memonlined onlines leftovers and reports
        # A dry run remembers nothing: the next real run must not take its
        # would-be onlined blocks for blocks an administrator offlined.
        self.state = StateDir(None if dry_run else state_dir, backend.boot_id())
        self.blocks: Blocks | None = None
        self.pending = Pending(settings.settle_ms / 1000)
        self.signals = Signals()
        self.watchdog = Watchdog(self.notifier)
        self.counts = collections.Counter(onlined=0, failed=0, conflicts=0)
        self.reporter = Reporter(backend, None if dry_run else _metrics_path(settings), self.counts)
        self.ready = False
        self.rescan_at: float | None = None  # a failed rescan is tried again
        self._finishing = None  # the static group a stop lets finish

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit code 0) or SIGABRT (1). Raises
        SystemDataError, StateError for what the start-up cannot work without."""
        if not self.state.lock():
            log.error("another memonlined is running (%s/lock is locked)", self.state.path)
            return 1
        try:
            self.blocks = Blocks(self.backend, self.state)
            take_over = self.settings.take_over_auto_online and not self.kernel_mode and not self.writer.dry_run
            with self.signals, TakeOver(self.backend, self.writer, self.state, take_over):
                if self.kernel_mode:
                    self._configure_kernel()
                # Before the scan: a driver binding during it still gets its settle time.
                unbound = unbound_virtio_mem(self.backend)
                self.monitor.start()  # before the scan, so no add between the two is lost
                self.scan()
                self.reporter.balloon_check(self.blocks.machine)
                self._start_up(unbound)
                self.reporter.update(self.blocks.machine)
                if not self.signals.stopping:
                    self.notifier.ready(self.status())
                    self.ready = True
                    log.info("ready: %s", self.status())
                    self._loop()
                if self.pending:  # added (or left by a batch the stop cut short), not decided
                    left = sorted(self.pending.take())
                    log.warning("stopping before %d added blocks were decided (%s): they stay offline until "
                                "memonlined starts again", len(left), format_runs(left))
                self.notifier.stopping()
                self.reporter.update(self.blocks.machine, running=False)
                if self.signals.aborting:
                    log.error("aborted (SIGABRT: the watchdog?): %s", self.status())
                else:
                    log.info("stopping: %s", self.status())
            return 1 if self.signals.aborting else 0
        finally:
            self.state.unlock()

    def _start_up(self, unbound) -> None:
        """Memory offline at start online before READY=1, which lets systemd go
        on to sysinit.target, including that of virtio-mem devices whose
        driver binds only now (DriverWait). A block still without its node
        link after LINK_WAIT is left to the loop."""
        model = self.blocks.machine.blocks
        adding = any(model[i].group is not None and model[i].group.dynamic for i in self.pending.seen if i in model)
        drivers = DriverWait(self.backend, unbound, time.monotonic(), adding, self.pending.settle)
        while not self.signals.stopping:
            self._drain()  # what the drivers add meanwhile
            now = time.monotonic()
            self.watchdog.ping(now)  # the waits can add up to DRIVER_WAIT twice
            drivers.check(now)
            drivers.active(self.pending.last_add)
            if self.pending and (now < drivers.links_until or drivers.unbound):
                if self.pending.due(now):
                    if self.process_batch():
                        drivers.active(time.monotonic())
                else:  # adds coming meanwhile join the batch
                    time.sleep(min(self.pending.deadline - now, 0.05))
            elif drivers.unbound or now < drivers.settle_until:
                time.sleep(0.05)
            else:
                return

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.monitor.fileno(), selectors.EVENT_READ, self._drain)
            selector.register(self.signals, selectors.EVENT_READ, self.signals.drain)
            while not self.signals.stopping:
                now = time.monotonic()
                self.watchdog.ping(now)
                deadlines = [t for t in (self.pending.deadline, self.rescan_at, self.watchdog.due_at(),
                                         self.reporter.due_at) if t is not None]
                for key, _ in selector.select(max(0.0, min(deadlines) - now) if deadlines else None):
                    key.data()  # drain the uevents, or the signal socket
                if self.signals.reload_wanted:
                    self.reload()
                if not self.signals.stopping and self.rescan_at is not None and time.monotonic() >= self.rescan_at:
                    self.rescan()
                if not self.signals.stopping and self.pending.due(time.monotonic()):
                    self.process_batch()
                if self.blocks.handled.dirty:  # blocks seen online through uevents: a restart must know them
                    self.blocks.save()
                if self.reporter.due(time.monotonic()):
                    self.blocks.refresh_balloons()  # MemAvailable and balloons change without uevents
                self.reporter.update(self.blocks.machine)

    # -- uevents --------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            try:
                device = self.monitor.poll(timeout=0)
            except OSError as e:
                log.warning("uevents may have been lost (%s): rescanning every block", e)
                self.rescan()
                return
            if device is None:
                return
            self.on_event(device.action, device.sys_name)

    def on_event(self, action: str, sys_name: str) -> None:
        index = numbered(sys_name, "memory")
        if index is None:
            return
        if action == "add":
            if index not in self.pending and self.blocks.known(index):
                # Not new memory: offline, it was offlined by an administrator.
                self.blocks.refresh(index)
            else:
                self.pending.add(index, time.monotonic())
        elif action in ("online", "offline", "change"):
            if index not in self.pending:  # else the batch will read it
                self.blocks.changed(action, index)
        elif action == "remove":
            self.blocks.removed(index)
            self.pending.discard(index)
        # other actions (bind, move, ...) say nothing about memory

    def scan(self) -> None:
        now = time.monotonic()
        for index in self.blocks.scan():
            self.pending.add(index, now)
        if self.pending:
            self.pending.deadline = now

    def rescan(self) -> None:
        """Every block again (events were lost). What was pending stays
        pending; a failed rescan is tried again a second later."""
        try:
            self.scan()
        except SystemDataError as err:
            log.error("%s; rescanning again in a second", err)
            self.rescan_at = time.monotonic() + 1.0
            return
        self.rescan_at = None

    # -- a batch: decide, write, notify -----------------------------------------

    def process_batch(self) -> bool:
        """Decides and writes the pending blocks that are ready; True if it wrote."""
        seen = self.pending.take()
        # Before READY=1 balloon drivers are binding: each batch looks again.
        reread = self.blocks.reread(seen, balloons=not self.ready)
        now = time.monotonic()
        if reread.wait_from is not None:
            # Decided now: the blocks below the first that waits for its links
            # (a growing virtio-mem device's, a DIMM's whose links came); the
            # rest are read again a little later.
            later = {i: t for i, t in seen.items() if i >= reread.wait_from}
            self.pending.put_back(later, max(self.pending.settle, 0.005), now)
            seen = {i: t for i, t in seen.items() if i < reread.wait_from}
        retry = [i for i in reread.no_node if i in seen]
        if retry:  # never decided without its node; looked at again, however long it takes
            self.pending.put_back({i: seen[i] for i in retry}, Pending.RETRY, now)
        if not seen:
            return False
        model = self.blocks.machine.blocks
        for index in sorted(seen):
            block = model.get(index)
            if block is not None and block.online and self.kernel_mode:
                log.info("memory%d: onlined by the kernel to %s (%s)", index, block.zone, block.device)
            elif block is not None and block.online:
                log.warning("memory%d: was already online in %s when memonlined got to it "
                            "(onlined by someone else)", index, block.zone)
                self.counts["conflicts"] += 1
        todo = [i for i in sorted(seen) if i in model and not model[i].online]
        self._online(todo)
        self.reporter.batch_done(self.blocks.machine, todo)
        if self.ready and self.notifier.listening:  # before READY=1, the start-up's own status follows
            self.notifier.status(self.status())
        return bool(todo)

    def _online(self, indexes) -> None:
        machine = self.blocks.machine
        if self.kernel_mode:
            results = online_by_kernel(self.writer, indexes, self._go_on, self.blocks.refresh, machine.blocks)
        else:
            outcomes = online_blocks(self.writer, Planner(machine, self.settings), indexes, self._go_on)
            results = [(o.decision.block, o.zone, o.result) for o in outcomes]
            for index, zone, _ in results:
                if zone is not None and index in machine.blocks:
                    # The instance read before the write: one replaced since is new memory.
                    self.blocks.handled.mark(index, machine.blocks[index].instance)
        for _, _, result in results:
            self.counts[{FAILED: "failed", ALREADY_ONLINE: "conflicts"}.get(result, "onlined")] += 1
        if self.signals.stopping:  # what the stop left offline is said with the rest of the pending (run())
            left = [i for i in indexes if machine.blocks.get(i) is not None and not machine.blocks[i].online]
            now = time.monotonic()
            self.pending.put_back({i: now for i in left}, 0.0, now)
        self.blocks.save()

    def _go_on(self, block) -> bool:
        """Asked before each block of a batch: the watchdog is pinged however
        long the batch, and a stop ends it at once but for the rest of a
        DIMM or dax device, which the kernel decides as a whole."""
        self.watchdog.ping(time.monotonic())
        if not self.signals.stopping:
            self._finishing = block.group
            return True
        group = block.group
        return not self.signals.aborting and group is not None and not group.dynamic and group is self._finishing

    def status(self) -> str:
        return status_line(self.backend, self.blocks.machine, self.counts)

    # -- configuration ----------------------------------------------------------

    def reload(self) -> None:
        self.signals.reload_wanted = False
        self.notifier.reloading()
        try:
            new = self.reload_settings()
        except Exception as e:  # noqa: BLE001 - any bad config keeps the old one
            log.error("%s; keeping the configuration in force", e)
            self.notifier.reloaded()
            return
        old, self.settings = self.settings, new
        later = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]
        self.pending.settle = new.settle_ms / 1000
        if not self.writer.dry_run:
            self.reporter.move(self.blocks.machine, _metrics_path(new))
        if self.kernel_mode:
            self._configure_kernel()
        log.info("configuration reloaded%s", f"; {', '.join(later)}: in force from the next start" if later else "")
        self.notifier.reloaded()

    def _configure_kernel(self) -> None:
        try:
            configure_kernel(self.writer, self.settings, read_kernel_params(self.backend))
        except OSError as e:
            log.error("kernel mode: cannot configure the kernel's policy (%s); memonlined decides instead",
                      e.strerror or e)
            self.kernel_mode = False


def _metrics_path(settings: Config) -> str | None:
    return None if settings.metrics_file == "off" else settings.metrics_file


def status_line(backend: Backend, machine, counts) -> str:
    """STATUS= and the log's summary."""
    online = sum(1 for b in machine.blocks.values() if b.online)
    memory = memory_now(backend)
    usable = f", {format_size(memory['memory_total'])} usable" if memory else ""
    return (f"{online} of {len(machine.blocks)} blocks online{usable}; onlined {counts['onlined']}, "
            f"failed {counts['failed']}, onlined by others {counts['conflicts']}; "
            + report.summary(machine, memory.get("memory_available")))
