#!/usr/bin/env python3
"""Benchmark of the daemon (memonlined run). Run by hand, as root:
.venv/bin/python benchmarks/daemon.py

1. Latency: 50 blocks added one at a time (as virtio-mem adds them), then
   a burst of 1024 add events (eight 16 GiB DIMMs) on the fake
   kernel with the fake monitor, in-process: for every block, the time from
   its add uevent reaching the monitor to its state write. Median and p99,
   with the default settle window.
2. What memonlined's own code holds after start-up and after a 1 TiB burst
   (tracemalloc, in-process: the fake kernel shares the process).
3. Footprint: the real command (`memonlined run --dry-run` on a fake tree,
   with the real pyudev monitor) in its own process: resident memory after
   start-up, and its wake-ups while idle (context switches over 10 s, with
   and without a watchdog).
"""

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))
from daemonrun import Run
from fakekernel import FakeKernel, GiB
from fakemonitor import FakeMonitor
from memonlined.backend import Backend
from memonlined.config import Config


class TimedMonitor(FakeMonitor):
    """Stamps each event when the daemon could first see it."""

    def relay(self, drop=False):
        now = time.perf_counter()
        with self.lock:
            for action, devpath in self.kernel.events[self.seen:]:
                if action == "add":
                    self.added.setdefault(int(devpath.rsplit("memory", 1)[1]), now)
        super().relay(drop)


class InstantBackend(Backend):
    """Applies a state write to the tree at once, as a fast kernel would: the
    fake kernel rewrites zoneinfo and every valid_zones file per write, which
    would swamp memonlined's own time. Stamps each write."""

    def write_block_state(self, index, value):
        d = self.path(f"sys/devices/system/memory/memory{index}")
        with open(d + "/state", "w") as f:
            f.write("online\n")
        with open(d + "/valid_zones", "w") as f:
            f.write("Movable\n" if value == "online_movable" else "Normal\n")
        self.written[index] = time.perf_counter()


def latency(root: str) -> None:
    kernel = FakeKernel(root, policy="contig-zones", boot_ram=((0, 2 * GiB), (4 * GiB, 14 * GiB)))
    backend = InstantBackend(root)
    backend.written = {}
    monitor = TimedMonitor(kernel)
    monitor.added = {}
    settings = Config()
    singles = []

    def play(run):
        # One block at a time, as virtio-mem adds them (it waits for each to be online).
        for _ in range(50):
            kernel.add_dimm(128 << 20)
            index = max(kernel.blocks)
            start = time.perf_counter()
            monitor.relay()
            while index not in backend.written:
                time.sleep(0.0002)
            singles.append((backend.written[index] - start) * 1000)
        backend.written.clear()
        monitor.added.clear()
        with kernel.batch():  # the blocks are made first; then their 1024 add events arrive as one burst
            for _ in range(8):
                kernel.add_dimm(16 * GiB)
        monitor.relay()
        while len(backend.written) < 1024:
            time.sleep(0.01)

    Run(kernel, os.path.join(root, "run"), settings=settings, backend=backend, monitor=monitor)(play)
    singles.sort()
    print(f"add event -> state write, one block at a time (50 blocks), settle {settings.settle_ms} ms: "
          f"median {statistics.median(singles):.1f} ms, p99 {singles[int(len(singles) * 0.99) - 1]:.1f} ms")
    delays = sorted((backend.written[i] - t) * 1000 for i, t in monitor.added.items())
    p99 = delays[int(len(delays) * 0.99) - 1]
    print(f"add event -> state write, {len(delays)} blocks in a burst, settle {settings.settle_ms} ms: "
          f"median {statistics.median(delays):.1f} ms, p99 {p99:.1f} ms, max {delays[-1]:.1f} ms")
    per_block = (max(backend.written.values()) - min(backend.written.values())) / (len(delays) - 1) * 1000
    print(f"  writes follow each other every {per_block:.3f} ms (reading the block, deciding, writing, logging)")


def after_burst(root: str) -> None:
    """What memonlined's own code holds (tracemalloc, by file) after start-up
    and after a 1 TiB burst (128 DIMMs of 8 GiB, 8192 blocks), in-process on
    the fake kernel: the fake kernel's memory is in the same process, so the
    resident size would not tell; the Python heap by file does."""
    import tracemalloc
    kernel = FakeKernel(root, policy="contig-zones", boot_ram=((0, 2 * GiB), (4 * GiB, 14 * GiB)))
    backend = InstantBackend(root)
    backend.written = {}
    held = {}

    def ours() -> int:
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/memonlined/*")])
        return sum(stat.size for stat in snap.statistics("filename"))

    def play(run):
        held["start"] = ours()
        with kernel.batch():
            for _ in range(128):
                kernel.add_dimm(8 * GiB)
        run.monitor.relay()
        while len(backend.written) < 8192:
            time.sleep(0.05)
        time.sleep(0.5)  # the batch's figures and state file
        held["burst"] = ours()

    tracemalloc.start()
    Run(kernel, os.path.join(root, "run"), settings=Config(), backend=backend)(play)
    tracemalloc.stop()
    print(f"memonlined's own Python memory (tracemalloc): {held['start'] / (1 << 20):.2f} MiB after start-up, "
          f"{held['burst'] / (1 << 20):.2f} MiB after a 1 TiB burst (8192 blocks onlined and in the model)")


def footprint(root: str) -> None:
    FakeKernel(os.path.join(root, "tree"))
    for watchdog in (0, 30_000_000):
        env = dict(os.environ, WATCHDOG_USEC=str(watchdog)) if watchdog else dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        proc = subprocess.Popen([sys.executable, "-m", "memonlined", "--config", os.devnull, "--root",
                                 os.path.join(root, "tree"), "run", "--dry-run", "--state-dir",
                                 os.path.join(root, "state")], cwd=os.path.join(HERE, ".."), env=env,
                                stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            if "ready:" in line:
                break
        p = psutil.Process(proc.pid)
        rss = p.memory_info().rss / (1 << 20)
        before = p.num_ctx_switches()
        time.sleep(10)
        after = p.num_ctx_switches()
        wakeups = (after.voluntary - before.voluntary) + (after.involuntary - before.involuntary)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        label = f"watchdog {watchdog // 1_000_000} s" if watchdog else "no watchdog"
        print(f"memonlined run ({label}): resident memory after start-up {rss:.1f} MiB; "
              f"context switches while idle for 10 s: {wakeups}")


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        latency(root)
    with tempfile.TemporaryDirectory() as root:
        after_burst(root)
    with tempfile.TemporaryDirectory() as root:
        footprint(root)


if __name__ == "__main__":
    main()
