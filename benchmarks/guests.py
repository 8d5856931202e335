"""Real-guest figures for the README: memonlined vs the kernel's policy vs the udev rule.

    .venv/bin/python benchmarks/guests.py [--quick] [--reps N] [--wait-idle MINUTES]

Needs root and `bash tests/e2e/setup.sh` (QEMU, virtme-ng, the Debian kernels).
For each approach, in a 4096 MiB guest on Debian's 6.1 kernel (TCG, 2 vCPUs):

- memonlined: booted with memhp_default_state=offline, `memonlined run`
  started in the guest before anything is hot-plugged (ratio 301, numa-aware:
  the defaults);
- kernel: memhp_default_state=online memory_hotplug.online_policy=auto-movable;
- udev: memhp_default_state=offline and the classic rule
  SUBSYSTEM=="memory", ACTION=="add", ATTR{state}=="offline", ATTR{state}="online";
- floor: memhp_default_state=offline with the kernel's auto-movable policy,
  and the least a userspace onliner can do: a loop on the kernel's uevent
  socket writing `online` for each added block (the kernel picks the zone).
  What it costs beyond the kernel is the price of onlining from userspace,
  not of memonlined's decisions.

and measures
1. growth: a virtio-mem device (region 16 GiB) asked for 16 GiB: seconds from
   the qom-set until query-memory-devices reports 16 GiB plugged (and until
   the guest sees every block online);
2. burst: four 8 GiB DIMMs added back to back: seconds from the first
   device_add until a watcher in the guest sees all their blocks online;
3. unplug: with a workload holding kernel memory (page tables, dentries) and
   the memory grown to 16 GiB, the device asked for 2 GiB: how much it gave back;
4. the zone of every block after the growth: benchmarks/layout.png.

Prints a table, writes benchmarks/guests-results.json. Each guest runs inside
the Guest context manager (tests/e2e/guest.py): QEMU never outlives the script.
"""
import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "e2e"))
sys.path.insert(0, HERE)

from guest import GiB, MiB, Guest, GuestError, kernel, virtio_mem_opts
from scenarios import (UDEV_RULE, UDEV_RULE_TEXT, install_memonlined, kernel_append, layout, start_daemon,
                       stop_daemon, summary)

BLOCK = 128 * MiB
APPROACHES = ("memonlined", "kernel", "udev", "floor")
PICTURE_NAMES = {"memonlined": "memonlined", "kernel": "kernel policy", "udev": "udev rule",
                 "floor": "uevent loop"}
# The kernel's default boot, as users have it, but for the option that says
# who onlines. The unplug guests (--unplug-only) add init_on_alloc=0 (Debian
# builds it on): the workload's fill is then never written, so the host does
# not have to back it.
APPEND = {
    "memonlined": ["memhp_default_state=offline"],
    "kernel": kernel_append(),
    "udev": ["memhp_default_state=offline"],
    "floor": ["memhp_default_state=offline"] + kernel_append()[1:],
}
UNPLUG_APPEND = ["init_on_alloc=0"]


# -- guest-side helpers -----------------------------------------------------------------

# Waits until the guest has at least WANT memory blocks numbered FIRST and up and
# all of them are online,
# then creates OUT. Started (and armed) before the host hot-plugs, so the host can
# time from its own QMP command to OUT appearing in the shared directory.
WATCHER = r'''
import os, sys, time
want, out, first = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
D = "/sys/devices/system/memory/"
open(out + ".armed", "w").close()
while True:
    names = [n for n in os.listdir(D) if n.startswith("memory") and n[6:].isdigit() and int(n[6:]) >= first]
    if len(names) >= want:
        for n in names:
            try:
                with open(D + n + "/state") as f:
                    if f.read(7) != "online\n":
                        break
            except OSError:
                break
        else:
            open(out, "w").close()
            break
    time.sleep(0.02)
'''

