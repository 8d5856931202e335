"""A fake Linux kernel (x86-64, v6.1) for memonlined's tests.

It does two things:

* builds, under a root directory, the /sys, /proc and /dev files that
  memory hot(un)plug shows on a real machine, in the kernel's own formats,
  and keeps them current as the state changes;
* reacts to writes of memory block ``state`` files as the kernel does,
  keeping the kernel's internal bookkeeping that user space cannot see
  (zone present/present_early/cma pages, memory groups, early sections) and
  deciding zones with a literal transliteration of mm/memory_hotplug.c
  (auto_movable_zone_for_pfn() and friends, v6.1).

It is the oracle the daemon's planner is checked against, so it must not
import anything from the ``memonlined`` package.  Standard library only.
"""

import contextlib
import errno
import os
import re
import shutil
import uuid
import struct

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
SECTION_SIZE_BITS = 27  # x86-64
PAGES_PER_SECTION = 1 << (SECTION_SIZE_BITS - PAGE_SHIFT)
MiB, GiB = 1 << 20, 1 << 30  # the sizes the tests and benchmarks speak in
MAX_DMA_PFN = (16 << 20) >> PAGE_SHIFT
MAX_DMA32_PFN = 1 << (32 - PAGE_SHIFT)
ULONG_MAX = (1 << 64) - 1

ZONE_DMA, ZONE_DMA32, ZONE_NORMAL, ZONE_MOVABLE, ZONE_DEVICE = range(5)
MAX_NR_ZONES = 5
ZONE_NAMES = ("DMA", "DMA32", "Normal", "Movable", "Device")
NUMA_NO_NODE = -1

MMOP_OFFLINE, MMOP_ONLINE, MMOP_ONLINE_KERNEL, MMOP_ONLINE_MOVABLE = range(4)
ONLINE_TYPE_TO_STR = ("offline", "online", "online_kernel", "online_movable")

E820_RAM, E820_RESERVED = 1, 2
E820_TYPE_NAMES = {E820_RAM: "System RAM", E820_RESERVED: "Reserved"}

# mm/page_alloc.c: sysctl_lowmem_reserve_ratio (DMA, DMA32, Normal, Movable, Device)
LOWMEM_RESERVE_RATIO = (256, 256, 32, 0, 0)

ACPI_MEMORY_BUS = "LNXSYSTM:00/LNXSYBUS:00/PNP0A06:04"

NODE_STAT_ITEMS = (
    "nr_inactive_anon", "nr_active_anon", "nr_inactive_file", "nr_active_file",
    "nr_unevictable", "nr_slab_reclaimable", "nr_slab_unreclaimable",
    "nr_isolated_anon", "nr_isolated_file", "workingset_nodes",
    "workingset_refault_anon", "workingset_refault_file",
    "workingset_activate_anon", "workingset_activate_file",
    "workingset_restore_anon", "workingset_restore_file",
    "workingset_nodereclaim", "nr_anon_pages", "nr_mapped", "nr_file_pages",
    "nr_dirty", "nr_writeback", "nr_writeback_temp", "nr_shmem",
    "nr_shmem_hugepages", "nr_shmem_pmdmapped", "nr_file_hugepages",
    "nr_file_pmdmapped", "nr_anon_transparent_hugepages", "nr_vmscan_write",
    "nr_vmscan_immediate_reclaim", "nr_dirtied", "nr_written",
    "nr_throttled_written", "nr_kernel_misc_reclaimable",
    "nr_foll_pin_acquired", "nr_foll_pin_released", "nr_kernel_stack",
    "nr_page_table_pages", "nr_sec_page_table_pages", "nr_swapcached",
    "pgpromote_success", "pgpromote_candidate",
)
ZONE_STAT_ITEMS = (
    "nr_free_pages", "nr_zone_inactive_anon", "nr_zone_active_anon",
    "nr_zone_inactive_file", "nr_zone_active_file", "nr_zone_unevictable",
    "nr_zone_write_pending", "nr_mlock", "nr_bounce", "nr_zspages",
    "nr_free_cma",
)
NUMA_EVENT_ITEMS = ("numa_hit", "numa_miss", "numa_foreign",
                    "numa_interleave", "numa_local", "numa_other")


def PFN_UP(x):
    return (x + PAGE_SIZE - 1) >> PAGE_SHIFT


def PFN_DOWN(x):
    return x >> PAGE_SHIFT


def ALIGN_DOWN(x, a):
    return x - x % a


