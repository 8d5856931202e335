"""The end-to-end scenarios, run in real guests (see test_e2e.py).

Every scenario runs in two modes:
- "memonlined": booted with memhp_default_state=offline; memonlined runs as
  the daemon in the guest (started before anything is hot-plugged, like a
  service) and decides every block;
- "kernel": booted with memhp_default_state=online and the kernel's own
  auto-movable policy (same ratio and numa-awareness): the oracle.
Each returns layouts ({block: zone, None for an offline block}) at named
checkpoints; the tests compare them block for block.

Guests get one vCPU each (two boot in parallel on a 2-core machine in about
the time one takes), and memonlined runs from a copy in the guest's tmpfs
with `python3 -S`: every file Python opens over the 9p root costs a round
trip under TCG, which made a start-up take 20-40 s instead of 3.
"""
import contextlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time

from guest import GiB, MiB, REPO, Guest, GuestError, kernel, virtio_mem_opts

BLOCK = 128 * MiB

# The Debian suites to test (bullseye 5.10, bookworm 6.1, trixie 6.12,
# trixie-backports 7.3): every scenario on KERNELS; the cover letter's,
# boot-offline memory and dax/kmem also on NEWEST (the newest Debian kernel).
KERNELS = [k.strip() for k in os.environ.get("MEMONLINED_E2E_KERNELS", "bookworm,bullseye").split(",") if k.strip()]
NEWEST = [k.strip() for k in os.environ.get("MEMONLINED_E2E_NEWEST", "trixie-backports").split(",")
          if k.strip() and k.strip() not in KERNELS]

# Per-scenario timings, printed at the end of the session by conftest.py.
TIMINGS = []
_timings_lock = threading.Lock()


def note_time(what, seconds):
    with _timings_lock:
        TIMINGS.append((what, seconds))


# -- memonlined inside the guest ----------------------------------------------

_bundle_lock = threading.Lock()
_bundle = None


def bundle():
    """A tarball of memonlined (this checkout) and its runtime dependency
    (pyudev) from .venv, unpacked into each guest's /run/py. Built once per session."""
    global _bundle
    with _bundle_lock:
        if _bundle is None:
            import glob
            site = glob.glob(os.path.join(REPO, ".venv/lib/python3*/site-packages"))
            if not site:
                raise GuestError(f"no {REPO}/.venv site-packages: run tests/run.sh (or pip install -e '.[daemon]')")
            fd, path = tempfile.mkstemp(prefix="memonlined-e2e-py-", suffix=".tar", dir="/tmp")
            os.close(fd)
            with tarfile.open(path, "w") as tar:
                tar.add(os.path.join(REPO, "memonlined"), "memonlined")
                for name in ("pyudev",):
                    src = os.path.join(site[0], name)
                    if not os.path.exists(src):
                        raise GuestError(f"{src} missing: pip install -e '.[daemon]' into .venv")
                    tar.add(src, name)
            import atexit
            atexit.register(os.unlink, path)
            _bundle = path
        return _bundle


MO_WRAPPER = """#!/bin/sh
exec python3 -S -c 'import sys; sys.path[:0] = ["/run/py"]; from memonlined.cli import main; sys.exit(main(sys.argv[1:]))' --config /dev/null "$@"
"""


def install_memonlined(g):
    """Unpack memonlined into the guest's /run/py; /run/mo runs it (config: /dev/null)."""
    shutil.copy(bundle(), os.path.join(g.share, "py.tar"))
    with open(os.path.join(g.share, "mo"), "w") as f:
        f.write(MO_WRAPPER)
    g.sh(f"mkdir -p /run/py && tar -C /run/py -xf {g.share}/py.tar && cp {g.share}/mo /run/mo && chmod +x /run/mo")


def start_daemon(g, args="", name="mo", timeout=180, program="/run/mo"):
    """Start `memonlined ARGS run` (PROGRAM: another way to run memonlined) in
    the background; wait for its 'ready:' line."""
    g.sh(f"( {program} {args} & echo $! > /run/{name}.pid; wait $!; echo $? > /run/{name}.rc ) "
         f">/run/{name}.log 2>&1 &")
    deadline = time.monotonic() + timeout
    while "ready:" not in (log := g.sh(f"cat /run/{name}.log").stdout):
        if "rc" in g.sh(f"ls /run/{name}.rc 2>/dev/null && echo rc", check=False).stdout or time.monotonic() > deadline:
            raise GuestError(f"memonlined {args} did not get ready:\n{log}")
        time.sleep(0.5)
    return log


