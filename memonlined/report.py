"""What the model tells a user after the decisions: per hot-plugged device
and per node, how much memory is in ZONE_MOVABLE, in kernel zones and
offline, and how much could be given back (unplugged) now; the balloons.
Pure: status, explain, the daemon's STATUS= and journal, and the metrics
file all say these same figures.

The estimate, and its limits. Offlining memory migrates what is in use in
it to free memory anywhere else (mm/memory_hotplug.c do_migrate_range()
prefers other nodes), so after giving back X bytes the rest must hold what
was in use: X <= MemAvailable, the kernel's own estimate of what can be
allocated without swapping (free memory plus reclaimable caches, less the
watermarks). Offline blocks cost nothing to give back. Only ZONE_MOVABLE is
counted: memory in kernel zones holds unmovable allocations at any time
(virtio-mem may still get some free kernel-zone memory back, never
promised). A DIMM or a dax device goes as a whole: any block in a kernel
zone keeps all of it. Blocks are counted whole: a virtio-mem block only
partly plugged (SBM) counts as all removable. Per node, each figure is
bounded by the whole system's MemAvailable: do not add nodes up (the
system's own figure is unpluggable_now()). What the estimate cannot see: pages pinned for a long
time or under I/O, which make offlining retry or fail; memory the kernel
cannot reclaim in time; and the hypervisor, which decides how much of a
virtio-mem request it asks back.
"""

from __future__ import annotations

import collections

from .model import Machine
from .parse import format_size


class DeviceFigures(collections.namedtuple("DeviceFigures", "device kind node movable kernel offline removable")):
    """A hot-plugged device's memory, in bytes; REMOVABLE: what could be
    unplugged with enough free memory elsewhere."""
    __slots__ = ()

    def line(self) -> str:
        return (f"{self.device}: Movable {format_size(self.movable)}, kernel {format_size(self.kernel)}, "
                f"offline {format_size(self.offline)}; removable {format_size(self.removable)}")


class NodeFigures(collections.namedtuple("NodeFigures", "node movable kernel offline removable unpluggable_now")):
    """A node's hot-plugged memory, in bytes; UNPLUGGABLE_NOW: what could be
    given back now (None: MemAvailable unknown)."""
    __slots__ = ()


def device_figures(machine: Machine, names=None) -> list[DeviceFigures]:
    """Every device's figures, or those of NAMES."""
    bs, ps = machine.block_size, machine.page_size
    offline: dict[str, int] = {}
    for block in machine.blocks.values():
        if block.group is not None and not block.online:
            offline[block.group.name] = offline.get(block.group.name, 0) + bs
    out = []
    for name, g in sorted(machine.groups.items()):
        if names is not None and name not in names:
            continue
        movable, kernel, off = g.movable_pages * ps, g.kernel_pages * ps, offline.get(name, 0)
        # A static device (DIMM, dax) goes as a whole: one kernel block keeps it all.
        removable = movable + off if g.dynamic or not kernel else 0
        out.append(DeviceFigures(name, g.kind, g.node, movable, kernel, off, removable))
    return out


def _give_back(devices: list[DeviceFigures], available: int | None) -> "tuple[int, int | None]":
    """(removable, unpluggable now) of DEVICES together: their removable
    offline memory costs nothing, the online part must fit MemAvailable."""
    removable = sum(d.removable for d in devices)
    free = sum(d.offline for d in devices if d.removable)
    return removable, None if available is None else free + min(removable - free, available)


def node_figures(devices: list[DeviceFigures], available: int | None, nodes=()) -> list[NodeFigures]:
    """Per node of DEVICES, and of NODES (one without a device: zeros);
    AVAILABLE: MemAvailable in bytes (or None)."""
    by_node: dict[int | None, list[DeviceFigures]] = {nid: [] for nid in nodes}
    for d in devices:
        by_node.setdefault(d.node, []).append(d)
    out = []
    for nid in sorted(by_node, key=lambda k: (k is None, k or 0)):
        ds = by_node[nid]
        out.append(NodeFigures(nid, sum(d.movable for d in ds), sum(d.kernel for d in ds),
                               sum(d.offline for d in ds), *_give_back(ds, available)))
    return out


def unpluggable_now(devices: list[DeviceFigures], available: int | None) -> int | None:
    """The whole system's: what giving back from every node at once leaves room for."""
    return _give_back(devices, available)[1]


def balloon_warning(machine: Machine) -> str | None:
    """The cover letter's future work 3: a balloon that cannot migrate its
    pages beside memory in ZONE_MOVABLE. None when there is nothing to say."""
    balloon = machine.unmovable_balloon()
    if balloon is None:
        return None
    ps = machine.page_size
    movable = sum(n.movable for n in machine.nodes.values()) * ps
    kernel = sum(n.kernel_early + n.hotplugged_kernel for n in machine.nodes.values()) * ps
    why = {"hv_balloon": "Hyper-V's balloon takes GFP_HIGHUSER pages",
           "xen_balloon": "Xen's balloon takes GFP_HIGHUSER pages",
           "vmw_balloon": "its 2 MiB pages are not movable"}.get(
        balloon.driver, "this kernel has no balloon compaction (no balloon_migrate in /proc/vmstat)")
    return (f"{balloon.name} is bound and its pages cannot migrate ({why}): it inflates from kernel zones "
            f"only ({format_size(kernel)}), not from ZONE_MOVABLE ({format_size(movable)}); "
            "unmovable_balloon = kernel puts hot-plugged memory in kernel zones while it is bound")


def balloons_json(machine: Machine) -> list[dict]:
    ps = machine.page_size
    return [{"driver": b.driver, "device": b.device, "migrates": b.migrates,
             "inflated_bytes": None if b.inflated_pages is None else b.inflated_pages * ps}
            for b in machine.balloons]


def summary(machine: Machine, available: int | None) -> str:
    """One line for STATUS= and the log."""
    devices = device_figures(machine)
    if not devices:
        return "no hot-plugged devices"
    movable = sum(d.movable for d in devices)
    kernel = sum(d.kernel for d in devices)
    now = unpluggable_now(devices, available)
    return (f"hot-plugged Movable {format_size(movable)}, kernel {format_size(kernel)}"
            + (f", could give back {format_size(now)} now" if now is not None else ""))
