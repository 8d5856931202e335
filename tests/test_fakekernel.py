"""Tests of the fake kernel itself (tests/fakekernel.py): its formats, and
that it reproduces what real 6.1 guests did."""

import errno
import os
import re
import struct

import pytest

from fakekernel import FakeKernel, GiB, MiB
from kernelbackend import DATA


def read(root, rel):
    with open(os.path.join(root, rel)) as f:
        return f.read()


def zones_by_block(fk, first, last):
    lay = fk.layout()
    return [lay.get(b) for b in range(first, last + 1)]


def parse_zoneinfo(text):
    """{(node, zone): {"present": .., "managed": .., "spanned": .., "cma": ..}}"""
    out, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"Node (\d+), zone\s+(\S+)$", line)
        if m:
            cur = out.setdefault((int(m.group(1)), m.group(2)), {})
            continue
        m = re.match(r"\s+(present|managed|spanned|cma)\s+(\d+)$", line)
        if m and cur is not None:
            cur[m.group(1)] = int(m.group(2))
    return out


def parse_iomem(text):
    """[(depth, start, end, name)]"""
    out = []
    for line in text.splitlines():
        m = re.match(r"( *)([0-9a-f]+)-([0-9a-f]+) : (.*)$", line)
        assert m, line
        out.append((len(m.group(1)) // 2, int(m.group(2), 16), int(m.group(3), 16), m.group(4)))
    return out


@pytest.fixture
def fk(tmp_path):
    return FakeKernel(tmp_path)


# ---------------------------------------------------------------- boot

def test_boot_layout_of_a_4_gib_vm(fk):
    lay = fk.layout()
    assert sorted(lay) == list(range(0, 16)) + list(range(32, 48))
    assert lay[0] == "none"                       # DMA + DMA32
    assert set(zones_by_block(fk, 1, 15)) == {"DMA32"}
    assert set(zones_by_block(fk, 32, 47)) == {"Normal"}
    assert read(fk.root, "sys/devices/system/memory/memory0/valid_zones") == "none\n"
    assert read(fk.root, "sys/devices/system/memory/memory1/valid_zones") == "DMA32\n"
    assert read(fk.root, "sys/devices/system/memory/memory40/valid_zones") == "Normal\n"
    assert read(fk.root, "sys/devices/system/memory/memory40/state") == "online\n"
    assert read(fk.root, "sys/devices/system/memory/memory40/online") == "1\n"
    assert read(fk.root, "sys/devices/system/memory/memory40/phys_index") == "00000028\n"
    assert read(fk.root, "sys/devices/system/memory/block_size_bytes") == "8000000\n"
    assert read(fk.root, "sys/devices/system/memory/auto_online_blocks") == "offline\n"
    assert os.readlink(os.path.join(fk.root, "sys/devices/system/memory/memory40/node0")) \
        == "../../node/node0"
    assert os.path.isdir(os.path.join(fk.root, "sys/devices/system/memory/memory40/node0"))
    # early memory: block 0 has holes (page 0, 0x9f000-0xfffff)
    dma = fk.zone(0, "DMA")
    assert (dma.zone_start_pfn, dma.spanned_pages, dma.present_pages) == (1, 4095, 3998)
    assert fk.blocks[0].present == 32768 - 98 and fk.blocks[0].early


def test_module_parameters(tmp_path):
    fk = FakeKernel(tmp_path, ratio=200, numa_aware=False)
    p = "sys/module/memory_hotplug/parameters/"
    assert read(tmp_path, p + "online_policy") == "auto-movable\n"
    assert read(tmp_path, p + "auto_movable_ratio") == "200\n"
    assert read(tmp_path, p + "auto_movable_numa_aware") == "N\n"
    assert read(tmp_path, p + "memmap_on_memory") == "N\n"
    fk.set_param("online_policy", "contig-zones")
    assert read(tmp_path, p + "online_policy") == "contig-zones\n"


def test_old_kernel_has_no_policy_parameters(tmp_path):
    fk = FakeKernel(tmp_path / "k", kernel_version=(5, 10))
    p = tmp_path / "k/sys/module/memory_hotplug/parameters"
    assert sorted(os.listdir(p)) == ["memmap_on_memory"]
    fk.add_dimm(4 * GiB)
    fk.write_state(48, "online")
    assert fk.layout()[48] == "Normal"            # default_zone_for_pfn()


def test_boot_params_e820(fk):
    with open(os.path.join(fk.root, "sys/kernel/boot_params/data"), "rb") as f:
        data = f.read()
    assert len(data) == 4096
    n = data[0x1e8]
    entries = [struct.unpack_from("<QQI", data, 0x2d0 + 20 * i) for i in range(n)]
    ram = [(a, s) for a, s, t in entries if t == 1]
    # as recorded in a QEMU 7.2 guest
    assert ram == [(0, 0x9fc00), (0x100000, 0x7fedf000), (4 * GiB, 2 * GiB)]
    assert [a for a, s, t in entries if t == 2] == [
        0x9fc00, 0xf0000, 0x7ffdf000, 0xb0000000, 0xfed1c000, 0xfffc0000, 0xfd00000000]


def test_boot_memmap(fk):
    d = os.path.join(fk.root, "sys/firmware/memmap")
    entries = {int(k): tuple(read(d, "%s/%s" % (k, f)).strip() for f in ("start", "end", "type"))
               for k in os.listdir(d)}
    assert entries[0] == ("0x0", "0x9fbff", "System RAM")
    assert ("0x100000000", "0x17fffffff", "System RAM") in entries.values()
    assert any(t == "Reserved" for _, _, t in entries.values())


# ---------------------------------------------------- the cover letter

def test_five_dimms_onlined_one_by_one(fk):
    for _ in range(5):
        name = fk.add_dimm(4 * GiB)
        for b in sorted(fk.devices[name].blocks):
            assert fk.zone_for_online(b) == \
                read(fk.root, "sys/devices/system/memory/memory%d/valid_zones" % b).split()[0]
            fk.write_state(b, "online")
    assert set(zones_by_block(fk, 48, 143)) == {"Movable"}
    assert set(zones_by_block(fk, 144, 207)) == {"Normal"}


def test_five_dimms_kernel_auto_online(tmp_path):
    fk = FakeKernel(tmp_path, auto_online="online")
    for _ in range(5):
        fk.add_dimm(4 * GiB)
    assert set(zones_by_block(fk, 48, 143)) == {"Movable"}
    assert set(zones_by_block(fk, 144, 207)) == {"Normal"}
    assert ("online", "/devices/system/memory/memory48") in fk.events


def test_virtio_mem_grown_and_shrunk(fk):
    name = fk.add_virtio_mem(16 * GiB)
    for _ in range(128):
        (b,) = fk.virtio_mem_plug(name, 128 * MiB)
        fk.write_state(b, "online\n")
    expect = ["Movable"] * 96 + ["Normal", "Movable", "Movable", "Movable"] * 8
    assert zones_by_block(fk, 48, 175) == expect
    # shrink to 2 GiB: virtio-mem gives back what it can (Movable) first
    for b in sorted(fk.devices[name].blocks, reverse=True):
        if len(fk.devices[name].blocks) > 16 and fk.layout()[b] == "Movable":
            fk.virtio_mem_unplug_block(name, b)
    assert sorted(fk.devices[name].blocks) == list(range(48, 56)) + list(range(144, 176, 4))


def test_contig_zones_puts_everything_in_normal(tmp_path):
    fk = FakeKernel(tmp_path, policy="contig-zones")
    name = fk.add_dimm(4 * GiB)
    assert read(tmp_path, "sys/devices/system/memory/memory48/valid_zones") == "Normal Movable\n"
    for b in sorted(fk.devices[name].blocks):
        fk.write_state(b, "online")
    assert set(zones_by_block(fk, 48, 79)) == {"Normal"}


# ---------------------------------------------------- the decision

def test_valid_zones_first_word_is_the_auto_movable_answer(fk):
    a = fk.add_dimm(4 * GiB)
    vz = read(fk.root, "sys/devices/system/memory/memory48/valid_zones")
    assert vz == "Movable Normal\n"
    for b in sorted(fk.devices[a].blocks):
        fk.write_state(b, "online_kernel")
    # a DIMM partly in a kernel zone goes wholly to kernel zones; others follow
    b2 = fk.add_dimm(4 * GiB)
    assert read(fk.root, "sys/devices/system/memory/memory80/valid_zones") == "Movable Normal\n"
    fk.write_state(80, "online_kernel")
    assert read(fk.root, "sys/devices/system/memory/memory81/valid_zones") == "Normal Movable\n"
    assert fk.zone_for_online(81) == "Normal"
    assert fk.devices[b2].group.present_kernel_pages == 32768


def test_valid_zones_stay_consistent_after_every_write(fk):
    fk.add_dimm(8 * GiB)
    fk.add_dimm(8 * GiB)
    fk.add_virtio_mem(8 * GiB)
    fk.virtio_mem_plug("virtio5", 4 * GiB)
    for b in sorted(i for i, m in fk.blocks.items() if m.state == "offline"):
        fk.write_state(b, "online")
        for o, mem in fk.blocks.items():
            if mem.state == "offline":
                on_disk = read(fk.root, "sys/devices/system/memory/memory%d/valid_zones" % o)
                assert on_disk.split()[0] == fk.zone_for_online(o), (b, o)


def test_numa_node_without_boot_memory_never_gets_movable(tmp_path):
    fk = FakeKernel(tmp_path, nodes=(1,))
    fk.add_dimm(1 * GiB, node=1)
    fk.write_state(48, "online")
    assert fk.layout()[48] == "Normal"
    fk2 = FakeKernel(tmp_path / "b", nodes=(1,), numa_aware=False)
    fk2.add_dimm(1 * GiB, node=1)
    fk2.write_state(48, "online")
    assert fk2.layout()[48] == "Movable"
    assert os.readlink(tmp_path / "b/sys/devices/system/memory/memory48/node1") == "../../node/node1"


def test_offlining_boot_memory_lowers_kernel_early(fk):
    name = fk.add_dimm(11 * GiB + 768 * MiB)      # 94 blocks: fits 3.01 * ~4 GiB
    assert fk.zone_for_online(48) == "Movable"
    for b in range(32, 48):                        # take away 2 GiB of early memory
        fk.write_state(b, "offline")
    assert fk.zone_for_online(48) == "Normal"
    for b in range(32, 48):
        fk.write_state(b, "online")
    assert fk.layout()[32] in ("Normal", "Movable")
    assert fk.zone(0, "Normal").present_early_pages + fk.zone(0, "Movable").present_early_pages \
        == 16 * 32768
    assert name


def test_cma_counts_as_movable(tmp_path):
    fk = FakeKernel(tmp_path, cma={(0, "DMA32"): 262144})   # 1 GiB of CMA
    fk.add_dimm(9 * GiB)
    # kernel_early = 4 GiB - 1 GiB CMA (- holes); movable = 1 GiB CMA + 9 GiB
    assert fk.zone_for_online(48) == "Normal"
    fk2 = FakeKernel(tmp_path / "b")
    fk2.add_dimm(9 * GiB)
    assert fk2.zone_for_online(48) == "Movable"
    assert parse_zoneinfo(read(tmp_path, "proc/zoneinfo"))[(0, "DMA32")]["cma"] == 262144


def test_dax_kmem(tmp_path):
    fk = FakeKernel(tmp_path)
    fk.add_dax_kmem(2 * GiB, parent="Soft Reserved")
    assert fk.zone_for_online(48) == "Movable"
    fk2 = FakeKernel(tmp_path / "b")
    fk2.add_dax_kmem(2 * GiB, max_pages_in_bytes=True)   # the pre-fix bug
    assert fk2.zone_for_online(48) == "Normal"
    tree = parse_iomem(read(tmp_path, "proc/iomem"))
    assert (0, 6 * GiB, 8 * GiB - 1, "Soft Reserved") in tree
    assert (1, 6 * GiB, 8 * GiB - 1, "dax0.0") in tree
    assert (2, 6 * GiB, 8 * GiB - 1, "System RAM (kmem)") in tree


def test_bbm_units_decide_together(tmp_path):
    fk = FakeKernel(tmp_path)
    name = fk.add_virtio_mem(8 * GiB, device_block_size=1 * GiB)
    assert fk.devices[name].group.unit_pages == GiB >> 12
    blocks = fk.virtio_mem_plug(name, 1 * GiB)
    assert len(blocks) == 8
    fk.write_state(blocks[0], "online_kernel")
    # one kernel section in the unit: the rest of the unit follows
    assert all(fk.zone_for_online(b) == "Normal" for b in blocks[1:])
    assert "big block size: 0x40000000" in read(tmp_path, "dev/kmsg")


def test_memmap_on_memory_pages_are_present_not_managed(tmp_path):
    fk = FakeKernel(tmp_path, memmap_on_memory=True)
    assert read(tmp_path, "sys/module/memory_hotplug/parameters/memmap_on_memory") == "Y\n"
    fk.add_dimm(128 * MiB)
    before = fk.zone(0, "Movable").managed_pages
    fk.write_state(48, "online_movable")
    z = fk.zone(0, "Movable")
    assert z.present_pages == 32768 and z.managed_pages - before == 32768 - 512


# ---------------------------------------------------- write(2) semantics

def test_einval_cases(fk):
    fk.add_dimm(1 * GiB)
    for bad in ("bogus", "online \n", "online\n\n", ""):
        with pytest.raises(OSError) as e:
            fk.write_state(48, bad)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        fk.write_state(48, "offline")             # already offline
    assert e.value.errno == errno.EINVAL
    fk.write_state(48, b"online_movable\n")
    with pytest.raises(OSError) as e:
        fk.write_state(48, "online_kernel")       # already online
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        fk.write_state(0, "offline")              # spans zones, has holes
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        fk.write_state(999, "online")
    assert e.value.errno == errno.ENOENT
    assert fk.layout()[48] == "Movable"


def test_injected_faults(fk):
    fk.add_dimm(1 * GiB)
    fk.inject_fault(48, "online", errno.ENOMEM)
    with pytest.raises(OSError) as e:
        fk.write_state(48, "online")
    assert e.value.errno == errno.ENOMEM
    assert fk.layout()[48] is None
    assert read(fk.root, "sys/devices/system/memory/memory48/state") == "offline\n"
    fk.write_state(48, "online")                  # the fault fires once
    fk.inject_fault(48, "offline", errno.EBUSY)
    with pytest.raises(OSError) as e:
        fk.write_state(48, "offline")
    assert e.value.errno == errno.EBUSY
    assert fk.layout()[48] == "Movable"


def test_poll_writes_applies_what_was_written_to_disk(fk):
    fk.add_dimm(1 * GiB)
    with open(os.path.join(fk.root, "sys/devices/system/memory/memory49/state"), "w") as f:
        f.write("online_kernel\n")
    with open(os.path.join(fk.root, "sys/devices/system/memory/memory50/state"), "w") as f:
        f.write("nonsense\n")
    assert fk.poll_writes() == [(49, "online_kernel", None), (50, "nonsense", errno.EINVAL)]
    assert fk.layout()[49] == "Normal"
    assert read(fk.root, "sys/devices/system/memory/memory50/state") == "offline\n"


# ---------------------------------------------------- formats

def test_zoneinfo_tracks_present_pages(fk):
    zi = parse_zoneinfo(read(fk.root, "proc/zoneinfo"))
    assert [z for n, z in zi] == ["DMA", "DMA32", "Normal", "Movable", "Device"]
    assert zi[(0, "DMA32")]["present"] == 520159          # as in a real guest
    assert zi[(0, "Normal")] == {"spanned": 16 * 32768, "present": 16 * 32768,
                                 "managed": zi[(0, "Normal")]["managed"], "cma": 0}
    assert zi[(0, "Movable")]["present"] == 0
    fk.add_dimm(1 * GiB)
    fk.write_state(50, "online_movable")
    zi = parse_zoneinfo(read(fk.root, "proc/zoneinfo"))
    assert zi[(0, "Movable")]["present"] == 32768
    assert zi[(0, "Movable")]["spanned"] == 32768
    text = read(fk.root, "proc/zoneinfo")
    assert "Node 0, zone  Movable\n  pages free" in text
    assert "start_pfn:           %d" % (50 * 32768) in text
    assert text.count("per-node stats") == 1


def test_iomem_virtio_children_merge_and_split(fk):
    name = fk.add_virtio_mem(4 * GiB)
    fk.virtio_mem_plug(name, 1 * GiB)
    tree = parse_iomem(read(fk.root, "proc/iomem"))
    assert (0, 6 * GiB, 10 * GiB - 1, "virtio5") in tree
    assert (1, 6 * GiB, 7 * GiB - 1, "System RAM (virtio_mem)") in tree
    fk.virtio_mem_unplug_block(name, 50)
    tree = parse_iomem(read(fk.root, "proc/iomem"))
    kids = [(s, e) for d, s, e, n in tree if n == "System RAM (virtio_mem)"]
    assert kids == [(6 * GiB, 6 * GiB + 256 * MiB - 1), (6 * GiB + 384 * MiB, 7 * GiB - 1)]
    assert "100000000-17fffffff : System RAM\n" in read(fk.root, "proc/iomem")
    assert "00001000-0009fbff : System RAM\n" in read(fk.root, "proc/iomem")
    fk.set_iomem_root(False)
    assert set(re.findall(r"^ *([0-9a-f]+-[0-9a-f]+)", read(fk.root, "proc/iomem"), re.M)) \
        == {"00000000-00000000"}


def test_iomem_starts_are_sorted_and_children_nested(fk):
    fk.add_dimm(1 * GiB)
    fk.add_virtio_mem(2 * GiB)
    fk.add_dax_kmem(1 * GiB)
    tree = parse_iomem(read(fk.root, "proc/iomem"))
    top = [s for d, s, e, n in tree if d == 0]
    assert top == sorted(top)
    parents = []
    for depth, s, e, n in tree:
        parents[depth:] = [(s, e)]
        if depth:
            ps, pe = parents[depth - 1]
            assert ps <= s and e <= pe


def test_dimm_links_and_memmap(fk):
    name = fk.add_dimm(2 * GiB, link_firmware_node=False)
    link = os.path.join(fk.root, "sys/devices/system/memory/memory48/firmware_node")
    assert not os.path.lexists(link)
    fk.link_firmware_nodes(name)
    assert os.readlink(link) == "../../../LNXSYSTM:00/LNXSYBUS:00/PNP0A06:04/PNP0C80:00"
    assert os.path.basename(os.path.realpath(link)) == "PNP0C80:00"
    d = os.path.join(fk.root, "sys/firmware/memmap")
    last = str(max(int(k) for k in os.listdir(d)))
    assert read(d, last + "/start") == "0x180000000\n"
    assert read(d, last + "/end") == "0x1ffffffff\n"
    fk.remove_dimm(name)
    assert not os.path.exists(os.path.join(d, last))
    assert 48 not in fk.blocks
    assert ("remove", "/devices/system/memory/memory48") in fk.events


def test_coldplugged_dimm_memmap_numbered_first(tmp_path):
    fk = FakeKernel(tmp_path, coldplug_dimms=[{"size": 1 * GiB}])
    assert read(tmp_path, "sys/firmware/memmap/0/start") == "0x180000000\n"
    assert read(tmp_path, "sys/firmware/memmap/1/start") == "0x0\n"
    assert fk.layout()[48] is None


def test_boot_acpi_links_boot_memory_without_group(tmp_path):
    fk = FakeKernel(tmp_path, boot_acpi=True)
    assert os.path.islink(tmp_path / "sys/devices/system/memory/memory40/firmware_node")
    assert fk.group_of(40) is None


def test_kmsg_virtio_mem_probe_lines(fk):
    fk.add_virtio_mem(16 * GiB, node=0)
    lines = [l for l in read(fk.root, "dev/kmsg").splitlines() if not l.startswith(" ")]
    msgs = [l.split(";", 1)[1] for l in lines if "virtio_mem" in l]
    assert msgs == [
        "virtio_mem virtio5: start address: 0x180000000",
        "virtio_mem virtio5: region size: 0x400000000",
        "virtio_mem virtio5: device block size: 0x200000",
        "virtio_mem virtio5: nid: 0",
        "virtio_mem virtio5: memory block size: 0x8000000",
        "virtio_mem virtio5: subblock size: 0x200000",
        "virtio_mem virtio5: plugged size: 0x0",
        "virtio_mem virtio5: requested size: 0x0",
    ]
    fk.virtio_mem_plug("virtio5", 1 * GiB)
    msgs = [l.split(";", 1)[1] for l in read(fk.root, "dev/kmsg").splitlines()
            if not l.startswith(" ")]
    assert msgs[-2:] == ["virtio_mem virtio5: plugged size: 0x0",
                         "virtio_mem virtio5: requested size: 0x40000000"]
    seqs = [int(l.split(",")[1]) for l in lines]
    assert seqs == list(range(len(seqs)))
    assert all(re.match(r"6,\d+,\d+,-;", l) for l in lines)


@pytest.fixture
def fast_tmp(tmp_path):
    """A tmpfs directory when there is one: 16384 blocks are ~150k files."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    import shutil
    import tempfile
    d = tempfile.mkdtemp(dir="/dev/shm", prefix="fakekernel-")
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_large_scenario_builds_fast(fast_tmp):
    import time
    t = time.monotonic()
    fk = FakeKernel(fast_tmp, boot_ram=((0, 2 * GiB), (4 * GiB, 2046 * GiB)))
    assert len(fk.blocks) == 16384
    assert time.monotonic() - t < 30


def test_state_write_waits_for_a_dimm_being_added(fk):
    name = fk.add_dimm(1 * GiB, link_firmware_node=False)
    link = os.path.join(fk.root, "sys/devices/system/memory/memory49/firmware_node")
    assert not os.path.lexists(link)
    fk.write_state(48, "online")      # blocks on the device-hotplug lock...
    assert os.path.islink(link)       # ...until ACPI has bound the blocks
    assert fk.lock_waits == 1 and fk.devices[name].linked


def test_node_masks(tmp_path):
    fk = FakeKernel(tmp_path, nodes=(1, 2))
    d = "sys/devices/system/node/"
    assert read(tmp_path, d + "online") == "0-2\n"
    assert read(tmp_path, d + "has_memory") == "0\n"
    fk.add_dimm(1 * GiB, node=2)
    fk.write_state(48, "online_movable")
    assert read(tmp_path, d + "has_memory") == "0,2\n"
    assert read(tmp_path, d + "has_normal_memory") == "0\n"


# ---------------------------------------------------- internal consistency

from hypothesis import HealthCheck, given, settings, strategies as st

OPS = st.lists(st.one_of(
    st.tuples(st.just("dimm"), st.sampled_from([1, 2, 4]), st.sampled_from([0, 1])),
    st.tuples(st.just("virtio"), st.sampled_from([1, 2, 8]), st.sampled_from([0, 1])),
    st.tuples(st.just("dax"), st.sampled_from([1, 2]), st.sampled_from([0, 1])),
    st.tuples(st.just("write"), st.integers(0, 300),
              st.sampled_from(["online", "online_kernel", "online_movable", "offline"])),
    st.tuples(st.just("unplug"), st.integers(0, 300), st.just(0)),
    st.tuples(st.just("bbm"), st.sampled_from([2, 4]), st.sampled_from([0, 1])),
    st.tuples(st.just("param"), st.sampled_from(["online_policy", "auto_movable_ratio",
                                                 "auto_movable_numa_aware"]),
              st.sampled_from(["auto-movable", "contig-zones", "0", "100", "301", "N", "Y"])),
), max_size=25)


def check_consistent(fk):
    for nid, pgdat in fk.nodes.items():
        online = [m for m in fk.blocks.values() if m.nid == nid and m.state == "online"]
        assert sum(z.present_pages for z in pgdat.node_zones) == sum(m.present for m in online)
        assert sum(z.present_early_pages for z in pgdat.node_zones) == \
            sum(m.present for m in online if m.early)
        for m in online:   # zones span their online blocks (but holes)
            if m.zone is not None and m.present == fk.pages_per_block:
                assert m.zone.zone_start_pfn <= m.start_pfn
                assert m.start_pfn + fk.pages_per_block <= m.zone.zone_end_pfn()
    for g in fk.memory_groups.values():
        mine = [m for m in fk.blocks.values() if m.group is g and m.state == "online"]
        assert g.present_movable_pages == sum(m.present for m in mine if m.zone.name == "Movable")
        assert g.present_kernel_pages == sum(m.present for m in mine if m.zone.name != "Movable")
    for b, mem in fk.blocks.items():
        vz = read(fk.root, "sys/devices/system/memory/memory%d/valid_zones" % b)
        assert read(fk.root, "sys/devices/system/memory/memory%d/state" % b) == mem.state + "\n"
        if mem.state == "offline":
            assert vz == fk._valid_zones_text(mem)
            assert vz.split()[0] == fk.zone_for_online(b)
        else:
            assert vz == (mem.zone.name if mem.zone else "none") + "\n"


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS, policy=st.sampled_from(["auto-movable", "contig-zones"]),
       auto_online=st.sampled_from(["offline", "online"]), ratio=st.sampled_from([0, 100, 301]))
def test_random_operations_keep_the_kernel_consistent(ops, policy, auto_online, ratio):
    import shutil
    import tempfile
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = tempfile.mkdtemp(dir=base, prefix="fakekernel-")
    try:
        fk = FakeKernel(root, policy=policy, auto_online=auto_online, ratio=ratio,
                        boot_ram={0: [(0, 2 * GiB)], 1: [(4 * GiB, 1 * GiB)]})
        for op, a, b in ops:
            if op == "dimm":
                fk.add_dimm(a * GiB, node=b)
            elif op == "dax":
                fk.add_dax_kmem(a * GiB, node=b)
            elif op == "virtio":
                name = fk.add_virtio_mem(a * GiB, node=b)
                fk.virtio_mem_plug(name, a * GiB // 2)
            elif op == "bbm":
                name = fk.add_virtio_mem(a * GiB, node=b, device_block_size=512 * MiB)
                fk.virtio_mem_plug(name, a * GiB // 2)
            elif op == "param":
                try:
                    fk.set_param(a, b)
                except OSError as e:
                    assert e.errno == errno.EINVAL
            elif op == "write" and a in fk.blocks:
                mem = fk.blocks[a]
                expect = fk.zone_for_online(a) if b == "online" and mem.state == "offline" else None
                try:
                    fk.write_state(a, b)
                except OSError as e:
                    assert e.errno == errno.EINVAL
                    continue
                if expect:
                    assert fk.layout()[a] == expect
            elif op == "unplug" and a in fk.blocks and fk.blocks[a].device:
                dev = fk.devices[fk.blocks[a].device]
                if dev.kind == "virtio_mem":
                    fk.virtio_mem_unplug_block(dev.name, a)
            check_consistent(fk)
    finally:
        shutil.rmtree(root)


def test_reserved_range_cuts_a_hole_in_boot_memory(tmp_path):
    fk = FakeKernel(tmp_path, reserved=[(0x7ffe0000, 0x20000)])
    assert fk.blocks[15].present == 32768 - 32 and fk.blocks[15].early
    assert fk.layout()[15] == "DMA32"
    with pytest.raises(OSError) as e:
        fk.write_state(15, "offline")             # offline_pages(): memory holes
    assert e.value.errno == errno.EINVAL
    fk.write_state(14, "offline")
    assert "7ffe0000-7fffffff : Reserved\n" in read(tmp_path, "proc/iomem")
    assert ("0x7ffe0000", "Reserved") in [
        (read(tmp_path, "sys/firmware/memmap/%s/start" % k).strip(),
         read(tmp_path, "sys/firmware/memmap/%s/type" % k).strip())
        for k in os.listdir(tmp_path / "sys/firmware/memmap")]


# ---------------------------------------------------- against real guests


def recorded(name):
    path = os.path.join(DATA, name)
    if not os.path.isfile(os.path.join(path, "kernel-layout.json")):
        pytest.skip("no recording %s" % name)
    return path


def hot_blocks(root):
    mem = os.path.join(root, "sys/devices/system/memory")
    return {int(n[6:]): (read(mem, n + "/state"), read(mem, n + "/valid_zones"))
            for n in os.listdir(mem) if n.startswith("memory") and int(n[6:]) >= 48}


def test_matches_the_recorded_dimm_guest(fk):
    import json
    real = recorded("dimm-4x4g")
    for _ in range(5):
        fk.add_dimm(4 * GiB)
    assert hot_blocks(fk.root) == hot_blocks(real)
    fz = parse_zoneinfo(read(fk.root, "proc/zoneinfo"))
    for key, rz in parse_zoneinfo(read(real, "proc/zoneinfo")).items():
        assert (fz[key]["present"], fz[key]["spanned"]) == (rz["present"], rz["spanned"]), key
    for b in sorted(hot_blocks(fk.root)):
        fk.write_state(b, "online")
    with open(os.path.join(real, "kernel-layout.json")) as f:
        zones = {int(k): v for k, v in json.load(f)["zones"].items()}
    assert fk.layout() == zones
    fw = "sys/devices/system/memory/memory48/firmware_node"
    assert os.readlink(os.path.join(fk.root, fw)) == os.readlink(os.path.join(real, fw))


@pytest.mark.parametrize("mode,device_block_size,steps", [
    ("sbm", 2 * MiB, 5), ("bbm", 1 * GiB, 3)])
def test_matches_the_recorded_virtio_mem_guest(fk, mode, device_block_size, steps):
    name = fk.add_virtio_mem(16 * GiB, name="virtio9", device_block_size=device_block_size)
    for step in range(1, steps + 1):
        real = recorded("virtio-mem-%s-%dg" % (mode, step))
        for b, (state, _) in hot_blocks(fk.root).items():
            if state == "offline\n":
                fk.write_state(b, "online")       # what the daemon did between steps
        fk.virtio_mem_plug(name, 1 * GiB)
        assert hot_blocks(fk.root) == hot_blocks(real)
        virtio = lambda text: [l for l in text.splitlines() if "virtio9" in l or "virtio_mem)" in l]
        assert virtio(read(fk.root, "proc/iomem")) == virtio(read(real, "proc/iomem"))
    probe = lambda text: [l.split(";", 1)[1] for l in text.splitlines()
                          if ";virtio_mem" in l][:8]
    assert probe(read(fk.root, "dev/kmsg")) == probe(read(real, "dev/kmsg"))
