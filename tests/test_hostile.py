"""Hostile conditions: write failures, vanishing and changing blocks, garbled
input. Each must leave memory online where at all possible, never write on
the strength of garbage, and say what happened in one line."""

import errno
import json
import os

import pytest

from fakekernel import FakeKernel, GiB
from kernelbackend import KernelBackend, memonlined
from memonlined.cli import main

EHWPOISON = 133  # not in Python's errno table


@pytest.fixture
def kernel(tmp_path):
    k = FakeKernel(tmp_path, policy="contig-zones")
    k.add_dimm(GiB)  # blocks 48-55, Movable by the policy
    return k


def layout(kernel, first=48, last=55):
    return [kernel.layout()[i] for i in range(first, last + 1)]


@pytest.mark.parametrize("err", [errno.EBUSY, errno.EINVAL, errno.ENOMEM, errno.EIO, errno.EAGAIN, EHWPOISON])
def test_online_movable_refused_falls_back_to_online_kernel(kernel, caplog, err):
    kernel.inject_fault(50, "online_movable", err)
    backend = KernelBackend(kernel)
    rc, out = memonlined(kernel, "online", "--json", backend=backend)
    assert rc == 0
    # Once part of the DIMM is in a kernel zone, the rest follows it, as the
    # kernel's policy would: the outcome, not the plan, steers the next block.
    assert layout(kernel) == ["Movable", "Movable"] + ["Normal"] * 6
    results = {d["block"]: d["result"] for d in json.loads(out)["decisions"]}
    assert results[50] == "fallback"
    assert backend.writes.count((50, "online_movable")) == 1 and backend.writes.count((50, "online_kernel")) == 1
    assert "memory50: online_movable failed" in caplog.text


def test_a_block_that_cannot_be_onlined_stays_offline_and_the_rest_is_handled(kernel, caplog):
    kernel.inject_fault(50, "online_movable", errno.ENOMEM)
    kernel.inject_fault(50, "online_kernel", errno.ENOMEM)
    backend = KernelBackend(kernel)
    rc, _ = memonlined(kernel, "online", backend=backend)
    assert rc == 1  # partial failure
    assert layout(kernel) == ["Movable", "Movable", None] + ["Movable"] * 5
    assert len([w for w in backend.writes if w[0] == 50]) == 2  # no retry storm
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "memory50: online_kernel failed (ENOMEM); the block stays offline" in errors[0].message


class RacingBackend(KernelBackend):
    """Something happens to a block just before memonlined writes to it."""

    def __init__(self, kernel, index, action):
        super().__init__(kernel)
        self.index, self.action = index, action

    def write_block_state(self, index, value):
        if index == self.index and self.action:
            action, self.action = self.action, None
            action(self.kernel)
        super().write_block_state(index, value)


def test_a_block_removed_before_the_write_is_skipped_quietly(kernel, caplog):
    backend = RacingBackend(kernel, 52, lambda k: k.remove_block(52))
    rc, out = memonlined(kernel, "online", "--json", backend=backend)
    assert rc == 0
    assert 52 not in {d["block"] for d in json.loads(out)["decisions"]}
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert None not in [z for i, z in kernel.layout().items() if i != 52]


def test_a_block_onlined_by_someone_else_meanwhile_is_reported(kernel, caplog):
    backend = RacingBackend(kernel, 53, lambda k: k.write_state(53, "online_kernel"))
    rc, out = memonlined(kernel, "online", "--json", backend=backend)
    assert rc == 0
    results = {d["block"]: (d["zone"], d["result"]) for d in json.loads(out)["decisions"]}
    assert results[53] == ("Normal", "already-online")
    assert "memory53: onlined by someone else, to Normal" in caplog.text


def test_a_block_already_online_is_not_an_error(kernel):
    kernel.write_state(48, "online_movable")
    rc, out = memonlined(kernel, "online", "--json")
    assert rc == 0 and 48 not in {d["block"] for d in json.loads(out)["decisions"]}


def test_kernel_auto_online_is_reported(tmp_path, caplog):
    k = FakeKernel(tmp_path, auto_online="online")
    k.add_dimm(GiB)
    assert memonlined(k, "online")[0] == 0
    assert "the kernel onlines hot-plugged memory itself (auto_online_blocks=online)" in caplog.text


