"""Pure parsers: text (or bytes) from /sys and /proc in, values out.

Every parser raises ParseError with a short description of what was expected;
the caller adds the file name. Nothing here opens a file.
"""

from __future__ import annotations

import collections
import re
import struct

PAGE_SIZE = 4096

# The zones a memory block can be onlined to, as the kernel names them.
KERNEL_ZONES = ("DMA", "DMA32", "Normal")
MOVABLE = "Movable"
KNOWN_ZONES = KERNEL_ZONES + (MOVABLE, "Device", "HighMem", "none")


class ParseError(ValueError):
    """Text that does not have the shape the kernel gives it."""


def parse_hex(text: str, what: str = "a hex number") -> int:
    """Parse a hex number, with or without 0x (block_size_bytes, phys_index, memmap)."""
    t = text.strip()
    try:
        value = int(t, 16)
    except ValueError:
        raise ParseError(f"expected {what}, got {t[:40]!r}") from None
    if value < 0:
        raise ParseError(f"expected {what}, got {t[:40]!r}")
    return value


def parse_block_size(text: str) -> int:
    """block_size_bytes: hex without 0x; a power of two of at least one page."""
    size = parse_hex(text, "the block size in hex")
    if size < PAGE_SIZE or size & (size - 1):
        raise ParseError(f"expected a power-of-two block size, got {text.strip()[:40]!r}")
    return size


def parse_state(text: str) -> str:
    state = text.strip()
    if state not in ("online", "offline", "going-offline"):
        raise ParseError(f"expected online, offline or going-offline, got {state[:40]!r}")
    return state


def parse_valid_zones(text: str) -> tuple[str, ...]:
    """valid_zones: one zone for an online block, the allowed zones for an offline one."""
    zones = tuple(text.split())
    if not zones:
        raise ParseError("expected zone names, got nothing")
    for zone in zones:
        if zone not in KNOWN_ZONES:
            raise ParseError(f"expected zone names, got {zone[:40]!r}")
    if len(set(zones)) != len(zones):  # the kernel never names a zone twice
        raise ParseError(f"expected each zone once, got {' '.join(zones)[:60]!r}")
    return zone_tuple(zones)


_ZONE_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {}


def zone_tuple(zones: tuple[str, ...]) -> tuple[str, ...]:
    """One shared tuple (of shared names) for each combination of zones: a
    model of 8192 blocks held a tuple and a name of its own for every block,
    0.8 MiB of the 2.7 MiB it held after a 1 TiB burst."""
    return _ZONE_TUPLES.setdefault(zones, zones)


class ZoneInfo(collections.namedtuple("ZoneInfo", "node zone present cma managed", defaults=(0, 0))):
    """One zone of one node from /proc/zoneinfo, in pages."""
    __slots__ = ()


_ZONE_HEADER = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)\s*$")


def parse_zoneinfo(text: str) -> list[ZoneInfo]:
    """/proc/zoneinfo: the present and cma pages of every zone of every node."""
    zones: list[ZoneInfo] = []
    current: dict | None = None

    def finish():
        if current is None:
            return
        if "present" not in current:
            raise ParseError(f"zone {current['zone']} of node {current['node']} has no 'present' line")
        zones.append(ZoneInfo(current["node"], current["zone"], current["present"], current.get("cma", 0),
                              current.get("managed", 0)))

    for line in text.splitlines():
        m = _ZONE_HEADER.match(line)
        if m:
            finish()
            name = m.group(2)
            if name not in KNOWN_ZONES:
                raise ParseError(f"unknown zone name {name[:40]!r}")
            current = {"node": int(m.group(1)), "zone": name}
            continue
        words = line.split()
        # "present" and "cma" stand alone on their lines in the zone block;
        # per-node stats ("nr_...") and "pages free" never use these words.
        if current is not None and len(words) == 2 and words[0] in ("present", "cma", "managed"):
            if words[0] in current:
                raise ParseError(f"two '{words[0]}' lines in zone {current['zone']} of node {current['node']}")
            if not words[1].isdigit():
                raise ParseError(f"expected a number of pages after '{words[0]}', got {words[1][:40]!r}")
            current[words[0]] = int(words[1])
    finish()
    if not zones:
        raise ParseError("no 'Node N, zone NAME' sections")
    return zones


class Resource(collections.namedtuple("Resource", "start end name depth children")):
    """One line of /proc/iomem; END is inclusive, as printed; CHILDREN: the lines indented under it."""
    __slots__ = ()


