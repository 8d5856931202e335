"""Where memonlined's time goes while a virtio-mem device grows (real guest).

    .venv/bin/python benchmarks/growth_trace.py [--reps N] [memonlined options...]

Needs root and `bash tests/e2e/setup.sh`. Boots the 4 GiB, 2-vCPU guest of
benchmarks/guests.py (Debian 6.1, TCG), runs `memonlined run` with a few of
its functions wrapped to record when they start and end, grows the device
0 -> 16 GiB and prints, from the first batch to the last state write: the
time spent inside the state writes (the kernel's onlining work), in Python
(memonlined's own work: reading events and blocks, deciding, logging) and
idle (waiting for the driver to add blocks). Then, in a second guest, what
one state write costs with nothing else going on: a 4 GiB DIMM is added
offline and its 32 blocks are onlined one by one (same kernel and boot
options: the kernel's default ones; a write took 3.8-6.0 ms there, 11-14 ms
during a growth, where virtio-mem's worker holds device_hotplug_lock to add
the next block and the write sleeps 5 ms to try again). --profile adds the
daemon's own cProfile (which slows it down).
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "e2e"))
sys.path.insert(0, HERE)

from guest import GiB, virtio_mem_opts
from guests import bench_guest
from scenarios import install_memonlined, start_daemon, stop_daemon

RUNNER = r'''
import os, sys, time
sys.path[:0] = ["/run/py"]
from memonlined import cli, backend, daemon
spans = []
def wrap(cls, name):
    f = getattr(cls, name)
    def timed(*a, **k):
        t = time.monotonic()
        try:
            return f(*a, **k)
        finally:
            spans.append("%s %.6f %.6f" % (name, t, time.monotonic()))
    setattr(cls, name, timed)
from memonlined import blocks, metrics, writer
for cls, name in ((daemon.Daemon, "process_batch"), (daemon.Daemon, "_drain"),
                  (backend.Backend, "write_block_state"), (blocks.Blocks, "reread"), (blocks.Blocks, "save"),
                  (metrics.Reporter, "batch_done"), (writer, "_tell"), (daemon.Daemon, "on_event")):
    wrap(cls, name)
profile = None
if os.environ.get("PROFILE"):  # where the Python time goes, per function (inflates it)
    import cProfile
    profile = cProfile.Profile()
    profile.enable()
try:
    rc = cli.main(sys.argv[1:])
finally:
    if profile is not None:
        profile.disable()
        profile.dump_stats(os.environ["PROFILE"])
    with open("/run/spans", "w") as f:
        f.write("\n".join(spans) + "\n")
sys.exit(rc)
'''


def trace(mo_args, profile=False):
    with bench_guest("memonlined", qemu_opts=virtio_mem_opts("vm0", 16 * GiB)) as g:
        install_memonlined(g)
        with open(os.path.join(g.share, "runner.py"), "w") as f:
            f.write(RUNNER)
        env = f"PROFILE={g.share}/profile " if profile else ""
        start_daemon(g, f"--config /dev/null {' '.join(mo_args)} run", program=f"{env}python3 -S {g.share}/runner.py")
        g.sh("modprobe virtio_mem")
        t0 = time.monotonic()
        g.request_size("vm0", 16 * GiB)
        while g.plugged("vm0") != 16 * GiB:
            time.sleep(0.05)
        growth = time.monotonic() - t0
        time.sleep(1)
        stop_daemon(g)
        if profile:
            import pstats
            pstats.Stats(os.path.join(g.share, "profile")).sort_stats("tottime").print_stats(25)
        spans = [(n, float(a), float(b)) for n, a, b in (line.split() for line in g.sh("cat /run/spans").stdout.split("\n") if line)]
    batches = [s for s in spans if s[0] == "process_batch"]
    writes = [s for s in spans if s[0] == "write_block_state"]
    start, end = batches[0][1], max(b for _, _, b in writes)
    busy = sum(b - a for n, a, b in spans if n in ("process_batch", "_drain") and a >= start)
    in_writes = sum(b - a for _, a, b in writes)
    # Between two writes of one batch: deciding the next block (and whatever else runs there).
    gaps = [(c - b) * 1000 for (_, _, b), (_, c, _) in zip(writes, writes[1:])
            if any(s <= b and c <= e for _, s, e in batches)]
    parts = {}
    for n, a, b in spans:
        if a >= start and n not in ("process_batch", "_drain", "write_block_state"):
            parts[n] = parts.get(n, 0) + (b - a)
    return {"write ms": [(b - a) * 1000 for _, a, b in writes], "gap ms": gaps, "parts s": parts, "growth s": growth, "traced s": end - start,
            "writes s": in_writes, "python s": busy - in_writes, "idle s": (end - start) - busy,
            "blocks": len(writes), "batches": len(batches)}


# Onlines every offline block, one write each, and prints the write times.
UNCONTENDED = r'''
import os, time
D = "/sys/devices/system/memory/"
blocks = sorted(int(n[6:]) for n in os.listdir(D)
                if n.startswith("memory") and open(D + n + "/state").read().strip() == "offline")
for b in blocks:
    t = time.monotonic()
    with open(D + "memory%d/state" % b, "w") as f:
        f.write("online_movable")
    print((time.monotonic() - t) * 1000)
'''


def uncontended():
    """Times of single state writes (ms) with no driver adding blocks meanwhile."""
    with bench_guest("memonlined") as g:
        with open(os.path.join(g.share, "writes.py"), "w") as f:
            f.write(UNCONTENDED)
        g.add_dimm("d0", 4 * GiB)
        time.sleep(3)  # the ACPI add completes
        return [float(x) for x in g.sh(f"python3 {g.share}/writes.py").stdout.split()]


def spread(ms):
    """'median M ms, p90 P ms, max X ms' of write times in ms."""
    ms = sorted(ms)
    return f"median {ms[len(ms) // 2]:.1f} ms, p90 {ms[len(ms) * 9 // 10]:.1f} ms, max {ms[-1]:.1f} ms"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="also print the daemon's cProfile (its own time grows)")
    args, mo_args = p.parse_known_args()
    if os.geteuid() != 0:
        sys.exit("run as root (vng, QEMU, and memonlined in the guest)")
    for _ in range(args.reps):
        r = trace(mo_args, args.profile)
        print(f"growth {r['growth s']:.2f} s until plugged; from the first batch to the last write "
              f"{r['traced s']:.2f} s: inside state writes {r['writes s']:.2f} s, Python {r['python s']:.2f} s "
              f"({r['python s'] / r['blocks'] * 1000:.1f} ms per block), idle {r['idle s']:.2f} s; "
              f"{r['blocks']} blocks in {r['batches']} batches", flush=True)
        print(f"  one write: {spread(r['write ms'])}; between two writes of a batch: {spread(r['gap ms'])}",
              flush=True)
        print("  within the Python time: " + ", ".join(f"{n} {t:.3f} s" for n, t in sorted(r["parts s"].items())),
              flush=True)
    w = uncontended()
    print(f"uncontended (a DIMM's {len(w)} blocks onlined one by one, nothing else going on): one write: "
          f"{spread(w)}", flush=True)


if __name__ == "__main__":
    main()