def stop_daemon(g, name="mo", timeout=60):
    """SIGTERM the daemon; returns (exit code, log)."""
    g.sh(f"kill -TERM $(cat /run/{name}.pid)")
    deadline = time.monotonic() + timeout
    while True:
        r = g.sh(f"cat /run/{name}.rc 2>/dev/null", check=False)
        if r.stdout.strip():
            return int(r.stdout), g.sh(f"cat /run/{name}.log").stdout
        if time.monotonic() > deadline:
            raise GuestError(f"memonlined did not stop:\n{g.sh(f'cat /run/{name}.log').stdout}")
        time.sleep(0.3)


def daemon_log(g, name="mo"):
    return g.sh(f"cat /run/{name}.log").stdout


# -- reading the guest ----------------------------------------------------------

# Builtins only inside the loop: every fork costs tens of ms under TCG.
# "<block> <state> <fw if it has a firmware_node link, else -> <valid_zones>".
# valid_zones is read only once the block's nodeK link exists ("-" before):
# reading it earlier oopses the kernel (see memonlined/discover.py read_block_files).
LAYOUT = r'''
cd /sys/devices/system/memory
for d in memory[0-9]*; do
    read s < $d/state
    z=-; for l in $d/node[0-9]*; do [ -e $l ] && read z < $d/valid_zones; done
    if [ -e $d/firmware_node ]; then f=fw; else f=-; fi
    echo "${d#memory} $s $f $z"
done
'''


class Layout(dict):
    """block -> zone (None: offline); .fw: blocks with a firmware_node link."""
    fw = frozenset()


def layout(g):
    return parse_layout(g.sh(LAYOUT).stdout)


def parse_layout(text):
    """LAYOUT's output as a Layout."""
    out = Layout()
    fw = set()
    for line in text.splitlines():
        n, state, link, zones = line.split(" ", 3)
        out[int(n)] = zones.split()[0] if state == "online" else None
        if link == "fw":
            fw.add(int(n))
    out.fw = frozenset(fw)
    return out


def wait_layout(g, pred, what, timeout=180):
    """Poll the layout until PRED(layout) holds; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        lay = layout(g)
        if pred(lay):
            return lay
        if time.monotonic() > deadline:
            raise GuestError(f"timeout after {timeout}s waiting for {what}; layout: {summary(lay)}")
        time.sleep(0.3)


def all_online(count, fw=0):
    return lambda lay: len(lay) == count and None not in lay.values() and len(lay.fw) >= fw


def summary(zones):
    """Runs of equal zones, e.g. '0 none, 1-15 DMA32, 32-47 Normal'."""
    runs = []
    for n, z in sorted(zones.items()):
        if runs and runs[-1][2] == z and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n, z])
    return ", ".join(f"{a}-{b} {z}" if a != b else f"{a} {z}" for a, b, z in runs)


def diff(mine, oracle):
    """Blocks whose zone differs: [(block, memonlined's, the kernel's)]."""
    return [(n, mine.get(n, "absent"), oracle.get(n, "absent"))
            for n in sorted(set(mine) | set(oracle)) if mine.get(n, "absent") != oracle.get(n, "absent")]


def decisions_for(log, blocks):
    """The daemon's log lines about BLOCKS (for a failure message)."""
    want = {f"memory{n}:" for n in blocks}
    return "\n".join(line for line in log.splitlines() if any(w in line for w in want))


def resize(g, dev_id, size, timeout=300, settle=20):
    """Ask a virtio-mem device for SIZE; wait until it is plugged, or (shrinking,
    where the guest may not manage everything) until nothing changed for SETTLE s."""
    g.request_size(dev_id, size)
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while (now := g.plugged(dev_id)) != size:
        if now != last:
            last, since = now, time.monotonic()
        elif size < now and time.monotonic() - since > settle:
            return now
        if time.monotonic() > deadline:
            raise GuestError(f"{dev_id}: plugged {now} of {size} after {timeout}s")
        time.sleep(0.3)
    return now


def wait_stable(g, seconds=3, timeout=120):
    """Wait until the layout did not change for SECONDS (after a shrink)."""
    deadline = time.monotonic() + timeout
    prev = layout(g)
    while True:
        time.sleep(seconds)
        cur = layout(g)
        if cur == prev and None not in cur.values():
            return cur
        if time.monotonic() > deadline:
            raise GuestError(f"layout not stable after {timeout}s: {summary(cur)}")
        prev = cur