_IOMEM_LINE = re.compile(r"^( *)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


def parse_iomem(text: str) -> list[Resource]:
    """/proc/iomem as a forest; children are indented by two spaces per level."""
    roots: list[Resource] = []
    stack: list[Resource] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _IOMEM_LINE.match(line)
        if not m or len(m.group(1)) % 2:
            raise ParseError(f"line {lineno}: expected 'START-END : NAME', got {line[:60]!r}")
        depth = len(m.group(1)) // 2
        if depth > len(stack):
            raise ParseError(f"line {lineno}: indented deeper than its parent")
        res = Resource(int(m.group(2), 16), int(m.group(3), 16), m.group(4), depth, [])
        del stack[depth:]
        (stack[-1].children if stack else roots).append(res)
        stack.append(res)
    return roots


def iomem_hidden(roots: list[Resource]) -> bool:
    """True when every address is zero: what a reader without CAP_SYS_ADMIN sees."""
    return bool(roots) and all(r.start == 0 and r.end == 0 for r in roots)


E820_RAM = 1
_E820_COUNT_OFFSET = 0x1E8
_E820_TABLE_OFFSET = 0x2D0
_E820_MAX_ENTRIES = 128  # E820_MAX_ENTRIES_ZEROPAGE
_E820_ENTRY = struct.Struct("<QQI")


def parse_boot_e820(data: bytes) -> list[tuple[int, int]]:
    """x86 boot_params: the RAM ranges [start, end) of the boot E820 table."""
    if len(data) < _E820_TABLE_OFFSET + _E820_ENTRY.size:
        raise ParseError(f"expected x86 boot_params of 4096 bytes, got {len(data)}")
    count = data[_E820_COUNT_OFFSET]
    if count > _E820_MAX_ENTRIES or _E820_TABLE_OFFSET + count * _E820_ENTRY.size > len(data):
        raise ParseError(f"E820 entry count {count} does not fit the table")
    return parse_e820_entries(data[_E820_TABLE_OFFSET:_E820_TABLE_OFFSET + count * _E820_ENTRY.size])


SETUP_E820_EXT = 1  # a setup_data node with the entries beyond the zero page's 128


def parse_setup_data_e820(type_text: str, data: bytes) -> list[tuple[int, int]]:
    """One /sys/kernel/boot_params/setup_data/N: its RAM ranges if it is an
    E820 extension (type 0x1), else none."""
    try:
        kind = int(type_text.strip(), 16)
    except ValueError:
        raise ParseError(f"expected a setup_data type in hex, got {type_text.strip()[:20]!r}") from None
    if kind != SETUP_E820_EXT:
        return []
    if len(data) % _E820_ENTRY.size:
        raise ParseError(f"expected E820 entries of {_E820_ENTRY.size} bytes, got {len(data)} bytes")
    return parse_e820_entries(data)


def parse_e820_entries(data: bytes) -> list[tuple[int, int]]:
    """Packed struct boot_e820_entry records: the RAM ranges [start, end), sorted."""
    ram = []
    for offset in range(0, len(data) - _E820_ENTRY.size + 1, _E820_ENTRY.size):
        addr, size, kind = _E820_ENTRY.unpack_from(data, offset)
        if kind == E820_RAM and size:
            ram.append((addr, addr + size))
    return sorted(ram)


class VirtioMemProbe:
    """What virtio_mem logs about one device when it probes (all in bytes)."""
    __slots__ = ("device", "fields")

    def __init__(self, device: str):
        self.device = device
        self.fields: dict[str, int] = {}

    @property
    def unit_bytes(self) -> int | None:
        """The unit of the device's dynamic memory group (KERNEL-NOTES 4)."""
        if "big block size" in self.fields:  # BBM
            return self.fields["big block size"]
        if "subblock size" in self.fields:  # SBM: one memory block
            return self.fields.get("memory block size")
        return None


_KMSG_VIRTIO_MEM = re.compile(r"virtio_mem (virtio\d+): ([a-z ]+): (0x[0-9a-fA-F]+|\d+)\s*$")


def kmsg_message(record: str) -> str:
    """The message of a /dev/kmsg record ('PRIO,SEQ,USEC,FLAGS;message'),
    without the continuation lines (' SUBSYSTEM=virtio') that follow it."""
    head, sep, message = record.partition(";")
    return (message if sep and "," in head else record).split("\n", 1)[0]


def parse_virtio_mem_probes(messages: list[str]) -> dict[str, VirtioMemProbe]:
    """The virtio_mem probe lines of the kernel log, per device; the last probe wins."""
    probes: dict[str, VirtioMemProbe] = {}
    for message in messages:
        m = _KMSG_VIRTIO_MEM.search(message)
        if not m:
            continue
        device, key, value = m.groups()
        if key == "start address":  # the first line of a probe: forget an earlier one
            probes[device] = VirtioMemProbe(device)
        probe = probes.setdefault(device, VirtioMemProbe(device))
        probe.fields[key] = int(value, 0)
    return probes


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo in bytes ("MemTotal:  4005072 kB"; counts without a unit as they are)."""
    out = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        words = rest.split()
        if not sep or not words or not words[0].isdigit():
            continue
        out[key.strip()] = int(words[0]) * (1024 if words[1:2] == ["kB"] else 1)
    if not out:
        raise ParseError("expected lines such as 'MemTotal: 4005072 kB'")
    return out


def parse_vmstat(text: str) -> dict[str, int]:
    """/proc/vmstat ("balloon_inflate 4096": name and count, one a line)."""
    out = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[1].isdigit():
            out[words[0]] = int(words[1])
    if not out:
        raise ParseError("expected lines such as 'nr_free_pages 12345'")
    return out


def format_size(nbytes: int) -> str:
    """Sizes the way lsmem prints them: 128M, 2G, 1.5G."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if nbytes >= 1 << shift:
            value = nbytes / (1 << shift)
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{nbytes}B"
