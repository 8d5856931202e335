"""What memonlined knows about the machine: blocks, memory groups, nodes.

Plain data, filled by discover.py and updated by the planner as it decides.
Sizes are in pages (Machine.page_size: 4 KiB on x86, 64 KiB on some arm64
and ppc64 kernels), like the kernel's counters.
"""

from __future__ import annotations

import collections

from .parse import MOVABLE, PAGE_SIZE, zone_tuple

# Device kinds, as used in the configuration's [overrides].
DIMM = "dimm"
VIRTIO_MEM = "virtio-mem"
DAX = "dax"


def runs(indexes) -> list[tuple[int, int]]:
    """Block numbers as (first, last) runs of consecutive ones."""
    out: list[tuple[int, int]] = []
    for i in sorted(indexes):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def format_runs(indexes) -> str:
    """'48-55,60': block numbers as lsmem writes them."""
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs(indexes))


# Plain classes with __slots__ and namedtuples, not dataclasses: those
# import inspect, ast and dis (1 MiB resident, 0.15 s at boot under TCG).


class Group:
    """A memory device: the kernel's memory group (include/linux/memory.h).

    Static (a DIMM, a dax device) with max_pages, or dynamic (virtio-mem)
    with unit_pages. kernel_pages and movable_pages are the kernel's
    present_kernel_pages and present_movable_pages.
    """
    __slots__ = ("name", "kind", "node", "dynamic", "max_pages", "unit_pages", "kernel_pages", "movable_pages")

    def __init__(self, name: str, kind: str, node: int | None, dynamic: bool, max_pages: int = 0,
                 unit_pages: int = 0):
        self.name, self.kind, self.node, self.dynamic = name, kind, node, dynamic
        self.max_pages, self.unit_pages = max_pages, unit_pages
        self.kernel_pages = self.movable_pages = 0

    def __repr__(self) -> str:
        return f"Group({self.name!r}, {self.kind}, node {self.node}, kernel {self.kernel_pages}, " \
               f"movable {self.movable_pages})"


class Block:
    __slots__ = ("index", "state", "node", "valid_zones", "early", "group", "instance")

    def __init__(self, index: int, state: str, node: int | None, valid_zones: tuple[str, ...], early: bool,
                 group: Group | None = None):
        self.index = index
        self.state = state                # online | offline | going-offline
        self.node = node
        self.valid_zones = valid_zones    # online: (its zone,); offline: the allowed zones
        self.early = early                # boot memory, not hot-plugged
        self.group = group                # its memory device, None for boot memory and unknown memory
        self.instance: int | None = None  # its sysfs directory's inode number when read (state.py)

    def __repr__(self) -> str:
        return f"Block({self.index}, {self.state}, node {self.node}, {self.valid_zones}, {self.device})"

    @property
    def online(self) -> bool:
        """Online, or going offline (still present in its zone until that ends)."""
        return self.state != "offline"

    @property
    def zone(self) -> str | None:
        return self.valid_zones[0] if self.online else None

    @property
    def kernel_zone(self) -> str:
        """The kernel zone online_kernel would pick: the first non-Movable valid zone."""
        for zone in self.valid_zones:
            if zone != MOVABLE:
                return zone
        return "Normal"

    @property
    def device(self) -> str:
        return self.group.name if self.group else ("boot" if self.early else "-")


class Balloon(collections.namedtuple("Balloon", "driver device migrates inflated_pages")):
    """A memory balloon driver bound in this guest. One whose pages cannot
    migrate allocates them from kernel zones only (GFP_HIGHUSER): memory
    put in ZONE_MOVABLE is no use to it, and it starves the kernel zones.

    DRIVER: virtio_balloon, vmw_balloon, hv_balloon, xen_balloon; DEVICE:
    virtio3, a VMBus device, xen_memory0, "-" for vmw_balloon; MIGRATES: its
    pages are movable (may come from ZONE_MOVABLE), None: unknown;
    INFLATED_PAGES: pages in the balloon now, where /proc/vmstat counts them."""
    __slots__ = ()

    @property
    def name(self) -> str:
        return self.driver if self.device == "-" else f"{self.driver} ({self.device})"


