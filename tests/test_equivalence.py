"""Property tests: memonlined decides what the kernel's auto-movable policy
decides, over random machines and hot-plug histories.

Two fake kernels get the same scenario. In one, memonlined onlines (the
kernel's own policy off); in the other, the kernel's policy does (a plain
`online` under auto-movable). Every step, the layouts must be equal, and
memonlined's dry-run must predict the layout its real run then produces.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakekernel import FakeKernel, GiB, MiB
from kernelbackend import kernel_online_all, memonlined, plan


boot_memory = st.sampled_from([
    {0: [(0, 2 * GiB), (4 * GiB, 2 * GiB)]},                      # the 4 GiB VM of the cover letter
    {0: [(0, 1 * GiB)]},                                           # a small VM
    {0: [(0, 2 * GiB)], 1: [(4 * GiB, 1 * GiB)]},                  # two nodes
    {0: [(0, 2 * GiB), (4 * GiB, 1 * GiB)], 1: [(5 * GiB, 3 * GiB)]},
])
step = st.one_of(
    st.tuples(st.just("dimm"), st.integers(1, 24), st.integers(0, 1)),           # blocks, node
    st.tuples(st.just("virtio"), st.integers(1, 24), st.integers(0, 1)),         # blocks to plug, node
    st.tuples(st.just("bbm"), st.integers(1, 3), st.integers(0, 1)),             # 1 GiB big blocks
    st.tuples(st.just("dax"), st.integers(1, 16), st.integers(0, 1)),
    st.tuples(st.just("online"), st.just(0), st.just(0)),
    st.tuples(st.just("offline"), st.integers(0, 1000), st.just(0)),   # an administrator offlines a block
    st.tuples(st.just("unplug"), st.integers(0, 1000), st.just(0)),    # virtio-mem gives a block back
)


def hotplugged(kernel, kinds):
    """Online hot-plugged blocks of devices of KINDS, ascending."""
    devices = {i: d for d in kernel.devices.values() if d.kind in kinds for i in d.blocks}
    return [i for i, zone in sorted(kernel.layout().items()) if zone is not None and i in devices]


def apply(kernel, devices, op, nodes):
    kind, n, node = op
    if kind in ("offline", "unplug"):
        candidates = hotplugged(kernel, ("dimm", "virtio_mem", "dax") if kind == "offline" else ("virtio_mem",))
        if candidates:
            index = candidates[n % len(candidates)]
            if kind == "offline":
                kernel.write_state(index, "offline")
            else:
                kernel.virtio_mem_unplug_block(kernel.blocks[index].device, index)
        return
    node = node if node in nodes else 0
    if kind == "dimm":
        kernel.add_dimm(n * 128 * MiB, node=node)
    elif kind == "dax":
        kernel.add_dax_kmem(n * 128 * MiB, node=node, parent="Soft Reserved")
    elif kind in ("virtio", "bbm"):
        key = (kind, node)
        if key not in devices:
            devices[key] = kernel.add_virtio_mem(16 * GiB, node=node, bbm=kind == "bbm",
                                                 device_block_size=GiB if kind == "bbm" else 2 * MiB)
        kernel.virtio_mem_plug(devices[key], n * (GiB if kind == "bbm" else 128 * MiB))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(boot=boot_memory, ratio=st.sampled_from([0, 50, 100, 150, 301, 1000]), numa_aware=st.booleans(),
       steps=st.lists(step, min_size=1, max_size=8), cma=st.booleans())
def test_memonlined_decides_like_the_kernel(tmp_path_factory, boot, ratio, numa_aware, steps, cma):
    cma_pages = {(0, "DMA32"): 16384} if cma else None
    ours = FakeKernel(tmp_path_factory.mktemp("ours"), boot_ram=boot, policy="contig-zones", cma=cma_pages,
                      ratio=ratio, numa_aware=numa_aware)
    theirs = FakeKernel(tmp_path_factory.mktemp("theirs"), boot_ram=boot, policy="auto-movable", cma=cma_pages,
                        ratio=ratio, numa_aware=numa_aware)
    options = ["--ratio", str(ratio), "--numa-aware", "yes" if numa_aware else "no"]
    our_devices, their_devices = {}, {}
    for op in steps + [("online", 0, 0)]:
        if op[0] != "online":
            apply(ours, our_devices, op, boot)
            apply(theirs, their_devices, op, boot)
            continue
        predicted = plan(ours, *options)
        rc, out = memonlined(ours, *options, "online")
        assert rc == 0, out
        layout = ours.layout()
        assert {i: layout[i] for i in predicted} == predicted
        assert layout == kernel_online_all(theirs)