# -- boots ------------------------------------------------------------------------

def kernel_append(ratio=301, numa_aware=True):
    """The kernel's own policy, onlining by itself: the oracle."""
    return ["memhp_default_state=online", "memory_hotplug.online_policy=auto-movable",
            f"memory_hotplug.auto_movable_ratio={ratio}",
            f"memory_hotplug.auto_movable_numa_aware={'Y' if numa_aware else 'N'}"]


def memonlined_args(ratio=301, numa_aware=True):
    return f"--ratio {ratio} --numa-aware {'yes' if numa_aware else 'no'}"


@contextlib.contextmanager
def boot(suite, mode, label, ratio=301, numa_aware=True, cpus=1, extra_append=(), **kw):
    """A guest for MODE ("memonlined": memhp offline, memonlined installed;
    "kernel": the kernel's policy onlines; "default": the kernel's own
    default boot options). Records boot and total time."""
    append = {"kernel": kernel_append(ratio, numa_aware), "memonlined": ["memhp_default_state=offline"],
              "default": []}[mode]
    append = [*append, *extra_append]
    t0 = time.monotonic()
    for attempt in (1, 2):
        g = Guest(kernel(suite), append=append, cpus=cpus, **kw)
        try:
            g.__enter__()
            break
        except GuestError as e:
            # Seen once in ~40 boots: vng exiting (255, no output) right at the
            # start when two guests were started at the same moment. Once more.
            if attempt == 2 or "during boot" not in str(e):
                raise
            note_time(f"{label}[{suite},{mode}] boot failed, retried: {str(e)[:80]!r}", time.monotonic() - t0)
            time.sleep(3)
    with contextlib.closing(g):
        g.label = f"{label}[{suite},{mode}]"
        note_time(f"{g.label} boot", g.boot_seconds)
        if mode == "memonlined":
            install_memonlined(g)
        try:
            yield g
        except GuestError as e:
            if mode == "memonlined":  # what the daemon said explains most failures
                try:
                    tail = g.sh("tail -c 6000 /run/mo.log 2>/dev/null; echo '--- dmesg (tail):'; dmesg | tail -25",
                                check=False, timeout=30).stdout
                except GuestError as e2:
                    tail = f"(not readable: {str(e2)[:200]})"
                raise GuestError(f"{g.label}: {e}\n--- memonlined's log (tail):\n{tail}") from e
            raise
    note_time(f"{g.label} total", time.monotonic() - t0)


def base_blocks(g):
    return len(layout(g))


# -- scenario 1: the cover letter's DIMMs ---------------------------------------------

def udevd_running(g):
    return g.sh("pidof systemd-udevd", check=False).returncode == 0


def stop_udevd(g, timeout=30):
    """memonlined reads the kernel's own uevents: it needs no udevd."""
    if not udevd_running(g):
        raise GuestError("no systemd-udevd in the guest: stopping it would prove nothing")
    g.sh("udevadm control --exit")
    # With 7.3 the host's udevd (252) was seen not to heed --exit within 30 s: then signals.
    for signal_name, wait in ((None, timeout), ("TERM", 10), ("KILL", 10)):
        if signal_name:
            note_time(f"{g.label}: systemd-udevd still running: SIG{signal_name}", 0)
            g.sh(f"pkill -{signal_name} -x systemd-udevd", check=False)
        deadline = time.monotonic() + wait
        while udevd_running(g) and time.monotonic() < deadline:
            time.sleep(0.3)
        if not udevd_running(g):
            return
    raise GuestError("systemd-udevd did not exit, not even on SIGKILL")


def start_udevd(g):
    g.sh("/lib/systemd/systemd-udevd --daemon")
    if not udevd_running(g):
        raise GuestError("systemd-udevd did not start again")


