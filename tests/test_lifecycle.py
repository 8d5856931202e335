"""The daemon through a VM's whole life (the lifecycle issue's defects, each
shown by ../shared/repro/ before its fix): crashes and restarts, blocks
re-added at a reused index, synthetic add uevents, nodes that come online
later, replaced devices, rescans, reloads in kernel mode, long batches."""

import json
import os
import signal
import threading
import time

import pytest

from daemonrun import Run, daemon_step, late_node_link, replace_virtio_mem, twin_step, wait_for
from fakekernel import ACPI_MEMORY_BUS, FakeKernel, GiB
from kernelbackend import KernelBackend, kernel_online_all, memonlined
from memonlined.discover import SystemDataError
from memonlined import blocks as daemon_blocks, daemon
from memonlined.config import Config

AUTO_ONLINE = "sys/devices/system/memory/auto_online_blocks"


def read(kernel, rel):
    with open(os.path.join(kernel.root, rel)) as f:
        return f.read().strip()


# -- defect 1: the take-over of auto_online_blocks -----------------------------

def test_a_failed_start_puts_auto_online_blocks_back(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", auto_online="online")
    with open(kernel.root + "/proc/zoneinfo", "w") as f:
        f.write("garbage\n")
    rc = Run(kernel, tmp_path / "run")(lambda run: None)
    assert isinstance(rc, SystemDataError)
    assert read(kernel, AUTO_ONLINE) == "online"
    assert not (tmp_path / "run/auto_online_blocks.json").exists()


def test_a_crash_in_the_loop_puts_auto_online_blocks_back(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", auto_online="online")
    run = Run(kernel, tmp_path / "run")

    def crash(index):
        raise RuntimeError("a bug")

    def script(run):
        assert read(kernel, AUTO_ONLINE) == "offline"
        run.daemon.blocks.refresh = crash
        run.locked("write_state", 5, "offline")   # an event the daemon reads: the bug strikes

    rc = run(script, stop=False)
    assert isinstance(rc, RuntimeError)
    assert read(kernel, AUTO_ONLINE) == "online"


def test_after_a_sigkill_the_next_daemon_puts_the_original_value_back(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", auto_online="online")
    state = tmp_path / "run"
    # What a SIGKILLed daemon leaves: the setting taken over, its record, no restore.
    Run(kernel, state)(lambda run: None)
    kernel.set_param("auto_online_blocks", "offline")
    with open(state / "auto_online_blocks.json", "w") as f:
        json.dump({"boot_id": read(kernel, "proc/sys/kernel/random/boot_id"), "original": "online"}, f)
    kernel.add_dimm(GiB)                                  # while no daemon ran
    Run(kernel, state)(lambda run: None)
    assert read(kernel, AUTO_ONLINE) == "online"
    assert {kernel.layout()[i] for i in range(48, 56)} == {"Movable"}  # onlined by memonlined, not the kernel


def test_doctor_while_memonlined_has_taken_over_still_gives_the_boot_advice(tmp_path):
    """After the take-over auto_online_blocks reads offline: doctor learns from the
    running daemon's record that the kernel onlined at boot, and says what to do."""
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", auto_online="online")
    state = str(tmp_path / "run")
    outs = []

    def script(run):
        assert read(kernel, AUTO_ONLINE) == "offline"
        outs.append(memonlined(kernel, "doctor", "--state-dir", state)[1])

    Run(kernel, state)(script)
    assert "auto_online_blocks: offline" in outs[0] and "took it over from online" in outs[0], outs[0]
    assert "memhp_default_state=offline" in outs[0] and "GRUB_CMDLINE_LINUX" in outs[0], outs[0]
    after = memonlined(kernel, "doctor", "--state-dir", state)[1]   # stopped: put back, record gone
    assert "auto_online_blocks: online  <- the kernel onlines" in after and "took it over" not in after, after
    kernel.set_param("auto_online_blocks", "offline")
    assert "GRUB_CMDLINE_LINUX" not in memonlined(kernel, "doctor", "--state-dir", state)[1]


def test_a_record_of_another_boot_is_not_put_back(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")        # this boot: offline
    state = tmp_path / "run"
    os.makedirs(state)
    with open(state / "auto_online_blocks.json", "w") as f:
        json.dump({"boot_id": "an-earlier-boot", "original": "online"}, f)
    Run(kernel, state)(lambda run: None)
    assert read(kernel, AUTO_ONLINE) == "offline"


def test_an_administrators_change_while_memonlined_runs_is_kept(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", auto_online="online")

    def script(run):
        kernel.set_param("auto_online_blocks", "online_movable")   # the administrator
    Run(kernel, tmp_path / "run")(script)
    assert read(kernel, AUTO_ONLINE) == "online_movable"


def test_a_refused_take_over_is_one_error_and_the_daemon_runs_on(tmp_path, caplog):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", auto_online="online")

    class Refusing(KernelBackend):
        def write_setting(self, rel, value):
            raise PermissionError(1, "Operation not permitted")

    run = Run(kernel, tmp_path / "run", backend=Refusing(kernel))
    assert run(lambda run: None) == 0
    assert "cannot set /sys/devices/system/memory/auto_online_blocks to offline (Operation not permitted)" \
        in caplog.text
    assert not (tmp_path / "run/auto_online_blocks.json").exists()


def test_watchdog_abort_puts_auto_online_blocks_back(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", auto_online="online")
    rc = Run(kernel, tmp_path / "run")(lambda run: os.kill(os.getpid(), signal.SIGABRT), stop=False)
    assert rc == 1
    assert read(kernel, AUTO_ONLINE) == "online"


# -- defects 2, 3, 15: which block is which -----------------------------------

def test_blocks_re_added_at_a_reused_index_while_the_daemon_was_down_are_onlined(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    vm = kernel.add_virtio_mem(8 * GiB)
    state = tmp_path / "run"

    def grow(run):
        blocks = run.locked("virtio_mem_plug", vm, GiB)
        wait_for(lambda: all(kernel.layout()[i] is not None for i in blocks))

    Run(kernel, state)(grow)
    kernel.virtio_mem_unplug_block(vm, 55)
    kernel.virtio_mem_unplug_block(vm, 54)
    kernel.write_state(53, "offline")                  # and one the administrator offlined
    readded = kernel.virtio_mem_plug(vm, 256 << 20)
    assert readded == [54, 55]
    Run(kernel, state)(lambda run: None)
    assert kernel.layout()[54] is not None and kernel.layout()[55] is not None
    assert kernel.layout()[53] is None


def test_a_block_re_added_after_lost_events_is_onlined_by_the_rescan(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    vm = kernel.add_virtio_mem(8 * GiB)

    def script(run):
        blocks = run.locked("virtio_mem_plug", vm, GiB)
        wait_for(lambda: all(kernel.layout()[i] is not None for i in blocks))
        with run.backend.lock:
            kernel.virtio_mem_unplug_block(vm, 55)
            kernel.virtio_mem_plug(vm, 128 << 20)
        run.monitor.relay(drop=True)                   # ENOBUFS: remove and add lost
        wait_for(lambda: kernel.layout()[55] is not None)

    Run(kernel, tmp_path / "run")(script)


def test_synthetic_adds_change_nothing_and_report_no_conflict(tmp_path, caplog):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")

    def script(run):
        run.locked("add_dimm", GiB)
        wait_for(lambda: None not in kernel.layout().values())
        run.locked("write_state", 55, "offline")       # the administrator
        time.sleep(0.05)
        for i in sorted(kernel.blocks):                # udevadm trigger --action=add
            run.monitor.send("add", "memory%d" % i)
        time.sleep(0.3)

    run = Run(kernel, tmp_path / "run")
    run(script)
    assert kernel.layout()[55] is None
    assert "onlined by someone else" not in caplog.text
    assert "onlined by others 0" in [n for n in run.notes if n.startswith("STATUS")][-1]


def test_a_state_file_of_an_earlier_boot_is_ignored(tmp_path):
    state = tmp_path / "state"
    os.makedirs(state)
    with open(state / "handled.json", "w") as f:   # the last boot onlined 48-55
        json.dump({"boot_id": "an-earlier-boot", "blocks": {str(i): None for i in range(56)}}, f)
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", coldplug_dimms=[GiB])
    Run(kernel, state)(lambda run: None)
    assert {kernel.layout()[i] for i in range(48, 56)} == {"Movable"}


def test_the_record_of_memonlined_0_1_is_taken_over_on_an_upgrade(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", coldplug_dimms=[GiB])
    kernel_online_all(kernel)
    kernel.write_state(50, "offline")                  # the administrator, under 0.1
    state = tmp_path / "run"
    os.makedirs(state)
    with open(state / "handled", "w") as f:
        f.write("\n".join(str(i) for i in sorted(kernel.blocks)) + "\n")
    Run(kernel, state)(lambda run: None)
    assert kernel.layout()[50] is None
    assert not (state / "handled").exists() and (state / "handled.json").exists()


# -- defect 4: a node that comes online later ---------------------------------

def test_memory_on_a_node_that_was_not_online_at_start(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")

    def script(run):
        run.locked("add_dimm", GiB, node=1)            # node 1 comes online with it
        wait_for(lambda: None not in kernel.layout().values())

    assert Run(kernel, tmp_path / "run")(script) == 0
    twin.add_dimm(GiB, node=1)
    assert kernel.layout() == kernel_online_all(twin)


# -- defect 5: a replaced virtio-mem device with the same name ---------------

def test_a_virtio_mem_device_replaced_under_the_same_name(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")

    def script(run):
        run.names = replace_virtio_mem(kernel, daemon_step(run, kernel), True, 32 * GiB, 16 * GiB)

    replace_virtio_mem(twin, twin_step(twin), True, 32 * GiB, 16 * GiB)
    run = Run(kernel, tmp_path / "run")
    run(script)
    old, new, _ = run.names
    assert old == new
    assert kernel.layout() == twin.layout()


# -- defect 6: the rescan and the start-up wait for links too ----------------

def test_the_rescan_decides_a_dimm_whole_although_its_links_come_late(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")
    for k in (kernel, twin):
        k.add_dimm(10 * GiB)
    twin.add_dimm(4 * GiB)
    kernel_online_all(twin)

    def script(run):
        with run.backend.lock:
            name = kernel.add_dimm(4 * GiB, link_firmware_node=False)
        run.monitor.relay(drop=True)                   # ENOBUFS: the 32 adds were lost
        time.sleep(0.2)
        run.locked("link_firmware_nodes", name)
        wait_for(lambda: None not in kernel.layout().values())

    Run(kernel, tmp_path / "run")(script)
    assert kernel.layout() == twin.layout()


def test_the_rescan_reads_a_block_again_once_its_node_link_is_there(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    Run(kernel, tmp_path / "run")(late_node_link(kernel, 50, 0.2, lost=True))


# -- defect 8: kernel mode follows a reload ----------------------------------

def test_kernel_mode_writes_a_reloaded_ratio_to_the_kernel(tmp_path, caplog):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    new = Config(mode="kernel", ratio=0, settle_ms=5, event_source="udev")
    run = Run(kernel, tmp_path / "run", settings=Config(mode="kernel"), reload=lambda: new, kernel_mode=True)

    def script(run):
        assert kernel.online_policy == "auto-movable" and read(kernel, AUTO_ONLINE) == "online"
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: run.daemon.settings is new)
        run.locked("add_dimm", GiB)
        wait_for(lambda: None not in kernel.layout().values())

    with caplog.at_level("INFO", logger="memonlined"):
        run(script)
    assert kernel.auto_movable_ratio == 0
    assert {kernel.layout()[i] for i in range(48, 56)} == {"Normal"}
    assert "event_source: in force from the next start" in caplog.text


# -- defect 10: the watchdog in a long batch, and a bounded stop -------------

class SlowBackend(KernelBackend):
    delay = 0.005

    def write_block_state(self, index, value):
        time.sleep(self.delay)
        super().write_block_state(index, value)


class SlowerBackend(SlowBackend):
    delay = 0.02


def test_the_watchdog_is_pinged_during_a_long_batch(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    run = Run(kernel, tmp_path / "run", backend=SlowerBackend(kernel), watchdog=0.05)
    stamps = []
    notify = run.systemd.notify
    run.systemd.notify = lambda s: (stamps.append(time.monotonic()) if s == "WATCHDOG=1" else None, notify(s))

    def script(run):
        run.locked("add_dimm", 8 * GiB)                # 64 writes of 20 ms and more: over 1.28 s
        wait_for(lambda: None not in kernel.layout().values(), 30)

    run(script)
    # Pinged between writes (a loaded machine stretches a write; one batch takes over 1.28 s).
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 0.4


def test_a_stop_in_a_long_batch_ends_it_after_the_device_in_hand(tmp_path, caplog):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    vm = kernel.add_virtio_mem(16 * GiB, start=64 * GiB)       # above the DIMM
    run = Run(kernel, tmp_path / "run", backend=SlowBackend(kernel))

    def script(run):
        with run.backend.lock:
            run.dimm = kernel.add_dimm(2 * GiB, start=6 * GiB)  # 48-63, one device
            kernel.virtio_mem_plug(vm, 8 * GiB)        # 64 blocks of another
        run.monitor.relay()
        wait_for(lambda: run.backend.writes)           # the batch has begun: SIGTERM follows

    assert run(script) == 0
    layout = kernel.layout()
    dimm = kernel.devices[run.dimm].blocks
    assert min(dimm) < min(kernel.devices[vm].blocks)
    assert {layout[i] for i in dimm} == {"Movable"}                  # the DIMM whole
    assert None in {layout[i] for i in kernel.devices[vm].blocks}    # the rest waits for the next start
    assert "they stay offline until memonlined starts again" in caplog.text
    Run(kernel, tmp_path / "run")(lambda run: None)
    assert None not in kernel.layout().values()


# -- defect 9: the virtio-mem unit outlives the kernel log --------------------

def test_a_restart_after_the_kernel_log_wrapped_keeps_a_bbm_devices_unit(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")
    vm = kernel.add_virtio_mem(32 * GiB, bbm=True, device_block_size=GiB)
    twin_vm = twin.add_virtio_mem(32 * GiB, bbm=True, device_block_size=GiB)
    state = tmp_path / "run"

    def grow(times):
        def script(run):
            for _ in range(times):
                out = run.locked("virtio_mem_plug", vm, GiB)
                wait_for(lambda: all(kernel.layout()[i] is not None for i in out))
        return script

    Run(kernel, state)(grow(2))                       # learns the unit from the probe lines
    with open(kernel.root + "/dev/kmsg", "w") as f:   # days later: they have rotated out
        f.write("6,9999,99999999,-;lots of later messages\n")
    Run(kernel, state)(grow(14))
    for _ in range(16):
        twin.virtio_mem_plug(twin_vm, GiB)
        kernel_online_all(twin)
    assert kernel.layout() == twin.layout()


# -- defect 7: no E820 table --------------------------------------------------

def test_without_e820_a_dimm_still_being_added_is_not_boot_memory(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")
    os.unlink(kernel.root + "/sys/kernel/boot_params/data")
    for k in (kernel, twin):
        k.add_dimm(10 * GiB)
    for size in (4, 4, 4):
        twin.add_dimm(size * GiB)
    kernel_online_all(twin)
    state = tmp_path / "run"

    def script(run):
        for size in (4, 4):
            name = run.locked("add_dimm", size * GiB, link_firmware_node=False)
            time.sleep(0.1)
            run.locked("link_firmware_nodes", name)
            wait_for(lambda: None not in kernel.layout().values())

    Run(kernel, state)(script)
    # A restart, then the third DIMM: the blocks memonlined onlined are not boot memory now either.
    def third(run):
        name = run.locked("add_dimm", 4 * GiB, link_firmware_node=False)
        time.sleep(0.1)
        run.locked("link_firmware_nodes", name)
        wait_for(lambda: None not in kernel.layout().values())
    Run(kernel, state)(third)
    assert kernel.layout() == twin.layout()


# -- defect 17: a block going offline while the daemon starts ----------------

def test_a_block_going_offline_at_the_start_is_left_to_whoever_offlines_it(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones", coldplug_dimms=[GiB])
    kernel_online_all(kernel)
    with open(kernel.root + "/sys/devices/system/memory/memory50/state", "w") as f:
        f.write("going-offline\n")                  # an administrator's offline in progress

    def script(run):
        assert not run.backend.writes
        run.locked("write_state", 50, "offline")    # it completes
        time.sleep(0.2)

    run = Run(kernel, tmp_path / "run")
    run(script)
    assert kernel.layout()[50] is None and not any(i == 50 for i, _ in run.backend.writes)


# -- found in review: late node links, marks from uevents, a failing rescan --

def test_a_block_whose_node_link_comes_after_the_link_wait_is_still_onlined(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    Run(kernel, tmp_path / "run")(late_node_link(kernel, 50, 2.5))  # longer than LINK_WAIT


def test_a_block_seen_online_only_through_uevents_is_remembered_across_a_restart(tmp_path):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    state = tmp_path / "run"
    for attempt in ("online_movable", "online_kernel"):
        kernel.inject_fault(50, attempt, 16)           # memonlined's writes for memory50 refused

    def script(run):
        run.locked("add_dimm", GiB)
        wait_for(lambda: sum(z is None for z in kernel.layout().values()) == 1)
        kernel.faults.clear()
        run.locked("write_state", 50, "online")        # the administrator onlines it ...
        wait_for(lambda: (state / "handled.json").exists() and '"50"' in (state / "handled.json").read_text())

    Run(kernel, state)(script)
    kernel.write_state(50, "offline")                  # ... and offlines it while memonlined is down
    Run(kernel, state)(lambda run: None)
    assert kernel.layout()[50] is None


def test_a_rescan_that_fails_is_tried_again(tmp_path, caplog):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    zoneinfo = tmp_path / "k/proc/zoneinfo"

    def script(run):
        good = zoneinfo.read_text()
        with run.backend.lock:
            kernel.add_dimm(GiB)
            zoneinfo.write_text("garbage\n")
        run.monitor.relay(drop=True)                   # ENOBUFS while /proc/zoneinfo is unreadable
        wait_for(lambda: "rescanning again in a second" in caplog.text)
        zoneinfo.write_text(good)
        wait_for(lambda: None not in kernel.layout().values(), 5)

    Run(kernel, tmp_path / "run")(script)


# -- virtio-mem's driver loaded by udev while memonlined starts (Debian 13's boot) ----

def ready_while(run, driver):
    """Runs the daemon while DRIVER runs in a thread: its READY=1 note."""
    thread = threading.Thread(target=driver)
    thread.start()
    assert run(lambda run: None) == 0
    thread.join()
    return next(n for n in run.notes if n.startswith("READY=1"))


def unbound_virtio_mem(tmp_path, **run_kw):
    """A virtio-mem device whose driver is not loaded yet, and a daemon to start: (kernel, its name, the Run)."""
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    name = kernel.add_virtio_mem_device()
    return kernel, name, Run(kernel, tmp_path / "run", **run_kw)


def udev_loads_the_driver(run, name, sizes, first=0.0, apart=0.0, bind_after=0.5):
    """A thread's work: the driver binds NAME BIND_AFTER s in, then plugs
    SIZES, the first FIRST s after the bind, the next ones APART s apart."""
    def driver():
        time.sleep(bind_after)
        run.locked("add_virtio_mem", 8 * GiB, name=name)
        time.sleep(first)
        for i, size in enumerate(sizes):
            time.sleep(apart if i else 0)
            run.locked("virtio_mem_plug", name, size)
    return driver


def test_virtio_mem_whose_driver_binds_during_the_start_is_online_before_ready(tmp_path):
    """At boot udev loads virtio_mem beside memonlined: the device's memory at
    start is boot memory too, onlined before READY=1 lets sysinit.target come."""
    _, name, run = unbound_virtio_mem(tmp_path)
    assert "onlined 8," in ready_while(run, udev_loads_the_driver(run, name, [GiB])), run.notes


def test_a_slow_virtio_mem_driver_whose_blocks_come_further_apart_than_the_settle_is_online_before_ready(tmp_path):
    """At boot on one busy vCPU the driver's worker added one block, then the
    rest more than DRIVER_SETTLE later (CI's trixie guest): READY=1 waits for
    the blocks as long as they keep coming, not for DRIVER_SETTLE after the bind."""
    kernel, name, run = unbound_virtio_mem(tmp_path)
    slow = udev_loads_the_driver(run, name, [kernel.block_size] * 8, first=0.8, apart=0.7)  # the second 1.5 s in
    assert "onlined 8," in ready_while(run, slow), run.notes


def test_a_bound_virtio_mem_driver_still_adding_at_start_is_followed_with_a_settle_window_too(tmp_path):
    """A batch of the start-up waits out a settle window of 4 s (settle_ms):
    the blocks added meanwhile join it, and the driver's wait counts from
    the latest add memonlined has read, not from the one before the batch."""
    kernel, name, run = unbound_virtio_mem(tmp_path, settings=Config(settle_ms=4000))
    driver = udev_loads_the_driver(run, name, [kernel.block_size] * 8, first=0.3, apart=0.3)
    assert "onlined 8," in ready_while(run, driver), run.notes


def test_the_driver_wait_counts_from_the_end_of_a_long_batch_not_from_the_last_add(tmp_path):
    """On one vCPU a long batch of the start-up keeps the driver's worker from
    adding: its next block comes after the batch, more than DRIVER_SETTLE after
    the last add. The quiet second READY=1 waits for counts from the batch's end."""
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    name = kernel.add_virtio_mem_device()
    backend = SlowBackend(kernel)
    backend.delay = 0.2                                  # 8 writes: a batch of 1.6 s
    run = Run(kernel, tmp_path / "run", backend=backend)

    def a_starved_driver():
        time.sleep(0.5)
        run.locked("add_virtio_mem", 8 * GiB, name=name)
        first = run.locked("virtio_mem_plug", name, GiB)
        wait_for(lambda: all(kernel.layout().get(i) for i in first), 10)
        time.sleep(0.3)                                  # the worker gets the CPU back
        run.locked("virtio_mem_plug", name, GiB)

    assert "onlined 16," in ready_while(run, a_starved_driver), run.notes


def test_a_driver_binding_with_a_burst_under_a_long_settle_window_is_online_before_ready(tmp_path):
    """settle_ms of 4 s: the batch the bind brings is due after the link wait
    of the bind; the start-up waits for it all the same (review)."""
    _, name, run = unbound_virtio_mem(tmp_path, settings=Config(settle_ms=4000))
    assert "onlined 8," in ready_while(run, udev_loads_the_driver(run, name, [GiB])), run.notes


def test_a_block_without_its_node_link_does_not_hold_ready_while_a_driver_is_followed(tmp_path):
    """Batches that only read again a block still without its node link write
    nothing: they do not count as the driver's activity (review: READY came
    only at the cap, DRIVER_WAIT after the bind)."""
    kernel, name, run = unbound_virtio_mem(tmp_path)
    stuck = min(kernel.devices[kernel.add_dimm(GiB)].blocks)     # its add came, its node link never does
    os.unlink(os.path.join(kernel.root, f"sys/devices/system/memory/memory{stuck}/node0"))
    thread = threading.Thread(target=udev_loads_the_driver(run, name, [GiB]))
    thread.start()
    t0, ready_after = time.monotonic(), []
    run(lambda run: ready_after.append(time.monotonic() - t0))
    thread.join()
    assert ready_after[0] < 7, ready_after  # bind 0.5 s + DRIVER_SETTLE + the link wait; not bind + DRIVER_WAIT
    assert kernel.layout()[stuck] is None, "decided without its node link"


def test_virtio_mem_bound_before_memonlined_started_and_still_adding_is_online_before_ready(tmp_path):
    """udev loaded virtio_mem before memonlined's start-up looked: no driver to
    wait for, but the device's first block is offline at start and the rest
    come while the start-up runs: READY=1 follows them too."""
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    name = kernel.add_virtio_mem(8 * GiB)
    kernel.virtio_mem_plug(name, kernel.block_size)
    run = Run(kernel, tmp_path / "run")

    def the_driver_goes_on():
        for _ in range(7):
            time.sleep(0.7)
            run.locked("virtio_mem_plug", name, kernel.block_size)

    assert "onlined 8," in ready_while(run, the_driver_goes_on), run.notes


def test_nothing_offline_at_start_with_virtio_mem_bound_is_ready_at_once(tmp_path):
    """The following costs nothing when no virtio-mem memory was offline at start."""
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    name = kernel.add_virtio_mem(8 * GiB)
    kernel.virtio_mem_plug(name, 2 * kernel.block_size)
    Run(kernel, tmp_path / "run")(lambda run: None)      # onlines them
    t0 = time.monotonic()
    ready_after = []
    Run(kernel, tmp_path / "run")(lambda run: ready_after.append(time.monotonic() - t0))
    assert ready_after[0] < 0.9, ready_after


def test_a_virtio_mem_device_without_a_driver_delays_ready_by_driver_wait_only(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(daemon, "DRIVER_WAIT", 2.0)
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    name = kernel.add_virtio_mem_device()
    t0 = time.monotonic()
    ready_after = []
    Run(kernel, tmp_path / "run")(lambda run: ready_after.append(time.monotonic() - t0))
    assert 2.0 <= ready_after[0] < 6, ready_after
    assert f"{name}: no driver after 2." in caplog.text
    kernel.add_virtio_mem(8 * GiB, name=name)                       # bound: the next start does not wait
    t0, ready_after[:] = time.monotonic(), []
    Run(kernel, tmp_path / "run")(lambda run: ready_after.append(time.monotonic() - t0))
    assert ready_after[0] < 2.0, ready_after


def test_the_watchdog_is_pinged_while_the_start_up_waits_for_a_driver(tmp_path, monkeypatch):
    monkeypatch.setattr(daemon, "DRIVER_WAIT", 2.0)
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    kernel.add_virtio_mem_device()                                  # no driver comes
    run = Run(kernel, tmp_path / "run", watchdog=0.2)
    run(lambda run: None)
    ready = run.notes.index(next(n for n in run.notes if n.startswith("READY=1")))
    assert run.notes[:ready].count("WATCHDOG=1") >= 8, run.notes   # every 0.1 s over the 2 s wait


def test_one_virtio_mem_device_binding_late_is_online_at_ready_while_another_never_binds(tmp_path, monkeypatch,
                                                                                           caplog):
    """The driver, once loaded, leaves the second device unbound (its probe failed):
    the wait ends DRIVER_SETTLE later, not at DRIVER_WAIT, with the first device's memory online."""
    monkeypatch.setattr(daemon, "DRIVER_WAIT", 8.0)
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    bound, never = kernel.add_virtio_mem_device(), kernel.add_virtio_mem_device()
    run = Run(kernel, tmp_path / "run")
    # after the link wait of the start-up scan
    thread = threading.Thread(target=udev_loads_the_driver(run, bound, [GiB], bind_after=3.0))
    thread.start()
    t0 = time.monotonic()
    ready_after = []
    assert run(lambda run: ready_after.append(time.monotonic() - t0)) == 0
    thread.join()
    ready = next(n for n in run.notes if n.startswith("READY=1"))
    assert "onlined 8," in ready, run.notes
    assert 3.0 < ready_after[0] < 7.5, ready_after  # not DRIVER_WAIT (8 s)
    assert f"{never}: no driver after" in caplog.text and "virtio_mem did not bind it" in caplog.text
    assert f"{bound}: no driver" not in caplog.text


def test_blocks_below_one_waiting_for_its_node_link_are_onlined_meanwhile(tmp_path):
    """A growing virtio-mem device: the block whose node link is not there yet
    holds back itself and those above it, not the complete blocks below it."""
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")
    vm, twin_vm = kernel.add_virtio_mem(4 * GiB), twin.add_virtio_mem(4 * GiB)

    def script(run):
        with run.backend.lock:
            first, second = kernel.virtio_mem_plug(vm, 256 << 20)
            link = os.path.join(kernel.root, f"sys/devices/system/memory/memory{second}/node0")
            os.unlink(link)                              # the add uevent comes before the node link
        run.monitor.relay()
        wait_for(lambda: kernel.layout()[first] is not None, 1.0)  # well within LINK_WAIT (2 s)
        assert kernel.layout()[second] is None
        os.symlink("../../node/node0", link)
        wait_for(lambda: None not in kernel.layout().values(), 5)

    Run(kernel, tmp_path / "run")(script)
    twin.virtio_mem_plug(twin_vm, 256 << 20)
    assert kernel.layout() == kernel_online_all(twin)


@pytest.mark.parametrize("e820", [True, False])
def test_a_dimm_whose_links_came_only_in_part_goes_ahead_only_when_its_size_is_known(tmp_path, e820, monkeypatch):
    """Without an E820 table a DIMM's size is its linked blocks: the lower
    blocks, linked first, must not go ahead of the rest (found in review:
    they went Movable, the rest Normal; the kernel puts all of it in Normal).
    With the table its size is its /proc/iomem range: they go ahead, and
    the layout is still the kernel's."""
    # The unlinked blocks wait LINK_WAIT from their add; a slow machine must not see that wait run out.
    monkeypatch.setattr(daemon_blocks, "LINK_WAIT", 6.0)
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    twin = FakeKernel(tmp_path / "twin")
    if not e820:
        os.unlink(kernel.root + "/sys/kernel/boot_params/data")
    twin.add_dimm(16 * GiB)
    kernel_online_all(twin)

    def script(run):
        name = run.locked("add_dimm", 16 * GiB, link_firmware_node=False)
        blocks = sorted(kernel.devices[name].blocks)
        with run.backend.lock:                         # acpi_bind_memory_blocks() half way
            for b in blocks[:8]:
                os.symlink(f"../../../{ACPI_MEMORY_BUS}/{name}",
                           f"{kernel.root}/sys/devices/system/memory/memory{b}/firmware_node")
        if e820:
            wait_for(lambda: all(kernel.layout()[b] == "Normal" for b in blocks[:8]), 2.0)
        else:
            time.sleep(0.5)
        if e820:
            # The rest may go ahead too once the device is known (its size is
            # its /proc/iomem range; seen in CI when the re-read came after the
            # links): then to the kernel's zone, never Movable ahead of it.
            assert all(kernel.layout()[b] in (None, "Normal") for b in blocks[8:])
        else:
            assert all(kernel.layout()[b] is None for b in blocks)
        run.locked("link_firmware_nodes", name)
        wait_for(lambda: None not in kernel.layout().values())

    Run(kernel, tmp_path / "run")(script)
    assert kernel.layout() == twin.layout()


def test_a_device_warning_is_said_when_its_first_blocks_go_ahead(tmp_path, caplog):
    """Found in review: the warnings of a batch were dropped while one of its
    blocks waited for its node link, also those about the blocks decided now."""
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    vm = kernel.add_virtio_mem(4 * GiB)
    open(kernel.root + "/dev/kmsg", "w").close()     # its probe lines have left the kernel log

    def script(run):
        with run.backend.lock:
            first, second = kernel.virtio_mem_plug(vm, 256 << 20)
            link = os.path.join(kernel.root, f"sys/devices/system/memory/memory{second}/node0")
            os.unlink(link)
        run.monitor.relay()
        wait_for(lambda: kernel.layout()[first] is not None, 1.0)
        assert "its virtio_mem probe lines are not in the kernel log" in caplog.text
        assert "no node link yet" not in caplog.text  # it came in time: nothing to say
        os.symlink("../../node/node0", link)
        wait_for(lambda: None not in kernel.layout().values(), 5)

    Run(kernel, tmp_path / "run")(script)
