"""The daemon's view of the memory blocks: the model of the machine kept up
to date from sysfs, and what was handled in this boot (state.py).

A uevent only says which block to look at again; sysfs is the truth. Each
block is read with its instance (its sysfs directory's inode number) taken
*before* its files, so a block replaced meanwhile is taken for new memory,
never the other way round.
"""

from __future__ import annotations

import collections
import copy
import logging
import time

from .backend import Backend, block_dir
from .discover import NO_NODE_YET, Discovery, discover, read_balloons
from .model import DIMM, Block, Machine, format_runs
from .state import Handled, StateDir

log = logging.getLogger(__name__)

FACTS = "facts.json"
# How long a batch may wait for what the kernel adds after a block's add
# uevent: its node link, and an ACPI DIMM's firmware_node links.
LINK_WAIT = 2.0
# How often a batch looks for balloon drivers again (they bind at boot,
# often after memonlined's scan; a look costs a directory and /proc/vmstat).
BALLOON_RECHECK = 10.0


class Reread(collections.namedtuple("Reread", "wait_from no_node")):
    """A batch read again. WAIT_FROM: the lowest block that may still get its
    links within LINK_WAIT of its add (it and those above it are read again
    soon; those below are complete), None: none; NO_NODE: blocks that have no
    node link yet, however long it took (never decided without it)."""
    __slots__ = ()


class Blocks:
    """The model (machine), the Discovery that re-reads single blocks, what was
    handled in this boot, and the facts learned (state.py)."""

    def __init__(self, backend: Backend, state: StateDir):
        self.backend = backend
        self.state = state
        self.handled = Handled(state)
        record = state.load(FACTS)
        # What every discovery of this daemon learned (Discovery.facts).
        self.facts: dict = record.get("facts", {}) if record and isinstance(record.get("facts"), dict) else {}
        self._saved_facts: dict | None = None
        self.machine: Machine | None = None
        self.found: Discovery | None = None
        self.layout_stale = True  # /proc/iomem must be read again before the next batch
        self.balloons_at = 0.0  # when a batch reads the balloons again (discover() reads them too)

    def scan(self) -> list[int]:
        """Read everything. Returns the offline blocks that are ours to
        online: all of them at the first start in a boot; after a restart or
        lost events, those not handled before (an offline block handled
        before, the same instance, was offlined by an administrator).
        Raises SystemDataError."""
        present = self.backend.block_indexes()
        instances = {index: self.backend.block_instance(index) for index in present}
        self.found = discover(self.backend, self.facts)
        self.balloons_at = time.monotonic() + BALLOON_RECHECK
        self.machine = self.found.machine
        self.layout_stale = False
        self.log_warnings()
        new, left = [], []
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
                new.append(index)
        for index in set(self.handled.blocks) - set(present):
            self.handled.forget(index)
        if left:
            log.info("leaving %d offline blocks alone that were online before (offlined by an administrator): %s",
                     len(left), format_runs(left))
        self.save(everything=True)
        return new

    def known(self, index: int) -> bool:
        """Is INDEX, as it is now, a block memonlined handled (a synthetic add from
        `udevadm trigger`, or a repeat: not new memory)?"""
        return self.handled.same(index, self.backend.block_instance(index))

    def refresh(self, index: int) -> Block | None:
        """Re-read one block and move the model's accounting to what it says."""
        machine = self.machine
        old = machine.blocks.pop(index, None)
        if old is not None:
            machine.remove_online(old)
        instance = self.backend.block_instance(index)
        block = self.found.read_block(index)
        if block is None:
            if old is not None:
                self._gone(old)
            return None
        block.instance = instance
        machine.blocks[index] = block
        if block.online:
            machine.add_online(block, block.zone)
            self.handled.mark(index, instance)
        return block

    def changed(self, action: str, index: int) -> None:
        """An online, offline or change uevent for a block already decided."""
        block = self.machine.blocks.get(index)
        if block is not None and action != "change" and (not block.online) == (action == "offline"):
            return  # the model says so already: memonlined made this change itself
        self.refresh(index)

    def removed(self, index: int) -> None:
        self.layout_stale = True  # a device may be going away, and another come in its place
        block = self.machine.blocks.pop(index, None)
        if block is not None:
            self.machine.remove_online(block)
            self._gone(block)
        self.handled.forget(index)

    def _gone(self, block: Block) -> None:
        """BLOCK is no more; when it was its device's last, a device of the
        same name later (virtioN and PNP0C80:XX names are reused) is another."""
        group = block.group
        if group is not None and not any(b.group is group for b in self.machine.blocks.values()):
            self.machine.drop_group(group.name)
            self.found.forget_device(group.name)

    def reread(self, seen: dict[int, float], balloons: bool = False) -> Reread:
        """Read the blocks of a batch again (SEEN: block -> when its add came);
        BALLOONS: the balloons too, however recently they were read."""
        batch = sorted(seen)
        # New devices bring new iomem resources; more blocks of a virtio-mem or
        # dax device already known do not (a growing virtio-mem device adds a
        # few blocks at a time, and under TCG each re-read costs milliseconds).
        if self.layout_stale or not all(self.found.in_driver_range(i) for i in batch):
            self.found.read_layout()
            self.layout_stale = False
        for index in batch:
            self.refresh(index)
        self.found.size_dimms()
        if balloons or time.monotonic() >= self.balloons_at:  # a driver may bind after the scan
            self.refresh_balloons()
        # A block whose node link is not there yet (the add uevent comes
        # before it), or a DIMM still being added (its firmware_node links
        # come after all its blocks).
        blocks, now = self.machine.blocks, time.monotonic()
        no_node = [i for i in batch if i not in blocks and self.backend.exists(block_dir(i))]
        unlinked = [i for i in batch if i in blocks and not blocks[i].online and self.found.unlinked(blocks[i])]
        waiting = [i for i in no_node + unlinked if now - seen[i] < LINK_WAIT]
        wait_from = min(waiting, default=None)
        if wait_from is not None:
            # What may go ahead of a block that waits: a virtio-mem device's
            # blocks (the kernel decides them block by block, unit by unit),
            # and a DIMM's once its size is known whole, from /proc/iomem with
            # the E820 table (its links come after all its blocks, in order:
            # without the table its size would be the blocks linked so far).
            held = [i for i in batch if i < wait_from and i in blocks and not blocks[i].online
                    and not self._may_go_ahead(blocks[i])]
            wait_from = min(held, default=wait_from)
            # A block's missing link is said only when it is read for good;
            # the rest (a device's unit assumed, say) is said now, once.
            waits = {f"memory{i}: {NO_NODE_YET}" for i in waiting}
            self.machine.warnings[:] = [w for w in self.machine.warnings if w.split(";")[0] not in waits]
        self.log_warnings()
        return Reread(wait_from, no_node)

    def _may_go_ahead(self, block: Block) -> bool:
        group = block.group
        return group is not None and (group.dynamic or (group.kind == DIMM and self.found.e820 is not None))

    def refresh_balloons(self) -> None:
        self.machine.balloons = read_balloons(self.backend)
        self.balloons_at = time.monotonic() + BALLOON_RECHECK

    def log_warnings(self) -> None:
        for warning in self.machine.warnings:
            log.warning("%s", warning)
        self.machine.warnings.clear()

    def save(self, everything: bool = False) -> None:
        """What a restart in this boot must know: what changed (EVERYTHING: all)."""
        if everything or self.handled.dirty:
            self.handled.save()
        if self.facts != self._saved_facts and self.state.save(FACTS, {"facts": self.facts}):
            self._saved_facts = copy.deepcopy(self.facts)  # a failed save is tried again