def test_doctor_tells_how_to_keep_the_kernel_from_racing_at_boot(tmp_path):
    """Debian 13's kernel onlines memory itself by default."""
    k = FakeKernel(tmp_path, auto_online="online")
    rc, out = memonlined(k, "doctor")
    assert rc == 0 and "boot with memhp_default_state=offline: add it to GRUB_CMDLINE_LINUX in " \
                       "/etc/default/grub, then run update-grub" in out
    k.set_param("auto_online_blocks", "offline")
    assert "memhp_default_state" not in memonlined(k, "doctor")[1]


# -- garbled input ---------------------------------------------------------

def garble(kernel, rel, text):
    with open(os.path.join(kernel.root, rel), "w") as f:
        f.write(text)


@pytest.mark.parametrize("rel, text, message", [
    ("proc/zoneinfo", "Node 0, zone   Normal\n  pages free 3\n", "proc/zoneinfo: zone Normal of node 0 has no 'present' line"),
    ("proc/zoneinfo", "Node 0, zone   Normal\n        present  lots\n", "proc/zoneinfo: expected a number of pages"),
    ("proc/zoneinfo", "Node 0, zone   Sideways\n        present  1\n", "proc/zoneinfo: unknown zone name 'Sideways'"),
    ("sys/devices/system/memory/block_size_bytes", "twelve\n", "block_size_bytes: expected the block size in hex"),
    ("proc/iomem", "00000000-00000000 : System RAM\n00000000-00000000 : Reserved\n",
     "proc/iomem: addresses are hidden (all zero); memonlined needs CAP_SYS_ADMIN"),
    ("proc/iomem", "garbage\n", "proc/iomem: line 1: expected 'START-END : NAME'"),
])
def test_garbled_global_data_stops_before_any_write(kernel, caplog, rel, text, message):
    garble(kernel, rel, text)
    backend = KernelBackend(kernel)
    rc, _ = memonlined(kernel, "online", backend=backend)
    assert rc == 4
    assert backend.writes == []
    errors = [r.message for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]


def test_missing_boot_params_and_memory_hotplug_parameters(kernel):
    os.unlink(os.path.join(kernel.root, "sys/kernel/boot_params/data"))
    params = os.path.join(kernel.root, "sys/module/memory_hotplug")
    for name in os.listdir(params + "/parameters"):
        os.unlink(os.path.join(params, "parameters", name))
    rc, _ = memonlined(kernel, "online")
    assert rc == 0
    assert layout(kernel) == ["Movable"] * 8


@pytest.mark.parametrize("name, text", [("state", "sideways\n"), ("valid_zones", "\n"),
                                        ("valid_zones", "Normal Upward\n")])
def test_a_garbled_block_is_skipped_and_the_rest_handled(kernel, caplog, name, text):
    garble(kernel, f"sys/devices/system/memory/memory51/{name}", text)
    backend = KernelBackend(kernel)
    rc, _ = memonlined(kernel, "online", backend=backend)
    assert rc == 0
    assert 51 not in [w[0] for w in backend.writes]
    assert [z for i, z in enumerate(layout(kernel)) if i != 3] == ["Movable"] * 7
    assert "memory51: " in caplog.text and "skipped" in caplog.text


def test_a_block_without_valid_zones_is_skipped(kernel, caplog):
    os.unlink(os.path.join(kernel.root, "sys/devices/system/memory/memory49/valid_zones"))
    backend = KernelBackend(kernel)
    assert memonlined(kernel, "online", backend=backend)[0] == 0
    assert 49 not in [w[0] for w in backend.writes]
    assert "memory49/valid_zones: cannot read: No such file or directory; memory49 skipped" in caplog.text


def test_writes_stay_inside_the_root(tmp_path):
    from memonlined.backend import Backend
    outside = tmp_path / "outside"
    outside.write_text("untouched\n")
    root = tmp_path / "root" / "sys/devices/system/memory/memory7"
    root.mkdir(parents=True)
    os.symlink(outside, root / "state")  # a crafted tree: state is a link out
    backend = Backend(str(tmp_path / "root"))
    with pytest.raises(OSError):
        backend.write_block_state(7, "online_movable")
    with pytest.raises(FileNotFoundError):  # never creates a file
        backend.write_block_state(8, "online_movable")
    with pytest.raises(ValueError):
        backend.write_setting("etc/passwd", "x")
    assert outside.read_text() == "untouched\n"


