"""The zone decision: the kernel's auto-movable policy, plus memonlined's own knobs.

Pure functions over a Machine; no I/O. The auto-movable part keeps the
shape and the integer arithmetic of mm/memory_hotplug.c (v6.1):
auto_movable_zone_for_pfn() is zone_for_block(), auto_movable_can_online_movable()
is can_online_movable().
"""

from __future__ import annotations

import collections
from types import MappingProxyType
from collections.abc import Iterable

from .model import Block, Group, Machine, NodeStats
from .parse import MOVABLE

AUTO_MOVABLE = "auto-movable"
ZONE_POLICIES = (AUTO_MOVABLE, "movable", "kernel")
OTHER = "other"  # the [overrides] key for memory with no device


# The decision's configuration (see etc/memonlined.conf) and its defaults:
# RATIO is auto_movable_ratio (percent), NUMA_AWARE auto_movable_numa_aware;
# KERNEL_FLOOR_MIB: per node, hot-plugged kernel memory to reach before
# anything goes Movable; OVERRIDES: device kind or name -> zone policy;
# UNMOVABLE_BALLOON = "kernel": no Movable while a balloon that cannot
# migrate is bound. config.Config has these fields and the daemon's.
SETTINGS = {"policy": AUTO_MOVABLE, "ratio": 301, "numa_aware": True, "kernel_floor_mib": 0,
            "overrides": MappingProxyType({}), "unmovable_balloon": "warn"}
Settings = collections.namedtuple("Settings", SETTINGS, defaults=SETTINGS.values())


def needs_userspace(settings: Settings) -> bool:
    """Does this configuration ask for something the kernel's policy cannot do?"""
    return (settings.policy != AUTO_MOVABLE or bool(settings.overrides) or bool(settings.kernel_floor_mib)
            or settings.unmovable_balloon != "warn")


class Check(collections.namedtuple("Check", "node kernel_early movable req_kernel_early dyn_movable "
                                             "group_kernel nr_pages limit ok")):
    """One ratio check with every number that went into it (pages): NODE
    (None: the whole system); KERNEL_EARLY and MOVABLE, early kernel and
    movable pages before the adjustments; REQ_KERNEL_EARLY, the early kernel
    pages other dynamic groups need for their Movable memory; DYN_MOVABLE,
    those groups' Movable pages; GROUP_KERNEL, this dynamic group's own
    kernel pages, which back its Movable memory; NR_PAGES, the pages that
    would go Movable; LIMIT, ratio * adjusted early kernel / 100; OK."""
    __slots__ = ()

    @property
    def used(self) -> int:
        return self.movable - self.dyn_movable + self.nr_pages


class Decision(collections.namedtuple("Decision", "block zone device reason checks", defaults=((),))):
    """Where BLOCK goes (ZONE), its DEVICE, the REASON in words, and the CHECKS behind it."""
    __slots__ = ()

    @property
    def movable(self) -> bool:
        return self.zone == MOVABLE


def _mib(pages: int, page_size: int) -> str:
    return f"{pages * page_size // (1 << 20)}M"


def can_online_movable(stats: NodeStats, dynamic_groups: Iterable[Group], group: Group | None,
                       nr_pages: int, ratio: int, node: int | None = None) -> Check:
    """Could NR_PAGES more go Movable and stay within RATIO? (auto_movable_can_online_movable)

    STATS are the node's (or the whole system's) counters; DYNAMIC_GROUPS the
    dynamic groups on that node (or all of them).
    """
    req = dyn_movable = 0
    for other in dynamic_groups:
        if other is group or not ratio:
            continue
        # Early kernel pages this group needs for its Movable pages (auto_movable_stats_account_group).
        pages = other.movable_pages * 100 // ratio - other.kernel_pages
        if pages > 0:
            req += pages
        dyn_movable += other.movable_pages
    group_kernel = group.kernel_pages if group is not None and group.dynamic else 0
    if stats.kernel_early <= req:
        return Check(node, stats.kernel_early, stats.movable, req, dyn_movable, group_kernel, nr_pages, 0, False)
    kernel_early = stats.kernel_early - req + group_kernel
    limit = ratio * kernel_early // 100
    ok = stats.movable - dyn_movable + nr_pages <= limit
    return Check(node, stats.kernel_early, stats.movable, req, dyn_movable, group_kernel, nr_pages, limit, ok)


def system_stats(machine: Machine) -> NodeStats:
    total = NodeStats()
    for node in machine.nodes.values():
        total.kernel_early += node.kernel_early
        total.movable += node.movable
        total.hotplugged_kernel += node.hotplugged_kernel
    return total


