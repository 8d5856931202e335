"""A Backend whose writes go to the fake kernel, which reacts like the real one."""

import io
import json
import os
import re
import threading
from contextlib import redirect_stdout

from memonlined.backend import SETTINGS, Backend
from memonlined.cli import main

# Trees recorded in real guests (tests/data/record.py), each with the layout the kernel made.
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

VALID_ZONES = re.compile(r"sys/devices/system/memory/memory(\d+)/valid_zones")


class KernelBackend(Backend):
    def __init__(self, kernel):
        super().__init__(kernel.root)
        self.kernel = kernel
        self.writes = []
        self.oopses = []  # reads that would have crashed a real kernel
        self.lock = threading.RLock()  # the daemon tests change the kernel from a second thread

    def _oops_check(self, rel):
        # A real kernel oopses reading valid_zones of a block whose node it has
        # not set yet, i.e. before the block's nodeK link exists (6.1 guests).
        m = VALID_ZONES.fullmatch(rel)
        if m and os.path.isdir(self.path(os.path.dirname(rel))) and self.block_node(int(m.group(1))) is None:
            self.oopses.append(rel)

    def read(self, rel):
        self._oops_check(rel)
        return super().read(rel)

    def read_attribute(self, rel):
        self._oops_check(rel)
        return super().read_attribute(rel)

    def block_instance(self, index):
        # The fake kernel's inode numbers: kernfs's never repeat, while the
        # file system under the fake tree reuses a freed one at once.
        mem = self.kernel.blocks.get(index)
        return None if mem is None else mem.ino

    def write_block_state(self, index, value):
        self.writes.append((index, value))
        with self.lock:
            self.kernel.write_state(index, value)

    def write_setting(self, rel, value):
        assert rel in SETTINGS, rel  # the real backend's whitelist
        with self.lock:
            self._write_setting(rel, value)

    def _write_setting(self, rel, value):
        if rel.endswith("auto_online_blocks"):
            self.kernel.set_param("auto_online_blocks", value)
        else:
            self.kernel.set_param(os.path.basename(rel), value)


def memonlined(kernel, *args, backend=None):
    """Run the memonlined command line against KERNEL (a fake kernel, or the
    path of a recorded tree), through BACKEND if given; (exit code, stdout)."""
    out = io.StringIO()
    if isinstance(kernel, str):
        root, backend = kernel, backend or Backend(kernel)
    else:
        root, backend = kernel.root, backend or KernelBackend(kernel)
    with redirect_stdout(out):
        rc = main(["--config", os.devnull, "--root", root, *args], backend=backend)
    return rc, out.getvalue()


def plan(kernel, *options):
    """memonlined's dry-run prediction: {block: zone}."""
    rc, out = memonlined(kernel, *options, "online", "--dry-run", "--json")
    assert rc == 0, out
    return {d["block"]: d["zone"] for d in json.loads(out)["decisions"]}


def kernel_online_all(kernel):
    """What the kernel's own policy does: a plain `online` of every offline
    block in ascending order."""
    for index, zone in sorted(kernel.layout().items()):
        if zone is None:
            kernel.write_state(index, "online")
    return kernel.layout()
