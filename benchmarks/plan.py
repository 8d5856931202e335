#!/usr/bin/env python3
"""Benchmark: `memonlined --root T online --dry-run --json` on big trees.

Builds fake-kernel trees (tests/fakekernel.py) of 4096 and 16384 offline
blocks (512 GiB and 2 TiB) spread over 4 nodes, half in DIMMs and half in
virtio-mem devices, and times the whole command (interpreter start, full
discovery, the plan of every block, the JSON) in a fresh process, several
runs each. Prints the median wall time, the ratio between the two sizes and
the peak resident memory. Run by hand: .venv/bin/python benchmarks/plan.py
"""

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from fakekernel import FakeKernel, GiB

NODES = 4


def build(root: str, blocks: int) -> FakeKernel:
    """4 nodes with 4 GiB of boot memory each; per node, hot-plugged memory
    of BLOCKS/4 blocks: half in 8 GiB DIMMs, half in one virtio-mem device."""
    per_node = blocks // NODES * 128 << 20
    boot = {0: [(0, 2 * GiB), (4 * GiB, 2 * GiB)]}
    boot.update({n: [(8 * GiB + (n - 1) * 4 * GiB, 4 * GiB)] for n in range(1, NODES)})
    kernel = FakeKernel(root, boot_ram=boot, back_links=True)  # nodeN/memoryM, as real kernels have them
    with kernel.batch():
        for node in range(NODES):
            for _ in range(per_node // 2 // (8 * GiB)):
                kernel.add_dimm(8 * GiB, node=node)
            vm = kernel.add_virtio_mem(per_node // 2, node=node)
            kernel.virtio_mem_plug(vm, per_node // 2)
    return kernel


def run_once(root: str) -> "tuple[float, int]":
    cmd = [sys.executable, "-m", "memonlined", "--config", os.devnull, "--root", root, "--log-level", "error",
           "online", "--dry-run", "--json"]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, cwd=os.path.join(HERE, "..")).stdout
    elapsed = time.perf_counter() - start
    return elapsed, out.count(b'"block"')


def main() -> None:
    results = {}
    for blocks in (4096, 16384):
        with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as root:
            t = time.perf_counter()
            build(root, blocks)
            built = time.perf_counter() - t
            runs = [run_once(root) for _ in range(5)]
            assert all(n == blocks for _, n in runs), runs
            results[blocks] = statistics.median(t for t, _ in runs)
            print(f"{blocks:6d} offline blocks ({blocks // 8} GiB, {NODES} nodes): "
                  f"median {results[blocks]:.3f} s over 5 runs (min {min(t for t, _ in runs):.3f} s, "
                  f"max {max(t for t, _ in runs):.3f} s); "
                  f"tree built in {built:.1f} s")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"16384 / 4096 time ratio: {results[16384] / results[4096]:.2f} (goal: at most 4.5)")
    print(f"peak resident memory of one run: {peak:.1f} MiB")


if __name__ == "__main__":
    main()
