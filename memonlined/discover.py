"""Discovery: read the machine through a Backend into a Machine.

The kernel does not expose memory groups or early memory, so both are
reconstructed here (KERNEL-NOTES section 4):
- a block under a top-level /proc/iomem resource named virtioN or daxX.Y
  belongs to that virtio-mem or dax/kmem device (always hot-plugged);
- a block with a firmware_node link to a PNP0C80 device belongs to that
  ACPI memory device (a DIMM);
- a block is early (boot) memory when the boot E820 table says RAM there
  and no driver manages it; without an E820 table, when it has no device.
"""

from __future__ import annotations

import bisect
import collections
import logging
import os
import re

from .backend import (ACPI_DEVICES, BOOT_PARAMS, Backend, HV_BALLOON_DRIVER, IOMEM, MEMINFO, MEMORY, OSRELEASE,
                      PARAMETERS, SETUP_DATA, VIRTIO_DEVICES, VIRTIO_MEM_DRIVER, VMSTAT, VMW_BALLOON,
                      XEN_BALLOON, ZONEINFO, block_dir)
from .model import DAX, DIMM, VIRTIO_MEM, Balloon, Block, Group, Machine, runs
from .parse import (ParseError, Resource, iomem_hidden, kmsg_message,
                    parse_block_size, parse_boot_e820, parse_iomem, parse_meminfo, parse_setup_data_e820, parse_state,
                    parse_valid_zones, parse_virtio_mem_probes, parse_vmstat, parse_zoneinfo)

log = logging.getLogger(__name__)

_VIRTIO = re.compile(r"^virtio\d+$")
_DAX = re.compile(r"^dax\d+\.\d+$")


# A block read before the kernel linked it to its node (the daemon waits for it).
NO_NODE_YET = "no node link yet"


class SystemDataError(Exception):
    """Global data memonlined cannot work without is missing or garbled."""


def _read_global(backend: Backend, rel: str, parse):
    try:
        return parse(backend.read(rel))
    except OSError as e:
        raise SystemDataError(f"{backend.path(rel)}: cannot read: {e.strerror}") from None
    except ParseError as e:
        raise SystemDataError(f"{backend.path(rel)}: {e}") from None


def _read_optional(backend: Backend, rel: str) -> str | None:
    try:
        return backend.read(rel).strip()
    except OSError:
        return None


class DriverRange(collections.namedtuple("DriverRange", "start end name kind")):
    """A virtio-mem or dax/kmem device's region in /proc/iomem: START, END
    (exclusive), NAME (virtioN, daxX.Y), KIND (VIRTIO_MEM or DAX)."""
    __slots__ = ()


def driver_resources(roots: list[Resource]) -> list[DriverRange]:
    """The virtio-mem and dax/kmem regions, sorted.
    virtio-mem regions are top-level; dax/kmem ones sit under their parent
    ("Soft Reserved", a namespace), so the whole tree is searched."""
    out = []
    stack = list(roots)
    while stack:
        res = stack.pop()
        if _VIRTIO.match(res.name):
            out.append(DriverRange(res.start, res.end + 1, res.name, VIRTIO_MEM))
        elif _DAX.match(res.name):
            out.append(DriverRange(res.start, res.end + 1, res.name, DAX))
        else:
            stack.extend(res.children)
    return sorted(out)


def _find(ranges: list[tuple], starts: list[int], addr: int) -> tuple | None:
    i = bisect.bisect_right(starts, addr) - 1
    if i >= 0 and addr < ranges[i][1]:
        return ranges[i]
    return None


def _overlaps(ranges: list[tuple[int, int]], starts: list[int], start: int, end: int) -> bool:
    i = bisect.bisect_right(starts, end - 1) - 1
    return i >= 0 and ranges[i][1] > start


