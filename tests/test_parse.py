"""The parsers, on text recorded from real machines and on garbage."""

import os
import struct

import pytest

from kernelbackend import DATA
from memonlined.model import Block, Machine
from memonlined.parse import (ParseError, VirtioMemProbe, format_size, iomem_hidden, kmsg_message,
                              parse_block_size, parse_boot_e820, parse_iomem, parse_state,
                              parse_valid_zones, parse_virtio_mem_probes, parse_zoneinfo)

HOST = os.path.join(DATA, "host-6.18-idle")


def read(rel, mode="r"):
    with open(os.path.join(HOST, rel), mode) as f:
        return f.read()


def test_zoneinfo_of_a_real_machine():
    zones = parse_zoneinfo(read("proc/zoneinfo"))
    names = [(z.node, z.zone) for z in zones]
    assert ("0", "Normal") not in names and (0, "Normal") in names and (0, "Movable") in names
    normal = next(z for z in zones if z.zone == "Normal")
    # blocks 32-199 are Normal on that machine: 168 blocks of 32768 pages, all present
    assert normal.present == 168 * 32768
    assert all(z.cma == 0 for z in zones)


@pytest.mark.parametrize("text, message", [
    ("", "no 'Node N, zone NAME'"),
    ("Node 0, zone   Normal\n  pages free 3\n", "no 'present' line"),
    ("Node 0, zone   Normal\n        present  x12\n", "expected a number of pages"),
    ("Node 0, zone   Weird\n        present  12\n", "unknown zone name"),
    ("Node 0, zone   Normal\n        present  12\n        present  13\n", "two 'present' lines"),
])
def test_zoneinfo_garbage(text, message):
    with pytest.raises(ParseError, match=message):
        parse_zoneinfo(text)


def test_zoneinfo_cma_and_extra_fields():
    text = ("Node 1, zone   Normal\n  per-node stats\n      nr_free_pages 5\n  pages free     3\n"
            "        present  1000\n        managed  900\n        cma      100\n        newfield 7\n")
    (zone,) = parse_zoneinfo(text)
    assert (zone.node, zone.zone, zone.present, zone.cma) == (1, "Normal", 1000, 100)


def test_iomem_nesting_of_a_real_machine():
    roots = parse_iomem(read("proc/iomem"))
    ram = [r for r in roots if r.name == "System RAM"]
    assert any(r.start == 0x100000000 for r in ram)
    kernel = [c.name for r in ram for c in r.children]
    assert "Kernel code" in kernel
    assert not iomem_hidden(roots)


def test_iomem_hidden_and_garbage():
    assert iomem_hidden(parse_iomem("00000000-00000000 : System RAM\n00000000-00000000 : virtio5\n"))
    with pytest.raises(ParseError, match="line 1"):
        parse_iomem("zz-12 : System RAM\n")
    with pytest.raises(ParseError, match="deeper"):
        parse_iomem("    00001000-00002000 : System RAM\n")


def test_boot_e820_of_a_real_machine():
    ram = parse_boot_e820(read("sys/kernel/boot_params/data", "rb"))
    assert (0x100000000, 0x640000000) in ram  # the RAM above 4 GiB, as /proc/iomem shows it


def test_boot_e820_garbage():
    with pytest.raises(ParseError, match="4096 bytes"):
        parse_boot_e820(b"\0" * 100)
    data = bytearray(4096)
    data[0x1E8] = 200
    with pytest.raises(ParseError, match="does not fit"):
        parse_boot_e820(bytes(data))
    data[0x1E8] = 2
    struct.pack_into("<QQI", data, 0x2D0, 0, 0x9F000, 1)
    struct.pack_into("<QQI", data, 0x2D0 + 20, 0xF0000, 0x10000, 2)
    assert parse_boot_e820(bytes(data)) == [(0, 0x9F000)]


@pytest.mark.parametrize("text, ok", [("8000000\n", 0x8000000), ("0x8000000", 0x8000000),
                                      ("zz", None), ("", None), ("3000", None), ("10", None)])
def test_block_size(text, ok):
    if ok is None:
        with pytest.raises(ParseError):
            parse_block_size(text)
    else:
        assert parse_block_size(text) == ok


def test_state_and_valid_zones():
    assert parse_state("online\n") == "online"
    assert parse_valid_zones("Normal Movable\n") == ("Normal", "Movable")
    with pytest.raises(ParseError):
        parse_state("onlin")
    with pytest.raises(ParseError):
        parse_valid_zones("\n")
    with pytest.raises(ParseError):
        parse_valid_zones("Normal Bogus")
    with pytest.raises(ParseError, match="each zone once"):
        parse_valid_zones("Normal Movable Movable")


def test_the_valid_zones_of_many_blocks_share_one_tuple():
    """8192 blocks' zones are a few tuples, not one (and a name) per block."""
    a, b = parse_valid_zones("Normal Movable\n"), parse_valid_zones("Normal Movable")
    assert a is b
    machine = Machine(128 << 20)
    block = Block(48, "offline", 0, parse_valid_zones("Normal"), False)
    machine.add_online(block, "".join(["Mov", "able"]))  # a name of its own, as a decision's
    assert block.valid_zones is parse_valid_zones("Movable")


def test_virtio_mem_probe_lines():
    records = [
        "6,100,2000,-;virtio_mem virtio5: start address: 0x100000000",
        "6,101,2000,-;virtio_mem virtio5: region size: 0x400000000",
        "6,102,2000,-;virtio_mem virtio5: device block size: 0x200000",
        "6,103,2000,-;virtio_mem virtio5: nid: 0",
        "6,104,2000,-;virtio_mem virtio5: memory block size: 0x8000000",
        "6,105,2000,-;virtio_mem virtio5: subblock size: 0x200000",
        "6,110,2000,-;virtio_mem virtio6: start address: 0x500000000",
        "6,111,2000,-;virtio_mem virtio6: memory block size: 0x8000000",
        "6,112,2000,-;virtio_mem virtio6: big block size: 0x40000000",
        "6,113,2000,-;virtio_mem virtio7: start address: 0x900000000",
    ]
    # as read from /dev/kmsg: one record per read, with its continuation lines
    records = [r + "\n SUBSYSTEM=virtio\n DEVICE=+virtio:virtio5" for r in records]
    probes = parse_virtio_mem_probes([kmsg_message(r) for r in records])
    assert probes["virtio5"].unit_bytes == 0x8000000
    assert probes["virtio5"].fields["nid"] == 0
    assert probes["virtio6"].unit_bytes == 0x40000000
    assert probes["virtio7"].unit_bytes is None
    assert VirtioMemProbe("virtio9").unit_bytes is None


def test_format_size():
    assert [format_size(n) for n in (128 << 20, 2 << 30, 3 << 29, 1 << 40)] == ["128M", "2G", "1.5G", "1T"]
