"""One scenario for each consequence of the kernel's policy (KERNEL-NOTES 2).

Each runs twice: memonlined on a fake kernel with the kernel's policy off,
and the fake kernel's own auto-movable policy (a transliteration of
mm/memory_hotplug.c). The layouts must be equal, and the consequence must
show in them.
"""

import pytest

from fakekernel import FakeKernel, GiB, MiB
from kernelbackend import kernel_online_all, memonlined


class Twins:
    """The same hot-plug history on two fake kernels."""

    def __init__(self, tmp_path, options=(), **kw):
        self.ours = FakeKernel(tmp_path / "ours", policy="contig-zones", **kw)
        self.theirs = FakeKernel(tmp_path / "theirs", policy="auto-movable", **kw)
        self.options = list(options)

    def do(self, method, *args, **kw):
        """Call a fake-kernel method on both; returns what the first returned."""
        out = getattr(self.ours, method)(*args, **kw)
        assert getattr(self.theirs, method)(*args, **kw) == out
        return out

    def online(self):
        rc, out = memonlined(self.ours, *self.options, "online")
        assert rc == 0, out
        layout = self.ours.layout()
        assert layout == kernel_online_all(self.theirs)
        return layout


def test_a_dimm_is_wholly_movable_or_wholly_normal(tmp_path):
    t = Twins(tmp_path)
    t.do("add_dimm", 10 * GiB)   # fits 301% of 4 GiB
    t.do("add_dimm", 4 * GiB)    # would fit in part, goes wholly Normal
    layout = t.online()
    assert {layout[i] for i in range(48, 128)} == {"Movable"}
    assert {layout[i] for i in range(128, 160)} == {"Normal"}


def test_a_dimm_partly_in_a_kernel_zone_stays_there(tmp_path):
    t = Twins(tmp_path)
    vm = t.do("add_virtio_mem", 16 * GiB)
    grown = t.do("virtio_mem_plug", vm, 12 * GiB)
    t.do("add_dimm", GiB)
    layout = t.online()                            # the room is used up: the DIMM goes Normal
    dimm_blocks = sorted(i for i in layout if i > grown[-1])
    assert {layout[i] for i in dimm_blocks} == {"Normal"}
    for index in grown[-16:]:                      # virtio-mem gives 2 GiB back: room again ...
        t.do("virtio_mem_unplug_block", vm, index)
    t.do("write_state", dimm_blocks[-1], "offline")  # ... and an administrator offlines a DIMM block
    layout = t.online()
    assert layout[dimm_blocks[-1]] == "Normal"     # the DIMM already has kernel memory: it stays there


def test_virtio_mem_kernel_memory_buys_room_for_that_device_only(tmp_path):
    t = Twins(tmp_path)
    a = t.do("add_virtio_mem", 16 * GiB)
    for _ in range(100):                            # past the ratio: Normal blocks appear in device a
        t.do("virtio_mem_plug", a, 128 * MiB)
        t.online()
    b = t.do("add_virtio_mem", 4 * GiB)
    added = t.do("virtio_mem_plug", b, 4 * 128 * MiB)
    layout = t.online()
    grown = [layout[i] for i in range(48, 148)]
    first_normal = grown.index("Normal")
    assert "Movable" in grown[first_normal:]         # a's kernel memory bought a more Movable room ...
    assert "Normal" in {layout[i] for i in added}    # ... but not b


def test_numa_aware_node_without_boot_memory_gets_no_movable(tmp_path):
    t = Twins(tmp_path, boot_ram={0: [(0, 2 * GiB), (4 * GiB, 2 * GiB)]}, nodes=(1,))
    t.do("add_dimm", GiB, node=1)
    layout = t.online()
    assert {layout[i] for i in range(48, 56)} == {"Normal"}


def test_numa_unaware_node_without_boot_memory_gets_movable(tmp_path):
    t = Twins(tmp_path, ["--numa-aware", "no"], numa_aware=False,
              boot_ram={0: [(0, 2 * GiB), (4 * GiB, 2 * GiB)]}, nodes=(1,))
    t.do("add_dimm", GiB, node=1)
    layout = t.online()
    assert {layout[i] for i in range(48, 56)} == {"Movable"}


def test_offlining_boot_memory_lowers_the_room(tmp_path):
    t = Twins(tmp_path)
    for index in range(40, 48):                     # 1 GiB of boot Normal memory goes away
        t.do("write_state", index, "offline")
    t.do("add_dimm", 12 * GiB)
    layout = t.online()
    # Ascending: the boot blocks come back first, and Movable (they fit); the
    # 12 GiB DIMM no longer fits 301% of the 3 GiB of early kernel memory left.
    assert {layout[i] for i in range(40, 48)} == {"Movable"}
    assert {layout[i] for i in range(48, 144)} == {"Normal"}


def test_cma_counts_as_movable(tmp_path):
    t = Twins(tmp_path, cma={(0, "Normal"): 2 * GiB // 4096})
    t.do("add_dimm", 5 * GiB)   # without CMA it would fit; 2 GiB CMA is Movable and not early kernel
    layout = t.online()
    assert {layout[i] for i in range(48, 88)} == {"Normal"}


@pytest.mark.parametrize("ratio, zone", [(0, "Normal"), (100, "Movable"), (99, "Normal")])
def test_ratio(tmp_path, ratio, zone):
    # a 5 GiB DIMM against exactly 5 GiB of boot memory (no block 0 and its holes)
    t = Twins(tmp_path, ["--ratio", str(ratio)], ratio=ratio, boot_ram=[(1 * GiB, 1 * GiB), (4 * GiB, 4 * GiB)])
    t.do("add_dimm", 5 * GiB)
    layout = t.online()
    assert {layout[i] for i in range(64, 104)} == {zone}


def test_a_dax_device_is_decided_as_a_whole(tmp_path):
    t = Twins(tmp_path)
    t.do("add_dimm", 10 * GiB)                      # leaves about 2 GiB of room
    t.do("add_dax_kmem", 4 * GiB, parent="Soft Reserved")  # a block would fit, the device does not
    layout = t.online()
    dax = range(128, 160)
    assert {layout[i] for i in dax} == {"Normal"}


def test_memmap_on_memory_changes_no_decision(tmp_path):
    """memory_hotplug.memmap_on_memory=1: each DIMM block's memmap lives in
    its first pages, which the kernel counts present in the block's zone
    (memory_block_online(): adjust_present_page_count() of the vmemmap
    pages), so the ratio sees whole blocks as before (proven by hand in a 6.1
    guest too: see the README). status says the parameter, as lsmem does."""
    t = Twins(tmp_path, memmap_on_memory=True)
    t.do("add_dimm", 10 * GiB)
    t.do("add_dimm", 4 * GiB)
    layout = t.online()
    assert {layout[i] for i in range(48, 128)} == {"Movable"} and {layout[i] for i in range(128, 160)} == {"Normal"}
    assert "memmap_on_memory: Y" in memonlined(t.ours, "status")[1]