def read_block_files(backend: Backend, index: int, node: int | None = None):
    """(state, valid_zones, node) of one block. Raises OSError (gone or
    unreadable) or ParseError (garbled); the caller says which file."""
    d = block_dir(index)
    # Only what a decision needs (phys_index always says the directory's number).
    state = parse_state(backend.read_attribute(f"{d}/state"))
    if node is None:
        node = backend.block_node(index)
        if node is None:
            # The kernel sends a block's add uevent before it sets the block's
            # node; reading valid_zones then oopses it (zone_for_pfn_range()
            # with NUMA_NO_NODE: seen in 6.1 guests). The link comes after the
            # node is set, so valid_zones is read only once the link is there.
            return state, (), None
    return state, parse_valid_zones(backend.read_attribute(f"{d}/valid_zones")), node


class Discovery:
    """What discover() read: the MACHINE, and the layout data (iomem, E820,
    virtio_mem probes) that classifying a block needs, so that the daemon
    can re-read single blocks without discovering everything again."""

    def __init__(self, backend: Backend, machine: Machine, facts: dict | None = None):
        self.backend = backend
        self.machine = machine
        # What was learned in this boot, kept by the daemon in its state
        # directory: virtio-mem units ({"virtio-mem": {name: fact}}: the
        # kernel log wraps) and, without an E820 table, the boot blocks.
        self.facts = facts if facts is not None else {}
        self.boot_blocks: set[int] = set()
        self.e820: list[tuple[int, int]] | None = None
        self.drivers: list[DriverRange] = []
        self.hotplug_ram: list[tuple[int, int]] = []  # [start, end) of top-level System RAM not in E820
        self.probes = {}
        self._driver_starts: list[int] = []
        self._e820_starts: list[int] = []
        self._ram_starts: list[int] = []

    def read_layout(self) -> None:
        """(Re)read /proc/iomem, and the boot E820 table once. Raises SystemDataError."""
        iomem = _read_global(self.backend, IOMEM, parse_iomem)
        if iomem_hidden(iomem):
            raise SystemDataError(f"{self.backend.path(IOMEM)}: addresses are hidden (all zero); "
                                  "memonlined needs CAP_SYS_ADMIN (run it as root)")
        if self.e820 is None and self.backend.exists(BOOT_PARAMS):
            rel = BOOT_PARAMS
            try:
                e820 = parse_boot_e820(self.backend.read_bytes(rel))
                for node in sorted(self.backend.listdir(SETUP_DATA), key=lambda n: (len(n), n)):
                    rel = f"{SETUP_DATA}/{node}"
                    e820 += parse_setup_data_e820(self.backend.read(f"{rel}/type"),
                                                  self.backend.read_bytes(f"{rel}/data"))
            except OSError as e:
                raise SystemDataError(f"{self.backend.path(rel)}: cannot read: {e.strerror}") from None
            except ParseError as e:
                raise SystemDataError(f"{self.backend.path(rel)}: {e}") from None
            self.e820 = sorted(e820)
        self.drivers = driver_resources(iomem)
        self._driver_starts = [r.start for r in self.drivers]
        # Top-level System RAM the boot E820 table does not list: hot-plugged
        # ranges (one per ACPI DIMM range; also Hyper-V and Xen balloon
        # memory, which is in no memory group).
        self.hotplug_ram = []
        if self.e820 is not None:
            self._e820_starts = [r[0] for r in self.e820]
            self.hotplug_ram = [(r.start, r.end + 1) for r in iomem if r.name == "System RAM"
                                and not _overlaps(self.e820, self._e820_starts, r.start, r.end + 1)]
        self._ram_starts = [r[0] for r in self.hotplug_ram]

    def in_driver_range(self, index: int) -> bool:
        """Does the block lie in a virtio-mem or dax region already known? Then
        /proc/iomem has nothing new to say about it."""
        return _find(self.drivers, self._driver_starts, index * self.machine.block_size) is not None

    def forget_device(self, name: str) -> None:
        """Its last block is gone: the next device of that name is probed anew."""
        self.probes.pop(name, None)
        self.facts.get("virtio-mem", {}).pop(name, None)

    def read_probes(self) -> None:
        # Of a log of thousands of records only the driver's few are parsed.
        self.probes = parse_virtio_mem_probes([kmsg_message(r) for r in self.backend.kernel_log() if "virtio_mem " in r])

    def read_block(self, index: int, node: int | None = None) -> Block | None:
        """Read and classify one block; None (with a warning where worth one)
        when it is gone, unreadable or garbled. NODE: its node if known."""
        machine = self.machine
        try:
            state, valid_zones, node = read_block_files(self.backend, index, node)
        except FileNotFoundError as e:
            if not self.backend.exists(block_dir(index)):
                return None  # removed while we looked (virtio-mem unplug): nothing to do
            machine.warnings.append(f"{e.filename}: cannot read: {e.strerror}; memory{index} skipped")
            return None
        except OSError as e:
            machine.warnings.append(f"{self.backend.path(block_dir(index))}: cannot read: {e.strerror}; skipped")
            return None
        except ParseError as e:
            machine.warnings.append(f"{self.backend.path(block_dir(index))}: {e}; skipped")
            return None
        if node is None:
            machine.warnings.append(f"memory{index}: {NO_NODE_YET}; skipped")
            return None
        start = index * machine.block_size
        res = _find(self.drivers, self._driver_starts, start)
        if res is not None:
            group = machine.groups.get(res.name)
            if group is None:
                group = machine.add_group(self._driver_group(res, node))
            return Block(index, state, node, valid_zones, False, group)
        # The link is read only where the address does not already tell.
        firmware = None
        if self.e820 is not None:
            early = _overlaps(self.e820, self._e820_starts, start, start + machine.block_size)
        else:
            firmware = self.backend.readlink(f"{block_dir(index)}/firmware_node")
            early = firmware is None and index in self.boot_blocks
        if early:
            # Boot memory, even where an ACPI memory device describes it: the
            # kernel put it in no group (add_memory() failed with -EEXIST).
            return Block(index, state, node, valid_zones, True, None)
        if firmware is None:
            firmware = self.backend.readlink(f"{block_dir(index)}/firmware_node")
        group = None
        if firmware is not None and "PNP0C80" in firmware:
            name = os.path.basename(firmware)
            group = machine.groups.get(name)
            if group is None:
                group = machine.add_group(Group(name, DIMM, node, dynamic=False))
        # Else memory in no group: Hyper-V or Xen balloon memory, or a DIMM
        # whose links are not there yet (the daemon waits for them: unlinked()).
        return Block(index, state, node, valid_zones, False, group)

    def unlinked(self, block: Block) -> bool:
        """Is this hot-plugged memory that may be an ACPI DIMM still being
        added (its blocks come before its firmware_node links)?"""
        if block.group is not None or block.early:
            return False
        if self.e820 is not None and _find(self.hotplug_ram, self._ram_starts,
                                           block.index * self.machine.block_size) is None:
            return False
        return any(n.startswith("PNP0C80:") for n in self.backend.listdir(ACPI_DEVICES))

    def find_boot_blocks(self) -> None:
        """Without an E820 table: the boot blocks are those online with no
        device when first looked at in this boot (the kernel onlines boot
        memory itself; an offline block without a device is hot-plugged,
        such as a DIMM whose firmware_node links are not there yet)."""
        known = self.facts.get("boot_blocks")
        if isinstance(known, list):
            self.boot_blocks = {i for first, last in known for i in range(first, last + 1)}
            return
        for index in self.backend.block_indexes():
            d = block_dir(index)
            try:
                online = parse_state(self.backend.read(f"{d}/state")) != "offline"
            except (OSError, ParseError):
                continue
            if online and self.backend.readlink(f"{d}/firmware_node") is None:
                self.boot_blocks.add(index)
        self.facts["boot_blocks"] = [list(run) for run in runs(self.boot_blocks)]

    def _driver_group(self, res, node) -> Group:
        start, end, name, kind = res
        block_size = self.machine.block_size
        if kind == DAX:
            # One static group per dax device over all its ranges (dax/kmem.c).
            size = sum(r.end - r.start for r in self.drivers if r.name == name)
            return Group(name, DAX, node, dynamic=False, max_pages=size // self.machine.page_size)
        if name not in self.probes:
            self.read_probes()
        probe = self.probes.get(name)
        unit = probe.unit_bytes if probe else None
        # The same device: its name, region, and sysfs directory (a device
        # replaced under the same name at the same address has a new one).
        key = {"start": start, "end": end, "instance": self.backend.instance(f"{VIRTIO_DEVICES}/{name}")}
        known = self.facts.setdefault("virtio-mem", {})
        fact = known.get(name)
        if unit is not None:
            if fact != {**key, "unit": unit}:
                known[name] = {**key, "unit": unit}
        elif fact is not None and {k: fact.get(k) for k in key} == key and isinstance(fact.get("unit"), int):
            unit = fact["unit"]
        else:
            self.machine.warnings.append(f"{name}: its virtio_mem probe lines are not in the kernel log; "
                                         "assuming the unit is one memory block (SBM)")
            unit = block_size
        return Group(name, VIRTIO_MEM, node, dynamic=True, unit_pages=max(unit, block_size) // self.machine.page_size)

    def size_dimms(self) -> None:
        """A DIMM's max_pages is the whole device, boot parts included
        (acpi_memhotplug.c): its linked blocks, or more where its /proc/iomem
        range says so (links that are not all there yet)."""
        pages: dict[str, int] = {}
        ranges: dict[str, set] = {}
        for block in self.machine.blocks.values():
            group = block.group
            if group is not None and group.kind == DIMM:
                pages[group.name] = pages.get(group.name, 0) + self.machine.block_pages
                ram = _find(self.hotplug_ram, self._ram_starts, block.index * self.machine.block_size)
                if ram is not None:
                    ranges.setdefault(group.name, set()).add(ram)
        for name, group in self.machine.groups.items():
            if group.kind == DIMM:
                in_iomem = sum(end - start for start, end in ranges.get(name, ())) // self.machine.page_size
                group.max_pages = max(pages.get(name, 0), in_iomem)


# include/uapi/linux/virtio_ids.h, as /sys/bus/virtio/devices/*/device says them
VIRTIO_ID_BALLOON = "0x0005"
VIRTIO_ID_MEM = "0x0018"


def _virtio_devices(backend: Backend, device_id: str, bound: bool) -> list[str]:
    """The virtio devices of DEVICE_ID whose driver is (BOUND) or is not bound."""
    names = []
    for name in backend.listdir(VIRTIO_DEVICES):
        try:
            device = backend.read(f"{VIRTIO_DEVICES}/{name}/device").strip()
        except OSError:
            continue
        if device == device_id and backend.exists(f"{VIRTIO_DEVICES}/{name}/driver") == bound:
            names.append(name)
    return sorted(names)


def unbound_virtio_mem(backend: Backend) -> list[str]:
    """virtio-mem devices whose driver is not bound yet: at boot udev loads
    virtio_mem while memonlined starts, and the device's memory comes then."""
    return _virtio_devices(backend, VIRTIO_ID_MEM, bound=False)


def memory_now(backend: Backend) -> dict[str, int]:
    """MemTotal and MemAvailable in bytes ({} when proc/meminfo is unreadable)."""
    try:
        info = parse_meminfo(backend.read(MEMINFO))
        return {"memory_total": info["MemTotal"], "memory_available": info["MemAvailable"]}
    except (OSError, ParseError, KeyError):
        return {}


def read_balloons(backend: Backend) -> list[Balloon]:
    """The balloon drivers bound now. Whether balloon pages migrate is
    /proc/vmstat's balloon_migrate, there exactly when the kernel has balloon
    compaction (CONFIG_BALLOON_COMPACTION, BALLOON_MIGRATION in 7.x), which
    virtio_balloon uses; without balloon counters at all (no vmstat, or no
    VM event counters) it is unknown. hv_balloon and Xen's balloon take
    GFP_HIGHUSER pages, and vmw_balloon its 2 MiB pages without
    __GFP_MOVABLE: never migrating. balloon_inflate minus balloon_deflate
    counts the pages of the drivers using balloon compaction's lists. A tree
    that is not what sysfs looks like gives a warning and no balloons: this
    is never worth a start-up."""
    try:
        return _read_balloons(backend)
    except OSError as e:
        log.warning("%s: cannot read: %s; taking it that no balloon driver is bound",
                    e.filename or "a balloon driver's directory", e.strerror)
        return []


def _read_balloons(backend: Backend) -> list[Balloon]:
    try:
        vmstat = parse_vmstat(backend.read(VMSTAT))
    except (OSError, ParseError):
        vmstat = {}
    counted = "balloon_inflate" in vmstat and "balloon_deflate" in vmstat
    migrates = ("balloon_migrate" in vmstat) if counted else None
    inflated = vmstat["balloon_inflate"] - vmstat["balloon_deflate"] if counted else None
    balloons = [Balloon("virtio_balloon", name, migrates, inflated)
                for name in _virtio_devices(backend, VIRTIO_ID_BALLOON, bound=True)]
    if backend.exists(VMW_BALLOON):
        balloons.append(Balloon("vmw_balloon", "-", False, inflated))
    for name in backend.listdir(HV_BALLOON_DRIVER):
        if name != "module" and backend.readlink(f"{HV_BALLOON_DRIVER}/{name}") is not None:
            balloons.append(Balloon("hv_balloon", name, False, None))
    if backend.exists(XEN_BALLOON):
        balloons.append(Balloon("xen_balloon", "xen_memory0", False, None))
    return balloons


def virtio_mem_driver(backend: Backend) -> bool:
    """Is the virtio_mem driver registered (its module loaded)?"""
    return backend.exists(VIRTIO_MEM_DRIVER)


def read_kernel_params(backend: Backend) -> dict[str, str]:
    """The memory_hotplug module's parameters (5.15+: the kernel's own policy)."""
    params = {}
    for name in backend.listdir(PARAMETERS):
        value = _read_optional(backend, f"{PARAMETERS}/{name}")
        if value is not None:
            params[name] = value
    return params


def discover(backend: Backend, facts: dict | None = None) -> Discovery:
    """Read everything the policy needs. FACTS: what an earlier discovery of
    this boot learned about devices (Discovery.facts). Raises SystemDataError
    on bad global data; a bad block is skipped with a warning in
    Machine.warnings."""
    block_size = _read_global(backend, f"{MEMORY}/block_size_bytes", parse_block_size)
    zoneinfo = _read_global(backend, ZONEINFO, parse_zoneinfo)
    machine = Machine(block_size, backend.page_size(zoneinfo))
    found = Discovery(backend, machine, facts)
    found.read_layout()
    machine.auto_online_blocks = _read_optional(backend, f"{MEMORY}/auto_online_blocks")
    machine.kernel_release = _read_optional(backend, OSRELEASE)
    machine.kernel_params = read_kernel_params(backend)
    machine.balloons = read_balloons(backend)
    if found.e820 is None:
        machine.warnings.append("no boot E820 table (sys/kernel/boot_params/data): taking memory without a "
                                "device that was online at the first look in this boot as boot memory")
        found.find_boot_blocks()
    if found.drivers:
        found.read_probes()
    nodes = backend.node_blocks()
    for index in backend.block_indexes():
        block = found.read_block(index, nodes.get(index))
        if block is not None:
            machine.blocks[index] = block
    found.size_dimms()
    machine.account(zoneinfo)
    return found