def test_a_short_write_is_a_failed_write(kernel, monkeypatch, caplog):
    import memonlined.backend as backend_module
    real_write = os.write

    class ShortBackend(KernelBackend):
        """Goes through the real write path, where the kernel takes one byte too few
        (and, like sysfs, the block's state file is left as it was)."""

        def write_block_state(self, index, value):
            if index == 50 and value == "online_movable":
                monkeypatch.setattr(backend_module.os, "write", lambda fd, data: len(data) - 1)
                try:
                    return Backend.write_block_state(self, index, value)
                finally:
                    monkeypatch.setattr(backend_module.os, "write", real_write)
            return super().write_block_state(index, value)

    from memonlined.backend import Backend
    rc, out = memonlined(kernel, "online", "--json", backend=ShortBackend(kernel))
    assert rc == 0
    assert "memory50: online_movable failed (EIO); falling back to online_kernel" in caplog.text
    assert kernel.layout()[50] == "Normal"


# -- the lifecycle issue's defects 13 and 14: one line, the documented exit code, no write elsewhere

def _daemon(kernel, state_dir, *options, backend=None):
    """`memonlined run` in-process (the composition root with the fake
    monitor and systemd), stopped by SIGTERM once ready."""
    import signal
    import threading
    import time
    from fakemonitor import FakeMonitor, FakeSystemd
    systemd = FakeSystemd()
    done = []

    def stop():
        end = time.monotonic() + 10
        while not done and not any(n.startswith("READY=1") for n in systemd.notes) and time.monotonic() < end:
            time.sleep(0.01)
        if not done:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=stop)
    thread.start()
    try:
        rc = main(["--config", os.devnull, "--root", kernel.root, *options, "run", "--state-dir", str(state_dir)],
                  backend=backend or KernelBackend(kernel), monitor=FakeMonitor(kernel), notifier=systemd)
    finally:
        done.append(True)
    thread.join()
    return rc, systemd


def test_run_in_process_onlines_boot_offline_memory_and_stops_cleanly(kernel, tmp_path):
    rc, systemd = _daemon(kernel, tmp_path / "run")
    assert rc == 0 and layout(kernel) == ["Movable"] * 8
    assert systemd.notes[0].startswith("READY=1\nSTATUS=40 of 40 blocks online") and systemd.notes[-1] == "STOPPING=1"


def test_a_state_directory_that_is_a_file_is_one_line_and_exit_4(kernel, tmp_path, caplog):
    (tmp_path / "state").write_text("")
    rc, _ = _daemon(kernel, tmp_path / "state")
    assert rc == 4
    assert f"{tmp_path}/state: cannot use as the state directory: File exists" in caplog.text
    assert layout(kernel) == [None] * 8


def test_saving_the_handled_blocks_failing_is_one_error_and_memory_is_still_onlined(kernel, tmp_path, caplog):
    os.makedirs(tmp_path / "run/handled.json.tmp")      # as ENOSPC would: every save fails
    rc, _ = _daemon(kernel, tmp_path / "run")
    assert rc == 0 and layout(kernel) == ["Movable"] * 8
    assert caplog.text.count("handled.json: cannot save") == 1


def test_kernel_mode_without_numa_awareness_in_the_kernel(kernel, tmp_path, caplog):
    """CONFIG_NUMA=n: no auto_movable_numa_aware; kernel mode configures the rest."""
    os.unlink(os.path.join(kernel.root, "sys/module/memory_hotplug/parameters/auto_movable_numa_aware"))
    rc, _ = _daemon(kernel, tmp_path / "run", "--mode", "kernel")
    assert rc == 0 and "Traceback" not in caplog.text
    assert kernel.online_policy == "auto-movable" and kernel.mhp_default_online_type != 0
    assert layout(kernel) == ["Movable"] * 8             # the leftovers, onlined for the kernel to place


def test_kernel_mode_refused_by_the_kernel_falls_back_to_memonlined_deciding(kernel, tmp_path, caplog):
    class Refusing(KernelBackend):
        def write_setting(self, rel, value):
            raise PermissionError(errno.EPERM, "Operation not permitted")

    rc, _ = _daemon(kernel, tmp_path / "run", "--mode", "kernel", backend=Refusing(kernel))
    assert rc == 0
    assert "kernel mode: cannot configure the kernel's policy (Operation not permitted); memonlined decides" \
        in caplog.text
    assert layout(kernel) == ["Movable"] * 8


