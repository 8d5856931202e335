"""Record real-kernel trees into tests/data/ by booting real guests (run by hand).

    sudo tests/e2e/setup.sh                      # once: QEMU, vng, Debian kernels
    sudo python3 tests/data/record.py            # every scenario (about 15 min)
    sudo python3 tests/data/record.py dimm-4x4g  # some, by session name (see SESSIONS)

Each tests/data/<scenario>/ holds
- the tree `python3 -m memonlined capture` took in the guest while the
  hot-plugged blocks were still offline, and
- kernel-layout.json: what the real kernel then did when, in the same guest,
  every offline block was onlined in ascending order with a plain
  `echo online > state` under the kernel's own policy (booted with
  memhp_default_state=offline and, from 5.15 on, online_policy=auto-movable):
  {"kernel", "cmdline", "policy", "ratio", "numa_aware",
   "zones": {"<block>": zone, or null for a block that stayed offline},
   "devices": QEMU's query-memory-devices at capture time (the ground truth
   of which device each address range belongs to)}.
A session writes several step dirs when one guest goes through rounds.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "e2e"))
from guest import GiB, REPO, Guest, GuestError, kernel, virtio_mem_opts
import scenarios

DATA = os.path.join(REPO, "tests", "data")
AUTO_MOVABLE = ["memhp_default_state=offline", "memory_hotplug.online_policy=auto-movable"]
NUMA2 = ["2G,cpus=0", "2G,cpus=1"]
NONUMA = AUTO_MOVABLE + ["memory_hotplug.auto_movable_numa_aware=N"]

# Online in ascending order, then report "<block> <state> <valid_zones>" for all.
# Builtins only inside the loops: every fork costs tens of ms under TCG.
ONLINE_ALL = r'''
cd /sys/devices/system/memory
blocks=$(ls -d memory[0-9]* | sed 's/memory//' | sort -n)
for n in $blocks; do
    read state < memory$n/state
    [ "$state" = offline ] && { echo online > memory$n/state || true; }
done
for n in $blocks; do
    read state < memory$n/state; read zones < memory$n/valid_zones; echo "$n $state $zones"
done
'''


@contextlib.contextmanager
def boot(suite, append=(), **kw):
    with Guest(kernel(suite), append=append, **kw) as g:
        print(f"  booted {g.vmlinuz} in {g.boot_seconds:.0f}s", flush=True)
        yield g


def blocks(g):
    return int(g.sh("ls -d /sys/devices/system/memory/memory[0-9]* | wc -l").stdout)


def wait_blocks(g, count, dimm_blocks=0, timeout=60):
    """Wait for COUNT blocks, DIMM_BLOCKS of them with their firmware_node link
    (the link comes last when an ACPI DIMM is added)."""
    deadline = time.monotonic() + timeout
    script = "ls -d /sys/devices/system/memory/memory[0-9]* | wc -l; " \
             "ls -d /sys/devices/system/memory/memory[0-9]*/firmware_node 2>/dev/null | wc -l"
    while True:
        have = [int(x) for x in g.sh(script).stdout.split()]
        if have == [count, dimm_blocks]:
            return
        if time.monotonic() > deadline:
            raise GuestError(f"blocks/firmware links {have}, wanted {[count, dimm_blocks]}")
        time.sleep(0.3)


def record(g, name, policy="auto-movable"):
    """Capture NAME (blocks offline), let the kernel online them, write kernel-layout.json."""
    t0 = time.monotonic()
    out = os.path.join(DATA, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    # Capture to the guest's tmpfs and ship one tar: every 9p file operation is slow under TCG.
    g.sh(f"rm -rf /run/cap && PYTHONPATH={REPO} python3 -m memonlined capture /run/cap"
         f" && tar -C /run/cap -cf {g.share}/cap.tar .")
    subprocess.run(["tar", "-C", out, "-xf", os.path.join(g.share, "cap.tar")], check=True)
    devices = g.qmp.execute("query-memory-devices")
    params = "/sys/module/memory_hotplug/parameters"
    info = g.sh(f"uname -r; cat /proc/cmdline; cat {params}/auto_movable_ratio {params}/auto_movable_numa_aware"
                " 2>/dev/null || true").stdout.splitlines()
    t1 = time.monotonic()
    zones = {}
    for line in g.sh(ONLINE_ALL).stdout.splitlines():
        n, state, valid = line.split(" ", 2)
        zones[n] = valid if state == "online" else None
    layout = {"kernel": info[0], "cmdline": info[1], "policy": policy,
              "ratio": int(info[2]) if len(info) > 2 else None,
              "numa_aware": info[3] == "Y" if len(info) > 3 else None,
              "zones": zones, "devices": devices}
    with open(os.path.join(out, "kernel-layout.json"), "w") as f:
        json.dump(layout, f, indent=1)
    print(f"  {name}: {summary(zones)} (capture {t1 - t0:.0f}s, online {time.monotonic() - t1:.0f}s)",
          flush=True)


def summary(zones):
    """Runs of equal zones, e.g. '0-15 DMA32, 32-47 Normal' (ZONES as kernel-layout.json has them)."""
    return scenarios.summary({int(n): z for n, z in zones.items()})


def dimm_session(name, sizes, suite="bookworm", append=AUTO_MOVABLE, policy="auto-movable"):
    def run():
        with boot(suite, append) as g:
            count, dimm_blocks = blocks(g), 0
            for i, size in enumerate(sizes):  # one by one, as a host would
                g.add_dimm(f"d{i}", size)
                count, dimm_blocks = count + size // (128 << 20), dimm_blocks + size // (128 << 20)
                wait_blocks(g, count, dimm_blocks)
            record(g, name, policy)
    return run


def virtio_mem_session(name, steps, append=AUTO_MOVABLE, numa=(), nodes=(None,), block_size=None,
                       fast_forward=None):
    """One virtio-mem device per entry of NODES; STEPS lists each step's requested GiB
    per device. virtio-mem plugs only ~1 GiB while its memory is offline, so each
    step grows a device by at most 1 GiB, then captures and lets the kernel online.
    A step's dir is named by what is plugged: NAME-1g, NAME-1g-2g (two devices).
    FAST_FORWARD: GiB per device grown first, unrecorded, with the kernel
    auto-onlining (same policy), to reach the interesting sizes quickly."""
    def grow(g, sizes):
        for i, gib in enumerate(sizes):
            g.resize_virtio_mem(f"vm{i}", gib * GiB, timeout=600)

    def run():
        opts = []
        for i, node in enumerate(nodes):
            opts += virtio_mem_opts(f"vm{i}", 16 * GiB, node=node, block_size=block_size)
        with boot("bookworm", append, numa=numa, qemu_opts=opts) as g:
            base_blocks = blocks(g)
            g.sh("modprobe virtio_mem")
            if fast_forward:
                g.sh("echo online > /sys/devices/system/memory/auto_online_blocks")
                grow(g, fast_forward)
                g.sh("echo offline > /sys/devices/system/memory/auto_online_blocks")
            for sizes in steps:
                grow(g, sizes)
                plugged = sum(d["size"] for d in g.memory_devices().values())
                wait_blocks(g, base_blocks + plugged // (128 << 20))
                record(g, name + "".join(f"-{gib}g" for gib in sizes))
    return run


SESSIONS = {
    # The cover letter's first example: expects 48-143 Movable, 144-207 Normal.
    "dimm-4x4g": dimm_session("dimm-4x4g", [4 * GiB] * 5),
    "ratio-100-dimms": dimm_session("ratio-100-dimms", [1 * GiB, 2 * GiB, 4 * GiB, 1 * GiB],
                                    append=AUTO_MOVABLE + ["memory_hotplug.auto_movable_ratio=100"]),
    # 6.12 (built to auto-online by itself; memhp_default_state=offline stops that).
    "trixie-dimm-4x4g": dimm_session("trixie-dimm-4x4g", [4 * GiB] * 5, suite="trixie"),
    # 5.10 has no auto-movable policy: a plain "online" follows contig-zones.
    "bullseye-dimms": dimm_session("bullseye-dimms", [2 * GiB, 4 * GiB], suite="bullseye",
                                   append=["memhp_default_state=offline"], policy="contig-zones"),
    "virtio-mem-sbm": virtio_mem_session("virtio-mem-sbm", [[k] for k in range(1, 6)]),
    # Past 12 GiB the kernel needs Normal blocks in the device to back more Movable ones.
    "virtio-mem-sbm-high": virtio_mem_session("virtio-mem-sbm", [[12], [13], [14]], fast_forward=[11]),
    "virtio-mem-bbm": virtio_mem_session("virtio-mem-bbm", [[1], [2], [3]], block_size="1G"),
    # Each node has 2 GiB of boot memory, so ~6 GiB Movable per node when numa-aware,
    # ~12 GiB over both when not: the -high sessions grow node 1's device past 6 GiB.
    "numa2-virtio-mem": virtio_mem_session("numa2-virtio-mem", [[1, 1], [1, 2], [2, 3]],
                                           numa=NUMA2, nodes=(0, 1)),
    "numa2-virtio-mem-high": virtio_mem_session("numa2-virtio-mem", [[1, 6], [1, 7]], numa=NUMA2,
                                                nodes=(0, 1), fast_forward=[1, 5]),
    "numa2-virtio-mem-nonuma": virtio_mem_session("numa2-virtio-mem-nonuma", [[1, 1], [1, 2], [2, 3]],
                                                  numa=NUMA2, nodes=(0, 1), append=NONUMA),
    "numa2-virtio-mem-nonuma-high": virtio_mem_session("numa2-virtio-mem-nonuma", [[1, 6], [1, 7]],
                                                       numa=NUMA2, nodes=(0, 1), append=NONUMA,
                                                       fast_forward=[1, 5]),
}


def main(names):
    # Unwind (and so kill the guest) on SIGTERM, and on SIGINT even when started in the background.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in names or SESSIONS:
        t0 = time.monotonic()
        print(f"{name}:", flush=True)
        SESSIONS[name]()
        print(f"{name}: done in {time.monotonic() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