def _pages_to_online(machine: Machine, block: Block) -> "tuple[int | None, str]":
    """How many pages the decision is about (the remaining part of the device or
    unit), or None when some of it is already in a kernel zone."""
    group = block.group
    ps = machine.page_size
    block_pages = machine.block_pages
    if group is not None and not group.dynamic:
        if group.kernel_pages:
            return None, f"{group.name} already has memory in a kernel zone: the whole device stays there"
        return group.max_pages - group.movable_pages, f"the rest of {group.name}"
    if group is None or group.unit_pages == block_pages:
        return block_pages, "this block"
    unit_blocks = group.unit_pages // block_pages
    first = block.index - block.index % unit_blocks
    online = 0
    for index in range(first, first + unit_blocks):
        other = machine.blocks.get(index)
        if other is None or other.zone is None:
            continue
        if other.zone != MOVABLE:
            return None, f"its {_mib(group.unit_pages, ps)} unit of {group.name} already has memory in a kernel zone"
        online += block_pages
    return group.unit_pages - online, f"the rest of its {_mib(group.unit_pages, ps)} unit of {group.name}"


def zone_policy_for(settings: Settings, block: Block) -> "tuple[str, str]":
    """The zone policy for a block's device: an override by device name, then by
    kind, then the global policy. Returns (policy, where it came from)."""
    group = block.group
    if group is not None and group.name in settings.overrides:
        return settings.overrides[group.name], f"override for {group.name}"
    kind = group.kind if group is not None else OTHER
    if kind in settings.overrides:
        return settings.overrides[kind], f"override for {kind} devices"
    return settings.policy, "policy"


def zone_for_block(machine: Machine, block: Block, settings: Settings) -> Decision:
    """The zone an offline block should go to now (auto_movable_zone_for_pfn)."""
    kernel_zone = block.kernel_zone
    device = block.device
    ps = machine.page_size

    def decide(movable: bool, reason: str, checks=()) -> Decision:
        if movable and MOVABLE not in block.valid_zones:
            return Decision(block.index, kernel_zone, device,
                            f"{reason}; but valid_zones does not offer Movable", list(checks))
        return Decision(block.index, MOVABLE if movable else kernel_zone, device, reason, list(checks))

    policy, source = zone_policy_for(settings, block)
    balloon = machine.unmovable_balloon() if source == "policy" and settings.unmovable_balloon == "kernel" else None
    if balloon is not None:
        return decide(False, f"{balloon.name} is bound and its pages cannot migrate: kernel zone "
                             "(unmovable_balloon = kernel)")
    if source == "policy" and settings.kernel_floor_mib:
        floor = settings.kernel_floor_mib * (1 << 20) // ps
        have = machine.node(block.node).hotplugged_kernel
        if have < floor:
            return decide(False, f"kernel floor: node {block.node} has {_mib(have, ps)} of hot-plugged "
                                 f"kernel memory, below the floor of {_mib(floor, ps)}")
    if policy == "movable":
        return decide(True, source + ": movable")
    if policy == "kernel":
        return decide(False, source + ": kernel")
    if not settings.ratio:
        return decide(False, "ratio 0: everything to a kernel zone")

    nr_pages, what = _pages_to_online(machine, block)
    if nr_pages is None:
        return decide(False, what)
    checks = [can_online_movable(system_stats(machine), machine.dynamic_groups(), block.group,
                                 nr_pages, settings.ratio)]
    if checks[0].ok and settings.numa_aware:
        checks.append(can_online_movable(machine.node(block.node), machine.dynamic_groups(block.node),
                                         block.group, nr_pages, settings.ratio, block.node))
    failed = next((c for c in checks if not c.ok), None)
    if failed is None:
        return decide(True, f"{what} fits: " + "; ".join(_describe(c, settings.ratio, ps) for c in checks), checks)
    return decide(False, f"{what} does not fit: {_describe(failed, settings.ratio, ps)}", checks)


def _describe(check: Check, ratio: int, ps: int) -> str:
    where = "system" if check.node is None else f"node {check.node}"
    if check.limit == 0 and not check.ok and check.kernel_early <= check.req_kernel_early:
        return (f"{where}: early kernel {_mib(check.kernel_early, ps)} is all needed by other "
                f"dynamic groups ({_mib(check.req_kernel_early, ps)})")
    kernel = check.kernel_early - check.req_kernel_early + check.group_kernel
    op = "<=" if check.ok else ">"
    return (f"{where}: Movable {_mib(check.movable - check.dyn_movable, ps)} + {_mib(check.nr_pages, ps)} "
            f"{op} {ratio}% of kernel {_mib(kernel, ps)} = {_mib(check.limit, ps)}")


def movable_headroom(machine: Machine, settings: Settings, node: int | None = None) -> int:
    """Pages that could still go Movable without breaking the ratio (for memory of
    no device; a dynamic group's own kernel memory buys it more)."""
    def room(stats, groups, nid):
        check = can_online_movable(stats, groups, None, 0, settings.ratio, nid)
        return max(0, check.limit - check.used) if check.ok else 0

    total = room(system_stats(machine), machine.dynamic_groups(), None)
    if node is None or not settings.numa_aware:
        return total
    return min(total, room(machine.node(node), machine.dynamic_groups(node), node))