def test_capture_into_a_file_or_a_tree_with_planted_links_is_refused(kernel, tmp_path, caplog):
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    planted = tmp_path / "out"
    os.makedirs(planted / "proc")
    os.symlink(target, planted / "proc/zoneinfo")        # the next capture would write through it
    assert memonlined(kernel, "capture", str(planted))[0] == 2
    assert "expected a new or empty directory" in caplog.text
    assert memonlined(kernel, "capture", str(target))[0] == 2
    assert target.read_text() == "keep me\n"


def test_writes_under_root_never_follow_a_symlinked_directory(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    kernel.add_dimm(GiB)
    elsewhere = tmp_path / "elsewhere"
    os.makedirs(elsewhere / "memory48")
    (elsewhere / "memory48/state").write_text("offline\n")
    os.rename(tmp_path / "k/sys/devices/system/memory", tmp_path / "k/sys/devices/system/memory.real")
    os.symlink(tmp_path / "elsewhere", tmp_path / "k/sys/devices/system/memory")
    from memonlined.backend import Backend
    with pytest.raises(OSError) as e:
        Backend(kernel.root).write_block_state(48, "online_movable")
    assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert (elsewhere / "memory48/state").read_text() == "offline\n"


def test_the_same_machine_in_64k_pages_gets_the_same_decisions(tmp_path):
    """arm64 and ppc64 kernels with 64 KiB pages count /proc/zoneinfo in
    them: a DIMM that fits must stay Movable (it turned Normal with 4 KiB
    assumed), and every decision must be the one 4 KiB pages give."""
    import re
    import shutil
    from kernelbackend import plan
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    for size in (4, 4, 4, 4):
        kernel.add_dimm(size * GiB)
    big = str(tmp_path / "64k")
    shutil.copytree(kernel.root, big, symlinks=True)
    path = os.path.join(big, "proc/zoneinfo")
    text = open(path).read()
    # every page count, in pages of 16 times the size (block and zone sizes are multiples)
    text = re.sub(r"^(\s+(?:present|managed|spanned|cma|pages free|min|low|high)\s+)(\d+)$",
                  lambda m: m.group(1) + str(int(m.group(2)) // 16), text, flags=re.M)
    open(path, "w").write(text)
    from memonlined.backend import Backend
    from memonlined.parse import parse_zoneinfo
    assert Backend(big).page_size(parse_zoneinfo(text)) == 65536
    decisions = plan(kernel.root)
    assert {decisions[i] for i in range(48, 80)} == {"Movable"}
    assert plan(big) == decisions


def test_e820_entries_beyond_the_zero_pages_128_are_read_from_setup_data(tmp_path):
    """Firmware with more than 128 E820 entries: the zero page holds 128,
    the rest are in a SETUP_E820_EXT setup_data node, which sysfs shows."""
    import shutil
    import struct
    from kernelbackend import plan
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    kernel.add_dimm(8 * GiB)           # fits 301% of 4 GiB of boot memory, not of 2 GiB
    moved = str(tmp_path / "moved")
    shutil.copytree(kernel.root, moved, symlinks=True)
    path = os.path.join(moved, "sys/kernel/boot_params/data")
    data = bytearray(open(path, "rb").read())
    count = data[0x1E8]
    entries = [bytes(data[0x2D0 + 20 * i:0x2D0 + 20 * (i + 1)]) for i in range(count)]
    last_ram = max(i for i, e in enumerate(entries) if struct.unpack("<QQI", e)[2] == 1)
    assert struct.unpack("<QQI", entries[last_ram])[0] == 4 * GiB     # the boot RAM above 4 GiB
    kept = [e for i, e in enumerate(entries) if i != last_ram]
    data[0x1E8] = len(kept)
    data[0x2D0:0x2D0 + 20 * count] = b"".join(kept) + bytes(20)
    open(path, "wb").write(bytes(data))
    node = os.path.join(moved, "sys/kernel/boot_params/setup_data/0")
    os.makedirs(node)
    open(node + "/type", "w").write("0x1\n")
    open(node + "/data", "wb").write(entries[last_ram])
    assert plan(moved) == plan(kernel.root)
    shutil.rmtree(node)                            # the same tree without it: boot RAM taken for hot-plugged
    assert plan(moved) != plan(kernel.root)
