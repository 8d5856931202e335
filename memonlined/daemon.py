"""memonlined run: the uevent-driven daemon.

One thread, one selectors loop over the uevent monitor and a signal
self-pipe, with timeouts for the batch deadline and the watchdog. A uevent
only says which block to look at again; sysfs is the truth. Added blocks
are decided as one batch (Pending); the take-over of auto_online_blocks
(TakeOver) and what a restart must know (state.py) outlive any one process.
"""

import copy
import logging
import selectors
import signal
import socket
import time
from typing import Dict, Optional

from . import backend as B
from .discover import SystemDataError, read_machine
from .model import Machine, format_runs
from .notify import Systemd
from .parse import format_size, parse_meminfo, ParseError
from .planner import Planner
from .policy import Settings
from .state import Handled, StateDir
from .writer import ALREADY_ONLINE, FAILED, Writer, configure_kernel, online_blocks, online_by_kernel

log = logging.getLogger(__name__)

# How long a batch may wait for what the kernel adds after a block's add
# uevent: its node link, and an ACPI DIMM's firmware_node links.
LINK_WAIT = 2.0
AUTO_ONLINE_VALUES = ("offline", "online", "online_kernel", "online_movable")
# [daemon] keys a reload cannot apply to a running daemon.
DEVICES = "facts.json"
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
        self.seen: Dict[int, float] = {}    # block -> when its add came
        self.deadline: Optional[float] = None

    def add(self, index: int, now: float) -> None:
        if self.deadline is None:
            self.deadline = now + self.settle
        self.seen.setdefault(index, now)

    def discard(self, index: int) -> None:
        self.seen.pop(index, None)

    def __contains__(self, index: int) -> bool:
        return index in self.seen

    def __bool__(self) -> bool:
        return bool(self.seen)

    def due(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def take(self) -> "Dict[int, float]":
        batch, self.seen, self.deadline = self.seen, {}, None
        return batch

    def put_back(self, batch: "Dict[int, float]", after: float, now: float) -> None:
        self.seen.update(batch)
        deadline = now + after
        self.deadline = deadline if self.deadline is None else min(self.deadline, deadline)


class TakeOver:
    """auto_online_blocks set to offline while memonlined decides, put back on
    every exit the process survives. The value replaced is recorded in the
    state directory before the change, so that after a SIGKILL the next
    daemon of the boot puts it back on its own clean stop. A value someone
    else wrote meanwhile is theirs: it is never overwritten."""

    RECORD = "auto_online_blocks.json"

    def __init__(self, backend: B.Backend, writer: Writer, state: StateDir, enabled: bool):
        self.backend, self.writer, self.state, self.enabled = backend, writer, state, enabled
        self.original: Optional[str] = None  # what to put back; None: nothing taken over

    def _current(self) -> Optional[str]:
        try:
            value = self.backend.read(B.AUTO_ONLINE).strip()
        except OSError:
            return None
        return value if value in AUTO_ONLINE_VALUES else None

    def __enter__(self) -> "TakeOver":
        current = self._current()
        record = self.state.load(self.RECORD)
        recorded = record.get("original") if record else None
        if recorded not in AUTO_ONLINE_VALUES[1:]:
            recorded = None
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
            self.state.remove(self.RECORD)
        if current in (None, "offline"):
            return self
        if not self.enabled:
            log.warning("the kernel onlines hot-plugged memory itself (auto_online_blocks=%s); "
                        "memonlined only handles what it leaves offline", current)
            return self
        if not self.state.save(self.RECORD, {"original": current}):
            log.error("not taking over auto_online_blocks (%s) without a record to put it back from: "
                      "memonlined only handles what the kernel leaves offline", current)
            return self
        try:
            self.writer.setting(B.AUTO_ONLINE, "offline")
        except OSError as e:
            log.error("cannot set /%s to offline (%s): the kernel goes on onlining hot-plugged memory "
                      "itself; memonlined only handles what it leaves offline", B.AUTO_ONLINE, e.strerror)
            self.state.remove(self.RECORD)
            return self
        self.original = current
        log.info("took over from the kernel: auto_online_blocks was %s, set to offline "
                 "(put back when memonlined stops); memory added before this start was placed by the kernel: "
                 "boot with memhp_default_state=offline (GRUB_CMDLINE_LINUX in /etc/default/grub, then "
                 "update-grub) to have memonlined place it too", current)
        return self

    def __exit__(self, *exc) -> None:
        self._put_back()

    def _put_back(self) -> None:
        if self.original is None:
            return
        current = self._current()
        if current is None:
            log.error("/%s unreadable or unknown at stop: not put back to %s (the record stays for the "
                      "next memonlined)", B.AUTO_ONLINE, self.original)
            return
        if current != "offline":
            log.warning("auto_online_blocks was set to %s while memonlined ran: left as it is", current)
        else:
            try:
                self.writer.setting(B.AUTO_ONLINE, self.original)
                log.info("auto_online_blocks put back to %s", self.original)
            except OSError as e:
                log.error("could not put auto_online_blocks back to %s: %s", self.original, e.strerror)
                return  # the record stays: the next daemon tries again
        self.state.remove(self.RECORD)
        self.original = None


class Daemon:
    def __init__(self, backend: B.Backend, settings: Settings, monitor, *, reload, notifier: Optional[Systemd] = None,
                 state_dir: Optional[str] = "/run/memonlined", dry_run: bool = False, kernel_mode: bool = False):
        self.backend = backend
        self.settings = settings
        self.monitor = monitor
        self.reload_settings = reload
        self.notifier = notifier or Systemd({})
        self.writer = Writer(backend, dry_run)
        self.kernel_mode = kernel_mode  # the kernel decides; memonlined onlines leftovers and reports
        # A dry run remembers nothing: the next real run must not take its
        # would-be onlined blocks for blocks an administrator offlined.
        self.state = StateDir(None if dry_run else state_dir, backend.boot_id())
        self.handled: Optional[Handled] = None
        self.facts: dict = {}  # what every Reader of this daemon learned (Reader.facts)
        self._saved_facts: Optional[dict] = None
        self.machine: Optional[Machine] = None
        self.reader = None
        self.pending = Pending(settings.settle_ms / 1000)
        self.layout_stale = True  # /proc/iomem must be read again before the next batch
        self.counts = {"onlined": 0, "failed": 0, "conflicts": 0}
        self.stopping = self.reload_wanted = self.ready = self.aborting = False
        self.rescan_at: Optional[float] = None  # a failed rescan is tried again
        self.watchdog_period = self.notifier.watchdog_period()
        self.next_watchdog = 0.0
        self._finishing = None  # the static group a stop lets finish

    # -- start and stop --------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the exit code; raises SystemDataError,
        StateError for what the start-up cannot work without."""
        if not self.state.lock():
            log.error("another memonlined is running (%s/lock is locked)", self.state.path)
            return 1
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wsock.fileno())
        handlers = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGABRT)}
        selector = selectors.DefaultSelector()
        try:
            self.handled = Handled(self.state)
            record = self.state.load(DEVICES)
            self.facts = record.get("facts", {}) if record and isinstance(record.get("facts"), dict) else {}
            with TakeOver(self.backend, self.writer, self.state,
                          self.settings.take_over_auto_online and not self.kernel_mode and not self.writer.dry_run):
                if self.kernel_mode:
                    self._configure_kernel()
                self.monitor.start()  # before the scan, so no add between the two is lost
                self.scan()
                # Boot-offline memory before READY=1; a block still without its
                # node link after that is left to the loop.
                start = time.monotonic()
                while self.pending and not self.stopping and time.monotonic() - start < LINK_WAIT + Pending.RETRY:
                    time.sleep(max(0.0, self.pending.deadline - time.monotonic()))
                    self.process_batch()
                if not self.stopping:
                    self.notifier.ready(self.status())
                    self.ready = True
                    log.info("ready: %s", self.status())
                    selector.register(self.monitor.fileno(), selectors.EVENT_READ, "monitor")
                    selector.register(rsock, selectors.EVENT_READ, "signal")
                    self._loop(selector, rsock)
                self.notifier.stopping()
                if self.aborting:
                    log.error("aborted (SIGABRT: the watchdog?): %s", self.status())
                else:
                    log.info("stopping: %s", self.status())
            return 1 if self.aborting else 0
        finally:
            selector.close()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            rsock.close()
            wsock.close()
            self.state.unlock()

    def _loop(self, selector, rsock) -> None:
        while not self.stopping:
            now = time.monotonic()
            self._ping(now)
            timeouts = [t - now for t in (self.pending.deadline, self.rescan_at,
                                          self.next_watchdog if self.watchdog_period else None) if t is not None]
            for key, _ in selector.select(max(0.0, min(timeouts)) if timeouts else None):
                if key.data == "signal":
                    try:
                        rsock.recv(64)  # the handler did the work: this only woke select()
                    except BlockingIOError:
                        pass
                else:
                    self._drain()
            if self.reload_wanted:
                self.reload()
            if not self.stopping and self.rescan_at is not None and time.monotonic() >= self.rescan_at:
                self.rescan()
            if not self.stopping and self.pending.due(time.monotonic()):
                self.process_batch()
            if self.handled.dirty:  # blocks seen online through uevents: a restart must know them
                self.handled.save()

    def _on_signal(self, signum, _frame) -> None:
        # Runs in the main thread between two bytecodes, also in a long batch:
        # flags only, so that no exit path is cut short (a batch sees them in
        # _go_on, the loop after select()).
        if signum == signal.SIGHUP:
            self.reload_wanted = True
        else:
            self.stopping = True
            self.aborting = self.aborting or signum == signal.SIGABRT

    def _ping(self, now: float) -> None:
        if self.watchdog_period is not None and now >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = now + self.watchdog_period

    def _go_on(self, block) -> bool:
        """Asked before each block of a batch: the watchdog is pinged however
        long the batch, and a stop ends it at once but for the rest of a
        DIMM or dax device, which the kernel decides as a whole."""
        self._ping(time.monotonic())
        if not self.stopping:
            self._finishing = block.group
            return True
        group = block.group
        return not self.aborting and group is not None and not group.dynamic and group is self._finishing

    # -- configuration -----------------------------------------------------

    def _configure_kernel(self) -> None:
        params = {}
        for name in self.backend.listdir(B.PARAMETERS):
            try:
                params[name] = self.backend.read(f"{B.PARAMETERS}/{name}").strip()
            except OSError:
                continue
        try:
            configure_kernel(self.writer, self.settings, params)
        except OSError as e:
            log.error("kernel mode: cannot configure the kernel's policy (%s); memonlined decides instead",
                      e.strerror or e)
            self.kernel_mode = False

    def reload(self) -> None:
        self.reload_wanted = False
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
        if self.kernel_mode:
            self._configure_kernel()
        log.info("configuration reloaded%s", f"; {', '.join(later)}: in force from the next start" if later else "")
        self.notifier.reloaded()

    # -- reading the machine ------------------------------------------------

    def status(self) -> str:
        m = self.machine
        online = sum(1 for b in m.blocks.values() if b.online)
        usable = ""
        try:
            usable = f", {format_size(parse_meminfo(self.backend.read(B.MEMINFO))['MemTotal'])} usable"
        except (OSError, ParseError, KeyError):
            pass
        return (f"{online} of {len(m.blocks)} blocks online{usable}; onlined {self.counts['onlined']}, "
                f"failed {self.counts['failed']}, onlined by others {self.counts['conflicts']}")

    def scan(self) -> None:
        """Read everything; the offline blocks that are ours to online become a
        batch: all of them at the first start in a boot; after a restart or
        lost events, those not handled before (an offline block handled
        before, the same instance, was offlined by an administrator)."""
        # The instances first (as refresh() does): a block replaced while the
        # machine is read is then taken for new, never the other way round.
        present = self.backend.block_indexes()
        instances = {index: self.backend.block_instance(index) for index in present}
        self.machine, self.reader = read_machine(self.backend, self.facts)
        self.layout_stale = False
        for warning in self.machine.warnings:
            log.warning("%s", warning)
        self.machine.warnings.clear()
        left, now = [], time.monotonic()
        for index in present:
            block = self.machine.blocks.get(index)
            instance = instances[index]
            if block is not None:
                block.instance = instance
            if block is not None and block.online:
                self.handled.mark(index, instance)
            elif block is not None and self.handled.same(index, instance):
                left.append(index)
            else:  # new, re-added at a reused index, or not readable yet (no node link)
                self.handled.forget(index)
                self.pending.add(index, now)
        for index in set(self.handled.blocks) - set(present):
            self.handled.forget(index)
        if left:
            log.info("leaving %d offline blocks alone that were online before (offlined by an administrator): %s",
                     len(left), format_runs(left))
        if self.pending:
            self.pending.deadline = now
        self.handled.save()
        self._save_facts()

    def refresh(self, index: int) -> None:
        """Re-read one block and move the model's accounting to what it says."""
        old = self.machine.blocks.pop(index, None)
        if old is not None:
            self.machine.remove_online(old)
        # The instance first: if the block is replaced meanwhile, what was read
        # belongs to the instance recorded, never the other way round.
        instance = self.backend.block_instance(index)
        block = self.reader.read_block(index)
        if block is None:
            if old is not None:
                self._gone(old)
            return
        block.instance = instance
        self.machine.blocks[index] = block
        if block.online:
            self.machine.add_online(block, block.zone)
            self.handled.mark(index, instance)

    # -- events -----------------------------------------------------------

    def on_event(self, action: str, sys_name: str) -> None:
        index = B.numbered(sys_name, "memory")
        if index is None:
            return
        if action == "add":
            if index not in self.pending and self.handled.same(index, self.backend.block_instance(index)):
                # The block memonlined knows (a synthetic add from `udevadm
                # trigger`, or a repeat): not new memory. Offline, it was
                # offlined by an administrator.
                self.refresh(index)
                return
            self.pending.add(index, time.monotonic())
        elif action in ("online", "offline", "change"):
            if index in self.pending:
                return  # the batch will read it
            block = self.machine.blocks.get(index)
            if block is not None and action != "change" and (not block.online) == (action == "offline"):
                return  # the model says so already: memonlined made this change itself
            self.refresh(index)
        elif action == "remove":
            self.layout_stale = True  # a device may be going away, and another come in its place
            block = self.machine.blocks.pop(index, None)
            if block is not None:
                self.machine.remove_online(block)
                self._gone(block)
            self.handled.forget(index)
            self.pending.discard(index)
        # other actions (bind, move, ...) say nothing about memory

    def _gone(self, block) -> None:
        """BLOCK is no more; when it was its device's last, a device of the
        same name later (virtioN and PNP0C80:XX names are reused) is another."""
        group = block.group
        if group is not None and not any(b.group is group for b in self.machine.blocks.values()):
            self.machine.drop_group(group.name)
            self.reader.forget_device(group.name)

    def process_batch(self) -> None:
        seen = self.pending.take()
        batch = sorted(seen)
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
        blocks = self.machine.blocks
        now = time.monotonic()
        no_node = [i for i in batch if i not in blocks and self.backend.exists(B.block_dir(i))]
        unlinked = [i for i in batch if i in blocks and not blocks[i].online and self.reader.unlinked(blocks[i])]
        if any(now - seen[i] < LINK_WAIT for i in no_node + unlinked):
            self.pending.put_back(seen, max(self.pending.settle, 0.005), now)
            self.machine.warnings.clear()
            return
        if no_node:  # never decided without its node; looked at again, however long it takes
            self.pending.put_back({i: seen[i] for i in no_node}, Pending.RETRY, now)
        for warning in self.machine.warnings:
            log.warning("%s", warning)
        self.machine.warnings.clear()
        for index in batch:
            block = blocks.get(index)
            if block is not None and block.online and self.kernel_mode:
                log.info("memory%d: onlined by the kernel to %s (%s)", index, block.zone, block.device)
            elif block is not None and block.online:
                log.warning("memory%d: was already online in %s when memonlined got to it "
                            "(onlined by someone else)", index, block.zone)
                self.counts["conflicts"] += 1
        self._online([i for i in batch if i in blocks and not blocks[i].online])
        if self.ready:  # before READY=1, the start-up's own status follows
            self.notifier.status(self.status())

    def _online(self, indexes) -> None:
        if self.kernel_mode:
            for index in sorted(indexes):
                if not self._go_on(self.machine.blocks[index]):
                    break
                error = online_by_kernel(self.writer, index)
                if error is not None:
                    log.error("memory%d: online failed (%s); the block stays offline", index, error)
                    self.counts["failed"] += 1
                    continue
                if not self.writer.dry_run:
                    self.refresh(index)
                block = self.machine.blocks.get(index)
                log.info("memory%d: the kernel onlined it to %s", index, block.zone if block else "?")
                self.counts["onlined"] += 1
        elif indexes:
            planner = Planner(self.machine, self.settings)
            for outcome in online_blocks(self.writer, planner, indexes, self._go_on):
                block = self.machine.blocks.get(outcome.decision.block)
                if outcome.zone is not None and block is not None:
                    # The instance read before the write: one replaced since is new memory.
                    self.handled.mark(block.index, block.instance)
                if outcome.result == FAILED:
                    self.counts["failed"] += 1
                elif outcome.result == ALREADY_ONLINE:
                    self.counts["conflicts"] += 1
                else:
                    self.counts["onlined"] += 1
        if self.stopping:
            left = [i for i in indexes if self.machine.blocks.get(i) is not None
                    and not self.machine.blocks[i].online]
            if left:
                log.warning("stopping before %d blocks were decided (%s): they stay offline until "
                            "memonlined starts again", len(left), format_runs(left))
        self.handled.save()
        self._save_facts()

    def _save_facts(self) -> None:
        if self.facts != self._saved_facts:
            self.state.save(DEVICES, {"facts": self.facts})
            self._saved_facts = copy.deepcopy(self.facts)

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