def dimms(suite, mode, sizes=(4 * GiB,) * 5):
    """Hot-plug DIMMs one by one, each wholly online before the next. With
    memonlined, udevd is stopped for DIMMs 2 and 3 and started again before
    DIMM 4: a udevd that is down or restarting must cost memonlined nothing."""
    res = {}
    with boot(suite, mode, "dimms") as g:
        if mode == "memonlined":
            start_daemon(g, f"{memonlined_args()} run")
        count, fw = base_blocks(g), 0
        for i, size in enumerate(sizes):
            if mode == "memonlined" and i == 2:
                stop_udevd(g)
            if mode == "memonlined" and i == 4:
                start_udevd(g)
            g.add_dimm(f"d{i}", size)
            count, fw = count + size // BLOCK, fw + size // BLOCK
            res[f"after DIMM {i}"] = wait_layout(g, all_online(count, fw), f"DIMM {i} online")
        if mode == "memonlined":
            res["rc"], res["log"] = stop_daemon(g)
    return res


# -- scenario 2: the cover letter's virtio-mem ---------------------------------------

def grow_virtio_mem(g, mode, grow):
    """Start memonlined (its mode), grow device vm0 to GROW and wait until all is online."""
    if mode == "memonlined":
        start_daemon(g, f"{memonlined_args()} run")
    count = base_blocks(g)
    g.sh("modprobe virtio_mem")
    t = time.monotonic()
    resize(g, "vm0", grow)
    grown = wait_layout(g, all_online(count + grow // BLOCK), "virtio-mem memory online")
    note_time(f"{g.label} grow to {grow // GiB} GiB", time.monotonic() - t)
    return grown


def virtio_mem_grow_shrink(suite, mode, grow=16 * GiB, shrink=2 * GiB):
    res = {}
    with boot(suite, mode, "virtio-mem", qemu_opts=virtio_mem_opts("vm0", 16 * GiB)) as g:
        res["grown"] = grow_virtio_mem(g, mode, grow)
        res["plugged after shrink"] = resize(g, "vm0", shrink)
        res["shrunk"] = wait_stable(g)
        if mode == "memonlined":
            res["rc"], res["log"] = stop_daemon(g)
    return res


# -- scenario 3 (+6, 7): memory offline at boot, dry-runs, a udev rule -----------------

UDEV_RULE = '/etc/udev/rules.d/80-hotplug-cpu-mem.rules'
UDEV_RULE_TEXT = 'SUBSYSTEM=="memory", ACTION=="add", ATTR{state}=="offline", ATTR{state}="online"\n'


def boot_offline_opts(dimm_sizes=(4 * GiB,) * 3, virtio_mem=2 * GiB):
    opts = []
    for i, size in enumerate(dimm_sizes):
        opts += [f"-object memory-backend-ram,id=b{i}-mem,size={size},reserve=off",
                 f"-device pc-dimm,id=b{i},memdev=b{i}-mem"]
    return opts + virtio_mem_opts("vm0", 16 * GiB, requested=virtio_mem)


def boot_offline(suite, mode, dimm_sizes=(4 * GiB,) * 3, virtio_mem=2 * GiB, checks=True):
    """DIMMs present at start and a virtio-mem device with a requested size at
    start. The kernel onlines them at boot (kernel mode); memonlined's start-up
    onlines them (memonlined mode). With CHECKS, the memonlined guest first
    goes through the dry-runs and the udev-rule conflict (scenarios 6 and 7)."""
    res = {}
    with boot(suite, mode, "boot-offline", qemu_opts=boot_offline_opts(dimm_sizes, virtio_mem)) as g:
        g.sh("modprobe virtio_mem")
        dimm_blocks = sum(dimm_sizes) // BLOCK
        final_count = 4096 * MiB // BLOCK + dimm_blocks + virtio_mem // BLOCK
        if mode == "memonlined":
            # virtio-mem plugs about 1 GiB and stops while its memory is offline.
            res["before"] = wait_stable_offline(g, dimm_blocks)
            res["vm0 at start"] = g.vm0_at_start
            if checks:
                dry_run_and_conflict_checks(g, res["before"], res)
            res["start log"] = start_daemon(g, f"{memonlined_args()} run")
            if "offlined by an administrator" in res["start log"]:
                # Only dry-runs ran before, yet the real run (same state dir) takes
                # the blocks for administrator-offlined ones: record it (a test of
                # its own), then start afresh so the rest of the scenario runs.
                res["real run after run --dry-run"] = res["start log"]
                stop_daemon(g)
                g.sh("rm -f /run/memonlined/handled /run/mo.rc")
                res["start log"] = start_daemon(g, f"{memonlined_args()} run")
        deadline = time.monotonic() + 180
        while g.plugged("vm0") != virtio_mem:
            if time.monotonic() > deadline:
                raise GuestError("virtio-mem did not plug its requested size"
                                 + (daemon_log(g) if mode == "memonlined" else ""))
            time.sleep(0.3)
        res["final"] = wait_layout(g, all_online(final_count, dimm_blocks), "everything online")
        if mode == "memonlined":
            res["rc"], res["log"] = stop_daemon(g)
        return res


def wait_stable_offline(g, dimm_blocks, timeout=120):
    """Wait until the cold-plugged DIMMs have their blocks (with firmware links)
    and virtio-mem stopped plugging (its memory is offline)."""
    deadline = time.monotonic() + timeout
    prev = None
    while True:
        lay = layout(g)
        size = g.plugged("vm0")
        if prev is not None and (lay, size) == prev and len(lay.fw) >= dimm_blocks and size > 0:
            g.vm0_at_start = size
            return lay
        if time.monotonic() > deadline:
            raise GuestError(f"boot-offline memory never settled: {summary(lay)}")
        prev = (lay, size)
        time.sleep(2)


def states(g):
    """Every block's state, valid_zones and the kernel settings memonlined may touch."""
    return g.sh(LAYOUT + "\ncat /sys/devices/system/memory/auto_online_blocks; "
                "cat /sys/module/memory_hotplug/parameters/* 2>/dev/null; true").stdout


def dry_run_and_conflict_checks(g, before, res):
    offline = sorted(n for n, z in before.items() if z is None)
    assert offline, f"nothing offline at start: {summary(before)}"
    s0 = states(g)
    # Scenario 7: a distribution-style rule that onlines memory.
    g.sh(f"mkdir -p /etc/udev/rules.d && printf '%s' '{UDEV_RULE_TEXT}' > {UDEV_RULE}")
    res["doctor"] = g.sh("/run/mo doctor").stdout
    # Scenario 6: both dry-runs, with the rule present (it applies to add events only).
    r = g.sh(f"/run/mo {memonlined_args()} online --dry-run --json", check=False)
    res["online --dry-run rc"], res["online --dry-run"] = r.returncode, r.stdout + r.stderr
    res["dry predictions"] = {d["block"]: d["zone"] for d in json.loads(r.stdout)["decisions"]}
    res["dry json"] = json.loads(r.stdout)["decisions"]
    res["state after online --dry-run"] = states(g)
    start_daemon(g, f"{memonlined_args()} run --dry-run", name="dry")
    time.sleep(1)
    res["run --dry-run rc"], res["run --dry-run log"] = stop_daemon(g, name="dry")
    res["daemon dry predictions"] = {int(m.group(1)): m.group(2) for m in
                                     re.finditer(r"memory(\d+): would online to (\S+) ", res["run --dry-run log"])}
    res["state after run --dry-run"] = states(g)
    res["state before"] = s0
    # Mask the rule the way memonlined advises, before anything is added.
    g.sh(f"ln -sf /dev/null {UDEV_RULE}")
    res["doctor after masking"] = g.sh("/run/mo doctor").stdout
    g.sh("udevadm control --reload 2>/dev/null; true")


# -- scenario 4: two NUMA nodes -------------------------------------------------------

NUMA2 = ["2G,cpus=0", "2G,cpus=1"]


def numa2(suite, mode, numa_aware, sizes=(1 * GiB, 8 * GiB)):
    """A virtio-mem device on each of two nodes (2 GiB boot memory each), grown
    one after the other; node 1's grows past what its node's ratio allows."""
    res = {}
    opts = virtio_mem_opts("vm0", 16 * GiB, node=0) + virtio_mem_opts("vm1", 16 * GiB, node=1)
    with boot(suite, mode, f"numa2-{'numa' if numa_aware else 'nonuma'}", numa_aware=numa_aware,
              cpus=2, numa=NUMA2, qemu_opts=opts) as g:
        if mode == "memonlined":
            start_daemon(g, f"{memonlined_args(numa_aware=numa_aware)} run")
        count = base_blocks(g)
        g.sh("modprobe virtio_mem")
        for i, size in enumerate(sizes):
            resize(g, f"vm{i}", size)
            count += size // BLOCK
            res[f"vm{i} grown"] = wait_layout(g, all_online(count), f"vm{i} online")
        res["nodes"] = g.sh("cd /sys/devices/system/memory; for d in memory[0-9]*; do for n in $d/node*; do "
                            "echo ${d#memory} ${n##*/node}; done; done").stdout
        if mode == "memonlined":
            res["rc"], res["log"] = stop_daemon(g)
    return res


def numa_empty_node(suite, mode):
    """Node 2 has neither CPUs nor memory at boot (as CXL and far-memory
    nodes); QEMU's SRAT gives it the hot-plug range, so it is possible. A
    virtio-mem device and then a DIMM on it bring it online."""
    res = {}
    opts = ["-numa node,nodeid=2", *virtio_mem_opts("vm2", 8 * GiB, node=2)]
    with boot(suite, mode, "numa-empty-node", cpus=2, numa=NUMA2, qemu_opts=opts) as g:
        res["nodes at boot"] = g.sh("cat /sys/devices/system/node/online /sys/devices/system/node/possible").stdout
        if mode == "memonlined":
            start_daemon(g, f"{memonlined_args()} run")
        count = base_blocks(g)
        g.sh("modprobe virtio_mem")
        resize(g, "vm2", GiB)
        res["virtio-mem grown"] = wait_layout(g, all_online(count + 8), "vm2 online")
        g.add_dimm("d0", 2 * GiB, node=2)
        res["dimm added"] = wait_layout(g, all_online(count + 24, 16), "the DIMM online")
        res["nodes"] = g.sh("cat /sys/devices/system/node/online").stdout
        if mode == "memonlined":
            res["rc"], res["log"] = stop_daemon(g)
    return res


# -- scenario 5: virtio-mem in big-block mode ---------------------------------------

def virtio_mem_bbm(suite, mode, grow=16 * GiB):
    res = {}
    with boot(suite, mode, "virtio-mem-bbm", qemu_opts=virtio_mem_opts("vm0", 16 * GiB, block_size="1G")) as g:
        res["grown"] = grow_virtio_mem(g, mode, grow)
        res["probe"] = g.sh("dmesg | grep -i 'virtio_mem' | grep -i 'block size' || true").stdout
        if mode == "memonlined":
            res["rc"], res["log"] = stop_daemon(g)
    return res


FLOOD = r'''
echo on > /proc/sys/kernel/printk_devkmsg   # no rate limit on writes to /dev/kmsg
i=0
while dmesg | grep -q 'virtio_mem virtio' && [ $i -lt 40 ]; do
    j=0
    while [ $j -lt 500 ]; do
        echo "memonlined e2e: flooding the kernel log ($i.$j) ................................................" > /dev/kmsg
        j=$((j + 1))
    done
    i=$((i + 1))
done
dmesg | grep -c 'virtio_mem virtio' || true
'''


def virtio_mem_bbm_wrapped(suite, grow=16 * GiB, first=2 * GiB):
    """virtio_mem_bbm's growth with a restart in the middle, after the kernel
    log has wrapped: the probe lines are gone when the second daemon starts."""
    res = {}
    with boot(suite, "memonlined", "virtio-mem-bbm-wrapped",
              qemu_opts=virtio_mem_opts("vm0", 16 * GiB, block_size="1G")) as g:
        grow_virtio_mem(g, "memonlined", first)
        res["rc1"], res["log1"] = stop_daemon(g)
        res["probe lines left"] = int(g.sh(FLOOD, timeout=600).stdout.split()[-1])
        start_daemon(g, f"{memonlined_args()} run", name="mo2")
        count = base_blocks(g)
        resize(g, "vm0", grow)
        res["grown"] = wait_layout(g, all_online(count + (grow - first) // BLOCK), "virtio-mem memory online")
        res["rc"], res["log"] = stop_daemon(g, "mo2")
    return res


# -- scenario 9: dax/kmem (NVDIMMs given to the kernel as system RAM) -----------------

def nvdimm_opts(sizes):
    """Label-less NVDIMMs: each a region with one raw namespace (namespaceN.0)."""
    opts = ["-machine nvdimm=on"]
    for i, size in enumerate(sizes):
        opts += [f"-object memory-backend-ram,id=nv{i}-mem,size={size},reserve=off",
                 f"-device nvdimm,id=nv{i},memdev=nv{i}-mem"]
    return opts


# Regions are numbered in probe order, not by address: NVDIMM I is the
# namespace with the I-th lowest address.
NAMESPACES = "cd /sys/bus/nd/devices && for n in namespace*.0; do echo $(cat $n/resource) $n; done"


def to_devdax(g, i):
    """NVDIMM I's namespace -> devdax: (the dax device, the namespace's uuid)."""
    namespaces = sorted((int(a, 16), n) for a, n in (line.split() for line in g.sh(NAMESPACES).stdout.splitlines()))
    out = json.loads(g.sh(f"ndctl create-namespace --force --reconfig={namespaces[i][1]} "
                          "--mode=devdax --map=mem").stdout)
    return out["daxregion"]["devices"][0]["chardev"], out["uuid"]


def to_system_ram(g, i, force=False):
    """NVDIMM I -> devdax -> system RAM (dax/kmem) with `daxctl --no-online`
    (the onliner decides). FORCE: where the kernel onlines by itself (daxctl
    refuses that without it). Returns (daxctl's exit code, its output, the dax device)."""
    dax, _ = to_devdax(g, i)
    # The new dax device's add uevent runs the host's udev rule (Debian 12's
    # `daxctl -C`) while device_dax binds: a reconfigure meanwhile has seen
    # "failed to disable: Device or resource busy" (trixie-backports, once in
    # CI). Let udev finish first, and try a busy device twice more.
    for attempt in range(3):
        g.sh("udevadm settle --timeout=30 2>/dev/null; true")
        r = g.sh(f"daxctl reconfigure-device --no-online {'--force ' if force else ''}--mode=system-ram {dax} 2>&1",
                 check=False)
        out = r.stdout + r.stderr
        if r.returncode == 0 or "Device or resource busy" not in out:
            break
        note_time(f"{g.label}: daxctl reconfigure-device {dax} busy (attempt {attempt + 1})", 0)
        time.sleep(1)
    return r.returncode, out, dax


DAXCTL_CONF = "/etc/daxctl.conf.d/memonlined-e2e.conf"  # the guest's /etc is an overlay
DAXCTL_RULE = "/etc/udev/rules.d/90-daxctl-device.rules"
DAXCTL_RULE_TEXT = 'ACTION=="add", SUBSYSTEM=="dax", RUN+="/usr/bin/daxctl reconfigure-device -C $kernel"'


def dax_kmem(suite, mode, sizes=(1 * GiB, 4 * GiB, 2 * GiB), ratio=100):
    """Three NVDIMMs made system RAM one after the other with `daxctl
    --no-online`, so the onliner decides: the first (7 blocks after alignment)
    fits the ratio of 100, the second (31 blocks) does not, and each is
    decided as a whole. With memonlined, daxctl.conf.d then names the third,
    doctor must report that, and `daxctl reconfigure-device --check-config`
    makes it system RAM and onlines it itself while memonlined reacts to the
    same blocks: a race that must leave everything online and nothing broken."""
    res = {}
    # 5.10 binds devdax namespaces with dax_pmem_compat (the old dax-class
    # model), which daxctl cannot reconfigure; its dax_pmem has no alias, so
    # it is loaded by hand (what `daxctl migrate-device-model` arranges).
    with boot(suite, mode, "dax-kmem", ratio=ratio, qemu_opts=nvdimm_opts(sizes),
              extra_append=["modprobe.blacklist=dax_pmem_compat"]) as g:
        g.sh("modprobe dax_pmem")
        if mode == "memonlined":
            start_daemon(g, f"{memonlined_args(ratio=ratio)} run")
        res["boot"] = layout(g)
        for i in range(2):
            rc, out, dax = to_system_ram(g, i, force=mode == "kernel")
            if rc != 0:
                raise GuestError(f"daxctl reconfigure-device {dax} failed ({rc}):\n{out}")
            count = base_blocks(g)  # the device's blocks exist once daxctl returns
            res[f"after NVDIMM {i}"] = wait_layout(g, all_online(count), f"{dax} online")
        res["iomem"] = g.sh("grep -E 'Persistent|dax|kmem' /proc/iomem").stdout
        if mode == "memonlined":
            # daxctl set up to reconfigure the third (no `online = false`), with a
            # udev rule that runs it (Debian 12's own runs `daxctl -C`, which
            # daxctl 76 rejects; written after the device's add event, so it does
            # not fire): doctor must report it. Then what the rule runs for a new
            # dax device, which onlines its memory itself.
            dax, uuid = to_devdax(g, 2)
            g.sh(f"mkdir -p {os.path.dirname(DAXCTL_CONF)} && printf '[reconfigure-device nv2]\\n"
                 f"nvdimm.uuid = {uuid}\\nmode = system-ram\\n' > {DAXCTL_CONF} && "
                 f"echo '{DAXCTL_RULE_TEXT}' > {DAXCTL_RULE}")
            res["doctor with daxctl.conf"] = g.sh("/run/mo doctor").stdout
            # 7.3's dax state files, as the kernel shows them (none before 7.3)
            res["dax states"] = g.sh("for f in /sys/bus/dax/devices/*/state; do [ -e $f ] && "
                                     "echo $(basename $(dirname $f)) $(cat $f); done; true").stdout
            r = g.sh(f"daxctl reconfigure-device --check-config {dax} 2>&1", check=False)
            res["race rc"], res["race daxctl"] = r.returncode, r.stdout
            res["after the race"] = wait_layout(g, all_online(base_blocks(g)), f"{dax} online")
            res["rc"], res["log"] = stop_daemon(g)
    return res


# -- scenario 8's twin: the systemd guests' memory history, onlined by the kernel -------

# test_systemd.py's guests: 2 GiB, one vCPU; a 2 GiB DIMM and a virtio-mem
# device at start (asking for START), then a 4 GiB DIMM hot-plugged and the
# virtio-mem device grown to GROWN.
SYSTEMD_MEMORY = dict(memory_mib=2048, slots=4, maxmem_mib=16384)
SYSTEMD_HISTORY = {"offline": (GiB, 2 * GiB), "default": (0, GiB)}  # boot -> (START, GROWN)


def systemd_blocks(boot):
    """(blocks online at start: boot memory, the DIMM, virtio-mem's; blocks the growth adds)."""
    start, grown = SYSTEMD_HISTORY[boot]
    return 16 + 16 + start // BLOCK, (grown - start) // BLOCK


def systemd_guest_opts(boot):
    start, _ = SYSTEMD_HISTORY[boot]
    return ["-object memory-backend-ram,id=c0-mem,size=2G,reserve=off", "-device pc-dimm,id=c0,memdev=c0-mem",
            *virtio_mem_opts("vm0", 4 * GiB, requested=start)]


def systemd_twin(suite, mode, boot_kind="offline"):
    """The kernel's layouts for test_systemd.py's history. BOOT_KIND "offline":
    the kernel's policy onlines from the start. "default": Debian's own boot
    (the kernel onlines by its default), the auto-movable policy set only
    after boot, as memonlined takes over there; memory at start is the DIMM."""
    assert mode == "kernel", mode
    start, grown = SYSTEMD_HISTORY[boot_kind]
    res = {}
    with boot(suite, "kernel" if boot_kind == "offline" else "default", f"systemd-twin-{boot_kind}",
              qemu_opts=systemd_guest_opts(boot_kind), **SYSTEMD_MEMORY) as g:
        g.sh("modprobe virtio_mem")
        count, growth = systemd_blocks(boot_kind)
        deadline = time.monotonic() + 180
        while g.plugged("vm0") != start:
            if time.monotonic() > deadline:
                raise GuestError("virtio-mem did not plug its requested size")
            time.sleep(0.3)
        res["start"] = wait_layout(g, all_online(count, 16), "memory at start online")
        if boot_kind == "default":
            params = "/sys/module/memory_hotplug/parameters"
            g.sh(f"echo 301 > {params}/auto_movable_ratio && echo auto-movable > {params}/online_policy")
        g.add_dimm("d0", 4 * GiB)
        res["dimm"] = wait_layout(g, all_online(count + 32, 48), "the hot-plugged DIMM online")
        resize(g, "vm0", grown)
        res["final"] = wait_layout(g, all_online(count + 32 + growth, 48), "virtio-mem grown")
    return res


# What the kernel-policy runs are, by scenario name (see conftest.Oracles).
ORACLES = {
    "dimms": (dimms, {}),
    "virtio-mem": (virtio_mem_grow_shrink, {}),
    "boot-offline": (boot_offline, {}),
    "numa2-numa": (numa2, {"numa_aware": True}),
    "numa2-nonuma": (numa2, {"numa_aware": False}),
    "virtio-mem-bbm": (virtio_mem_bbm, {}),
    "numa-empty-node": (numa_empty_node, {}),
    "dax-kmem": (dax_kmem, {}),
    "systemd-offline": (systemd_twin, {"boot_kind": "offline"}),
    "systemd-default": (systemd_twin, {"boot_kind": "default"}),
}


def oracle_suite(suite):
    """5.10 has no policy of its own: its oracle is the 6.1 kernel's."""
    return "bookworm" if suite == "bullseye" else suite