# The floor: `online` for every memory block added, straight from the
# kernel's uevents (as memonlined's default event source), nothing else.
FLOOR = r'''
import socket, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)  # NETLINK_KOBJECT_UEVENT
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
s.bind((0, 1))
open(sys.argv[1], "w").close()
while True:
    env = dict(f.split(b"=", 1) for f in s.recv(8192).split(b"\0")[1:] if b"=" in f)
    if env.get(b"ACTION") == b"add" and env.get(b"SUBSYSTEM") == b"memory":
        try:
            with open(b"/sys" + env[b"DEVPATH"] + b"/state", "w") as f:
                f.write("online")
        except OSError:
            pass
'''

# Holds kernel memory the way a VM that has run for a while does: scattered.
# In a fresh guest the allocator groups kernel allocations into a few
# pageblocks at the low end of free memory, which virtio-mem unplugs last, so
# they cost nothing. The workload therefore first fills free memory (all but
# MARGIN_MIB) with a tmpfs file (huge pages, fallocate: no page is written, so
# the host backs none of it; the guest boots with init_on_alloc=0), punches a
# HOLE_KIB hole into every 2 MiB of it, then allocates PT_MIB of page tables
# (one page-table page per 2 MiB of a sparse mapping, each faulted in by a read
# that maps the shared zero page) and the dentries and inodes of FILES empty
# files: once the margin is used up, these land in the holes, in every
# pageblock. Low watermarks meanwhile (no boost, min_free_kbytes 4096) let the
# fill take the kernel zones' free memory down to a few MiB, so that what the
# kernel allocates next has to come from the holes. Then it deletes the fill,
# restores the watermarks and holds the page tables and files.
WORKLOAD = r'''
import ctypes, mmap, os, sys, time
files, pt_mib, margin_mib, hole_kib, floor_mib, ready = list(map(int, sys.argv[1:6])) + [sys.argv[6]]
with open("/proc/self/oom_score_adj", "w") as f:
    f.write("1000")  # if memory runs out after all, the OOM killer takes this, not the guest's agent
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
MiB = 1 << 20
def memfree():
    with open("/proc/meminfo") as f:
        return {l.split(":")[0]: int(l.split()[1]) for l in f}["MemFree"] * 1024
def zonefree():
    out, zone = [], None
    with open("/proc/zoneinfo") as f:
        for l in f:
            w = l.split()
            if l.startswith("Node"):
                zone = w[3]
            elif len(w) == 3 and w[:2] == ["pages", "free"]:
                out.append("%s %d" % (zone, int(w[2]) // 256))
    return "free MiB: " + ", ".join(out)
def usable(highest):
    """Free memory an allocation whose highest zone is HIGHEST may take without
    going below any zone's high watermark plus its reserve for such allocations
    (lowmem_reserve: with a big ZONE_MOVABLE, Normal keeps hundreds of MiB back
    from movable allocations; asking for more invokes the OOM killer)."""
    zones, cur = [], None
    with open("/proc/zoneinfo") as f:
        for l in f:
            w = l.replace("(", " ").replace(")", " ").replace(",", " ").split()
            if l.startswith("Node"):
                cur = {"name": w[3]}
                zones.append(cur)
            elif len(w) == 3 and w[:2] == ["pages", "free"]:
                cur["free"] = int(w[2])
            elif len(w) == 2 and w[0] == "high":
                cur["high"] = int(w[1])
            elif w and w[0] == "protection:":
                cur["protection"] = [int(x) for x in w[1:]]
    names = [z["name"] for z in zones]
    top = names.index(highest)
    return 4096 * sum(max(0, z["free"] - z.get("high", 0) - z["protection"][top])
                      for z in zones[:top + 1] if "protection" in z)
stats = []
VM = "/proc/sys/vm/"
TUNE = {"watermark_boost_factor": 0, "watermark_scale_factor": 1, "min_free_kbytes": 4096}
saved = {}
for k, v in TUNE.items():
    with open(VM + k) as f:
        saved[k] = f.read().strip()
    with open(VM + k, "w") as f:
        f.write(str(v))
t0 = time.time()
fd = os.open("/run/frag/fill", os.O_CREAT | os.O_RDWR, 0o600)
size = 0
# "Movable" is in the zone list even when empty (no memory in it): then it reserves nothing.
while hole_kib and usable("Movable") > margin_mib * MiB + 4 * MiB:
    chunk = 64 * MiB if usable("Movable") > margin_mib * MiB + 256 * MiB else 4 * MiB
    if libc.fallocate(fd, 0, size, chunk):
        break
    size += chunk
t1 = time.time()
stats.append("after fill " + zonefree())
holes = 0
if hole_kib:
    for off in range(MiB, size, 2 * MiB):
        libc.fallocate(fd, 3, off, hole_kib * 1024)  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        holes += 1
t2 = time.time()
stats.append("after holes " + zonefree())
d = "/run/wl"
os.makedirs(d, exist_ok=True)
for i in range(files):
    if i % 10000 == 0:
        sub = "%s/%d" % (d, i // 10000)
        os.mkdir(sub)
    os.close(os.open("%s/%d" % (sub, i), os.O_CREAT | os.O_WRONLY, 0o600))
# Page tables, 1 MiB at a time, until what the kernel may still take is down
# to FLOOR_MIB (or PT_MIB are held).
span = pt_mib << 29         # one 4 KiB page-table page maps 2 MiB
m = mmap.mmap(-1, span, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)  # MAP_NORESERVE
m.madvise(mmap.MADV_NOHUGEPAGE)  # a huge zero page would need no page table
s, off = 0, 0
while off < span and usable("Normal") > floor_mib * MiB:
    for o in range(off, off + (1 << 29), 1 << 21):
        s += m[o]
    off += 1 << 29
t3 = time.time()
stats.append("after page tables and files " + zonefree())
with open("/proc/meminfo") as f:
    info = {l.split(":")[0]: l.split()[1] for l in f}
os.close(fd)
os.unlink("/run/frag/fill")
for k, v in saved.items():
    with open(VM + k, "w") as f:
        f.write(v)
with open(ready + ".tmp", "w") as f:
    f.write("fill %d MiB %.1fs, %d holes of %d KiB %.1fs, page tables and files %.1fs; "
            "PageTables %s kB, Slab %s kB, MemFree %s kB before the fill was deleted\n" % (
            size // MiB, t1 - t0, holes, hole_kib, t2 - t1, t3 - t2, info["PageTables"], info["Slab"], info["MemFree"]))
    f.write("; ".join(stats))
os.rename(ready + ".tmp", ready)
while True:
    time.sleep(3600)
'''