def _align_up(x, a):
    return -(-x // a) * a


def online_type_from_str(buf):
    """drivers/base/memory.c mhp_online_type_from_str(): sysfs_streq()
    accepts exactly one trailing newline."""
    if isinstance(buf, bytes):
        buf = buf.decode("ascii", "replace")
    if buf.endswith("\n"):
        buf = buf[:-1]
    try:
        return ONLINE_TYPE_TO_STR.index(buf)
    except ValueError:
        return -errno.EINVAL


class Zone:
    """struct zone: only the fields memory hotplug looks at."""

    __slots__ = ("nid", "idx", "name", "zone_start_pfn", "spanned_pages",
                 "present_pages", "present_early_pages", "cma_pages",
                 "managed_pages")

    def __init__(self, nid, idx):
        self.nid, self.idx, self.name = nid, idx, ZONE_NAMES[idx]
        self.zone_start_pfn = self.spanned_pages = 0
        self.present_pages = self.present_early_pages = 0
        self.cma_pages = self.managed_pages = 0

    def zone_end_pfn(self):
        return self.zone_start_pfn + self.spanned_pages

    def zone_is_empty(self):
        return self.spanned_pages == 0

    def __repr__(self):
        return "<Zone node%d %s>" % (self.nid, self.name)


def zone_intersects(zone, start_pfn, nr_pages):
    """include/linux/mmzone.h zone_intersects()."""
    if zone.zone_is_empty():
        return False
    if start_pfn >= zone.zone_end_pfn() or start_pfn + nr_pages <= zone.zone_start_pfn:
        return False
    return True


def populated_zone(zone):
    return zone.present_pages != 0


class Node:
    """pg_data_t: the node's zones."""

    def __init__(self, nid):
        self.node_id = nid
        self.node_zones = [Zone(nid, i) for i in range(MAX_NR_ZONES)]


class MemoryGroup:
    """struct memory_group (include/linux/memory.h)."""

    def __init__(self, mgid, nid, is_dynamic, pages):
        self.mgid, self.nid, self.is_dynamic = mgid, nid, is_dynamic
        self.max_pages = 0 if is_dynamic else pages      # group->s.max_pages
        self.unit_pages = pages if is_dynamic else 0     # group->d.unit_pages
        self.present_kernel_pages = 0
        self.present_movable_pages = 0

    def __repr__(self):
        kind = "dynamic unit=%d" % self.unit_pages if self.is_dynamic else "static max=%d" % self.max_pages
        return "<MemoryGroup %d node%d %s kernel=%d movable=%d>" % (
            self.mgid, self.nid, kind, self.present_kernel_pages, self.present_movable_pages)


class MemoryBlock:
    """struct memory_block, plus what the sections under it record."""

    __slots__ = ("index", "nid", "group", "state", "zone", "early", "present",
                 "device", "nr_vmemmap_pages", "online_type", "start_pfn", "ino")

    def __init__(self, index, nid, pages_per_block, group=None, early=False,
                 present=None, device=None, nr_vmemmap_pages=0):
        self.index, self.nid, self.group = index, nid, group
        self.start_pfn = index * pages_per_block
        self.state = "offline"
        self.zone = None          # mem->zone: set when online and in one zone
        self.early = early        # early_section() of its sections
        self.present = pages_per_block if present is None else present
        self.device = device
        self.nr_vmemmap_pages = nr_vmemmap_pages  # mem->altmap->free
        self.online_type = MMOP_OFFLINE
        self.ino = None           # its sysfs directory's inode number (kernfs: never reused)


class Device:
    """A memory device: ACPI DIMM, virtio-mem or dax/kmem."""

    def __init__(self, name, kind, nid, start, size, group):
        self.name, self.kind, self.nid = name, kind, nid
        self.start, self.size, self.group = start, size, group
        self.blocks = set()
        self.linked = False
        self.extra = {}


class FakeKernel:
    """A fake x86-64 kernel rooted at ``root``; see the module docstring.

    ``boot_ram`` is a sequence of (start, size) on node 0, or a dict
    {node: [(start, size), ...]}.  A range starting at 0 gets the legacy
    PC layout of its first MiB (page 0 and 0x9fc00-0xfffff not RAM), so
    block 0 has holes and spans DMA and DMA32, as on real hardware.
    ``reserved`` (start, size) ranges go into the E820 table and cut holes
    in boot RAM; by default those of a QEMU 7.2 guest (including the top
    132 KiB of low RAM, so block 15 of a 4 GiB VM has a hole too).
    ``cma`` is {(node, zone_name): pages} of boot-time CMA.  ``nodes``
    adds online nodes without boot memory.  ``coldplug_dimms`` are DIMMs
    ACPI adds during boot (sizes, or add_dimm() keyword dicts).
    ``boot_acpi`` binds the boot blocks to ACPI memory devices (bare metal).

    Devices: add_dimm(), link_firmware_nodes(), remove_dimm(),
    add_virtio_mem(), virtio_mem_plug(), virtio_mem_unplug_block(),
    add_dax_kmem(), remove_block().  User space: write_state(),
    write_online(), set_param(), poll_writes(), inject_fault().  The
    kernel's answers: zone_for_online(), layout(), zone(), group_of(),
    and the fields nodes, blocks, memory_groups, devices, events, memmap.
    Bulk changes: ``with fk.batch():`` (files rewritten once at the end).
    """

    def __init__(self, root, *, block_size=128 << 20,
                 boot_ram=((0, 2 << 30), (4 << 30, 2 << 30)), cma=None,
                 policy="auto-movable", ratio=301, numa_aware=True,
                 auto_online="offline", kernel_version=(6, 1),
                 memmap_on_memory=False, reserved=None, boot_acpi=False,
                 coldplug_dimms=(), nodes=(), cpus=2, iomem_as_root=True,
                 kmsg_dict=True, back_links=False, eager_valid_zones=True):
        if block_size % (PAGES_PER_SECTION * PAGE_SIZE):
            raise ValueError("block size must be a multiple of the 128 MiB section")
        self.root = os.fspath(root)
        self.block_size = block_size
        self.pages_per_block = block_size >> PAGE_SHIFT
        self.sections_per_block = self.pages_per_block // PAGES_PER_SECTION
        self.kernel_version = tuple(kernel_version)
        self.online_policy = policy
        self.auto_movable_ratio = ratio
        self.auto_movable_numa_aware = numa_aware
        self.mhp_default_online_type = online_type_from_str(auto_online)
        if self.mhp_default_online_type < 0:
            raise ValueError("bad auto_online %r" % auto_online)
        self.memmap_on_memory = memmap_on_memory
        self.iomem_as_root = iomem_as_root
        self.kmsg_dict = kmsg_dict
        # nodeK/memoryN and PNP0C80:XX/physical_node links exist on a real
        # machine too, but cost a syscall each and nothing reads them.
        self.back_links = back_links
        # Eager: every change leaves every valid_zones file right, which
        # costs a rewrite of all of a group's offline blocks each time the
        # group's answer flips.  Lazy: call refresh_valid_zones() yourself.
        self.eager_valid_zones = eager_valid_zones
        self.cpus = cpus
        self.movable_node_enabled = False

        self.nodes = {}            # nid -> Node (online nodes)
        self.blocks = {}           # index -> MemoryBlock
        self.memory_groups = {}    # mgid -> MemoryGroup
        self.devices = {}          # name -> Device
        self.events = []           # (action, devpath) uevents, in order
        self.faults = {}           # (index, online_type) -> errno
        self.memmap = {}           # entry number -> (start, end_inclusive, type)
        self._memmap_nr = 0
        self._next_mgid = 0
        self._next_virtio = 5
        self._next_dax = 0
        self._next_acpi = 0
        self._next_ino = 1000
        self._kmsg_seq = 0
        self._kmsg_usec = 0
        self._defer = 0
        self.lock_waits = 0        # state writes that waited for an ACPI add
        self._vz_written = {}      # index -> valid_zones text on disk
        self._vz_index = None      # decision key -> set of offline blocks
        self._vz_decision = {}     # decision key -> last Movable answer
        self._vz_pending = set()   # blocks whose valid_zones must be rewritten
        self._vz_full = True
        self._low_spans = None

        if not isinstance(boot_ram, dict):
            boot_ram = {0: list(boot_ram)}
        self.boot_ram = {nid: sorted(r) for nid, r in boot_ram.items()}
        self._mem = os.path.join(self.root, "sys/devices/system/memory")
        self._build_boot(cma or {}, reserved, nodes)
        self.new_boot_id()
        for args in coldplug_dimms:
            args = dict(args) if isinstance(args, dict) else {"size": args}
            self.add_dimm(**args)
        self._add_boot_memmap()
        if boot_acpi:
            self._bind_boot_acpi()
        self._flush()

    # ------------------------------------------------------------------
    # boot

    def _e820_firmware(self, reserved):
        """The BIOS E820 table (what boot_params and /sys/firmware/memmap
        show) and each node's RAM in it.  ``reserved`` ranges that overlap
        RAM cut holes in it (QEMU reserves 0x7ffe0000-0x7fffffff, say)."""
        low = [(0x9fc00, 0x400), (0xf0000, 0x10000)]    # EBDA, BIOS ROM
        if reserved is None:
            # What QEMU 7.2 + SeaBIOS reserve (recorded on a Debian 6.1
            # guest): the top 132 KiB of low RAM, MMCONFIG, the TCO window,
            # the BIOS and the 64-bit reserved area.
            reserved = [(0xb0000000, 0x10000000), (0xfed1c000, 0x4000),
                        (0xfffc0000, 0x40000), (0xfd00000000, 0x300000000)]
            reserved = [(s, z) for s, z in reserved
                        if not any(a < s + z and s < a + b
                                   for r in self.boot_ram.values() for a, b in r)]
            for r in self.boot_ram.values():
                reserved += [(a + b - 0x21000, 0x21000) for a, b in r
                             if a == 0 and 0x100000 < b <= 0xb0000000]
        ram_by_node, table = {}, []
        for nid in sorted(self.boot_ram):
            ranges = [(s, s + z) for s, z in self.boot_ram[nid]]
            holes = list(reserved)
            if any(s < 0x100000 < e for s, e in ranges):
                holes.append((0x9fc00, 0x100000 - 0x9fc00))   # no RAM up to 1 MiB
                table += [(s, z, E820_RESERVED) for s, z in low]
            for hs, hz in holes:
                cut = []
                for s, e in ranges:
                    cut += [r for r in ((s, min(e, hs)), (max(s, hs + hz), e)) if r[0] < r[1]]
                ranges = cut
            ram_by_node[nid] = ranges
            table += [(s, e - s, E820_RAM) for s, e in ranges]
        for s, z in reserved:
            if (s, z, E820_RESERVED) not in table:
                table.append((s, z, E820_RESERVED))
        return sorted(table), ram_by_node

    def _build_boot(self, cma, reserved, extra_nodes):
        self.e820, ram_by_node = self._e820_firmware(reserved)
        # memblock: RAM in whole pages; trim_bios_range() takes page 0 away.
        self.memblock = {}
        for nid, ranges in ram_by_node.items():
            pfns = [(max(PFN_UP(s), 1), PFN_DOWN(e)) for s, e in ranges]
            self.memblock[nid] = [(ps, pe) for ps, pe in pfns if ps < pe]
        lowest = min((r[0][0] for r in self.memblock.values() if r), default=0)
        for nid in sorted(set(self.boot_ram) | set(extra_nodes) | {0}):
            self._try_online_node(nid)
        # mm/page_alloc.c calculate_node_totalpages(): zones span the node's
        # range clamped to the zone's limits.
        limits = ((lowest, MAX_DMA_PFN), (MAX_DMA_PFN, MAX_DMA32_PFN), (MAX_DMA32_PFN, 1 << 52))
        for nid, ranges in self.memblock.items():
            if not ranges:
                continue
            node_start, node_end = ranges[0][0], max(e for _, e in ranges)
            for zid, (lo, hi) in enumerate(limits):
                zone = self.nodes[nid].node_zones[zid]
                zs, ze = min(max(node_start, lo), hi), min(max(node_end, lo), hi)
                zone.zone_start_pfn = zs if ze > zs else 0
                zone.spanned_pages = ze - zs if ze > zs else 0
                present = sum(max(0, min(e, ze) - max(s, zs)) for s, e in ranges)
                zone.present_pages = zone.present_early_pages = present
                zone.cma_pages = cma.get((nid, zone.name), 0)
                # memblock reservations (kernel image, memmap, ...) are never managed
                zone.managed_pages = present - present // 64 if zid else max(0, present - 158)
        # Boot memory blocks: online, early, in the zone their pfns fall in.
        ppb = self.pages_per_block
        for nid, ranges in self.memblock.items():
            present = {}
            for s, e in ranges:
                for b in range(s // ppb, (e - 1) // ppb + 1):
                    present[b] = present.get(b, 0) + min(e, (b + 1) * ppb) - max(s, b * ppb)
            for b, pages in sorted(present.items()):
                mem = MemoryBlock(b, nid, ppb, early=True, present=pages)
                mem.state = "online"
                mem.zone = self._early_node_zone_for_memory_block(mem, nid)
                self.blocks[b] = mem
        os.makedirs(self._mem, exist_ok=True)
        self._write(self._mem + "/block_size_bytes", "%x\n" % self.block_size)
        self._write_auto_online()
        self._write_params()
        for mem in self.blocks.values():
            self._create_block_files(mem)
        self._write_boot_params()
        self._klog("Linux version %d.%d.0-fake-amd64 (fakekernel)" % self.kernel_version[:2])
        for start, size, typ in self.e820:
            self._klog("BIOS-e820: [mem %#018x-%#018x] %s" % (
                start, start + size - 1, "usable" if typ == E820_RAM else "reserved"))

    def _early_node_zone_for_memory_block(self, mem, nid):
        """drivers/base/memory.c early_node_zone_for_memory_block()."""
        matching = None
        for zone in self.nodes[nid].node_zones:
            if not populated_zone(zone) or not zone_intersects(zone, mem.start_pfn, self.pages_per_block):
                continue
            if matching is None:
                matching = zone
                continue
            return None  # spans multiple zones
        return matching

    def _add_boot_memmap(self):
        # drivers/firmware/memmap.c: boot entries get numbers at late_initcall,
        # after any DIMM that ACPI cold-plugged earlier in the boot.
        for start, size, typ in self.e820:
            self._memmap_add(start, start + size, E820_TYPE_NAMES[typ])

    def _bind_boot_acpi(self):
        # Bare metal / some hypervisors describe boot RAM by ACPI memory
        # devices too: add_memory() answers -EEXIST, the blocks get bound
        # (firmware_node) but keep no group.
        for nid, ranges in sorted(self.boot_ram.items()):
            for start, size in ranges:
                name = self._new_acpi_name()
                dev = Device(name, "dimm", nid, start, size, None)
                dev.extra["boot"] = True
                self.devices[name] = dev
                self._make_acpi_dir(name)
                dev.blocks = {b for b in self.blocks if self.blocks[b].nid == nid
                              and start < (b + 1) * self.block_size and b * self.block_size < start + size}
                for b in dev.blocks:
                    self.blocks[b].device = name
                self.link_firmware_nodes(name)

    def _write_boot_params(self):
        # arch/x86/include/uapi/asm/bootparam.h: struct boot_params
        data = bytearray(4096)
        data[0x1e8] = min(len(self.e820), 128)                   # e820_entries
        data[0x1f1] = 0x1e                                        # hdr.setup_sects
        data[0x202:0x206] = b"HdrS"                               # hdr.header
        struct.pack_into("<H", data, 0x206, 0x020f)               # hdr.version
        for i, (addr, size, typ) in enumerate(self.e820[:128]):
            struct.pack_into("<QQI", data, 0x2d0 + 20 * i, addr, size, typ)
        d = os.path.join(self.root, "sys/kernel/boot_params")
        os.makedirs(d, exist_ok=True)
        with open(d + "/data", "wb") as f:
            f.write(bytes(data))
        self._write(d + "/version", "0x020f\n")

    # ------------------------------------------------------------------
    # files

    def _write(self, path, text):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def new_boot_id(self):
        """/proc/sys/kernel/random/boot_id: a new one per boot (a reboot, for the tests)."""
        d = os.path.join(self.root, "proc/sys/kernel/random")
        os.makedirs(d, exist_ok=True)
        self._write(d + "/boot_id", "%s\n" % uuid.uuid4())

    def _block_dir(self, index):
        return "%s/memory%d" % (self._mem, index)

    def _node_dir(self, nid):
        return os.path.join(self.root, "sys/devices/system/node/node%d" % nid)

    def _create_block_files(self, mem):
        d = self._block_dir(mem.index)
        os.mkdir(d)
        # kernfs numbers its nodes cyclically (idr_alloc_cyclic() in
        # kernfs_new_node()): a directory made again gets a new inode number,
        # where the file system under this tree may hand out the old one.
        self._next_ino += 1
        mem.ino = self._next_ino
        w = self._write
        w(d + "/state", mem.state + "\n")
        w(d + "/online", "1\n" if mem.state == "online" else "0\n")
        w(d + "/phys_index", "%08x\n" % mem.index)
        w(d + "/phys_device", "0\n")
        w(d + "/removable", "1\n")
        if mem.state == "online":
            text = (mem.zone.name if mem.zone else "none") + "\n"
            w(d + "/valid_zones", text)
            self._vz_written[mem.index] = text
        else:
            # written by refresh_valid_zones(), which every change ends with
            self._vz_add(mem)
        os.symlink("../../node/node%d" % mem.nid, "%s/node%d" % (d, mem.nid))
        if self.back_links:
            os.symlink("../../memory/memory%d" % mem.index,
                       "%s/memory%d" % (self._node_dir(mem.nid), mem.index))

    def _write_block_state(self, mem):
        d = self._block_dir(mem.index)
        self._write(d + "/state", mem.state + "\n")
        self._write(d + "/online", "1\n" if mem.state == "online" else "0\n")
        if mem.state == "online":
            text = (mem.zone.name if mem.zone else "none") + "\n"
            if self._vz_written.get(mem.index) != text:
                self._write(d + "/valid_zones", text)
                self._vz_written[mem.index] = text

    def _write_auto_online(self):
        self._write(self._mem + "/auto_online_blocks",
                    ONLINE_TYPE_TO_STR[self.mhp_default_online_type] + "\n")

    def _write_params(self):
        d = os.path.join(self.root, "sys/module/memory_hotplug/parameters")
        os.makedirs(d, exist_ok=True)
        self._write(d + "/memmap_on_memory", "Y\n" if self.memmap_on_memory else "N\n")
        if self.kernel_version >= (5, 15):
            self._write(d + "/online_policy", self.online_policy + "\n")
            self._write(d + "/auto_movable_ratio", "%d\n" % self.auto_movable_ratio)
            self._write(d + "/auto_movable_numa_aware",
                        "Y\n" if self.auto_movable_numa_aware else "N\n")

    def _try_online_node(self, nid):
        """mm/memory_hotplug.c __try_online_node(): a node comes online with
        its first memory (or CPU)."""
        if nid in self.nodes:
            return
        self.nodes[nid] = Node(nid)
        os.makedirs(self._node_dir(nid), exist_ok=True)

    def _memmap_add(self, start, end, typ):
        """drivers/firmware/memmap.c firmware_map_add_hotplug(): end is
        exclusive here, stored (and shown) inclusive."""
        nr = self._memmap_nr
        self._memmap_nr += 1
        self.memmap[nr] = (start, end - 1, typ)
        d = os.path.join(self.root, "sys/firmware/memmap/%d" % nr)
        os.makedirs(d)
        self._write(d + "/start", "0x%x\n" % start)
        self._write(d + "/end", "0x%x\n" % (end - 1))
        self._write(d + "/type", typ + "\n")

    def _memmap_remove(self, start, end, typ):
        for nr, entry in list(self.memmap.items()):
            if entry == (start, end - 1, typ):
                del self.memmap[nr]
                shutil.rmtree(os.path.join(self.root, "sys/firmware/memmap/%d" % nr))
                return

    def _klog(self, text, device=None, subsystem=None, level=6):
        """Append one /dev/kmsg record: "LEVEL,SEQ,USEC,FLAGS;TEXT", then the
        dev_printk dictionary as " KEY=VALUE" continuation lines."""
        rec = "%d,%d,%d,-;%s\n" % (level, self._kmsg_seq, self._kmsg_usec, text)
        if device and self.kmsg_dict:
            rec += " SUBSYSTEM=%s\n DEVICE=+%s:%s\n" % (subsystem, subsystem, device)
        self._kmsg_seq += 1
        self._kmsg_usec += 1234
        d = os.path.join(self.root, "dev")
        os.makedirs(d, exist_ok=True)
        with open(d + "/kmsg", "a") as f:
            f.write(rec)

    def _uevent(self, action, index):
        self.events.append((action, "/devices/system/memory/memory%d" % index))

    # ------------------------------------------------------------------
    # the kernel's decisions (mm/memory_hotplug.c, v6.1)

    def pfn_to_online_page(self, pfn):
        """The block holding ``pfn`` if its sections are online, else None."""
        mem = self.blocks.get(pfn // self.pages_per_block)
        if mem is None or mem.state != "online":
            return None
        return mem

    def page_zone(self, pfn):
        mem = self.pfn_to_online_page(pfn)
        if mem is None:
            return None
        if mem.zone is not None:
            return mem.zone
        for zone in self.nodes[mem.nid].node_zones:  # a boot block over zones
            if populated_zone(zone) and zone.zone_start_pfn <= pfn < zone.zone_end_pfn():
                return zone
        return None

    def auto_movable_stats_account_zone(self, stats, zone):
        if zone.idx == ZONE_MOVABLE:
            stats["movable_pages"] += zone.present_pages
        else:
            stats["kernel_early_pages"] += zone.present_early_pages
            # CMA pages (never on hotplugged memory) behave like ZONE_MOVABLE.
            stats["movable_pages"] += zone.cma_pages
            stats["kernel_early_pages"] = (stats["kernel_early_pages"] - zone.cma_pages) & ULONG_MAX

    def auto_movable_stats_account_group(self, group, stats):
        ratio = self.auto_movable_ratio
        # Avoid the division by zero when the ratio is changed to 0 at run time.
        if not ratio:
            return 0
        # Early kernel pages this group requires to satisfy the ratio.
        pages = group.present_movable_pages * 100 // ratio
        pages -= group.present_kernel_pages
        if pages > 0:
            stats["req_kernel_early_pages"] += pages
        stats["movable_pages"] += group.present_movable_pages
        return 0

    def walk_dynamic_memory_groups(self, nid, func, excluded, arg):
        for group in self.memory_groups.values():
            if not group.is_dynamic or group is excluded:
                continue
            if nid != NUMA_NO_NODE and group.nid != nid:
                continue
            ret = func(group, arg)
            if ret:
                return ret
        return 0

    def auto_movable_can_online_movable(self, nid, group, nr_pages):
        stats = {"kernel_early_pages": 0, "movable_pages": 0}
        group_stats = {"movable_pages": 0, "req_kernel_early_pages": 0}
        # Walk all relevant zones and collect MOVABLE vs. KERNEL stats.
        if nid == NUMA_NO_NODE:
            for pgdat in self.nodes.values():
                for zone in pgdat.node_zones:
                    if populated_zone(zone):
                        self.auto_movable_stats_account_zone(stats, zone)
        else:
            pgdat = self.nodes.get(nid)
            for zone in (pgdat.node_zones if pgdat else ()):
                if populated_zone(zone):
                    self.auto_movable_stats_account_zone(stats, zone)
        kernel_early_pages = stats["kernel_early_pages"]
        movable_pages = stats["movable_pages"]
        # Kernel memory inside a dynamic memory group allows for more MOVABLE
        # memory within the same group: remove the effect of all others.
        self.walk_dynamic_memory_groups(nid, self.auto_movable_stats_account_group,
                                        group, group_stats)
        if kernel_early_pages <= group_stats["req_kernel_early_pages"]:
            return False
        kernel_early_pages -= group_stats["req_kernel_early_pages"]
        movable_pages = (movable_pages - group_stats["movable_pages"]) & ULONG_MAX
        if group is not None and group.is_dynamic:
            kernel_early_pages += group.present_kernel_pages
        # Could we online nr_pages to ZONE_MOVABLE and stay within the ratio?
        movable_pages = (movable_pages + nr_pages) & ULONG_MAX
        return movable_pages <= (self.auto_movable_ratio * kernel_early_pages) // 100

    def default_kernel_zone_for_pfn(self, nid, start_pfn, nr_pages):
        pgdat = self.nodes[nid]
        for zid in range(ZONE_NORMAL):
            zone = pgdat.node_zones[zid]
            if zone_intersects(zone, start_pfn, nr_pages):
                return zone
        return pgdat.node_zones[ZONE_NORMAL]

    def auto_movable_zone_for_pfn(self, nid, group, pfn, nr_pages):
        online_pages = 0
        if not self.auto_movable_ratio:
            return self.default_kernel_zone_for_pfn(nid, pfn, nr_pages)
        if group is not None and not group.is_dynamic:
            max_pages = group.max_pages
            online_pages = group.present_movable_pages
            # If anything is !MOVABLE online the rest !MOVABLE.
            if group.present_kernel_pages:
                return self.default_kernel_zone_for_pfn(nid, pfn, nr_pages)
        elif group is None or group.unit_pages == nr_pages:
            max_pages = nr_pages
        else:
            max_pages = group.unit_pages
            # Look at all online sections of the unit this block lies in.
            # (Like the kernel, pfn is left where the walk stopped.)
            pfn = ALIGN_DOWN(pfn, group.unit_pages)
            end_pfn = pfn + group.unit_pages
            while pfn < end_pfn:
                if self.pfn_to_online_page(pfn) is not None:
                    # If anything is !MOVABLE online the rest !MOVABLE.
                    if self.page_zone(pfn).idx != ZONE_MOVABLE:
                        return self.default_kernel_zone_for_pfn(nid, pfn, nr_pages)
                    online_pages += PAGES_PER_SECTION
                pfn += PAGES_PER_SECTION
        # Online MOVABLE if we could *currently* online all remaining parts
        # MOVABLE: we expect them to be (added and) onlined right next.
        nr_pages = max_pages - online_pages
        if not self.auto_movable_can_online_movable(NUMA_NO_NODE, group, nr_pages):
            return self.default_kernel_zone_for_pfn(nid, pfn, nr_pages)
        if self.auto_movable_numa_aware and \
                not self.auto_movable_can_online_movable(nid, group, nr_pages):
            return self.default_kernel_zone_for_pfn(nid, pfn, nr_pages)
        return self.nodes[nid].node_zones[ZONE_MOVABLE]

    def default_zone_for_pfn(self, nid, start_pfn, nr_pages):
        kernel_zone = self.default_kernel_zone_for_pfn(nid, start_pfn, nr_pages)
        movable_zone = self.nodes[nid].node_zones[ZONE_MOVABLE]
        in_kernel = zone_intersects(kernel_zone, start_pfn, nr_pages)
        in_movable = zone_intersects(movable_zone, start_pfn, nr_pages)
        # Inherit the existing zone when zones do not overlap the range.
        if in_kernel ^ in_movable:
            return kernel_zone if in_kernel else movable_zone
        return movable_zone if self.movable_node_enabled else kernel_zone

    def _auto_movable_policy(self):
        return self.kernel_version >= (5, 15) and self.online_policy == "auto-movable"

    def zone_for_pfn_range(self, online_type, nid, group, start_pfn, nr_pages):
        if online_type == MMOP_ONLINE_KERNEL:
            return self.default_kernel_zone_for_pfn(nid, start_pfn, nr_pages)
        if online_type == MMOP_ONLINE_MOVABLE:
            return self.nodes[nid].node_zones[ZONE_MOVABLE]
        if self._auto_movable_policy():
            return self.auto_movable_zone_for_pfn(nid, group, start_pfn, nr_pages)
        return self.default_zone_for_pfn(nid, start_pfn, nr_pages)

    # ---- zone spans and present pages

    def adjust_present_page_count(self, mem, zone, group, nr_pages):
        # Only complete memory blocks are onlined/offlined: all early or not.
        if mem.early:
            zone.present_early_pages += nr_pages
        zone.present_pages += nr_pages
        if group is not None and zone.idx == ZONE_MOVABLE:
            group.present_movable_pages += nr_pages
        elif group is not None:
            group.present_kernel_pages += nr_pages

    def move_pfn_range_to_zone(self, zone, start_pfn, nr_pages):
        """resize_zone_range(): grow the zone's span over the range."""
        old_end_pfn = zone.zone_end_pfn()
        if zone.zone_is_empty() or start_pfn < zone.zone_start_pfn:
            zone.zone_start_pfn = start_pfn
        zone.spanned_pages = max(start_pfn + nr_pages, old_end_pfn) - zone.zone_start_pfn

    def _find_smallest_section_pfn(self, nid, zone, start_pfn, end_pfn):
        while start_pfn < end_pfn:
            mem = self.pfn_to_online_page(start_pfn)
            if mem is not None and mem.nid == nid and self.page_zone(start_pfn) is zone:
                return start_pfn
            start_pfn += PAGES_PER_SECTION
        return 0

    def _find_biggest_section_pfn(self, nid, zone, start_pfn, end_pfn):
        pfn = end_pfn - 1
        while pfn >= start_pfn:
            mem = self.pfn_to_online_page(pfn)
            if mem is not None and mem.nid == nid and self.page_zone(pfn) is zone:
                return pfn
            pfn -= PAGES_PER_SECTION
        return 0

    def shrink_zone_span(self, zone, start_pfn, end_pfn):
        nid = zone.nid
        if zone.zone_start_pfn == start_pfn:
            # The smallest section of the zone: find the next smallest.
            pfn = self._find_smallest_section_pfn(nid, zone, end_pfn, zone.zone_end_pfn())
            if pfn:
                zone.spanned_pages = zone.zone_end_pfn() - pfn
                zone.zone_start_pfn = pfn
            else:
                zone.zone_start_pfn = zone.spanned_pages = 0
        elif zone.zone_end_pfn() == end_pfn:
            # The biggest section of the zone: find the next biggest.
            pfn = self._find_biggest_section_pfn(nid, zone, zone.zone_start_pfn, start_pfn)
            if pfn:
                zone.spanned_pages = pfn - zone.zone_start_pfn + 1
            else:
                zone.zone_start_pfn = zone.spanned_pages = 0

    # ---- drivers/base/memory.c

    def memory_block_online(self, mem):
        start_pfn, nr_pages = mem.start_pfn, self.pages_per_block
        zone = self.zone_for_pfn_range(mem.online_type, mem.nid, mem.group, start_pfn, nr_pages)
        # online_pages(): the vmemmap pages (memmap_on_memory) are accounted
        # present in the same zone and group, but never managed.
        self.move_pfn_range_to_zone(zone, start_pfn, nr_pages)
        mem.state = "online"
        self.adjust_present_page_count(mem, zone, mem.group, nr_pages)
        zone.managed_pages += nr_pages - mem.nr_vmemmap_pages
        mem.zone = zone
        return 0

    def memory_block_offline(self, mem):
        start_pfn, nr_pages = mem.start_pfn, self.pages_per_block
        if mem.zone is None:
            return -errno.EINVAL   # spans zones: cannot be offlined
        # offline_pages(): memory blocks with holes are never offlined.
        if mem.present != nr_pages:
            return -errno.EINVAL
        zone = mem.zone
        mem.state = "offline"      # sections offline before the span shrinks
        zone.managed_pages -= nr_pages - mem.nr_vmemmap_pages
        self.adjust_present_page_count(mem, zone, mem.group, -nr_pages)
        self.shrink_zone_span(zone, start_pfn, start_pfn + nr_pages)
        mem.zone = None
        return 0

    def memory_block_change_state(self, mem, to_state, from_state_req):
        if mem.state != from_state_req:
            return -errno.EINVAL
        before = mem.state
        ret = self.memory_block_online(mem) if to_state == "online" else self.memory_block_offline(mem)
        if ret:
            mem.state = before
        return ret

    def _device_online(self, mem, online_type):
        """state_store() for the online types, through device_online()."""
        if mem.state == "online":
            return 1               # already online: state_store() gives -EINVAL
        mem.online_type = online_type
        ret = self.memory_block_change_state(mem, "online", "offline")
        mem.online_type = MMOP_OFFLINE
        if not ret:
            self._uevent("online", mem.index)
        return ret

    def _device_offline(self, mem):
        if mem.state == "offline":
            return 1
        ret = self.memory_block_change_state(mem, "offline", "online")
        if not ret:
            self._uevent("offline", mem.index)
        return ret

    # ------------------------------------------------------------------
    # user space's view: writes

    def write_state(self, index, value):
        """The kernel's reaction to ``echo VALUE > memoryINDEX/state``
        (drivers/base/memory.c state_store()).  Raises OSError like write(2)."""
        mem = self.blocks.get(index)
        if mem is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), self._block_dir(index) + "/state")
        online_type = online_type_from_str(value)
        if online_type < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        # lock_device_hotplug_sysfs(): while ACPI is still adding a DIMM
        # (blocks made, links not yet), the write waits for it to finish.
        self._finish_pending_dimms()
        err = self.faults.pop((index, online_type), None) or self.faults.pop((index, None), None)
        if err:
            raise OSError(err, os.strerror(err))
        if online_type == MMOP_OFFLINE:
            ret = self._device_offline(mem)
        else:
            ret = self._device_online(mem, online_type)
        if ret < 0:
            raise OSError(-ret, os.strerror(-ret))
        if ret:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._after_state_change(mem)

    def write_online(self, index, value):
        """``echo 1|0 > memoryN/online`` (driver core online_store())."""
        v = value.strip() if isinstance(value, str) else value.decode().strip()
        if v not in ("0", "1"):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        mem = self.blocks.get(index)
        if mem is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        # device_online() on an online device is a no-op success here.
        ret = self._device_online(mem, MMOP_ONLINE) if v == "1" else self._device_offline(mem)
        if ret < 0:
            raise OSError(-ret, os.strerror(-ret))
        if ret == 0:
            self._after_state_change(mem)

    def inject_fault(self, index, value, err):
        """The next write of ``value`` (None: any value) to block ``index``
        fails with ``err`` and changes nothing."""
        key = None if value is None else online_type_from_str(value)
        if key is not None and key < 0:
            raise ValueError("unknown state %r" % value)
        self.faults[(index, key)] = err

    def _after_state_change(self, mem):
        if mem.state == "online":
            self._vz_drop(mem)
        else:
            self._vz_add(mem)
        self._write_block_state(mem)
        self._flush(zoneinfo=True, iomem=False)

    def poll_writes(self):
        """Apply writes made to the ``state`` files on disk (by a process that
        writes the tree directly), as if the kernel had received them.
        Returns [(index, value, error or None)]."""
        done = []
        for index in sorted(self.blocks):
            path = self._block_dir(index) + "/state"
            with open(path) as f:
                text = f.read()
            mem = self.blocks[index]
            if text == mem.state + "\n":
                continue
            try:
                self.write_state(index, text)
                done.append((index, text.strip(), None))
            except OSError as e:
                done.append((index, text.strip(), e.errno))
                self._write_block_state(mem)
        return done

    # ---- module parameters and auto-online, writable at run time

    def set_param(self, name, value):
        """A write to /sys/devices/system/memory/auto_online_blocks or to
        /sys/module/memory_hotplug/parameters/NAME, with the kernel's parsing
        (one trailing newline accepted) and errors (OSError)."""
        def fail(err=errno.EINVAL):
            raise OSError(err, os.strerror(err))
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        value = str(value)
        word = value[:-1] if value.endswith("\n") else value
        if name == "auto_online_blocks":
            t = online_type_from_str(value)
            if t < 0:
                fail()
            self.mhp_default_online_type = t
            self._write_auto_online()
            return
        if name == "memmap_on_memory":
            fail(errno.EACCES)                     # 0444 in v6.1
        if self.kernel_version < (5, 15) or name not in (
                "online_policy", "auto_movable_ratio", "auto_movable_numa_aware"):
            fail(errno.ENOENT)
        if name == "online_policy":
            if word not in ("contig-zones", "auto-movable"):   # sysfs_match_string()
                fail()
            self.online_policy = word
        elif name == "auto_movable_ratio":
            # kstrtouint(), base 0: decimal, 0x hex or 0 octal
            m = re.fullmatch(r"\+?(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))", word)
            if not m:
                fail()
            hexa, octal, dec = m.groups()
            ratio = int(hexa, 16) if hexa else int(octal, 8) if octal else int(dec)
            if ratio >= 1 << 32:
                fail(errno.ERANGE)
            self.auto_movable_ratio = ratio
        else:
            # param_set_bool() -> kstrtobool(): y/Y/1/on and n/N/0/off
            w = word.lower()
            if w[:1] in ("y", "1") or w[:2] == "on":
                self.auto_movable_numa_aware = True
            elif w[:1] in ("n", "0") or w[:2] == "of":
                self.auto_movable_numa_aware = False
            else:
                fail()
        self._write_params()
        self._vz_full = True
        self._flush(zoneinfo=False, iomem=False)

    # ------------------------------------------------------------------
    # queries

    def zone_for_online(self, index):
        """What a plain ``online`` of block ``index`` would pick right now."""
        mem = self.blocks[index]
        return self.zone_for_pfn_range(MMOP_ONLINE, mem.nid, mem.group,
                                       mem.start_pfn, self.pages_per_block).name

    def layout(self):
        """{block: zone name ("none" for an online block over several
        zones) or None when offline}."""
        return {i: ((m.zone.name if m.zone else "none") if m.state == "online" else None)
                for i, m in sorted(self.blocks.items())}

    def zone(self, nid, name):
        return self.nodes[nid].node_zones[ZONE_NAMES.index(name)]

    def group_of(self, index):
        return self.blocks[index].group

    # ------------------------------------------------------------------
    # devices

    def _free_start(self, size, align):
        end = max(s + z for r in self.boot_ram.values() for s, z in r) if self.boot_ram else 0
        for dev in self.devices.values():
            if not dev.extra.get("boot"):
                end = max(end, dev.start + dev.size)
        for b in self.blocks:
            end = max(end, (b + 1) * self.block_size)
        return _align_up(end, align)

    def _new_group_static(self, nid, max_pages):
        mgid = self._next_mgid
        self._next_mgid += 1
        self.memory_groups[mgid] = MemoryGroup(mgid, nid, False, max_pages)
        return self.memory_groups[mgid]

    def _new_group_dynamic(self, nid, unit_pages):
        mgid = self._next_mgid
        self._next_mgid += 1
        self.memory_groups[mgid] = MemoryGroup(mgid, nid, True, unit_pages)
        return self.memory_groups[mgid]

    def _check_range(self, start, size):
        if not size or start % self.block_size or size % self.block_size:
            raise ValueError("Block size [%#x] unaligned hotplug range: start %#x, size %#x"
                             % (self.block_size, start, size))
        for b in range(start // self.block_size, (start + size) // self.block_size):
            if b in self.blocks:
                raise ValueError("memory block %d already exists (-EEXIST)" % b)

    def add_memory_resource(self, nid, start, size, group, device, nr_vmemmap_pages=0):
        """mm/memory_hotplug.c add_memory_resource(): create the (offline)
        blocks, the memmap entry for plain "System RAM", then auto-online.
        Returns the new block indexes."""
        self._check_range(start, size)
        self._try_online_node(nid)
        new = []
        for b in range(start // self.block_size, (start + size) // self.block_size):
            mem = MemoryBlock(b, nid, self.pages_per_block, group=group, device=device.name,
                              nr_vmemmap_pages=nr_vmemmap_pages)
            self.blocks[b] = mem
            device.blocks.add(b)
            self._create_block_files(mem)
            self._uevent("add", b)
            new.append(b)
        if device.kind == "dimm":
            self._memmap_add(start, start + size, "System RAM")
        if self.mhp_default_online_type != MMOP_OFFLINE:
            for b in new:
                # online_memory_block(): failures are ignored.
                mem = self.blocks[b]
                if self._device_online(mem, self.mhp_default_online_type) == 0:
                    self._vz_drop(mem)
                    self._write_block_state(mem)
        return new

    def _new_acpi_name(self):
        name = "PNP0C80:%02x" % self._next_acpi
        self._next_acpi += 1
        return name

    def _make_acpi_dir(self, name):
        d = os.path.join(self.root, "sys/devices", ACPI_MEMORY_BUS, name)
        os.makedirs(d)
        self._write(d + "/hid", "PNP0C80\n")
        self._write(d + "/status", "15\n")
        self._write(d + "/path", "\\_SB_.MHPC.MP%02X\n" % int(name.split(":")[1], 16))
        # The ACPI bus lists the device (drivers/acpi/scan.c) before its
        # driver adds the memory.
        bus = os.path.join(self.root, "sys/bus/acpi/devices")
        os.makedirs(bus, exist_ok=True)
        os.symlink("../../../devices/%s/%s" % (ACPI_MEMORY_BUS, name), os.path.join(bus, name))

    def add_dimm(self, size, node=0, start=None, link_firmware_node=True):
        """An ACPI memory device (drivers/acpi/acpi_memhotplug.c
        acpi_memory_enable_device()): one static group of its whole size,
        blocks added (and auto-onlined), then bound to the ACPI device."""
        if start is None:
            start = self._free_start(size, self.block_size)
        self._check_range(start, size)
        name = self._new_acpi_name()
        group = self._new_group_static(node, PFN_UP(size))
        dev = Device(name, "dimm", node, start, size, group)
        self.devices[name] = dev
        self._make_acpi_dir(name)
        # mhp_supports_memmap_on_memory(): v6.1 only for a range of one block
        vmemmap = 0
        if self.memmap_on_memory and size == self.block_size:
            vmemmap = (size >> PAGE_SHIFT) * 64 >> PAGE_SHIFT  # sizeof(struct page)
        with self.batch():
            self.add_memory_resource(node, start, size, group, dev, vmemmap)
        if link_firmware_node:
            self.link_firmware_nodes(name)
        else:
            dev.extra["pending"] = True
        return name

    def _finish_pending_dimms(self):
        for name, dev in list(self.devices.items()):
            if dev.extra.get("pending"):
                self.lock_waits += 1
                self.link_firmware_nodes(name)

    def link_firmware_nodes(self, name):
        """acpi_bind_memory_blocks(): the firmware_node links (and the ACPI
        device's physical_node links back)."""
        dev = self.devices[name]
        acpi = os.path.join(self.root, "sys/devices", ACPI_MEMORY_BUS, name)
        for i, b in enumerate(sorted(dev.blocks)):
            link = self._block_dir(b) + "/firmware_node"
            if not os.path.lexists(link):
                os.symlink("../../../%s/%s" % (ACPI_MEMORY_BUS, name), link)
            back = acpi + ("/physical_node" if i == 0 else "/physical_node%d" % i)
            if self.back_links and not os.path.lexists(back):
                os.symlink("../../../../system/memory/memory%d" % b, back)
        dev.linked = True
        dev.extra.pop("pending", None)

    def remove_dimm(self, name):
        """ACPI eject: offline every block (kernel-side), then remove."""
        dev = self.devices[name]
        with self.batch():
            for b in sorted(dev.blocks):
                self.remove_block(b)
            self._memmap_remove(dev.start, dev.start + dev.size, "System RAM")
            shutil.rmtree(os.path.join(self.root, "sys/devices", ACPI_MEMORY_BUS, name))
            del self.devices[name]

    def add_virtio_mem_device(self):
        """A virtio-mem PCI device with no driver bound yet (at boot, until
        udev loads virtio_mem): /sys/bus/virtio/devices/NAME without its
        driver link. add_virtio_mem(name=NAME) binds it later."""
        name = "virtio%d" % self._next_virtio
        self._next_virtio += 1
        self._virtio_device_dir(name)
        return name

    def _virtio_device_dir(self, name, device_id="0x0018"):
        d = os.path.join(self.root, "sys/bus/virtio/devices", name)
        if not os.path.isdir(d):
            os.makedirs(d)
            with open(os.path.join(d, "device"), "w") as f:
                f.write(device_id + "\n")  # VIRTIO_ID_MEM by default, as device_show() prints it
        return d

    def add_balloon(self, driver="virtio_balloon", compaction=True, inflated_pages=0, bound=True):
        """A balloon driver as sysfs shows it, and /proc/vmstat's balloon
        counters (mm/vmstat.c: balloon_inflate and balloon_deflate with
        CONFIG_MEMORY_BALLOON, balloon_migrate only with compaction).
        Returns the device's name."""
        if driver == "virtio_balloon":
            name = "virtio%d" % self._next_virtio
            self._next_virtio += 1
            d = self._virtio_device_dir(name, "0x0005")  # VIRTIO_ID_BALLOON
            drv = os.path.join(self.root, "sys/bus/virtio/drivers/virtio_balloon")
            os.makedirs(drv, exist_ok=True)
            if bound:
                os.symlink(os.path.relpath(drv, d), os.path.join(d, "driver"))
        elif driver == "hv_balloon":
            name = "1eccfd72-4b41-45ef-b73a-4a6e44c12924"  # the dynamic memory VMBus device
            dev = os.path.join(self.root, "sys/bus/vmbus/devices", name)
            drv = os.path.join(self.root, "sys/bus/vmbus/drivers/hv_balloon")
            os.makedirs(dev)
            os.makedirs(drv, exist_ok=True)
            for f in ("bind", "unbind", "uevent"):
                open(os.path.join(drv, f), "w").close()
            if bound:
                os.symlink(os.path.relpath(dev, drv), os.path.join(drv, name))
        elif driver == "xen_balloon":
            name = "xen_memory0"
            os.makedirs(os.path.join(self.root, "sys/devices/system/xen_memory", name, "info"))
        else:  # vmw_balloon: a module, loaded only on VMware
            name = "-"
            os.makedirs(os.path.join(self.root, "sys/module/vmw_balloon"))
        counters = "balloon_inflate %d\nballoon_deflate 0\n" % inflated_pages
        if compaction:
            counters += "balloon_migrate 0\n"
        self._write(os.path.join(self.root, "proc/vmstat"),
                    "nr_free_pages 1000\npgpgin 0\n" + counters + "swap_ra 0\n")
        return name

    def add_virtio_mem(self, region_size, node=0, device_block_size=2 << 20, bbm=False,
                       start=None, name=None):
        """A virtio-mem device probed with nothing plugged
        (drivers/virtio/virtio_mem.c virtio_mem_init()): its region resource,
        its dynamic group and the probe messages; its driver link."""
        # Subblocks span at least a pageblock (2 MiB); since 5.19 no longer
        # MAX_ORDER_NR_PAGES (a 6.1 guest logs "subblock size: 0x200000").
        sb_size = max(2 << 20, device_block_size)
        in_sbm = sb_size < self.block_size and not bbm
        bb_size = max(device_block_size, self.block_size)
        unit = self.block_size if in_sbm else bb_size
        if start is None:
            start = self._free_start(region_size, max(unit, 1 << 30))
        if name is None:
            name = self.add_virtio_mem_device()
        d = self._virtio_device_dir(name)  # new, or named by the caller (replaced, or bound late)
        os.makedirs(os.path.join(self.root, "sys/bus/virtio/drivers/virtio_mem"), exist_ok=True)
        if not os.path.lexists(os.path.join(d, "driver")):
            os.symlink("../../drivers/virtio_mem", os.path.join(d, "driver"))
        group = self._new_group_dynamic(node, unit >> PAGE_SHIFT)
        dev = Device(name, "virtio_mem", node, start, region_size, group)
        dev.extra.update(in_sbm=in_sbm, unit=unit, device_block_size=device_block_size)
        self.devices[name] = dev
        self._try_online_node(node)
        log = lambda text: self._klog("virtio_mem %s: %s" % (name, text), name, "virtio")
        log("start address: 0x%x" % start)
        log("region size: 0x%x" % region_size)
        log("device block size: 0x%x" % device_block_size)
        log("nid: %d" % node)
        log("memory block size: 0x%x" % self.block_size)
        if in_sbm:
            log("subblock size: 0x%x" % sb_size)
        else:
            log("big block size: 0x%x" % bb_size)
        dev.extra["log"] = log
        self._log_sizes(dev, 0)
        self._flush(zoneinfo=False, iomem=True)
        return name

    def _log_sizes(self, dev, requested):
        # virtio_mem_refresh_config(), on probe and each config change
        dev.extra["log"]("plugged size: 0x%x" % (len(dev.blocks) * self.block_size))
        dev.extra["log"]("requested size: 0x%x" % requested)

    def virtio_mem_plug(self, name, size):
        """Plug ``size`` more bytes: adds the lowest unused memory blocks
        (SBM) or big blocks (BBM) of the region; returns the new blocks."""
        dev = self.devices[name]
        unit = dev.extra["unit"]
        if size % unit:
            raise ValueError("size must be a multiple of %#x" % unit)
        new = []
        self._log_sizes(dev, len(dev.blocks) * self.block_size + size)
        with self.batch():
            units = range(dev.start // unit, (dev.start + dev.size) // unit)
            free = [u for u in units if u * unit // self.block_size not in dev.blocks]
            if len(free) < size // unit:
                raise ValueError("virtio-mem region exhausted")
            for u in free[:size // unit]:
                # add_memory_driver_managed(mgid, ..., "System RAM (virtio_mem)")
                new += self.add_memory_resource(dev.nid, u * unit, unit, dev.group, dev)
        return new

    def virtio_mem_unplug_block(self, name, index):
        """Unplug the memory block (SBM) or big block (BBM) holding block
        ``index``: offline_and_remove_memory()."""
        dev = self.devices[name]
        unit_blocks = dev.extra["unit"] // self.block_size
        first = ALIGN_DOWN(index, unit_blocks)
        removed = [b for b in range(first, first + unit_blocks) if b in dev.blocks]
        self._log_sizes(dev, (len(dev.blocks) - len(removed)) * self.block_size)
        with self.batch():
            for b in removed:
                self.remove_block(b)
        return removed

    def remove_virtio_mem(self, name):
        """device_del of a virtio-mem device: the driver unplugs and removes all
        its blocks (virtio_mem_remove()), then its region resource goes."""
        dev = self.devices[name]
        with self.batch():
            for b in sorted(dev.blocks):
                self.remove_block(b)
        del self.devices[name]
        self._flush(zoneinfo=False, iomem=True)

    def add_dax_kmem(self, size, node=0, start=None, parent=None, max_pages_in_bytes=False):
        """A dax device given to the kernel by dax/kmem (drivers/dax/kmem.c
        dev_dax_kmem_probe()): one static group, a "daxX.Y" resource with a
        "System RAM (kmem)" child.  ``max_pages_in_bytes`` reproduces the
        bug fixed by "dax/kmem: Pass valid argument to
        memory_group_register_static" (max_pages registered in bytes).
        ``parent`` nests it under e.g. "Soft Reserved"."""
        if start is None:
            start = self._free_start(size, self.block_size)
        self._check_range(start, size)
        name = "dax%d.0" % self._next_dax
        self._next_dax += 1
        group = self._new_group_static(node, size if max_pages_in_bytes else PFN_UP(size))
        dev = Device(name, "dax", node, start, size, group)
        dev.extra["parent"] = parent
        self.devices[name] = dev
        with self.batch():
            self.add_memory_resource(node, start, size, group, dev)
        return name

    def remove_block(self, index):
        """Offline (kernel-side, if online) and remove one memory block."""
        mem = self.blocks[index]
        with self.batch():
            if mem.state == "online":
                if self.memory_block_offline(mem):
                    raise ValueError("block %d cannot be offlined" % index)
                self._uevent("offline", index)
            self._vz_drop(mem)
            del self.blocks[index]
            self._vz_written.pop(index, None)
            if mem.device in self.devices:
                self.devices[mem.device].blocks.discard(index)
            shutil.rmtree(self._block_dir(index))
            link = "%s/memory%d" % (self._node_dir(mem.nid), index)
            if self.back_links and os.path.lexists(link):
                os.unlink(link)
            self._uevent("remove", index)

    # ------------------------------------------------------------------
    # valid_zones (drivers/base/memory.c valid_zones_show())

    def _valid_zones_text(self, mem, default_zone=None):
        nid, group, start_pfn, nr = mem.nid, mem.group, mem.start_pfn, self.pages_per_block
        if default_zone is None:
            default_zone = self.zone_for_pfn_range(MMOP_ONLINE, nid, group, start_pfn, nr)
        words = [default_zone.name]
        for online_type in (MMOP_ONLINE_KERNEL, MMOP_ONLINE_MOVABLE):
            zone = self.zone_for_pfn_range(online_type, nid, group, start_pfn, nr)
            if zone is not default_zone:
                words.append(zone.name)
        return " ".join(words) + "\n"

    def _decision_key(self, mem):
        """Offline blocks whose plain-online answer under auto-movable is
        the same share a key (the answer depends on the block only through
        its node, its group and, for units larger than a block, its unit)."""
        g = mem.group
        if g is not None and g.is_dynamic and g.unit_pages != self.pages_per_block:
            return (mem.nid, g.mgid, ALIGN_DOWN(mem.start_pfn, g.unit_pages))
        return (mem.nid, None if g is None else g.mgid)

    def _vz_add(self, mem):
        self._vz_pending.add(mem.index)
        if self._vz_index is not None:
            self._vz_index.setdefault(self._decision_key(mem), set()).add(mem.index)

    def _vz_drop(self, mem):
        self._vz_pending.discard(mem.index)
        if self._vz_index is not None:
            members = self._vz_index.get(self._decision_key(mem))
            if members is not None:
                members.discard(mem.index)
                if not members:
                    del self._vz_index[self._decision_key(mem)]

    def _write_vz(self, index, text):
        if self._vz_written.get(index) != text:
            self._write(self._block_dir(index) + "/valid_zones", text)
            self._vz_written[index] = text

    def refresh_valid_zones(self):
        """Rewrite the valid_zones files of offline blocks whose answer
        changed.  Called after every change unless inside batch()."""
        low = tuple((z.zone_start_pfn, z.spanned_pages) for n in self.nodes.values()
                    for z in n.node_zones[:ZONE_NORMAL])
        if low != self._low_spans:
            self._low_spans, self._vz_full = low, True
        if not self._auto_movable_policy():
            # contig-zones depends on every zone span: recompute all.
            for mem in self.blocks.values():
                if mem.state == "online":
                    continue
                self._write_vz(mem.index, self._valid_zones_text(mem))
            self._vz_pending.clear()
            self._vz_index = None
            self._vz_full = True
            return
        if self._vz_full or self._vz_index is None:
            offline = [m for m in self.blocks.values() if m.state != "online"]
            self._vz_index = {}
            for mem in offline:
                self._vz_index.setdefault(self._decision_key(mem), set()).add(mem.index)
            self._vz_decision = {}
            self._vz_pending = {m.index for m in offline}
            self._vz_full = False
        # Above every DMA/DMA32 span, default_kernel_zone_for_pfn() is
        # Normal whatever the range: the text is one of two constants.
        low_end = {nid: max(z.zone_end_pfn() for z in p.node_zones[:ZONE_NORMAL])
                   for nid, p in self.nodes.items()}
        for key, members in self._vz_index.items():
            rep = self.blocks[next(iter(members))]
            zone = self.zone_for_pfn_range(MMOP_ONLINE, rep.nid, rep.group, rep.start_pfn,
                                           self.pages_per_block)
            movable = zone.idx == ZONE_MOVABLE
            changed = self._vz_decision.get(key) != movable
            self._vz_decision[key] = movable
            todo = members if changed else (members & self._vz_pending)
            fast = "Movable Normal\n" if movable else "Normal Movable\n"
            for b in todo:
                mem = self.blocks[b]
                base = key[2] if len(key) == 3 else mem.start_pfn
                if base >= low_end[mem.nid]:
                    self._write_vz(b, fast)
                else:
                    self._write_vz(b, self._valid_zones_text(mem, zone if movable else None))
        self._vz_pending.clear()

    # ------------------------------------------------------------------
    # /proc/zoneinfo, /proc/iomem

    def zoneinfo_text(self):
        """mm/vmstat.c zoneinfo_show_print() (v6.1) for every online node."""
        out = []
        for nid in sorted(self.nodes):
            zones = self.nodes[nid].node_zones
            first = next((z for z in zones if populated_zone(z)), None)
            for i, zone in enumerate(zones):
                lines = ["Node %d, zone %8s" % (nid, zone.name)]
                if zone is first:
                    lines.append("  per-node stats")
                    for item in NODE_STAT_ITEMS:
                        lines.append("      %-12s %d" % (item, 0))
                managed = zone.managed_pages
                free = managed * 9 // 10
                wmin = managed // 256
                lines += [
                    "  pages free     %d" % free,
                    "        boost    0",
                    "        min      %d" % wmin,
                    "        low      %d" % (wmin * 5 // 4),
                    "        high     %d" % (wmin * 3 // 2),
                    "        spanned  %d" % zone.spanned_pages,
                    "        present  %d" % zone.present_pages,
                    "        managed  %d" % managed,
                    "        cma      %d" % zone.cma_pages,
                ]
                # setup_per_zone_lowmem_reserve()
                ratio = LOWMEM_RESERVE_RATIO[i]
                reserve, acc = [], 0
                for j in range(MAX_NR_ZONES):
                    if j <= i:
                        reserve.append(0)
                        continue
                    acc += zones[j].managed_pages
                    reserve.append(0 if not ratio or not managed else acc // ratio)
                lines.append("        protection: (%s)" % ", ".join(str(r) for r in reserve))
                if populated_zone(zone):
                    for item in ZONE_STAT_ITEMS:
                        v = {"nr_free_pages": free, "nr_free_cma": zone.cma_pages}.get(item, 0)
                        lines.append("      %-12s %d" % (item, v))
                    for item in NUMA_EVENT_ITEMS:
                        lines.append("      %-12s %d" % (item, 0))
                    lines.append("  pagesets")
                    for cpu in range(self.cpus):
                        lines += ["    cpu: %d" % cpu, "              count: 0",
                                  "              high:  0", "              batch: 1",
                                  "  vm stats threshold: 4"]
                    lines += ["  node_unreclaimable:  0",
                              "  start_pfn:           %d" % zone.zone_start_pfn]
                out.append("\n".join(lines) + "\n")
        return "".join(out)

    def iomem_tree(self):
        """The iomem resource tree: [(start, end, name, children)], sorted."""
        top = []
        first_ram = True
        for start, size, typ in self.e820:
            end = start + size - 1
            if typ != E820_RAM:
                top.append((start, end, "Reserved", []))
                continue
            if start == 0:
                # trim_bios_range(): page 0 is reserved for the BIOS
                top.append((0, 0xfff, "Reserved", []))
                start = 0x1000
            children = []
            if first_ram and start <= 0x1000000 < end:
                children = [(0x1000000, 0x1e03c17, "Kernel code", []),
                            (0x1e03c18, 0x2600fff, "Kernel rodata", []),
                            (0x2601000, 0x28fe57f, "Kernel data", []),
                            (0x2e7c000, 0x31fffff, "Kernel bss", [])]
                first_ram = False
            top.append((start, end, "System RAM", children))
        # The legacy ROMs and the 32-bit PCI window of a QEMU q35 guest,
        # where there is no RAM (as recorded on a Debian 6.1 guest).
        wrap = {(0xf0000, 0xfffff, "Reserved"): (0xf0000, 0xfffff, "System ROM", []),
                (0xfed00000, 0xfed003ff, "HPET 0"): (0xfed00000, 0xfed003ff, "PNP0103:00", []),
                (0xb0000000, 0xbfffffff, "Reserved"): (0xb0000000, 0xbfffffff, "pnp 00:04", [])}
        top = [(s, e, n, [wrap[(s, e, n)]] if (s, e, n) in wrap else c) for s, e, n, c in top]
        low_end = max((e + 1 for s, e, _, _ in top if e < 0xb0000000), default=0)
        decor = [(0xa0000, 0xbffff, "PCI Bus 0000:00", []),
                 (0xc0000, 0xc05ff, "Video ROM", []),
                 (max(low_end, 0x80000000), 0xafffffff, "PCI Bus 0000:00", []),
                 (0xc0000000, 0xfebfffff, "PCI Bus 0000:00", []),
                 (0xfec00000, 0xfec003ff, "IOAPIC 0", []),
                 (0xfed00000, 0xfed003ff, "HPET 0", [(0xfed00000, 0xfed003ff, "PNP0103:00", [])]),
                 (0xfee00000, 0xfee00fff, "Local APIC", [])]
        for d in decor:
            if d[0] < d[1] and not any(s <= d[1] and d[0] <= e for s, e, _, _ in top):
                top.append(d)
        # MMCONFIG claims its e820 reservation as a child
        top = [(s, e, "PCI MMCONFIG 0000 [bus 00-ff]", [(s, e, n, c)])
               if (s, e, n) == (0xb0000000, 0xbfffffff, "Reserved") else (s, e, n, c)
               for s, e, n, c in top]
        bs = self.block_size
        for dev in self.devices.values():
            if dev.extra.get("boot"):
                continue
            ranges = _merge_blocks(dev.blocks, bs)
            if dev.kind == "dimm":
                # one "System RAM" per ACPI range, shrunk by removed blocks
                top += [(s, e, "System RAM", []) for s, e in ranges]
            elif dev.kind == "virtio_mem":
                # MHP_MERGE_RESOURCE: adjacent children are merged
                kids = [(s, e, "System RAM (virtio_mem)", []) for s, e in ranges]
                top.append((dev.start, dev.start + dev.size - 1, dev.name, kids))
            elif dev.kind == "dax":
                kids = [(s, e, "System RAM (kmem)", []) for s, e in ranges]
                node = (dev.start, dev.start + dev.size - 1, dev.name, kids)
                if dev.extra.get("parent"):
                    node = (dev.start, dev.start + dev.size - 1, dev.extra["parent"], [node])
                top.append(node)
        return sorted(top)

    def iomem_text(self, as_root=None):
        """kernel/resource.c r_show(): addresses zeroed without CAP_SYS_ADMIN."""
        as_root = self.iomem_as_root if as_root is None else as_root
        out = []

        def show(res, depth):
            for start, end, name, children in res:
                if not as_root:
                    start = end = 0
                out.append("%s%08x-%08x : %s\n" % ("  " * depth, start, end, name))
                show(children, depth + 1)

        show(self.iomem_tree(), 0)
        return "".join(out)

    # ------------------------------------------------------------------
    # batching

    @contextlib.contextmanager
    def batch(self):
        """Defer valid_zones, zoneinfo and iomem rewrites to the end."""
        self._defer += 1
        try:
            yield self
        finally:
            self._defer -= 1
            if not self._defer:
                self._flush()

    def _flush(self, zoneinfo=True, iomem=True):
        if self._defer:
            return
        if self.eager_valid_zones:
            self.refresh_valid_zones()
        proc = os.path.join(self.root, "proc")
        os.makedirs(proc, exist_ok=True)
        if zoneinfo:
            self._write(proc + "/zoneinfo", self.zoneinfo_text())
            self._write(proc + "/meminfo", self.meminfo_text())
            self._write_node_masks()
        if iomem:
            self._write(proc + "/iomem", self.iomem_text())

    def meminfo_text(self):
        """The head of /proc/meminfo: totalram_pages() is the sum of managed pages."""
        managed = sum(z.managed_pages for n in self.nodes.values() for z in n.node_zones)
        kb = managed * PAGE_SIZE // 1024
        return "MemTotal:       %8d kB\nMemFree:        %8d kB\nMemAvailable:   %8d kB\n" % (
            kb, kb * 9 // 10, kb * 9 // 10)

    def _write_node_masks(self):
        """sys/devices/system/node/{possible,online,has_memory,
        has_normal_memory} (node_states[], printed as a node list)."""
        def nodelist(nids):
            runs = []
            for n in sorted(nids):
                if runs and runs[-1][1] == n - 1:
                    runs[-1][1] = n
                else:
                    runs.append([n, n])
            return ",".join("%d" % a if a == b else "%d-%d" % (a, b) for a, b in runs) + "\n"
        d = os.path.join(self.root, "sys/devices/system/node")
        mem = {n for n, p in self.nodes.items() if any(z.present_pages for z in p.node_zones)}
        normal = {n for n, p in self.nodes.items()
                  if any(z.present_pages for z in p.node_zones[:ZONE_MOVABLE])}
        for name, nids in (("possible", self.nodes), ("online", self.nodes),
                           ("has_memory", mem), ("has_normal_memory", normal)):
            self._write(d + "/" + name, nodelist(nids))

    def set_iomem_root(self, as_root):
        self.iomem_as_root = as_root
        self._flush(zoneinfo=False)


def _merge_blocks(blocks, block_size):
    """Contiguous runs of block indexes as inclusive address ranges."""
    out = []
    for b in sorted(blocks):
        s, e = b * block_size, (b + 1) * block_size - 1
        if out and out[-1][1] + 1 == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out
