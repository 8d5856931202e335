"""Discovery on trees recorded from real machines."""

import json
import os

from kernelbackend import DATA
from memonlined.backend import Backend
from memonlined.discover import discover


def test_idle_host_is_all_boot_memory():
    root = os.path.join(DATA, "host-6.18-idle")
    machine = discover(Backend(root)).machine
    expected = json.load(open(os.path.join(root, "kernel-layout.json")))["zones"]
    assert {str(i): b.zone for i, b in machine.blocks.items()} == expected
    assert all(b.early and b.group is None for b in machine.blocks.values())
    assert machine.groups == {}
    # Everything present is early kernel memory: the 21 GiB of Normal plus
    # what DMA/DMA32 hold (less than blocks 0-23, which span holes).
    node = machine.nodes[0]
    assert node.movable == 0 and node.hotplugged_kernel == 0
    assert 21 * 262144 < node.kernel_early < (200 - 8) * 32768