# Per memory block numbered FIRST..LAST: how many pages are slab or page tables
# (/proc/kpageflags bits 7 and 26). Prints "blocks-with-any pages-total".
CENSUS = r'''
import struct, sys
first, last = int(sys.argv[1]), int(sys.argv[2])
per = (128 << 20) // 4096
blocks = pages = 0
with open("/proc/kpageflags", "rb") as f:
    for b in range(first, last + 1):
        f.seek(b * per * 8)
        data = f.read(per * 8)
        n = sum(1 for (v,) in struct.iter_unpack("Q", data) if v & ((1 << 7) | (1 << 26)))
        blocks += n > 0
        pages += n
print(blocks, pages)
'''

def zone_totals(zones, first=0):
    """GiB per zone over the blocks numbered FIRST and up."""
    tot = {}
    for n, z in zones.items():
        if n >= first:
            tot[z or "offline"] = tot.get(z or "offline", 0) + BLOCK / GiB
    return tot


def wait_file(g, path, timeout, what):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if g.proc.poll() is not None or time.monotonic() > deadline:
            raise GuestError(f"timeout/exit waiting for {what}\n{g.console_tail()}")
        time.sleep(0.01)
    return time.monotonic()


def arm_watcher(g, want, name, first=0):
    out = os.path.join(g.share, name)
    g.sh(f"python3 -S {g.share}/watcher.py {want} {out} {first} >/run/{name}.log 2>&1 &")
    wait_file(g, out + ".armed", 60, f"watcher {name} to start")
    return out


def block_count(g):
    return int(g.sh("ls -d /sys/devices/system/memory/memory[0-9]* | wc -l").stdout)


