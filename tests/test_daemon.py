"""memonlined run: the daemon's loop against the fake kernel and a fake
uevent monitor. The daemon runs in the test's main thread (signals are
delivered there); a helper thread plays the hypervisor and the administrator."""

import os
import signal
import socket
import time


from daemonrun import Run, daemon_step, late_node_link, replace_virtio_mem, twin_step, wait_for
from fakekernel import FakeKernel, GiB
from kernelbackend import KernelBackend, kernel_online_all
from memonlined.notify import Systemd
from memonlined.config import Config


def test_boot_offline_and_hot_plugged_memory_like_the_kernel(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")
    for k in (kernel, twin):
        k.add_dimm(4 * GiB)                      # offline at boot
    run = Run(kernel, tmp_path / "run")

    def script(run):
        assert {kernel.layout()[i] for i in range(48, 80)} == {"Movable"}
        for _ in range(4):
            run.locked("add_dimm", 4 * GiB)
            twin.add_dimm(4 * GiB)
        wait_for(lambda: None not in kernel.layout().values())

    assert run(script) == 0
    assert kernel.layout() == kernel_online_all(twin)
    assert run.notes[0].startswith("READY=1\nSTATUS=")
    assert run.notes[-1] == "STOPPING=1"
    assert any("onlined 160" in n for n in run.notes if n.startswith("STATUS="))


def test_virtio_mem_growth_like_the_kernel(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")
    vm = kernel.add_virtio_mem(16 * GiB)
    twin_vm = twin.add_virtio_mem(16 * GiB)

    def script(run):
        for _ in range(40):                      # virtio-mem waits for its blocks to be online
            index = run.locked("virtio_mem_plug", vm, 128 << 20)[0]
            wait_for(lambda: kernel.layout()[index] is not None)
            twin.virtio_mem_plug(twin_vm, 128 << 20)
            kernel_online_all(twin)

    Run(kernel, tmp_path / "run")(script)
    assert kernel.layout() == twin.layout()


def test_a_virtio_mem_device_replaced_at_the_same_address_is_read_anew(tmp_path, caplog):
    """The daemon skips /proc/iomem while a device known to it grows; a removal
    must make it look again (here: the new device is BBM with 1 GiB units)."""
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")

    def script(run):
        run.names = replace_virtio_mem(kernel, daemon_step(run, kernel), same_name=False)

    replace_virtio_mem(twin, twin_step(twin), same_name=False)
    run = Run(kernel, tmp_path / "run")
    with caplog.at_level("INFO", logger="memonlined"):
        run(script)
    old, new, blocks = run.names
    onlined = [r.getMessage() for r in caplog.records if "onlined to" in r.getMessage()]
    assert len(onlined) == 2 + len(blocks) == 34
    assert all(f"({new})" in m for m in onlined[2:]), onlined[2:4]
    assert kernel.layout() == twin.layout()


def test_administrator_offlined_block_is_left_alone_across_a_restart(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    state = tmp_path / "run"

    def first(run):
        run.locked("add_dimm", GiB)
        wait_for(lambda: kernel.layout()[55] is not None)
        run.locked("write_state", 55, "offline")  # the administrator
        time.sleep(0.1)

    Run(kernel, state)(first)
    assert kernel.layout()[55] is None
    kernel.add_dimm(GiB)                          # added while memonlined was down
    Run(kernel, state)(lambda run: wait_for(lambda: kernel.layout()[63] is not None))
    assert kernel.layout()[55] is None            # still offline
    assert {kernel.layout()[i] for i in range(56, 64)} == {"Movable"}  # the missed add was caught up


def test_first_start_in_a_boot_onlines_every_offline_block(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    kernel.add_dimm(GiB)
    Run(kernel, tmp_path / "run")(lambda run: None)
    assert None not in kernel.layout().values()


def test_lost_events_lead_to_a_rescan(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")

    def script(run):
        with run.backend.lock:
            kernel.add_dimm(2 * GiB)
        run.monitor.relay(drop=True)              # ENOBUFS: the adds were lost
        wait_for(lambda: None not in kernel.layout().values())

    Run(kernel, tmp_path / "run")(script)


def test_unknown_actions_and_devices_are_ignored(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")

    def script(run):
        run.monitor.send("bind", "memory48")
        run.monitor.send("add", "memory_tier1")
        run.monitor.send("add", "memory999")      # gone before it is read
        time.sleep(0.1)

    assert Run(kernel, tmp_path / "run")(script) == 0


def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(tmp_path):
    from memonlined.config import ConfigError
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    configs = [Config(ratio=0), ConfigError("x.conf: invalid key foo in [policy]")]

    def reload():
        item = configs.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def script(run):
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: run.daemon.settings.ratio == 0)
        os.kill(os.getpid(), signal.SIGHUP)       # the bad one
        wait_for(lambda: not configs)
        time.sleep(0.05)
        run.locked("add_dimm", GiB)               # ratio 0: a kernel zone
        wait_for(lambda: None not in kernel.layout().values())

    run = Run(kernel, tmp_path / "run", reload=reload)
    run(script)
    assert run.daemon.settings.ratio == 0
    assert {kernel.layout()[i] for i in range(48, 56)} == {"Normal"}
    assert "RELOADING=1" in run.notes


def test_takes_over_auto_online_and_puts_it_back(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", auto_online="online")
    path = tmp_path / "k/sys/devices/system/memory/auto_online_blocks"

    def script(run):
        assert path.read_text() == "offline\n"
        run.locked("add_dimm", GiB)
        wait_for(lambda: None not in kernel.layout().values())

    Run(kernel, tmp_path / "run")(script)
    assert path.read_text() == "online\n"
    assert {kernel.layout()[i] for i in range(48, 56)} == {"Movable"}  # memonlined's decision, not Normal


def test_watchdog_pings(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    run = Run(kernel, tmp_path / "run", watchdog=0.02)
    run(lambda run: time.sleep(0.2))
    assert 3 <= run.notes.count("WATCHDOG=1") <= 12


def test_notify_socket(tmp_path):
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    systemd = Systemd({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    systemd.ready("ok")
    assert server.recv(4096) == b"READY=1\nSTATUS=ok"
    assert systemd.watchdog_period() == 15.0
    server.close()
    systemd.watchdog()  # the socket is gone (systemd stopping): no error


def test_outside_systemd_nothing_is_sent_and_no_watchdog():
    systemd = Systemd({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})  # another process's watchdog
    assert systemd.address is None and systemd.watchdog_period() is None
    systemd.ready("ok")


def test_a_second_instance_is_refused(tmp_path, caplog):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    state = tmp_path / "run"

    def script(run):
        second = Run(kernel, state)
        assert second.daemon.run() == 1

    Run(kernel, state)(script)
    assert "another memonlined is running" in caplog.text


class FileBackend(KernelBackend):
    """Writes land in the tree at once, as a fast kernel's would (the fake
    kernel rewrites every valid_zones file per write: too slow for 8192)."""

    def write_block_state(self, index, value):
        self.writes.append((index, value))
        d = os.path.join(self.root, f"sys/devices/system/memory/memory{index}")
        with open(d + "/state", "w") as f:
            f.write("online\n")
        with open(d + "/valid_zones", "w") as f:
            f.write("Movable\n" if value == "online_movable" else "Normal\n")


def test_a_burst_of_8192_adds_is_handled_completely_in_bounded_memory(tmp_path):
    import tracemalloc
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", boot_ram=((0, 2 * GiB), (4 * GiB, 30 * GiB)))
    run = Run(kernel, tmp_path / "run", backend=FileBackend(kernel))

    def script(run):
        with kernel.batch():
            for _ in range(16):
                kernel.add_dimm(64 * GiB)          # 1 TiB: 8192 blocks
        tracemalloc.start()
        run.monitor.relay()
        wait_for(lambda: len(run.backend.writes) == 8192, timeout=120)
        run.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    run(script)
    written = sorted(i for i, _ in run.backend.writes)
    assert written == list(range(272, 272 + 8192))     # each block once, none missed
    assert run.peak < 32 << 20, run.peak  # measured: 7.4 MB


def test_sigterm_in_the_middle_of_a_batch_finishes_it_and_exits_cleanly(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")

    def script(run):
        with run.backend.lock:
            kernel.add_dimm(4 * GiB)
        run.monitor.relay()
        wait_for(lambda: run.backend.writes)        # the batch has begun; SIGTERM follows at once

    run = Run(kernel, tmp_path / "run")
    assert run(script) == 0
    assert {kernel.layout()[i] for i in range(48, 80)} == {"Movable"}
    assert run.notes[-1] == "STOPPING=1"


def test_a_dimm_is_decided_whole_although_its_links_come_after_its_blocks(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")
    for k in (kernel, twin):
        k.add_dimm(10 * GiB)                     # leaves 2 GiB of room: a block fits, a 4 GiB DIMM does not
    twin.add_dimm(4 * GiB)
    kernel_online_all(twin)

    def script(run):
        name = run.locked("add_dimm", 4 * GiB, link_firmware_node=False)   # blocks and add events first ...
        time.sleep(0.2)
        assert {kernel.layout()[i] for i in range(128, 160)} == {None}      # ... memonlined waits ...
        run.locked("link_firmware_nodes", name)                            # ... for the links
        wait_for(lambda: None not in kernel.layout().values())

    Run(kernel, tmp_path / "run")(script)
    assert kernel.layout() == twin.layout()
    assert {kernel.layout()[i] for i in range(128, 160)} == {"Normal"}


def test_a_dry_run_leaves_nothing_behind_for_the_next_run(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    kernel.add_dimm(GiB)
    state = tmp_path / "run"
    Run(kernel, state, dry_run=True)(lambda run: None)
    assert set(kernel.layout().values()) >= {None} and not (state / "handled.json").exists()
    Run(kernel, state)(lambda run: None)          # the real run onlines what the dry run only predicted
    assert None not in kernel.layout().values()


def test_a_block_read_before_its_node_link_exists_is_read_again(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    Run(kernel, tmp_path / "run")(late_node_link(kernel, 50, 0.1))
