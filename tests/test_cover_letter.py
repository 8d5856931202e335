"""The kernel series' two examples, as the real 6.1 kernel produced them in a
guest (KERNEL-NOTES section 3), done by memonlined on the fake kernel with
the kernel's own policy switched off (contig-zones, as on 5.10)."""

import pytest

from fakekernel import FakeKernel, GiB
from kernelbackend import memonlined


def zones(kernel, first, last):
    layout = kernel.layout()
    return [layout[i] for i in range(first, last + 1)]


@pytest.mark.parametrize("one_by_one", [True, False], ids=["hot-plugged one by one", "all present at once"])
def test_five_dimms(tmp_path, one_by_one):
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    for _ in range(5):
        kernel.add_dimm(4 * GiB)
        if one_by_one:
            assert memonlined(kernel, "online")[0] == 0
    assert memonlined(kernel, "online")[0] == 0
    assert zones(kernel, 48, 143) == ["Movable"] * 96
    assert zones(kernel, 144, 207) == ["Normal"] * 64


def test_virtio_mem_grown_to_16g(tmp_path):
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    vm = kernel.add_virtio_mem(16 * GiB)
    for _ in range(128):
        kernel.virtio_mem_plug(vm, 128 << 20)
        assert memonlined(kernel, "online")[0] == 0
    assert zones(kernel, 48, 143) == ["Movable"] * 96
    # then Normal 144, Movable 145-147, Normal 148, Movable 149-151, ... up to 175
    assert zones(kernel, 144, 175) == ["Normal", "Movable", "Movable", "Movable"] * 8