def other_qemus(own_sid=None):
    """pids of qemu-system processes not started by this script's current guest."""
    r = subprocess.run(["ps", "-eo", "pid=,sid=,comm="], capture_output=True, text=True)
    pids = []
    for line in r.stdout.splitlines():
        pid, sid, comm = line.split(None, 2)
        if comm.startswith("qemu-system") and (own_sid is None or int(sid) != own_sid):
            pids.append(int(pid))
    return pids


# -- one guest ------------------------------------------------------------------------------

def bench_guest(approach, unplug=False, **kw):
    """The benchmarks' guest: Debian 6.1, 4 GiB, 2 vCPUs, APPROACH's boot options
    (UNPLUG: and those of the unplug guests)."""
    return Guest(kernel("bookworm"), memory_mib=4096, slots=8, maxmem_mib=65536,
                 append=APPEND[approach] + (UNPLUG_APPEND if unplug else []), cpus=2, **kw)


def run_guest(approach, grow=16 * GiB, unplug=True, burst=True, workload=(20_000, 1024, 256, 64, 64), settle=20,
              unplug_timeout=60, mo_args=(), log=print):
    res = {"approach": approach}
    with bench_guest(approach, unplug, qemu_opts=virtio_mem_opts("vm0", 16 * GiB)) as g:
        others = set(other_qemus(g.proc.pid))
        res["boot s"] = round(g.boot_seconds, 1)
        for name, text in (("watcher.py", WATCHER), ("workload.py", WORKLOAD), ("census.py", CENSUS),
                           ("floor.py", FLOOR)):
            with open(os.path.join(g.share, name), "w") as f:
                f.write(text)
        if approach == "memonlined":
            install_memonlined(g)  # into the guest's tmpfs: from the 9p root a start takes 20-40 s
            start_daemon(g, f"{' '.join(map(shlex.quote, mo_args))} run --state-dir /run/memonlined")
        elif approach == "udev":
            g.sh(f"mkdir -p /etc/udev/rules.d && printf '%s' '{UDEV_RULE_TEXT}' > {UDEV_RULE} && udevadm control --reload")
        elif approach == "floor":
            armed = os.path.join(g.share, "floor.armed")
            g.sh(f"(python3 -S {g.share}/floor.py {armed} >/run/floor.log 2>&1 &)")
            wait_file(g, armed, 60, "the uevent loop")
        g.sh("modprobe virtio_mem")
        base = block_count(g)
        res["boot blocks"] = base

        # 1. growth
        done = arm_watcher(g, base + grow // BLOCK, "grown")  # every block: boot ones and the device's
        t0 = time.monotonic()
        g.request_size("vm0", grow)
        deadline = t0 + 300
        while (size := g.plugged("vm0")) != grow:
            if time.monotonic() > deadline:
                raise GuestError(f"{approach}: plugged {size >> 20} MiB of {grow >> 20} MiB after 300 s")
            time.sleep(0.05)
        res["growth plugged s"] = round(time.monotonic() - t0, 2)
        res["growth online s"] = round(wait_file(g, done, 300, "grown memory online") - t0, 2)
        res["layout after growth"] = lay = layout(g)
        vm0 = g.memory_devices()["vm0"]
        res["growth zones GiB"] = zone_totals(lay, first=vm0["memaddr"] // BLOCK)
        log(f"  {approach}: growth {res['growth plugged s']} s plugged, {res['growth online s']} s online; "
            f"{summary(lay)}")

        # 3. unplug with kernel memory held
        if unplug:
            files, pt_mib, margin_mib, hole_kib, floor_mib = workload
            ready = os.path.join(g.share, "workload.ready")
            t = time.monotonic()
            g.sh("mkdir -p /run/frag && mount -t tmpfs -o huge=never,size=64G none /run/frag && "
                 "echo -1000 > /proc/$PPID/oom_score_adj")  # $PPID: the agent that runs our commands
            exited = ready + ".exited"
            g.sh(f"( python3 -S {g.share}/workload.py {files} {pt_mib} {margin_mib} {hole_kib} {floor_mib} {ready} "
                 f">/run/wl.log 2>&1; echo $? > {exited} ) >/dev/null 2>&1 & echo $! > /run/wl.pid")
            try:
                deadline = time.monotonic() + 300
                while not os.path.exists(ready):
                    if os.path.exists(exited) or g.proc.poll() is not None or time.monotonic() > deadline:
                        raise GuestError("the workload ended or timed out before it was ready")
                    time.sleep(0.1)
            except GuestError:
                log(g.sh("cat /run/wl.log; dmesg | grep -iE 'oom|killed|memory' | tail -30", check=False).stdout)
                raise
            with open(ready) as f:
                res["workload"], res["workload zones"] = f.read().strip().split("\n")
            res["workload s"] = round(time.monotonic() - t, 1)
            first = vm0["memaddr"] // BLOCK
            last = first + grow // BLOCK - 1
            n_blocks, n_pages = map(int, g.sh(f"python3 -S {g.share}/census.py {first} {last}").stdout.split())
            res["device blocks holding kernel pages"] = n_blocks
            res["kernel pages in the device MiB"] = round(n_pages / 256, 1)
            log(f"  {approach}: {n_blocks} of the device's {last - first + 1} blocks hold slab or page-table pages "
                f"({n_pages / 256:.1f} MiB)")
            target = 2 * GiB
            g.request_size("vm0", target)
            t0 = time.monotonic()
            last, since, timeline = g.plugged("vm0"), t0, []
            while True:
                time.sleep(0.5)
                now = g.plugged("vm0")
                if now != last:
                    last, since = now, time.monotonic()
                    timeline.append((round(since - t0, 1), round(now / GiB, 3)))
                if now == target or time.monotonic() - since > settle or time.monotonic() - t0 > unplug_timeout:
                    break
            res["unplug seconds"] = round(since - t0, 1)
            res["unplug timeline (s, GiB plugged)"] = timeline
            res["unplug dmesg"] = g.sh("dmesg | grep -i virtio_mem | tail -20", check=False).stdout
            res["plugged after unplug GiB"] = round(last / GiB, 3)
            res["gave back GiB"] = round((grow - last) / GiB, 3)
            res["layout after unplug"] = after = layout(g)
            log(f"  {approach}: workload ({res['workload']}) in {res['workload s']} s; asked for 2 GiB: "
                f"{res['plugged after unplug GiB']} GiB left plugged, gave back {res['gave back GiB']} GiB; "
                f"{summary(after)}")
            g.sh("pkill -P $(cat /run/wl.pid); rm -rf /run/wl", check=False)

        # 2. burst of DIMMs
        if burst:
            first = (vm0["memaddr"] + vm0["max-size"]) // BLOCK  # the DIMMs go above the virtio-mem region
            done = arm_watcher(g, 4 * 8 * GiB // BLOCK, "burst", first)
            t0 = time.monotonic()
            for i in range(4):
                g.add_dimm(f"d{i}", 8 * GiB)
            res["burst s"] = round(wait_file(g, done, 300, "burst online") - t0, 2)
            lay = layout(g)
            res["burst zones GiB"] = zone_totals(lay, first)
            log(f"  {approach}: burst of 4 x 8 GiB DIMMs online in {res['burst s']} s")

        if approach == "memonlined":
            rc, mlog = stop_daemon(g)
            res["memonlined rc"] = rc
            res["memonlined log lines"] = len(mlog.splitlines())
            if rc:
                log(mlog[-3000:])
        res["other qemu during run"] = sorted(set(other_qemus(g.proc.pid)) | others)
    return res


def wait_idle(minutes, log):
    """Poll every 20 s until no qemu-system runs (at most MINUTES); True if idle."""
    deadline = time.monotonic() + minutes * 60
    while other_qemus():
        if time.monotonic() > deadline:
            log(f"other QEMU still running after {minutes} min (pids {other_qemus()}): measuring anyway")
            return False
        time.sleep(20)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="two guests per approach instead of five")
    p.add_argument("--reps", type=int, default=None,
                   help="guests per approach (default 5, --quick 2): all measure the growth, the first the "
                        "unplug, the others the burst")
    p.add_argument("--wait-idle", type=float, default=0, metavar="MIN",
                   help="first wait up to MIN minutes until no other qemu-system runs")
    p.add_argument("--only", default=",".join(APPROACHES), help="comma-separated approaches")
    p.add_argument("--files", type=int, default=20_000, help="workload: empty files in a tmpfs (default 20000)")
    p.add_argument("--pt-mib", type=int, default=1024, help="workload: at most this many MiB of page tables (default 1024)")
    p.add_argument("--margin-mib", type=int, default=256, help="workload: memory left allocatable by the fill (default 256)")
    p.add_argument("--hole-kib", type=int, default=64, help="workload: hole punched into every 2 MiB of the fill "
                                                            "(default 64; 0: no fill at all)")
    p.add_argument("--floor-mib", type=int, default=64, help="workload: page tables are added until what the kernel "
                                                             "may still allocate is down to this (default 64)")
    p.add_argument("--unplug-only", action="store_true",
                   help="one guest per approach, growth and unplug only; updates those figures in --out")
    p.add_argument("--mo-args", default="", help="memonlined options before `run` (experiments), e.g. '--settle-ms 0'")
    p.add_argument("--no-unplug", action="store_true", help="no guest measures the unplug (experiments)")
    p.add_argument("--no-burst", action="store_true", help="no guest measures the burst (experiments)")
    p.add_argument("--out", default=os.path.join(HERE, "guests-results.json"))
    p.add_argument("--png", default=os.path.join(HERE, "layout.png"))
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root (vng, QEMU, and memonlined in the guest)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # unwind: guests are shut down
    log = lambda s: print(s, flush=True)  # noqa: E731
    approaches = [a for a in args.only.split(",") if a]
    reps = 1 if args.unplug_only else args.reps if args.reps is not None else (2 if args.quick else 5)
    workload = (args.files, args.pt_mib, args.margin_mib, args.hole_kib, args.floor_mib)
    idle = wait_idle(args.wait_idle, log) if args.wait_idle else not other_qemus()
    runs = {a: [] for a in approaches}
    failures = []
    t_start = time.monotonic()
    for rep in range(reps):
        for a in approaches:
            log(f"{a}, guest {rep + 1}/{reps}:")
            # Guest 1 measures the unplug; the others the burst (in a guest that saw
            # no workload and no shrinking); with one guest, the burst comes last.
            try:
                runs[a].append(run_guest(a, unplug=rep == 0 and not args.no_unplug,
                                         burst=(rep > 0 or reps == 1 or args.no_unplug)
                                         and not (args.unplug_only or args.no_burst),
                                         workload=workload, mo_args=shlex.split(args.mo_args), log=log))
            except GuestError as e:  # one failed guest should not cost the others' figures
                log(f"  {a}: guest {rep + 1} FAILED: {str(e)[-2000:]}")
                failures.append(f"{a} guest {rep + 1}: {str(e)[:300]}")

    def med(a, key):
        vals = [r[key] for r in runs[a] if key in r]
        return round(statistics.median(vals), 2) if vals else None

    results = {"conditions": {
        "kernel": "Debian 6.1 (bookworm)", "guest": "4096 MiB, 2 vCPUs, TCG (no KVM)",
        "host cores": os.cpu_count(), "guests per approach": reps, "workload files": workload[0],
        "workload page tables MiB": workload[1], "workload margin MiB": workload[2],
        "workload hole KiB": workload[3], "workload floor MiB": workload[4], "boot options": APPEND,
        "unplug guests add": UNPLUG_APPEND, "idle at start": idle,
        "other qemu seen during runs": sorted({p for a in runs for r in runs[a] for p in r["other qemu during run"]}),
        "total seconds": round(time.monotonic() - t_start), "failed guests": failures}, "approaches": {}}
    approaches = [a for a in approaches if runs[a]]
    for a in approaches:
        first = next((r for r in runs[a] if "gave back GiB" in r), runs[a][0])
        results["approaches"][a] = {
            "growth plugged s (median)": med(a, "growth plugged s"),
            "growth plugged s (all)": [r["growth plugged s"] for r in runs[a]],
            "growth online s (median)": med(a, "growth online s"),
            "burst s (median)": med(a, "burst s"),
            "burst s (all)": [r.get("burst s") for r in runs[a]],
            "gave back GiB": first.get("gave back GiB"),
            "plugged after unplug GiB": first.get("plugged after unplug GiB"),
            "workload": first.get("workload"),
            "device blocks holding kernel pages": first.get("device blocks holding kernel pages"),
            "kernel pages in the device MiB": first.get("kernel pages in the device MiB"),
            "growth zones GiB": first["growth zones GiB"],
            "burst zones GiB": next((r["burst zones GiB"] for r in runs[a] if "burst zones GiB" in r), None),
            "layout after growth": summary(first["layout after growth"]),
            "layout after unplug": summary(first["layout after unplug"]) if "layout after unplug" in first else None,
        }
    k = results["approaches"].get("kernel", {})
    for a, r in results["approaches"].items():
        for key, ratio in (("growth plugged s (median)", "growth ratio to kernel"), ("burst s (median)", "burst ratio to kernel")):
            if k.get(key) and r.get(key) is not None:
                r[ratio] = round(r[key] / k[key], 2)
    results["guests"] = {a: [{k: (summary(v) if k.startswith("layout") else v) for k, v in r.items()}
                             for r in runs[a]] for a in approaches}
    keys = ("gave back GiB", "plugged after unplug GiB", "workload", "device blocks holding kernel pages",
            "kernel pages in the device MiB", "layout after unplug")
    if args.no_unplug and os.path.exists(args.out):
        # No guest of this run measured the unplug: the earlier run's figures stay, with their conditions.
        with open(args.out) as f:
            old = json.load(f)
        for a in approaches:
            results["approaches"][a].update({k: old["approaches"].get(a, {}).get(k) for k in keys})
        results["conditions"]["unplug run"] = old["conditions"].get("unplug run (--unplug-only)", old["conditions"])
    if args.unplug_only and os.path.exists(args.out):
        # Keep the growth and burst figures of the earlier full run; replace the unplug ones.
        with open(args.out) as f:
            old = json.load(f)
        for a in approaches:
            old["approaches"].setdefault(a, {}).update({k: results["approaches"][a][k] for k in keys})
            old["guests"][a] = [r for r in old["guests"].get(a, []) if "gave back GiB" not in r] + results["guests"][a]
        old["conditions"]["unplug run (--unplug-only)"] = results["conditions"]
        results = old
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)

    import layout as layout_png  # matplotlib: only needed for the picture
    if not args.unplug_only:
        layout_png.draw({PICTURE_NAMES[a]: runs[a][0]["layout after growth"] for a in approaches}, args.png,
                        title="zone of every memory block after growing a virtio-mem device 0 -> 16 GiB (4 GiB guest, 6.1)")

    log("")
    log(f"{'approach':<11} {'growth s':>9} {'x kernel':>8} {'burst s':>8} {'x kernel':>8} {'gave back':>10} "
        f"{'kernel-page blocks':>18}  zones of the 16 GiB grown")
    for a, r in results["approaches"].items():
        for what in ("growth plugged s", "burst s"):
            vals = [v for v in r[f"{what} (all)"] if v is not None]
            if vals:
                log(f"{a} {what}: median {statistics.median(vals):.2f} (min {min(vals):.2f}, max {max(vals):.2f}, "
                    f"{len(vals)} guests)")
    for a, r in results["approaches"].items():
        zones = ", ".join(f"{z} {v:g}" for z, v in sorted(r["growth zones GiB"].items()))
        gb = r["gave back GiB"]
        log(f"{a:<11} {r['growth plugged s (median)']:>9} {r.get('growth ratio to kernel', '-'):>8} "
            f"{str(r['burst s (median)']):>8} {r.get('burst ratio to kernel', '-'):>8} "
            f"{(f'{gb:g} GiB' if gb is not None else '-'):>10} {str(r['device blocks holding kernel pages']):>18}  {zones}")
    c = results["conditions"]
    log(f"({reps} guest(s) per approach, medians; unplug from the first guest; other QEMU at start: "
        f"{'no' if idle else 'yes'}, during: {c['other qemu seen during runs'] or 'none'}; {c['total seconds']} s)")
    log(f"wrote {args.out} and {args.png}")


if __name__ == "__main__":
    main()