class NodeStats:
    """The ratio's two sides on one node (mm/memory_hotplug.c auto_movable_stats)."""
    __slots__ = ("kernel_early", "movable", "hotplugged_kernel")

    def __init__(self, kernel_early: int = 0, movable: int = 0, hotplugged_kernel: int = 0):
        self.kernel_early = kernel_early  # early present pages in kernel zones, minus CMA
        self.movable = movable            # present pages in ZONE_MOVABLE, plus CMA
        self.hotplugged_kernel = hotplugged_kernel  # hot-plugged present pages in kernel zones (the kernel floor)

    def __repr__(self) -> str:
        return f"NodeStats({self.kernel_early}, {self.movable}, {self.hotplugged_kernel})"


class Machine:
    """The machine as discovered: blocks, memory groups, the ratio's counters
    per node. add_online and remove_online keep the counters true as blocks
    change, the way the kernel's own accounting does."""

    def __init__(self, block_size: int, page_size: int = PAGE_SIZE):
        self.block_size = block_size              # bytes
        self.page_size = page_size
        self.blocks: dict[int, Block] = {}
        self.groups: dict[str, Group] = {}
        self.nodes: dict[int, NodeStats] = {}
        self.auto_online_blocks: str | None = None
        self.kernel_params: dict[str, str] = {}
        self.kernel_release: str | None = None
        self.warnings: list[str] = []
        self.balloons: list[Balloon] = []
        self._dynamic: dict[int | None, list[Group]] = {}

    def add_group(self, group: Group) -> Group:
        self.groups[group.name] = group
        self._dynamic.clear()
        return group

    def drop_group(self, name: str) -> None:
        """A device went away with its last block: a device of the same name later is another one."""
        self.groups.pop(name, None)
        self._dynamic.clear()

    def node(self, nid: int | None) -> NodeStats:
        """A node's counters; a node not seen yet (it came online with its first
        memory, as CXL and far-memory nodes do) has none yet."""
        return self.nodes.get(nid) or NodeStats()

    def dynamic_groups(self, node: int | None = None) -> list[Group]:
        """The dynamic groups on NODE (None: all). Cached: asked for at every
        decision, while groups change only when devices come (add_group)."""
        if node not in self._dynamic:
            self._dynamic[node] = [g for g in self.groups.values()
                                   if g.dynamic and (node is None or g.node == node)]
        return self._dynamic[node]

    def unmovable_balloon(self) -> Balloon | None:
        """The first bound balloon whose pages are known not to migrate, if any."""
        return next((b for b in self.balloons if b.migrates is False), None)

    @property
    def block_pages(self) -> int:
        return self.block_size // self.page_size

    def add_online(self, block: Block, zone: str) -> None:
        """Account a block that went online in ZONE, as adjust_present_page_count() does."""
        block.state = "online"
        block.valid_zones = zone_tuple((zone,))
        self._account(block, zone, self.block_pages)

    def remove_online(self, block: Block) -> None:
        """Undo the accounting of an online block (it went offline or away)."""
        zone = block.zone
        if zone is not None:
            self._account(block, zone, -self.block_pages)
        block.state = "offline"

    def account(self, zoneinfo) -> None:
        """The counters from /proc/zoneinfo's present pages (ZONEINFO, parsed),
        once the blocks are read: zoneinfo cannot tell early from hot-plugged
        memory, so each online hot-plugged block is moved to its side."""
        for z in zoneinfo:
            node = self.nodes.setdefault(z.node, NodeStats())
            if z.zone == MOVABLE:
                node.movable += z.present
            elif z.zone != "Device":
                node.kernel_early += z.present - z.cma
                node.movable += z.cma
        for block in self.blocks.values():
            if block.online and not block.early:
                self._account(block, block.zone, -self.block_pages, as_early=True)
                self._account(block, block.zone, self.block_pages)
        for nid, node in sorted(self.nodes.items()):
            if node.kernel_early < 0:
                self.warnings.append(f"node {nid}: more hot-plugged kernel memory than /proc/zoneinfo "
                                     "shows present; taking its early kernel memory as 0")
                node.kernel_early = 0

    def _account(self, block: Block, zone: str, pages: int, as_early: bool = False) -> None:
        node = self.nodes.setdefault(block.node, NodeStats())
        movable = zone == MOVABLE
        early = as_early or block.early
        if movable:
            node.movable += pages
        elif early:
            node.kernel_early += pages
        else:
            node.hotplugged_kernel += pages
        if block.group is not None and not early:
            if movable:
                block.group.movable_pages += pages
            else:
                block.group.kernel_pages += pages
